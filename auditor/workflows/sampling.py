"""Sampling runs in the provenance store: record and resume.

A run's life (auditor.store.runs): inserted as 'running' -> one transaction per sampling
step (auditor.store.recorder) -> the last step's transaction stores the final images and
sets 'complete'. Any exception, Ctrl-C included, sets 'failed' with the error text (and
re-raises; a Ctrl-C that numba's compiled code turned into a SystemError is re-raised as
the KeyboardInterrupt it is). A writer killed outright leaves 'running'; `run_summaries`
shows that as "running (writer pid N gone)", the next run or resume on the store marks it
failed (auditor.store.runs.fail_abandoned_runs), and `resume_run` continues it (or any
failed run) from its last recorded step. In a job of the report service the run is linked
to its job when it is created (auditor.store.jobs.job_of_this_process).

The sampling itself is the engine's one PF-ODE loop, `pspc.samplers.sample`.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict
from typing import NoReturn

from pspc.data.training_set import TrainingSet
from pspc.denoisers import Denoiser, PSPCDenoiser, build_denoiser
from pspc.posterior.weights import WeightRequest
from pspc.samplers import SamplerConfig, initial_noise, sample, sampler_step

from auditor.errors import StoreError, UserError
from auditor.store import database, datasets
from auditor.store.jobs import job_of_this_process
from auditor.store.parquet_recorder import start_parquet_run
from auditor.store.recorder import ProvenanceRecorder
from auditor.store.runs import create_run, interruption, load_run, mark_failed, reopen_run, writer_alive
from auditor.workflows.options import RECORDABLE_KINDS, Runtime, SamplingOptions

__all__ = ["RECORDABLE_KINDS", "SamplingOptions", "chain", "check_kind", "fail_run", "record_parquet_run",
           "record_sampling_run", "resume_run", "sampler_record", "stored_sampler"]


def check_kind(kind: str) -> None:
    """UserError unless `kind` is a denoiser that gives posterior weights."""
    if kind not in RECORDABLE_KINDS:
        raise UserError(f"cannot record denoiser {kind!r}: only PSPC denoisers give posterior weights "
                        f"({', '.join(RECORDABLE_KINDS)})")


def sampler_record(config: SamplerConfig) -> dict:
    """What runs.sampler holds: the sampler's settings and its time steps."""
    return {**asdict(config), "time_steps": config.time_steps().tolist()}


def stored_sampler(run: dict) -> tuple[SamplerConfig, list[float]]:
    """The SamplerConfig a PSPC run recorded (runs.sampler) and its time steps; StoreError when
    this version computes other time steps from it (the run could not be continued or re-run)."""
    sampler = run["sampler"]
    config = SamplerConfig(**{k: sampler[k] for k in ("method", "num_steps", "t_min", "t_max", "rho")})
    times = config.time_steps().tolist()
    if len(times) != len(sampler["time_steps"]) or any(
            abs(a - b) > 1e-12 * max(1.0, abs(b)) for a, b in zip(times, sampler["time_steps"])):
        raise StoreError(f"run {run['id']}: the recorded time steps differ from the ones this version computes")
    return config, times


def chain(recorder, callback):
    """One sampler callback: the recorder, then `callback` (if any)."""
    if callback is None:
        return recorder

    def both(step, t, z, denoised, weights):
        recorder(step, t, z, denoised, weights)
        callback(step, t, z, denoised, weights)

    return both


