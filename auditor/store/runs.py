"""Run rows: THE reader of a run joined with its dataset, and the run lifecycle.

A run's life: inserted as 'running' by `create_run` (full configuration, versions, writer
host and pid, one samples row per sample with its seed) -> one transaction per sampling
step (auditor.store.recorder) -> the last step's transaction stores the final images and
sets 'complete'. Any exception sets 'failed' with `error_text` (`mark_failed`). A writer
killed outright leaves 'running'; `run_summaries` shows that as "running (writer pid N
gone)" when the pid no longer exists on this host, and `reopen_run` prepares a failed or
orphaned run to continue from its last fully recorded step.

Readers call `read_run` instead of writing their own `runs JOIN datasets` query.
"""

from __future__ import annotations

import json
import os
import socket
import traceback

from auditor.errors import InternalError, NotFoundError
from auditor.store import database, schema as models
from auditor.store.database import json_value
from auditor.store.recorder import from_blob, utcnow, write_final_images
from pspc.record import package_version, versions as engine_versions

__all__ = ["DATASET_COLUMNS", "RUN_COLUMNS", "check_sample_index", "complete_samples_only", "create_run",
           "error_text", "find_complete_run", "load_run", "mark_failed", "pid_alive", "read_run", "remaining_steps",
           "reopen_run", "run_summaries", "versions", "writer", "writer_alive"]

RUN_COLUMNS = ("id", "status", "dataset_id", "denoiser", "sampler", "seed", "num_samples", "top_k", "mass_threshold",
               "versions", "command", "writer", "created_at", "finished_at", "timings", "error", "kind", "details",
               "network_id")
JSON_COLUMNS = ("denoiser", "sampler", "versions", "command", "writer", "timings", "details")
DATASET_COLUMNS = ("id", "fingerprint", "name", "source", "channels", "height", "width", "count", "created_at")

_SELECT = (f"SELECT {', '.join('r.' + c for c in RUN_COLUMNS)}, {', '.join('d.' + c for c in DATASET_COLUMNS)} "
           "FROM runs r JOIN datasets d ON d.id = r.dataset_id WHERE r.id = ?")
STEP_TABLES = ("patch_weights", "patch_stats", "step_shares", "steps")  # the rows of one recorded step


# ---------------------------------------------------------------------------------------
# Reading
# ---------------------------------------------------------------------------------------
def read_run(conn, db_path, run_id: int) -> tuple[dict, dict]:
    """(run, dataset) for `run_id` on an open connection: every column of both rows, JSON
    columns decoded, `kind` defaulted to 'pspc'. NotFoundError names the store and the id."""
    try:
        run_id = int(run_id)
    except (TypeError, ValueError):
        raise NotFoundError(f"{db_path}: run ids are integers, got {run_id!r}") from None
    row = conn.execute(_SELECT, [run_id]).fetchone()
    if row is None:
        raise NotFoundError(f"{db_path}: no run {run_id}")
    run = dict(zip(RUN_COLUMNS, row[:len(RUN_COLUMNS)]))
    for key in JSON_COLUMNS:
        run[key] = json_value(run[key])
    run["kind"] = run["kind"] or "pspc"
    return run, dict(zip(DATASET_COLUMNS, row[len(RUN_COLUMNS):]))


def load_run(db_path, run_id: int, *, timeout: float = database.DEFAULT_TIMEOUT) -> tuple[dict, dict]:
    """`read_run` in a read-only transaction of its own."""
    with database.connect(db_path, read_only=True, timeout=timeout) as conn:
        return read_run(conn, db_path, run_id)


def check_sample_index(db_path, run: dict, sample_index: int) -> int:
    """sample_index as an int if the run has that sample, else NotFoundError."""
    try:
        index = int(sample_index)
    except (TypeError, ValueError):
        raise NotFoundError(f"{db_path}: sample indices are integers, got {sample_index!r}") from None
    if not 0 <= index < run["num_samples"]:
        raise NotFoundError(f"{db_path}: run {run['id']} has no sample {index} (samples 0..{run['num_samples'] - 1})")
    return index


