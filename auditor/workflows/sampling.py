"""Sampling runs in the provenance store: record, resume, list.

A run's life: inserted as 'running' (full configuration, writer host and pid, one samples
row per sample with its seed) -> one transaction per sampling step (auditor.store.recorder) ->
the last step's transaction stores the final images and sets 'complete'. Any exception,
Ctrl-C included, sets 'failed' with the error text (and re-raises). A writer killed
outright leaves 'running'; `run_summaries` shows that as "running (writer pid N gone)"
when the pid no longer exists on this host, and `resume_run` continues it (or a failed
run) from its last recorded step.
"""

from __future__ import annotations

import json
import os
import platform
import socket
import time
import traceback
from dataclasses import asdict
from typing import Callable

import torch

from pspc.denoisers import Denoiser, PSPCDenoiser, build_denoiser
from pspc.posterior.weights import WeightRequest
from pspc.samplers import SamplerConfig, _denoise, initial_noise, sample
from pspc.data.training_set import TrainingSet

from auditor.store import database, datasets, schema as models
from auditor.store.database import NotFoundError, StoreError, json_value
from auditor.store.recorder import ProvenanceRecorder, from_blob, utcnow

__all__ = ["RECORDABLE_KINDS", "create_run", "record_sampling_run", "resume_run", "run_summaries", "versions"]

RECORDABLE_KINDS = ("pspc-square", "pspc-flex", "empirical")  # the denoisers that give posterior weights


