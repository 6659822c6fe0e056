"""The GEMM path (pspc.posterior.gemm) against the slow reference and against the fused kernels.

Forced runs set gemm.GEMM_MAX_MASKS high (every set on the GEMM path) with the fused kernels
made to fail, so that a pass can only come from the GEMM path; the rule's own choice is
tested apart. The random sets hold 19 images (6x6) so that removing images 0-7 empties a
fused block; mixed t from 0.05 to 80 in one batch.
"""

import numba
import numpy as np
import pytest
import torch

from pspc.data.training_set import TrainingSet
from pspc.denoisers import EmpiricalDenoiser, pspc_flex, pspc_square
from pspc.posterior import fused_kernels, gemm
from pspc.posterior.patch_posterior import patch_posterior
from pspc.posterior.patch_sets import MaskPatches, WindowPatches, flex_patches, square_patches
from pspc.posterior.sensitivity import isotropic_sensitivity
from pspc.posterior.weights import WeightRequest
from pspc.schedules import Schedule
from tests.support.data import fashion_mnist, noisy, random_training_set
from tests.support.reference import entries_of, reference_pspc, reference_weights

COUNT, SIZE = 19, 6
T = torch.tensor([0.05, 0.4, 1.5, 10.0, 80.0])
REMOVED = [0, 1, 2, 3, 4, 5, 6, 7, 10, 18]


def _quadrants() -> MaskPatches:
    """Four overlapping quadrant masks and a repeated one (a user set, 4 distinct masks)."""
    masks = torch.zeros(5, SIZE, SIZE, dtype=torch.bool)
    masks[0, :4, :4] = masks[1, :4, 2:] = masks[2, 2:, :4] = masks[3, 2:, 2:] = masks[4, :4, :4] = True
    return MaskPatches(masks, name="quadrants")


PATCH_SETS = {
    "whole-image": lambda: WindowPatches(SIZE, SIZE, SIZE, SIZE),
    "square-5": lambda: square_patches(SIZE, SIZE, 5),  # 4 windows
    "square-3": lambda: square_patches(SIZE, SIZE, 3),  # 16 windows: the GEMM path only when forced
    "flex": lambda: flex_patches(isotropic_sensitivity(SIZE, SIZE)(1.0), 0.5),
    "quadrants": _quadrants,
}


@pytest.fixture
def gemm_only(monkeypatch):
    """Every patch set on the GEMM path; the fused kernels raise if called."""
    def refuse(*args, **kwargs):
        raise AssertionError("the fused kernels ran")

    monkeypatch.setattr(gemm, "GEMM_MAX_MASKS", 10**6)
    monkeypatch.setattr(fused_kernels, "log_normaliser", refuse)
    monkeypatch.setattr(fused_kernels, "compose", refuse)


def _run(training_set: TrainingSet, patch_set, z, t, request, excluded=None, **options):
    data = training_set.as_float()
    return patch_posterior(z, t.double(), data, patch_set, training_set.xflip, request,
                           images_t=fused_kernels.block_images(data.numpy()), excluded=excluded, **options)


def _dense(entry: torch.Tensor, weight: torch.Tensor, num_entries: int) -> torch.Tensor:
    """[K, E] weights from the kept (entry, weight) lists (-1 carries weight 0)."""
    dense = torch.zeros(entry.shape[0], num_entries + 1, dtype=torch.float64)
    dense.scatter_add_(1, torch.where(entry >= 0, entry, num_entries), weight.double())
    return dense[:, :num_entries]


@pytest.mark.parametrize("removed", [False, True])
@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("xflip", [False, True])
@pytest.mark.parametrize("kind", list(PATCH_SETS))
def test_gemm_path_is_the_reference(gemm_only, kind, xflip, channels, removed):
    """Output, every weight (the top-k holds all entries), entropy and ESS, with and without
    images removed (their entries: weight exactly 0, never kept)."""
    training_set = random_training_set(count=COUNT, channels=channels, height=SIZE, width=SIZE, seed=5, xflip=xflip)
    patch_set = PATCH_SETS[kind]()
    z = noisy(training_set, T, indices=[0, 3, 10, 11, 15])
    kept = [i for i in range(COUNT) if not (removed and i in REMOVED)]
    excluded = torch.tensor([i not in kept for i in range(COUNT)]) if removed else None
    out, weights = _run(training_set, patch_set, z, T, WeightRequest(top_k=2 * COUNT, mass=1.0), excluded)
    entries = entries_of(training_set.images[kept], xflip)
    masks = patch_set.masks()
    assert torch.allclose(out.double(), reference_pspc(z, T, entries, lambda t: masks), atol=1e-6, rtol=0)
    ids = torch.tensor(kept + ([i + COUNT for i in kept] if xflip else []))
    for b in range(len(T)):
        expected = torch.zeros(len(masks), training_set.num_entries, dtype=torch.float64)
        expected[:, ids] = reference_weights(z[b], float(T[b]), entries, masks)
        found = _dense(weights.entry[b], weights.weight[b], training_set.num_entries)
        assert torch.allclose(found, expected, atol=1e-6), f"sample {b}"
        assert found[:, [i for i in range(training_set.num_entries) if i not in ids]].eq(0).all()
        logs = torch.where(expected > 0, expected.log(), 0)
        assert torch.allclose(weights.entropy[b].double(), -(expected * logs).sum(1), atol=1e-5)
        assert torch.allclose(weights.ess[b].double(), 1 / expected.square().sum(1), rtol=1e-5)


