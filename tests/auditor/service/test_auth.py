"""API keys (auditor.service.auth): hashed storage, scopes, and the service's checks (401 / 403 / 200)."""

from __future__ import annotations

import hashlib
import shutil
import time
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from auditor.service import auth as access
from auditor.store import database, keys
from auditor.cli import main
from auditor.errors import NotFoundError, StoreError
from auditor.service.app import ServiceSettings, create_app


@pytest.fixture
def store(recorded_random, tmp_path) -> Path:
    path = tmp_path / "provenance.duckdb"
    shutil.copy(recorded_random.db, path)
    return path


def client_for(store: Path, **settings) -> TestClient:
    app = create_app(ServiceSettings(db_path=store, **settings))
    app.state.keys.ttl = 0.0  # re-read keys on every request (the service's default is 1 s) ...
    app.state.keys.refresh_wait = 30.0  # ... and wait for it (the service waits 50 ms at most)
    return TestClient(app)


# ---------------------------------------------------------------------------------------
# The library
# ---------------------------------------------------------------------------------------
def test_created_key_is_stored_only_as_its_hash(store):
    key, token = access.create_key(store, "alice", ["read"])
    prefix, key_id, secret = token.split("_", 2)
    assert prefix == "pspc" and int(key_id) == key.id and len(secret) >= 40
    assert key.scopes == ("read",) and key.active and key.last_used_at is None
    with database.connect(store, read_only=True) as conn:
        rows = conn.execute("SELECT * FROM api_keys").fetchall()
    stored = [str(v) for row in rows for v in row]
    assert hashlib.sha256(token.encode()).hexdigest() in stored
    assert not any(secret in v for v in stored)
    raw = b"".join(p.read_bytes() for p in store.parent.glob(store.name + "*") if p.is_file())
    assert secret.encode() not in raw


def test_scopes_list_and_revoke(store):
    reader, _ = access.create_key(store, "reader")
    submitter, token = access.create_key(store, "robot", ["submit", "read", "submit"])
    assert submitter.scopes == ("read", "submit") and submitter.allows("read") and submitter.allows("submit")
    assert reader.allows("read") and not reader.allows("submit")
    assert keys.grants(["submit"], "read")  # submit implies read
    assert [k.name for k in keys.list_keys(store)] == ["reader", "robot"]
    revoked = keys.revoke_key(store, reader.id)
    assert revoked.revoked_at is not None and not revoked.active
    assert keys.revoke_key(store, reader.id).revoked_at == revoked.revoked_at  # idempotent
    assert [k.name for k in keys.list_keys(store, include_revoked=False)] == ["robot"]
    assert access.verify_key(store, token).id == submitter.id
    assert keys.has_active_keys(store)
    keys.revoke_key(store, submitter.id)
    assert not keys.has_active_keys(store)
    with pytest.raises(access.AccessDenied, match="revoked"):
        access.verify_key(store, token)


@pytest.mark.parametrize("name, scopes, match", [("", ["read"], "name"), ("x", ["admin"], "unknown scope"),
                                                 ("x", [], "none given")])
def test_bad_key_requests_are_refused(store, name, scopes, match):
    with pytest.raises(StoreError, match=match):
        access.create_key(store, name, scopes)
    assert keys.list_keys(store) == []


def test_unknown_and_forged_tokens_are_refused(store):
    key, token = access.create_key(store, "alice")
    with pytest.raises(NotFoundError):
        keys.revoke_key(store, 999)
    forged = f"pspc_{key.id}_{'A' * 43}"
    for bad, match in [(forged, "unknown"), ("pspc_999_" + "A" * 43, "unknown"), ("hello", "malformed"),
                       (token + "x", "unknown")]:
        with pytest.raises(access.AccessDenied, match=match) as info:
            access.verify_key(store, bad)
        assert info.value.status == 401


# ---------------------------------------------------------------------------------------
# The service
# ---------------------------------------------------------------------------------------
def test_local_mode_without_keys_checks_nothing(store):
    client = client_for(store)
    assert not client.app.state.settings.keys_required
    assert client.get("/api/runs").status_code == 200
    assert client.get("/api/runs", headers={"Authorization": "Bearer nonsense"}).status_code == 200