def _version(package: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(package)
    except PackageNotFoundError:
        return None


def versions() -> dict:
    """Versions of everything that can change a recorded result."""
    import duckdb
    import numpy
    import sqlalchemy

    return {"python": platform.python_version(), "torch": torch.__version__, "numpy": numpy.__version__,
            "numba": _version("numba"), "duckdb": duckdb.__version__, "sqlalchemy": sqlalchemy.__version__,
            "pspc-auditor": _version("pspc-auditor")}


def _writer() -> dict:
    return {"host": socket.gethostname(), "pid": os.getpid()}



def _error_text(exc: BaseException) -> str:
    if isinstance(exc, KeyboardInterrupt):
        return "interrupted (KeyboardInterrupt)"
    last = traceback.extract_tb(exc.__traceback__)[-1:] if exc.__traceback__ else []
    where = f" (at {last[0].filename}:{last[0].lineno})" if last else ""
    return f"{type(exc).__name__}: {exc}{where}"


def _mark_failed(db_path, run_id: int, exc: BaseException, timeout: float) -> None:
    """Set 'failed' with the error text, in its own short transaction (never over 'complete')."""
    try:
        with database.connect(db_path, timeout=timeout) as conn:
            conn.execute("UPDATE runs SET status = 'failed', error = ?, finished_at = ? "
                         "WHERE id = ? AND status = 'running'", [_error_text(exc), utcnow(), run_id])
    except Exception as inner:  # noqa: BLE001 - the original error matters more; keep it
        exc.add_note(f"(could not mark run {run_id} failed: {inner})")


def _check_kind(kind: str) -> None:
    if kind not in RECORDABLE_KINDS:
        raise ValueError(f"cannot record denoiser {kind!r}: only PSPC denoisers give posterior weights "
                         f"({', '.join(RECORDABLE_KINDS)})")


def _sampler_record(config: SamplerConfig) -> dict:
    return {**asdict(config), "time_steps": config.time_steps().tolist()}


def record_sampling_run(db_path, training_set: TrainingSet, *, denoiser_kind: str = "pspc-square",
                        patch_size: int | None = None, num_samples: int = 16, steps: int = 18,
                        sampler: str = "euler", seed: int = 0, top_k: int = 16, mass: float = 0.99,
                        command: list[str] | None = None, progress: Callable[[int], None] | None = None,
                        device: str | torch.device = "cpu", timeout: float = database.DEFAULT_TIMEOUT,
                        callback=None, run_options: dict | None = None, denoiser: Denoiser | None = None) -> int:
    """Sample `num_samples` images with PSPC and record every step; returns the run id.

    The training set is ingested first if the store does not hold it (idempotent by
    fingerprint). Sample i starts from noise seeded with seed + i. On any exception
    (KeyboardInterrupt included) the run is marked 'failed' with the error and the
    exception re-raised; it can then be resumed with `resume_run`.
    `callback(step, t, z, D, weights)`, if given, runs after each step is recorded.
    `run_options` go to `create_run` (a comparison links its PSPC runs this way).
    `denoiser`: a prebuilt denoiser of kind `denoiser_kind` instead of the kind's defaults
    (a comparison's network-Flex or tuned schedule; its describe() is stored with the run).
    """
    _check_kind(denoiser_kind)
    if num_samples < 1 or steps < 1:
        raise ValueError(f"need num_samples >= 1 and steps >= 1, got {num_samples} and {steps}")
    request = WeightRequest(top_k=top_k, mass=mass)
    config = SamplerConfig(method=sampler, num_steps=steps)
    database.require_current(db_path, timeout)
    dataset_id, _ = datasets.ingest(db_path, training_set)
    if denoiser is None:
        denoiser = build_denoiser(denoiser_kind, training_set, patch_size=patch_size)
    elif denoiser.describe().get("kind") != denoiser_kind:
        raise ValueError(f"the denoiser given is {denoiser.describe().get('kind')!r}, not {denoiser_kind!r}")
    denoiser = denoiser.to(device)
    run_id = create_run(db_path, dataset_id, denoiser=denoiser.describe(), sampler=_sampler_record(config), seed=seed,
                        num_samples=num_samples, top_k=top_k, mass=mass, command=command, timeout=timeout,
                        **(run_options or {}))
    started = time.perf_counter()
    try:
        recorder = ProvenanceRecorder(db_path, run_id, len(training_set), config.time_steps().tolist(),
                                      timeout=timeout, sampling_started=started)
        z = initial_noise(num_samples, training_set.image_shape, seed, config.t_max, device)
        sample(denoiser, z, config, callback=_chain(recorder, callback), request=request, progress=progress)
    except BaseException as exc:
        _mark_failed(db_path, run_id, exc, timeout)
        raise
    return run_id


def create_run(db_path, dataset_id: int, *, denoiser: dict, sampler: dict, seed: int, num_samples: int, top_k: int,
               mass: float, command: list[str] | None = None, kind: str = "pspc", network_id: int | None = None,
               details: dict | None = None, comparison: tuple[int, str] | None = None,
               timeout: float = database.DEFAULT_TIMEOUT) -> int:
    """Insert a run as 'running' (its configuration, versions, writer host and pid) with one
    samples row per sample (seed + i), in one transaction; returns the run id. kind: one of
    models.RUN_KINDS; comparison: (comparison id, role) links the run to a comparison."""
    if kind not in models.RUN_KINDS:
        raise ValueError(f"unknown run kind {kind!r}; one of {', '.join(models.RUN_KINDS)}")
    with database.session(db_path, timeout=timeout) as s:
        run = models.Run(dataset_id=dataset_id, status="running", denoiser=denoiser, sampler=sampler, seed=seed,
                         num_samples=num_samples, top_k=top_k, mass_threshold=mass, versions=versions(),
                         command=list(command) if command else None, writer=_writer(), created_at=utcnow(),
                         kind=kind, network_id=network_id, details=details)
        s.add(run)
        s.flush()
        run_id = int(run.id)
        s.add_all([models.Sample(run_id=run_id, sample_index=i, seed=seed + i) for i in range(num_samples)])
        if comparison is not None:
            s.add(models.ComparisonRun(comparison_id=int(comparison[0]), role=str(comparison[1]), run_id=run_id))
    return run_id


def _chain(recorder, callback):
    if callback is None:
        return recorder

    def both(step, t, z, denoised, weights):
        recorder(step, t, z, denoised, weights)
        callback(step, t, z, denoised, weights)

    return both


def _load_run(conn, db_path, run_id: int) -> dict:
    row = conn.execute("SELECT r.id, r.status, r.dataset_id, r.denoiser, r.sampler, r.seed, r.num_samples, r.top_k, "
                       "r.mass_threshold, d.fingerprint, d.channels, d.height, d.width, r.writer, r.kind "
                       "FROM runs r JOIN datasets d ON d.id = r.dataset_id WHERE r.id = ?", [int(run_id)]).fetchone()
    if row is None:
        raise NotFoundError(f"{db_path}: no run {run_id}")
    keys = ("id", "status", "dataset_id", "denoiser", "sampler", "seed", "num_samples", "top_k", "mass_threshold",
            "fingerprint", "channels", "height", "width", "writer", "kind")
    run = dict(zip(keys, row))
    run["denoiser"], run["sampler"] = json_value(run["denoiser"]), json_value(run["sampler"])
    return run


def _rebuild_denoiser(run: dict, training_set: TrainingSet) -> PSPCDenoiser:
    stored = run["denoiser"]
    kind = stored["kind"]
    _check_kind(kind)
    patch_size = (stored.get("schedule") or {}).get("patch_size")
    denoiser = build_denoiser(kind, training_set, patch_size=patch_size if isinstance(patch_size, int) else None)
    rebuilt = json.loads(json.dumps(denoiser.describe()))
    if rebuilt != stored:
        raise StoreError(f"run {run['id']}: this version of pspc builds a different denoiser than the one recorded "
                         f"(recorded {json.dumps(stored)}, now {json.dumps(rebuilt)}); cannot resume")
    return denoiser


def _integrate(denoiser, z, config: SamplerConfig, start: int, callback, request, progress):
    """pspc.samplers.sample from step `start` on, with exactly the same arithmetic."""
    times = config.time_steps().tolist()
    z = z.to(denoiser.device)
    for step in range(start, len(times) - 1):
        t, t_next = times[step], times[step + 1]
        denoised, weights = _denoise(denoiser, z, t, request)
        callback(step, t, z, denoised, weights)
        z = _advance(denoiser, config, z, denoised, t, t_next)
        if progress is not None:
            progress(1)
    return z


def _advance(denoiser, config: SamplerConfig, z, denoised, t: float, t_next: float):
    """One sampler update from (z, D(z, t)), as pspc.samplers.sample computes it."""
    slope = (z - denoised) / t
    z_next = z + (t_next - t) * slope  # Euler step.
    if config.method == "heun" and t_next > 0:  # Apply 2nd order correction.
        slope_next = (z_next - denoiser(z_next, torch.full((z.shape[0],), t_next, dtype=torch.float64))) / t_next
        z_next = z + (t_next - t) * 0.5 * (slope + slope_next)
    return z_next


def resume_run(db_path, run_id: int, training_set: TrainingSet, *, progress: Callable[[int], None] | None = None,
               device: str | torch.device = "cpu", timeout: float = database.DEFAULT_TIMEOUT, callback=None) -> int:
    """Continue an interrupted ('failed' or 'running' with its writer gone) run; returns run_id.

    The training set must be the run's (same fingerprint); the denoiser is rebuilt from the
    stored configuration. Rows of any step not recorded for every sample are deleted; the
    sampler restarts from the last fully recorded step s with z_{s+1} computed from the
    stored z_s and D(z_s) (Heun: its correction recomputed), so the result equals an
    uninterrupted run. Progress counts the remaining steps only.
    """
    database.require_current(db_path, timeout)
    with database.connect(db_path, read_only=True, timeout=timeout) as conn:
        run = _load_run(conn, db_path, run_id)
    if run["status"] == "complete":
        raise StoreError(f"{db_path}: run {run_id} is already complete; nothing to resume")
    if (run["kind"] or "pspc") != "pspc":
        raise StoreError(f"{db_path}: run {run_id} is a {run['kind']} run; only PSPC sampling runs can be resumed "
                         f"(run the comparison or audit again)")
    writer = json_value(run["writer"]) or {}
    if (run["status"] == "running" and writer.get("host") == socket.gethostname()
            and _pid_alive(int(writer.get("pid", -1)))):
        raise StoreError(f"{db_path}: run {run_id} is still being written by process {writer['pid']} on this host; "
                         f"resume it only once that process has stopped")
    if run["fingerprint"] != training_set.fingerprint:
        raise StoreError(f"run {run_id} was recorded on dataset {run['dataset_id']} (fingerprint "
                         f"{run['fingerprint'][:12]}...), but the given training set has fingerprint "
                         f"{training_set.fingerprint[:12]}...; pass the same --data")
    training_set = training_set.with_xflip(bool(run["denoiser"].get("dataset", {}).get("xflip", training_set.xflip)))
    denoiser = _rebuild_denoiser(run, training_set).to(device)
    sampler = run["sampler"]
    config = SamplerConfig(**{k: sampler[k] for k in ("method", "num_steps", "t_min", "t_max", "rho")})
    times = config.time_steps().tolist()
    if any(abs(a - b) > 1e-12 * max(1.0, abs(b)) for a, b in zip(times, sampler["time_steps"])):
        raise StoreError(f"run {run_id}: the recorded time steps differ from the ones this version computes")
    num_samples = run["num_samples"]
    shape = (run["channels"], run["height"], run["width"])
    request = WeightRequest(top_k=run["top_k"], mass=run["mass_threshold"])

    with database.connect(db_path, timeout=timeout) as conn:
        counts = dict(conn.execute("SELECT step, count(*) FROM steps WHERE run_id = ? GROUP BY step",
                                   [run_id]).fetchall())
        done = -1
        while counts.get(done + 1) == num_samples:
            done += 1
        for table in ("patch_weights", "patch_stats", "step_shares", "steps"):
            conn.execute(f"DELETE FROM {table} WHERE run_id = ? AND step > ?", [run_id, done])
        z_rows = None
        if done >= 0:
            z_rows = conn.execute("SELECT sample_index, z, denoised FROM steps WHERE run_id = ? AND step = ? "
                                  "ORDER BY sample_index", [run_id, done]).fetchall()
        conn.execute("UPDATE runs SET status = 'running', error = NULL, finished_at = NULL, writer = ? WHERE id = ?",
                     [json.dumps(_writer()), run_id])
    started = time.perf_counter()
    try:
        if done < 0:
            z = initial_noise(num_samples, shape, run["seed"], config.t_max, device)
        else:
            z_s = torch.stack([from_blob(row[1], shape) for row in z_rows]).to(device)
            d_s = torch.stack([from_blob(row[2], shape) for row in z_rows]).to(device)
            z = _advance(denoiser, config, z_s, d_s, times[done], times[done + 1])
        recorder = ProvenanceRecorder(db_path, run_id, len(training_set), times, timeout=timeout,
                                      sampling_started=started, extra_timings={"resumed_from_step": done + 1})
        if done + 1 < len(times) - 1:
            _integrate(denoiser, z, config, done + 1, _chain(recorder, callback), request, progress)
        else:  # every step is there but the run was not completed (cannot happen: same transaction)
            raise StoreError(f"run {run_id}: all steps are recorded but the run is not complete")
    except BaseException as exc:
        _mark_failed(db_path, run_id, exc, timeout)
        raise
    return run_id


def _pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    except OSError:
        return True
    return True


def run_summaries(db_path, dataset_id: int | None = None, *, timeout: float = database.DEFAULT_TIMEOUT) -> list[dict]:
    """One dict per run (newest first): id, dataset_id, dataset (name), status, denoiser
    (kind), samples, steps (recorded / planned), created_at, finished_at, seconds, error,
    kind (pspc, network-explained, samples-only, external-audit). A 'running' run whose
    writer pid is gone on this host shows as
    "running (writer pid N gone)". Unknown dataset_id -> NotFoundError."""
    database.require_current(db_path, timeout)
    with database.connect(db_path, read_only=True, timeout=timeout) as conn:
        if dataset_id is not None and not conn.execute("SELECT 1 FROM datasets WHERE id = ?",
                                                       [int(dataset_id)]).fetchone():
            raise NotFoundError(f"{db_path}: no dataset {dataset_id}")
        rows = conn.execute("""
            SELECT r.id, r.dataset_id, d.name, r.status, r.denoiser, r.num_samples, r.sampler,
                   coalesce(s.steps, 0), r.created_at, r.finished_at, r.timings, r.writer, r.error,
                   coalesce(r.kind, 'pspc')
            FROM runs r JOIN datasets d ON d.id = r.dataset_id
            LEFT JOIN (SELECT run_id, count(DISTINCT step) AS steps FROM steps GROUP BY run_id) s ON s.run_id = r.id
            WHERE ? IS NULL OR r.dataset_id = ?
            ORDER BY r.id DESC""", [dataset_id, dataset_id]).fetchall()
    host = socket.gethostname()
    out = []
    for (run_id, ds_id, ds_name, status, denoiser, num_samples, sampler, steps, created, finished, timings, writer,
         error, kind) in rows:
        denoiser, sampler, timings, writer = (json_value(v) for v in (denoiser, sampler, timings, writer))
        shown = status
        if status == "running" and writer and writer.get("host") == host and not _pid_alive(int(writer["pid"])):
            shown = f"running (writer pid {writer['pid']} gone)"
        seconds = (timings or {}).get("total")
        if seconds is None and finished is not None and created is not None:
            seconds = (finished - created).total_seconds()
        out.append({"id": run_id, "dataset_id": ds_id, "dataset": ds_name, "status": shown, "denoiser": denoiser.get("kind"),
                    "samples": num_samples, "steps": steps, "planned_steps": sampler.get("num_steps"),
                    "created_at": created, "finished_at": finished, "seconds": seconds, "error": error,
                    "kind": kind})
    return out
