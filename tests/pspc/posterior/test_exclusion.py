"""Counterfactual removal: PSPC with training images excluded (`excluded`, `without`).

The reference is the slow PSPC of tests/support/reference.py run on ONLY the kept images;
the masked run must agree with it while numbering entries as the whole set does (image i,
flip N + i). The random sets hold 19 images: with 8 lanes a block, removing images 0-7
empties the first block (the fused kernels skip it), 10 and 18 fall in partly kept blocks
(18 beside the padding); the torch path's small chunks make some chunks all excluded.
"""

import hashlib
import json

import numba
import numpy as np
import pytest
import torch

from pspc.data.training_set import TrainingSet
from pspc.denoisers import CFDMDenoiser, EmpiricalDenoiser, GaussianDenoiser, NetworkDenoiser, pspc_flex, pspc_square
from pspc.errors import InputError
from pspc.posterior.patch_posterior import ExclusionError, patch_posterior
from pspc.posterior.patch_sets import WindowPatches, flex_masks, square_patches
from pspc.posterior.sensitivity import isotropic_sensitivity
from pspc.posterior.weights import WeightRequest
from pspc.schedules import Schedule
from tests.support.data import noisy, random_training_set
from tests.support.reference import entries_of, reference_pspc, reference_weights

COUNT, SIZE = 19, 6
REMOVED = [0, 1, 2, 3, 4, 5, 6, 7, 10, 18]
KEPT = [i for i in range(COUNT) if i not in REMOVED]
T = torch.tensor([0.1, 0.4, 1.5, 10.0])  # mixed noise levels in one batch
SENSITIVITY = isotropic_sensitivity(SIZE, SIZE)
KINDS = {  # denoiser over a training set, and the reference's masks at t
    "square-3": (lambda data: pspc_square(data, 3), lambda t: square_patches(SIZE, SIZE, 3).masks()),
    "whole-image": (EmpiricalDenoiser, lambda t: WindowPatches(SIZE, SIZE, SIZE, SIZE).masks()),
    "flex": (lambda data: pspc_flex(data, SENSITIVITY, Schedule((1.0,), (0.5,))),
             lambda t: flex_masks(SENSITIVITY(t), 0.5)),
}
ALL = WeightRequest(top_k=2 * COUNT, mass=1.0)


def _set(xflip: bool) -> TrainingSet:
    return random_training_set(count=COUNT, channels=1, height=SIZE, width=SIZE, seed=5, xflip=xflip)


def _queries(training_set: TrainingSet) -> torch.Tensor:
    """Noisy copies of removed images 0, 3 and 10 and of kept image 11: the counterfactual question."""
    return noisy(training_set, T, indices=[0, 3, 10, 11])


def _original_ids(kept: list[int], num_images: int, xflip: bool) -> torch.Tensor:
    """Entry j of the set of the kept images, as an entry of the whole set."""
    ids = torch.tensor(kept)
    return torch.cat([ids, ids + num_images]) if xflip else ids


def _torch_path(denoiser, z, t, request=None):
    """The torch path (no fused kernels), one sample at a time with its own patch set, in
    chunks of a few images (so that some chunks hold only excluded ones)."""
    outs, weights = [], []
    for b in range(len(t)):
        out, w = patch_posterior(z[b : b + 1], t[b : b + 1].double(), denoiser.data, denoiser.patch_set_at(float(t[b])),
                                 denoiser.training_set.xflip, request, chunk_bytes=1 << 12, excluded=denoiser.excluded)
        outs.append(out)
        weights.append(w)
    return torch.cat(outs), weights


def _per_sample(denoiser, z, t, path, request):
    """(output, [(entry [K, k], weight [K, k], full or None) per sample]) on the chosen path."""
    if path == "torch":
        out, weights = _torch_path(denoiser, z, t, request)
        return out, [(w.entry[0], w.weight[0], None if w.full is None else w.full[0]) for w in weights]
    out, groups = denoiser.posterior(z, t, request)
    samples = {}
    for index, w in groups:
        for row, b in enumerate(index.tolist()):
            samples[b] = (w.entry[row], w.weight[row], None)
    return out, [samples[b] for b in range(len(t))]


