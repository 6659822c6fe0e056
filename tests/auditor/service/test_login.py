"""A browser signs in with a form (auditor.service.login): the key goes in a form field and an
HttpOnly cookie, never in a page URL; the 401 page holds the form; ?key= stays for scripts."""

from __future__ import annotations

import shutil

import pytest
from fastapi.testclient import TestClient

from auditor.service.app import ServiceSettings, create_app
from auditor.service.auth import COOKIE_NAME, create_key
from tests.support.pages import assert_page


@pytest.fixture(scope="module")
def keyed(random_store, tmp_path_factory):
    db = tmp_path_factory.mktemp("login") / "provenance.duckdb"
    shutil.copy(random_store.db, db)
    _, token = create_key(db, "reader", ["read"])
    return create_app(ServiceSettings(db_path=db)), token


def test_the_401_page_holds_the_sign_in_form(keyed):
    app, _ = keyed
    page = assert_page(TestClient(app).get("/runs/1/samples/0?step=2&key=pspc_1_" + "x" * 43), 401,
                       'action="/login"', 'type="password"', 'name="key"')
    assert 'name="next" value="/runs/1/samples/0?step=2"' in page  # back to the page, without the bad key


def test_signing_in_keeps_the_key_in_a_cookie_and_returns(keyed):
    app, token = keyed
    client = TestClient(app, follow_redirects=False)
    assert_page(client.get("/login", params={"next": "/runs/1"}), 200, 'name="next" value="/runs/1"')
    wrong = client.post("/login", data={"key": "pspc_1_" + "y" * 43, "next": "/runs/1"})
    assert_page(wrong, 401, "unknown API key", 'action="/login"')
    assert COOKIE_NAME not in wrong.headers.get("set-cookie", "")
    response = client.post("/login", data={"key": token, "next": "/runs/1?page=1"})
    assert response.status_code == 303 and response.headers["location"] == "/runs/1?page=1"
    cookie = response.headers["set-cookie"]
    assert cookie.startswith(f"{COOKIE_NAME}={token}") and "HttpOnly" in cookie and "SameSite=strict" in cookie
    assert token not in response.headers["location"]
    client.cookies.set(COOKIE_NAME, token)
    assert_page(client.get("/runs/1"), 200, "Run 1")


@pytest.mark.parametrize("target", ["https://example.org/x", "//example.org/x", "/\\example.org", "runs/1"])
def test_sign_in_never_leaves_the_site(keyed, target):
    app, token = keyed
    response = TestClient(app, follow_redirects=False).post("/login", data={"key": token, "next": target})
    assert response.status_code == 303 and response.headers["location"] == "/"


def test_a_form_from_another_site_is_refused(keyed):
    app, token = keyed
    response = TestClient(app, follow_redirects=False).post("/login", data={"key": token, "next": "/"},
                                                            headers={"Origin": "https://evil.example"})
    assert_page(response, 403, "another site")
    assert COOKIE_NAME not in response.headers.get("set-cookie", "")
