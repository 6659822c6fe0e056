"""The led workflows' tests (auditor.workflows.distributed.over_ranks): `python -m
tests.auditor.workflows.led_worker DB PORTS` runs as each rank of a torchrun-like environment
(tests.support.distributed) the PHASES, one process group each (on port PORTS[i], comma-separated):
a comparison (pspc-flex explainer with the network's masks, a pspc-square run, a gaussian run on
rank 0 alone), a direct audit, a counterfactual of each kind (resample, replay: the training set
sent by rank 0, which reads it from the store), and the resume of the run `record_failed_run`
left failed at step FAIL_AT. Rank 0 records into DB, the others follow. Last, over ranks only, an
audit whose other rank cannot load its training set: rank 0 prints the error it stopped with
before recording anything. `run_phases(db)` does the rest in one process: the reference."""

from __future__ import annotations

import os
import sys

from pspc.posterior.distributed import CollectiveError

from auditor.workflows.audit import record_audit
from auditor.workflows.comparison import record_comparison
from auditor.workflows.counterfactual import record_counterfactual
from auditor.workflows.distributed import Distribution, over_ranks
from auditor.workflows.options import AuditOptions, ComparisonOptions, CounterfactualOptions, SamplingOptions
from auditor.workflows.sampling import record_sampling_run, resume_run
from tests.support.data import random_set
from tests.support.networks import tiny_network

DESCRIPTOR = "pixel-correlation:8"
COMPARE = ComparisonOptions(num_samples=2, steps=3, seed=5, explainer="pspc-flex", denoisers=("pspc-square", "gaussian"),
                            top_k=6, mass=0.95, descriptor=DESCRIPTOR, copy_k=2)
AUDIT = AuditOptions(noise_levels=(2.0, 0.5), draws=2, seed=3, top_k=6, mass=0.95, descriptor=DESCRIPTOR, copy_k=2)
FAILED = SamplingOptions(num_samples=2, steps=5, seed=7, sampler="heun", patch_size=3, top_k=4, mass=0.95)
FAIL_AT = 2  # steps 0..2 are recorded, then the run fails: the resume starts with Heun's correction at step 3
FAILED_RUN, NETWORK_RUN, SQUARE_RUN = 1, 2, 3  # the failed run first, then the comparison's runs in order
PHASES = ("compare", "audit", "counterfactual-resample", "counterfactual-replay", "resume", "unready")


def record_failed_run(db) -> int:
    """A run of FAILED that fails after step FAIL_AT is recorded (marked 'failed', as any failure)."""
    def fail(step, *_):
        if step == FAIL_AT:
            raise RuntimeError("stopped on purpose")

    try:
        record_sampling_run(db, random_set(), options=FAILED, callback=fail)
    except RuntimeError:
        pass
    return FAILED_RUN


def work(phase: str, db):
    """(the phase's workflow as a function of `distribute`, the training set the other ranks need:
    None when rank 0 sends it)."""
    return {
        "compare": (lambda d: record_comparison(db, random_set(), tiny_network(), options=COMPARE, distribute=d),
                    random_set()),
        "audit": (lambda d: record_audit(db, random_set(), random_set().as_float()[4], options=AUDIT, distribute=d),
                  random_set()),
        "counterfactual-resample": (lambda d: record_counterfactual(
            db, SQUARE_RUN, 0, options=CounterfactualOptions(top=2, descriptor=DESCRIPTOR), distribute=d), None),
        "counterfactual-replay": (lambda d: record_counterfactual(
            db, NETWORK_RUN, 1, options=CounterfactualOptions(random=3, seed=1, descriptor=DESCRIPTOR),
            distribute=d), None),
        "resume": (lambda d: resume_run(db, FAILED_RUN, random_set(), distribute=d), random_set()),
        "unready": (lambda d: record_audit(db, random_set(), random_set().as_float()[4], options=AUDIT, distribute=d),
                    cannot_load),
    }[phase]


def cannot_load():
    raise OSError("this rank cannot read its training set")


def run_phases(db, ports: list[str] | None = None) -> None:
    """Every phase on DB: in this one process (ports None), else over torchrun's ranks."""
    for phase, port in zip(PHASES, ports or [None] * len(PHASES)):
        workflow, training_set = work(phase, db)
        if port is None:
            if phase != "unready":
                workflow(None)
            continue
        os.environ["MASTER_PORT"] = port  # a process group of its own per phase
        try:
            over_ranks(workflow, training_set, distribution=Distribution(timeout_s=60))
        except (OSError, CollectiveError) as error:
            if phase != "unready":
                raise
            print(f"{phase}: {error}", flush=True)


if __name__ == "__main__":
    run_phases(sys.argv[1], sys.argv[2].split(","))
