"""The main job on the built-in default: a store with Fashion-MNIST and one recorded run.

`prepare` brings a store to the state the README's Quick start promises: schema at head,
Fashion-MNIST ingested, and a complete PSPC run to look at. It is idempotent: a store that
already holds a complete run recorded with the same settings on the same data is reused,
so running the Quick start twice serves at once instead of sampling again.

It also imports the fidelity study committed with the project's network
(auditor/workflows/studies/fidelity-quick.json, package data, from `bench/fidelity.py
--quick --tune`), once, so the service's /fidelity pages show how closely PSPC reproduces
the network without a half-hour run.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.resources
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

from pspc.data.loaders import load_training_set

from auditor.store import database, datasets
from auditor.store.runs import find_complete_run
from auditor.store.studies import find_study, store_study
from auditor.workflows.options import Runtime, SamplingOptions
from auditor.workflows.sampling import record_sampling_run

__all__ = ["COMMITTED_STUDIES", "QuickstartRun", "import_studies", "prepare", "say", "step_lines"]

# The committed study ships with the package (bench/fidelity.py --quick --tune wrote it).
COMMITTED_STUDIES = (Path(str(importlib.resources.files("auditor.workflows") / "studies" / "fidelity-quick.json")),)


say = functools.partial(print, flush=True)  # a log line seen at once, also when stdout is a pipe or a file


def step_lines(total: int, stream=None, clock: Callable[[], float] = time.monotonic) -> Callable[[int], None]:
    """A progress callback (Runtime.progress: called with the steps just done) that writes one
    plain line per step to `stream` (default: sys.stderr), flushed: what a log file or a pipe
    gets instead of a progress bar, which only draws on a terminal."""
    started, done = clock(), 0

    def progress(steps: int = 1) -> None:
        nonlocal done
        done += int(steps)
        print(f"sampling: step {done}/{total} recorded ({clock() - started:.0f} s)",
              file=stream or sys.stderr, flush=True)

    return progress


@dataclass(frozen=True)
class QuickstartRun:
    run_id: int
    dataset_id: int
    reused: bool  # True when an earlier complete run was found
    studies: tuple[int, ...] = ()  # fidelity studies in the store that came from committed results

    def report_path(self, sample_index: int = 0) -> str:
        """The sample report's path in the service."""
        return f"/runs/{self.run_id}/samples/{sample_index}"


def import_studies(db_path, paths: Sequence[Path], *, log: Callable[[str], None] = say,
                   timeout: float = database.DEFAULT_TIMEOUT) -> tuple[int, ...]:
    """Store each fidelity.json in `paths` unless a study from that file (by its sha256, kept
    in fidelity_studies.source) is there already; returns the studies' ids. Missing files are
    skipped (a source checkout without bench/results)."""
    ids = []
    for path in paths:
        path = Path(path)
        if not path.is_file():
            continue
        content = path.read_bytes()
        source = f"{path.name} sha256:{hashlib.sha256(content).hexdigest()}"
        found = find_study(db_path, source, timeout=timeout)
        if found is not None:
            ids.append(found)
            continue
        study_id = store_study(db_path, json.loads(content), name=path.stem, source=source, timeout=timeout)
        log(f"fidelity study {study_id}: {path.name} (imported)")
        ids.append(study_id)
    return tuple(ids)


def prepare(db_path, *, data: str = "fashion-mnist", num_samples: int = 8, steps: int = 18, seed: int = 0,
            studies: Sequence[Path] = COMMITTED_STUDIES, progress: Callable[[int], None] | None = None,
            log: Callable[[str], None] = say, timeout: float = database.DEFAULT_TIMEOUT) -> QuickstartRun:
    """Upgrade the store, import the committed fidelity `studies`, ingest `data` (with
    x-flips), and record a PSPC-Square run unless a complete one with these settings exists;
    returns the run to show."""
    before, after = database.upgrade(db_path, timeout=timeout)
    if before != after:
        log(f"{db_path}: schema {before or 'empty'} -> {after}")
    study_ids = import_studies(db_path, studies, log=log, timeout=timeout)
    training_set = load_training_set(data).with_xflip()
    dataset_id, created = datasets.ingest(db_path, training_set, timeout=timeout)
    log(f"dataset {dataset_id}: {training_set.name}, {len(training_set)} images + x-flips"
        f"{' (ingested)' if created else ''}")
    existing = find_complete_run(db_path, dataset_id, num_samples=num_samples, steps=steps, seed=seed,
                                 timeout=timeout)
    if existing is not None:
        log(f"run {existing}: complete, reused")
        return QuickstartRun(existing, dataset_id, True, study_ids)
    log(f"recording {num_samples} PSPC-Square samples x {steps} steps (every step's posterior weights)")
    run_id = record_sampling_run(
        db_path, training_set, options=SamplingOptions(num_samples=num_samples, steps=steps, seed=seed),
        runtime=Runtime(command=["auditor", "quickstart", f"--num={num_samples}", f"--steps={steps}"],
                        progress=progress, timeout=timeout))
    return QuickstartRun(run_id, dataset_id, False, study_ids)
