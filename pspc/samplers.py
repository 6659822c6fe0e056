"""Probability-flow ODE samplers on the EDM schedule (Karras et al. 2022, Algorithms 1-2).

dz/dt = (z - D(z, t)) / t. Public primitives, k-diffusion style: `denoise_step` (one
denoiser call), `sampler_step` (one Euler or Heun update) and THE one loop, `sample`,
which takes the schedule as an argument, so sampling, resuming from step k and replaying
a network's trajectory are the same loop. `invert` runs the same update backwards.

A per-step callback receives (step, t, z, D, weights) so a provenance recorder can plug
in; weights are computed only when a WeightRequest is given (and the denoiser can give
them), so an unused recorder costs nothing.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Protocol, Sequence

import torch

from pspc.denoisers import Denoiser, PSPCDenoiser
from pspc.errors import InputError
from pspc.posterior.weights import WeightRequest
from pspc.schedules import RHO, T_MAX, T_MIN, edm_time_steps

SAMPLER_METHODS = ("euler", "heun")


class StepCallback(Protocol):
    """callback(step, t, z, denoised, weights): each step's state, before `sample` advances it."""

    def __call__(self, step: int, t: float, z: torch.Tensor, denoised: torch.Tensor, weights: list | None) -> None: ...


@dataclass(frozen=True)
class SamplerConfig:
    """Sampler settings with the paper's defaults (EDM: 18 steps, Euler)."""

    method: str = "euler"
    num_steps: int = 18
    t_min: float = T_MIN
    t_max: float = T_MAX
    rho: float = RHO

    def __post_init__(self):
        if self.method not in SAMPLER_METHODS:
            raise InputError(f"unknown sampler {self.method!r}: choose 'euler' or 'heun'")

    def time_steps(self) -> torch.Tensor:
        """t_0 = t_max > ... > t_{n-1} = t_min, then t_n = 0 (`pspc.schedules.edm_time_steps`)."""
        return edm_time_steps(self.num_steps, self.t_min, self.t_max, self.rho)


def initial_noise(num_samples: int, image_shape, seed: int, t_max: float = T_MAX, device="cpu") -> torch.Tensor:
    """z_0 = t_max * eps, eps drawn on the CPU from `seed` (identical on every device).

    Sample i of a run with seed s uses the generator seeded with s + i, so one sample can be
    regenerated alone."""
    eps = torch.stack([torch.randn(tuple(image_shape), generator=torch.Generator().manual_seed(seed + i))
                       for i in range(num_samples)])
    return (t_max * eps).to(device)


def denoise_step(denoiser: Denoiser, z: torch.Tensor, t: float,
                 request: WeightRequest | None = None) -> tuple[torch.Tensor, list | None]:
    """(D(z, t), posterior weights) at one noise level t for the whole batch.

    The weights (a list of (batch indices, PosteriorWeights)) come only when `request` is
    given and the denoiser is a PSPC one; otherwise they are None."""
    t_batch = torch.full((z.shape[0],), t, dtype=torch.float64, device=z.device)
    if request is not None and isinstance(denoiser, PSPCDenoiser):
        return denoiser.posterior(z, t_batch, request)
    return denoiser(z, t_batch), None


def sampler_step(denoiser: Denoiser, method: str, z: torch.Tensor, denoised: torch.Tensor, t: float,
                 t_next: float) -> torch.Tensor:
    """z at t_next from z at t and denoised = D(z, t) (EDM Algorithm 1, one iteration).

    Euler: z' = z + (t_next - t) (z - D(z, t)) / t, so t_next = 0 gives D(z, t) exactly.
    Heun ("heun", only when t_next > 0) averages that slope with the slope at z'; the
    denoiser is called once more there. t_next > t integrates upwards (`invert`)."""
    slope = (z - denoised) / t
    z_next = z + (t_next - t) * slope  # Euler step.
    if method == "heun" and t_next > 0:  # Apply 2nd order correction.
        slope_next = (z_next - denoiser(z_next, torch.full((z.shape[0],), t_next, dtype=torch.float64))) / t_next
        z_next = z + (t_next - t) * 0.5 * (slope + slope_next)
    return z_next


def sample(
    denoiser: Denoiser,
    z: torch.Tensor,
    config: SamplerConfig = SamplerConfig(),
    callback: StepCallback | None = None,
    request: WeightRequest | None = None,
    progress: Callable[[int], None] | None = None,
    *,
    times: Sequence[float] | torch.Tensor | None = None,
    start: int = 0,
) -> torch.Tensor:
    """Integrate the PF-ODE from z at times[start] down to times[-1] (0); returns the final z.

    times: the schedule t_0 > ... > t_n = 0 (default config.time_steps()); z is the state
    at step `start`, so resuming a run from step k is `sample(..., start=k)` with the
    state the run had there, and gives the same numbers as the uninterrupted run.
    callback(step, t, z, D, weights) sees each step's state before it is advanced (replaying
    a network's trajectory: pass the network as the denoiser and explain z in the callback).
    progress(1) is called after each step.
    """
    times = (config.time_steps() if times is None else torch.as_tensor(times, dtype=torch.float64)).tolist()
    if not 0 <= start < len(times):
        raise InputError(f"start must be a step in [0, {len(times) - 1}], got {start}")
    z = z.to(denoiser.device)
    for step in range(start, len(times) - 1):
        t, t_next = times[step], times[step + 1]
        denoised, weights = denoise_step(denoiser, z, t, request)
        if callback is not None:
            callback(step, t, z, denoised, weights)
        z = sampler_step(denoiser, config.method, z, denoised, t, t_next)
        if progress is not None:
            progress(1)
    return z


def invert(denoiser: Denoiser, x: torch.Tensor, config: SamplerConfig = SamplerConfig(),
           progress: Callable[[int], None] | None = None) -> torch.Tensor:
    """The PF-ODE run backwards: x [B, C, H, W] as the state at t_min = t_{n-1}, integrated up
    to t_0 = t_max through config's time steps in reverse with `sampler_step` (Euler, or
    Heun's trapezoidal correction). Returns z at t_max; progress(1) after each step."""
    times = config.time_steps().tolist()
    z = x.to(denoiser.device)
    for i in range(len(times) - 2, 0, -1):
        t, t_next = times[i], times[i - 1]  # t < t_next: upwards
        denoised, _ = denoise_step(denoiser, z, t)
        z = sampler_step(denoiser, config.method, z, denoised, t, t_next)
        if progress is not None:
            progress(1)
    return z
