"""Schedule tuning (paper, Appendix B): per sampling step, the PSPC-Square patch size s(t_i)
and the PSPC-Flex threshold lambda(t_i) that bring PSPC closest to a network.

At each step t_i of the sampling schedule, every candidate (odd sizes up to the image side
and the whole image; lambda from a grid) is scored by the MSE between PSPC's output and the
network's output over noisy states at t_i: the network's own reverse-process states (its
PF-ODE trajectories from seeded noise), forward-process states z = x + t_i eps of held-out
images, or both. The candidate with the smallest MSE wins (ties: the first in candidate
order, i.e. the smaller patch or lambda). The result is saved as a schedule file
(`pspc.schedules.write_schedule_file`) holding, per step, t, s, lambda and the error of every
candidate, with the network record, the dataset fingerprint and the seeds, and the engine
loads it with `Schedule.load(path, "patch_size")` / `Schedule.load(path, "lambda")`.
"""

from __future__ import annotations

import platform
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch

from pspc.denoisers import Denoiser, PSPCDenoiser
from pspc.evaluation.fidelity import (
    FidelityError, NoiseLevelStates, ProcessStates, forward_process_states, reverse_process_states
)
from pspc.posterior.patch_sets import PatchSet, WindowPatches, flex_patches, square_patches
from pspc.samplers import SamplerConfig
from pspc.schedules import Schedule, write_schedule_file
from pspc.data.training_set import TrainingSet

DEFAULT_LAMBDAS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0)
TUNING_PROCESSES = ("reverse", "forward", "both")


def candidate_sizes(height: int, width: int, smallest: int = 3) -> tuple[int, ...]:
    """Odd sizes from `smallest` up to the image side, and the whole side (min(H, W))."""
    side = min(height, width)
    if smallest < 1:
        raise FidelityError(f"the smallest patch size must be >= 1, got {smallest}")
    sizes = list(range(smallest if smallest % 2 else smallest + 1, side + 1, 2))
    if not sizes or sizes[-1] != side:
        sizes.append(side)
    return tuple(sizes)


class _Chosen:
    """patch_set_at for the one PSPCDenoiser shared by every candidate (one copy of the data)."""

    def __init__(self):
        self.patch_set: PatchSet | None = None

    def __call__(self, t: float) -> PatchSet:
        return self.patch_set


def _mse(denoiser: Denoiser, level: NoiseLevelStates, batch_size: int) -> float:
    total, count = 0.0, 0
    for start in range(0, level.z.shape[0], batch_size):
        z = level.z[start:start + batch_size].to(denoiser.device)
        with torch.no_grad():
            out = denoiser(z, torch.full((z.shape[0],), level.t, dtype=torch.float64, device=z.device))
        diff = out.double().cpu() - level.reference[start:start + batch_size].double()
        total += float(diff.square().sum())
        count += diff.numel()
    return total / count


def merge_levels(*processes: ProcessStates) -> list[NoiseLevelStates]:
    """Per sampling step, the states of every process at that step's t, concatenated."""
    if not processes:
        raise FidelityError("no states to tune on")
    times = processes[0].times
    for other in processes[1:]:
        if len(other.times) != len(times) or any(abs(a - b) > 1e-9 * a for a, b in zip(times, other.times)):
            raise FidelityError("the processes were evaluated at different noise levels; tune them on the same steps")
    return [NoiseLevelStates(t, torch.cat([p.levels[k].z for p in processes]),
                             torch.cat([p.levels[k].reference for p in processes]), k)
            for k, t in enumerate(times)]


@dataclass
class TunedSchedule:
    """The chosen s and lambda per step, with the error of every candidate."""

    times: list[float]  # t_i, decreasing
    resolution: tuple[int, int]
    sizes: list[int] | None = None
    size_errors: list[dict[int, float]] | None = None
    lambdas: list[float] | None = None
    lambda_errors: list[dict[float, float]] | None = None
    record: dict = field(default_factory=dict)
    name: str = "tuned"

    def patch_schedule(self) -> Schedule:
        if self.sizes is None:
            raise FidelityError("this schedule was tuned without patch sizes")
        return Schedule(tuple(self.times), tuple(self.sizes), "nearest", name=f"{self.name}-patch-size")

    def lambda_schedule(self) -> Schedule:
        if self.lambdas is None:
            raise FidelityError("this schedule was tuned without lambdas")
        return Schedule(tuple(self.times), tuple(self.lambdas), "nearest", name=f"{self.name}-lambda")

    def rows(self) -> list[dict]:
        rows = []
        for k, t in enumerate(self.times):
            row: dict = {"t": float(t)}
            errors = {}
            if self.sizes is not None:
                row["patch_size"] = int(self.sizes[k])
                errors["patch_size"] = {str(int(s)): float(e) for s, e in self.size_errors[k].items()}
            if self.lambdas is not None:
                row["lambda"] = float(self.lambdas[k])
                errors["lambda"] = {f"{lam:g}": float(e) for lam, e in self.lambda_errors[k].items()}
            row["errors"] = errors
            rows.append(row)
        return rows

    def save(self, path: str | Path) -> Path:
        return write_schedule_file(path, self.rows(), name=self.name, interpolation="nearest",
                                   resolution=self.resolution, record=self.record)

    def table(self) -> str:
        lines = ["tuned schedule (Appendix B): per step, the candidate with the smallest MSE against the network",
                 f"{'step':>4}{'t':>10}" + (f"{'s':>5}{'MSE(s)':>11}{'MSE(whole)':>12}" if self.sizes else "")
                 + (f"{'lambda':>8}{'MSE(lambda)':>13}" if self.lambdas else "")]
        for k, t in enumerate(self.times):
            line = f"{k:>4}{t:>10.4g}"
            if self.sizes is not None:
                errors = self.size_errors[k]
                line += f"{self.sizes[k]:>5}{errors[self.sizes[k]]:>11.5f}{errors[max(errors)]:>12.5f}"
            if self.lambdas is not None:
                line += f"{self.lambdas[k]:>8g}{self.lambda_errors[k][self.lambdas[k]]:>13.5f}"
            lines.append(line)
        return "\n".join(lines)


