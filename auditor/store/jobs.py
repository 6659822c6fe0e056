"""Job rows (table ``jobs``): work submitted to the report service, run by a subprocess.

A job goes queued -> running -> complete | failed. auditor.service.jobs.JobRunner starts
and watches the subprocesses; this module reads and writes the rows, and finds the run a
job's subprocess records (by the writer host and pid that `auditor sample` stores in
``runs.writer``). Rows are dicts with the columns of JOB_COLUMNS, ``request`` decoded.
"""

from __future__ import annotations

import os
from datetime import datetime, timedelta

from auditor.errors import InternalError, NotFoundError, StoreError
from auditor.store import database
from auditor.store.database import json_value
from auditor.store.recorder import utcnow
from auditor.store.schema import JOB_STATUSES

__all__ = ["JOB_COLUMNS", "JOB_STATUSES", "finish_job", "get_job", "insert_job", "job_run", "list_jobs",
           "mark_running", "oldest_queued", "run_progress", "running_jobs", "set_job_run"]

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


def job_run(db_path: str | os.PathLike, pid: int, host: str, since: datetime,
            timeout: float = database.DEFAULT_TIMEOUT) -> int | None:
    """The newest run written by process `pid` on `host` and created after `since` (less a second), or None."""
    rows = _read(db_path, timeout, "SELECT id FROM runs WHERE CAST(json_extract(writer, '$.pid') AS BIGINT) = ? "
                 "AND json_extract_string(writer, '$.host') = ? AND created_at >= ? ORDER BY id DESC LIMIT 1",
                 [int(pid), host, since - timedelta(seconds=1)])
    return int(rows[0][0]) if rows else None


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


def set_job_run(db_path: str | os.PathLike, job_id: int, run_id: int,
                timeout: float = database.DEFAULT_TIMEOUT) -> None:
    """Record the job's run (once: a run id already set is kept)."""
    _write(db_path, timeout, "UPDATE jobs SET run_id = ? WHERE id = ? AND run_id IS NULL", [int(run_id), int(job_id)])


def finish_job(db_path: str | os.PathLike, job_id: int, status: str, error: str | None, *, run_id: int | None = None,
               only_if: str | None = None, timeout: float = database.DEFAULT_TIMEOUT) -> None:
    """Set the job's final `status` and `error`, now, and its run id unless it has one.
    `only_if`: change the row only while its status is that (e.g. 'queued' for a cancel)."""
    if status not in ("complete", "failed"):
        raise InternalError(f"a job finishes complete or failed, not {status!r}")
    _write(db_path, timeout, "UPDATE jobs SET status = ?, error = ?, run_id = coalesce(run_id, ?), finished_at = ? "
           "WHERE id = ? AND (? IS NULL OR status = ?)",
           [status, error, run_id, utcnow(), int(job_id), only_if, only_if])
