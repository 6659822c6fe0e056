"""The API's documentation and index without internet access: /api/docs (Swagger UI) and
/api/redoc (ReDoc) load their scripts and styles from the service itself, under a
Content-Security-Policy of 'self' only, and GET /api lists every resource with its URL, what it
is and the docs' links. (In a real browser: test_docs_browser.py.)"""

from __future__ import annotations

import re
import shutil

import pytest
from fastapi.testclient import TestClient

from auditor.service import auth as access
from auditor.service.app import ServiceSettings, create_app
from tests.support.pages import assert_page

PAGES = ("/api/docs", "/api/redoc")


@pytest.fixture(scope="module")
def client(recorded_random) -> TestClient:
    return TestClient(create_app(ServiceSettings(db_path=recorded_random.db)))


def _references(page: str) -> list[str]:
    return re.findall(r'(?:src|href|spec-url|data-openapi)="([^"]*)"', page)


@pytest.mark.parametrize("path", PAGES)
def test_the_docs_pages_load_everything_from_the_service(client, path):
    page = assert_page(client.get(path))
    references = _references(page)
    assert references and all(url.startswith("/api/") for url in references), references  # no CDN, no other host
    assert "<script>" not in page  # no inline script: the CSP allows none
    csp = client.get(path).headers["content-security-policy"]
    sources = {word for directive in csp.split(";") for word in directive.split()[1:]}
    assert sources <= {"'self'", "'none'", "'unsafe-inline'", "data:", "blob:"}, csp
    assert "script-src 'self';" in csp and "connect-src 'self'" in csp
    for url in references:
        asset = client.get(url)
        assert asset.status_code == 200 and asset.content, url
        if url.split("?")[0].endswith(".js"):
            assert asset.headers["content-type"].startswith("text/javascript") and b"cdn.redoc.ly" not in asset.content


def test_the_bundled_libraries_are_the_real_ones(client):
    swagger = client.get("/api/docs/assets/swagger-ui-bundle.js")
    assert b"SwaggerUIBundle" in swagger.content and len(swagger.content) > 500_000
    assert b"Redoc" in client.get("/api/docs/assets/redoc.standalone.js").content
    assert client.get("/api/docs/assets/swagger-ui.css").headers["content-type"].startswith("text/css")
    init = client.get("/api/docs/assets/swagger-init.js").text
    assert "SwaggerUIBundle(" in init and "validatorUrl: null" in init  # no call to swagger.io's validator
    for name in ("nope.js", "..%2F..%2Fcore.py", "consts.py"):
        assert client.get(f"/api/docs/assets/{name}").status_code == 404, name


def test_the_api_index_lists_every_resource_and_the_docs(client):
    index = client.get("/api")
    assert index.status_code == 200 and index.headers["content-type"] == "application/json"
    body = index.json()
    assert body["docs"].endswith("/api/docs") and body["redoc"].endswith("/api/redoc")
    assert body["openapi"].endswith("/api/openapi.json")
    resources = {r["name"]: r for r in body["resources"]}
    assert {"runs", "samples", "training images", "provenance", "sql", "fidelity", "jobs", "service"} <= set(resources)
    assert resources["runs"]["url"] == "http://testserver/api/runs"
    assert resources["jobs"]["url"] == "http://testserver/api/jobs"
    assert all(r["description"] and "\n" not in r["description"] for r in resources.values())
    listed = {(op["method"], op["path"]) for r in body["resources"] for op in r["operations"]}
    schema = client.get("/api/openapi.json").json()
    assert listed == {(m.upper(), p) for p, ops in schema["paths"].items() for m in ops}
    assert ("POST", "/api/jobs/audit") in listed and ("GET", "/api") in listed
    assert client.get("/api/").json() == body  # the pages' link


def test_the_pages_header_links_to_the_api_index(client):
    page = assert_page(client.get("/"))
    assert 'href="/api/">API</a>' in page


def test_the_index_and_both_docs_pages_need_the_read_scope_once_keys_exist(recorded_random, tmp_path):
    path = tmp_path / "keyed.duckdb"
    shutil.copy(recorded_random.db, path)
    _, token = access.create_key(path, "reader", ["read"])
    client = TestClient(create_app(ServiceSettings(db_path=path)))
    for url in ("/api", *PAGES):
        assert client.get(url).status_code == 401, url
        assert client.get(url, headers={"X-API-Key": token}).status_code == 200, url
    assert client.get("/api/docs/assets/swagger-ui-bundle.js").status_code == 200  # the libraries' files are public
    opened = client.get("/api/redoc", params={"key": token})  # a browser: the page sets the cookie ...
    assert opened.status_code == 200 and access.COOKIE_NAME in opened.headers["set-cookie"]
    assert client.get("/api/openapi.json").status_code == 200  # ... which its fetch of the schema carries
    assert client.get("/api").status_code == 200
