"""The main job on the built-in default: a store with Fashion-MNIST and one recorded run.

`prepare` brings a store to the state the README's Quick start promises: schema at head,
Fashion-MNIST ingested, and a complete PSPC run to look at. It is idempotent: a store that
already holds a complete run recorded with the same settings on the same data is reused,
so running the Quick start twice serves at once instead of sampling again.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Callable

from pspc.loaders import load_training_set

from . import database, datasets, runs

__all__ = ["QuickstartRun", "prepare"]


@dataclass(frozen=True)
class QuickstartRun:
    run_id: int
    dataset_id: int
    reused: bool  # True when an earlier complete run was found

    def report_path(self, sample_index: int = 0) -> str:
        """The sample report's path in the service."""
        return f"/runs/{self.run_id}/samples/{sample_index}"


def _existing_run(db_path, dataset_id: int, num_samples: int, steps: int, seed: int, timeout: float) -> int | None:
    with database.connect(db_path, read_only=True, timeout=timeout, check_schema=True) as conn:
        rows = conn.execute("SELECT id, sampler FROM runs WHERE dataset_id = ? AND status = 'complete' "
                            "AND num_samples = ? AND seed = ? ORDER BY id DESC", [dataset_id, num_samples,
                                                                                  seed]).fetchall()
    for run_id, sampler in rows:
        sampler = json.loads(sampler) if isinstance(sampler, str) else sampler
        if sampler.get("num_steps") == steps:
            return int(run_id)
    return None


def prepare(db_path, *, data: str = "fashion-mnist", num_samples: int = 8, steps: int = 18, seed: int = 0,
            progress: Callable[[int], None] | None = None, log: Callable[[str], None] = print,
            timeout: float = database.DEFAULT_TIMEOUT) -> QuickstartRun:
    """Upgrade the store, ingest `data` (with x-flips), and record a PSPC-Square run unless a
    complete one with these settings exists; returns the run to show."""
    before, after = database.upgrade(db_path, timeout=timeout)
    if before != after:
        log(f"{db_path}: schema {before or 'empty'} -> {after}")
    training_set = load_training_set(data).with_xflip()
    dataset_id, created = datasets.ingest(db_path, training_set, timeout=timeout)
    log(f"dataset {dataset_id}: {training_set.name}, {len(training_set)} images + x-flips"
        f"{' (ingested)' if created else ''}")
    existing = _existing_run(db_path, dataset_id, num_samples, steps, seed, timeout)
    if existing is not None:
        log(f"run {existing}: complete, reused")
        return QuickstartRun(existing, dataset_id, True)
    log(f"recording {num_samples} PSPC-Square samples x {steps} steps (every step's posterior weights)")
    run_id = runs.record_sampling_run(db_path, training_set, num_samples=num_samples, steps=steps, seed=seed,
                                      progress=progress, timeout=timeout,
                                      command=["auditor", "quickstart", f"--num={num_samples}", f"--steps={steps}"])
    return QuickstartRun(run_id, dataset_id, False)
