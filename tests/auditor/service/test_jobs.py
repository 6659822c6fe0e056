"""Sampling jobs (auditor.service.jobs, POST /api/jobs): validation, a real subprocess run to completion,
queueing, cancellation and recovery after a service restart."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from auditor.store import database, datasets
from auditor.service.jobs import SampleJobRequest, job_command
from auditor.store.recorder import utcnow
from auditor.service.app import ServiceSettings, create_app
from tests.support.data import fashion_mnist
from tests.support.jobs import wait_for_job

JOB_TIMEOUT = 240  # seconds: a 1-sample, 3-step run on 200 images (most of it is importing torch)


@pytest.fixture
def store(tmp_path) -> Path:
    """A store holding 200 Fashion-MNIST training images (dataset 1) and no run."""
    path = tmp_path / "provenance.duckdb"
    database.upgrade(path)
    datasets.ingest(path, fashion_mnist(200))
    return path


def wait_for(client: TestClient, job_id: int, timeout: float = JOB_TIMEOUT) -> dict:
    return wait_for_job(client, job_id, timeout)


# ---------------------------------------------------------------------------------------
# Validation
# ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("body, words", [
    ({}, "dataset_id"),
    ({"dataset_id": 1, "num_samples": 0}, "num_samples"),
    ({"dataset_id": 1, "num_samples": 65}, "num_samples"),
    ({"dataset_id": 1, "steps": 0}, "steps"),
    ({"dataset_id": 1, "steps": 1000}, "steps"),
    ({"dataset_id": 1, "denoiser": "gaussian"}, "denoiser"),
    ({"dataset_id": 1, "sampler": "dpm"}, "sampler"),
    ({"dataset_id": 1, "top_k": 0}, "top_k"),
    ({"dataset_id": 1, "mass": 0}, "mass"),
    ({"dataset_id": 1, "mass": 1.5}, "mass"),
    ({"dataset_id": 1, "seed": -1}, "seed"),
    ({"dataset_id": 1, "denoiser": "empirical", "patch_size": 3}, "patch_size applies to the pspc-square denoiser"),
    ({"dataset_id": 1, "patch_size": 29}, "does not fit the 28x28"),
    ({"dataset_id": 1, "data": "/etc/passwd"}, "data"),  # no file paths: unknown fields are refused
])
def test_bad_job_requests_are_400_and_store_nothing(store, body, words):
    client = TestClient(create_app(ServiceSettings(db_path=store)))
    response = client.post("/api/jobs", json=body)
    assert response.status_code == 400, response.text
    assert words in response.json()["message"]
    assert client.get("/api/jobs").json()["total"] == 0


def test_the_cli_and_the_api_refuse_the_same_sampling_requests(store, capsys):
    """One validation (SamplingOptions) for both: `auditor sample --patch-size 99` on 28x28
    images used to be recorded while the API refused it."""
    from tests.support.cli import run_cli

    client = TestClient(create_app(ServiceSettings(db_path=store)))
    for body, argv, api_words, cli_words in (
            ({"patch_size": 99}, ["--patch-size", "99"], "patch_size 99 does not fit the 28x28 images",
             "patch_size 99 does not fit the 28x28 images"),
            ({"patch_size": 2, "denoiser": "empirical"}, ["--patch-size", "2", "--denoiser", "empirical"],
             "patch_size applies to the pspc-square denoiser", "--patch-size applies to the --denoiser pspc-square"),
            ({"top_k": 0}, ["--top-k", "0"], "top_k", "--top-k must be an integer >= 1")):
        api = client.post("/api/jobs", json={"dataset_id": 1, **body})
        code, _, err = run_cli(capsys, "--db", store, "sample", "--dataset", "1", "--num", "1", "--steps", "1", *argv)
        assert api.status_code == 400 and api_words in api.json()["message"], api.text
        assert code == 2 and cli_words in err, err
    assert client.get("/api/runs").json()["total"] == 0


def test_unknown_dataset_is_404(store):
    client = TestClient(create_app(ServiceSettings(db_path=store)))
    response = client.post("/api/jobs", json={"dataset_id": 7})
    assert response.status_code == 404 and "no dataset" in response.json()["message"]
    assert client.get("/api/jobs/1").status_code == 404


def test_job_command_spells_out_every_option(store):
    request = SampleJobRequest(dataset_id=1, num_samples=2, steps=5, sampler="heun", patch_size=5, seed=9, top_k=4,
                               mass=0.5, xflip=False)
    argv = job_command(request, store, 30.0, python="py")
    assert argv[:3] == ["py", "-m", "auditor.cli"]
    text = " ".join(argv)
    for part in ("--dataset 1", "--num 2", "--steps 5", "--sampler heun", "--patch-size 5", "--seed 9", "--top-k 4",
                 "--mass 0.5", "--no-xflip", "--lock-timeout 30", f"--db {store.resolve()}"):
        assert part in text


# ---------------------------------------------------------------------------------------
# Running
# ---------------------------------------------------------------------------------------
@pytest.mark.slow
def test_jobs_run_in_a_subprocess_queue_and_cancel(store):
    """Job 1 samples to completion in a subprocess; job 2 waits in the queue (one job at a
    time) and is cancelled there; job 3 then runs after job 1."""
    client = TestClient(create_app(ServiceSettings(db_path=store, max_running_jobs=1)))
    body = {"dataset_id": 1, "num_samples": 1, "steps": 3, "seed": 4}
    first = client.post("/api/jobs", json=body)
    assert first.status_code == 202 and first.headers["location"].endswith("/api/jobs/1")
    assert first.json()["status"] == "running" and first.json()["pid"]
    second = client.post("/api/jobs", json={**body, "seed": 5}).json()
    assert second["status"] == "queued"
    cancelled = client.post("/api/jobs/2/cancel").json()
    assert cancelled["status"] == "cancelled" and cancelled["error"] == "cancelled before it started"
    third = client.post("/api/jobs", json={**body, "seed": 6}).json()
    assert third["status"] == "queued"

    done = wait_for(client, 1)
    assert done["status"] == "complete", done
    assert done["progress"] == {"steps_recorded": 3, "steps_planned": 3, "run_status": "complete"}
    run = client.get(f"/api/runs/{done['run_id']}").json()
    assert run["status"] == "complete" and run["samples"] == 1 and run["steps"] == 3 and run["seed"] == 4
    assert run["dataset_id"] == 1 and run["writer"]["pid"] == done["pid"]
    assert run["command"][1:] == ["--db", str(store.resolve()), "--lock-timeout", "120", "sample", "--dataset", "1",
                                  "--num", "1", "--steps", "3", "--sampler", "euler", "--denoiser", "pspc-square",
                                  "--seed", "4", "--top-k", "16", "--mass", "0.99"]
    assert f"run {done['run_id']}: complete" in client.get("/api/jobs/1/log").text
    assert done["links"]["first_report"].endswith(f"/api/runs/{done['run_id']}/samples/0/report")
    assert client.get(f"/api/runs/{done['run_id']}/samples/0/sources").status_code == 200

    last = wait_for(client, 3)
    assert last["status"] == "complete" and last["run_id"] != done["run_id"]
    listing = client.get("/api/jobs", params={"limit": 2}).json()
    assert listing["total"] == 3 and [j["id"] for j in listing["items"]] == [3, 2] and listing["next"]
    assert client.get("/api/jobs", params={"status": "cancelled"}).json()["total"] == 1
    assert client.get("/api/jobs", params={"status": "failed"}).json()["total"] == 0
    assert client.get("/api/jobs", params={"status": "nope"}).status_code == 400
    assert client.post("/api/jobs/1/cancel").status_code == 400  # already complete


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_restart_marks_jobs_whose_subprocess_is_gone_failed(store):
    request = SampleJobRequest(dataset_id=1, num_samples=1, steps=3).model_dump_json()
    with database.connect(store) as conn:
        conn.execute("INSERT INTO jobs (kind, status, request, pid, log_path, created_at, started_at) "
                     "VALUES ('sample', 'running', ?, ?, '/nonexistent.log', ?, ?)",
                     [request, _dead_pid(), utcnow(), utcnow()])
        conn.execute("INSERT INTO jobs (kind, status, request, pid, created_at, finished_at, error) "
                     "VALUES ('sample', 'failed', ?, 1, ?, ?, 'earlier')", [request, utcnow(), utcnow()])
    client = TestClient(create_app(ServiceSettings(db_path=store)))
    job = client.get("/api/jobs/1").json()
    assert job["status"] == "failed" and "service stopped" in job["error"] and job["finished_at"]
    assert client.get("/api/jobs/2").json()["error"] == "earlier"  # finished jobs are left alone
    assert json.loads(json.dumps(job["request"]))["steps"] == 3
