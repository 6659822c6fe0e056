"""What the service keeps to itself and whom it answers: SQL sees only the provenance tables,
error bodies carry no store path or traceback, Host headers are checked (DNS rebinding),
every response has the hardening headers, the API docs need the read scope once keys exist,
and the SQL byte cap and time limit (the answer's encoding included) are settings."""

from __future__ import annotations

import html
import shutil
import time
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from auditor.cli.parser import build_parser
from auditor.cli.sampling import serve_settings
from auditor.errors import LockedError, UserError
from auditor.service import auth as access
from auditor.service.app import ServiceSettings, create_app
from auditor.store import keys, query, runs
from tests.support.pages import assert_page


@pytest.fixture(scope="module")
def store(recorded_random, tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("security") / "provenance.duckdb"
    shutil.copy(recorded_random.db, path)
    key, _ = access.create_key(path, "robot", ["read"])  # a row that a leaking query would show ...
    keys.revoke_key(path, key.id)  # ... revoked, so the service stays in local mode
    return path


@pytest.fixture(scope="module")
def client(store) -> TestClient:
    return TestClient(create_app(ServiceSettings(db_path=store)))


def assert_error(response, status: int, *words: str) -> dict:
    assert response.status_code == status, response.text
    body = response.json()
    assert body["status"] == status and body["message"]
    for word in words:
        assert word in body["message"], body["message"]
    return body


def assert_private(text: str, store: Path) -> None:
    """No path of the store's (as configured or resolved) and no traceback in `text`."""
    for form in {str(store), str(store.resolve()), str(store.parent), str(store.resolve().parent)}:
        assert form not in text, text
    assert "Traceback" not in text and 'File "' not in text, text


# ---------------------------------------------------------------------------------------
# SQL: the provenance tables and views only
# ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("sql", ["SELECT name, scopes, hash, last_used_at FROM api_keys", "SELECT * FROM jobs",
                                 "SELECT path FROM duckdb_databases()", "SELECT * FROM duckdb_tables()",
                                 "SELECT * FROM information_schema.tables", "SHOW TABLES",
                                 "WITH k AS (SELECT * FROM main.api_keys) SELECT * FROM k",
                                 "SELECT * FROM query_table('api_keys')"])
def test_a_read_key_cannot_read_keys_jobs_or_the_catalog(client, store, sql):
    body = assert_error(client.post("/api/sql", json={"sql": sql}), 403)
    assert "not visible to SQL" in body["message"] or "not available in SQL" in body["message"] \
        or "SHOW TABLES" in body["message"]
    assert "robot" not in body["message"]
    assert_private(str(body), store)
    page = assert_page(client.get("/sql", params={"sql": sql}), 403, "sql-error")
    assert "robot" not in page and 'id="results"' not in page
    assert_private(page, store)


def test_sql_still_answers_the_documented_queries(client):
    for example in client.get("/api/sql/examples").json():
        assert client.post("/api/sql", json={"sql": example["sql"]}).status_code == 200, example["name"]
    assert client.get("/api/sql", params={"sql": "SELECT count(*) AS n FROM runs"}).json()["rows"] == [[1]]


# ---------------------------------------------------------------------------------------
# Error bodies: no store path, no traceback
# ---------------------------------------------------------------------------------------
def test_error_bodies_name_no_path_of_the_store(client, store, monkeypatch):
    body = assert_error(client.get("/api/runs/999"), 404, "no run 999")
    assert_private(body["message"], store)
    failing = (f"SELECT error('boom: cannot read {store.resolve()} now\n"
               "Traceback (most recent call last):\n  File \"x\"')")
    body = assert_error(client.post("/api/sql", json={"sql": failing}), 400, "boom: cannot read the store now")
    assert_private(body["message"], store)
    page = assert_page(client.get("/sql", params={"sql": failing}), 400, "boom")
    error = page[page.index('id="sql-error"'):]
    assert "cannot read the store now" in error  # the form above it shows the statement as typed
    assert_private(error[:error.index("</div>")], store)

    def locked(*args, **kwargs):
        raise LockedError(f'{store}: locked (IO Error: Could not set lock on file "{store.resolve()}")')

    monkeypatch.setattr(runs, "run_summaries", locked)
    body = assert_error(client.get("/api/runs"), 503, "locked", 'file "the store"')
    assert_private(body["message"], store)


