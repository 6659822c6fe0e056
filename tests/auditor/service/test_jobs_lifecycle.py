"""How jobs end (auditor.service.jobs): the run linked by the job's own process, a run left
'running' by a crashed job, cancelling during start-up, jobs adopted or finished after a
service restart, and no server paths or tracebacks in what API clients see.

The job's subprocess is a stand-in script given as the service's `python` (it receives the
real `-m auditor.cli ... sample ...` arguments), so each test takes a second or two, not the
minutes of a real sampling run (tests/auditor/service/test_jobs.py runs real ones)."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from auditor.service.app import ServiceSettings, create_app
from auditor.service.jobs import TRACEBACK_OMITTED, SampleJobRequest, job_outcome, public_text
from auditor.store import database, datasets, runs
from auditor.store.jobs import CANCEL_REQUESTED
from auditor.store.recorder import utcnow
from tests.support.data import random_set
from tests.support.jobs import wait_for_job
from tests.support.paths import REPO
from tests.support.store import fetch

BODY = {"dataset_id": 1, "num_samples": 1, "steps": 3}


@pytest.fixture
def store(empty_db) -> Path:
    """A store holding the random set as dataset 1."""
    datasets.ingest(empty_db, random_set())
    return empty_db


def stand_in(tmp_path: Path, body: str) -> str:
    """An executable script that the service runs instead of `python -m auditor.cli sample ...`."""
    path = tmp_path / "stand-in-python"
    path.write_text(f"#!{sys.executable}\n" + textwrap.dedent(body))
    path.chmod(0o755)
    return str(path)


def wait_for(client: TestClient, job_id: int) -> dict:
    return wait_for_job(client, job_id, timeout=60)


def server_paths(store: Path) -> list[str]:
    return [str(store.parent), str(REPO), sys.prefix]


# ---------------------------------------------------------------------------------------
# A job that crashes, one cancelled while it starts
# ---------------------------------------------------------------------------------------
CRASHES = """
import sys
from auditor.store.jobs import job_of_this_process
from auditor.store.runs import create_run
db = sys.argv[sys.argv.index("--db") + 1]
run_id = create_run(db, 1, denoiser={"kind": "pspc-square"}, sampler={"num_steps": 3}, seed=0, num_samples=1,
                    top_k=4, mass=1.0, job_id=job_of_this_process())
