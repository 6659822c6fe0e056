"""The candidate attribution scores against slow references written from the formulas
(loops over patches, pixels and entries), on tiny random evidence, and the live-run recorder."""

import math

import numpy as np
import pytest
import torch

from pspc.denoisers import pspc_square
from pspc.posterior.patch_sets import MaskPatches
from pspc.posterior.scores import (
    SCORES, STEP_WEIGHTS, EvidenceRecorder, ScoreError, StepEvidence, change_weighted_share, compute_scores,
    final_share, image_pixel_weights, informative_share, largest_regions, nda, patch_discount, patch_membership,
    pixel_similarity, region, step_weight, step_weighted_share, trajectory_share,
)
from pspc.posterior.weights import WeightRequest
from pspc.samplers import SamplerConfig, initial_noise, sample
from tests.support.data import random_training_set

C, H, W, N = 2, 4, 5, 6  # channels, height, width, training images (12 entries with mirrors)


def random_masks(rng, num_patches=7) -> torch.Tensor:
    """Random masks [K, H, W] covering every pixel (the last ones fill the gaps)."""
    masks = rng.random((num_patches, H, W)) < 0.3
    masks[-1] |= ~masks.any(0)
    masks[np.arange(num_patches), rng.integers(0, H, num_patches), rng.integers(0, W, num_patches)] = True  # none empty
    return torch.from_numpy(masks)


def random_step(rng, step=0, t=1.0, t_next=0.5, masks=None, kept=3, previous=None) -> StepEvidence:
    """One step's evidence: kept entries distinct per patch (some -1), mirrors included."""
    masks = random_masks(rng) if masks is None else masks
    position, pixel = patch_membership(MaskPatches(masks))
    num_patches = masks.shape[0]
    entry = np.full((num_patches, kept), -1, np.int64)
    weight = np.zeros((num_patches, kept), np.float32)
    for k in range(num_patches):
        count = int(rng.integers(1, kept + 1))
        entry[k, :count] = rng.choice(2 * N, count, replace=False)
        weight[k, :count] = np.sort(rng.dirichlet(np.ones(count + 1))[:count])[::-1]
    denoised = rng.uniform(-1, 1, (C, H, W)).astype(np.float32)
    return StepEvidence(step=step, t=t, t_next=t_next, num_images=N, num_entries=2 * N, num_patches=num_patches,
                        member_position=position, member_pixel=pixel, entry=entry, weight=weight,
                        entropy=rng.uniform(0, math.log(2 * N), num_patches).astype(np.float32),
                        ess=rng.uniform(1, 2 * N, num_patches).astype(np.float32), mass=weight.sum(1),
                        z=rng.normal(size=(C, H, W)).astype(np.float32), denoised=denoised)


def random_steps(seed=0, count=4) -> list[StepEvidence]:
    rng = np.random.default_rng(seed)
    times = [8.0, 2.0, 0.5, 0.1, 0.0][-count - 1:]
    return [random_step(rng, i, times[i], times[i + 1]) for i in range(count)]


# -- slow references ---------------------------------------------------------------------
def masks_of(step: StepEvidence) -> np.ndarray:
    masks = np.zeros((step.num_patches, H * W), bool)
    masks[step.member_position, step.member_pixel] = True
    return masks


def reference_pixel_weights(step: StepEvidence) -> np.ndarray:
    """p[image, q] = sum over patches covering q of the image's (or its mirror's) kept weight / cov(q) (Eq. 11)."""
    masks = masks_of(step)
    p = np.zeros((N, H * W))
    for q in range(H * W):
        cov = sum(1 for k in range(step.num_patches) if masks[k, q])
        for k in range(step.num_patches):
            if not masks[k, q]:
                continue
            for e, w in zip(step.entry[k], step.weight[k]):
                if e >= 0:
                    p[e % N, q] += float(w) / cov
    return p


def reference_share(step: StepEvidence, factor=None) -> np.ndarray:
    """share_i = (1 / HW) sum_q p_i(q), each patch's weights scaled by factor[k]."""
    masks, out = masks_of(step), np.zeros(N)
    for q in range(H * W):
        cov = masks[:, q].sum()
        for k in np.nonzero(masks[:, q])[0]:
            for e, w in zip(step.entry[k], step.weight[k]):
                if e >= 0:
                    out[e % N] += float(w) * (1.0 if factor is None else factor[k]) / cov / (H * W)
    return out


def reference_trajectory(steps, factor_of=None) -> np.ndarray:
    written = [1 - s.t_next / s.t for s in steps]
    return sum(a / sum(written) * reference_share(s, None if factor_of is None else factor_of(s))
               for a, s in zip(written, steps))


def reference_variance(step: StepEvidence) -> np.ndarray:
    masks = masks_of(step)
    flat = step.denoised.reshape(C, -1).astype(np.float64)
    return np.array([np.var(flat[:, masks[k]]) for k in range(step.num_patches)])


