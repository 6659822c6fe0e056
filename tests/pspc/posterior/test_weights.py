"""Stored weights recompose the denoiser output: exactly (full), within the dropped mass (top-k)."""

import pytest
import torch

from pspc.denoisers import pspc_flex, pspc_square
from pspc.posterior.weights import WeightRequest
from pspc.schedules import Schedule
from pspc.posterior.sensitivity import isotropic_sensitivity
from tests.support.data import noisy


@pytest.mark.parametrize("size", [3, 9, 28])
def test_full_weights_recompose_exactly_and_top_k_within_dropped_mass(fashion_slice, size):
    training_set = fashion_slice.with_xflip()
    denoiser = pspc_square(training_set, size)
    t = torch.tensor([0.5, 2.0])
    z = noisy(training_set, t, indices=[0, 5])
    out, ((_, full),) = denoiser.posterior(z, t, WeightRequest(top_k=3, mass=0.95, full=True))
    assert torch.allclose(full.recompose(training_set, use_full=True), out.double(), atol=1e-5)
    approx = full.recompose(training_set)
    assert (approx - out.double()).abs().le(full.error_bound() + 1e-5).all()
    assert (full.mass <= 1 + 1e-6).all() and (full.entry.ne(-1).sum(2) <= 3).all()
    # the fused CPU path gives the same top-k
    _, ((_, fused),) = denoiser.posterior(z, t, WeightRequest(top_k=3, mass=0.95))
    assert (fused.recompose(training_set) - out.double()).abs().le(fused.error_bound() + 1e-5).all()


def test_mass_threshold_stops_early_and_k_caps(fashion_slice):
    training_set = fashion_slice.with_xflip()
    denoiser = pspc_square(training_set, 5)
    z = noisy(training_set, torch.tensor([0.05]), indices=[2])
    _, ((_, peaked),) = denoiser.posterior(z, 0.05, WeightRequest(top_k=10, mass=0.5))
    kept = peaked.entry.ne(-1).sum(2)
    assert kept.min() >= 1 and kept.float().mean() < 10  # a peaked posterior needs few entries
    stopped_early = kept < 10  # elsewhere k ran out first (ties, e.g. black background)
    assert stopped_early.any() and (peaked.mass[stopped_early] >= 0.5 - 1e-6).all()
    before_last = peaked.weight.cumsum(2) - peaked.weight
    assert (before_last[peaked.entry >= 0] < 0.5).all()  # nothing kept after the threshold


def test_flex_weights_recompose(fashion_slice):
    training_set = fashion_slice.subset(range(8)).with_xflip()
    denoiser = pspc_flex(training_set, isotropic_sensitivity(28, 28), Schedule((1.0,), (0.4,)))
    z = noisy(training_set, torch.tensor([1.0]), indices=[1])
    out, ((_, weights),) = denoiser.posterior(z, 1.0, WeightRequest(top_k=16, mass=1.0, full=True))
    assert torch.allclose(weights.recompose(training_set, use_full=True), out.double(), atol=1e-5)


def test_sources_name_images_flips_and_boxes(fashion_slice):
    training_set = fashion_slice.with_xflip()
    denoiser = pspc_square(training_set, 7)
    z = training_set.as_float()[[4]].flip(-1)  # a mirrored training image, t small
    _, ((_, weights),) = denoiser.posterior(z, 0.01, WeightRequest(top_k=2))
    patch = 10 * 22 + 10  # window at (10, 10); 22 windows per row
    (top,) = weights.sources(training_set, sample=0, patch=patch)[:1]
    assert top["image_id"] == training_set.ids[4] and top["flip"] is True
    assert top["source_box"] == (10, 28 - 7 - 10, 7, 7)  # mirrored columns in the original image
    assert top["weight"] == pytest.approx(1.0, abs=1e-6)
