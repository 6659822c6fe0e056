"""Run rows: THE reader of a run joined with its dataset, and the run lifecycle.

A run's life: inserted as 'running' by `create_run` (full configuration, versions, writer
host and pid, one samples row per sample with its seed) -> one transaction per sampling
step (auditor.store.recorder) -> the last step's transaction stores the final images and
sets 'complete'. Any exception sets 'failed' with `error_text` (`mark_failed`, which waits
up to FAIL_WAIT seconds for a lock held by another process and, if even that fails, leaves
the reason in a note beside the store, `<store>.run-N.failed`). A writer killed outright, or
one that could not mark its run, leaves 'running': `fail_abandoned_runs` (at the start of
every new run, of every resume, and in the report service) marks failed each 'running' run
whose writer is known to be gone (same host; its pid free, a zombie, or reused by a process
started at another time; or another boot), with the note's reason or "writer gone".
`reopen_run` prepares a failed or orphaned run to continue from its last fully recorded step.

Readers call `read_run` instead of writing their own `runs JOIN datasets` query.
"""

from __future__ import annotations

import json
import os
import socket
import traceback
from pathlib import Path

from auditor.errors import InternalError, NotFoundError, UserError
from auditor.store import database, schema as models
from auditor.store.calibrations import VERDICTS
from auditor.store.database import json_value
from auditor.store.jobs import job_of_this_process
from auditor.store.recorder import from_blob, utcnow, write_final_images
from auditor.store.run_kinds import describe_run, stored_kinds
from pspc.record import SOURCE_TREE, package_version, versions as engine_versions

__all__ = ["DATASET_COLUMNS", "FAIL_WAIT", "RUN_COLUMNS", "check_sample_index", "complete_samples_only",
           "create_run", "error_text", "fail_abandoned_runs", "failure_note", "find_complete_run", "interruption",
           "load_run", "mark_failed", "pid_alive", "read_run", "remaining_steps", "reopen_run", "run_summaries",
           "verdict_name", "versions", "writer", "writer_alive", "writer_gone"]

FAIL_WAIT = 60.0  # seconds mark_failed waits for the lock at least (a step's write may have failed on it)

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


def _boot_id() -> str | None:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip() or None
    except OSError:
        return None


def _process_stat(pid: int) -> tuple[str, int] | None:
    """(state letter, start time in clock ticks since boot) of process `pid` from /proc, or None where unknown."""
    try:
        text = Path(f"/proc/{int(pid)}/stat").read_text()
        fields = text[text.rindex(")") + 2:].split()  # after "pid (comm) ": the name may hold spaces
        return fields[0], int(fields[19])
    except (OSError, ValueError, IndexError):
        return None


def writer() -> dict:
    """This process as a run's writer: host and pid, and (on Linux) the boot id and the process's
    start time, which tell the writer from a later process that got the same pid; and its torch
    and numba thread counts (attribution no longer depends on them, but a run says how it ran)."""
    import numba
    import torch

    record = {"host": socket.gethostname(), "pid": os.getpid(), "torch_threads": torch.get_num_threads(),
              "numba_threads": numba.get_num_threads()}
    boot, stat = _boot_id(), _process_stat(os.getpid())
    if boot:
        record["boot"] = boot
    if stat is not None:
        record["started"] = stat[1]
    return record


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


def _ended(record: dict) -> bool:
    """Whether the writer `record` names (a process of this host) has ended: its boot is over, its
    pid is free or a zombie, or the pid belongs to a process started at another time."""
    boot, now = record.get("boot"), _boot_id()
    if boot and now and boot != now:
        return True
    try:
        pid = int(record.get("pid", -1))
    except (TypeError, ValueError):
        return False  # not a record we can judge: never fail a run on it
    if pid <= 0:
        return False
    if not pid_alive(pid):
        return True
    stat = _process_stat(pid)
    if stat is None:  # no /proc: the pid exists, count it alive
        return False
    state, started = stat
    return state in ("Z", "X") or (record.get("started") is not None and record["started"] != started)


