"""The report service's OpenAPI schema says what the service answers: UTC timestamps with their
offset, the status enums and the bounds of parameters and fields, every error response as JSON
ErrorBody, the GET /api/sql query-string limit (414 with a pointer to POST), and bounded integers
in the job request. Schemathesis checks the whole schema against the app: test_schemathesis.py.
"""

from __future__ import annotations

import shutil
from datetime import datetime, timezone
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from auditor.service.app import ServiceSettings, create_app
from auditor.service.limits import MAX_ID, MAX_PIXEL, MAX_QUERY_STRING_BYTES
from auditor.store import runs, studies
from auditor.store.schema import JOB_STATUSES, RUN_STATUSES
from tests.support.store import fetch, study_result


@pytest.fixture(scope="module")
def store(recorded_random, tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("openapi") / "provenance.duckdb"
    shutil.copy(recorded_random.db, path)
    studies.store_study(path, study_result())
    return path


@pytest.fixture(scope="module")
def client(store) -> TestClient:
    return TestClient(create_app(ServiceSettings(db_path=store)), raise_server_exceptions=False)


@pytest.fixture(scope="module")
def schema(client) -> dict:
    return client.get("/api/openapi.json").json()


def _utc(text: str) -> datetime:
    value = datetime.fromisoformat(text.replace("Z", "+00:00"))
    assert value.utcoffset() is not None and value.utcoffset().total_seconds() == 0, text
    return value


def _stored(store, sql) -> datetime:
    return fetch(store, sql)[0][0].replace(tzinfo=timezone.utc)


def test_timestamps_are_utc_with_their_offset(client, store):
    run = client.get("/api/runs").json()["items"][-1]
    assert _utc(run["created_at"]) == _stored(store, f"SELECT created_at FROM runs WHERE id = {run['id']}")
    assert _utc(run["finished_at"]) == _stored(store, f"SELECT finished_at FROM runs WHERE id = {run['id']}")
    assert _utc(client.get(f"/api/runs/{run['id']}").json()["created_at"]) == _utc(run["created_at"])
    dataset = client.get("/api/datasets/1").json()
    assert _utc(dataset["created_at"]) == _stored(store, "SELECT created_at FROM datasets WHERE id = 1")
    study = client.get("/api/fidelity").json()["items"][0]
    assert _utc(study["created_at"]) == _utc(client.get(f"/api/fidelity/{study['id']}").json()["created_at"])


def test_status_enums_are_declared(schema):
    components = schema["components"]["schemas"]
    assert components["RunSummary"]["properties"]["status"]["enum"] == list(RUN_STATUSES)
    assert components["JobStatus"]["properties"]["status"]["enum"] == list(JOB_STATUSES)
    health = components["Health"]["properties"]["status"]
    assert health.get("enum", [health.get("const")]) == ["ok"]

    def parameter(path, name):
        found = [p for p in schema["paths"][path]["get"]["parameters"] if p["name"] == name]
        options = found[0]["schema"].get("anyOf", [found[0]["schema"]])
        return next(option for option in options if option.get("type") != "null")

    assert parameter("/api/runs", "status")["enum"] == list(RUN_STATUSES)
    assert parameter("/api/jobs", "status")["enum"] == list(JOB_STATUSES)
    assert parameter("/api/sql", "format")["enum"] == ["json", "csv"]
    assert parameter("/api/sql", "sql")["minLength"] == 1
    assert parameter("/api/sql", "sql")["maxLength"] == MAX_QUERY_STRING_BYTES
    for axis in ("y", "x"):
        bounds = parameter("/api/runs/{run_id}/samples/{sample_index}/pixel-sources", axis)
        assert (bounds["minimum"], bounds["maximum"]) == (0, MAX_PIXEL)
    assert components["SqlRequest"]["properties"]["sql"]["minLength"] == 1
    patch = components["PatchUse"]["properties"]
    assert patch["top"]["minimum"] == patch["left"]["minimum"] == 0
    assert patch["height"]["minimum"] == patch["width"]["minimum"] == 1
    shape = components["DatasetInfo"]["properties"]["shape"]
    assert shape["minItems"] == shape["maxItems"] == 3 and shape["items"]["minimum"] == 1


def test_unknown_status_filters_are_400_naming_the_choices(client):
    for url in ("/api/runs?status=done", "/api/jobs?status=done"):
        response = client.get(url)
        assert response.status_code == 400 and "'running'" in response.json()["message"], response.text


def test_a_dead_writer_is_a_note_beside_the_status_enum(client, monkeypatch):
    summaries = runs.run_summaries

    def with_a_dead_writer(*args, **kwargs):
        rows = summaries(*args, **kwargs)
        return [{**rows[0], "status": "running (writer pid 4242 gone)"}, *rows[1:]]

    monkeypatch.setattr(runs, "run_summaries", with_a_dead_writer)
    listed = client.get("/api/runs").json()["items"][0]
    assert (listed["status"], listed["status_note"]) == ("running", "writer pid 4242 gone")
    detail = client.get(f"/api/runs/{listed['id']}").json()
    assert (detail["status"], detail["status_note"]) == ("running", "writer pid 4242 gone")
    assert client.get("/api/runs?status=running").json()["total"] == 1


def test_every_error_response_is_declared_as_json_error_body(schema, client):
    assert "HTTPValidationError" not in schema["components"]["schemas"]  # FastAPI's 422 body: never sent
    for path, operations in schema["paths"].items():
        for method, operation in operations.items():
            responses = operation["responses"]
            assert {"400", "409", "503"} <= set(responses), (method, path)
            if path != "/api/health":
                assert {"401", "403"} <= set(responses), (method, path)
            if operation.get("parameters") or operation.get("requestBody"):
                assert {"400", "422"} <= set(responses), (method, path)
            for status, response in responses.items():
                if int(status) >= 400:
                    assert response["content"] == {
                        "application/json": {"schema": {"$ref": "#/components/schemas/ErrorBody"}}}, (path, status)
    log = schema["paths"]["/api/jobs/{job_id}/log"]["get"]["responses"]
    assert set(log["200"]["content"]) == {"text/plain"} and "404" in log
    answered = client.get("/api/jobs/999/log")  # as declared: JSON
    assert answered.status_code == 404 and answered.headers["content-type"] == "application/json"
    image = schema["paths"]["/api/runs/{run_id}/samples/{sample_index}/image.png"]["get"]["responses"]
    assert set(image["200"]["content"]) == {"image/png"} and "304" in image
    assert "413" in schema["paths"]["/api/sql"]["post"]["responses"]
    assert "414" in schema["paths"]["/api/sql"]["get"]["responses"]


def _padded_select(query_bytes: int) -> dict:
    """params whose query string (`sql=...`, percent-encoded) is exactly `query_bytes` long."""
    head = "sql=SELECT+1+--+"
    return {"sql": "SELECT 1 -- " + "x" * (query_bytes - len(head))}


def test_get_sql_query_strings_over_the_limit_are_414_pointing_to_post(client, schema):
    assert f"{MAX_QUERY_STRING_BYTES:,} bytes" in schema["paths"]["/api/sql"]["get"]["description"]
    assert "POST /api/sql" in schema["paths"]["/api/sql"]["get"]["description"]
    at_limit = client.get("/api/sql", params=_padded_select(MAX_QUERY_STRING_BYTES))
    assert len(at_limit.request.url.query) == MAX_QUERY_STRING_BYTES
    assert at_limit.status_code == 200 and at_limit.json()["rows"] == [[1]], at_limit.text
    over = client.get("/api/sql", params=_padded_select(MAX_QUERY_STRING_BYTES + 1))
    assert over.status_code == 414 and over.headers["content-type"] == "application/json"
    message = over.json()["message"]
    assert f"{MAX_QUERY_STRING_BYTES + 1} bytes" in message and str(MAX_QUERY_STRING_BYTES) in message
    assert "POST /api/sql" in message
    posted = client.post("/api/sql", json=_padded_select(MAX_QUERY_STRING_BYTES + 1))
    assert posted.status_code == 200 and posted.json()["rows"] == [[1]]


def test_every_integer_of_a_job_request_is_bounded(schema, client):
    fields = schema["components"]["schemas"]["SampleJobRequest"]["properties"]
    for name, field in fields.items():
        for option in field.get("anyOf", [field]):
            if option.get("type") == "integer":
                assert option.get("maximum", 2**63) < 2**63 and "minimum" in option, (name, option)
    assert fields["dataset_id"]["maximum"] == MAX_ID
    for body, name in [({"dataset_id": 10**20}, "dataset_id"), ({"dataset_id": 2**63}, "dataset_id"),
                       ({"dataset_id": 1, "patch_size": MAX_PIXEL + 1}, "patch_size")]:
        response = client.post("/api/jobs", json=body)
        assert response.status_code == 400 and response.json()["message"].startswith(name), response.text
    assert client.get("/api/jobs").json()["total"] == 0  # nothing was started
