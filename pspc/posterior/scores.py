"""Candidate attribution scores: one number per (sample, training image), from stored evidence.

Every score here is computed ONLY from what the provenance store keeps of a sample, one
`StepEvidence` per sampling step: the step's times, the patch membership lists, the kept
posterior weights (entry, weight per patch), each patch's entropy, ESS and captured mass,
and the states z_t and D(z_t). So the same numbers come from a live run
(`EvidenceRecorder`, a sampler callback) and from the store's rows. Mirrored entries
(entry >= N is the mirror of entry - N) are merged into their image. The formulas are
pspc.posterior.attribution's (Eq. 11 patch shares and pixel weights, the Euler trajectory
coefficients), not re-derived.

`SCORES` is the registry: name -> AttributionScore(name, meaning, compute(steps) -> float64
[num_images]). Which of them predicts what a training image actually does to the output is
measured against exact counterfactuals (bench/attribution.py); the baselines that need the
training pixels (`pixel_similarity`) are separate functions.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass
from functools import cached_property
from typing import Callable, Sequence

import numpy as np
import torch

from pspc.errors import InputError
from pspc.posterior.attribution import (
    contributions, member_coverage, member_patch_shares, member_pixel_weights, share_totals, trajectory_coefficients,
)
from pspc.posterior.patch_sets import PatchSet

__all__ = ["DISCOUNTS", "INFORMATIVE_DEFAULT", "SCORES", "STEP_WEIGHTS", "AttributionScore", "EvidenceRecorder",
           "ScoreError", "StepEvidence", "change_weighted_share", "compute_scores", "final_share",
           "image_pixel_weights", "informative_share", "largest_regions", "nda", "patch_discount", "patch_membership",
           "pixel_similarity", "region", "step_changes", "step_shares", "step_weight", "step_weighted_share",
           "trajectory_share"]


class ScoreError(InputError):
    """Evidence a score cannot use (shapes that disagree, no steps, an unknown score or discount)."""


@dataclass(frozen=True, eq=False)
class StepEvidence:
    """What the store keeps of one sample at one sampling step.

    member_position, member_pixel [P] int64: patch membership pairs (pixel = y W + x), sorted
    by position; entry [K, k] int64 (-1 none; >= num_images: the mirror of entry -
    num_images) and weight [K, k]: the kept posterior weights; entropy, ess, mass [K]: of
    each patch's full weight vector (entropy in nats over num_entries entries); z, denoised
    [C, H, W]: the state and D(z_t)."""

    step: int
    t: float
    t_next: float
    num_images: int
    num_entries: int
    num_patches: int
    member_position: np.ndarray
    member_pixel: np.ndarray
    entry: np.ndarray
    weight: np.ndarray
    entropy: np.ndarray
    ess: np.ndarray
    mass: np.ndarray
    z: np.ndarray
    denoised: np.ndarray

    def __post_init__(self):
        k = self.num_patches
        if self.denoised.ndim != 3 or self.z.shape != self.denoised.shape:
            raise ScoreError(f"step {self.step}: z {self.z.shape} and denoised {self.denoised.shape} must both be [C, H, W]")
        if self.entry.shape != self.weight.shape or self.entry.ndim != 2 or self.entry.shape[0] != k:
            raise ScoreError(f"step {self.step}: entry {self.entry.shape} and weight {self.weight.shape} must be [{k}, k]")
        for name in ("entropy", "ess", "mass"):
            if getattr(self, name).shape != (k,):
                raise ScoreError(f"step {self.step}: {name} has shape {getattr(self, name).shape}, expected ({k},)")
        if self.member_position.shape != self.member_pixel.shape:
            raise ScoreError(f"step {self.step}: {len(self.member_position)} member positions for "
                             f"{len(self.member_pixel)} pixels")
        if len(self.member_position) and (np.any(np.diff(self.member_position) < 0) or self.member_position[-1] >= k):
            raise ScoreError(f"step {self.step}: member positions must be sorted and below {k}")
        if int(self.entry.max(initial=-1)) >= self.num_entries:
            raise ScoreError(f"step {self.step}: entry {int(self.entry.max())} is beyond the {self.num_entries} entries")

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(self.denoised.shape)

    @property
    def num_pixels(self) -> int:
        return self.shape[1] * self.shape[2]

    @cached_property
    def coverage(self) -> np.ndarray:
        """cov(q) [H W] (attribution.member_coverage)."""
        return member_coverage(self.member_pixel, self.num_pixels)

    @cached_property
    def patch_share(self) -> np.ndarray:
        """s_k [K] (attribution.member_patch_shares, Eq. 11)."""
        return member_patch_shares(self.member_position, self.member_pixel, self.num_patches, self.coverage)

    @cached_property
    def kept(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """The kept weights as flat lists: (position, image, flip, weight float64)."""
        position, rank = np.nonzero(self.entry >= 0)
        entry = self.entry[position, rank].astype(np.int64)
        return position, entry % self.num_images, entry >= self.num_images, self.weight[position, rank].astype(np.float64)


# ---------------------------------------------------------------------------------------
# Per-step building blocks
# ---------------------------------------------------------------------------------------
def step_shares(step: StepEvidence, patch_factor: np.ndarray | None = None) -> np.ndarray:
    """share_i = sum_k w_ki s_k of one step per training image, mirrors merged, float64
    [num_images] (attribution.contributions and share_totals); patch_factor [K] scales each
    patch's contributions (1 everywhere: the plain share)."""
    position, image, flip, weight = step.kept
    patch_share = step.patch_share if patch_factor is None else step.patch_share * patch_factor
    keys, share, _, _ = share_totals(image, contributions(weight, patch_share, position), flip, position)
    out = np.zeros(step.num_images)
    out[keys] = share
    return out


