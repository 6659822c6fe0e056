"""Jobs submitted to the report service (sampling, comparisons, audits), run as subprocesses.

A job is a row in `jobs` (status queued -> running -> complete | failed | cancelled) and,
once started, a subprocess ``python -m auditor.cli KIND-COMMAND ...`` (`auditor sample
--dataset ID ...`, `auditor compare ...`, `auditor audit IMAGE ...`: the kind's request says
which, auditor.service.job_kinds) that records its runs exactly as the command line would
(so a run's stored `command` reproduces it), with stdout and stderr in its own log file under
the service's jobs folder. The writer is therefore another process: DuckDB lets one process
write the file, and the service keeps reading between the job's short transactions.

The service gives the subprocess its job id in the environment (auditor.store.jobs.JOB_ENV);
the transaction that creates the job's first run (auditor.store.runs.create_run, for every
run kind) also sets the job's run_id, so the job knows its run exactly, after a service
restart too (a comparison's: its network-explained run). A watcher thread per job waits for
the exit, marks the run failed if the subprocess left it 'running' (auditor.store.runs.
fail_abandoned_runs: it lost the store lock, or was killed) and sets the job complete (its
run complete), cancelled (POST .../cancel: the row records the request, so it holds over a
restart; the subprocess gets SIGINT and marks its run failed) or failed. At most
`max_running_jobs` run at once; the others wait as 'queued'. Jobs survive a service
restart: `JobRunner.recover` adopts those whose subprocess still runs and finishes those
whose pid is gone by their run's state (a failed sampling run can be continued with
`auditor sample --resume`).

What API clients see of a job holds no server paths and no tracebacks (`public_text`): the
error says what happened in words, and the log is served with every absolute path cut to
its last part and each traceback replaced by one line (the file on the server keeps all).

Requests are validated by their kind's model (bounds; the workflow's options, as the CLI
builds them) and against the store and the service's folders before the job is queued; the
subprocess reads the training images from the store itself (`--dataset`), never a path from
the request (uploads are kept by sha256 under the jobs folder: auditor.service.uploads).
"""

from __future__ import annotations

import atexit
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from auditor.errors import StoreError, without_folders
from auditor.service.job_kinds import (
    JOB_KINDS, MAX_SAMPLES, MAX_STEPS, MAX_TOP_K, JobFolders, JobRequest, SampleJobRequest, job_request
)
from auditor.service.uploads import store_upload, upload_path
from auditor.store import catalog, datasets
from auditor.store import jobs as job_rows
from auditor.store.jobs import CANCEL_REQUESTED, FINISHED, JOB_ENV, JOB_STATUSES
from auditor.store.runs import fail_abandoned_runs

__all__ = ["JOB_STATUSES", "JobRunner", "MAX_SAMPLES", "MAX_STEPS", "MAX_TOP_K", "SampleJobRequest",
           "job_command", "job_outcome", "lower_priority", "public_text"]

PACKAGE_ROOT = Path(__file__).resolve().parents[2]  # holds the auditor package: the checkout, or site-packages


def job_command(request: JobRequest, db_path, lock_timeout: float, python: str | None = None, *,
                folders: JobFolders | None = None) -> list[str]:
    """The subprocess's argv: `auditor` with the store and the lock timeout, then the request's
    command with every option spelled out. folders: where uploads and networks are (default:
    beside the store, and ./checkpoints)."""
    db_path = Path(db_path).resolve()
    folders = folders or JobFolders(db_path.parent / f"{db_path.name}.jobs", Path("checkpoints"))
    return [python or sys.executable, "-m", "auditor.cli", "--db", str(db_path), "--lock-timeout",
            f"{lock_timeout:g}", *request.cli_args(folders)]


def _pid_running_job(pid: int | None, command: str = "sample") -> bool:
    """Whether `pid` is alive on this host and is an `auditor.cli COMMAND` process (not a reused pid)."""
    if not pid:
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except OSError:  # exists, not ours to signal
        pass
    cmdline = Path(f"/proc/{int(pid)}/cmdline")
    if cmdline.exists():
        try:
            text = cmdline.read_bytes()
        except OSError:
            return False
        if not text:  # a zombie: exited, not yet reaped
            return False
        return b"auditor.cli" in text.split(b"\0") and command.encode() in text.split(b"\0")
    return True


