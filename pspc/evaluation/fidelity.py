"""How closely training-free denoisers reproduce a network (paper Sec. 5; Figs. 2, 3, 4, 7).

The network's output net(z, t) is the reference at every noisy state z:
- forward process: z = x + t eps for held-out images x (one eps per image, shared by every
  t, so the curves over t differ only by t);
- reverse process: the states z_{t_i} of the network's own PF-ODE trajectories from seeded
  initial noise (EDM schedule; Euler by default, as the paper's sample comparison).

`denoiser_errors` gives, per noise level and state, the MSE (mean over pixels) between a
denoiser's output and the network's; `compare_denoisers` does it for several denoisers and
returns `FidelityCurves` (a table and the data of the MSE-vs-t curves, Figs. 2, 4, 7).

Eq. 8 from the network (`pspc.posterior.sensitivity.SensitivityMaps`, G(t) [H, W, H, W] per
noise level) feeds PSPC-Flex masks (`pspc.denoisers.network_flex`, Eq. 12) and the
gradient-concentration table here (`concentration_table`, Fig. 3): for each output pixel the
side of the smallest centred square holding a fraction of G, averaged over output pixels.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable, Mapping, Sequence

import numpy as np
import torch

from pspc.data.training_set import TrainingSet
from pspc.denoisers import Denoiser, NetworkDenoiser
from pspc.errors import InputError
from pspc.samplers import SamplerConfig, initial_noise, sample
from pspc.schedules import check_noise_levels

PROCESSES = ("forward", "reverse")
DEFAULT_FRACTIONS = (0.5, 0.75, 0.95)


class FidelityError(InputError):
    """Bad input to a fidelity comparison (shapes, noise levels, counts); says which."""


# ---------------------------------------------------------------------------------------
# Noisy states with the network's output as reference
# ---------------------------------------------------------------------------------------
@dataclass
class NoiseLevelStates:
    """States z [B, C, H, W] at one noise level t, and the network's output there."""

    t: float
    z: torch.Tensor
    reference: torch.Tensor
    step: int | None = None  # sampling step (reverse process and schedule tuning)


@dataclass
class ProcessStates:
    """The states of one process at every evaluated noise level, with how they were drawn."""

    process: str
    levels: list[NoiseLevelStates]
    record: dict
    final: torch.Tensor | None = None  # reverse process: the network's samples (clipped to [-1, 1])

    @property
    def times(self) -> list[float]:
        return [level.t for level in self.levels]

    @property
    def count(self) -> int:
        return self.levels[0].z.shape[0]


def _batched(function: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], z: torch.Tensor, t: float,
             batch_size: int, device) -> torch.Tensor:
    """function(z, t) over batches of z on `device`, gathered on the CPU as float32."""
    outputs = []
    for start in range(0, z.shape[0], batch_size):
        chunk = z[start:start + batch_size].to(device)
        t_batch = torch.full((chunk.shape[0],), float(t), dtype=torch.float64, device=device)
        with torch.no_grad():
            outputs.append(function(chunk, t_batch).float().cpu())
    return torch.cat(outputs)


def _check_network(network: NetworkDenoiser, images: TrainingSet | None = None) -> None:
    if not isinstance(network, Denoiser):
        raise FidelityError(f"network must be a Denoiser (e.g. pspc.networks.load_network(...)), got {type(network).__name__}")
    if images is not None and tuple(images.image_shape) != tuple(network.image_shape):
        c, h, w = images.image_shape
        nc, nh, nw = network.image_shape
        raise FidelityError(f"the images have {c} channel(s) at {h}x{w}, the network takes {nc} at {nh}x{nw}")


