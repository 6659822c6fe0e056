"""The stored attribution does not depend on the thread count, and ties go to the lowest entry.

The data: Fashion-MNIST images plus exact copies of three of them at the end (so that whole
images and every patch of them tie exactly), with x-flips; black background patches tie
across images anyway. For the fused kernels 1020 + 4 images: 128 blocks of 8, which they cut
into 4 groups (fused_kernels.num_groups), so that 2 or 3 threads split them; for the (slow
on the CPU) torch path the 24-image slice + 4.
"""

import numba
import numpy as np
import pytest
import torch

from pspc.data.training_set import TrainingSet
from pspc.denoisers import EmpiricalDenoiser, pspc_flex, pspc_square
from pspc.posterior import fused_kernels
from pspc.posterior.patch_posterior import patch_posterior, top_k_in_order
from pspc.posterior.patch_sets import MaskPatches, flex_masks, square_patches
from pspc.posterior.sensitivity import isotropic_sensitivity
from pspc.posterior.weights import WeightRequest
from pspc.schedules import Schedule
from tests.support.data import fashion_mnist, noisy

DENOISERS = {
    "square-3": lambda data: pspc_square(data, 3),
    "whole-image": EmpiricalDenoiser,
    "flex": lambda data: pspc_flex(data, isotropic_sensitivity(28, 28), Schedule((1.0,), (0.4,))),
}
REQUEST = WeightRequest(top_k=8, mass=1.0)
T = torch.tensor([0.3, 0.6, 1.5, 0.3])


def _with_copies(base: TrainingSet) -> TrainingSet:
    """base, then copies of its images 3, 5, 3 and N - 20, with x-flips."""
    order = list(range(len(base))) + [3, 5, 3, len(base) - 20]
    return TrainingSet(base.images[order], [f"img-{i}" for i in range(len(order))], name="tied", xflip=True)


@pytest.fixture(scope="module")
def tied_set() -> TrainingSet:
    return _with_copies(fashion_mnist(limit=1020))


@pytest.fixture(scope="module")
def small_tied_set(fashion_slice) -> TrainingSet:
    return _with_copies(fashion_slice)


def _queries(training_set: TrainingSet) -> torch.Tensor:
    """Noisy copies of images 3 and 5, of the last copied one, and of image 10."""
    return noisy(training_set, T, indices=[3, 5, len(training_set) - 24, 10])


def _identical_images(training_set: TrainingSet) -> list[list[int]]:
    """Classes (of 2 or more) of pixel-identical images, each in index order."""
    classes: dict[bytes, list[int]] = {}
    for index, image in enumerate(training_set.images):
        classes.setdefault(image.numpy().tobytes(), []).append(index)
    return [members for members in classes.values() if len(members) > 1]


def _with(threads: int, run):
    """run() with numba (and torch) at `threads` threads, restored afterwards."""
    before = numba.get_num_threads(), torch.get_num_threads()
    numba.set_num_threads(threads)
    try:
        return run()
    finally:
        numba.set_num_threads(before[0])
        torch.set_num_threads(before[1])


def _assert_identical(first, second):
    """Two posterior() results (output, [(batch indices, weights)]) are bit-identical."""
    (out_a, groups_a), (out_b, groups_b) = first, second
    assert torch.equal(out_a, out_b)
    assert len(groups_a) == len(groups_b)
    for (index_a, a), (index_b, b) in zip(groups_a, groups_b):
        assert torch.equal(index_a, index_b)
        assert torch.equal(a.entry, b.entry), f"{(a.entry != b.entry).float().mean():.1%} of the stored ids differ"
        for name in ("weight", "mass", "entropy", "ess"):
            assert torch.equal(getattr(a, name), getattr(b, name)), name


@pytest.mark.parametrize("kind", list(DENOISERS))
def test_attribution_does_not_depend_on_the_thread_count(tied_set, kind):
    if numba.config.NUMBA_NUM_THREADS < 2:
        pytest.skip("needs NUMBA_NUM_THREADS >= 2")
    denoiser = DENOISERS[kind](tied_set)
    z = _queries(tied_set)
    one = _with(1, lambda: denoiser.posterior(z, T, REQUEST))
    two = _with(2, lambda: denoiser.posterior(z, T, REQUEST))
    _assert_identical(one, two)