def image_pixel_weights(step: StepEvidence) -> tuple[np.ndarray, np.ndarray]:
    """(images ascending [n], p [n, H W]): each kept image's Eq. 11 pixel weights at one step,
    its mirror's merged in (attribution.member_pixel_weights)."""
    position, image, _, weight = step.kept
    starts = np.searchsorted(step.member_position, np.arange(step.num_patches + 1))
    counts = np.diff(starts)[position]
    first = np.cumsum(counts) - counts  # where each kept weight's pixels begin in the expansion
    pixel = step.member_pixel[np.repeat(starts[position] - first, counts) + np.arange(int(counts.sum()))]
    images, row = np.unique(image, return_inverse=True)
    maps = member_pixel_weights(np.repeat(row, counts), pixel, np.repeat(weight, counts), len(images), step.coverage)
    return images, maps


def step_changes(steps: Sequence[StepEvidence]) -> list[np.ndarray]:
    """|D_i - D_{i-1}| per pixel (summed over channels, D before the first step = 0), each [H W],
    normalised so that all steps together sum to 1: the final image is D_0 plus these changes,
    so each step's share of them says how much it decides the final image."""
    previous = np.zeros(steps[0].shape)
    changes = []
    for step in steps:
        changes.append(np.abs(step.denoised - previous).sum(0).ravel())
        previous = step.denoised
    total = sum(float(c.sum()) for c in changes)
    return [c / total for c in changes] if total > 0 else [np.full(c.shape, 1.0 / (c.size * len(changes))) for c in changes]


DISCOUNTS = ("entropy", "ess", "variance")


def patch_discount(step: StepEvidence, kind: str, exponent: float) -> np.ndarray:
    """g_k [K] >= 0, how informative patch k is (exponent 0: 1 everywhere):
    entropy: (1 - H_k / log E)^a (a flat posterior, H = log E, gives 0);
    ess: ESS_k^-a (a posterior spread over many entries counts less);
    variance: (v_k / max v)^a, v_k the variance of D's pixels inside patch k (flat background counts less)."""
    if kind == "entropy":
        flatness = step.entropy.astype(np.float64) / math.log(max(step.num_entries, 2))
        return np.clip(1.0 - flatness, 0.0, 1.0) ** exponent
    if kind == "ess":
        return np.maximum(step.ess.astype(np.float64), 1.0) ** -exponent
    if kind == "variance":
        values = step.denoised.reshape(step.shape[0], -1)[:, step.member_pixel].astype(np.float64)  # [C, P]
        count = np.bincount(step.member_position, minlength=step.num_patches) * step.shape[0]
        mean = np.bincount(step.member_position, values.sum(0), step.num_patches) / count
        mean_sq = np.bincount(step.member_position, np.square(values).sum(0), step.num_patches) / count
        variance = np.maximum(mean_sq - mean**2, 0.0)
        top = variance.max()
        return (variance / top) ** exponent if top > 0 else np.ones(step.num_patches)
    raise ScoreError(f"unknown discount {kind!r}; choose one of {', '.join(DISCOUNTS)}")


