"""Time, patch-size and Flex-threshold schedules (EDM, Karras et al. 2022; PSPC paper Sec. 4).

Schedules are explicit data (a table of (t, value) rows) so that a run can record exactly
what it used and a user can supply a re-tuned one.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

T_MAX = 80.0
T_MIN = 0.002
RHO = 7.0


def edm_time_steps(num_steps: int = 18, t_min: float = T_MIN, t_max: float = T_MAX, rho: float = RHO) -> torch.Tensor:
    """EDM sampling times t_0 > ... > t_{n-1}, followed by t_n = 0 (float64, length n + 1).

    t_i = (t_max^(1/rho) + i/(n-1) (t_min^(1/rho) - t_max^(1/rho)))^rho.
    """
    if num_steps < 1:
        raise ValueError(f"num_steps must be >= 1, got {num_steps}")
    if not (0 < t_min <= t_max):
        raise ValueError(f"need 0 < t_min <= t_max, got t_min={t_min}, t_max={t_max}")
    i = torch.arange(num_steps, dtype=torch.float64)
    denom = max(num_steps - 1, 1)
    t = (t_max ** (1 / rho) + i / denom * (t_min ** (1 / rho) - t_max ** (1 / rho))) ** rho
    return torch.cat([t, torch.zeros(1, dtype=torch.float64)])


@dataclass(frozen=True)
class Schedule:
    """A value as a function of noise level t, given as a table of (t, value) rows.

    interpolation:
      "nearest": the value of the row nearest in log t (exact at the tabulated times; used
                 for per-step lists such as the official CIFAR-10 ones);
      "log-linear-odd": linear in log t between rows, floored to an odd integer, constant
                 outside the table (used for knot lists such as the paper's 64x64 one).
    """

    times: tuple[float, ...]
    values: tuple[float, ...]
    interpolation: str = "nearest"
    name: str = "custom"

    def __post_init__(self):
        if len(self.times) != len(self.values) or not self.times:
            raise ValueError("a schedule needs one value per time and at least one row")
        if any(t <= 0 or not math.isfinite(t) for t in self.times):
            raise ValueError(f"schedule times must be finite and > 0, got {self.times}")
        if self.interpolation not in ("nearest", "log-linear-odd"):
            raise ValueError(f"unknown interpolation {self.interpolation!r}")
        order = sorted(range(len(self.times)), key=lambda k: self.times[k])
        object.__setattr__(self, "times", tuple(float(self.times[k]) for k in order))
        object.__setattr__(self, "values", tuple(self.values[k] for k in order))

    def __call__(self, t: float) -> float:
        t = float(t)
        if not t > 0:
            raise ValueError(f"schedules are defined for t > 0, got t={t}")
        log_t = math.log(t)
        logs = [math.log(x) for x in self.times]
        if self.interpolation == "nearest":
            k = min(range(len(logs)), key=lambda j: (abs(logs[j] - log_t), -j))
            return self.values[k]
        if log_t <= logs[0]:
            return self.values[0]
        if log_t >= logs[-1]:
            return self.values[-1]
        k = max(j for j in range(len(logs)) if logs[j] <= log_t)
        frac = (log_t - logs[k]) / (logs[k + 1] - logs[k])
        value = self.values[k] + frac * (self.values[k + 1] - self.values[k])
        odd = int(math.floor(value))
        return odd if odd % 2 == 1 else odd - 1

    def describe(self) -> dict:
        return {"name": self.name, "times": list(self.times), "values": list(self.values), "interpolation": self.interpolation}


# Official CIFAR-10 lists over the 18 EDM steps (high t to low), from the paper's code release.
CIFAR10_PATCH_SIZES = (32, 32, 32, 32, 32, 32, 32, 23, 15, 11, 7, 5, 3, 3, 3, 3, 3, 3)
CIFAR10_FLEX_LAMBDAS = (1, 1, 1, 1, 1, 1, 1, 0.7, 0.7, 0.5, 0.4, 0.4, 0.4, 0.4, 0.3, 0.3, 0.3, 0.3)
# Paper's knots for 64x64 (FFHQ; AFHQ uses 15 at t = 3).
FFHQ64_PATCH_KNOTS = ((0.1, 3), (1.0, 9), (3.0, 27), (10.0, 43), (30.0, 64))


def _odd_at_least_3(value: float, cap: int) -> int:
    """Nearest odd integer, clipped to [3, cap] (cap itself allowed: it means the whole side)."""
    odd = 2 * int(math.floor(value / 2)) + 1
    if abs(value - (odd + 2)) < abs(value - odd):
        odd += 2
    return int(min(max(odd, 3), cap))


def default_patch_schedule(height: int, width: int) -> Schedule:
    """Paper defaults for s(t), with a documented rule for other resolutions.

    32x32: the official CIFAR-10 per-step list. 64x64: the paper's FFHQ knots.
    Any other resolution R = min(H, W): the CIFAR-10 list with every size scaled by R / 32
    and rounded to the nearest odd integer in [3, R]; the whole-image entries stay whole
    (R, and a square of side min(H, W) on non-square images). For Fashion-MNIST (R = 28)
    this gives 28, 21, 13, 9, 7, 5, 3 down the schedule.
    """
    side = min(height, width)
    cifar_times = tuple(edm_time_steps(18)[:-1].tolist())
    if side == 64:
        times, sizes = zip(*FFHQ64_PATCH_KNOTS)
        return Schedule(times, sizes, "log-linear-odd", name="paper-64x64")
    if side == 32:
        return Schedule(cifar_times, CIFAR10_PATCH_SIZES, "nearest", name="paper-cifar10-18")
    sizes = tuple(side if s == 32 else _odd_at_least_3(s * side / 32, side) for s in CIFAR10_PATCH_SIZES)
    return Schedule(cifar_times, sizes, "nearest", name=f"cifar10-scaled-to-{side}")


def default_flex_schedule() -> Schedule:
    """lambda(t) for PSPC-Flex: the official CIFAR-10 per-step list (a fraction, so resolution-free)."""
    cifar_times = tuple(edm_time_steps(18)[:-1].tolist())
    return Schedule(cifar_times, CIFAR10_FLEX_LAMBDAS, "nearest", name="paper-cifar10-18")