def _tied_set() -> TrainingSet:
    """200 Fashion-MNIST images, then copies of images 3, 5, 3 (exact ties), with x-flips."""
    base = fashion_mnist(limit=200)
    order = list(range(len(base))) + [3, 5, 3]
    return TrainingSet(base.images[order], [f"img-{i}" for i in range(len(order))], name="tied", xflip=True)


TIED_DENOISERS = {
    "whole-image": EmpiricalDenoiser,
    "square-27": lambda data: pspc_square(data, 27),  # 4 windows
    "flex-lambda-1": lambda data: pspc_flex(data, isotropic_sensitivity(28, 28), Schedule((1.0,), (1.0,))),
}


@pytest.mark.parametrize("kind", list(TIED_DENOISERS))
def test_gemm_path_keeps_the_fused_kernels_ids_and_weights(kind, monkeypatch):
    """The rule sends these sets to the GEMM path; forced onto the fused kernels they give the
    same output, the same top-k ids in the same order (ties: the lowest entry) and weights."""
    training_set = _tied_set()
    denoiser = TIED_DENOISERS[kind](training_set)
    t = torch.tensor([0.3, 1.0, 10.0, 0.3])
    z = noisy(training_set, t, indices=[3, 5, 50, 120])
    assert gemm.uses_gemm(denoiser.patch_set_at(1.0))
    request = WeightRequest(top_k=6, mass=1.0)
    out, groups = denoiser.posterior(z, t, request)  # Flex: one patch set (group) per noise level
    monkeypatch.setattr(gemm, "GEMM_MAX_MASKS", 0)
    fused_out, fused_groups = denoiser.posterior(z, t, request)
    assert torch.allclose(out, fused_out, atol=1e-6, rtol=0)
    for (index, found), (fused_index, fused) in zip(groups, fused_groups, strict=True):
        assert torch.equal(index, fused_index) and torch.equal(found.entry, fused.entry)
        for name in ("weight", "mass", "entropy", "ess"):
            assert torch.allclose(getattr(found, name), getattr(fused, name), atol=1e-5, rtol=1e-5), name
    if kind == "whole-image":  # query 0 is image 3: its three identical copies first, equal weights
        found = groups[0][1]
        assert found.entry[0, 0, :3].tolist() == [3, 200, 202]
        assert len(set(found.weight[0, 0, :3].tolist())) == 1


def _float64_state(training_set: TrainingSet, patch_set, z, t, chunk_bytes=256 * 2**20) -> tuple:
    """The GEMM path's float64 numerator, entropy, sum w^2, and its top-k weights and ids
    (the float32 output and weights would hide a last-bit difference)."""
    data = training_set.as_float()
    layout = fused_kernels.block_images(data.numpy())
    posterior = gemm.GemmPosterior(z, t.double(), gemm.integer_images(data, layout), layout, patch_set,
                                   training_set.xflip, 8, None, chunk_bytes)
    return posterior.run()


def test_gemm_path_is_bit_identical_for_any_thread_count_and_sub_batch():
    """torch (BLAS) and numba threads 1 or 2, and the batch cut into sub-batches of one query
    (chunk_bytes too small to keep the logits: pass 2 recomputes them). Products of this size
    ([40, 784] @ [784, 2000]) come out of a plain float64 matmul with other bits on 2 threads."""
    training_set = random_training_set(count=2000, channels=1, height=28, width=28, seed=9, xflip=True)
    t = T * 10  # large t: every entry has weight
    z = noisy(training_set, t, indices=[3, 300, 600, 1000, 1999])
    patch_set = square_patches(28, 28, 27)
    before = torch.get_num_threads(), numba.get_num_threads()
    results = []
    try:
        for threads in (1, 2):
            torch.set_num_threads(threads)
            numba.set_num_threads(min(threads, numba.config.NUMBA_NUM_THREADS))
            results.append(_float64_state(training_set, patch_set, z, t))
        results.append(_float64_state(training_set, patch_set, z, t, chunk_bytes=1 << 10))
    finally:
        torch.set_num_threads(before[0])
        numba.set_num_threads(before[1])
    for other in results[1:]:
        assert all(torch.equal(a, b) for a, b in zip(results[0], other))