def _dense(entry: torch.Tensor, weight: torch.Tensor, num_entries: int) -> torch.Tensor:
    """[K, E] weights from the kept (entry, weight) lists (-1 carries weight 0)."""
    dense = torch.zeros(entry.shape[0], num_entries + 1, dtype=torch.float64)
    dense.scatter_add_(1, torch.where(entry >= 0, entry, num_entries), weight.double())
    return dense[:, :num_entries]


def _expected_weights(z_b, t_b, training_set, kept, masks) -> torch.Tensor:
    """The reference softmax over the kept images' entries, placed at their original ids."""
    kept_entries = entries_of(training_set.images[kept], training_set.xflip)
    dense = torch.zeros(masks.shape[0], training_set.num_entries, dtype=torch.float64)
    dense[:, _original_ids(kept, len(training_set), training_set.xflip)] = reference_weights(z_b, t_b, kept_entries, masks)
    return dense


@pytest.mark.parametrize("path", ["fused", "torch"])
@pytest.mark.parametrize("xflip", [False, True])
@pytest.mark.parametrize("kind", list(KINDS))
def test_removal_is_the_reference_on_the_kept_images(kind, xflip, path):
    make, masks_at = KINDS[kind]
    training_set = _set(xflip)
    denoiser = make(training_set).without(REMOVED)
    z = _queries(training_set)
    out, samples = _per_sample(denoiser, z, T, path, ALL)
    expected = reference_pspc(z, T, entries_of(training_set.images[KEPT], xflip), masks_at)
    assert torch.allclose(out.double(), expected, atol=1e-6, rtol=0)
    assert torch.allclose(denoiser(z, T).double(), expected, atol=1e-6, rtol=0)
    removed_ids = set(REMOVED) | ({i + COUNT for i in REMOVED} if xflip else set())
    for b, (entry, weight, _) in enumerate(samples):
        assert not removed_ids & set(entry.flatten().tolist()), "an excluded entry was kept"
        wanted = _expected_weights(z[b], float(T[b]), training_set, KEPT, masks_at(float(T[b])))
        assert torch.allclose(_dense(entry, weight, training_set.num_entries), wanted, atol=1e-6)


@pytest.mark.parametrize("xflip", [False, True])
def test_excluded_entries_have_exactly_zero_dense_weight(xflip):
    training_set = _set(xflip)
    denoiser = pspc_square(training_set, 3).without(REMOVED)
    z = _queries(training_set)
    _, samples = _per_sample(denoiser, z, T, "torch", WeightRequest(top_k=4, mass=1.0, full=True))
    removed_ids = torch.tensor(REMOVED + ([i + COUNT for i in REMOVED] if xflip else []))
    masks = square_patches(SIZE, SIZE, 3).masks()
    for b, (_, _, full) in enumerate(samples):
        assert torch.equal(full[:, removed_ids], torch.zeros(len(masks), len(removed_ids), dtype=torch.float64))
        assert torch.allclose(full, _expected_weights(z[b], float(T[b]), training_set, KEPT, masks), atol=1e-6)


def test_removal_equals_pspc_on_the_subset_of_kept_images():
    training_set = _set(True)
    z = _queries(training_set)
    masked_out, ((_, masked),) = pspc_square(training_set, 3).without(REMOVED).posterior(z, T, ALL)
    subset_out, ((_, subset),) = pspc_square(training_set.subset(KEPT), 3).posterior(z, T, ALL)
    mapped = torch.where(subset.entry >= 0, _original_ids(KEPT, COUNT, True)[subset.entry.clamp(min=0)], -1)
    assert torch.allclose(masked_out, subset_out, atol=1e-6, rtol=0)
    # the same entries in the same order, save where the captured mass rounds to 1 a weight earlier
    clear = (masked.weight > 1e-12) & (subset.weight > 1e-12)
    assert clear.sum() > 100 and torch.equal(masked.entry[clear], mapped[clear])
    for b in range(len(T)):
        assert torch.allclose(_dense(masked.entry[b], masked.weight[b], 2 * COUNT),
                              _dense(mapped[b], subset.weight[b], 2 * COUNT), atol=1e-6)
    for name in ("weight", "mass", "entropy", "ess"):
        assert torch.allclose(getattr(masked, name), getattr(subset, name), atol=1e-6, rtol=1e-6), name