def tune_schedule(training_set: TrainingSet, levels: Sequence[NoiseLevelStates], *,
                  sizes: Sequence[int] | None = None, lambdas: Sequence[float] | None = None,
                  sensitivity: Callable[[float], torch.Tensor] | None = None, tune_sizes: bool = True,
                  batch_size: int = 64, device="cpu", record: dict | None = None, name: str = "tuned",
                  progress: Callable[[int], None] | None = None) -> TunedSchedule:
    """Choose s (PSPC-Square) and, when `sensitivity` is given, lambda (PSPC-Flex) per level.

    levels: one per sampling step (t decreasing), each with states z and the network's output.
    sizes: candidate patch sizes (default `candidate_sizes`); lambdas: the grid (default
    0.1..1.0). Scores are MSE over all the level's states and pixels."""
    if not levels:
        raise FidelityError("no noise levels to tune")
    times = [float(level.t) for level in levels]
    if any(not a > b for a, b in zip(times, times[1:])):
        raise FidelityError(f"levels must be in sampling order (t decreasing), got {times}")
    _, height, width = training_set.image_shape
    for level in levels:
        if tuple(level.z.shape[1:]) != tuple(training_set.image_shape) or level.reference.shape != level.z.shape:
            raise FidelityError(f"states at t={level.t:g} have shape {tuple(level.z.shape)} (reference "
                                f"{tuple(level.reference.shape)}); the training set's images are {training_set.image_shape}")
    sizes = tuple(int(s) for s in (sizes or candidate_sizes(height, width)))
    if tune_sizes and any(not 1 <= s <= min(height, width) for s in sizes):
        raise FidelityError(f"candidate sizes must be in [1, {min(height, width)}], got {list(sizes)}")
    lambdas = tuple(float(v) for v in (lambdas or DEFAULT_LAMBDAS)) if sensitivity is not None else ()
    if any(not 0 < v <= 1 for v in lambdas):
        raise FidelityError(f"lambdas must be in (0, 1], got {list(lambdas)}")
    if not tune_sizes and not lambdas:
        raise FidelityError("nothing to tune: pass tune_sizes=True or a sensitivity for lambda")

    chosen = _Chosen()
    denoiser = PSPCDenoiser(training_set, chosen, "pspc-tuning").to(device)
    whole = WindowPatches(height, width, height, width)
    size_errors, lambda_errors = [], []
    for level in levels:
        if tune_sizes:
            errors = {}
            for s in sizes:
                chosen.patch_set = square_patches(height, width, s)
                errors[s] = _mse(denoiser, level, batch_size)
                if progress is not None:
                    progress(1)
            size_errors.append(errors)
        if lambdas:
            errors = {}
            for lam in lambdas:
                chosen.patch_set = whole if lam >= 1 else flex_patches(sensitivity(level.t), lam)
                errors[lam] = _mse(denoiser, level, batch_size)
                if progress is not None:
                    progress(1)
            lambda_errors.append(errors)

    def best(errors: dict) -> float:
        return min(errors, key=lambda key: (errors[key], list(errors).index(key)))

    describe = getattr(sensitivity, "describe", None)
    full_record = {"method": "Appendix B: per step, the candidate minimising the MSE against the network",
                   "dataset": training_set.describe(), "candidates": {"patch_size": list(sizes) if tune_sizes else None,
                                                                      "lambda": list(lambdas) or None},
                   "sensitivity": (describe() if describe else "custom") if lambdas else None,
                   "states_per_step": [int(level.z.shape[0]) for level in levels],
                   "versions": {"python": platform.python_version(), "torch": torch.__version__,
                                "numpy": np.__version__},
                   **(record or {})}
    return TunedSchedule(times, (height, width),
                         [int(best(e)) for e in size_errors] if tune_sizes else None,
                         size_errors if tune_sizes else None,
                         [float(best(e)) for e in lambda_errors] if lambdas else None,
                         lambda_errors if lambdas else None, full_record, name)


def tuning_states(network: Denoiser, config: SamplerConfig, process: str = "reverse", *,
                  images: TrainingSet | None = None, num_images: int = 16, num_samples: int = 16,
                  seed: int = 1) -> tuple[list[NoiseLevelStates], dict]:
    """Noisy states at every step of `config`'s schedule with the network's output: the
    network's trajectories ("reverse"), held-out images at each t_i ("forward"), or both.
    Use another seed than the evaluation's, so the schedule is not scored on its own data."""
    if process not in TUNING_PROCESSES:
        raise FidelityError(f"unknown tuning process {process!r}; choose one of {', '.join(TUNING_PROCESSES)}")
    processes = []
    if process in ("reverse", "both"):
        processes.append(reverse_process_states(network, num_samples, seed, config))
    if process in ("forward", "both"):
        if images is None:
            raise FidelityError("forward-process tuning needs held-out images")
        times = config.time_steps()[:-1].tolist()
        processes.append(forward_process_states(network, images, times, num_images, seed))
    return merge_levels(*processes), {"process": process, "states": [p.record for p in processes]}