def forward_process_states(network: NetworkDenoiser, images: TrainingSet, times: Sequence[float],
                           num_images: int, seed: int = 0, batch_size: int = 64) -> ProcessStates:
    """z = x + t eps for `num_images` images of `images` (held-out ones: the paper's forward
    process), picked without replacement by `seed`; one eps per image, shared by every t."""
    _check_network(network, images)
    times = check_noise_levels(times, FidelityError)
    if not 1 <= num_images <= len(images):
        raise FidelityError(f"num_images must be in [1, {len(images)}] (the images given), got {num_images}")
    generator = torch.Generator().manual_seed(seed)
    picks = torch.randperm(len(images), generator=generator)[:num_images]
    x = images.as_float()[picks]
    eps = torch.randn(x.shape, generator=generator)
    levels = []
    for t in times:
        z = x + t * eps
        levels.append(NoiseLevelStates(t, z, _batched(network, z, t, batch_size, network.device)))
    record = {"process": "forward", "images": images.describe(), "indices": picks.tolist(), "seed": seed,
              "noise": "eps ~ N(0, I) drawn once per image from torch.Generator(seed) after the picks; z = x + t eps",
              "times": times}
    return ProcessStates("forward", levels, record)


def reverse_process_states(network: NetworkDenoiser, num_samples: int, seed: int = 0,
                           config: SamplerConfig = SamplerConfig()) -> ProcessStates:
    """The network's PF-ODE trajectories from `initial_noise(num_samples, shape, seed)`:
    the state z_{t_i} and net(z_{t_i}, t_i) at every step i of the schedule."""
    _check_network(network)
    if num_samples < 1:
        raise FidelityError(f"num_samples must be >= 1, got {num_samples}")
    levels: list[NoiseLevelStates] = []

    def capture(step, t, z, denoised, weights):
        levels.append(NoiseLevelStates(float(t), z.detach().float().cpu().clone(),
                                       denoised.detach().float().cpu().clone(), step))

    z0 = initial_noise(num_samples, network.image_shape, seed, config.t_max)
    with torch.no_grad():
        final = sample(network, z0, config, callback=capture)
    record = {"process": "reverse", "seed": seed, "num_samples": num_samples,
              "noise": "pspc.samplers.initial_noise: sample i from torch.Generator(seed + i), times t_max",
              "sampler": {"method": config.method, "num_steps": config.num_steps, "t_min": config.t_min,
                          "t_max": config.t_max, "rho": config.rho},
              "times": [level.t for level in levels]}
    return ProcessStates("reverse", levels, record, final.float().cpu().clamp(-1, 1))


# ---------------------------------------------------------------------------------------
# Errors against the network
# ---------------------------------------------------------------------------------------
def denoiser_errors(denoiser: Denoiser, states: ProcessStates, batch_size: int = 64,
                    progress: Callable[[int], None] | None = None) -> np.ndarray:
    """[T, B] MSE between D(z, t) and the network's output, mean over pixels, per level and state."""
    errors = np.empty((len(states.levels), states.count))
    for k, level in enumerate(states.levels):
        out = _batched(denoiser, level.z, level.t, batch_size, denoiser.device)
        errors[k] = (out.double() - level.reference.double()).square().flatten(1).mean(1).numpy()
        if progress is not None:
            progress(1)
    return errors


