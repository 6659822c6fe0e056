"""Gradient sensitivity maps G(t) [H, W, H, W] for PSPC-Flex (Eq. 8).

G[y, x, y', x'] = E_z[ sum_c |d D(z, t)[c, y, x] / d z[c', y', x']| summed over c' ],
the mean over forward-process samples z = x + t eps of how much output pixel (y, x)
depends on input pixel (y', x'). `network_sensitivity` computes it from a network by
autograd and `SensitivityMaps` keeps it per noise level (t -> G(t), the input of
PSPC-Flex's masks, Eq. 12). Until a network is available, `isotropic_sensitivity` is a
stand-in: a Gaussian falloff whose width follows the paper's Fig. 3 (the square holding 50%
of G has side ~3 at t = 0.03 and ~13 at t = 30, for 32x32 images), scaled with resolution.
"""

from __future__ import annotations

import math
from typing import Callable, Mapping, Sequence

import torch

from pspc.data.training_set import TrainingSet, to_model_range
from pspc.errors import InputError
from pspc.schedules import check_noise_levels

# Fig. 3: side of the square around an output pixel that holds half of G.
HALF_MASS_SIDE = ((0.03, 3.0), (30.0, 13.0))
# For an isotropic Gaussian, a centred square of side a holds erf(a / (2 sqrt(2) rho))^2;
# it holds one half when a = 2 sqrt(2) * 0.7329 * rho.
_SIDE_PER_RHO = 2 * math.sqrt(2) * 0.7329


class SensitivityError(InputError):
    """Bad input to a sensitivity map: shapes, noise levels, counts, no network or maps."""


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


# ---------------------------------------------------------------------------------------
# G(t) per noise level from a network, computed on first use
# ---------------------------------------------------------------------------------------
def _check_network(network, images: TrainingSet | None) -> None:
    """A denoiser (module with image_shape and describe()) taking the images' shape. Checked by
    its interface: pspc.denoisers imports pspc.posterior, so this module cannot import it."""
    if not (isinstance(network, torch.nn.Module) and hasattr(network, "image_shape")
            and callable(getattr(network, "describe", None))):
        raise SensitivityError(f"network must be a Denoiser (e.g. pspc.networks.load_network(...)), "
                               f"got {type(network).__name__}")
    if images is not None and tuple(images.image_shape) != tuple(network.image_shape):
        c, h, w = images.image_shape
        nc, nh, nw = network.image_shape
        raise SensitivityError(f"the images have {c} channel(s) at {h}x{w}, the network takes {nc} at {nh}x{nw}")


class SensitivityMaps:
    """t -> G(t) [H, W, H, W] (float64) from a network by Eq. 8, computed on first use at
    each noise level (mean over `num_samples` forward-process draws from `images`, seeded
    by `seed`) and kept. `maps` supplies precomputed {t: G} (used as given).

    A full Jacobian costs H W backward passes per draw, so `grid` can limit the noise levels
    where G is computed: any t then uses G at the grid level nearest in log t."""

    def __init__(self, network: torch.nn.Module | None, images: TrainingSet | None, num_samples: int = 16,
                 seed: int = 0, maps: Mapping[float, torch.Tensor] | None = None, name: str = "network-eq8",
                 grid: Sequence[float] | None = None):
        if network is None and not maps:
            raise SensitivityError("SensitivityMaps needs a network or precomputed maps")
        if network is not None and images is None:
            raise SensitivityError("SensitivityMaps needs the images to draw forward-process samples from")
        if network is not None:
            _check_network(network, images)
        if num_samples < 1:
            raise SensitivityError(f"num_samples must be >= 1, got {num_samples}")
        self.network, self.images, self.num_samples, self.seed, self.name = network, images, num_samples, seed, name
        self.grid = sorted(check_noise_levels(grid, SensitivityError)) if grid is not None else None
        self.maps: dict[float, torch.Tensor] = {}
        for t, g in (maps or {}).items():
            self.maps[float(t)] = self._checked(torch.as_tensor(g, dtype=torch.float64), float(t))

    def _checked(self, g: torch.Tensor, t: float) -> torch.Tensor:
        if g.ndim != 4 or g.shape[:2] != g.shape[2:]:
            raise SensitivityError(f"G at t={t:g} must be [H, W, H, W], got {tuple(g.shape)}")
        if not torch.isfinite(g).all() or (g < 0).any():
            raise SensitivityError(f"G at t={t:g} must be finite and non-negative")
        return g

    def _lookup(self, t: float) -> torch.Tensor | None:
        for known, g in self.maps.items():
            if abs(known - t) <= 1e-9 * max(abs(t), 1e-300):
                return g
        return None

    def level(self, t: float) -> float:
        """The noise level whose G is used at t: t itself, or the nearest grid level in log t."""
        t = float(t)
        if self.grid is None:
            return t
        return min(self.grid, key=lambda g: (abs(math.log(g) - math.log(t)), g))

    def __call__(self, t: float) -> torch.Tensor:
        t = self.level(t)
        found = self._lookup(t)
        if found is not None:
            return found
        if self.network is None:
            raise SensitivityError(f"no sensitivity map at t={t:g} (precomputed at {sorted(self.maps)})")
        g = network_sensitivity(self.network, self.images, t, self.num_samples, self.seed)
        self.maps[t] = self._checked(g.to(torch.float64), t)
        return self.maps[t]

    def describe(self) -> dict:
        record = {"kind": self.name, "equation": "Eq. 8: mean over z = x + t eps of sum_c |dD(z,t)[c,y,x] / dz|",
                  "num_samples": self.num_samples, "seed": self.seed, "computed_at": sorted(self.maps),
                  "grid": self.grid, "grid_rule": "G at the grid level nearest in log t" if self.grid else None}
        if self.network is not None:
            record["network"] = self.network.describe()
            record["images"] = self.images.describe()
        return record
