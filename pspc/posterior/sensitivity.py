"""Gradient sensitivity maps G(t) [H, W, H, W] for PSPC-Flex (Eq. 8).

G[y, x, y', x'] = E_z[ sum_c |d D(z, t)[c, y, x] / d z[c', y', x']| summed over c' ],
the mean over forward-process samples z = x + t eps of how much output pixel (y, x)
depends on input pixel (y', x'). `network_sensitivity` computes it from a network by
autograd. Until a network is available, `isotropic_sensitivity` is a stand-in: a
Gaussian falloff whose width follows the paper's Fig. 3 (the square holding 50% of G has
side ~3 at t = 0.03 and ~13 at t = 30, for 32x32 images), scaled with resolution.
"""

from __future__ import annotations

import math
from typing import Callable

import torch

from pspc.data.training_set import TrainingSet, to_model_range

# Fig. 3: side of the square around an output pixel that holds half of G.
HALF_MASS_SIDE = ((0.03, 3.0), (30.0, 13.0))
# For an isotropic Gaussian, a centred square of side a holds erf(a / (2 sqrt(2) rho))^2;
# it holds one half when a = 2 sqrt(2) * 0.7329 * rho.
_SIDE_PER_RHO = 2 * math.sqrt(2) * 0.7329


def isotropic_width(t: float, side: int = 32) -> float:
    """Gaussian width rho(t) in pixels, log-linear in t through the Fig. 3 values."""
    (t0, a0), (t1, a1) = HALF_MASS_SIDE
    frac = (math.log(t) - math.log(t0)) / (math.log(t1) - math.log(t0))
    half_mass_side = math.exp(math.log(a0) + frac * (math.log(a1) - math.log(a0)))
    return half_mass_side / _SIDE_PER_RHO * side / 32


def isotropic_sensitivity(height: int, width: int) -> Callable[[float], torch.Tensor]:
    """t -> G [H, W, H, W], G = exp(-dist^2 / (2 rho(t)^2)) between output and input pixel."""

    def at(t: float) -> torch.Tensor:
        rho = isotropic_width(t, min(height, width))
        ys = torch.arange(height, dtype=torch.float64)
        xs = torch.arange(width, dtype=torch.float64)
        dy = (ys[:, None] - ys[None, :]).square()  # [H, H']
        dx = (xs[:, None] - xs[None, :]).square()  # [W, W']
        distance = dy[:, None, :, None] + dx[None, :, None, :]
        return torch.exp(-distance / (2 * rho * rho))

    return at


def network_sensitivity(denoiser: torch.nn.Module, training_set: TrainingSet, t: float,
                        num_samples: int = 16, seed: int = 0, rows_per_batch: int = 196) -> torch.Tensor:
    """Eq. 8 for a differentiable denoiser D(z, t): mean over num_samples forward-process
    draws z = x + t eps (x from the training set) of the summed absolute Jacobian.

    Jacobian rows come from one backward pass over a batch of copies of z, copy r selecting
    output r (the network treats batch members independently): 7x faster on a CPU than
    torch.autograd.functional.jacobian(vectorize=True), the same numbers."""
    net = getattr(denoiser, "net", denoiser)  # NetworkDenoiser runs without grad; use its module
    c, h, w = training_set.image_shape
    generator = torch.Generator().manual_seed(seed)
    picks = torch.randint(len(training_set), (num_samples,), generator=generator)
    device = next((p.device for p in net.parameters()), torch.device("cpu"))
    total = torch.zeros(h, w, h, w, dtype=torch.float64)
    outputs = c * h * w
    for index in picks.tolist():
        x = to_model_range(training_set.images[index])
        z = (x + t * torch.randn(x.shape, generator=generator)).to(device)
        for start in range(0, outputs, rows_per_batch):
            rows = torch.arange(start, min(start + rows_per_batch, outputs), device=device)
            copies = z.expand(len(rows), c, h, w).clone().requires_grad_(True)
            with torch.enable_grad():
                out = net(copies, torch.full((len(rows),), float(t), device=device)).reshape(len(rows), outputs)
                (grad,) = torch.autograd.grad(out.gather(1, rows[:, None]).sum(), copies)
            # grad[r] = d out[row r] / dz  ->  [C_out, H, W, C_in, H, W] rows, summed over both channel axes
            jacobian_rows = grad.detach().abs().double().cpu().reshape(len(rows), c, h, w).sum(1)
            flat = total.view(h * w, h, w)
            flat.index_add_(0, (rows % (h * w)).cpu(), jacobian_rows)
    return total / num_samples