@dataclass
class FidelityCurves:
    """MSE against the network per denoiser and noise level of one process (Figs. 4, 7)."""

    process: str
    times: list[float]
    names: list[str]
    errors: np.ndarray  # [D, T, B] per-state MSE
    records: dict = field(default_factory=dict)  # denoiser name -> describe()

    @property
    def mse(self) -> np.ndarray:
        """[D, T] mean over states."""
        return self.errors.mean(axis=2)

    @property
    def stderr(self) -> np.ndarray:
        """[D, T] standard error of the mean over states."""
        count = self.errors.shape[2]
        return self.errors.std(axis=2, ddof=1) / math.sqrt(count) if count > 1 else np.zeros(self.errors.shape[:2])

    def ranking(self, k: int) -> list[str]:
        """Denoiser names from closest to the network to farthest at level k."""
        return [self.names[d] for d in np.argsort(self.mse[:, k], kind="stable")]

    def mean_over(self, t_low: float, t_high: float) -> dict[str, float]:
        """Mean MSE over the levels with t_low <= t <= t_high (NaN if none)."""
        chosen = [k for k, t in enumerate(self.times) if t_low <= t <= t_high]
        return {name: float(self.mse[d, chosen].mean()) if chosen else float("nan") for d, name in enumerate(self.names)}

    def table(self) -> str:
        """Text table: one row per noise level, MSE per denoiser, and the closest one."""
        width = max(12, *(len(n) + 2 for n in self.names))
        lines = [f"{self.process} process: MSE against the network (mean over {self.errors.shape[2]} states, "
                 f"mean over pixels)",
                 f"{'t':>9}" + "".join(f"{n:>{width}}" for n in self.names) + "   closest"]
        for k, t in enumerate(self.times):
            row = "".join(f"{self.mse[d, k]:>{width}.3e}" for d in range(len(self.names)))
            lines.append(f"{t:>9.4g}{row}   {self.ranking(k)[0]}")
        return "\n".join(lines)

    def to_dict(self, include_errors: bool = True) -> dict:
        record = {"process": self.process, "times": self.times, "names": self.names, "mse": self.mse.tolist(),
                  "stderr": self.stderr.tolist(), "denoisers": self.records}
        if include_errors:
            record["errors"] = self.errors.tolist()
        return record


def compare_denoisers(denoisers: Mapping[str, Denoiser | Callable[[], Denoiser]], states: Sequence[ProcessStates],
                      batch_size: int = 64, progress: Callable[[int], None] | None = None) -> dict[str, FidelityCurves]:
    """Errors of every denoiser on every process. A denoiser may be given as a factory: it is
    built when its turn comes and dropped after, so only one holds its copy of the data."""
    if not denoisers:
        raise FidelityError("no denoisers to compare")
    errors: dict[str, list[np.ndarray]] = {s.process: [] for s in states}
    records = {}
    for name, make in denoisers.items():
        denoiser = make if isinstance(make, Denoiser) else make()
        records[name] = denoiser.describe()
        for process_states in states:
            errors[process_states.process].append(denoiser_errors(denoiser, process_states, batch_size, progress))
        del denoiser
    return {s.process: FidelityCurves(s.process, s.times, list(denoisers), np.stack(errors[s.process]), records)
            for s in states}


# ---------------------------------------------------------------------------------------
# Gradient concentration (Fig. 3)
# ---------------------------------------------------------------------------------------
def concentration_sides(sensitivity: torch.Tensor, fractions: Sequence[float] = DEFAULT_FRACTIONS) -> torch.Tensor:
    """[F, H, W]: for each output pixel (y, x), the side 2r + 1 of the smallest square centred
    on it (clipped to the image) holding at least fraction f of sum G[y, x]. A side can exceed
    the image side (a corner pixel needs 2H - 1 to hold everything). NaN where G[y, x] is 0."""
    g = torch.as_tensor(sensitivity, dtype=torch.float64)
    if g.ndim != 4 or g.shape[:2] != g.shape[2:]:
        raise FidelityError(f"sensitivity must be [H, W, H, W], got {tuple(g.shape)}")
    if not torch.isfinite(g).all() or (g < 0).any():
        raise FidelityError("sensitivity must be finite and non-negative")
    fractions = [float(f) for f in fractions]
    if not fractions or any(not 0 < f <= 1 for f in fractions):
        raise FidelityError(f"fractions must be in (0, 1], got {fractions}")
    height, width = g.shape[:2]
    cumulative = _ring_cumulative(g)  # [HW, R+1]
    total = cumulative[:, -1:]
    sides = []
    for f in fractions:
        # first radius whose square holds f of the total (1e-12 relative slack for rounding)
        radius = (cumulative < f * total * (1 - 1e-12)).sum(1).double()
        side = 2 * radius + 1
        side[total[:, 0] <= 0] = math.nan
        sides.append(side.view(height, width))
    return torch.stack(sides)