def _recorded_steps(conn, run_id: int, num_samples: int) -> int:
    """The last step recorded for every sample (-1: none), counting from step 0."""
    counts = dict(conn.execute("SELECT step, count(*) FROM steps WHERE run_id = ? GROUP BY step",
                               [run_id]).fetchall())
    done = -1
    while counts.get(done + 1) == num_samples:
        done += 1
    return done


def remaining_steps(db_path, run_id: int, *, timeout: float = database.DEFAULT_TIMEOUT) -> int | None:
    """Steps left to compute in a run (for a progress bar), or None if unknown."""
    with database.connect(db_path, read_only=True, timeout=timeout) as conn:
        row = conn.execute("SELECT CAST(json_extract(sampler, '$.num_steps') AS INTEGER), num_samples "
                           "FROM runs WHERE id = ?", [run_id]).fetchone()
        if row is None:
            return None
        num_steps, num_samples = row
        done = _recorded_steps(conn, run_id, num_samples) + 1
    return max(0, (num_steps or 0) - done) if num_steps else None


def find_complete_run(db_path, dataset_id: int, *, num_samples: int, steps: int, seed: int,
                      timeout: float = database.DEFAULT_TIMEOUT) -> int | None:
    """The newest complete run on the dataset with these samples, seed and number of steps."""
    with database.connect(db_path, read_only=True, timeout=timeout, check_schema=True) as conn:
        rows = conn.execute("SELECT id, sampler FROM runs WHERE dataset_id = ? AND status = 'complete' "
                            "AND num_samples = ? AND seed = ? ORDER BY id DESC", [dataset_id, num_samples,
                                                                                  seed]).fetchall()
    for run_id, sampler in rows:
        sampler = json.loads(sampler) if isinstance(sampler, str) else sampler
        if sampler.get("num_steps") == steps:
            return int(run_id)
    return None


# ---------------------------------------------------------------------------------------
# Writers
# ---------------------------------------------------------------------------------------
def versions() -> dict:
    """Versions of everything that can change a recorded result."""
    import duckdb
    import sqlalchemy

    return {**engine_versions("numba", missing=None), "duckdb": duckdb.__version__,
            "sqlalchemy": sqlalchemy.__version__, "pspc-auditor": package_version("pspc-auditor", None)}


def writer() -> dict:
    """This process as a run's writer: host and pid."""
    return {"host": socket.gethostname(), "pid": os.getpid()}


def pid_alive(pid: int) -> bool:
    """Whether process `pid` exists on this host (True when unsure)."""
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # PermissionError included: it exists
        return True
    return True


def writer_alive(record: dict | None) -> bool:
    """Whether a run's writer (host, pid) is a live process on this host."""
    return bool(record) and record.get("host") == socket.gethostname() and pid_alive(int(record.get("pid", -1)))


def error_text(exc: BaseException) -> str:
    """What runs.error holds: the exception and where it was raised."""
    if isinstance(exc, KeyboardInterrupt):
        return "interrupted (KeyboardInterrupt)"
    last = traceback.extract_tb(exc.__traceback__)[-1:] if exc.__traceback__ else []
    where = f" (at {last[0].filename}:{last[0].lineno})" if last else ""
    return f"{type(exc).__name__}: {exc}{where}"


# ---------------------------------------------------------------------------------------
# Lifecycle
# ---------------------------------------------------------------------------------------
def create_run(db_path, dataset_id: int, *, denoiser: dict, sampler: dict, seed: int, num_samples: int, top_k: int,
               mass: float, command: list[str] | None = None, kind: str = "pspc", network_id: int | None = None,
               details: dict | None = None, comparison: tuple[int, str] | None = None,
               timeout: float = database.DEFAULT_TIMEOUT) -> int:
    """Insert a run as 'running' (its configuration, versions, writer host and pid) with one
    samples row per sample (seed + i), in one transaction; returns the run id. kind: one of
    schema.RUN_KINDS; comparison: (comparison id, role) links the run to a comparison."""
    if kind not in models.RUN_KINDS:
        raise InternalError(f"unknown run kind {kind!r}; one of {', '.join(models.RUN_KINDS)}")
    with database.session(db_path, timeout=timeout) as s:
        run = models.Run(dataset_id=dataset_id, status="running", denoiser=denoiser, sampler=sampler, seed=seed,
                         num_samples=num_samples, top_k=top_k, mass_threshold=mass, versions=versions(),
                         command=list(command) if command else None, writer=writer(), created_at=utcnow(),
                         kind=kind, network_id=network_id, details=details)
        s.add(run)
        s.flush()
        run_id = int(run.id)
        s.add_all([models.Sample(run_id=run_id, sample_index=i, seed=seed + i) for i in range(num_samples)])
        if comparison is not None:
            s.add(models.ComparisonRun(comparison_id=int(comparison[0]), role=str(comparison[1]), run_id=run_id))
    return run_id