@pytest.mark.parametrize("parts", [2, 3, 70])
def test_attribution_does_not_depend_on_how_the_kernels_split_the_data(tied_set, parts, monkeypatch):
    """The kernels split the data into as many parts as numba has threads: any number of
    parts (fewer or more than the kernels' groups of blocks) gives the same bits."""
    denoiser = DENOISERS["square-3"](tied_set)
    z = _queries(tied_set)
    monkeypatch.setattr(numba, "get_num_threads", lambda: 1)
    one = denoiser.posterior(z, T, REQUEST)
    monkeypatch.setattr(numba, "get_num_threads", lambda: parts)
    _assert_identical(one, denoiser.posterior(z, T, REQUEST))


def _assert_lowest_copies_first(entry: torch.Tensor, training_set: TrainingSet):
    """In every stored row, the copies of an image that are kept are its lowest-indexed ones,
    in index order (their weights are exactly equal)."""
    num_images = len(training_set)
    classes = _identical_images(training_set)
    assert len(classes) >= 3
    for tied in classes:
        for flip in (0, num_images):
            members = [i + flip for i in tied]
            for row in entry.flatten(0, 1).tolist():
                kept = [e for e in row if e in members]
                assert kept == members[: len(kept)], f"row {row} keeps {kept} of the identical entries {members}"


@pytest.mark.parametrize("kind", list(DENOISERS))
def test_fused_kernels_break_ties_by_the_lowest_entry_index(tied_set, kind):
    _, groups = DENOISERS[kind](tied_set).posterior(_queries(tied_set), T, WeightRequest(top_k=3, mass=1.0))
    for _, weights in groups:
        _assert_lowest_copies_first(weights.entry, tied_set)
    if kind == "whole-image":  # query 0 is image 3: its three identical copies come first
        ((_, weights),) = groups
        assert weights.entry[0, 0].tolist() == [3, 1020, 1022]
        assert len(set(weights.weight[0, 0].tolist())) == 1


@pytest.mark.parametrize("size", [3, 28])
def test_torch_path_breaks_ties_by_the_lowest_entry_index(small_tied_set, size):
    """The torch path (CUDA, and dense weights) against its own dense weights, ranked by
    weight and then index, with chunks small enough to split the tied entries."""
    tied_set = small_tied_set
    request = WeightRequest(top_k=8, mass=1.0, full=True)
    z = _queries(tied_set)
    _, weights = patch_posterior(z, T.double(), tied_set.as_float(), square_patches(28, 28, size), True, request,
                                 chunk_bytes=1 << 20)  # a few images a chunk
    expected = weights.full.sort(dim=2, descending=True, stable=True).indices[..., :8]
    kept = weights.entry >= 0
    assert torch.equal(weights.entry[kept], expected[kept])
    _assert_lowest_copies_first(weights.entry, tied_set)


def test_merged_lists_do_not_depend_on_the_lists_order():
    """fused_kernels.merge_top: the threads' (and halves') lists, each by weight then entry,
    in any order, give the k best by weight, then lowest entry."""
    generator = torch.Generator().manual_seed(0)
    lists, kept = 5, 6
    weights = (torch.randint(1, 4, (lists, kept), generator=generator).double() / 4).sort(1, descending=True).values
    weights[1, 3:] = 0  # a short list: empty slots at its end
    weights[4] = 0  # an empty one
    entries = torch.randperm(lists * kept, generator=generator).view(lists, kept)
    entries = torch.where(weights > 0, entries, -1)
    for row in range(lists):  # each list in (weight descending, entry ascending) order, empty slots last
        pairs = sorted(zip(weights[row].tolist(), entries[row].tolist()), key=lambda we: (we[0] == 0, -we[0], we[1]))
        weights[row], entries[row] = torch.tensor([w for w, _ in pairs]), torch.tensor([e for _, e in pairs])
    pairs = sorted((-w, e) for w, e in zip(weights.flatten().tolist(), entries.flatten().tolist()) if e >= 0)
    for seed in range(3):
        shuffle = torch.randperm(lists, generator=torch.Generator().manual_seed(seed))
        top_w, top_i = fused_kernels.merge_top(weights[shuffle][None, None].numpy(), entries[shuffle][None, None].numpy(), 8)
        assert top_w[0, 0].tolist() == [-w for w, _ in pairs[:8]]
        assert top_i[0, 0].tolist() == [e for _, e in pairs[:8]]
    top_w, top_i = fused_kernels.merge_top(weights[None, None].numpy(), entries[None, None].numpy(), 40)
    assert top_i[0, 0, len(pairs):].tolist() == [-1] * (40 - len(pairs))  # fewer entries than k: empty slots