print(f"run {run_id}: recording into {db}", flush=True)
raise RuntimeError(f"{db}: lost the lock")  # a traceback with the server's paths, and the run left 'running'
"""


@pytest.mark.slow
def test_a_crashed_job_has_its_run_exactly_and_failed_and_shows_no_server_paths(store, tmp_path):
    client = TestClient(create_app(ServiceSettings(db_path=store, python=stand_in(tmp_path, CRASHES))))
    job = wait_for(client, client.post("/api/jobs", json=BODY).json()["id"])
    (run_id, status, error, writer), = fetch(store, "SELECT id, status, error, writer FROM runs")
    assert job["run_id"] == run_id and json.loads(writer)["pid"] == job["pid"]  # the job's own process made it
    assert status == "failed" and error.startswith("writer gone: process")  # not left 'running'
    assert job["status"] == "failed"
    assert job["error"].startswith(f"exit status 1; run {run_id} is failed after 0 of 3 steps; continue it with "
                                   f"`auditor sample --dataset 1 --resume {run_id}`")
    assert "RuntimeError: provenance.duckdb: lost the lock" in job["error"]
    log = client.get(f"/api/jobs/{job['id']}/log").text
    assert f"run {run_id}: recording into provenance.duckdb" in log and TRACEBACK_OMITTED in log
    for shown in (job["error"], log):
        assert "Traceback" not in shown and 'File "' not in shown
        assert not [p for p in server_paths(store) if p in shown], shown
    on_disk = (store.parent / f"{store.name}.jobs" / f"job-{job['id']}.log").read_text()
    assert "Traceback (most recent call last)" in on_disk and str(store) in on_disk  # the server keeps it all


STARTS_SLOWLY = """
import time
print("importing torch", flush=True)
time.sleep(60)
"""


@pytest.mark.slow
def test_a_job_cancelled_while_it_starts_is_cancelled_with_a_clear_message(store, tmp_path):
    client = TestClient(create_app(ServiceSettings(db_path=store, python=stand_in(tmp_path, STARTS_SLOWLY))))
    job_id = client.post("/api/jobs", json=BODY).json()["id"]
    deadline = time.monotonic() + 30
    while "importing torch" not in client.get(f"/api/jobs/{job_id}/log").text:  # Python runs: a traceback
        assert time.monotonic() < deadline
        time.sleep(0.05)
    cancelling = client.post(f"/api/jobs/{job_id}/cancel")
    assert cancelling.status_code == 200 and cancelling.json()["error"] == CANCEL_REQUESTED
    job = wait_for(client, job_id)
    assert job["status"] == "cancelled" and job["error"] == "cancelled before its run was created"
    log = client.get(f"/api/jobs/{job_id}/log").text
    assert "Traceback" not in log and log.rstrip().endswith(f"{TRACEBACK_OMITTED}\nKeyboardInterrupt")
    assert client.get("/api/jobs", params={"status": "cancelled"}).json()["total"] == 1


@pytest.mark.slow
def test_a_real_job_cancelled_while_it_samples_is_cancelled_and_its_run_interrupted(store):
    """A real `auditor sample` subprocess gets SIGINT between (or inside numba during) its steps."""
    client = TestClient(create_app(ServiceSettings(db_path=store)))
    job_id = client.post("/api/jobs", json={**BODY, "num_samples": 16, "steps": 256}).json()["id"]
    deadline = time.monotonic() + 120
    while client.get(f"/api/jobs/{job_id}").json()["progress"]["steps_recorded"] < 2:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    client.post(f"/api/jobs/{job_id}/cancel")
    job = wait_for(client, job_id)
    assert job["status"] == "cancelled", job
    assert job["error"].startswith("cancelled after ") and f"run {job['run_id']} is failed" in job["error"]
    run = client.get(f"/api/runs/{job['run_id']}").json()
    assert run["status"] == "failed" and run["error"] == "interrupted (KeyboardInterrupt)"
    assert "auditor: interrupted; the run is marked failed" in client.get(f"/api/jobs/{job_id}/log").text


# ---------------------------------------------------------------------------------------
# After a service restart
# ---------------------------------------------------------------------------------------
def _run_row(store, status: str, writer: dict) -> int:
    run_id = runs.create_run(store, 1, denoiser={"kind": "pspc-square"}, sampler={"num_steps": 3}, seed=0,
                             num_samples=1, top_k=4, mass=1.0)
    with database.connect(store) as conn:
        conn.execute("UPDATE runs SET status = ?, writer = ? WHERE id = ?", [status, json.dumps(writer), run_id])
    return run_id


def _running_job(store, pid: int, run_id: int, error: str | None = None) -> int:
    with database.connect(store) as conn:
        return conn.execute("INSERT INTO jobs (kind, status, request, run_id, pid, created_at, started_at, error) "
                            "VALUES ('sample', 'running', ?, ?, ?, ?, ?, ?) RETURNING id",
                            [SampleJobRequest(**BODY).model_dump_json(), run_id, pid, utcnow(), utcnow(),
                             error]).fetchone()[0]


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_an_adopted_job_whose_run_completed_is_complete(store):
    """The service restarts while a job runs; the job's process is adopted, and finishes
    (its exit status is unknown to the new service): its run is complete, so is the job."""
    # the stand-in runs until its stdin closes: adopted while it runs, however slow the machine
    proc = subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.read()", "auditor.cli", "sample"],
                            stdin=subprocess.PIPE)
    try:
        job_id = _running_job(store, proc.pid, _run_row(store, "complete", {"host": "h", "pid": proc.pid}))
        client = TestClient(create_app(ServiceSettings(db_path=store)))
        assert client.get(f"/api/jobs/{job_id}").json()["status"] == "running"  # adopted
        proc.stdin.close()
        job = wait_for(client, job_id)
    finally:
        proc.wait()
    assert job["status"] == "complete" and job["error"] is None
    assert job["progress"]["run_status"] == "complete"


@pytest.mark.parametrize("run_status", ["complete", "running"])
def test_a_job_gone_during_a_restart_ends_as_its_run(store, run_status):
    pid = _dead_pid()
    run_id = _run_row(store, run_status, {"host": runs.writer()["host"], "pid": pid})
    job_id = _running_job(store, pid, run_id)
    client = TestClient(create_app(ServiceSettings(db_path=store)))
    job = client.get(f"/api/jobs/{job_id}").json()
    if run_status == "complete":
        assert job["status"] == "complete" and job["error"] is None
    else:  # its run was left 'running' by the process that is gone: marked failed, and resumable
        assert fetch(store, "SELECT status FROM runs WHERE id = ?", [run_id]) == [("failed",)]
        assert job["status"] == "failed"
        assert job["error"] == (f"the service stopped while the job ran, and its process (pid {pid}) is gone; "
                                f"run {run_id} is failed after 0 of 3 steps; continue it with "
                                f"`auditor sample --dataset 1 --resume {run_id}`")


def test_a_job_cancelled_before_a_restart_is_cancelled_after_it(store):
    pid = _dead_pid()
    run_id = _run_row(store, "failed", {"host": runs.writer()["host"], "pid": pid})
    job_id = _running_job(store, pid, run_id, error=CANCEL_REQUESTED)
    job = TestClient(create_app(ServiceSettings(db_path=store))).get(f"/api/jobs/{job_id}").json()
    assert job["status"] == "cancelled"
    assert job["error"] == (f"cancelled after 0 of 3 steps: run {run_id} is failed; continue it with "
                            f"`auditor sample --dataset 1 --resume {run_id}`")


# ---------------------------------------------------------------------------------------
# What clients see
# ---------------------------------------------------------------------------------------
def test_public_text_cuts_paths_and_tracebacks_but_keeps_the_rest():
    text = "\n".join([
        "$ -m auditor.cli --db /srv/data/provenance.duckdb --lock-timeout 120 sample --dataset 1",
        "sampling:  33%|###   | 1/3 [00:01<00:02,  1.00s/step]",
        "Traceback (most recent call last):",
        '  File "/opt/venv/lib/python3.11/site-packages/numba/core/dispatcher.py", line 10, in f',
        "    return self._call(x)",
        "           ^^^^^^^^^^^^^",
        "SystemError: CPUDispatcher(<function compose>) returned a result with an exception set",
        "",
        "The above exception was the direct cause of the following exception:",
        "",
        "Traceback (most recent call last):",
        '  File "/work/main/auditor/cli/__init__.py", line 3, in main',
        "auditor: error: /srv/data/provenance.duckdb: locked (see https://duckdb.org/docs/x/y); PATH=/a/b:/c/d",
    ])
    assert public_text(text).splitlines() == [
        "$ -m auditor.cli --db provenance.duckdb --lock-timeout 120 sample --dataset 1",
        "sampling:  33%|###   | 1/3 [00:01<00:02,  1.00s/step]",
        TRACEBACK_OMITTED,
        "SystemError: CPUDispatcher(<function compose>) returned a result with an exception set",
        "",
        TRACEBACK_OMITTED,
        "auditor: error: provenance.duckdb: locked (see https://duckdb.org/docs/x/y); PATH=b:d",
    ]


def test_job_outcome_of_a_cancelled_job_with_a_run():
    job = {"run_id": 4, "pid": 9, "request": BODY}
    run = {"run_status": "failed", "steps_recorded": 2, "steps_planned": 3}
    assert job_outcome(job, 130, run, "", cancelled=True) == (
        "cancelled", "cancelled after 2 of 3 steps: run 4 is failed; continue it with "
                     "`auditor sample --dataset 1 --resume 4`")
    assert job_outcome(job, -9, run, "")[1].startswith("killed by signal 9; run 4 is failed after 2 of 3 steps")
    assert job_outcome(job, 0, {**run, "run_status": "complete"}, "", cancelled=True) == ("complete", None)
