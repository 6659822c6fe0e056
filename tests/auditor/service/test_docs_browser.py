"""The API docs in a real browser (headless Chromium over the DevTools protocol, the Browser of
tests/reports/test_browser.py) on a running service: Swagger UI at /api/docs and ReDoc at
/api/redoc render every operation of the schema, with no request to any host but the service's
(they used to load from a CDN: blank without internet access), and no console error, CSP
violation or failed request. Screenshots are kept under $PSPC_TEST_ARTIFACTS."""

from __future__ import annotations

import threading
import time
import urllib.parse

import pytest
import uvicorn

from auditor.service.app import ServiceSettings, create_app
from auditor.store import database
from tests.reports.test_browser import CHROMIUM, Browser
from tests.support.pages import artifacts_dir

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(CHROMIUM is None, reason="headless Chromium is not installed (apt-get install chromium)")]


@pytest.fixture(scope="module")
def service(tmp_path_factory):
    """The base URL of the app over an empty store, on a loopback port the OS picks (uvicorn in a thread)."""
    db = tmp_path_factory.mktemp("docs") / "provenance.duckdb"
    database.upgrade(db)
    server = uvicorn.Server(uvicorn.Config(create_app(ServiceSettings(db_path=db)), host="127.0.0.1", port=0,
                                           log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "the service did not start"
        time.sleep(0.05)
    port = server.servers[0].sockets[0].getsockname()[1]
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(timeout=30)


@pytest.fixture
def browser(tmp_path):
    instance = Browser(tmp_path / "profile")
    yield instance
    instance.close()


def _operations(browser: Browser, base: str) -> set[tuple[str, str]]:
    schema = browser.js(f"fetch('{base}/api/openapi.json').then(r => r.json())")
    return {(method.upper(), path) for path, ops in schema["paths"].items() for method in ops}


def _wait_for(browser: Browser, expression: str, seconds: float = 60.0):
    deadline = time.monotonic() + seconds
    while not (value := browser.js(expression)):
        assert time.monotonic() < deadline, f"never true: {expression}"
        browser.settle(0.2)
    return value


def _only_the_service(browser: Browser, base: str) -> None:
    """Every request went to the service (or was inline data), and nothing failed."""
    hosts = {urllib.parse.urlsplit(url).netloc for url in browser.requests() if not url.startswith(("data:", "blob:"))}
    assert hosts == {urllib.parse.urlsplit(base).netloc}, hosts
    assert browser.problems() == []


def test_swagger_ui_renders_every_operation_from_the_service_alone(service, browser, tmp_path):
    browser.navigate(f"{service}/api/docs")
    expected = _operations(browser, service)
    _wait_for(browser, f"document.querySelectorAll('.opblock').length >= {len(expected)}")
    shown = browser.js("Array.from(document.querySelectorAll('.opblock')).map(b => ["
                       "b.querySelector('.opblock-summary-method').textContent,"
                       "b.querySelector('.opblock-summary-path').getAttribute('data-path')])")
    assert {(method, path) for method, path in shown} == expected
    assert ("POST", "/api/jobs/audit") in expected and ("GET", "/api") in expected
    browser.screenshot(artifacts_dir(tmp_path) / "api-docs.png")
    browser.settle()
    _only_the_service(browser, service)


def test_redoc_renders_every_operation_from_the_service_alone(service, browser, tmp_path):
    browser.navigate(f"{service}/api/redoc")
    expected = _operations(browser, service)
    count = "document.querySelectorAll('div[data-section-id^=\"operation/\"]').length"  # one per operation
    _wait_for(browser, f"{count} >= {len(expected)}")
    assert browser.js(count) == len(expected)
    assert "Submit an audit of an uploaded image" in browser.js("document.body.innerText")
    browser.screenshot(artifacts_dir(tmp_path) / "api-redoc.png")
    browser.settle()
    _only_the_service(browser, service)