# ---------------------------------------------------------------------------------------
# The scores
# ---------------------------------------------------------------------------------------
def _check(steps: Sequence[StepEvidence]) -> Sequence[StepEvidence]:
    if not steps:
        raise ScoreError("a score needs at least one step of evidence")
    if len({(s.num_images, s.num_entries, s.shape) for s in steps}) > 1:
        raise ScoreError("the steps disagree on the number of images, entries or the image shape")
    if any(b.step <= a.step for a, b in zip(steps, steps[1:])):
        raise ScoreError("steps must be in increasing step order")
    return steps


def final_share(steps: Sequence[StepEvidence]) -> np.ndarray:
    """The share of the final step's D (the sample itself) built from each image."""
    return step_shares(_check(steps)[-1])


def _trajectory(steps: Sequence[StepEvidence], patch_factor: Callable[[StepEvidence], np.ndarray] | None) -> np.ndarray:
    coefficients = trajectory_coefficients((s.step, s.t, s.t_next) for s in steps)
    total = np.zeros(steps[0].num_images)
    for step in steps:
        if coefficients.get(step.step):
            total += coefficients[step.step] * step_shares(step, None if patch_factor is None else patch_factor(step))
    return total


def trajectory_share(steps: Sequence[StepEvidence]) -> np.ndarray:
    """Each step's share weighted by the Euler coefficient w_i = a_i / sum a (attribution.trajectory_coefficients)."""
    return _trajectory(_check(steps), None)


# Chosen by LDS (model output: the re-run sample) on the tuning half of the queries of
# `bench/attribution.py` (full configuration; bench/results/attribution.md lists the family).
INFORMATIVE_DEFAULT = ("ess", 0.5)


def informative_share(steps: Sequence[StepEvidence], discount: str = INFORMATIVE_DEFAULT[0],
                      exponent: float = INFORMATIVE_DEFAULT[1]) -> np.ndarray:
    """The trajectory share with each patch's contributions scaled by patch_discount (flat
    posteriors and featureless patches count less); exponent 0 is trajectory_share."""
    if discount not in DISCOUNTS:
        raise ScoreError(f"unknown discount {discount!r}; choose one of {', '.join(DISCOUNTS)}")
    return _trajectory(_check(steps), lambda step: patch_discount(step, discount, exponent))


def change_weighted_share(steps: Sequence[StepEvidence]) -> np.ndarray:
    """Each step's pixel weights weighted by how much that step changed each pixel of D
    (step_changes): the part of the image's making, over the trajectory, built from the image."""
    total = np.zeros(_check(steps)[0].num_images)
    for step, change in zip(steps, step_changes(steps)):
        images, maps = image_pixel_weights(step)
        total += np.bincount(images, maps @ change, step.num_images)
    return total


# How much each step's share decides the final image, per noise level t: the mean LDS, on the
# tuning queries of bench/attribution.py (full configuration, output (b): the re-run sample),
# of that step's share alone, negatives set to 0; see bench/results/attribution.md.
STEP_WEIGHTS: tuple[tuple[float, float], ...] = (
    (80, 0.024), (57.586, 0.027), (40.7856, 0.021), (28.3746, 0.020), (19.3525, 0.006), (12.9101, 0.025),
    (8.40094, 0.044), (5.3152, 0.091), (3.25682, 0.199), (1.92334, 0.276), (1.08817, 0.316), (0.585348, 0.364),
    (0.296442, 0.361), (0.139516, 0.367), (0.059947, 0.354), (0.022935, 0.330), (0.007528, 0.344), (0.002, 0.356))


