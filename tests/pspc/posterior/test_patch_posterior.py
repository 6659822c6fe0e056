"""The fast PSPC paths (fused CPU kernel and torch path) against the slow reference."""

import pytest
import torch

from pspc.posterior import fused_kernels
from pspc.denoisers import EmpiricalDenoiser, pspc_flex, pspc_square
from pspc.posterior.patch_posterior import patch_posterior
from pspc.posterior.patch_sets import MaskPatches, flex_masks, square_patches
from pspc.posterior.weights import WeightRequest
from pspc.schedules import Schedule, default_flex_schedule
from pspc.posterior.sensitivity import isotropic_sensitivity
from tests.support.data import noisy, random_training_set
from tests.support.reference import entries_of, reference_pspc, reference_weights

MIXED_T = torch.tensor([0.05, 0.3, 1.0, 3.0, 10.0, 80.0])


def _torch_path(denoiser, z, t, request=None):
    """Run the generic torch path (no fused kernel) for the denoiser's patch set at t[0]."""
    return patch_posterior(z, t.to(torch.float64), denoiser.data, denoiser.patch_set_at(float(t[0])),
                           denoiser.training_set.xflip, request, chunk_bytes=1 << 16)


@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("xflip", [False, True])
@pytest.mark.parametrize("size", [1, 2, 3, 5, 7])
def test_square_matches_reference_on_random_data(channels, xflip, size):
    training_set = random_training_set(count=9, channels=channels, height=7, width=8, xflip=xflip)
    denoiser = pspc_square(training_set, size)
    z = noisy(training_set, MIXED_T)
    out = denoiser(z, MIXED_T)
    masks = square_patches(7, 8, size).masks()
    expected = reference_pspc(z, MIXED_T, entries_of(training_set.images, xflip), lambda t: masks)
    assert out.dtype == torch.float32
    assert torch.allclose(out.double(), expected, atol=1e-5, rtol=0)
    for b in range(len(MIXED_T)):  # the torch path too, one noise level at a time
        torch_out, _ = _torch_path(denoiser, z[b : b + 1], MIXED_T[b : b + 1])
        assert torch.allclose(torch_out.double(), expected[b : b + 1], atol=1e-5, rtol=0)


@pytest.mark.parametrize("size", [pytest.param(3, marks=pytest.mark.slow), 7, 15, 28])
def test_square_matches_reference_on_fashion_mnist(fashion_slice, size):
    training_set = fashion_slice.subset(range(12)).with_xflip()
    t = torch.tensor([0.1, 1.0, 3.0])
    z = noisy(fashion_slice.with_xflip(), t, indices=[12, 13, 14])  # held-out images
    out = pspc_square(training_set, size)(z, t)
    masks = square_patches(28, 28, size).masks()
    expected = reference_pspc(z, t, entries_of(training_set.images, True), lambda _: masks)
    assert torch.allclose(out.double(), expected, atol=1e-5, rtol=0)


@pytest.mark.slow
def test_fused_kernels_stream_many_blocks_with_late_maxima():
    """Enough entries for the kernels' per-lane running maxima to be equalised several
    times (every EQUALIZE blocks), for whole blocks to be skipped at small t, and for the
    best entries to come last in the stream (the maxima keep rising)."""
    count = 2 * fused_kernels.LANES * fused_kernels.EQUALIZE * 2 + 13  # > 2 equalisations per thread
    training_set = random_training_set(count=count, height=6, width=6, xflip=True, seed=3)
    entries = entries_of(training_set.images, True)
    t = torch.tensor([0.02, 0.3, 3.0])
    generator = torch.Generator().manual_seed(4)
    z = (entries[[count - 1, count - 2, 2 * count - 1]] + 0.02 * torch.randn(3, 1, 6, 6, generator=generator)).float()
    denoiser = pspc_square(training_set, 3)
    out, ((_, weights),) = denoiser.posterior(z, t, WeightRequest(top_k=4, mass=1.0))
    masks = square_patches(6, 6, 3).masks()
    expected = reference_pspc(z, t, entries, lambda _: masks)
    assert torch.allclose(out.double(), expected, atol=1e-5, rtol=0)
    for b in range(len(t)):
        full = reference_weights(z[b], float(t[b]), entries, masks)
        entropy = -(full * full.clamp(min=1e-300).log()).sum(1)
        assert torch.allclose(weights.entropy[b].double(), entropy, atol=1e-5)
        assert torch.allclose(weights.ess[b].double(), 1 / full.square().sum(1), rtol=1e-5)
        assert torch.allclose(weights.weight[b].double(), full.topk(4, dim=1).values, atol=1e-6)


