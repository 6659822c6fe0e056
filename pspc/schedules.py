"""Time, patch-size and Flex-threshold schedules (EDM, Karras et al. 2022; PSPC paper Sec. 4).

Schedules are explicit data (a table of (t, value) rows) so that a run can record exactly
what it used and a user can supply a re-tuned one.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import torch

from pspc.errors import InputError

T_MAX = 80.0
T_MIN = 0.002
RHO = 7.0

# The range of noise levels the engine accepts. The PSPC kernels compute logits
# -|z - x|^2 / (2 t^2) in float64: t^2 underflows below ~1e-154 (logits -inf, softmax NaN)
# and far above t_max = 80 every weight is uniform; [1e-6, 1e4] keeps ~150 orders of
# magnitude of margin at the bottom and covers 125 x t_max at the top.
T_VALID_MIN = 1e-6
T_VALID_MAX = 1e4


class ScheduleError(InputError):
    """A schedule (times, table or schedule file) that cannot be used: names the file, if
    any, and the problem."""


def edm_time_steps(num_steps: int = 18, t_min: float = T_MIN, t_max: float = T_MAX, rho: float = RHO) -> torch.Tensor:
    """EDM sampling times t_0 > ... > t_{n-1}, followed by t_n = 0 (float64, length n + 1).

    t_i = (t_max^(1/rho) + i/(n-1) (t_min^(1/rho) - t_max^(1/rho)))^rho (EDM Eq. 5).
    """
    if num_steps < 1:
        raise ScheduleError(f"num_steps must be >= 1, got {num_steps}")
    if not (0 < t_min <= t_max):
        raise ScheduleError(f"need 0 < t_min <= t_max, got t_min={t_min}, t_max={t_max}")
    i = torch.arange(num_steps, dtype=torch.float64)
    denom = max(num_steps - 1, 1)
    t = (t_max ** (1 / rho) + i / denom * (t_min ** (1 / rho) - t_max ** (1 / rho))) ** rho
    return torch.cat([t, torch.zeros(1, dtype=torch.float64)])


def check_noise_levels(times: Sequence[float], error: type[InputError] = ScheduleError) -> list[float]:
    """`times` as floats: at least one, each finite and in [T_VALID_MIN, T_VALID_MAX];
    otherwise `error` says which."""
    times = [float(t) for t in times]
    if not times:
        raise error("need at least one noise level")
    bad = [t for t in times if not (math.isfinite(t) and t > 0)]
    if bad:
        raise error(f"noise levels must be finite and > 0, got {bad}")
    bad = [t for t in times if not T_VALID_MIN <= t <= T_VALID_MAX]
    if bad:
        raise error(f"noise levels must be in [{T_VALID_MIN:g}, {T_VALID_MAX:g}], got {bad}")
    return times


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
            raise ScheduleError("a schedule needs one value per time and at least one row")
        if any(t <= 0 or not math.isfinite(t) for t in self.times):
            raise ScheduleError(f"schedule times must be finite and > 0, got {self.times}")
        if self.interpolation not in ("nearest", "log-linear-odd"):
            raise ScheduleError(f"unknown interpolation {self.interpolation!r}")
        order = sorted(range(len(self.times)), key=lambda k: self.times[k])
        object.__setattr__(self, "times", tuple(float(self.times[k]) for k in order))
        object.__setattr__(self, "values", tuple(self.values[k] for k in order))

    def __call__(self, t: float) -> float:
        t = float(t)
        if not t > 0:
            raise ScheduleError(f"schedules are defined for t > 0, got t={t}")
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

    def save(self, path: str | os.PathLike, quantity: str = "patch_size", resolution: tuple[int, int] | None = None,
             record: dict | None = None) -> Path:
        """Write the schedule as a schedule file (see `write_schedule_file`), rows in sampling order."""
        if quantity not in SCHEDULE_QUANTITIES:
            raise ScheduleError(f"unknown schedule quantity {quantity!r}; choose one of {', '.join(SCHEDULE_QUANTITIES)}")
        steps = [{"t": t, quantity: v} for t, v in sorted(zip(self.times, self.values), reverse=True)]
        return write_schedule_file(path, steps, name=self.name, interpolation=self.interpolation,
                                   resolution=resolution, record=record)

    @classmethod
    def load(cls, path: str | os.PathLike, quantity: str = "patch_size",
             resolution: tuple[int, int] | None = None) -> "Schedule":
        """One quantity ("patch_size" or "lambda") of a schedule file, checked against the
        training images' resolution (H, W) when given."""
        if quantity not in SCHEDULE_QUANTITIES:
            raise ScheduleError(f"unknown schedule quantity {quantity!r}; choose one of {', '.join(SCHEDULE_QUANTITIES)}")
        content = read_schedule_file(path, resolution)
        if quantity not in content["steps"][0]:
            raise ScheduleError(f"{path}: the schedule file has no {quantity!r} column "
                                f"(it has {', '.join(q for q in SCHEDULE_QUANTITIES if q in content['steps'][0])})")
        return cls(tuple(row["t"] for row in content["steps"]), tuple(row[quantity] for row in content["steps"]),
                   content["interpolation"], name=content["name"])


# ---------------------------------------------------------------------------------------
# Schedule files: JSON, one row per sampling step (t decreasing), e.g. from pspc.evaluation.tuning
# ---------------------------------------------------------------------------------------
SCHEDULE_FORMAT = "pspc-schedule"
SCHEDULE_VERSION = 1
SCHEDULE_QUANTITIES = ("patch_size", "lambda")


