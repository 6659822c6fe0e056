"""The HTML pages through the service app (auditor.service.app.create_app + auditor/service/pages.py)."""

from __future__ import annotations

import csv
import io
import json
import shutil
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from auditor.service.auth import COOKIE_NAME, create_key
from auditor.service.app import ServiceSettings, create_app
from tests.support.pages import assert_page


def _copy(store, tmp_path_factory, name: str) -> Path:
    """A private copy of a recorded store (the service keeps its file open between requests)."""
    path = tmp_path_factory.mktemp(name) / "provenance.duckdb"
    shutil.copy(store.db, path)
    return path


@pytest.fixture(scope="module")
def client(random_store, tmp_path_factory) -> TestClient:
    return TestClient(create_app(ServiceSettings(db_path=_copy(random_store, tmp_path_factory, "pages"),
                                                 sql_row_cap=5)))


@pytest.mark.slow
def test_every_page_is_served(client, random_store):
    run, failed = random_store.complete_run, random_store.failed_run
    assert_page(client.get("/"), 200, "Provenance store", f'href="/runs/{run}"', "hostile &lt;set&gt;")
    assert_page(client.get("/?q=img-3"), 200, 'href="/datasets/1/images/3"')
    assert_page(client.get(f"/runs/{run}"), 200, f'href="/runs/{run}/samples/2"')
    assert_page(client.get(f"/runs/{failed}"), 200, "failed")
    page = assert_page(client.get(f"/runs/{run}/samples/1"), 200, 'id="map-dominant"', 'id="timeline"')
    assert f'href="/runs/{run}/samples/1/export.html"' in page
    assert_page(client.get(f"/runs/{run}/samples/1?step=1&concentration=entropy"), 200, "Attribution at step 1",
                "normalised entropy")
    assert_page(client.get(f"/runs/{failed}/samples/0"), 200, "not there yet")
    assert_page(client.get("/datasets/1/images/0"), 200, "&lt;script&gt;alert(")
    assert_page(client.get("/sql"), 200, "Example queries", "top-sources")


def test_exports_download(client, random_store):
    base = f"/runs/{random_store.complete_run}/samples/0"
    response = client.get(f"{base}/export.html")
    assert_page(response, 200, "self-contained export")
    assert 'attachment; filename="pspc-report-run1-sample0.html"' == response.headers["content-disposition"]
    assert 'href="/' not in response.text and "src=\"/" not in response.text
    data = client.get(f"{base}/export.json?images=none")
    assert data.status_code == 200 and data.headers["content-type"].startswith("application/json")
    body = json.loads(data.text)
    assert body["page"] == "SampleReport" and body["image"] is None and body["sources"]
    rows = list(csv.DictReader(io.StringIO(client.get(f"{base}/export.csv").text)))
    assert rows and {r["section"] for r in rows} == {"final", "trajectory", "step", "timeline"}


def test_unknown_ids_are_404_pages(client, random_store):
    run = random_store.complete_run
    for url, words in [("/runs/99", "no run 99"), (f"/runs/{run}/samples/3", "has no sample 3"),
                       (f"/runs/{run}/samples/0?step=7", "no recorded step 7"),
                       ("/runs/99/samples/0/export.html", "no run 99"), ("/runs/99/samples/0/export.json", "no run 99"),
                       ("/datasets/4/images/0", "no dataset 4"), ("/datasets/1/images/10", "no training image 10")]:
        page = assert_page(client.get(url), 404, words)
        assert "provenance.duckdb" not in page  # the server's file path is not shown


def test_bad_parameters_are_400_pages(client, random_store):
    run = random_store.complete_run
    for url in ["/runs/abc", f"/runs/{run}?page=0", f"/runs/{run}/samples/0?step=-1",
                f"/runs/{run}/samples/0?concentration=gini", "/?per_page=100000",
                f"/runs/{run}/samples/0/export.json?images=tiff"]:
        assert_page(client.get(url), 400)
    page = assert_page(client.get("/sql", params={"sql": "DELETE FROM runs"}), 403, "read-only")
    assert 'id="sql-error"' in page
    assert_page(client.get("/sql", params={"sql": "SELEC 1"}), 400, "syntax")


def test_sql_page_runs_examples_under_the_row_cap(client):
    page = assert_page(client.get("/sql", params={"sql": "SELECT * FROM range(20)"}), 200, "truncated at 5 rows")
    assert page.count("<tr><td>") == 5
    assert_page(client.get("/sql", params={"sql": "SELECT id, status FROM runs ORDER BY id"}), 200, "complete", "failed")


def test_pages_honour_api_keys(random_store, tmp_path_factory):
    db = _copy(random_store, tmp_path_factory, "pages-keys")
    _, reader = create_key(db, "auditor", ["read"])
    app = create_app(ServiceSettings(db_path=db))
    client = TestClient(app)
    assert_page(client.get("/"), 401, "API key", "?key=")
    assert_page(client.get("/runs/1", headers={"X-API-Key": "pspc_1_" + "x" * 43}), 401, "unknown API key")
    assert_page(client.get("/runs/1", headers={"Authorization": f"Bearer {reader}"}), 200, "Run 1")
    # a browser opens one page with ?key=, then the cookie carries the key
    response = client.get(f"/?key={reader}")
    assert_page(response, 200)
    assert COOKIE_NAME in response.headers.get("set-cookie", "")
    client.cookies.set(COOKIE_NAME, reader)
    assert_page(client.get("/runs/1/samples/0"), 200, 'id="map-dominant"')


HUGE = "100000000000000000000"  # 10**20 > 2**63


@pytest.mark.parametrize("url", [f"/?page={HUGE}", f"/runs/{HUGE}", f"/runs/1/samples/{HUGE}",
                                 f"/runs/{HUGE}/samples/0/export.csv", f"/datasets/{HUGE}/images/0",
                                 f"/fidelity/{HUGE}", f"/fidelity?page={HUGE}"])
def test_page_integers_beyond_int64_are_400(random_store, tmp_path_factory, url):
    app = create_app(ServiceSettings(db_path=_copy(random_store, tmp_path_factory, "huge")))
    response = TestClient(app, raise_server_exceptions=False).get(url)
    assert response.status_code == 400 and response.headers["content-type"].startswith("text/html"), response.text


@pytest.mark.parametrize("key", ["a;Path=/evil", "x; Domain=evil.example", "\u00e9", "\u20ac",
                                 "pspc_1_" + "x" * 43 + "\n", "pspc_\u0661_" + "x" * 43])
def test_malformed_key_in_local_mode_sets_no_cookie(client, key):
    response = client.get("/", params={"key": key})
    assert response.status_code == 200
    assert response.headers.get("set-cookie") is None
    client.cookies.clear()