def test_keys_required_once_the_store_holds_one(store):
    _, read_token = access.create_key(store, "reader", ["read"])
    _, submit_token = access.create_key(store, "robot", ["submit"])
    client = client_for(store)
    assert client.app.state.settings.keys_required

    missing = client.get("/api/runs")
    assert missing.status_code == 401 and missing.json()["error"] == "unauthorized"
    assert "Bearer" in missing.headers["www-authenticate"] and "API key" in missing.json()["message"]
    assert client.get("/api/runs", headers={"Authorization": "Bearer pspc_1_" + "B" * 43}).status_code == 401
    assert client.get("/api/runs", headers={"X-API-Key": "garbage"}).status_code == 401
    assert client.get("/api/runs", params={"key": read_token}).status_code == 401  # no query keys on the API
    client.cookies.set(access.COOKIE_NAME, read_token)
    assert client.get("/api/runs").status_code == 401  # nor cookies
    client.cookies.clear()

    assert client.get("/api/runs", headers={"Authorization": f"Bearer {read_token}"}).status_code == 200
    assert client.get("/api/runs", headers={"X-API-Key": read_token}).status_code == 200
    assert client.get("/api/runs", headers={"X-API-Key": submit_token}).status_code == 200  # submit implies read

    job = {"dataset_id": 1, "num_samples": 1, "steps": 1}
    forbidden = client.post("/api/jobs", json=job, headers={"X-API-Key": read_token})
    assert forbidden.status_code == 403 and "submit" in forbidden.json()["message"]
    assert client.post("/api/jobs", json=job).status_code == 401
    assert client.post("/api/jobs", json={"dataset_id": 1, "num_samples": 0},
                       headers={"X-API-Key": submit_token}).status_code == 400  # authorised, then validated
    assert client.get("/api/openapi.json").status_code == 401  # the schema and docs need the read scope too
    assert client.get("/api/openapi.json", headers={"X-API-Key": read_token}).status_code == 200


def test_revoking_a_key_takes_effect_and_last_use_is_recorded(store):
    key, token = access.create_key(store, "alice")
    client = client_for(store)
    headers = {"Authorization": f"Bearer {token}"}
    assert client.get("/api/datasets", headers=headers).status_code == 200
    assert keys.list_keys(store)[0].last_used_at is not None
    keys.revoke_key(store, key.id)
    response = client.get("/api/datasets", headers=headers)
    assert response.status_code == 401 and "revoked" in response.json()["message"]
    # revoking the last key does not switch the running service back to local mode
    assert client.get("/api/datasets").status_code == 401


def test_forced_keys_and_a_key_created_while_serving(store):
    forced = client_for(store, keys_required=True)
    assert forced.get("/api/runs").status_code == 401
    local = client_for(store)
    assert local.get("/api/runs").status_code == 200
    _, token = access.create_key(store, "late")
    time.sleep(0.01)
    assert local.get("/api/runs").status_code == 401  # a key now exists: checks are on
    assert local.get("/api/runs", headers={"X-API-Key": token}).status_code == 200


def test_require_scope_rejects_unknown_scopes():
    with pytest.raises(ValueError, match="unknown scope"):
        access.require_scope("admin")


# ---------------------------------------------------------------------------------------
# The command line
# ---------------------------------------------------------------------------------------
def test_keys_cli_create_list_revoke(store, capsys):
    assert main(["--db", str(store), "keys", "create", "ci robot", "--scope", "submit"]) == 0
    out = capsys.readouterr().out
    token = out.strip().splitlines()[-1]
    assert token.startswith("pspc_1_") and "scope read,submit" in out
    assert access.verify_key(store, token).name == "ci robot"
    assert main(["keys", "list", "--db", str(store)]) == 0
    listing = capsys.readouterr().out
    assert "ci robot" in listing and "read,submit" in listing and token.split("_", 2)[2] not in listing
    assert main(["keys", "revoke", "1", "--db", str(store)]) == 0
    assert "revoked" in capsys.readouterr().out
    assert main(["keys", "revoke", "7", "--db", str(store)]) == 2
    assert "no API key 7" in capsys.readouterr().err
    assert main(["keys", "create", "x", "--scope", "admin", "--db", str(store)]) == 2


def test_html_pages_take_the_key_once_as_a_query_parameter_then_from_the_cookie(store):
    _, token = access.create_key(store, "browser")
    client = client_for(store)
    refused = client.get("/")
    assert refused.status_code == 401 and refused.headers["content-type"].startswith("text/html")
    first = client.get("/", params={"key": token})
    assert first.status_code == 200 and first.headers["content-type"].startswith("text/html")
    cookie = first.headers["set-cookie"]
    assert cookie.startswith(f"{access.COOKIE_NAME}={token}") and "HttpOnly" in cookie and "SameSite=Strict" in cookie
    assert client.get("/runs/1").status_code == 200  # the client keeps the cookie
    assert client.get("/api/runs").status_code == 401  # the API takes keys from headers only
    client.cookies.clear()
    assert client.get("/", params={"key": "pspc_9_" + "x" * 43}).headers.get("set-cookie") is None


@pytest.mark.parametrize("key", ["a;Path=/evil", "\u00e9", "\u20ac", access.TOKEN_PREFIX + "_1_" + "x" * 43 + ";Path=/"])
def test_malformed_key_on_a_page_is_401_without_a_cookie_when_keys_are_required(store, key):
    access.create_key(store, "browser")
    response = client_for(store).get("/", params={"key": key})
    assert response.status_code == 401 and response.headers.get("set-cookie") is None