def test_exact_product_does_not_depend_on_how_the_product_is_cut():
    """Rows and columns computed apart (other BLAS blocking) give the same bits, and the
    product is float64-accurate, for rows of very different sizes (and a row of zeros)."""
    generator = torch.Generator().manual_seed(0)
    left = torch.randn(7, 784, generator=generator, dtype=torch.float64) * torch.tensor(
        [1e-6, 1e-2, 1.0, 3.0, 80.0, 1e4, 0.0])[:, None]
    right = torch.randint(0, 256, (784, 1001), generator=generator).double()
    whole = gemm.exact_product(left, right)
    assert torch.equal(whole[:, 333:667], gemm.exact_product(left, right[:, 333:667]))
    assert torch.equal(whole[2:5], gemm.exact_product(left[2:5], right))
    assert torch.equal(torch.cat([gemm.exact_product(left[r:r + 1], right) for r in range(7)]), whole)
    exact = (left.to(torch.float64) @ right)
    scale = left.abs().amax(1, keepdim=True) * 784 * 255
    assert ((whole - exact).abs() <= 1e-15 * scale).all()
    assert whole[6].eq(0).all()


def test_the_rule_sends_sets_with_few_distinct_masks_to_the_gemm_path():
    sensitivity = isotropic_sensitivity(28, 28)(1.0)
    assert gemm.uses_gemm(WindowPatches(28, 28, 28, 28))
    assert gemm.uses_gemm(square_patches(28, 28, 27)) and gemm.distinct_masks(square_patches(28, 28, 27)) == 4
    assert not gemm.uses_gemm(square_patches(28, 28, 3)) and not gemm.uses_gemm(square_patches(28, 28, 21))
    assert gemm.uses_gemm(flex_patches(sensitivity, 1.0))  # 784 patches, one distinct mask
    assert not gemm.uses_gemm(flex_patches(sensitivity, 0.4))


def test_data_off_the_uint8_grid_stays_on_the_fused_kernels(monkeypatch):
    """Data that is not u / 127.5 - 1 cannot be multiplied exactly: the fused kernels run, and match the reference."""
    generator = torch.Generator().manual_seed(3)
    data = torch.rand(11, 1, SIZE, SIZE, generator=generator) * 2 - 1
    layout = fused_kernels.block_images(data.numpy())
    assert gemm.integer_images(data, layout) is None
    on_grid = random_training_set(count=11, height=SIZE, width=SIZE)
    assert torch.equal(gemm.integer_images(on_grid.as_float(), on_grid.images.numpy()).flatten(),
                       on_grid.images.double().flatten())
    calls = []
    monkeypatch.setattr(gemm, "GemmPosterior", lambda *args: calls.append(args))
    z = data[:3] + 0.5 * torch.randn(3, 1, SIZE, SIZE, generator=generator)
    t = torch.tensor([0.5, 1.0, 4.0], dtype=torch.float64)
    out, _ = patch_posterior(z, t, data, WindowPatches(SIZE, SIZE, SIZE, SIZE), False, images_t=layout)
    masks = WindowPatches(SIZE, SIZE, SIZE, SIZE).masks()
    assert not calls and torch.allclose(out.double(), reference_pspc(z, t, data.double(), lambda _: masks), atol=1e-6)


def test_ranked_insertion_keeps_the_best_entries_whatever_their_order():
    """fused_kernels.insert_ranked: entries met in any order (the GEMM path and the fused
    kernels' workers meet them ascending, but nothing relies on it) give the k best by
    (weight descending, entry ascending), ties included."""
    generator = np.random.default_rng(0)
    weights = np.repeat([0.5, 0.25, 0.125, 0.0625], 6)
    for _ in range(5):
        order = generator.permutation(len(weights))
        top_w, top_i = np.zeros(7), np.full(7, -1, dtype=np.int64)
        for index in order:
            if fused_kernels.precedes(weights[index], index, top_w[-1], top_i[-1]):
                fused_kernels.insert_ranked(top_w, top_i, weights[index], index)
        assert top_w.tolist() == [0.5] * 6 + [0.25]
        assert top_i.tolist() == [0, 1, 2, 3, 4, 5, 6]
