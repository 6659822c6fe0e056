"""Shift-tolerant copy evidence (auditor.similarity.evidence), the labelled cases and the metrics.

Data: the first 400 Fashion-MNIST training images and 200 test images (skipped without the package).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from auditor.similarity.cases import (
    FAMILIES, PARTIAL_FAMILIES, CasesError, blur, build_cases, region_mask, shift, split_rows
)
from auditor.similarity.copy_detection import CopyDetectionError
from auditor.similarity.evidence import (
    AlignedCorrelation, EditedCorrelation, RegionMatch, axis_operator, edit_grid, largest_region
)
from auditor.similarity.metrics import auroc, iou, recall_at, threshold_for_fpr, tpr_at_fpr
from pspc.data.loaders import load_fashion_mnist
from tests.support.data import fashion_mnist


@pytest.fixture(scope="module")
def images():
    train = fashion_mnist(400).images
    return train, load_fashion_mnist("test", limit=200).images


# -- metrics -------------------------------------------------------------------------------
def test_auroc_counts_ties_half_and_thresholds_keep_the_fpr():
    assert auroc([3, 4], [1, 2]) == 1.0 and auroc([1], [2]) == 0.0 and auroc([1], [1]) == 0.5
    assert math.isnan(auroc([], [1]))
    negatives = np.arange(100) / 100  # 0.00 .. 0.99
    threshold = threshold_for_fpr(negatives, 0.01)
    assert np.mean(negatives >= threshold) == 0.01 and 0.98 < threshold <= 0.99
    assert tpr_at_fpr([0.985, 0.995, 0.5], negatives, 0.01) == pytest.approx(2 / 3)
    assert recall_at([[1, 2], [3, 4]], [2, 5], 1) == 0.0 and recall_at([[1, 2], [3, 4]], [2, 5], 2) == 0.5
    truth = np.zeros((4, 4), bool)
    truth[:2] = True
    assert iou(truth, truth) == 1.0 and iou(None, truth) == 0.0 and iou(truth[::-1].copy(), truth) == 0.0


# -- cases ---------------------------------------------------------------------------------
def test_cases_are_labelled_seeded_and_split_disjointly(images):
    train, test = images
    cases = build_cases(train, test, per_family=6, seed=3, novel_count=20)
    assert len(cases) == 6 * (len(FAMILIES) - 1) + 20
    again = build_cases(train, test, per_family=6, seed=3, novel_count=20)
    assert torch.equal(cases.images, again.images) and (cases.source == again.source).all()
    exact = cases.of("exact")
    assert torch.equal(exact.images, train[torch.from_numpy(exact.source)])
    mirrored = cases.of("exact-mirrored")
    assert torch.equal(mirrored.images, train[torch.from_numpy(mirrored.source - len(train))].flip(-1))
    for family in PARTIAL_FAMILIES:
        part = cases.of(family)
        share = int(family.split("-")[1]) / 100
        assert abs(part.mask.mean() - share) < 0.06, family
        inside = torch.from_numpy(part.mask)[:, None]
        assert torch.equal(part.images[inside.expand_as(part.images)],
                           train[torch.from_numpy(part.source)][inside.expand_as(part.images)])
    assert (cases.of("novel").source == -1).all()
    cal, held = split_rows(cases, 0)
    assert not set(cal) & set(held) and len(cal) + len(held) == len(cases)
    with pytest.raises(CasesError, match="unknown case families"):
        build_cases(train, test, families=("exact", "nope"))
    with pytest.raises(CasesError, match="need"):
        build_cases(train[:5], test, per_family=6)


def test_region_masks_cover_their_share():
    rng = np.random.default_rng(0)
    for family in PARTIAL_FAMILIES:
        share = int(family.split("-")[1]) / 100
        assert abs(region_mask(family, 28, 28, rng).mean() - share) < 0.06, family


# -- evidence ------------------------------------------------------------------------------
def test_aligned_correlation_finds_shifted_copies_that_same_position_correlation_misses(images):
    train, _ = images
    aligned = AlignedCorrelation(train)
    sources = list(range(0, 400, 25))  # 16 images
    shifted = torch.stack([shift(train[i].float()[None], 1, -1)[0] for i in sources]).round().to(torch.uint8)
    found = [e.entry % len(train) for e in aligned(shifted)]
    # the same-position (pixel) correlation of the shifted image, as the pixel-correlation descriptor sees it
    flat = lambda x: x.float().flatten(1) - x.float().flatten(1).mean(1, keepdim=True)  # noqa: E731
    unit = lambda x: flat(x) / flat(x).norm(dim=1, keepdim=True)  # noqa: E731
    same_position = (unit(shifted) @ unit(train).T).argmax(1).tolist()
    hits = sum(f == s for f, s in zip(found, sources))
    assert hits >= 15 and hits > sum(f == s for f, s in zip(same_position, sources))
    exact = aligned(train[sources[:4]])
    assert all(e.alignment["correlation"] > 0.9999 and e.alignment["transform"] == "shift"
               and e.alignment["shift"] == [0, 0] and e.score > 3 for e in exact)


def _edited(image: torch.Tensor, transform: str, value: tuple) -> torch.Tensor:
    """The 2-D edit of one float image [H, W], as the benchmark's cases make copies."""
    x = image[None, None]
    if transform == "shift":
        return shift(x, *value)[0, 0]
    if transform == "crop":
        top, bottom, left, right = value
        h, w = image.shape
        crop = x[:, :, top:h - bottom, left:w - right]
        return F.interpolate(crop, size=(h, w), mode="bilinear", align_corners=False, antialias=True)[0, 0]
    return blur(x, value[0])[0, 0]


