"""PF-ODE samplers: Euler / Heun from the formulas, callbacks, seeds, resume, inversion."""

import pytest
import torch

from pspc.denoisers import NetworkDenoiser, pspc_square
from pspc.posterior.weights import WeightRequest
from pspc.errors import InputError
from pspc.samplers import SamplerConfig, denoise_step, initial_noise, invert, sample, sampler_step
from tests.support.data import random_training_set


class Shrink(torch.nn.Module):
    """The optimal denoiser of N(0, I): D(z, t) = z / (1 + t^2)."""

    def forward(self, z, sigma):
        return z / (1 + sigma[:, None, None, None] ** 2)


def test_euler_and_heun_follow_the_edm_algorithm():
    denoiser = NetworkDenoiser(Shrink(), (1, 3, 3))
    z0 = initial_noise(2, (1, 3, 3), seed=5)
    for method in ("euler", "heun"):
        config = SamplerConfig(method=method, num_steps=6)
        times = config.time_steps().tolist()
        z = z0.clone().double()
        for t, t_next in zip(times[:-1], times[1:]):
            d = z / (1 + t**2)
            z_next = z + (t_next - t) * (z - d) / t
            if method == "heun" and t_next > 0:
                d_next = z_next / (1 + t_next**2)
                z_next = z + (t_next - t) * 0.5 * ((z - d) / t + (z_next - d_next) / t_next)
            z = z_next
        assert torch.allclose(sample(denoiser, z0, config), z.float(), atol=1e-5)


def test_last_euler_step_returns_the_denoiser_output():
    denoiser = NetworkDenoiser(Shrink(), (1, 3, 3))
    seen = []
    out = sample(denoiser, initial_noise(1, (1, 3, 3), seed=0), SamplerConfig(num_steps=4),
                 callback=lambda step, t, z, d, w: seen.append((step, t, d.clone(), w)))
    assert [s for s, *_ in seen] == [0, 1, 2, 3]
    assert torch.allclose(out, seen[-1][2], atol=1e-6)
    assert all(w is None for *_, w in seen)


def test_callback_receives_posterior_weights_only_when_requested():
    training_set = random_training_set(count=8, height=6, width=6, xflip=True)
    denoiser = pspc_square(training_set, 3)
    z = initial_noise(2, (1, 6, 6), seed=1)
    captured = []
    sample(denoiser, z, SamplerConfig(num_steps=3), request=WeightRequest(top_k=4),
           callback=lambda step, t, z_t, d, w: captured.append(w))
    assert len(captured) == 3
    (index, weights), = captured[0]
    assert index.tolist() == [0, 1] and weights.entry.shape == (2, 16, 4)
    plain = []
    sample(denoiser, z, SamplerConfig(num_steps=3), callback=lambda *args: plain.append(args[-1]))
    assert plain == [None, None, None]


def test_initial_noise_is_per_sample_seeded():
    batch = initial_noise(3, (1, 4, 4), seed=10)
    alone = initial_noise(1, (1, 4, 4), seed=12)
    assert torch.equal(batch[2], alone[0])
    assert batch.std() > 40  # t_max = 80 times unit noise


def test_pspc_samples_are_finite_and_in_range():
    training_set = random_training_set(count=10, channels=3, height=6, width=6, xflip=True)
    out = sample(pspc_square(training_set), initial_noise(2, (3, 6, 6), seed=0), SamplerConfig(num_steps=8))
    assert torch.isfinite(out).all() and out.abs().max() <= 1 + 1e-5  # convex combinations of pixels


def test_unknown_sampler_is_rejected():
    with pytest.raises(ValueError, match="unknown sampler 'rk4'"):
        SamplerConfig(method="rk4")


def _trajectory(denoiser, z0, config):
    """(z_k, D(z_k)) at every step of a full run, and its final sample."""
    states = []
    final = sample(denoiser, z0, config, callback=lambda step, t, z, d, w: states.append((z.clone(), d.clone())))
    return states, final


@pytest.mark.parametrize("method", ["euler", "heun"])
def test_resuming_from_step_k_is_bit_identical(method):
    training_set = random_training_set(count=8, height=6, width=6, xflip=True)
    denoiser = pspc_square(training_set, 3)
    config = SamplerConfig(method=method, num_steps=5)
    states, final = _trajectory(denoiser, initial_noise(2, (1, 6, 6), seed=3), config)
    times = config.time_steps()
    for k in range(1, config.num_steps):
        steps = []
        resumed = sample(denoiser, states[k][0], config, callback=lambda step, *rest: steps.append(step), start=k)
        assert torch.equal(resumed, final)
        assert steps == list(range(k, config.num_steps))
        assert torch.equal(sample(denoiser, states[k][0], config, times=times[k:]), final)  # k-diffusion style


def test_start_outside_the_schedule_is_rejected():
    denoiser = NetworkDenoiser(Shrink(), (1, 3, 3))
    with pytest.raises(InputError, match="start must be a step in"):
        sample(denoiser, initial_noise(1, (1, 3, 3), seed=0), SamplerConfig(num_steps=3), start=4)


@pytest.mark.parametrize("method", ["euler", "heun"])
def test_sampler_step_is_the_update_of_the_loop(method):
    denoiser = NetworkDenoiser(Shrink(), (1, 3, 3))
    config = SamplerConfig(method=method, num_steps=6)
    states, final = _trajectory(denoiser, initial_noise(2, (1, 3, 3), seed=7), config)
    times = config.time_steps().tolist()
    following = [z for z, _ in states[1:]] + [final]
    for k, ((z, d), z_next) in enumerate(zip(states, following)):
        assert torch.equal(denoise_step(denoiser, z, times[k])[0], d)
        assert torch.equal(sampler_step(denoiser, method, z, d, times[k], times[k + 1]), z_next)


@pytest.mark.parametrize("method", ["euler", "heun"])
def test_invert_matches_a_reference_loop(method):
    denoiser = NetworkDenoiser(Shrink(), (1, 3, 3))
    config = SamplerConfig(method=method, num_steps=6)
    x = torch.linspace(-1, 1, 18, dtype=torch.float64).view(2, 1, 3, 3)
    times = config.time_steps().tolist()
    z = x.clone()
    for i in reversed(range(1, len(times) - 1)):  # t_{n-1} up to t_0
        t, t_next = times[i], times[i - 1]
        slope = (z - z / (1 + t**2)) / t
        z_next = z + (t_next - t) * slope
        if method == "heun":
            slope_next = (z_next - z_next / (1 + t_next**2)) / t_next
            z_next = z + (t_next - t) * 0.5 * (slope + slope_next)
        z = z_next
    calls = []
    out = invert(denoiser, x, config, progress=calls.append)
    assert torch.allclose(out, z, rtol=1e-12, atol=1e-12)
    assert calls == [1] * (config.num_steps - 1)