# -- the scores against the references ------------------------------------------------------
def test_final_share_is_the_last_steps_share_with_mirrors_merged():
    steps = random_steps()
    np.testing.assert_allclose(final_share(steps), reference_share(steps[-1]), rtol=1e-6, atol=1e-12)


def test_trajectory_share_weighs_steps_by_their_euler_coefficients():
    steps = random_steps(1)
    np.testing.assert_allclose(trajectory_share(steps), reference_trajectory(steps), rtol=1e-6, atol=1e-12)


def test_image_pixel_weights_match_eq_11_per_pixel():
    step = random_steps(2)[0]
    images, maps = image_pixel_weights(step)
    dense = np.zeros((N, H * W))
    dense[images] = maps
    np.testing.assert_allclose(dense, reference_pixel_weights(step), rtol=1e-6, atol=1e-12)
    assert list(images) == sorted(set((step.entry[step.entry >= 0] % N).tolist()))


@pytest.mark.parametrize("exponent", [0.5, 2.0])
def test_informative_share_scales_each_patch_by_its_discount(exponent):
    steps = random_steps(3)
    factors = {
        "entropy": lambda s: [(1 - float(h) / math.log(2 * N)) ** exponent for h in s.entropy],
        "ess": lambda s: [float(e) ** -exponent for e in s.ess],
        "variance": lambda s: list((reference_variance(s) / reference_variance(s).max()) ** exponent),
    }
    for kind, factor_of in factors.items():
        np.testing.assert_allclose(informative_share(steps, kind, exponent), reference_trajectory(steps, factor_of),
                                   rtol=1e-5, atol=1e-12, err_msg=kind)
        np.testing.assert_allclose(patch_discount(steps[0], kind, exponent), factor_of(steps[0]), rtol=1e-5)


def test_informative_share_with_exponent_zero_is_the_trajectory_share():
    steps = random_steps(4)
    for kind in ("entropy", "ess", "variance"):
        np.testing.assert_allclose(informative_share(steps, kind, 0.0), trajectory_share(steps), rtol=1e-12)


def test_step_weighted_share_is_the_mean_of_the_step_shares_weighted_by_the_table_row_nearest_in_log_t():
    steps = random_steps(12)  # t = 8, 2, 0.5, 0.1
    table = [(10.0, 0.0), (1.5, 2.0), (0.4, 1.0), (0.001, 3.0)]  # nearest in log t: 10, 1.5, 0.4, 0.4
    expected = (2.0 * reference_share(steps[1]) + 1.0 * reference_share(steps[2]) + 1.0 * reference_share(steps[3])) / 4
    np.testing.assert_allclose(step_weighted_share(steps, table), expected, rtol=1e-6, atol=1e-12)
    assert step_weight(0.01, table) == 3.0 and step_weight(0.1, table) == 1.0
    assert [t for t, _ in STEP_WEIGHTS] == sorted((t for t, _ in STEP_WEIGHTS), reverse=True)
    assert all(w >= 0 for _, w in STEP_WEIGHTS) and step_weighted_share(steps).shape == (N,)
    with pytest.raises(ScoreError, match="all 0"):
        step_weighted_share(steps, [(1.0, 0.0)])
    with pytest.raises(ScoreError, match="table is empty"):
        step_weighted_share(steps, [])


def test_change_weighted_share_weighs_pixels_by_how_much_each_step_changed_them():
    steps = random_steps(5)
    changes, previous = [], np.zeros((C, H, W))
    for s in steps:
        changes.append(np.abs(s.denoised - previous).sum(0).ravel())
        previous = s.denoised
    total = sum(c.sum() for c in changes)
    expected = np.zeros(N)
    for s, change in zip(steps, changes):
        p = reference_pixel_weights(s)
        for i in range(N):
            for q in range(H * W):
                expected[i] += p[i, q] * change[q] / total
    np.testing.assert_allclose(change_weighted_share(steps), expected, rtol=1e-5, atol=1e-12)


def flood_fill_regions(labels: np.ndarray) -> dict[int, int]:
    """Largest 4-connected region per label by union-find (a different algorithm from the module's BFS)."""
    parent = list(range(labels.size))

    def find(a):
        while parent[a] != a:
            parent[a] = parent[parent[a]]
            a = parent[a]
        return a

    height, width = labels.shape
    for y in range(height):
        for x in range(width):
            for ny, nx in ((y + 1, x), (y, x + 1)):
                if ny < height and nx < width and labels[y, x] == labels[ny, nx]:
                    parent[find(y * width + x)] = find(ny * width + nx)
    sizes: dict[int, int] = {}
    for a in range(labels.size):
        sizes[find(a)] = sizes.get(find(a), 0) + 1
    best: dict[int, int] = {}
    for root, size in sizes.items():
        label = int(labels.flat[root])
        if label >= 0:
            best[label] = max(best.get(label, 0), size)
    return best


