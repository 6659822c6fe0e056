"""Run lifecycle in the store (auditor.store.runs): marking failed while another process holds the
lock, runs abandoned by writers that are gone, writer records that survive pid reuse, the job
link made when a run is created, and what runs.error says."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import pytest

from auditor.errors import LockedError
from auditor.store import database, datasets, jobs as job_rows, runs
from tests.support.data import random_set
from tests.support.paths import REPO
from tests.support.store import LockHolder, fetch


@pytest.fixture
def store(empty_db) -> Path:
    """A store holding one small dataset (id 1) and no run."""
    datasets.ingest(empty_db, random_set())
    return empty_db


def new_run(store, **kwargs) -> int:
    return runs.create_run(store, 1, denoiser={"kind": "pspc-square"}, sampler={"num_steps": 5}, seed=0,
                           num_samples=2, top_k=4, mass=1.0, **kwargs)


def set_writer(store, run_id: int, record: dict) -> None:
    with database.connect(store) as conn:
        conn.execute("UPDATE runs SET writer = ? WHERE id = ?", [json.dumps(record), run_id])


def dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def status_and_error(store, run_id: int):
    return fetch(store, "SELECT status, error FROM runs WHERE id = ?", [run_id])[0]


# ---------------------------------------------------------------------------------------
# mark_failed while the lock is held
# ---------------------------------------------------------------------------------------
def test_mark_failed_waits_for_a_lock_held_by_another_process(store):
    """The step's write failed on the lock (timeout 0.1 s); marking the run failed waits longer."""
    run_id = new_run(store)
    holder = LockHolder(store)
    timer = threading.Timer(1.0, holder.release)
    timer.start()
    try:
        error = LockedError("the writer lost the store lock at step 3 of run 1")
        runs.mark_failed(store, run_id, error, timeout=0.1, wait=30)
    finally:
        timer.cancel()
        holder.release()
    status, text = status_and_error(store, run_id)
    assert status == "failed" and "lost the store lock at step 3" in text
    assert not getattr(error, "__notes__", [])  # no "could not mark run ... failed"
    assert not runs.failure_note(store, run_id).exists()


GIVES_UP = textwrap.dedent("""
    import sys
    from auditor.errors import LockedError
    from auditor.store import runs
    store, run_id = sys.argv[1], int(sys.argv[2])
    print("ready", flush=True)
    sys.stdin.readline()  # the test holds the lock now
    error = LockedError("the writer lost the store lock at step 2 of run %d" % run_id)
    runs.mark_failed(store, run_id, error, timeout=0.1, wait=0.2)
    print(error.__notes__[0], flush=True)
""")


