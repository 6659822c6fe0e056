"""Gaussian, CFDM and network denoisers, input validation and devices."""

import pytest
import torch

from pspc.denoisers import (
    CFDMDenoiser, DenoiserInputError, EmpiricalDenoiser, GaussianDenoiser, NetworkDenoiser, build_denoiser,
    pspc_square
)
from tests.support.data import noisy, random_training_set
from tests.support.reference import entries_of


def test_gaussian_denoiser_is_the_wang_vastola_formula():
    training_set = random_training_set(count=30, channels=1, height=4, width=4, xflip=True)
    x = entries_of(training_set.images, True).flatten(1)
    mean = x.mean(0)
    covariance = (x - mean).T @ (x - mean) / x.shape[0]
    t = torch.tensor([0.1, 1.0, 10.0])
    z = noisy(training_set, t)
    out = GaussianDenoiser(training_set)(z, t)
    for b in range(3):
        # mu + Sigma (Sigma + t^2 I)^-1 (z - mu), the same map without an eigendecomposition
        shrink = covariance @ torch.linalg.inv(covariance + float(t[b]) ** 2 * torch.eye(16, dtype=torch.float64))
        expected = mean + shrink @ (z[b].double().flatten() - mean)
        assert torch.allclose(out[b].double().flatten(), expected, atol=1e-5)


def test_rank_truncated_gaussian_keeps_the_top_components():
    training_set = random_training_set(count=30, height=4, width=4)
    z = noisy(training_set, torch.tensor([1.0]))
    full = GaussianDenoiser(training_set)(z, 1.0)
    rank_16 = GaussianDenoiser(training_set, rank=16)(z, 1.0)
    rank_1 = GaussianDenoiser(training_set, rank=1)(z, 1.0)
    assert torch.allclose(full, rank_16, atol=1e-5)
    assert not torch.allclose(full, rank_1, atol=1e-3)
    with pytest.raises(ValueError, match="rank"):
        GaussianDenoiser(training_set, rank=17)


def test_cfdm_averages_the_empirical_denoiser_at_perturbed_inputs():
    training_set = random_training_set(count=10, height=5, width=5, xflip=True)
    t = torch.tensor([0.5, 2.0])
    z = noisy(training_set, t)
    cfdm = CFDMDenoiser(training_set, sigma=0.2, draws=4, seed=7)
    empirical = EmpiricalDenoiser(training_set)
    generator = torch.Generator().manual_seed(7)
    expected = torch.zeros_like(z, dtype=torch.float64)
    for _ in range(4):
        noise = torch.randn(z.shape, generator=generator)
        expected += empirical(z + (0.2 * (1 + t))[:, None, None, None] * noise, t).double()
    assert torch.allclose(cfdm(z, t).double(), expected / 4, atol=1e-6)
    assert torch.equal(cfdm(z, t), cfdm(z, t))  # deterministic in (z, t)
    assert torch.allclose(CFDMDenoiser(training_set, sigma=0.0, draws=1)(z, t), empirical(z, t))


def test_network_wrapper_calls_the_edm_interface():
    class Shrink(torch.nn.Module):
        def forward(self, z, sigma):
            return z / (1 + sigma[:, None, None, None] ** 2)

    denoiser = NetworkDenoiser(Shrink(), (1, 4, 4))
    z = torch.randn(3, 1, 4, 4)
    t = torch.tensor([0.5, 1.0, 2.0])
    assert torch.allclose(denoiser(z, t), z / (1 + t[:, None, None, None] ** 2))

    class WrongShape(torch.nn.Module):
        def forward(self, z, sigma):
            return z[:, :, :2]

    with pytest.raises(DenoiserInputError, match="network returned shape"):
        NetworkDenoiser(WrongShape(), (1, 4, 4))(z, t)