def test_largest_regions_match_a_union_find_on_random_label_maps():
    rng = np.random.default_rng(6)
    for _ in range(20):
        labels = rng.integers(-1, 3, (6, 7))
        assert largest_regions(labels) == flood_fill_regions(labels)
    assert largest_regions(np.array([[0, 1], [1, 0]])) == {0: 1, 1: 1}  # diagonal is not 4-connected


def test_region_is_the_largest_region_where_the_image_dominates_the_final_pixels():
    steps = random_steps(7)
    p = reference_pixel_weights(steps[-1])
    dominant = np.where(p.max(0) > 0, p.argmax(0), -1).reshape(H, W)  # argmax: the lowest index on ties
    expected = np.zeros(N)
    for image, size in flood_fill_regions(dominant).items():
        expected[image] = size / (H * W)
    np.testing.assert_allclose(region(steps), expected)


def test_nda_sums_the_posterior_weights_over_patches_and_steps():
    steps = random_steps(8)
    expected = np.zeros(N)
    for s in steps:
        for k in range(s.num_patches):
            for e, w in zip(s.entry[k], s.weight[k]):
                if e >= 0:
                    expected[e % N] += float(w)
    np.testing.assert_allclose(nda(steps), expected, rtol=1e-6)


def test_pixel_similarity_is_the_best_of_image_and_mirror():
    rng = np.random.default_rng(9)
    images = torch.from_numpy(rng.uniform(-1, 1, (N, C, H, W)))
    query = images[2].flip(-1) + 0.01
    expected = [-min(float(((query - x) ** 2).sum()), float(((query - x.flip(-1)) ** 2).sum())) for x in images]
    np.testing.assert_allclose(pixel_similarity(query, images), expected, rtol=1e-12)
    assert int(np.argmax(pixel_similarity(query, images))) == 2
    np.testing.assert_allclose(pixel_similarity(query, images, xflip=False),
                               [-float(((query - x) ** 2).sum()) for x in images], rtol=1e-12)


def test_registry_names_meanings_and_compute_scores():
    steps = random_steps(10)
    assert list(SCORES) == ["final-share", "trajectory-share", "informative-share", "step-weighted-share", "region",
                            "nda"]
    assert all(s.meaning.endswith(".") and len(s.meaning) > 20 for s in SCORES.values())
    scores = compute_scores(steps)
    assert set(scores) == set(SCORES) and all(v.shape == (N,) and v.dtype == np.float64 for v in scores.values())
    assert set(compute_scores(steps, ["nda"])) == {"nda"}
    with pytest.raises(ScoreError, match="unknown score 'bogus'"):
        compute_scores(steps, ["bogus"])


def test_bad_evidence_is_refused_with_a_message_naming_it():
    rng = np.random.default_rng(11)
    good = random_step(rng)
    with pytest.raises(ScoreError, match="entry .* and weight"):
        StepEvidence(**{**vars(good), "weight": good.weight[:, :1]})
    with pytest.raises(ScoreError, match="beyond the 12 entries"):
        StepEvidence(**{**vars(good), "entry": np.where(good.entry >= 0, 12, -1)})
    with pytest.raises(ScoreError, match="at least one step"):
        final_share([])
    with pytest.raises(ScoreError, match="increasing step order"):
        trajectory_share([good, good])
    with pytest.raises(ScoreError, match="unknown discount"):
        informative_share([good], "flatness", 1.0)


# -- evidence from a live run ---------------------------------------------------------------
def test_recorder_keeps_each_samples_steps_and_full_weights_make_shares_sum_to_one():
    data = random_training_set(count=5, channels=1, height=6, width=7, seed=2, xflip=True)
    denoiser = pspc_square(data, patch_size=3)
    config = SamplerConfig(num_steps=3)
    recorder = EvidenceRecorder(config.time_steps(), data.num_entries)
    z = initial_noise(2, data.image_shape, seed=0)
    out = sample(denoiser, z, config, callback=recorder, request=WeightRequest(top_k=data.num_entries, mass=1.0))
    for b in range(2):
        steps = recorder.evidence(b)
        assert [s.step for s in steps] == [0, 1, 2] and steps[-1].t_next == 0.0
        np.testing.assert_allclose(steps[-1].denoised, out[b].numpy(), atol=1e-6)  # the last step's D is the sample
        assert final_share(steps).sum() == pytest.approx(1.0, abs=1e-5)  # every weight kept: the image is all shares
        _, maps = image_pixel_weights(steps[-1])
        np.testing.assert_allclose(maps.sum(0), 1.0, atol=1e-5)
    masks = denoiser.patch_set_at(1.0).masks()
    position, pixel = patch_membership(denoiser.patch_set_at(1.0))
    assert len(position) == int(masks.sum()) and np.all(np.diff(position) >= 0)
    with pytest.raises(ScoreError, match="no evidence recorded for sample 5"):
        recorder.evidence(5)
    with pytest.raises(ScoreError, match="needs posterior weights"):
        sample(denoiser, z, config, callback=recorder)