def record_sampling_run(db_path, training_set: TrainingSet, *, options: SamplingOptions | None = None,
                        runtime: Runtime | None = None, denoiser: Denoiser | None = None,
                        comparison: tuple[int, str] | None = None, callback=None) -> int:
    """Sample `options.num_samples` images with PSPC and record every step; returns the run id.

    The training set is ingested first if the store does not hold it (idempotent by
    fingerprint). Sample i starts from noise seeded with seed + i. On any exception
    (KeyboardInterrupt included) the run is marked 'failed' with the error and the
    exception re-raised; it can then be resumed with `resume_run`.
    `callback(step, t, z, D, weights)`, if given, runs after each step is recorded.
    `denoiser`: a prebuilt denoiser of kind `options.denoiser_kind` instead of the kind's
    defaults (a comparison's network-Flex or tuned schedule; its describe() is stored with
    the run). `comparison`: (comparison id, role) links the run to a comparison.
    """
    options, runtime = options or SamplingOptions(), runtime or Runtime()
    check_kind(options.denoiser_kind)
    options.check_fits(*training_set.resolution)  # the rest was checked when the options were built
    request = WeightRequest(top_k=options.top_k, mass=options.mass)
    config = SamplerConfig(method=options.sampler, num_steps=options.steps)
    database.require_current(db_path, runtime.timeout)
    dataset_id, _ = datasets.ingest(db_path, training_set, timeout=runtime.timeout)
    if denoiser is None:
        denoiser = build_denoiser(options.denoiser_kind, training_set, patch_size=options.patch_size)
    elif denoiser.describe().get("kind") != options.denoiser_kind:
        raise UserError(f"the denoiser given is {denoiser.describe().get('kind')!r}, not {options.denoiser_kind!r}")
    denoiser = denoiser.to(runtime.device)
    run_id = create_run(db_path, dataset_id, denoiser=denoiser.describe(), sampler=sampler_record(config),
                        seed=options.seed, num_samples=options.num_samples, top_k=options.top_k, mass=options.mass,
                        command=runtime.command, timeout=runtime.timeout, comparison=comparison,
                        job_id=job_of_this_process(),
                        details=None if comparison is None else {"comparison_id": comparison[0],
                                                                 "role": comparison[1]})
    started = time.perf_counter()
    try:
        recorder = ProvenanceRecorder(db_path, run_id, len(training_set), config.time_steps().tolist(),
                                      timeout=runtime.timeout, sampling_started=started)
        z = initial_noise(options.num_samples, training_set.image_shape, options.seed, config.t_max, runtime.device)
        sample(denoiser, z, config, callback=chain(recorder, callback), request=request, progress=runtime.progress)
    except BaseException as exc:
        fail_run(db_path, run_id, exc, runtime.timeout)
    return run_id


def fail_run(db_path, run_id: int, exc: BaseException, timeout: float) -> NoReturn:
    """Mark the run failed and re-raise: a Ctrl-C as the KeyboardInterrupt it is (numba's compiled
    code turns one into a SystemError), anything else as it came."""
    mark_failed(db_path, run_id, exc, timeout)
    interrupt = interruption(exc)
    if interrupt is not None and interrupt is not exc:
        raise interrupt from None
    raise exc


# ---------------------------------------------------------------------------------------
# Resuming
# ---------------------------------------------------------------------------------------
def _rebuild_denoiser(run: dict, training_set: TrainingSet) -> PSPCDenoiser:
    stored = run["denoiser"]
    kind = stored["kind"]
    check_kind(kind)
    patch_size = (stored.get("schedule") or {}).get("patch_size")
    denoiser = build_denoiser(kind, training_set, patch_size=patch_size if isinstance(patch_size, int) else None)
    rebuilt = json.loads(json.dumps(denoiser.describe()))
    if rebuilt != {k: v for k, v in stored.items() if k != "distributed"}:  # a sharded run (pspc.sharded): same D
        raise StoreError(f"run {run['id']}: this version of pspc builds a different denoiser than the one recorded "
                         f"(recorded {json.dumps(stored)}, now {json.dumps(rebuilt)}); cannot resume")
    return denoiser


def _check_resumable(db_path, run: dict, dataset: dict, training_set: TrainingSet) -> None:
    run_id = run["id"]
    if run["status"] == "complete":
        raise StoreError(f"{db_path}: run {run_id} is already complete; nothing to resume")
    if run["kind"] != "pspc":
        raise StoreError(f"{db_path}: run {run_id} is a {run['kind']} run; only PSPC sampling runs can be resumed "
                         f"(run the comparison or audit again)")
    if run["status"] == "running" and writer_alive(run["writer"]):
        raise StoreError(f"{db_path}: run {run_id} is still being written by process {run['writer']['pid']} on "
                         f"this host; resume it only once that process has stopped")
    if dataset["fingerprint"] != training_set.fingerprint:
        raise StoreError(f"run {run_id} was recorded on dataset {run['dataset_id']} (fingerprint "
                         f"{dataset['fingerprint'][:12]}...), but the given training set has fingerprint "
                         f"{training_set.fingerprint[:12]}...; pass the same --data")


def _resumed_record(denoiser, step: int) -> dict:
    """What the run's timings say of a resume: the step it continued from, and how the set was
    sharded then (`resumed_with`; the denoiser record keeps the run's creation-time setting)."""
    distributed = denoiser.describe().get("distributed")
    return {"resumed_from_step": step,
            "resumed_with": distributed if distributed else {"world_size": 1, "backend": None}}