def lower_priority(pid: int, niceness: int) -> None:
    """Run the job `niceness` steps nicer than the service, so that serving reports keeps the
    CPU when both want it. Set right after the start, before the job creates its threads
    (torch, numba), which inherit it."""
    if niceness <= 0:
        return
    try:
        os.setpriority(os.PRIO_PROCESS, pid, min(19, os.getpriority(os.PRIO_PROCESS, 0) + niceness))
    except (OSError, AttributeError):  # not permitted, or not a POSIX system: run at the same priority
        pass




def _log_tail(path: str | os.PathLike | None, max_bytes: int = 4000) -> str:
    if not path:
        return ""
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            size = f.tell()
            f.seek(max(0, size - max_bytes))
            text = f.read().decode("utf-8", "replace")
    except OSError:
        return ""
    # tqdm redraws its bar with carriage returns: keep the last state of each line
    return "\n".join(line.split("\r")[-1] for line in text.splitlines())


_TRACEBACK_STARTS = ("Traceback (most recent call last):", "During handling of the above exception",
                     "The above exception was the direct cause")
_FRAME = re.compile(r'^\s+File "[^"]*", line \d+')
TRACEBACK_OMITTED = "(traceback omitted: the job's log file on the server has it)"


def public_text(text: str) -> str:
    """`text` (a job's log or error) as API clients may see it: each traceback replaced by one
    line (the exception's own line after it is kept) and every absolute path cut to its last
    part, so that no server path (store, checkout, virtual environment) leaves the server."""
    out, in_traceback = [], False
    for line in text.splitlines():
        starts = line.startswith(_TRACEBACK_STARTS) or _FRAME.match(line) is not None
        if starts or (in_traceback and (not line.strip() or line[0].isspace())):
            if not in_traceback and TRACEBACK_OMITTED not in out[-2:]:
                out.append(TRACEBACK_OMITTED)
            in_traceback = True
            continue
        in_traceback = False
        out.append(without_folders(line))
    return "\n".join(out)


def job_outcome(job: dict, code: int | None, run: dict, log: str, *, cancelled: bool = False,
                restarted: bool = False) -> tuple[str, str | None]:
    """(status, error) of a job whose subprocess has ended: complete when its run is complete (the
    exit status 0, or unknown for a job adopted after a restart), cancelled when it was
    cancelled, else failed. `code`: the exit status (None: unknown); `run`: JobRunner.progress;
    `log`: the end of its log. The error names no server path and holds no traceback."""
    run_id, status = job.get("run_id"), run.get("run_status")
    if status == "complete" and code in (0, None):
        return "complete", None
    steps = f"{run.get('steps_recorded', 0)} of {run.get('steps_planned') or '?'} steps"
    resume = _request(job).resume_hint(run_id) if status == "failed" and _request(job) is not None else ""
    if cancelled:
        if run_id is None:
            return "cancelled", "cancelled before its run was created"
        return "cancelled", f"cancelled after {steps}: run {run_id} is {status}{resume}"
    if restarted:
        why = f"the service stopped while the job ran, and its process (pid {job.get('pid')}) is gone"
    elif code is None:
        why = "its process is gone"
    else:
        why = f"killed by signal {-code}" if code < 0 else f"exit status {code}"
    what = "no run was created" if run_id is None else f"run {run_id} is {status or 'missing'} after {steps}{resume}"
    lines = [line for line in public_text(log).splitlines()
             if line.strip() and not line.startswith("$ ") and line != TRACEBACK_OMITTED]
    return "failed", f"{why}; {what}" + "".join("\n" + line for line in lines[-5:])


def _request(job: dict) -> JobRequest | None:
    """The job's request as its kind's model (None for a row no model accepts any more)."""
    try:
        return job_request({"kind": "sample", **job})
    except (ValueError, KeyError):
        return None


def _command(job: dict) -> str:
    kind = JOB_KINDS.get(job.get("kind") or "sample")
    return kind.request.command if kind else ""


_STOPPING = threading.Event()  # set at interpreter exit: watchers end (jobs go on; `recover` adopts them)


def _stop_watchers() -> None:
    _STOPPING.set()
    for thread in threading.enumerate():
        if thread.name.startswith("job-") and thread is not threading.current_thread():
            thread.join(timeout=2)


atexit.register(_stop_watchers)


