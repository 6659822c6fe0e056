"""Denoisers against a network: states, errors, Eq. 8 maps, gradient concentration, tuning.

Stand-in networks are denoisers wrapped in the EDM interface net(z, sigma): the empirical
denoiser (whose own error must then be exactly 0), the Gaussian one (linear, so its Eq. 8 map
is |A| for its known matrix A), PSPC with a known patch size or lambda (which tuning must
find), and a tiny untrained EDMPrecond.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from pspc.denoisers import (
    EmpiricalDenoiser, GaussianDenoiser, NetworkDenoiser, build_denoiser, network_flex, pspc_flex, pspc_square
)
from pspc.evaluation.fidelity import (
    FidelityCurves, FidelityError, compare_denoisers, concentration_sides, concentration_table,
    denoiser_errors, forward_process_states, mass_within, reverse_process_states
)
from pspc.samplers import SamplerConfig, initial_noise
from pspc.schedules import Schedule
from pspc.posterior.sensitivity import SensitivityError, SensitivityMaps, network_sensitivity
from pspc.evaluation.tuning import candidate_sizes, merge_levels, tune_schedule, tuning_states
from tests.support.data import random_training_set

KINDS = ("empirical", "gaussian", "cfdm", "pspc-square", "pspc-flex")


class AsNetwork(torch.nn.Module):
    """A denoiser D(z, t) exposed as an EDM network net(z, sigma)."""

    def __init__(self, denoiser):
        super().__init__()
        self.denoiser = denoiser

    def forward(self, z, sigma):
        return self.denoiser(z, sigma)


def stand_in(denoiser, name="stand-in") -> NetworkDenoiser:
    return NetworkDenoiser(AsNetwork(denoiser), denoiser.image_shape, name=name)


@pytest.fixture(scope="module")
def train():
    return random_training_set(12, 1, 6, 7, seed=0, xflip=True)


@pytest.fixture(scope="module")
def held_out():
    return random_training_set(6, 1, 6, 7, seed=5)


@pytest.fixture(scope="module")
def empirical_network(train):
    return stand_in(EmpiricalDenoiser(train), "empirical-stand-in")


# ---------------------------------------------------------------------------------------
# States and errors
# ---------------------------------------------------------------------------------------
def test_empirical_stand_in_gives_zero_error_to_the_empirical_denoiser_only(train, held_out, empirical_network):
    forward = forward_process_states(empirical_network, held_out, [0.2, 1.0, 4.0], num_images=4, seed=3)
    reverse = reverse_process_states(empirical_network, 3, seed=1, config=SamplerConfig(num_steps=5))
    curves = compare_denoisers({k: (lambda k=k: build_denoiser(k, train)) for k in KINDS}, [forward, reverse])
    for process in ("forward", "reverse"):
        c = curves[process]
        assert c.names == list(KINDS) and c.errors.shape == (5, len(c.times), 4 if process == "forward" else 3)
        assert c.errors[0].max() < 1e-12  # the network IS the empirical denoiser
        middle = [k for k, t in enumerate(c.times) if 0.1 <= t <= 5]
        assert middle and (c.mse[1:, middle] > 1e-6).all()  # every other denoiser differs there
        assert all(c.ranking(k)[0] == "empirical" for k in middle)
        assert c.records["pspc-square"]["kind"] == "pspc-square"
        assert c.records["empirical"]["dataset"]["fingerprint"] == train.fingerprint


def test_errors_match_a_slow_loop(train, held_out, empirical_network):
    times = [0.3, 2.0]
    forward = forward_process_states(empirical_network, held_out, times, num_images=3, seed=7, batch_size=2)
    # The states are z = x + t eps with one eps per image shared across t, x = the picked images.
    generator = torch.Generator().manual_seed(7)
    picks = torch.randperm(len(held_out), generator=generator)[:3]
    eps = torch.randn((3, 1, 6, 7), generator=generator)
    assert forward.record["indices"] == picks.tolist()
    for level, t in zip(forward.levels, times):
        torch.testing.assert_close(level.z, held_out.as_float()[picks] + t * eps)

    square = pspc_square(train, 3)
    errors = denoiser_errors(square, forward, batch_size=2)
    for k, level in enumerate(forward.levels):
        for b in range(3):
            reference = empirical_network(level.z[b:b + 1], level.t)[0].double()
            output = square(level.z[b:b + 1], level.t)[0].double()
            slow = sum(float((output[c, y, x] - reference[c, y, x]) ** 2)
                       for c in range(1) for y in range(6) for x in range(7)) / 42
            assert errors[k, b] == pytest.approx(slow, rel=1e-6, abs=1e-12)

    curves = FidelityCurves("forward", times, ["pspc-square"], errors[None])
    assert curves.mse[0].tolist() == pytest.approx(errors.mean(1).tolist())
    assert curves.stderr[0, 0] == pytest.approx(np.std(errors[0], ddof=1) / math.sqrt(3))
    assert curves.mean_over(0.1, 1.0)["pspc-square"] == pytest.approx(errors[0].mean())
    assert math.isnan(curves.mean_over(10, 20)["pspc-square"])
    table = curves.table()
    assert "forward process" in table and "pspc-square" in table and len(table.splitlines()) == 4


def test_reverse_states_are_the_networks_euler_trajectory(empirical_network):
    config = SamplerConfig(num_steps=4)
    reverse = reverse_process_states(empirical_network, 2, seed=9, config=config)
    times = config.time_steps().tolist()
    assert reverse.times == pytest.approx(times[:-1]) and [l.step for l in reverse.levels] == [0, 1, 2, 3]
    torch.testing.assert_close(reverse.levels[0].z, initial_noise(2, (1, 6, 7), 9))
    for k, level in enumerate(reverse.levels):
        torch.testing.assert_close(level.reference, empirical_network(level.z, level.t).float())
        if k + 1 < len(reverse.levels):
            expected = level.z + (times[k + 1] - times[k]) * (level.z - level.reference) / times[k]
            torch.testing.assert_close(reverse.levels[k + 1].z, expected, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(reverse.final, reverse.levels[-1].reference.clamp(-1, 1))
    assert reverse.record["seed"] == 9 and reverse.record["sampler"]["num_steps"] == 4


def test_states_reject_bad_input(train, held_out, empirical_network):
    with pytest.raises(FidelityError, match="num_images"):
        forward_process_states(empirical_network, held_out, [1.0], num_images=7)
    with pytest.raises(FidelityError, match="finite and > 0"):
        forward_process_states(empirical_network, held_out, [1.0, 0.0], num_images=2)
    other = random_training_set(4, 1, 5, 5)
    with pytest.raises(FidelityError, match="5x5, the network takes 1 at 6x7"):
        forward_process_states(empirical_network, other, [1.0], num_images=2)
    with pytest.raises(FidelityError, match="num_samples"):
        reverse_process_states(empirical_network, 0)
    with pytest.raises(FidelityError, match="no denoisers"):
        compare_denoisers({}, [])


# ---------------------------------------------------------------------------------------
# Eq. 8 maps and gradient concentration
# ---------------------------------------------------------------------------------------
def test_sensitivity_of_a_linear_network_is_its_absolute_matrix(train, held_out):
    gaussian = GaussianDenoiser(train)
    maps = SensitivityMaps(stand_in(gaussian), held_out, num_samples=2, seed=0)
    for t in (0.5, 3.0):
        shrink = gaussian.eigenvalues / (gaussian.eigenvalues + t * t)
        matrix = (gaussian.eigenvectors * shrink) @ gaussian.eigenvectors.T  # D(z) = mu + A (z - mu)
        torch.testing.assert_close(maps(t), matrix.abs().view(6, 7, 6, 7), rtol=1e-5, atol=1e-6)
    assert sorted(maps.describe()["computed_at"]) == [0.5, 3.0]
    assert maps.describe()["images"]["fingerprint"] == held_out.fingerprint


def test_batched_sensitivity_equals_the_autograd_jacobian():
    from tests.support.networks import TINY, tiny_net

    net = tiny_net()
    images = random_training_set(5, 1, 8, 8, seed=2)
    fast = network_sensitivity(net, images, 0.7, num_samples=1, seed=4, rows_per_batch=40)
    generator = torch.Generator().manual_seed(4)
    picks = torch.randint(len(images), (1,), generator=generator)
    slow = torch.zeros(8, 8, 8, 8, dtype=torch.float64)
    for index in picks.tolist():
        x = images.as_float()[index]
        z = x + 0.7 * torch.randn(x.shape, generator=generator)
        jacobian = torch.autograd.functional.jacobian(lambda v: net(v[None], torch.tensor([0.7]))[0], z,
                                                      vectorize=True)
        slow += jacobian.abs().sum((0, 3)).double()
    torch.testing.assert_close(fast, slow, rtol=1e-5, atol=1e-7)
    assert TINY.image_shape == (1, 8, 8)


def test_sensitivity_grid_uses_the_nearest_level_in_log_t():
    g1, g2 = torch.rand(6, 7, 6, 7, dtype=torch.float64), torch.rand(6, 7, 6, 7, dtype=torch.float64)
    maps = SensitivityMaps(None, None, maps={0.1: g1, 1.0: g2}, grid=[0.1, 1.0])
    assert maps(0.2) is g1 and maps(0.5) is g2 and maps(40.0) is g2 and maps(0.001) is g1
    with pytest.raises(SensitivityError, match="no sensitivity map at t=3"):
        SensitivityMaps(None, None, maps={1.0: g2})(3.0)
    with pytest.raises(SensitivityError, match=r"\[H, W, H, W\]"):
        SensitivityMaps(None, None, maps={1.0: torch.ones(6, 7)})
    with pytest.raises(SensitivityError, match="needs a network"):
        SensitivityMaps(None, None)
    with pytest.raises(SensitivityError, match="network must be a Denoiser"):
        SensitivityMaps(torch.nn.Linear(2, 2), random_training_set(2, 1, 6, 7))
    with pytest.raises(SensitivityError, match=r"noise levels must be finite and > 0, got \[-1.0\]"):
        SensitivityMaps(None, None, maps={1.0: g2}, grid=[1.0, -1.0])


def slow_sides(g: torch.Tensor, fraction: float) -> torch.Tensor:
    """Side of the smallest centred (clipped) square holding `fraction` of G[y, x], by loops."""
    h, w = g.shape[:2]
    sides = torch.zeros(h, w, dtype=torch.float64)
    for y in range(h):
        for x in range(w):
            total = float(g[y, x].sum())
            for r in range(max(h, w)):
                inside = float(g[y, x, max(0, y - r):y + r + 1, max(0, x - r):x + r + 1].sum())
                if inside >= fraction * total * (1 - 1e-12):
                    sides[y, x] = 2 * r + 1
                    break
    return sides


def test_concentration_sides_on_a_hand_computed_map():
    # Every output pixel: weight 4 on itself, 1 on every other pixel of a 5x5 image (total 28).
    g = torch.ones(5, 5, 5, 5, dtype=torch.float64)
    for y in range(5):
        for x in range(5):
            g[y, x, y, x] = 4
    sides = concentration_sides(g, (0.1, 0.4, 0.5, 0.75, 0.95))
    # Centre (2, 2): radius 0 holds 4/28 = 14%, radius 1 holds 12/28 = 43%, radius 2 all.
    assert sides[:, 2, 2].tolist() == [1, 3, 5, 5, 5]
    # Corner (0, 0): radius 1 holds 7/28 = 25%, 2: 12/28 = 43%, 3: 19/28 = 68%, 4: all.
    assert sides[:, 0, 0].tolist() == [1, 5, 7, 9, 9]
    share = mass_within(g, 3)
    assert float(share[2, 2]) == pytest.approx(12 / 28) and float(share[0, 0]) == pytest.approx(7 / 28)
    assert float(mass_within(g, 15)[0, 0]) == pytest.approx(1.0)

    random_g = torch.rand(6, 7, 6, 7, dtype=torch.float64, generator=torch.Generator().manual_seed(0)) ** 4
    for fraction in (0.5, 0.75, 0.95):
        torch.testing.assert_close(concentration_sides(random_g, (fraction,))[0], slow_sides(random_g, fraction))


def test_concentration_table_averages_over_output_pixels():
    g = torch.ones(5, 5, 5, 5, dtype=torch.float64)
    for y in range(5):
        for x in range(5):
            g[y, x, y, x] = 4
    g_zero_row = g.clone()
    g_zero_row[0, 0] = 0  # an output pixel that depends on nothing: left out of the means
    table = concentration_table({1.0: g, 2.0: g_zero_row}.__getitem__, [1.0, 2.0], (0.5,), within=(3,))
    expected = slow_sides(g, 0.5)
    assert table.mean_side[0, 0] == pytest.approx(float(expected.mean()))
    assert table.median_side[0, 0] == pytest.approx(float(expected.flatten().median()))
    assert table.mean_side[1, 0] == pytest.approx(float(expected.flatten()[1:].mean()))
    assert table.within[3][0] == pytest.approx(float(mass_within(g, 3).mean()))
    assert "50%" in table.table() and table.to_dict()["times"] == [1.0, 2.0]
    with pytest.raises(FidelityError, match="fractions"):
        concentration_sides(g, (0.0,))
    with pytest.raises(FidelityError, match="non-negative"):
        concentration_sides(-g, (0.5,))


def test_network_flex_matches_pspc_flex_and_is_empirical_at_lambda_one(train, held_out):
    g = torch.rand(6, 7, 6, 7, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    maps = SensitivityMaps(None, None, maps={0.5: g, 20.0: g})
    lambdas = Schedule((0.5, 20.0), (0.4, 1.0))
    ours = network_flex(train, maps, lambdas)
    theirs = pspc_flex(train, lambda t: g, lambdas)
    z = held_out.as_float()[:3] + 0.5 * torch.randn(3, 1, 6, 7, generator=torch.Generator().manual_seed(2))
    torch.testing.assert_close(ours(z, 0.5), theirs(z, 0.5))
    torch.testing.assert_close(ours(z * 20, 20.0), EmpiricalDenoiser(train)(z * 20, 20.0))
    assert ours.describe()["schedule"]["sensitivity"]["kind"] == "network-eq8"


# ---------------------------------------------------------------------------------------
# Schedule tuning (Appendix B)
# ---------------------------------------------------------------------------------------
def test_candidate_sizes_are_odd_up_to_the_side_plus_the_whole_image():
    assert candidate_sizes(28, 28) == (3, 5, 7, 9, 11, 13, 15, 17, 19, 21, 23, 25, 27, 28)
    assert candidate_sizes(32, 32)[-2:] == (31, 32)
    assert candidate_sizes(7, 9) == (3, 5, 7)
    assert candidate_sizes(6, 7, smallest=1) == (1, 3, 5, 6)


def test_tuning_finds_the_patch_size_and_lambda_of_a_pspc_network(train, held_out):
    config = SamplerConfig(num_steps=4, t_max=4.0, t_min=0.1)
    square_network = stand_in(pspc_square(train, 5))
    levels, record = tuning_states(square_network, config, "both", images=held_out, num_images=2, num_samples=2)
    assert [l.z.shape[0] for l in levels] == [4] * 4 and record["process"] == "both"
    tuned = tune_schedule(train, levels, sizes=(3, 5, 6))
    assert tuned.sizes == [5, 5, 5, 5]
    for errors in tuned.size_errors:
        assert errors[5] < 1e-12 and errors[3] > 1e-8 and errors[6] > 1e-8
    assert tuned.lambdas is None

    g = torch.rand(6, 7, 6, 7, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    maps = SensitivityMaps(None, None, maps={1.0: g}, grid=[1.0])
    flex_network = stand_in(network_flex(train, maps, Schedule((1.0,), (0.4,))))
    levels, _ = tuning_states(flex_network, config, "reverse", num_samples=3)
    tuned = tune_schedule(train, levels, sizes=(3, 6), lambdas=(0.2, 0.4, 0.7, 1.0), sensitivity=maps)
    assert tuned.lambdas == [0.4] * 4
    for errors in tuned.lambda_errors:
        assert errors[0.4] < 1e-12 and min(errors[v] for v in (0.2, 0.7, 1.0)) > 1e-8
    assert "tuned schedule" in tuned.table()
    assert tuned.lambda_schedule()(tuned.times[2]) == 0.4 and tuned.patch_schedule().values


def test_tuning_picks_the_smallest_error_and_breaks_ties_in_candidate_order():
    """With the empirical network the whole image is exact; when two candidates give the
    same masks (the same error), the first in candidate order wins."""
    square_set = random_training_set(10, 1, 6, 6, seed=4, xflip=True)
    held_out = random_training_set(4, 1, 6, 6, seed=6)
    network = stand_in(EmpiricalDenoiser(square_set))
    forward = forward_process_states(network, held_out, [3.0, 0.5], num_images=3)
    tuned = tune_schedule(square_set, merge_levels(forward), sizes=(3, 5, 6))
    assert tuned.sizes == [6, 6]
    for errors in tuned.size_errors:
        assert errors[6] < 1e-12 and min(errors[3], errors[5]) > 1e-8

    # G: 60% of every output pixel's sensitivity on itself, so lambda 0.3 and 0.5 both give
    # one-pixel masks; a network using lambda 0.5 is matched exactly by both.
    g = torch.full((6, 6, 6, 6), 0.4 / 35, dtype=torch.float64)
    for y in range(6):
        for x in range(6):
            g[y, x, y, x] = 0.6
    maps = SensitivityMaps(None, None, maps={1.0: g}, grid=[1.0])
    flex_network = stand_in(network_flex(square_set, maps, Schedule((1.0,), (0.5,))))
    forward = forward_process_states(flex_network, held_out, [0.5], num_images=3)
    tuned = tune_schedule(square_set, forward.levels, lambdas=(0.3, 0.5, 1.0), sensitivity=maps, tune_sizes=False)
    assert tuned.lambda_errors[0][0.3] == tuned.lambda_errors[0][0.5] < 1e-12 < tuned.lambda_errors[0][1.0]
    assert tuned.lambdas == [0.3] and tuned.sizes is None
    tuned = tune_schedule(square_set, forward.levels, lambdas=(0.5, 0.3, 1.0), sensitivity=maps, tune_sizes=False)
    assert tuned.lambdas == [0.5]


def test_tuning_rejects_bad_input(train, held_out, empirical_network):
    forward = forward_process_states(empirical_network, held_out, [0.5, 3.0], num_images=2)
    with pytest.raises(FidelityError, match="t decreasing"):
        tune_schedule(train, forward.levels)
    with pytest.raises(FidelityError, match="no noise levels"):
        tune_schedule(train, [])
    with pytest.raises(FidelityError, match=r"candidate sizes must be in \[1, 6\]"):
        tune_schedule(train, forward.levels[::-1], sizes=(3, 7))
    with pytest.raises(FidelityError, match=r"lambdas must be in \(0, 1\]"):
        tune_schedule(train, forward.levels[::-1], lambdas=(0.0,), sensitivity=lambda t: None)
    with pytest.raises(FidelityError, match="unknown tuning process"):
        tuning_states(empirical_network, SamplerConfig(num_steps=2), "sideways")
    with pytest.raises(FidelityError, match="different noise levels"):
        other = forward_process_states(empirical_network, held_out, [0.4, 3.0], num_images=2)
        merge_levels(forward, other)


def test_untrained_edm_network_runs_through_the_comparison():
    from tests.support.networks import tiny_net

    net = NetworkDenoiser(tiny_net(), (1, 8, 8), name="tiny")
    images = random_training_set(6, 1, 8, 8, seed=1)
    maps = SensitivityMaps(net, images, num_samples=1, grid=[1.0])
    table = concentration_table(maps, [0.3, 1.0])
    assert table.mean_side.shape == (2, 3) and np.isfinite(table.mean_side).all()
    assert (table.mean_side[:, 0] <= table.mean_side[:, 1]).all() and (table.mean_side[:, 1] <= table.mean_side[:, 2]).all()
    forward = forward_process_states(net, images, [1.0], num_images=2)
    curves = compare_denoisers({"flex": network_flex(images, maps, Schedule((1.0,), (0.5,)))}, [forward])
    assert curves["forward"].errors.shape == (1, 1, 2) and (curves["forward"].errors > 0).all()