def test_a_failed_run_s_stored_error_is_shown_without_server_paths(store, tmp_path):
    """A run that lost the lock stores DuckDB's message, which names the store's and the lock
    holder's paths: the API and the run's page show it with the folders cut."""
    from auditor.store import database
    from tests.support.store import fetch

    copy = tmp_path / "provenance.duckdb"
    shutil.copy(store, copy)

    message = (f'the writer lost the store lock at step 1 of run 1: IO Error: Could not set lock on file '
               f'"{copy.resolve()}": Conflicting lock is held in /opt/venv/bin/python3.11 (PID 4242)')
    with database.connect(copy) as conn:
        conn.execute("UPDATE runs SET status = 'failed', error = ? WHERE id = 1", [message])
    assert fetch(copy, "SELECT error FROM runs WHERE id = 1") == [(message,)]  # the store keeps it all
    client = TestClient(create_app(ServiceSettings(db_path=copy)))
    for shown in (client.get("/api/runs/1").json()["error"], client.get("/api/runs").json()["items"][0]["error"],
                  html.unescape(client.get("/runs/1").text)):
        assert 'lock on file "provenance.duckdb"' in shown and "held in python3.11 (PID 4242)" in shown
        assert str(copy.parent) not in shown and "/opt/venv" not in shown


# ---------------------------------------------------------------------------------------
# Host header, hardening headers, API docs
# ---------------------------------------------------------------------------------------
def test_only_requests_for_the_service_s_own_names_are_answered(store, monkeypatch):
    """A page on evil.example whose DNS name now points at 127.0.0.1 must not get answers."""
    monkeypatch.delenv("AUDITOR_TRUSTED_HOSTS", raising=False)
    app = create_app(ServiceSettings(db_path=store))
    for host in ("localhost", "localhost:8000", "127.0.0.1:8000", "[::1]:8000", "LOCALHOST"):
        assert TestClient(app).get("/api/health", headers={"host": host}).status_code == 200, host
    for host in ("evil.example", "evil.example:8000", "testserver", "localhost.evil.example", ""):
        response = TestClient(app).get("/api/runs", headers={"host": host})
        body = assert_error(response, 400, "is not a name of this service", "AUDITOR_TRUSTED_HOSTS")
        assert body["error"] == "bad_request" and response.headers["x-frame-options"] == "DENY"
    assert TestClient(app).get("/").status_code == 400  # TestClient's own "testserver"

    monkeypatch.setenv("AUDITOR_TRUSTED_HOSTS", "reports.example.org, *.lan")
    settings = ServiceSettings(db_path=store, host="192.168.1.5")
    assert settings.allowed_hosts == ["localhost", "127.0.0.1", "[::1]", "192.168.1.5", "reports.example.org",
                                      "*.lan"]
    app = create_app(settings)
    for host in ("reports.example.org", "box.lan:8000", "192.168.1.5:8000", "localhost"):
        assert TestClient(app).get("/api/health", headers={"host": host}).status_code == 200, host
    assert TestClient(app).get("/api/health", headers={"host": "lan"}).status_code == 400
    assert TestClient(create_app(ServiceSettings(db_path=store, trusted_hosts=["*"]))).get("/").status_code == 200
    for bad in ("localhost:8000", "http://x.org", "a b", "x.*"):
        with pytest.raises(UserError, match="trusted_hosts: .*is not a host name"):
            ServiceSettings(db_path=store, trusted_hosts=[bad])
    served = serve_settings(build_parser().parse_args(["--db", str(store), "serve", "--host", "::1"]))
    assert served.host == "::1" and served.allowed_hosts[:3] == ["localhost", "127.0.0.1", "[::1]"]
    assert "10.0.0.7" in serve_settings(build_parser().parse_args(["serve", "--host", "10.0.0.7"])).allowed_hosts