class JobRunner:
    """Starts, watches and reports the service's jobs (one instance per app)."""

    def __init__(self, settings):
        self.settings = settings
        self.db_path = Path(settings.db_path)
        self.timeout = settings.lock_timeout
        self.folders = JobFolders(Path(settings.jobs_dir), Path(settings.networks_dir).resolve())
        self._lock = threading.RLock()
        self._procs: dict[int, subprocess.Popen] = {}
        self._watchers: dict[int, threading.Thread] = {}

    # -- store access ------------------------------------------------------------------
    def get(self, job_id: int) -> dict:
        """The job row as a dict; NotFoundError for an unknown id."""
        return job_rows.get_job(self.db_path, job_id, self.timeout)

    def list(self, *, status: str | None = None, limit: int = 50, offset: int = 0) -> tuple[list[dict], int]:
        """Jobs, newest first, and how many there are in all (for pagination)."""
        return job_rows.list_jobs(self.db_path, status=status, limit=limit, offset=offset, timeout=self.timeout)

    def progress(self, job: dict) -> dict:
        """Steps recorded so far (all samples of a step are committed together) of the job's run
        (a comparison's: its network-explained run, the first it records)."""
        request = _request(job)
        planned = request.planned_steps() if request is not None else job["request"].get("steps")
        out = {"steps_recorded": 0, "steps_planned": planned, "run_status": None}
        if job.get("run_id") is None:
            return out
        found = job_rows.run_progress(self.db_path, job["run_id"], self.timeout)
        if found is not None:
            status, steps_planned, recorded = found
            out.update(run_status=status, steps_planned=steps_planned or planned, steps_recorded=recorded)
        return out

    def log_tail(self, job_id: int, max_bytes: int = 4000) -> str:
        """The end of the job's log as API clients see it (`public_text`: no paths, no tracebacks)."""
        return public_text(_log_tail(self.get(job_id)["log_path"], max_bytes))

    # -- submitting --------------------------------------------------------------------
    def submit(self, request: JobRequest) -> dict:
        """Validate against the store and the folders (`check`), insert the job (queued) and start
        it if a slot is free."""
        self.check(request)
        return self._queue(request)

    def check(self, request: JobRequest) -> None:
        """The checks that need the store (the dataset, with its pixels) and the folders (request.check)."""
        dataset = datasets.find_dataset(self.db_path, int(request.dataset_id), timeout=self.timeout)
        missing = catalog.images_without_pixels(self.db_path, request.dataset_id, self.timeout)
        if missing:
            raise StoreError(f"dataset {request.dataset_id} has no stored pixels for {missing} images (ingested "
                             "before schema revision 0003); run `auditor ingest` on the same data again")
        request.check(dataset, self.folders)
        request.check_store(self.db_path, self.timeout)

    def submit_upload(self, kind: str, form, files: dict[str, tuple[bytes, str | None]]) -> dict:
        """Submit a job of a kind whose request comes with files (an audit's image): each of
        `files` (form field -> (bytes, client file name)) is type-checked and kept under the
        jobs folder by sha256 (auditor.service.uploads), the request records it, then as
        `submit`. A file this upload added is removed again when the request is refused."""
        added = []
        try:
            records = {}
            for field, (data, name) in files.items():
                records[field], created = store_upload(self.folders.jobs_dir, data, name)
                if created:
                    added.append(upload_path(self.folders.jobs_dir, records[field]))
            request = JOB_KINDS[kind].request.model_validate({**form.model_dump(exclude=set(files)), **records})
            self.check(request)
        except BaseException:
            for path in added:
                path.unlink(missing_ok=True)
            raise
        return self._queue(request)

    def _queue(self, request: JobRequest) -> dict:
        job_id = job_rows.insert_job(self.db_path, request.kind, request.model_dump_json(), self.timeout)
        self._start_queued()
        return self.get(job_id)

    def _running_count(self) -> int:
        with self._lock:
            return sum(1 for p in self._procs.values() if p is None or p.poll() is None)

    def _start_queued(self) -> None:
        """Start the oldest queued jobs while fewer than max_running_jobs run."""
        with self._lock:
            while self._running_count() < int(self.settings.max_running_jobs):
                job = job_rows.oldest_queued(self.db_path, self.timeout)
                if job is None:
                    return
                self._start(job)

    def _start(self, job: dict) -> None:
        job_id = int(job["id"])
        jobs_dir = self.folders.jobs_dir
        log_path = jobs_dir / f"job-{job_id}.log"
        try:
            argv = job_command(job_request(job), self.db_path, self.settings.job_lock_timeout, self.settings.python,
                               folders=self.folders)
        except (ValueError, KeyError) as exc:  # a kind or a network gone since it was queued
            job_rows.finish_job(self.db_path, job_id, "failed", public_text(f"could not start the job: {exc}"),
                                timeout=self.timeout)
            return
        env = dict(os.environ, PYTHONUNBUFFERED="1", **{JOB_ENV: str(job_id)})  # the run links itself to the job
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(PACKAGE_ROOT), env.get("PYTHONPATH")) if p)
        try:
            jobs_dir.mkdir(parents=True, exist_ok=True)
            with open(log_path, "wb") as log:
                log.write(("$ " + " ".join(argv[1:]) + "\n").encode())
                log.flush()
                proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                        env=env, cwd=str(PACKAGE_ROOT), start_new_session=True)
        except OSError as exc:
            job_rows.finish_job(self.db_path, job_id, "failed", public_text(f"could not start the job: {exc}"),
                                timeout=self.timeout)
            return
        lower_priority(proc.pid, int(getattr(self.settings, "job_niceness", 0)))
        self._procs[job_id] = proc
        job_rows.mark_running(self.db_path, job_id, proc.pid, str(log_path), self.timeout)
        self._watch(job_id, proc.pid, proc)

    def _watch(self, job_id: int, pid: int, proc: subprocess.Popen | None, command: str = "sample") -> None:
        watcher = threading.Thread(target=self._watcher, args=(job_id, pid, proc, command), name=f"job-{job_id}",
                                   daemon=True)
        self._watchers[job_id] = watcher
        watcher.start()

    # -- watching ----------------------------------------------------------------------
    def _watcher(self, job_id: int, pid: int, proc: subprocess.Popen | None, command: str) -> None:
        while True:
            if _STOPPING.is_set():
                return
            if proc is not None:
                try:
                    code = proc.wait(timeout=0.5)
                    break
                except subprocess.TimeoutExpired:
                    pass
            else:  # adopted after a restart: not our child, poll the pid
                if not _pid_running_job(pid, command):
                    code = None
                    break
                time.sleep(0.5)
        self._finish(job_id, code)
        with self._lock:
            self._procs.pop(job_id, None)
            self._watchers.pop(job_id, None)
        try:
            self._start_queued()
        except StoreError:
            pass

    def _finish(self, job_id: int, code: int | None, restarted: bool = False) -> None:
        """Record the outcome of a job whose subprocess has ended (`job_outcome`), after marking
        its run failed if the subprocess left it 'running' (it lost the store lock, or was killed)."""
        for attempt in range(20):  # the store may be busy; the outcome must not be lost
            try:
                fail_abandoned_runs(self.db_path, timeout=self.timeout)
                job = self.get(job_id)
                status, error = job_outcome(job, code, self.progress(job), _log_tail(job["log_path"]),
                                            cancelled=job["error"] == CANCEL_REQUESTED, restarted=restarted)
                job_rows.finish_job(self.db_path, job_id, status, error, only_if="running", timeout=self.timeout)
                return
            except StoreError:
                time.sleep(min(0.1 * 2 ** attempt, 5.0))

    # -- restart and cancel ------------------------------------------------------------
    def recover(self) -> None:
        """At service start: adopt running jobs whose subprocess still runs, finish those whose pid
        is gone by their run's state, and start queued jobs."""
        for job in job_rows.running_jobs(self.db_path, self.timeout):
            if job["id"] in self._procs:
                continue
            if _pid_running_job(job["pid"], _command(job)):
                with self._lock:
                    self._procs[job["id"]] = None  # counts as running
                self._watch(job["id"], job["pid"], None, _command(job))
                continue
            self._finish(int(job["id"]), None, restarted=True)
        self._start_queued()

    def cancel(self, job_id: int) -> dict:
        """Cancel a queued job, or interrupt a running one (its run is marked failed and can be
        resumed; the job ends 'cancelled' once its subprocess has stopped)."""
        job = self.get(job_id)
        if job["status"] == "queued":
            job_rows.finish_job(self.db_path, job_id, "cancelled", "cancelled before it started", only_if="queued",
                                timeout=self.timeout)
        elif job["status"] == "running":
            job_rows.request_cancel(self.db_path, job_id, self.timeout)  # kept over a service restart
            if _pid_running_job(job["pid"], _command(job)):
                os.kill(int(job["pid"]), signal.SIGINT)  # the CLI marks the run failed and exits
        else:
            raise StoreError(f"job {job_id} is already {job['status']}")
        return self.get(job_id)

    def wait(self, job_id: int, timeout: float) -> dict:
        """Block until the job has finished (complete, failed or cancelled; for tests and scripts);
        returns the row."""
        deadline = time.monotonic() + timeout
        while True:
            job = self.get(job_id)
            if job["status"] in FINISHED or time.monotonic() > deadline:
                return job
            time.sleep(0.1)