def test_scheduled_patch_size_mixes_noise_levels_in_one_batch():
    training_set = random_training_set(count=8, height=8, width=8, xflip=True)
    schedule = Schedule((0.1, 1.0, 10.0), (3, 5, 8))
    t = torch.tensor([10.0, 0.1, 1.0, 0.1])
    z = noisy(training_set, t)
    out = pspc_square(training_set, schedule)(z, t)
    entries = entries_of(training_set.images, True)
    expected = reference_pspc(z, t, entries, lambda t_b: square_patches(8, 8, schedule(t_b)).masks())
    assert torch.allclose(out.double(), expected, atol=1e-5, rtol=0)


@pytest.mark.parametrize("xflip", [False, True])
@pytest.mark.parametrize("lam", [0.2, 0.5, 1.0])
def test_flex_matches_reference(xflip, lam):
    training_set = random_training_set(count=7, channels=3, height=6, width=6, xflip=xflip)
    sensitivity = isotropic_sensitivity(6, 6)
    denoiser = pspc_flex(training_set, sensitivity, Schedule((1.0,), (lam,)))
    t = torch.tensor([0.2, 1.0, 5.0])
    z = noisy(training_set, t)
    out = denoiser(z, t)
    expected = reference_pspc(z, t, entries_of(training_set.images, xflip),
                              lambda t_b: flex_masks(sensitivity(t_b), lam))
    assert torch.allclose(out.double(), expected, atol=1e-5, rtol=0)


def test_flex_matches_reference_on_fashion_mnist(fashion_slice):
    training_set = fashion_slice.subset(range(6)).with_xflip()
    sensitivity = isotropic_sensitivity(28, 28)
    denoiser = pspc_flex(training_set, sensitivity)  # the paper's lambda(t)
    t = torch.tensor([0.3, 2.0])
    z = noisy(fashion_slice, t, indices=[10, 11])
    expected = reference_pspc(z, t, entries_of(training_set.images, True),
                              lambda t_b: flex_masks(sensitivity(t_b), default_flex_schedule()(t_b)))
    assert torch.allclose(denoiser(z, t).double(), expected, atol=1e-5, rtol=0)


@pytest.mark.parametrize("fused", [True, False])
def test_user_mask_set_matches_reference_on_fashion_mnist(fashion_slice, fused):
    generator = torch.Generator().manual_seed(3)
    masks = torch.rand(40, 28, 28, generator=generator) < 0.1
    masks[0] = True  # cover every pixel
    masks[5] = masks[7]  # repeated masks are computed once by the fused kernel
    training_set = fashion_slice.subset(range(10)).with_xflip()
    t = torch.tensor([0.5, 2.0])
    z = noisy(fashion_slice, t, indices=[20, 21])
    patch_set = MaskPatches(masks)
    data = training_set.as_float()
    images_t = fused_kernels.block_images(data.numpy()) if fused else None
    out, _ = patch_posterior(z, t.double(), data, patch_set, True, images_t=images_t)
    expected = reference_pspc(z, t, entries_of(training_set.images, True), lambda _: masks)
    assert torch.allclose(out.double(), expected, atol=1e-5, rtol=0)


@pytest.mark.parametrize("fused", [True, False])
def test_weights_are_the_reference_softmax(fused):
    training_set = random_training_set(count=6, channels=3, height=5, width=6, xflip=True)
    denoiser = pspc_square(training_set, 3)
    t = torch.tensor([0.4, 2.0])
    z = noisy(training_set, t)
    entries = entries_of(training_set.images, True)
    request = WeightRequest(top_k=entries.shape[0], mass=1.0)
    if fused:
        out, groups = denoiser.posterior(z, t, request)
        (index, weights), = groups
        assert index.tolist() == [0, 1]
    else:
        out, weights = _torch_path(denoiser, z, t, request)
    masks = square_patches(5, 6, 3).masks()
    for b in range(2):
        expected = reference_weights(z[b], float(t[b]), entries, masks)  # [K, E]
        dense = torch.zeros_like(expected)
        dense.scatter_add_(1, weights.entry[b].clamp(min=0), weights.weight[b].double())  # -1 carries 0
        assert torch.allclose(dense, expected, atol=1e-6)
        assert torch.allclose(dense.sum(1), torch.ones(len(masks), dtype=torch.float64), atol=1e-6)
        entropy = -(expected * expected.clamp(min=1e-300).log()).sum(1)
        assert torch.allclose(weights.entropy[b].double(), entropy, atol=1e-5)
        assert torch.allclose(weights.ess[b].double(), 1 / expected.square().sum(1), rtol=1e-5)