@pytest.mark.slow
def test_a_writer_that_cannot_mark_its_run_leaves_the_reason_for_later(store):
    """A writer process gives up marking its run failed (the lock stays held): its reason is
    recorded by the next writable open after it is gone, and the note is removed."""
    run_id = new_run(store)
    writer = subprocess.Popen([sys.executable, "-c", GIVES_UP, str(store), str(run_id)], cwd=REPO, text=True,
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    assert writer.stdout.readline().strip() == "ready"
    record = {"host": socket.gethostname(), "pid": writer.pid}
    set_writer(store, run_id, record)  # as if that process had created the run
    holder = LockHolder(store)
    try:
        out, _ = writer.communicate("go\n", timeout=60)
    finally:
        holder.release()
    assert writer.returncode == 0 and "could not mark run" in out
    assert status_and_error(store, run_id) == ("running", None)
    assert json.loads(runs.failure_note(store, run_id).read_text())["pid"] == writer.pid

    assert runs.fail_abandoned_runs(store) == [run_id]
    status, text = status_and_error(store, run_id)
    assert status == "failed" and "lost the store lock at step 2" in text and "after the writer exited" in text
    assert not runs.failure_note(store, run_id).exists()


# ---------------------------------------------------------------------------------------
# Abandoned runs
# ---------------------------------------------------------------------------------------
def test_abandoned_runs_are_failed_and_live_writers_left_alone(store):
    me = runs.writer()
    assert me["pid"] == os.getpid() and me["host"] == socket.gethostname()
    alive, gone, elsewhere = new_run(store), new_run(store), new_run(store)  # written by this process
    pid = dead_pid()
    set_writer(store, gone, {"host": socket.gethostname(), "pid": pid})
    set_writer(store, elsewhere, {"host": "another-host", "pid": pid})
    with database.connect(store) as conn:  # one whole step of two samples was recorded
        conn.execute("INSERT INTO patch_sets (id, fingerprint, description, height, width, num_patches) "
                     "VALUES (1, 'f', '{}', 8, 8, 1)")
        conn.execute("INSERT INTO steps (run_id, sample_index, step, t, t_next, patch_set_id, z, denoised) "
                     "VALUES (?, 0, 0, 1.0, 0.5, 1, ''::BLOB, ''::BLOB), (?, 1, 0, 1.0, 0.5, 1, ''::BLOB, ''::BLOB)",
                     [gone, gone])
    shown = {s["id"]: s["status"] for s in runs.run_summaries(store)}
    assert shown == {alive: "running", gone: f"running (writer pid {pid} gone)", elsewhere: "running"}

    assert runs.fail_abandoned_runs(store) == [gone]
    status, text = status_and_error(store, gone)
    assert status == "failed" and text.startswith("writer gone: process") and "after 1 of 5 steps" in text
    assert status_and_error(store, alive) == ("running", None)
    assert status_and_error(store, elsewhere) == ("running", None)  # another host: cannot tell
    assert runs.fail_abandoned_runs(store) == []


def test_a_reused_pid_or_another_boot_is_not_the_writer(store):
    """The writer record holds the process's start time and the boot id: this process's pid with
    another start time (a container restarted, the pid reused) is a writer that is gone."""
    me = runs.writer()
    if "started" not in me or "boot" not in me:
        pytest.skip("no /proc: writers are told apart by pid only")
    assert runs.writer_alive(me) and not runs.writer_gone(me)
    reused = {**me, "started": me["started"] - 1}
    rebooted = {**me, "boot": "another-boot"}
    assert runs.writer_gone(reused) and not runs.writer_alive(reused)
    assert runs.writer_gone(rebooted)
    run_id = new_run(store)
    set_writer(store, run_id, reused)
    new_run(store)  # creating a run marks the abandoned ones failed first
    assert status_and_error(store, run_id)[0] == "failed"


def test_reopening_a_run_removes_its_stale_failure_note(store):
    run_id = new_run(store)
    runs.mark_failed(store, run_id, RuntimeError("boom"))
    runs.failure_note(store, run_id).write_text(json.dumps({"pid": os.getpid(), "error": "stale"}))
    runs.reopen_run(store, run_id, 2, (1, 8, 8))
    assert status_and_error(store, run_id) == ("running", None)
    assert not runs.failure_note(store, run_id).exists()


# ---------------------------------------------------------------------------------------
# The job link, and the error text
# ---------------------------------------------------------------------------------------
def test_create_run_links_the_job_of_this_process(store, monkeypatch):
    job_id = job_rows.insert_job(store, "sample", json.dumps({"dataset_id": 1}))
    other = job_rows.insert_job(store, "sample", json.dumps({"dataset_id": 1}))
    monkeypatch.setenv(job_rows.JOB_ENV, str(job_id))
    assert job_rows.job_of_this_process() == job_id
    run_id = new_run(store, job_id=job_rows.job_of_this_process())
    assert job_rows.get_job(store, job_id)["run_id"] == run_id
    assert job_rows.get_job(store, other)["run_id"] is None
    new_run(store, job_id=job_id)  # a job's run is set once
    assert job_rows.get_job(store, job_id)["run_id"] == run_id
    monkeypatch.setenv(job_rows.JOB_ENV, "not a number")
    assert job_rows.job_of_this_process() is None


def _raised(exc: BaseException) -> BaseException:
    try:
        raise exc
    except BaseException as caught:  # noqa: BLE001
        return caught


def test_error_text_of_an_interrupt_inside_numba_and_without_server_paths():
    # what a Ctrl-C inside numba's compiled code raises (seen with a SIGINT during a run)
    inner = SystemError("<function _numba_unpickle at 0x7f> returned a result with an exception set")
    inner.__cause__ = KeyboardInterrupt()
    outer = SystemError("CPUDispatcher(<function compose at 0x7f>) returned a result with an exception set")
    outer.__cause__ = inner
    assert runs.interruption(outer) is inner.__cause__
    assert runs.error_text(outer) == "interrupted (KeyboardInterrupt)"
    assert runs.interruption(SystemError("other")) is None
    text = runs.error_text(_raised(RuntimeError("boom")))
    assert text.startswith("RuntimeError: boom (at tests/auditor/store/test_runs.py:")
    assert str(REPO) not in text


def test_a_run_records_its_thread_counts(store):
    """Issue 13, item 6: the run's record says how many torch and numba threads computed it."""
    import numba
    import torch

    run_id = runs.create_run(store, 1, denoiser={"kind": "pspc-square"}, sampler={"num_steps": 1}, seed=0,
                             num_samples=1, top_k=1, mass=1.0)
    run, _ = runs.load_run(store, run_id)
    assert run["writer"]["torch_threads"] == torch.get_num_threads()
    assert run["writer"]["numba_threads"] == numba.get_num_threads()
