"""The stored copy verdict in the API (issue 17): GET /api/runs?verdict= (an enum), the sample
detail's `verdict`, and the report JSON / export.json."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from auditor.service.app import ServiceSettings, create_app
from tests.support.verdicts import verdict_store


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    path = tmp_path_factory.mktemp("verdicts-api") / "provenance.duckdb"
    info = verdict_store(path)
    return TestClient(create_app(ServiceSettings(db_path=path))), info


def test_runs_filtered_by_verdict(served):
    client, info = served
    ids = {v: [r["id"] for r in client.get("/api/runs", params={"verdict": v}).json()["items"]]
           for v in ("partial-copy", "inconclusive", "copy")}
    assert ids == {"partial-copy": [info["run_id"]], "inconclusive": [info["other_run"]], "copy": []}
    bad = client.get("/api/runs", params={"verdict": "partial copy"})
    assert bad.status_code == 400 and "partial-copy" in bad.json()["message"], bad.json()
    schema = client.get("/api/openapi.json").json()
    param = next(p for p in schema["paths"]["/api/runs"]["get"]["parameters"] if p["name"] == "verdict")
    enum = next(s["enum"] for s in param["schema"]["anyOf"] if "enum" in s)
    assert enum == ["copy", "partial-copy", "no-copy-found", "inconclusive"]


def test_sample_detail_and_report_carry_the_verdict(served):
    client, info = served
    run = info["run_id"]
    detail = client.get(f"/api/runs/{run}/samples/0").json()["verdict"]
    assert detail["verdict"] == "partial copy" and detail["alarm"] and detail["threshold"] == 0.8
    assert detail["sentence"].startswith("partial copy of img-1 in box [0, 1, 2, 2]")
    assert client.get(f"/api/runs/{run}/samples/1").json()["verdict"] is None
    for url in (f"/api/runs/{run}/samples/0/report", f"/runs/{run}/samples/0/export.json"):
        body = client.get(url).json()
        assert body["verdict"]["verdict"] == "partial copy" and body["verdict"]["tpr"] == 0.9, url
    other = client.get(f"/api/runs/{info['other_run']}/samples/0/report").json()["verdict"]
    assert other["verdict"] == "inconclusive" and other["alarm"] is False
