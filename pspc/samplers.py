"""Probability-flow ODE samplers on the EDM schedule (Karras et al. 2022, Algorithms 1-2).

dz/dt = (z - D(z, t)) / t. A per-step callback receives (step, t, z, D, weights) so a
provenance recorder can plug in; weights are computed only when a WeightRequest is given
(and the denoiser can give them), so an unused recorder costs nothing.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Protocol

import torch

from pspc.denoisers import Denoiser, PSPCDenoiser
from pspc.posterior.weights import WeightRequest
from pspc.schedules import RHO, T_MAX, T_MIN, edm_time_steps


class StepCallback(Protocol):
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
        if self.method not in ("euler", "heun"):
            raise ValueError(f"unknown sampler {self.method!r}: choose 'euler' or 'heun'")

    def time_steps(self) -> torch.Tensor:
        return edm_time_steps(self.num_steps, self.t_min, self.t_max, self.rho)


def initial_noise(num_samples: int, image_shape, seed: int, t_max: float = T_MAX, device="cpu") -> torch.Tensor:
    """z_0 = t_max * eps, eps drawn on the CPU from `seed` (identical on every device).

    Sample i of a run with seed s uses the generator seeded with s + i, so one sample can be
    regenerated alone."""
    eps = torch.stack([torch.randn(tuple(image_shape), generator=torch.Generator().manual_seed(seed + i))
                       for i in range(num_samples)])
    return (t_max * eps).to(device)


def _denoise(denoiser: Denoiser, z: torch.Tensor, t: float, request: WeightRequest | None):
    t_batch = torch.full((z.shape[0],), t, dtype=torch.float64, device=z.device)
    if request is not None and isinstance(denoiser, PSPCDenoiser):
        return denoiser.posterior(z, t_batch, request)
    return denoiser(z, t_batch), None


def sample(
    denoiser: Denoiser,
    z: torch.Tensor,
    config: SamplerConfig = SamplerConfig(),
    callback: StepCallback | None = None,
    request: WeightRequest | None = None,
    progress: Callable[[int], None] | None = None,
) -> torch.Tensor:
    """Integrate the PF-ODE from z at t_0 = t_max down to 0; returns the final sample.

    Euler: z' = z + (t_next - t) (z - D(z, t)) / t; the last step (t_next = 0) returns D(z, t).
    Heun adds the trapezoidal correction on every step except the last.
    callback(step, t, z, D, weights) sees each step's state before it is advanced.
    """
    times = config.time_steps().tolist()
    z = z.to(denoiser.device)
    for step, (t, t_next) in enumerate(zip(times[:-1], times[1:])):
        denoised, weights = _denoise(denoiser, z, t, request)
        if callback is not None:
            callback(step, t, z, denoised, weights)
        slope = (z - denoised) / t
        z_next = z + (t_next - t) * slope  # Euler step.
        if config.method == "heun" and t_next > 0:  # Apply 2nd order correction.
            slope_next = (z_next - denoiser(z_next, torch.full((z.shape[0],), t_next, dtype=torch.float64))) / t_next
            z_next = z + (t_next - t) * 0.5 * (slope + slope_next)
        z = z_next
        if progress is not None:
            progress(1)
    return z