def _this_host(record: dict | None) -> bool:
    return bool(record) and isinstance(record, dict) and record.get("host") == socket.gethostname()


def writer_alive(record: dict | None) -> bool:
    """Whether a run's writer (host, pid, ...) is a live process on this host."""
    return _this_host(record) and not _ended(record)


def writer_gone(record: dict | None) -> bool:
    """Whether a run's writer is known to have ended: a process of this host that no longer runs
    (another host's writer cannot be checked: never gone)."""
    return _this_host(record) and _ended(record)


def interruption(exc: BaseException | None) -> KeyboardInterrupt | None:
    """The KeyboardInterrupt behind `exc`: itself, or the cause of the SystemError that a Ctrl-C
    (or a job's cancel) arriving inside numba's compiled code turns into ("CPUDispatcher(...)
    returned a result with an exception set"); None for any other error."""
    for _ in range(16):
        if isinstance(exc, KeyboardInterrupt):
            return exc
        if not isinstance(exc, SystemError):
            return None
        exc = exc.__cause__ or exc.__context__
    return None


def _where(frame: traceback.FrameSummary) -> str:
    """A frame's file and line, relative to the source tree (no server paths in runs.error)."""
    path = Path(frame.filename)
    try:
        shown = path.resolve().relative_to(SOURCE_TREE).as_posix()
    except (OSError, ValueError):
        shown = path.name
    return f" (at {shown}:{frame.lineno})"


def error_text(exc: BaseException) -> str:
    """What runs.error holds: the exception and where it was raised."""
    if interruption(exc) is not None:
        return "interrupted (KeyboardInterrupt)"
    last = traceback.extract_tb(exc.__traceback__)[-1:] if exc.__traceback__ else []
    return f"{type(exc).__name__}: {exc}{_where(last[0]) if last else ''}"


# ---------------------------------------------------------------------------------------
# Lifecycle
# ---------------------------------------------------------------------------------------
def create_run(db_path, dataset_id: int, *, denoiser: dict, sampler: dict, seed: int, num_samples: int, top_k: int,
               mass: float, command: list[str] | None = None, kind: str = "pspc", network_id: int | None = None,
               details: dict | None = None, comparison: tuple[int, str] | None = None, job_id: int | None = None,
               timeout: float = database.DEFAULT_TIMEOUT) -> int:
    """Insert a run as 'running' (its configuration, versions, writer host and pid) with one
    samples row per sample (seed + i), in one transaction; returns the run id. kind: one of
    schema.RUN_KINDS; comparison: (comparison id, role) links the run to a comparison; job_id:
    the service's job this process runs (default: auditor.store.jobs.job_of_this_process, so
    every run kind links itself the same way), whose run_id is set in the same transaction if
    it has none yet: the first run a job creates is its run (a comparison's network-explained
    run), after a restart too. Runs abandoned by writers that are gone are marked failed
    first (`fail_abandoned_runs`)."""
    if kind not in models.RUN_KINDS:
        raise InternalError(f"unknown run kind {kind!r}; one of {', '.join(models.RUN_KINDS)}")
    job_id = job_of_this_process() if job_id is None else job_id
    fail_abandoned_runs(db_path, timeout=timeout)
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
        if job_id is not None:
            from sqlalchemy import update

            s.execute(update(models.Job).where(models.Job.id == int(job_id), models.Job.run_id.is_(None))
                      .values(run_id=run_id))
    return run_id


def failure_note(db_path, run_id: int) -> Path:
    """Where a writer that could not mark its run failed leaves the reason: `<store>.run-N.failed`."""
    path = Path(db_path)
    return path.with_name(f"{path.name}.run-{int(run_id)}.failed")