def test_fused_kernels_and_torch_path_agree_with_a_mask(fashion_slice):
    training_set = fashion_slice.with_xflip()
    denoiser = pspc_square(training_set, 5).without([3, *range(8, 16)])  # block 1 of the kernels: all removed
    t = torch.tensor([0.7, 0.2])
    z = noisy(training_set, t, indices=[3, 20])
    fused_out, ((_, fused),) = denoiser.posterior(z, t, WeightRequest(top_k=5, mass=0.9))
    torch_out, plain = patch_posterior(z, t.double(), denoiser.data, denoiser.patch_set_at(0.7), True,
                                       WeightRequest(top_k=5, mass=0.9, full=True), excluded=denoiser.excluded)
    assert torch.allclose(fused_out, torch_out, atol=1e-6)
    assert torch.allclose(fused.weight, plain.weight, atol=1e-6)
    assert torch.allclose(fused.entropy, plain.entropy, atol=1e-5)
    kept = fused.entry >= 0  # every kept entry carries its true weight (black patches tie across images)
    assert torch.allclose(plain.full.gather(2, fused.entry.clamp(min=0)).float()[kept], fused.weight[kept], atol=1e-6)
    removed = torch.tensor([3, *range(8, 16)])
    assert not torch.isin(fused.entry, torch.cat([removed, removed + 24])).any()
    assert plain.full[..., removed].eq(0).all() and plain.full[..., removed + 24].eq(0).all()


def _assert_identical(first, second):
    """Two posterior() results are bit-identical: outputs, ids and every summary."""
    assert torch.equal(first[0], second[0])
    for (index_a, a), (index_b, b) in zip(first[1], second[1], strict=True):
        assert torch.equal(index_a, index_b) and torch.equal(a.entry, b.entry)
        assert all(torch.equal(getattr(a, name), getattr(b, name)) for name in ("weight", "mass", "entropy", "ess"))


def test_masked_attribution_does_not_depend_on_the_thread_count(monkeypatch):
    """129 blocks, cut into 4 groups of about 32: the removal empties group 1 and part of 2."""
    training_set = random_training_set(count=1030, channels=1, height=SIZE, width=SIZE, seed=2, xflip=True)
    denoiser = pspc_square(training_set, 3).without([0, 3, *range(250, 530), 1029])
    z = noisy(training_set, T, indices=[3, 300, 600, 1000])
    request = WeightRequest(top_k=8, mass=1.0)
    before = numba.get_num_threads()
    if numba.config.NUMBA_NUM_THREADS >= 2:  # real threads
        numba.set_num_threads(1)
        one = denoiser.posterior(z, T, request)
        numba.set_num_threads(2)
        try:
            _assert_identical(one, denoiser.posterior(z, T, request))
        finally:
            numba.set_num_threads(before)
    monkeypatch.setattr(numba, "get_num_threads", lambda: 1)
    one = denoiser.posterior(z, T, request)
    for parts in (2, 3, 70):  # the kernels split the groups into this many parts
        monkeypatch.setattr(numba, "get_num_threads", lambda: parts)
        _assert_identical(one, denoiser.posterior(z, T, request))


@pytest.mark.parametrize("path", ["fused", "torch"])
def test_ties_go_to_the_lowest_kept_copy(path):
    """Images 3, 9 and 12 are identical: without image 3, its copies 9 then 12 come first."""
    images = random_training_set(count=13, channels=1, height=SIZE, width=SIZE, seed=4).images.clone()
    images[9] = images[12] = images[3]
    training_set = TrainingSet(images, [f"img-{i}" for i in range(13)], name="tied", xflip=True)
    denoiser = EmpiricalDenoiser(training_set).without([3])
    t = torch.tensor([0.5])
    _, ((entry, weight, _),) = _per_sample(denoiser, noisy(training_set, t, indices=[3]), t, path,
                                           WeightRequest(top_k=2, mass=1.0))
    assert entry[0].tolist() == [9, 12]
    assert weight[0, 0] == weight[0, 1]