@pytest.mark.parametrize("kind", ["pspc-square", "pspc-flex", "empirical", "gaussian", "cfdm"])
def test_every_denoiser_rejects_bad_input_with_a_clear_message(kind):
    training_set = random_training_set(count=6, channels=3, height=5, width=5)
    denoiser = build_denoiser(kind, training_set, patch_size=3)
    good = torch.zeros(2, 3, 5, 5)
    with pytest.raises(DenoiserInputError, match="channels"):
        denoiser(torch.zeros(2, 1, 5, 5), 1.0)
    with pytest.raises(DenoiserInputError, match="5x5"):
        denoiser(torch.zeros(2, 3, 6, 5), 1.0)
    with pytest.raises(DenoiserInputError, match=r"\[B, C, H, W\]"):
        denoiser(torch.zeros(3, 5, 5), 1.0)
    with pytest.raises(DenoiserInputError, match="NaN"):
        denoiser(torch.full((2, 3, 5, 5), float("nan")), 1.0)
    for bad_t in (0.0, -1.0, float("nan"), [1.0, 0.0]):
        with pytest.raises(DenoiserInputError, match="t must be finite and > 0"):
            denoiser(good, bad_t)
    with pytest.raises(DenoiserInputError, match="one value per sample"):
        denoiser(good, [1.0, 2.0, 3.0])
    assert denoiser.describe()["kind"] == kind
    assert denoiser(good, 1.0).shape == good.shape


def test_unknown_denoiser_kind_is_named():
    with pytest.raises(ValueError, match="unknown denoiser 'pspc-round'"):
        build_denoiser("pspc-round", random_training_set())


def test_denoiser_record_names_the_data_fingerprint():
    training_set = random_training_set()
    record = pspc_square(training_set).describe()
    assert record["dataset"]["fingerprint"] == training_set.fingerprint
    assert record["schedule"]["patch_size"]["values"]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device on this machine")
def test_runs_unchanged_on_cuda():
    training_set = random_training_set(count=10, channels=3, height=6, width=6, xflip=True)
    t = torch.tensor([0.3, 3.0])
    z = noisy(training_set, t)
    for kind in ("pspc-square", "pspc-flex", "gaussian"):
        cpu = build_denoiser(kind, training_set, patch_size=3)
        gpu = build_denoiser(kind, training_set, patch_size=3).to("cuda")
        assert gpu.device.type == "cuda"
        assert torch.allclose(gpu(z.cuda(), t.cuda()).cpu(), cpu(z, t), atol=1e-5)


@pytest.mark.parametrize("kind", ["pspc-square", "pspc-flex", "empirical", "gaussian", "cfdm"])
def test_extreme_finite_input_is_refused_with_the_valid_range(kind):
    """Finite z and t at the extremes gave silent NaN (|z| = 1e37: all NaN, t = 1e-300: half)."""
    training_set = random_training_set(count=6, channels=3, height=5, width=5)
    denoiser = build_denoiser(kind, training_set, patch_size=3)
    good = torch.zeros(2, 3, 5, 5)
    with pytest.raises(DenoiserInputError, match=r"\|z\| must be <= 1e\+06 .*got 1e\+37"):
        denoiser(torch.full((2, 3, 5, 5), 1e37), 1.0)
    for bad_t in (1e-300, 1e-7, 1e5, [1.0, 1e-300]):
        with pytest.raises(DenoiserInputError, match=r"t must be in \[1e-06, 10000\], got"):
            denoiser(good, bad_t)
    with pytest.raises(DenoiserInputError, match=r"got 1e-300"):
        denoiser(good, 1e-300)
    for t in (1e-6, 1e4):  # the bounds themselves are valid and finite
        assert torch.isfinite(denoiser(good, t)).all()
    assert torch.isfinite(denoiser(torch.full((2, 3, 5, 5), 1e6), 1.0)).all()


def test_non_finite_output_is_refused():
    class Broken(torch.nn.Module):
        def forward(self, z, sigma):
            return torch.full_like(z, float("nan"))

    with pytest.raises(DenoiserInputError, match="non-finite values"):
        NetworkDenoiser(Broken(), (1, 4, 4))(torch.zeros(2, 1, 4, 4), 1.0)