def mark_failed(db_path, run_id: int, exc: BaseException, timeout: float = database.DEFAULT_TIMEOUT,
                wait: float | None = None) -> None:
    """Set 'failed' with the error text, in its own short transaction (never over 'complete').

    Waits for the lock up to max(timeout, `wait`) seconds (default FAIL_WAIT): the error may be
    that a step's write found the store locked. If even that fails (or a second Ctrl-C stops
    the wait), the reason is left in `failure_note` for `fail_abandoned_runs` to record once
    this process is gone, and the failure is added to `exc` as a note: the original error
    matters more."""
    text = error_text(exc)
    try:
        with database.connect(db_path, timeout=max(timeout, FAIL_WAIT if wait is None else wait)) as conn:
            conn.execute("UPDATE runs SET status = 'failed', error = ?, finished_at = ? "
                         "WHERE id = ? AND status = 'running'", [text, utcnow(), run_id])
    except BaseException as inner:  # noqa: BLE001 - KeyboardInterrupt too: the original error matters more
        try:
            failure_note(db_path, run_id).write_text(json.dumps({"pid": os.getpid(), "error": text}))
        except OSError:
            pass
        exc.add_note(f"(could not mark run {run_id} failed: {inner})")


def _abandoned_reason(db_path, run_id: int, record: dict, steps: int, planned) -> str:
    """The reason the writer left in its failure note, else that it is gone, with the steps recorded."""
    note = failure_note(db_path, run_id)
    try:
        left = json.loads(note.read_text())
        if left.get("pid") == record.get("pid") and left.get("error"):
            return f"{left['error']} (recorded after the writer exited)"
    except (OSError, ValueError, AttributeError):
        pass
    return (f"writer gone: process {record.get('pid')} on {record.get('host')} ended without finishing the run "
            f"(killed, or it lost the store lock), after {steps} of {planned or '?'} steps")


def fail_abandoned_runs(db_path, *, timeout: float = database.DEFAULT_TIMEOUT) -> list[int]:
    """Mark failed every 'running' run whose writer is known to be gone (`writer_gone`), with the
    reason its failure note gives, else "writer gone ..."; returns their ids. A run whose writer
    may still run (alive, another host, no record) is left alone; so is one resumed meanwhile
    (its writer changed). Such runs stay resumable (`reopen_run`)."""
    with database.connect(db_path, read_only=True, timeout=timeout) as conn:
        rows = conn.execute("SELECT id, CAST(writer AS VARCHAR), num_samples, "
                            "CAST(json_extract(sampler, '$.num_steps') AS INTEGER) FROM runs "
                            "WHERE status = 'running'").fetchall()
    gone = [row for row in rows if writer_gone(json_value(row[1]))]
    if not gone:
        return []
    failed = []
    with database.connect(db_path, timeout=timeout) as conn:
        for run_id, record, num_samples, planned in gone:
            steps = _recorded_steps(conn, run_id, num_samples) + 1
            reason = _abandoned_reason(db_path, run_id, json_value(record), steps, planned)
            changed = conn.execute("UPDATE runs SET status = 'failed', error = ?, finished_at = ? WHERE id = ? "
                                   "AND status = 'running' AND CAST(writer AS VARCHAR) = ?",
                                   [reason, utcnow(), run_id, record]).fetchall()
            if changed and changed[0][0]:
                failed.append(int(run_id))
    for run_id in failed:
        failure_note(db_path, run_id).unlink(missing_ok=True)
    return failed


def reopen_run(db_path, run_id: int, num_samples: int, shape, *, timeout: float = database.DEFAULT_TIMEOUT):
    """Prepare an interrupted run to continue, in one transaction: delete the rows of every
    step not recorded for all samples, set it 'running' with this process as writer.
    Returns (done, z, denoised): the last fully recorded step (-1: none) and its stored z_t
    and D(z_t) [B, C, H, W] (None when done is -1). Abandoned runs are marked failed first, and
    the run's failure note, if any, is removed (it no longer applies)."""
    fail_abandoned_runs(db_path, timeout=timeout)
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
    failure_note(db_path, run_id).unlink(missing_ok=True)
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
def verdict_name(verdict: str) -> str:
    """A verdict as stored ('partial copy') from it or its option spelling ('partial-copy');
    UserError for anything else."""
    stored = verdict.replace("-", " ")
    if stored not in VERDICTS:
        raise UserError(f"unknown verdict {verdict!r}; expected one of "
                        f"{', '.join(v.replace(' ', '-') for v in VERDICTS)}")
    return stored