def _check_steps(steps, resolution, where: str) -> list[dict]:
    if not isinstance(steps, list) or not steps:
        raise ScheduleError(f"{where}: 'steps' must be a non-empty list of rows")
    present = [q for q in SCHEDULE_QUANTITIES if isinstance(steps[0], dict) and q in steps[0]]
    if not present:
        raise ScheduleError(f"{where}: step 0 has none of {', '.join(SCHEDULE_QUANTITIES)}")
    side = min(resolution) if resolution else None
    rows, previous = [], math.inf
    for i, row in enumerate(steps):
        if not isinstance(row, dict):
            raise ScheduleError(f"{where}: step {i} is not an object")
        t = row.get("t")
        if isinstance(t, bool) or not isinstance(t, (int, float)) or not math.isfinite(t) or t <= 0:
            raise ScheduleError(f"{where}: step {i} needs a finite noise level t > 0, got {t!r}")
        if not t < previous:
            raise ScheduleError(f"{where}: t must decrease from step to step (sampling order); "
                                f"step {i} has t={t} after t={previous}")
        previous = t
        missing = [q for q in present if q not in row]
        extra = [q for q in SCHEDULE_QUANTITIES if q in row and q not in present]
        if missing or extra:
            raise ScheduleError(f"{where}: step {i} must give the same quantities as step 0 ({', '.join(present)})")
        if "patch_size" in row:
            s = row["patch_size"]
            if isinstance(s, bool) or not isinstance(s, int) or s < 1 or (side is not None and s > side):
                raise ScheduleError(f"{where}: step {i} has patch_size {s!r}; it must be an integer in "
                                    f"[1, {side if side is not None else 'the image side'}]")
        if "lambda" in row:
            lam = row["lambda"]
            if isinstance(lam, bool) or not isinstance(lam, (int, float)) or not 0 < lam <= 1:
                raise ScheduleError(f"{where}: step {i} has lambda {lam!r}; it must be in (0, 1]")
        rows.append(row)
    return rows


def _check_resolution(value, where: str) -> tuple[int, int] | None:
    if value is None:
        return None
    if (not isinstance(value, (list, tuple)) or len(value) != 2
            or not all(isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in value)):
        raise ScheduleError(f"{where}: resolution must be [H, W] (positive integers), got {value!r}")
    return int(value[0]), int(value[1])


def write_schedule_file(path: str | os.PathLike, steps: list[dict], *, name: str = "custom",
                        interpolation: str = "nearest", resolution: tuple[int, int] | None = None,
                        record: dict | None = None) -> Path:
    """Write {format, version, name, interpolation, resolution, steps, record} as JSON.

    steps: rows {"t", "patch_size" and/or "lambda", anything else (e.g. "errors")}, t
    decreasing. patch_size needs the resolution (H, W) it was chosen for. The file is
    written to a temporary name and renamed, so a failure never leaves half a file."""
    path = Path(path)
    resolution = _check_resolution(None if resolution is None else list(resolution), str(path))
    rows = _check_steps(list(steps), resolution, str(path))
    if "patch_size" in rows[0] and resolution is None:
        raise ScheduleError(f"{path}: a patch_size schedule must record the resolution it was chosen for")
    Schedule(tuple(r["t"] for r in rows), tuple(r[next(q for q in SCHEDULE_QUANTITIES if q in r)] for r in rows),
             interpolation, name)  # same checks as loading
    content = {"format": SCHEDULE_FORMAT, "version": SCHEDULE_VERSION, "name": name, "interpolation": interpolation,
               "resolution": list(resolution) if resolution else None, "steps": rows, "record": record or {}}
    text = json.dumps(content, indent=1, sort_keys=False, allow_nan=False)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    partial.write_text(text + "\n")
    os.replace(partial, path)
    return path


def read_schedule_file(path: str | os.PathLike, resolution: tuple[int, int] | None = None) -> dict:
    """Read and check a schedule file; with `resolution` (H, W), refuse one chosen for other images."""
    where = str(path)
    try:
        text = Path(path).read_text()
    except FileNotFoundError:
        raise ScheduleError(f"{where}: no such schedule file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ScheduleError(f"{where}: cannot read the schedule file ({exc})") from None
    try:
        content = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ScheduleError(f"{where}: not a JSON schedule file ({exc.msg} at line {exc.lineno}, column {exc.colno})") from None
    if not isinstance(content, dict) or content.get("format") != SCHEDULE_FORMAT:
        raise ScheduleError(f"{where}: not a {SCHEDULE_FORMAT} file (no \"format\": \"{SCHEDULE_FORMAT}\")")
    version = content.get("version")
    if not isinstance(version, int) or version > SCHEDULE_VERSION or version < 1:
        raise ScheduleError(f"{where}: schedule file version {version!r}; this version of pspc reads "
                            f"version {SCHEDULE_VERSION} (written by a newer pspc?)")
    stored = _check_resolution(content.get("resolution"), where)
    if resolution is not None and stored is not None and tuple(resolution) != stored:
        raise ScheduleError(f"{where}: the schedule was chosen for {stored[0]}x{stored[1]} images, "
                            f"the training set is {resolution[0]}x{resolution[1]}")
    steps = _check_steps(content.get("steps"), stored, where)
    if "patch_size" in steps[0] and stored is None:
        raise ScheduleError(f"{where}: a patch_size schedule must record its resolution")
    interpolation = content.get("interpolation", "nearest")
    if interpolation not in ("nearest", "log-linear-odd"):
        raise ScheduleError(f"{where}: unknown interpolation {interpolation!r}")
    name = content.get("name", Path(path).stem)
    return {**content, "name": str(name), "interpolation": interpolation, "resolution": stored, "steps": steps}


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