def mark_failed(db_path, run_id: int, exc: BaseException, timeout: float = database.DEFAULT_TIMEOUT) -> None:
    """Set 'failed' with the error text, in its own short transaction (never over 'complete').
    A failure to do so is added to `exc` as a note: the original error matters more."""
    try:
        with database.connect(db_path, timeout=timeout) as conn:
            conn.execute("UPDATE runs SET status = 'failed', error = ?, finished_at = ? "
                         "WHERE id = ? AND status = 'running'", [error_text(exc), utcnow(), run_id])
    except Exception as inner:  # noqa: BLE001 - the original error matters more; keep it
        exc.add_note(f"(could not mark run {run_id} failed: {inner})")


def reopen_run(db_path, run_id: int, num_samples: int, shape, *, timeout: float = database.DEFAULT_TIMEOUT):
    """Prepare an interrupted run to continue, in one transaction: delete the rows of every
    step not recorded for all samples, set it 'running' with this process as writer.
    Returns (done, z, denoised): the last fully recorded step (-1: none) and its stored z_t
    and D(z_t) [B, C, H, W] (None when done is -1)."""
    with database.connect(db_path, timeout=timeout) as conn:
        done = _recorded_steps(conn, run_id, num_samples)
        for table in STEP_TABLES:
            conn.execute(f"DELETE FROM {table} WHERE run_id = ? AND step > ?", [run_id, done])
        rows = None
        if done >= 0:
            rows = conn.execute("SELECT sample_index, z, denoised FROM steps WHERE run_id = ? AND step = ? "
                                "ORDER BY sample_index", [run_id, done]).fetchall()
        conn.execute("UPDATE runs SET status = 'running', error = NULL, finished_at = NULL, writer = ? WHERE id = ?",
                     [json.dumps(writer()), run_id])
    if rows is None:
        return done, None, None
    import torch

    return (done, torch.stack([from_blob(row[1], shape) for row in rows]),
            torch.stack([from_blob(row[2], shape) for row in rows]))


def complete_samples_only(db_path, run_id: int, final, seconds: float, *,
                          timeout: float = database.DEFAULT_TIMEOUT) -> None:
    """Store a samples-only run's final images [B, C, H, W] and complete it, in one transaction."""
    with database.connect(db_path, timeout=timeout) as conn:
        write_final_images(conn, run_id, final)
        conn.execute("UPDATE runs SET status = 'complete', finished_at = ?, timings = ?, error = NULL "
                     "WHERE id = ? AND status = 'running'",
                     [utcnow(), json.dumps({"total": seconds, "sampling": seconds, "recording": 0.0}), run_id])


# ---------------------------------------------------------------------------------------
# Listing
# ---------------------------------------------------------------------------------------
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
    for (run_id, ds_id, ds_name, status, denoiser, num_samples, sampler, steps, created, finished, timings, writer_,
         error, kind) in rows:
        denoiser, sampler, timings, writer_ = (json_value(v) for v in (denoiser, sampler, timings, writer_))
        shown = status
        if status == "running" and writer_ and writer_.get("host") == host and not pid_alive(int(writer_["pid"])):
            shown = f"running (writer pid {writer_['pid']} gone)"
        seconds = (timings or {}).get("total")
        if seconds is None and finished is not None and created is not None:
            seconds = (finished - created).total_seconds()
        out.append({"id": run_id, "dataset_id": ds_id, "dataset": ds_name, "status": shown,
                    "denoiser": denoiser.get("kind"), "samples": num_samples, "steps": steps,
                    "planned_steps": sampler.get("num_steps"), "created_at": created, "finished_at": finished,
                    "seconds": seconds, "error": error, "kind": kind})
    return out
