"""Job rows (table ``jobs``): work submitted to the report service, run by a subprocess.

A job goes queued -> running -> complete | failed | cancelled. auditor.service.jobs.JobRunner
starts and watches the subprocesses; this module reads and writes the rows. The subprocess
learns its job id from the environment (JOB_ENV, `job_of_this_process`) and
auditor.store.runs.create_run sets the job's run_id in the transaction that creates the run,
so the service knows the run exactly (after a restart too). A cancel of a running job is
recorded in its row (`request_cancel`) before the subprocess is signalled. Rows are dicts
with the columns of JOB_COLUMNS, ``request`` decoded.
"""

from __future__ import annotations

import os

from auditor.errors import InternalError, NotFoundError, StoreError
from auditor.store import database
from auditor.store.database import json_value
from auditor.store.recorder import utcnow
from auditor.store.schema import JOB_STATUSES

__all__ = ["CANCEL_REQUESTED", "FINISHED", "JOB_COLUMNS", "JOB_ENV", "JOB_STATUSES", "finish_job", "get_job", "insert_job",
           "job_of_this_process", "list_jobs", "mark_running", "oldest_queued", "request_cancel", "run_progress",
           "running_jobs"]

JOB_ENV = "AUDITOR_JOB_ID"  # set by the service in a job's subprocess: the job it runs
FINISHED = ("complete", "failed", "cancelled")
CANCEL_REQUESTED = "cancel requested: waiting for its process to stop"  # a running job's error once cancelled

JOB_COLUMNS = ("id", "kind", "status", "request", "run_id", "pid", "log_path", "created_at", "started_at",
               "finished_at", "error")
_SELECT = f"SELECT {', '.join(JOB_COLUMNS)} FROM jobs"


def _row(values) -> dict:
    job = dict(zip(JOB_COLUMNS, values))
    job["request"] = json_value(job["request"])
    return job


def _read(db_path, timeout: float, sql: str, params: list) -> list[tuple]:
    with database.connect(db_path, read_only=True, timeout=timeout) as conn:
        return conn.execute(sql, params).fetchall()


def _write(db_path, timeout: float, sql: str, params: list) -> list[tuple]:
    with database.connect(db_path, timeout=timeout) as conn:
        return conn.execute(sql, params).fetchall()


# ---------------------------------------------------------------------------------------
# Reading
# ---------------------------------------------------------------------------------------
def get_job(db_path: str | os.PathLike, job_id: int, timeout: float = database.DEFAULT_TIMEOUT) -> dict:
    """The job row; NotFoundError for an unknown id."""
    rows = _read(db_path, timeout, f"{_SELECT} WHERE id = ?", [int(job_id)])
    if not rows:
        raise NotFoundError(f"{db_path}: no job {job_id}")
    return _row(rows[0])


def list_jobs(db_path: str | os.PathLike, *, status: str | None = None, limit: int = 50, offset: int = 0,
              timeout: float = database.DEFAULT_TIMEOUT) -> tuple[list[dict], int]:
    """Jobs, newest first, and how many there are in all (for pagination)."""
    if status is not None and status not in JOB_STATUSES:
        raise StoreError(f"unknown job status {status!r}; choose from {', '.join(JOB_STATUSES)}")
    with database.connect(db_path, read_only=True, timeout=timeout) as conn:
        total = conn.execute("SELECT count(*) FROM jobs WHERE ? IS NULL OR status = ?", [status, status]).fetchone()[0]
        rows = conn.execute(f"{_SELECT} WHERE ? IS NULL OR status = ? ORDER BY id DESC LIMIT ? OFFSET ?",
                            [status, status, int(limit), int(offset)]).fetchall()
    return [_row(r) for r in rows], int(total)


def oldest_queued(db_path: str | os.PathLike, timeout: float = database.DEFAULT_TIMEOUT) -> dict | None:
    """The queued job submitted first, or None."""
    rows = _read(db_path, timeout, f"{_SELECT} WHERE status = 'queued' ORDER BY id LIMIT 1", [])
    return _row(rows[0]) if rows else None


def running_jobs(db_path: str | os.PathLike, timeout: float = database.DEFAULT_TIMEOUT) -> list[dict]:
    """Every job marked running."""
    return [_row(r) for r in _read(db_path, timeout, f"{_SELECT} WHERE status = 'running'", [])]


def run_progress(db_path: str | os.PathLike, run_id: int,
                 timeout: float = database.DEFAULT_TIMEOUT) -> tuple[str, int | None, int] | None:
    """(status, planned steps, steps recorded so far) of run `run_id`, or None if it does not exist."""
    rows = _read(db_path, timeout, "SELECT r.status, CAST(json_extract(r.sampler, '$.num_steps') AS INTEGER), "
                 "(SELECT count(DISTINCT step) FROM steps s WHERE s.run_id = r.id) FROM runs r WHERE r.id = ?",
                 [int(run_id)])
    return (rows[0][0], rows[0][1], int(rows[0][2])) if rows else None


def job_of_this_process() -> int | None:
    """The job this process runs for the service (JOB_ENV), or None outside a job."""
    value = os.environ.get(JOB_ENV, "")
    return int(value) if value.isdigit() and int(value) > 0 else None


# ---------------------------------------------------------------------------------------
# Writing
# ---------------------------------------------------------------------------------------
def insert_job(db_path: str | os.PathLike, kind: str, request_json: str,
               timeout: float = database.DEFAULT_TIMEOUT) -> int:
    """A new queued job with its validated request (JSON text); returns its id."""
    rows = _write(db_path, timeout, "INSERT INTO jobs (kind, status, request, created_at) VALUES (?, 'queued', ?, ?) "
                  "RETURNING id", [kind, request_json, utcnow()])
    return int(rows[0][0])


def mark_running(db_path: str | os.PathLike, job_id: int, pid: int, log_path: str,
                 timeout: float = database.DEFAULT_TIMEOUT) -> None:
    _write(db_path, timeout, "UPDATE jobs SET status = 'running', pid = ?, log_path = ?, started_at = ? WHERE id = ?",
           [int(pid), str(log_path), utcnow(), int(job_id)])


def request_cancel(db_path: str | os.PathLike, job_id: int, timeout: float = database.DEFAULT_TIMEOUT) -> None:
    """Record that a running job was cancelled (its error says so until it has stopped), so that
    it ends 'cancelled' even if the service restarts meanwhile."""
    _write(db_path, timeout, "UPDATE jobs SET error = ? WHERE id = ? AND status = 'running'",
           [CANCEL_REQUESTED, int(job_id)])


def finish_job(db_path: str | os.PathLike, job_id: int, status: str, error: str | None, *, run_id: int | None = None,
               only_if: str | None = None, timeout: float = database.DEFAULT_TIMEOUT) -> None:
    """Set the job's final `status` and `error`, now, and its run id unless it has one.
    `only_if`: change the row only while its status is that (e.g. 'queued' for a cancel)."""
    if status not in FINISHED:
        raise InternalError(f"a job finishes {', '.join(FINISHED)}, not {status!r}")
    _write(db_path, timeout, "UPDATE jobs SET status = ?, error = ?, run_id = coalesce(run_id, ?), finished_at = ? "
           "WHERE id = ? AND (? IS NULL OR status = ?)",
           [status, error, run_id, utcnow(), int(job_id), only_if, only_if])