def test_without_shares_the_data_and_records_the_removal():
    training_set = _set(True)
    base = pspc_square(training_set, 3)
    record = json.dumps(base.describe(), sort_keys=True)
    layout = base._images_t()
    masked = base.without([5, 1, 2, 1])
    assert masked.training_set is training_set and masked.data is base.data and masked._images_t() is layout
    assert masked.kind == base.kind and masked.patch_set_at is base.patch_set_at
    assert masked.excluded.nonzero()[:, 0].tolist() == [1, 2, 5] and base.excluded is None
    assert json.dumps(base.describe(), sort_keys=True) == record and "removed" not in record
    sha = hashlib.sha256(np.array([1, 2, 5], dtype="<i8").tobytes()).hexdigest()
    assert masked.describe() == {**base.describe(), "removed": {"count": 3, "sha256": sha}}
    union = base.without([1, 2]).without([2, 5])
    assert torch.equal(union.excluded, masked.excluded) and union.describe() == masked.describe()
    assert base.without([]).excluded is None and base.without([]).describe() == base.describe()
    assert masked.without([]).describe() == masked.describe()


def test_cfdm_removes_the_images_from_its_empirical_denoiser():
    training_set = _set(True)
    z = _queries(training_set)
    cfdm = CFDMDenoiser(training_set, sigma=0.2, draws=3, seed=7)
    masked = cfdm.without(REMOVED)
    assert cfdm.excluded is None and masked.excluded.nonzero()[:, 0].tolist() == REMOVED
    assert masked.empirical.data is cfdm.empirical.data
    expected = CFDMDenoiser(training_set.subset(KEPT), sigma=0.2, draws=3, seed=7)(z, T)
    assert torch.allclose(masked(z, T), expected, atol=1e-6)
    assert masked.describe()["removed"]["count"] == len(REMOVED) and "removed" not in cfdm.describe()


def test_only_denoisers_that_weigh_training_images_allow_removal():
    training_set = _set(False)
    with pytest.raises(InputError, match="needs a PSPC denoiser .* gaussian"):
        GaussianDenoiser(training_set).without([1])
    with pytest.raises(InputError, match="needs a PSPC denoiser .* network"):
        NetworkDenoiser(torch.nn.Identity(), (1, SIZE, SIZE)).without([1])


@pytest.mark.parametrize("indices, message", [
    ([2, 19, 25], r"index 19 is out of range: the training set has 19 images \(0\.\.18\)"),
    ([-1], r"index -1 is out of range"),
    ([1, 2.5], r"must be integers, got 2\.5"),
    ([1.0], r"must be integers, got 1\.0"),
    (torch.tensor([1.0, 2.0]), r"must be integers, got 1\.0"),
    (torch.ones(19, dtype=torch.bool), r"must be integers, got True"),
    (["3"], r"must be integers, got '3'"),
    (3, r"must be a list of integers, got 3"),
    (torch.zeros(2, 2, dtype=torch.long), r"must be a flat list"),
    (range(19), r"at least one training image must remain"),
])
def test_bad_removals_are_input_errors_naming_the_problem(indices, message):
    with pytest.raises(ExclusionError, match=message):
        pspc_square(_set(True), 3).without(indices)


def test_a_removal_that_empties_the_set_in_steps_is_refused():
    first = EmpiricalDenoiser(_set(False)).without(range(10))
    with pytest.raises(ExclusionError, match="at least one training image must remain"):
        first.without(range(10, 19))
    assert issubclass(ExclusionError, InputError)


@pytest.mark.parametrize("excluded, message", [
    (torch.zeros(18, dtype=torch.bool), r"bool tensor \[19\].*got \(18,\)"),
    (torch.zeros(19, dtype=torch.long), r"bool tensor \[19\]"),
    ([False] * 19, r"bool tensor \[19\].*got list"),
    (torch.ones(19, dtype=torch.bool), r"at least one training image must remain"),
])
@pytest.mark.parametrize("fused", [True, False])
def test_patch_posterior_checks_the_mask(excluded, message, fused):
    denoiser = pspc_square(_set(False), 3)
    z = _queries(denoiser.training_set)
    with pytest.raises(ExclusionError, match=message):
        patch_posterior(z, T.double(), denoiser.data, denoiser.patch_set_at(1.0), False, excluded=excluded,
                        images_t=denoiser._images_t() if fused else None)
