"""What each figure of the sample report means: ONE definition per figure, stated once on the
page (its "How to read this report" panel) and carried in its JSON, so the page, the export and
an API client read the same words."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["SAMPLE_DEFINITIONS", "Definition"]


@dataclass(frozen=True, kw_only=True)
class Definition:
    """A figure of a page (`term`, as its label reads) and what it is (`meaning`)."""

    term: str
    meaning: str


SAMPLE_DEFINITIONS = (
    Definition(term="Share", meaning=(
        "The fraction of an image (the final image, or D(z_t) at a step) built from one training image: the mean "
        "over the image's pixels of that training image's posterior weight in the pixel (Eq. 11), its mirrored "
        "copy included. Computed from the kept weights, so a step's shares add up to its Captured.")),
    Definition(term="Mirrored", meaning=(
        "The part of a share that came from the training image's mirrored (x-flipped) copy.")),
    Definition(term="Captured", meaning=(
        "How much of the image the kept weights explain: the sum of every source's share, which is the mean over "
        "pixels of each pixel's kept weight. The rest was dropped by the top-k and mass threshold. One figure, "
        "the same in the summary, the timeline, the plots and the pixel drill-down (there: that pixel's kept "
        "weight). Lowest patch: the smallest kept mass of any single patch at that step.")),
    Definition(term="Entropy", meaning=(
        "How spread a patch's full posterior weight vector is, in nats: 0 when one training entry holds all the "
        "weight, ln N when N entries share it equally. The timeline gives the mean over the step's patch "
        "positions.")),
    Definition(term="ESS", meaning=(
        "Effective sample size 1 / Σ w² of a patch's full weight vector: about how many training entries share the "
        "weight equally (1 = a single entry). The timeline's figure is the median over the step's patch "
        "positions, a typical patch; the mean, pulled up by a few very spread patches, is given below it.")),
    Definition(term="Trajectory weight", meaning=(
        "A step's weight in the trajectory attribution: a_i / Σ a_j with a_i = 1 − t_(i+1) / t_i, the fraction "
        "of the sampling state the step rewrites.")),
    Definition(term="Dominant training image", meaning=(
        "Each pixel coloured by the training image with the largest weight in it (the legend's colours; grey: "
        "an image outside the legend).")),
    Definition(term="Concentration", meaning=(
        "Per pixel, top-1: the largest single training image's weight divided by the pixel's kept weight (1 = "
        "one image made the pixel); entropy: 1 − the normalised entropy of the pixel's weights. Yellow is "
        "concentrated, dark is spread over many images.")),
    Definition(term="Agreement with the network", meaning=(
        "The descriptor similarity (cosine, up to 1) between this sample and its counterpart sampled from the "
        "same initial noise. At or above the threshold the two are the same image by that descriptor: PSPC "
        "reproduces the network there, which is what makes its attribution trustworthy (shown green). Below "
        "it they differ (shown amber).")),
    Definition(term="Copy detection", meaning=(
        "The training images nearest to the sample by descriptor similarity. At or above a threshold the sample "
        "is flagged as a likely copy of that training image (shown red).")),
)
