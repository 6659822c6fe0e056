"""Counterfactuals in the API: POST /api/jobs/counterfactual runs `auditor counterfactual` with the
request's one selection, bad requests are refused before anything runs, and the outcome routes
read what the workflow stored."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from auditor.service.app import ServiceSettings, create_app
from auditor.workflows.counterfactual import record_counterfactual
from auditor.workflows.options import CounterfactualOptions
from tests.auditor.service.test_job_kinds import PRINTS_ITS_ARGUMENTS, logged_argv
from tests.auditor.service.test_jobs_lifecycle import stand_in
from tests.support.data import random_set
from tests.support.jobs import wait_for_job
from tests.support.store import record


@pytest.fixture
def recorded(tmp_path):
    """Run 1 (one sample, 3 steps, on the random set) and counterfactual run 2 of its sample 0."""
    parent = record(tmp_path / "store.duckdb", random_set(), num_samples=1, steps=3, top_k=32, mass=1.0)
    record_counterfactual(parent.db, 1, 0, options=CounterfactualOptions(without=("img-4",), verdict=False))
    return parent.db


def client_for(db, tmp_path, **settings) -> TestClient:
    return TestClient(create_app(ServiceSettings(db_path=db, python=stand_in(tmp_path, PRINTS_ITS_ARGUMENTS),
                                                 **settings)), base_url="http://localhost")


def test_a_counterfactual_job_runs_the_cli_with_its_selection(recorded, tmp_path):
    client = client_for(recorded, tmp_path)
    answer = client.post("/api/jobs/counterfactual", json={"dataset_id": 1, "run_id": 1, "sample_index": 0,
                                                           "random": 3, "seed": 5, "verdict": False})
    assert answer.status_code == 202, answer.text
    argv = logged_argv(client, answer.json()["id"])
    assert argv[6:] == ["counterfactual", "1/0", "--dataset", "1", "--random", "3", "--seed", "5", "--no-verdict"]
    job = client.post("/api/jobs/counterfactual", json={"dataset_id": 1, "run_id": 1, "sample_index": 0,
                                                        "without": ["img-1", "img-2"]}).json()
    assert logged_argv(client, job["id"])[6:10] == ["counterfactual", "1/0", "--dataset", "1"]
    assert logged_argv(client, job["id"])[10:12] == ["--without", "img-1,img-2"]


@pytest.mark.parametrize("body, words", [
    ({"top": 2, "owner": "x"}, "exactly one way"),
    ({}, "exactly one way"),
    ({"top": 0}, "top"),
    ({"top": 2, "xflip": False}, "xflip"),
    ({"without": []}, "without"),
    ({"top": 2, "run_id": 2**63}, "run_id"),
])
def test_bad_counterfactual_requests_are_refused_before_anything_runs(recorded, tmp_path, body, words):
    client = client_for(recorded, tmp_path)
    answer = client.post("/api/jobs/counterfactual", json={"dataset_id": 1, "run_id": 1, "sample_index": 0, **body})
    assert answer.status_code == 400 and words in answer.json()["message"], answer.text
    assert client.get("/api/jobs").json()["total"] == 0


@pytest.mark.parametrize("body, status, words", [
    ({"run_id": 9}, 404, "no run 9"),
    ({"sample_index": 4}, 404, "no sample 4"),
    ({"dataset_id": 2}, 404, "no dataset"),
])
def test_a_counterfactual_of_an_unknown_parent_is_refused_at_submission(recorded, tmp_path, body, status, words):
    client = client_for(recorded, tmp_path)
    answer = client.post("/api/jobs/counterfactual", json={"dataset_id": 1, "run_id": 1, "sample_index": 0,
                                                           "top": 1, **body})
    assert answer.status_code == status and words in answer.json()["message"], answer.text
    assert client.get("/api/jobs").json()["total"] == 0


def test_the_outcome_routes(recorded, tmp_path):
    client = client_for(recorded, tmp_path)
    detail = client.get("/api/runs/2/counterfactual").json()
    assert (detail["parent_run_id"], detail["parent_sample"], detail["mode"], detail["removed_count"]) == (
        1, 0, "resample", 1)
    assert detail["removed"] == [{"image_index": 4, "image_id": "img-4"}]
    assert len(detail["change_map"]) == 1 and len(detail["change_map"][0]) == 8 and len(detail["step_changes"]) == 3
    assert detail["links"]["parent"] == "http://localhost/api/runs/1/samples/0"
    listed = client.get("/api/runs/1/samples/0/counterfactuals").json()
    assert [r["run_id"] for r in listed] == [2] and listed[0]["mse"] == detail["mse"]
    assert client.get("/api/runs/2").json()["kind"] == "counterfactual"
    missing = client.get("/api/runs/1/counterfactual")
    assert missing.status_code == 404 and "not a complete counterfactual" in missing.json()["message"]
    assert client.get("/api/runs/1/samples/3/counterfactuals").status_code == 404


@pytest.mark.slow
def test_a_real_counterfactual_job_records_its_run(recorded, tmp_path):
    client = TestClient(create_app(ServiceSettings(db_path=recorded)), base_url="http://localhost")
    job = client.post("/api/jobs/counterfactual", json={"dataset_id": 1, "run_id": 1, "sample_index": 0, "top": 2,
                                                        "verdict": False}).json()
    done = wait_for_job(client, job["id"], timeout=300)
    assert done["status"] == "complete", done
    assert done["run_id"] == 3 and client.get("/api/runs/3/counterfactual").json()["removed_count"] == 2


def test_the_report_of_a_complete_run_shows_a_later_counterfactual(recorded, tmp_path):
    client = client_for(recorded, tmp_path)
    first = client.get("/api/runs/1/samples/0/report?images=none")
    assert first.status_code == 200 and len(first.json()["counterfactuals"]["rows"]) == 1
    record_counterfactual(recorded, 1, 0, options=CounterfactualOptions(random=2, verdict=False))
    again = client.get("/api/runs/1/samples/0/report?images=none")  # was cached by path once its run completed
    assert len(again.json()["counterfactuals"]["rows"]) == 2 and again.headers["etag"] != first.headers["etag"]
    assert client.get("/api/runs/1/samples/0/report?images=none",
                      headers={"If-None-Match": again.headers["etag"]}).status_code == 304