def step_weight(t: float, table: Sequence[tuple[float, float]]) -> float:
    """The weight of the table row nearest to t in log t."""
    if not table:
        raise ScoreError("the step-weight table is empty")
    return float(min(table, key=lambda row: abs(math.log(row[0]) - math.log(t)))[1])


def step_weighted_share(steps: Sequence[StepEvidence], table: Sequence[tuple[float, float]] | None = None) -> np.ndarray:
    """Each step's share weighted by how much that step decides the final image, as measured
    (table: (t, weight) rows, default STEP_WEIGHTS; nearest row in log t), over the sum of
    the weights: a weighted mean of the steps' shares."""
    table = STEP_WEIGHTS if table is None else table
    weights = [step_weight(step.t, table) for step in _check(steps)]
    if sum(weights) <= 0:
        raise ScoreError("the step weights of these steps are all 0")
    return sum(w / sum(weights) * step_shares(step) for w, step in zip(weights, steps) if w > 0)


def largest_regions(labels: np.ndarray) -> dict[int, int]:
    """{label: pixel count of its largest 4-connected region} for a label map [H, W] (labels < 0: none)."""
    height, width = labels.shape
    seen = np.zeros(labels.shape, dtype=bool)
    best: dict[int, int] = {}
    for y0 in range(height):
        for x0 in range(width):
            label = int(labels[y0, x0])
            if seen[y0, x0] or label < 0:
                continue
            seen[y0, x0], size, queue = True, 0, deque([(y0, x0)])
            while queue:
                y, x = queue.popleft()
                size += 1
                for ny, nx in ((y - 1, x), (y + 1, x), (y, x - 1), (y, x + 1)):
                    if 0 <= ny < height and 0 <= nx < width and not seen[ny, nx] and labels[ny, nx] == label:
                        seen[ny, nx] = True
                        queue.append((ny, nx))
            best[label] = max(best.get(label, 0), size)
    return best


def region(steps: Sequence[StepEvidence]) -> np.ndarray:
    """The largest 4-connected region of the final image where the image is the dominant
    pixel-weight source (ties: the lowest index), as a fraction of the H W pixels."""
    step = _check(steps)[-1]
    images, maps = image_pixel_weights(step)
    out = np.zeros(step.num_images)
    if not len(images):
        return out
    dominant = np.where(maps.max(0) > 0, images[maps.argmax(0)], -1).reshape(step.shape[1:])
    for image, size in largest_regions(dominant).items():
        out[image] = size / step.num_pixels
    return out


def nda(steps: Sequence[StepEvidence]) -> np.ndarray:
    """NDA-style (Zhao et al. 2025): the image's posterior weights summed over every patch and step, unweighted."""
    total = np.zeros(_check(steps)[0].num_images)
    for step in steps:
        _, image, _, weight = step.kept
        total += np.bincount(image, weights=weight, minlength=step.num_images)
    return total


@dataclass(frozen=True)
class AttributionScore:
    """A named score: compute(steps) -> float64 [num_images]; meaning is one sentence for users."""

    name: str
    meaning: str
    compute: Callable[[Sequence[StepEvidence]], np.ndarray]


SCORES: dict[str, AttributionScore] = {s.name: s for s in (
    AttributionScore("final-share", "The share of the finished image's pixels built from this training image.",
                     final_share),
    AttributionScore("trajectory-share", "The share of the image built from this training image, averaged over the "
                     "sampling steps in proportion to how much each step writes into the next state.", trajectory_share),
    AttributionScore("informative-share", "The trajectory share counted only where the evidence is specific: patches "
                     "whose posterior is spread flat over many training images count less.", informative_share),
    AttributionScore("step-weighted-share", "The share of the image built from this training image, averaged over "
                     "the sampling steps in proportion to how much each step was measured to decide the final image.",
                     step_weighted_share),
    AttributionScore("region", "The largest connected region of the finished image where this training image is "
                     "the main source, as a fraction of the image.", region),
    AttributionScore("nda", "The posterior weights of this training image summed over every patch and step "
                     "(NDA-style, Zhao et al. 2025).", nda),
)}