def test_every_response_carries_the_hardening_headers(client, recorded_random):
    for url in ("/", f"/runs/{recorded_random.run_id}", "/sql", "/api/runs", "/api/runs/999",
                "/no-such-page", "/api/health"):
        response = client.get(url)
        csp = response.headers["content-security-policy"]
        assert "default-src 'none'" in csp and "frame-ancestors 'none'" in csp and "img-src 'self' data:" in csp, url
        assert response.headers["x-frame-options"] == "DENY" and response.headers["x-content-type-options"] == "nosniff"
        assert response.headers["referrer-policy"] == "no-referrer"
    docs = client.get("/api/docs")
    assert docs.status_code == 200 and "swagger-ui" in docs.text
    assert "script-src 'self';" in docs.headers["content-security-policy"]  # the service's own copy, no CDN
    assert "http" not in docs.headers["content-security-policy"]
    assert docs.headers["x-frame-options"] == "DENY"


def test_the_api_docs_need_the_read_scope_once_keys_exist(store, tmp_path):
    path = tmp_path / "keyed.duckdb"
    shutil.copy(store, path)
    _, token = access.create_key(path, "reader", ["read"])
    client = TestClient(create_app(ServiceSettings(db_path=path)))
    for url in ("/api/docs", "/api/openapi.json"):
        assert_error(client.get(url), 401, "API key")
        assert client.get(url, headers={"Authorization": f"Bearer {token}"}).status_code == 200
    opened = client.get("/api/docs", params={"key": token})  # a browser: the page sets the cookie ...
    assert opened.status_code == 200 and access.COOKIE_NAME in opened.headers["set-cookie"]
    schema = client.get("/api/openapi.json")  # ... which its fetch of the schema carries
    assert schema.status_code == 200 and "/api/sql" in schema.json()["paths"]
    assert "/api/docs" not in schema.json()["paths"]


# ---------------------------------------------------------------------------------------
# SQL caps: bytes and time, both settings
# ---------------------------------------------------------------------------------------
def test_the_sql_byte_cap_is_a_setting(store, monkeypatch):
    monkeypatch.setenv("AUDITOR_SQL_MAX_BYTES", "1000")
    settings = ServiceSettings(db_path=store)
    assert settings.sql_max_bytes == 1000
    client = TestClient(create_app(settings))
    big = "SELECT repeat('x', 2000) AS text"
    assert_error(client.post("/api/sql", json={"sql": big}), 400, "the answer is over 1000 bytes")
    assert_page(client.get("/sql", params={"sql": big}), 400, "the answer is over 1000 bytes")
    assert client.post("/api/sql", json={"sql": "SELECT repeat('x', 500)"}).status_code == 200
    with pytest.raises(UserError, match="sql_max_bytes"):
        ServiceSettings(db_path=store, sql_max_bytes=0)


def test_the_sql_time_limit_covers_encoding_the_answer(store, monkeypatch):
    """A statement that runs at once but whose rows take long to encode is stopped at the limit
    (the encoding used to run unbounded after the query: here 6 s for 600 rows)."""
    import reports.pages.sql as sql_page

    client = TestClient(create_app(ServiceSettings(db_path=store, sql_time_limit_s=0.5)))
    slow_sql = "SELECT [i] AS cell FROM range(600) t(i)"  # list cells: JSON and CSV encode them with jsonable
    real_jsonable, real_cell = query.jsonable, sql_page.display_cell
    monkeypatch.setattr(query, "jsonable", lambda v: time.sleep(0.01) or real_jsonable(v))
    monkeypatch.setattr(sql_page, "display_cell", lambda v: time.sleep(0.01) or real_cell(v))
    for send in (lambda: client.post("/api/sql", json={"sql": slow_sql}),
                 lambda: client.post("/api/sql", params={"format": "csv"}, json={"sql": slow_sql})):
        started = time.monotonic()
        assert_error(send(), 400, "query interrupted after 0.5 s")
        assert time.monotonic() - started < 3.0
    started = time.monotonic()
    assert_page(client.get("/sql", params={"sql": slow_sql}), 400, "query interrupted after 0.5 s")
    assert time.monotonic() - started < 3.0