def test_top_k_in_order_keeps_the_first_of_equal_weights():
    weights = torch.tensor([[0.5, 0.2, 0.5, 0.2, 0.2, 0.1], [0.1, 0.2, 0.3, 0.4, 0.5, 0.6]], dtype=torch.float64)
    values, positions = top_k_in_order(weights, 4)
    assert values.tolist() == [[0.5, 0.5, 0.2, 0.2], [0.6, 0.5, 0.4, 0.3]]
    assert positions.tolist() == [[0, 2, 1, 3], [5, 4, 3, 2]]
    for k in range(1, 7):  # against a stable sort, with ties of every size
        tied = torch.tensor([[0.2, 0.2, 0.2, 0.1, 0.2, 0.3, 0.3]], dtype=torch.float64)
        expected = tied.sort(descending=True, stable=True)
        values, positions = top_k_in_order(tied, k)
        assert torch.equal(values, expected.values[:, :k]) and torch.equal(positions, expected.indices[:, :k])


def test_top_k_is_the_head_of_a_longer_ranking(tied_set, monkeypatch):
    """The fused kernels' top 4 are the first 4 of their top 64, however the data is split
    (3 parts: each keeps its own lists, merged at the end)."""
    monkeypatch.setattr(numba, "get_num_threads", lambda: 3)
    denoiser = DENOISERS["square-3"](tied_set)
    z = _queries(tied_set)
    _, ((_, everything),) = denoiser.posterior(z, T, WeightRequest(top_k=64, mass=1.0))
    _, ((_, head),) = denoiser.posterior(z, T, WeightRequest(top_k=4, mass=1.0))
    kept = head.entry >= 0
    assert torch.equal(head.entry[kept], everything.entry[..., :4][kept])
    assert torch.equal(head.weight, everything.weight[..., :4])


def test_groups_are_a_power_of_two_set_by_the_data_size():
    assert [fused_kernels.num_groups(blocks) for blocks in (1, 63, 64, 127, 128, 1250, 10**6)] == [1, 1, 2, 2, 4, 32, 64]


@pytest.mark.parametrize("structure", ["windows", "masks"])
def test_kernel_sums_are_bit_identical_for_any_split(tied_set, structure):
    """float64 normaliser, numerator, entropy and sum w^2 of the two kernels, for 1 to 5 parts."""
    data = tied_set.as_float()
    images_t = fused_kernels.block_images(data.numpy())
    queries = _queries(tied_set).double().numpy()
    scales = (-0.5 / T.double().square()).numpy()
    none = np.zeros(1, dtype=np.int64)
    if structure == "windows":
        kernel = (fused_kernels.WINDOW, 3, 3, none, none, 26 * 26)
        spread = (none, none, np.zeros(1))
    else:
        masks = flex_masks(isotropic_sensitivity(28, 28)(1.0), 0.4)
        csr = MaskPatches(masks).fused_structure()
        kernel = (fused_kernels.MASKS, 1, 1, csr["indptr"], csr["indices"], csr["num_patches"])
        spread = (csr["pixel_indptr"], csr["pixel_masks"], csr["pixel_counts"])
    results = []
    kept = fused_kernels.block_mask(None, len(data))  # no image excluded
    for parts in (1, 2, 3, 5):
        log_norm = fused_kernels.log_normaliser(queries, images_t, *kernel, scales, parts, len(data), kept)
        numerator, entropy, sum_sq, _, _ = fused_kernels.compose(queries, images_t, *kernel, *spread, scales, log_norm,
                                                                 parts, 4, len(data), kept)
        results.append((log_norm, numerator, entropy, sum_sq))
    for other in results[1:]:
        assert all(np.array_equal(a, b) for a, b in zip(results[0], other))