def compute_scores(steps: Sequence[StepEvidence], names: Sequence[str] | None = None) -> dict[str, np.ndarray]:
    """{name: scores [num_images]} for the named scores (default: every one in SCORES)."""
    unknown = [n for n in (names or ()) if n not in SCORES]
    if unknown:
        raise ScoreError(f"unknown score {unknown[0]!r}; choose from {', '.join(SCORES)}")
    return {name: SCORES[name].compute(steps) for name in (names or SCORES)}


def pixel_similarity(sample: torch.Tensor, images: torch.Tensor, xflip: bool = True) -> np.ndarray:
    """Baseline: -||sample - x_i||^2 (summed over pixels) per training image [N, C, H, W],
    the better of the image and (xflip) its mirror; float64 [N]."""
    x = sample.to(torch.float64).flatten()
    data = images.to(torch.float64)
    distance = (data.flatten(1) - x).square().sum(1)
    if xflip:
        distance = torch.minimum(distance, (data.flip(-1).flatten(1) - x).square().sum(1))
    return (-distance).numpy()


# ---------------------------------------------------------------------------------------
# Evidence from a live run
# ---------------------------------------------------------------------------------------
def patch_membership(patch_set: PatchSet) -> tuple[np.ndarray, np.ndarray]:
    """(position, pixel = y W + x) int64 pairs of a patch set's masks, sorted by position."""
    position, y, x = patch_set.masks().nonzero(as_tuple=True)
    return position.numpy().astype(np.int64), (y * patch_set.width + x).numpy().astype(np.int64)


class EvidenceRecorder:
    """A `pspc.samplers.sample` callback (with request=WeightRequest(...)) that keeps every
    step of every sample as StepEvidence: `recorder.evidence(b)` is sample b's list.

    times: the run's schedule t_0 > ... > t_n = 0; num_entries: the training entries (2 N with x-flips)."""

    def __init__(self, times: Sequence[float] | torch.Tensor, num_entries: int):
        self.times = [float(t) for t in (times.tolist() if isinstance(times, torch.Tensor) else times)]
        self.num_entries = int(num_entries)
        self._steps: dict[int, list[StepEvidence]] = {}
        self._membership: dict[int, tuple[PatchSet, np.ndarray, np.ndarray]] = {}

    def _members(self, patch_set: PatchSet) -> tuple[np.ndarray, np.ndarray]:
        if id(patch_set) not in self._membership:  # the patch set is kept, so its id is not reused
            self._membership[id(patch_set)] = (patch_set, *patch_membership(patch_set))
        return self._membership[id(patch_set)][1:]

    def __call__(self, step: int, t: float, z: torch.Tensor, denoised: torch.Tensor, weights: list | None) -> None:
        if not weights:
            raise ScoreError("the evidence recorder needs posterior weights: sample a PSPC denoiser with "
                             "request=WeightRequest(...)")
        z, denoised = z.detach().cpu().numpy(), denoised.detach().cpu().numpy()
        for index, group in weights:
            position, pixel = self._members(group.patch_set)
            entry, weight = group.entry.numpy().astype(np.int64), group.weight.numpy()
            mass, entropy, ess = group.mass.numpy(), group.entropy.numpy(), group.ess.numpy()
            for row, b in enumerate(index.tolist()):
                self._steps.setdefault(b, []).append(StepEvidence(
                    step=int(step), t=float(t), t_next=self.times[int(step) + 1], num_images=group.num_images,
                    num_entries=self.num_entries, num_patches=group.patch_set.num_patches, member_position=position,
                    member_pixel=pixel, entry=entry[row], weight=weight[row], entropy=entropy[row], ess=ess[row],
                    mass=mass[row], z=z[b], denoised=denoised[b]))

    def evidence(self, sample: int) -> list[StepEvidence]:
        """Sample `sample`'s steps in order."""
        if sample not in self._steps:
            raise ScoreError(f"no evidence recorded for sample {sample}")
        return self._steps[sample]