def test_the_edit_grid_is_every_shift_crop_and_blur_once():
    _, _, edits = edit_grid(3, range(4), (0.6, 1.5))
    kinds = [e.transform for e in edits]
    assert (kinds.count("shift"), kinds.count("crop"), kinds.count("blur")) == (49, 255, 2)
    assert len({(e.transform, e.value) for e in edits}) == len(edits)
    assert ("crop", (0, 0, 0, 0)) not in {(e.transform, e.value) for e in edits}  # the identity is shift (0, 0)
    with pytest.raises(ValueError, match="cannot crop"):
        axis_operator(6, ("crop", 3, 3))
    with pytest.raises(ValueError, match="unknown edit"):
        axis_operator(6, ("rotate", 1))
    small = EditedCorrelation(5, 5)  # crops of 3 px per side do not fit: left out, not an error
    assert max(max(e.value) for e in small.edits if e.transform == "crop") == 2


def test_separable_edits_equal_the_benchmarks_edits(images):
    train, _ = images
    correlation = EditedCorrelation(28, 28)
    image = train[3, 0].float()
    for edit in correlation.edits:
        separable = correlation.rows[edit.row] @ image @ correlation.cols[edit.col].T
        torch.testing.assert_close(separable, _edited(image, edit.transform, edit.value), atol=2e-3, rtol=0)


def test_edited_correlation_matches_a_plain_loop_over_edits_and_candidates(images):
    train, test = images
    correlation = EditedCorrelation(28, 28, blur_sigmas=(0.8, 1.3))
    query = test[5, 0].float()
    candidates = train[[0, 7, 19], 0].float()
    fast = correlation(query, candidates)
    q = query.double().flatten()
    q = q - q.mean()
    for k, candidate in enumerate(candidates):
        for p, edit in enumerate(correlation.edits):
            e = _edited(candidate, edit.transform, edit.value).double().flatten()
            e = e - e.mean()
            pearson = float((q @ e) / (q.norm() * e.norm()))
            assert fast[k, p].item() == pytest.approx(pearson, abs=2e-5), (k, edit)


@pytest.mark.parametrize("family", ["shift-2", "crop-resize", "blur"])
@pytest.mark.parametrize("candidates", [64, 6])  # 6 of up to ~200 retrieved: the prefilter's shortlist decides
def test_aligned_correlation_inverts_shifts_crops_and_blurs_of_the_candidate(images, family, candidates):
    """A copy made by an edit on the grid correlates >= 0.999 with its source edited back, and
    that source ranks first (the earlier query-side search reached 0.94-0.995 for these copies)."""
    train, test = images
    aligned = AlignedCorrelation(train, candidates=candidates, retrieve=64)
    cases = build_cases(train, test, per_family=8, seed=2, families=(family,))
    for evidence, source in zip(aligned(cases.images), cases.source):
        assert evidence.entry == source and evidence.candidates[0][0] == source
        assert evidence.candidates[0][1] >= 0.999 and evidence.alignment["view"] == "raw"


def test_region_match_finds_a_pasted_region_and_its_mask(images):
    train, test = images
    region = RegionMatch(train)
    cases = build_cases(train, test, per_family=4, seed=1, families=("partial-50-rect", "partial-50-half", "novel"))
    found = region(cases.images)
    ious = []
    for e, source, mask, family in zip(found, cases.source, cases.mask, cases.family):
        if family == "novel":
            assert e.score < 0.05
            continue
        assert e.entry % len(train) == source % len(train) and e.box is not None
        ious.append(iou(e.mask, mask))
    assert min(ious) > 0.5 and np.mean(ious) > 0.7


def test_largest_region_keeps_the_biggest_component():
    mask = torch.zeros(1, 6, 6, dtype=torch.bool)
    mask[0, 0, 0] = True
    mask[0, 2:5, 2:5] = True
    out = largest_region(mask)
    assert out.sum() == 9 and not out[0, 0, 0]


def test_evidence_refuses_other_sizes_and_dtypes(images):
    train, _ = images
    aligned = AlignedCorrelation(train[:50])
    with pytest.raises(CopyDetectionError, match="uint8"):
        aligned(train[:2].float())
    with pytest.raises(CopyDetectionError, match="training entries"):
        aligned(torch.zeros(1, 1, 20, 20, dtype=torch.uint8))