def run_summaries(db_path, dataset_id: int | None = None, *, kind: str | None = None, verdict: str | None = None,
                  timeout: float = database.DEFAULT_TIMEOUT) -> list[dict]:
    """One dict per run (newest first): id, dataset_id, dataset (name), status, denoiser
    (kind), samples, steps (recorded / planned), created_at, finished_at, seconds, error, and
    what its kind makes it (auditor.store.run_kinds.describe_run: kind, kind_label,
    recorded_kind, output, generator, explainer, method, network, audited_image). kind: only
    runs of this public kind ('sample', 'network-explained', 'audit'; UserError for others).
    verdict: only runs with at least one image of that copy verdict (copy_verdicts; 'copy',
    'partial copy' or 'partial-copy', 'no copy found', 'inconclusive'; UserError for others).
    A 'running' run whose writer is gone (`writer_gone`) shows as "running (writer pid N
    gone)" (reading marks nothing). Unknown dataset_id -> NotFoundError."""
    chosen = None if kind is None else list(stored_kinds(kind))
    verdict = None if verdict is None else verdict_name(verdict)
    database.require_current(db_path, timeout)
    with database.connect(db_path, read_only=True, timeout=timeout) as conn:
        if dataset_id is not None and not conn.execute("SELECT 1 FROM datasets WHERE id = ?",
                                                       [int(dataset_id)]).fetchone():
            raise NotFoundError(f"{db_path}: no dataset {dataset_id}")
        rows = conn.execute("""
            SELECT r.id, r.dataset_id, d.name, r.status, r.denoiser, r.num_samples, r.sampler,
                   coalesce(s.steps, 0), r.created_at, r.finished_at, r.timings, r.writer, r.error,
                   coalesce(r.kind, 'pspc'), r.details
            FROM runs r JOIN datasets d ON d.id = r.dataset_id
            LEFT JOIN (SELECT run_id, count(DISTINCT step) AS steps FROM steps GROUP BY run_id) s ON s.run_id = r.id
            WHERE (? IS NULL OR r.dataset_id = ?)
              AND (?::VARCHAR[] IS NULL OR list_contains(?::VARCHAR[], coalesce(r.kind, 'pspc')))
              AND (?::VARCHAR IS NULL OR EXISTS (SELECT 1 FROM copy_verdicts v WHERE v.run_id = r.id
                                                 AND v.verdict = ?::VARCHAR))
            ORDER BY r.id DESC""", [dataset_id, dataset_id, chosen, chosen, verdict, verdict]).fetchall()
    out = []
    for (run_id, ds_id, ds_name, status, denoiser, num_samples, sampler, steps, created, finished, timings, writer_,
         error, stored, details) in rows:
        denoiser, sampler, timings, writer_, details = (json_value(v) for v in (denoiser, sampler, timings, writer_,
                                                                                details))
        shown = status
        if status == "running" and writer_gone(writer_):
            shown = f"running (writer pid {writer_['pid']} gone)"
        seconds = (timings or {}).get("total")
        if seconds is None and finished is not None and created is not None:
            seconds = (finished - created).total_seconds()
        out.append({"id": run_id, "dataset_id": ds_id, "dataset": ds_name, "status": shown,
                    "denoiser": denoiser.get("kind"), "samples": num_samples, "steps": steps,
                    "planned_steps": sampler.get("num_steps"), "created_at": created, "finished_at": finished,
                    "seconds": seconds, "error": error, **describe_run(stored, details, denoiser, sampler)})
    return out