def resume_run(db_path, run_id: int, training_set: TrainingSet, *, runtime: Runtime = Runtime(),
               callback=None, distribute=None) -> int:
    """Continue an interrupted ('failed' or 'running' with its writer gone) run; returns run_id.

    The training set must be the run's (same fingerprint); the denoiser is rebuilt from the
    stored configuration. Rows of any step not recorded for every sample are deleted; the
    sampler restarts from the last fully recorded step s with z_{s+1} computed from the
    stored z_s and D(z_s) (Heun: its correction recomputed), so the result equals an
    uninterrupted run. Progress counts the remaining steps only. distribute(denoiser): the
    denoiser to continue with instead (auditor.workflows.distributed: its shard over ranks).
    """
    database.require_current(db_path, runtime.timeout)
    run, dataset = load_run(db_path, run_id, timeout=runtime.timeout)
    _check_resumable(db_path, run, dataset, training_set)
    training_set = training_set.with_xflip(bool(run["denoiser"].get("dataset", {}).get("xflip", training_set.xflip)))
    denoiser = _rebuild_denoiser(run, training_set)
    denoiser = (denoiser if distribute is None else distribute(denoiser)).to(runtime.device)
    config, times = stored_sampler(run)
    shape = (dataset["channels"], dataset["height"], dataset["width"])
    request = WeightRequest(top_k=run["top_k"], mass=run["mass_threshold"])
    done, z_s, d_s = reopen_run(db_path, run_id, run["num_samples"], shape, timeout=runtime.timeout)
    started = time.perf_counter()
    try:
        if done < 0:
            z = initial_noise(run["num_samples"], shape, run["seed"], config.t_max, runtime.device)
        else:
            z = sampler_step(denoiser, config.method, z_s.to(runtime.device), d_s.to(runtime.device), times[done],
                             times[done + 1])
        recorder = ProvenanceRecorder(db_path, run_id, len(training_set), times, timeout=runtime.timeout,
                                      sampling_started=started, extra_timings=_resumed_record(denoiser, done + 1))
        if done + 1 >= len(times) - 1:  # every step is there but the run was not completed (same transaction)
            raise StoreError(f"run {run_id}: all steps are recorded but the run is not complete")
        sample(denoiser, z, config, callback=chain(recorder, callback), request=request, progress=runtime.progress,
               start=done + 1)
    except BaseException as exc:
        fail_run(db_path, run_id, exc, runtime.timeout)
    return int(run_id)


# ---------------------------------------------------------------------------------------
# Recording into a Parquet folder (many machines)
# ---------------------------------------------------------------------------------------
def record_parquet_run(out_dir, training_set: TrainingSet, *, options: SamplingOptions | None = None,
                       runtime: Runtime | None = None, run_id: int | None = None, callback=None) -> int:
    """record_sampling_run into a Parquet folder shared by many writers instead of a store (the same
    rows, auditor.store.parquet_recorder): no lock, so any number of processes and machines record
    into one folder at once. run_id: the run's id (ConflictError when the folder has it), else a
    62-bit one drawn for this host and process. On any exception the run's completion marker
    says 'failed' with the error, and the exception is re-raised (no resume: record it again)."""
    options, runtime = options or SamplingOptions(), runtime or Runtime()
    check_kind(options.denoiser_kind)
    options.check_fits(*training_set.resolution)
    config = SamplerConfig(method=options.sampler, num_steps=options.steps)
    denoiser = build_denoiser(options.denoiser_kind, training_set, patch_size=options.patch_size).to(runtime.device)
    run = start_parquet_run(out_dir, training_set, denoiser=denoiser.describe(), sampler=sampler_record(config),
                            seed=options.seed, num_samples=options.num_samples, top_k=options.top_k,
                            mass=options.mass, command=runtime.command, run_id=run_id)
    try:
        recorder = run.recorder(len(training_set), config.time_steps().tolist(), sampling_started=time.perf_counter())
        z = initial_noise(options.num_samples, training_set.image_shape, options.seed, config.t_max, runtime.device)
        sample(denoiser, z, config, callback=chain(recorder, callback),
               request=WeightRequest(top_k=options.top_k, mass=options.mass), progress=runtime.progress)
    except BaseException as exc:
        run.fail(exc)
        raise interruption(exc) or exc  # a Ctrl-C that numba turned into a SystemError as the KeyboardInterrupt
    return run.run_id