def test_fused_kernel_and_torch_path_agree_on_top_k(fashion_slice):
    training_set = fashion_slice.with_xflip()
    denoiser = pspc_square(training_set, 5)
    t = torch.tensor([0.7])
    z = noisy(training_set, t, indices=[3])
    request = WeightRequest(top_k=5, mass=0.9)
    fused_out, ((_, fused),) = denoiser.posterior(z, t, request)
    torch_out, plain = _torch_path(denoiser, z, t, WeightRequest(top_k=5, mass=0.9, full=True))
    assert torch.allclose(fused_out, torch_out, atol=1e-6)
    assert torch.allclose(fused.weight, plain.weight, atol=1e-6)  # same sorted top weights
    assert torch.allclose(fused.mass, plain.mass, atol=1e-6)
    assert torch.allclose(fused.entropy, plain.entropy, atol=1e-5)
    # every kept entry carries its true weight (ties, e.g. black patches, may pick other members)
    kept = fused.entry >= 0
    true_weight = plain.full.gather(2, fused.entry.clamp(min=0)).float()
    assert torch.allclose(true_weight[kept], fused.weight[kept], atol=1e-6)


def test_whole_image_patch_is_the_empirical_denoiser():
    training_set = random_training_set(count=12, channels=3, height=6, width=6, xflip=True)
    t = MIXED_T
    z = noisy(training_set, t)
    square = pspc_square(training_set, 6)(z, t)
    empirical = EmpiricalDenoiser(training_set)(z, t)
    entries = entries_of(training_set.images, True)
    expected = torch.stack([  # Eq. 6-7 directly: softmax over whole images
        torch.einsum("e,echw->chw", torch.softmax(-((z[b].double() - entries) ** 2).sum((1, 2, 3)) / (2 * float(t[b]) ** 2), 0), entries)
        for b in range(len(t))])
    assert torch.allclose(square, empirical)
    assert torch.allclose(empirical.double(), expected, atol=1e-5)


@pytest.mark.parametrize("size", [2, 3])
def test_small_t_returns_the_nearest_training_patch(size):
    training_set = random_training_set(count=15, height=6, width=6, xflip=True)
    entries = entries_of(training_set.images, True)
    z = (0.7 * entries[0] + 0.3 * entries[7])[None].float()  # off the data, no ties
    out = pspc_square(training_set, size)(z, torch.tensor([1e-3]))
    masks = square_patches(6, 6, size).masks()
    nearest = torch.zeros(1, 6, 6, dtype=torch.float64)
    for mask in masks:
        distances = torch.stack([((z[0].double() - x) ** 2 * mask).sum() for x in entries])
        nearest += entries[distances.argmin()] * mask
    assert torch.allclose(out[0].double(), nearest / masks.sum(0), atol=1e-6)


def test_large_t_tends_to_the_data_mean():
    training_set = random_training_set(count=20, channels=3, height=6, width=6, xflip=True)
    z = noisy(training_set, torch.tensor([1e4]))
    mean = entries_of(training_set.images, True).mean(0)
    for size in (2, 6):
        out = pspc_square(training_set, size)(z, torch.tensor([1e4]))
        assert torch.allclose(out[0].double(), mean, atol=1e-3)


def test_a_sample_does_not_depend_on_its_batch_mates():
    """The log-sum-exp max is per sample and position: extreme batch mates change nothing."""
    training_set = random_training_set(count=10, height=6, width=6, xflip=True)
    z = noisy(training_set, torch.tensor([0.3, 0.3]))
    z[1] = 300.0  # a far-away sample with enormous distances
    for denoiser in (pspc_square(training_set, 3), EmpiricalDenoiser(training_set)):
        alone = denoiser(z[:1], torch.tensor([0.3]))
        together = denoiser(z, torch.tensor([0.3, 0.01]))
        assert torch.equal(alone[0], together[0]) or torch.allclose(alone[0], together[0], atol=1e-7)
        assert torch.isfinite(together).all()


def test_chunking_does_not_change_the_result():
    training_set = random_training_set(count=13, height=6, width=6, xflip=True)
    z = noisy(training_set, torch.tensor([0.5]))
    patch_set = square_patches(6, 6, 3)
    data = training_set.as_float()
    one, _ = patch_posterior(z, torch.tensor([0.5], dtype=torch.float64), data, patch_set, True, chunk_bytes=1)
    many, _ = patch_posterior(z, torch.tensor([0.5], dtype=torch.float64), data, patch_set, True, chunk_bytes=1 << 30)
    assert torch.allclose(one, many, atol=1e-7)
