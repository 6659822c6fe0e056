"""The single pass for small windows (pspc.posterior.window_kernels): against the slow
reference, against the two-pass fused kernels it replaces for those sets, through new maxima
that keep arriving (the online rescaling), exclusions, the top-k, and bit-identical for any
split of the data."""

import numba
import numpy as np
import pytest
import torch

from pspc.data.training_set import TrainingSet
from pspc.denoisers import pspc_square
from pspc.posterior import fused_kernels, window_kernels
from pspc.posterior.patch_posterior import patch_posterior
from pspc.posterior.patch_sets import WindowPatches, square_patches
from pspc.posterior.weights import WeightRequest
from tests.support.data import fashion_mnist, noisy, random_training_set
from tests.support.reference import entries_of, reference_pspc, reference_weights

MIXED_T = torch.tensor([1e-3, 0.05, 0.3, 1.0, 80.0])


def _posterior(training_set, patch_set, z, t, request=None, excluded=None):
    """patch_posterior on the CPU kernels (the rule picks the single pass or the two passes)."""
    images_t = fused_kernels.block_images(training_set.as_float().numpy())
    return patch_posterior(z, t.double(), training_set.as_float(), patch_set, training_set.xflip, request,
                           images_t=images_t, excluded=excluded)


def _two_pass(monkeypatch):
    """Send every window set to the two-pass fused kernels."""
    monkeypatch.setattr(window_kernels, "MAX_SPAN", 0)


def test_the_rule_sends_windows_of_few_values_to_the_single_pass(monkeypatch):
    assert window_kernels.uses_single_pass(1, 28, 28, 3, 3) and window_kernels.uses_single_pass(3, 32, 32, 3, 3)
    assert not window_kernels.uses_single_pass(1, 28, 28, 7, 7)  # 49 values a window: the two passes
    assert not window_kernels.uses_single_pass(1, 3, 3, 3, 3)  # the whole image
    calls = []
    kernel = window_kernels.window_posterior
    monkeypatch.setattr(window_kernels, "window_posterior", lambda *args: calls.append(1) or kernel(*args))
    training_set = random_training_set(count=9, height=6, width=6, xflip=True)
    z = noisy(training_set, torch.tensor([0.3]))
    pspc_square(training_set, 3)(z, torch.tensor([0.3]))
    assert len(calls) == 2  # one sweep per half (original and flipped queries)


@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("window", [(1, 1), (2, 2), (3, 3), (2, 3), (1, 4)])
def test_single_pass_is_the_reference(channels, window):
    """Output, entropy, ESS and top-k weights against Eq. 9-11 written out, at noise levels
    from 1e-3 (one entry per window) to 80 (nearly uniform weights), with x-flips."""
    training_set = random_training_set(count=11, channels=channels, height=6, width=7, xflip=True, seed=5)
    patch_set = WindowPatches(6, 7, *window)
    assert window_kernels.uses_single_pass(channels, 6, 7, *window)
    z = noisy(training_set, MIXED_T)
    out, weights = _posterior(training_set, patch_set, z, MIXED_T, WeightRequest(top_k=4, mass=1.0))
    entries = entries_of(training_set.images, True)
    masks = patch_set.masks()
    assert torch.allclose(out.double(), reference_pspc(z, MIXED_T, entries, lambda _: masks), atol=1e-5, rtol=0)
    for b, t_b in enumerate(MIXED_T.tolist()):
        full = reference_weights(z[b], t_b, entries, masks)
        entropy = -(full * full.clamp(min=1e-300).log()).sum(1)
        assert torch.allclose(weights.entropy[b].double(), entropy, atol=1e-5)
        assert torch.allclose(weights.ess[b].double(), 1 / full.square().sum(1), rtol=1e-5)
        assert torch.allclose(weights.weight[b].double(), full.topk(4, dim=1).values, atol=1e-6)


def _approaching(count: int, seed: int = 0) -> tuple[TrainingSet, torch.Tensor]:
    """Random 6x6 images that come ever closer to a target image, the last one nearest, and a
    query near the target: every window's running max rises again and again."""
    generator = torch.Generator().manual_seed(seed)
    target = torch.randint(0, 256, (1, 6, 6), generator=generator).double()
    noise = torch.randint(-128, 128, (count, 1, 6, 6), generator=generator).double()
    closeness = torch.linspace(1.0, 0.02, count).view(count, 1, 1, 1)
    images = (target + closeness * noise).round().clamp(0, 255).to(torch.uint8)
    training_set = TrainingSet(images, [f"img-{i}" for i in range(count)], name="approaching", xflip=True)
    query = (target / 127.5 - 1 + 0.01 * torch.randn(1, 6, 6, generator=generator))[None].float()
    return training_set, query