def _ring_cumulative(g: torch.Tensor) -> torch.Tensor:
    """[HW, R+1]: the sum of G[y, x] over input pixels at Chebyshev distance <= r from (y, x)."""
    height, width = g.shape[:2]
    ys, xs = torch.arange(height), torch.arange(width)
    dy = (ys[:, None] - ys[None, :]).abs()  # [H, H']
    dx = (xs[:, None] - xs[None, :]).abs()  # [W, W']
    ring = torch.maximum(dy[:, None, :, None], dx[None, :, None, :])  # [H, W, H', W']
    rings = max(height, width)
    flat = g.reshape(height * width, height * width)
    by_ring = torch.zeros(height * width, rings, dtype=torch.float64).scatter_add_(
        1, ring.reshape(height * width, height * width), flat)
    return by_ring.cumsum(1)


def mass_within(sensitivity: torch.Tensor, side: int) -> torch.Tensor:
    """[H, W]: the fraction of G[y, x] inside the side x side square centred on (y, x) (odd side)."""
    if side < 1 or side % 2 == 0:
        raise FidelityError(f"side must be a positive odd integer, got {side}")
    g = torch.as_tensor(sensitivity, dtype=torch.float64)
    height, width = g.shape[:2]
    cumulative = _ring_cumulative(g)
    inside = cumulative[:, min(side // 2, cumulative.shape[1] - 1)]
    return (inside / cumulative[:, -1]).view(height, width)


@dataclass
class ConcentrationTable:
    """Per noise level: mean and median over output pixels of the side holding each fraction."""

    times: list[float]
    fractions: list[float]
    mean_side: np.ndarray  # [T, F]
    median_side: np.ndarray  # [T, F]
    within: dict[int, list[float]]  # square side -> mean fraction of G inside it, per t
    record: dict = field(default_factory=dict)

    def table(self) -> str:
        head = "".join(f"{f'{round(100 * f)}%':>13}" for f in self.fractions)
        within = "".join(f"{f'in {s}x{s}':>10}" for s in self.within)
        lines = ["gradient concentration: side of the centred square holding a fraction of G(x, y, t) "
                 "(mean over output pixels; median in brackets)",
                 f"{'t':>9}{head}{within}"]
        for k, t in enumerate(self.times):
            cells = "".join(f"{f'{self.mean_side[k, j]:.1f} ({self.median_side[k, j]:g})':>13}"
                            for j in range(len(self.fractions)))
            shares = "".join(f"{self.within[s][k]:>10.2f}" for s in self.within)
            lines.append(f"{t:>9.4g}{cells}{shares}")
        return "\n".join(lines)

    def to_dict(self) -> dict:
        return {"times": self.times, "fractions": self.fractions, "mean_side": self.mean_side.tolist(),
                "median_side": self.median_side.tolist(), "within": {str(s): v for s, v in self.within.items()},
                "record": self.record}


def concentration_table(sensitivity: Callable[[float], torch.Tensor], times: Sequence[float],
                        fractions: Sequence[float] = DEFAULT_FRACTIONS, within: Sequence[int] = (15,)) -> ConcentrationTable:
    """Fig. 3 as a table over noise levels, from a sensitivity source t -> G(t)."""
    times = check_noise_levels(times, FidelityError)
    means, medians, shares = [], [], {int(s): [] for s in within}
    for t in times:
        g = sensitivity(t)
        sides = concentration_sides(g, fractions).flatten(1).numpy()  # [F, HW]
        means.append(np.nanmean(sides, axis=1))
        medians.append(np.nanmedian(sides, axis=1))
        for s in shares:
            shares[s].append(float(mass_within(g, s).nanmean()))
    describe = getattr(sensitivity, "describe", None)
    return ConcentrationTable(times, [float(f) for f in fractions], np.array(means), np.array(medians), shares,
                              {"sensitivity": describe() if describe else "custom"})