@pytest.mark.parametrize("t", [0.05, 0.5])
def test_rising_maxima_over_several_groups_are_the_reference(t):
    """600 entries (75 blocks: 2 groups), the best ones last, so that the running maxima rise
    to the end and the groups meet different maxima."""
    training_set, z = _approaching(600)
    assert fused_kernels.num_groups(-(-len(training_set) // fused_kernels.LANES)) == 2
    patch_set = square_patches(6, 6, 3)
    t_batch = torch.tensor([t])
    out, weights = _posterior(training_set, patch_set, z, t_batch, WeightRequest(top_k=3, mass=1.0))
    entries = entries_of(training_set.images, True)
    masks = patch_set.masks()
    assert torch.allclose(out.double(), reference_pspc(z, t_batch, entries, lambda _: masks), atol=1e-5, rtol=0)
    full = reference_weights(z[0], t, entries, masks)
    best = full.topk(3, dim=1)
    kept = weights.entry[0] >= 0  # the others weigh less than e^-CUTOFF
    assert torch.equal(weights.entry[0][kept], best.indices[kept]) and (best.values[~kept] < 1e-20).all()
    assert torch.allclose(weights.weight[0].double(), best.values, atol=1e-6)
    assert torch.allclose(weights.ess[0].double(), 1 / full.square().sum(1), rtol=1e-5)
    entropy = -(full * full.clamp(min=1e-300).log()).sum(1)
    assert torch.allclose(weights.entropy[0].double(), entropy, atol=1e-5)


@pytest.mark.slow
def test_single_pass_keeps_the_two_passes_weights_with_removed_images(monkeypatch):
    """Fashion-MNIST, s = 3 and s = 5 at small t, with images removed: the output, top-k
    weights, mass, entropy and ESS of the two-pass kernels; every kept entry carries its true
    weight (the torch path's dense weights). The entries themselves may differ where windows
    tie: identical black patches tie exactly here (lowest entry first), while the two passes'
    integral images leave them a rounding apart."""
    training_set = fashion_mnist(limit=200)
    removed = [0, 7, 8, 9, 150]
    excluded = torch.zeros(len(training_set), dtype=torch.bool)
    excluded[removed] = True
    t = torch.tensor([0.1, 0.3, 0.3, 1.0])
    z = noisy(training_set, t, indices=[7, 20, 33, 150])
    request = WeightRequest(top_k=6, mass=1.0)
    for size in (3, 5):
        patch_set = square_patches(28, 28, size)
        out, single = _posterior(training_set, patch_set, z, t, request, excluded)
        with monkeypatch.context() as patched:
            _two_pass(patched)
            two_out, two = _posterior(training_set, patch_set, z, t, request, excluded)
        assert torch.allclose(out, two_out, atol=1e-6)
        for name in ("weight", "mass", "entropy"):
            assert torch.allclose(getattr(single, name), getattr(two, name), atol=1e-6), name
        assert torch.allclose(single.ess, two.ess, rtol=1e-5)
        _, dense = patch_posterior(z, t.double(), training_set.as_float(), patch_set, True,
                                   WeightRequest(top_k=6, mass=1.0, full=True), excluded=excluded)
        kept = single.entry >= 0
        assert not torch.isin(single.entry, torch.tensor(removed + [200 + i for i in removed])).any()
        true_weight = dense.full.gather(2, single.entry.clamp(min=0)).float()
        assert torch.allclose(true_weight[kept], single.weight[kept], atol=1e-6)


def test_list_weights_turns_logits_into_ranked_weights_above_the_cutoff():
    """By logit (desc), then entry: the weights exp(logit - G), those at or below e^-CUTOFF
    dropped, equal weights by entry, the lists cut to k."""
    logits = np.array([[[[-1.0, -1.0, -2.0, -1.0 - window_kernels.CUTOFF, -np.inf]]]])
    entries = np.array([[[[4, 9, 2, 1, -1]]]])
    weights, ids = window_kernels.list_weights(logits, entries, np.array([[-1.0]]), 4)
    assert ids.tolist() == [[[[4, 9, 2, -1]]]]
    assert np.allclose(weights, [[[[1.0, 1.0, np.exp(-1.0), 0.0]]]], rtol=1e-15, atol=0)


def test_window_sums_are_bit_identical_for_any_split():
    """The kernel's float64 states and top-k lists for 1, 2, 3 and 5 parts (4 groups)."""
    training_set = random_training_set(count=1030, height=6, width=6, seed=2)
    images_t = fused_kernels.block_images(training_set.as_float().numpy())
    assert fused_kernels.num_groups(images_t.shape[0]) == 4
    queries = noisy(training_set, torch.tensor([0.1, 0.5, 3.0])).double().flatten(1).numpy()
    scales = -0.5 / np.array([0.1, 0.5, 3.0]) ** 2
    kept = fused_kernels.block_mask(None, len(training_set))
    results = []
    for parts in (1, 2, 3, 5):
        sums, numerators, top_l, top_i = window_kernels.window_posterior(queries, images_t, 3, 3, scales, parts, 4,
                                                                         len(training_set), kept)
        merged = fused_kernels.merge_top(np.ascontiguousarray(top_l.transpose(0, 2, 1, 3)),
                                         np.ascontiguousarray(top_i.transpose(0, 2, 1, 3)), 4)
        results.append((*window_kernels.fold_groups(sums, numerators), *merged))
    for other in results[1:]:
        assert all(np.array_equal(a, b) for a, b in zip(results[0], other))


def test_single_pass_does_not_depend_on_the_thread_count():
    if numba.config.NUMBA_NUM_THREADS < 2:
        pytest.skip("needs NUMBA_NUM_THREADS >= 2")
    training_set, z = _approaching(600, seed=1)
    t = torch.tensor([0.2])
    found = []
    before = numba.get_num_threads()
    try:
        for threads in (1, 2):
            numba.set_num_threads(threads)
            found.append(_posterior(training_set, square_patches(6, 6, 3), z, t, WeightRequest(top_k=5, mass=1.0)))
    finally:
        numba.set_num_threads(before)
    (out_a, a), (out_b, b) = found
    assert torch.equal(out_a, out_b) and torch.equal(a.entry, b.entry)
    for name in ("weight", "entropy", "ess"):
        assert torch.equal(getattr(a, name), getattr(b, name)), name
