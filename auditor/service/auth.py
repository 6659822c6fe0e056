"""API keys of the report service: creation, hashed storage, scopes, and the FastAPI checks.

A key is the token ``pspc_<id>_<secret>`` (secret: 32 random bytes, URL-safe base64). The
store keeps only sha256(token) in ``api_keys.hash``, so reading the database does not give
a usable key; the token is shown once, by `auditor keys create`. Scopes: ``read`` (every
GET: runs, samples, reports, SQL) and ``submit`` (POST /api/jobs); submit implies read.

Modes: while the store holds no active key the service runs in LOCAL SINGLE-USER mode and
checks nothing (said at start-up). Once it holds one (or the service was started with
keys_required=True), every request needs a key:

- API clients send ``Authorization: Bearer <token>`` or ``X-API-Key: <token>``;
- browsers may also pass ``?key=<token>`` once on an HTML page (the service then sets the
  HttpOnly cookie ``auditor_key`` so the links that follow work), or send that cookie.
  Query parameters and cookies are accepted only on HTML pages (``require_scope(...,
  browser=True)``), never on /api, so keys do not end up in API clients' URLs and logs.

Missing or unknown/revoked key: 401; a key without the scope: 403; both as JSON errors.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import os
import re
import secrets
import threading
import time
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Callable, Iterable

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request

from auditor.store import database
from auditor.store.database import NotFoundError, StoreError
from auditor.store.recorder import utcnow

if TYPE_CHECKING:
    from auditor.service.app import ServiceSettings

log = logging.getLogger("auditor.service.auth")

__all__ = ["AccessDenied", "ApiKey", "COOKIE_NAME", "KeyRing", "QUERY_PARAM", "SCOPES", "TOKEN_PREFIX",
           "create_key", "get_settings", "grants", "has_active_keys", "hash_token", "list_keys", "local_mode_message",
           "parse_token",
           "require_scope", "revoke_key", "verify_key"]

SCOPES = ("read", "submit")
TOKEN_PREFIX = "pspc"
COOKIE_NAME = "auditor_key"
QUERY_PARAM = "key"
_TOKEN = re.compile(rf"^{TOKEN_PREFIX}_(\d+)_([A-Za-z0-9_-]{{16,}})$")


class AccessDenied(Exception):
    """A request without a valid key (status 401) or without the needed scope (403)."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass(frozen=True)
class ApiKey:
    """One stored key, without its secret."""

    id: int
    name: str
    scopes: tuple[str, ...]
    created_at: datetime
    revoked_at: datetime | None = None
    last_used_at: datetime | None = None

    @property
    def active(self) -> bool:
        return self.revoked_at is None

    def allows(self, scope: str) -> bool:
        return grants(self.scopes, scope)


def grants(scopes: Iterable[str], needed: str) -> bool:
    """Whether `scopes` cover `needed` (submit implies read)."""
    scopes = set(scopes)
    return needed in scopes or (needed == "read" and "submit" in scopes)


def _check_scopes(scopes: Iterable[str]) -> tuple[str, ...]:
    scopes = tuple(dict.fromkeys(s.strip() for s in scopes if s.strip()))
    unknown = [s for s in scopes if s not in SCOPES]
    if unknown or not scopes:
        raise StoreError(f"unknown scope(s) {', '.join(map(repr, unknown)) or '(none given)'}; "
                         f"choose from {', '.join(SCOPES)} (submit implies read)")
    if "submit" in scopes:
        scopes += ("read",)  # submit implies read: stored explicitly, so listings say so
    return tuple(s for s in SCOPES if s in scopes)


def hash_token(token: str) -> str:
    """What the store keeps of a key: sha256 of the whole token, hex."""
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def parse_token(token: str) -> int | None:
    """The key id of a well-formed token, else None."""
    match = _TOKEN.match(token.strip()) if token else None
    return int(match.group(1)) if match else None


# ---------------------------------------------------------------------------------------
# Library: create, list, revoke (used by `auditor keys`)
# ---------------------------------------------------------------------------------------
_COLUMNS = "id, name, scopes, created_at, revoked_at, last_used_at"


def _key(row) -> ApiKey:
    return ApiKey(int(row[0]), row[1], tuple(s for s in row[2].split(",") if s), row[3], row[4], row[5])


def create_key(db_path, name: str, scopes: Iterable[str] = ("read",),
               timeout: float = database.DEFAULT_TIMEOUT) -> tuple[ApiKey, str]:
    """Store a new key; returns (key, token). The token is not stored and cannot be shown again."""
    name = (name or "").strip()
    if not name:
        raise StoreError("an API key needs a name (who or what uses it)")
    scopes = _check_scopes(scopes)
    with database.connect(db_path, timeout=timeout, check_schema=True) as conn:
        key_id = int(conn.execute("SELECT nextval('api_key_ids')").fetchone()[0])
        token = f"{TOKEN_PREFIX}_{key_id}_{secrets.token_urlsafe(32)}"
        conn.execute("INSERT INTO api_keys (id, name, scopes, hash, created_at) VALUES (?, ?, ?, ?, ?)",
                     [key_id, name, ",".join(scopes), hash_token(token), utcnow()])
        row = conn.execute(f"SELECT {_COLUMNS} FROM api_keys WHERE id = ?", [key_id]).fetchone()
    return _key(row), token


def list_keys(db_path, include_revoked: bool = True, timeout: float = database.DEFAULT_TIMEOUT) -> list[ApiKey]:
    """Every key (never its secret), oldest first."""
    where = "" if include_revoked else " WHERE revoked_at IS NULL"
    with database.connect(db_path, read_only=True, timeout=timeout, check_schema=True) as conn:
        rows = conn.execute(f"SELECT {_COLUMNS} FROM api_keys{where} ORDER BY id").fetchall()
    return [_key(r) for r in rows]


def revoke_key(db_path, key_id: int, timeout: float = database.DEFAULT_TIMEOUT) -> ApiKey:
    """Revoke a key (at once: the service re-reads keys within a second). Revoking twice keeps the first time."""
    with database.connect(db_path, timeout=timeout, check_schema=True) as conn:
        row = conn.execute(f"SELECT {_COLUMNS} FROM api_keys WHERE id = ?", [int(key_id)]).fetchone()
        if row is None:
            raise NotFoundError(f"{db_path}: no API key {key_id}")
        if row[4] is None:
            conn.execute("UPDATE api_keys SET revoked_at = ? WHERE id = ?", [utcnow(), int(key_id)])
            row = conn.execute(f"SELECT {_COLUMNS} FROM api_keys WHERE id = ?", [int(key_id)]).fetchone()
    return _key(row)


def has_active_keys(db_path, timeout: float = database.DEFAULT_TIMEOUT) -> bool:
    with database.connect(db_path, read_only=True, timeout=timeout, check_schema=True) as conn:
        return bool(conn.execute("SELECT count(*) FROM api_keys WHERE revoked_at IS NULL").fetchone()[0])


def verify_key(db_path, token: str, timeout: float = database.DEFAULT_TIMEOUT) -> ApiKey:
    """The active key a token belongs to; AccessDenied(401) for a malformed, unknown or revoked token."""
    key_id = parse_token(token)
    if key_id is None:
        raise AccessDenied(401, "malformed API key (expected pspc_<id>_<secret>)")
    with database.connect(db_path, read_only=True, timeout=timeout, check_schema=True) as conn:
        row = conn.execute(f"SELECT {_COLUMNS}, hash FROM api_keys WHERE id = ?", [key_id]).fetchone()
    if row is None or not hmac.compare_digest(row[6], hash_token(token)):
        raise AccessDenied(401, "unknown API key")
    if row[4] is not None:
        raise AccessDenied(401, f"API key {key_id} was revoked")
    return _key(row[:6])


# ---------------------------------------------------------------------------------------
# The service's view of the keys: cached, refreshed every second
# ---------------------------------------------------------------------------------------
class KeyRing:
    """The store's keys as the service sees them: re-read at most every `ttl` seconds (so a
    request does not open the file for its key check, and a revocation takes effect within
    `ttl`); last-use times are written back at most once a minute per key, best effort.
    `check` answers from memory; the caller refreshes when `stale` (require_scope does)."""

    def __init__(self, db_path, timeout: float, required: bool, ttl: float = 1.0, touch_every: float = 60.0):
        self.db_path, self.timeout, self.ttl, self.touch_every = db_path, timeout, ttl, touch_every
        self.required_at_start = required
        self._reading = threading.Lock()
        self._keys: dict[int, tuple[str, ApiKey]] = {}
        self._loaded = -float("inf")
        self._touched: dict[int, float] = {}
        self.refresh_wait = 0.05  # seconds a request waits for a refresh of a list already read

    @property
    def stale(self) -> bool:
        return time.monotonic() - self._loaded >= self.ttl

    def refresh(self) -> None:
        """Re-read the keys if stale (one reader at a time; the others keep the previous list)."""
        if not self.stale:
            return
        first = self._loaded == -float("inf")
        if not self._reading.acquire(blocking=first):
            return
        try:
            if not self.stale:
                return
            with database.connect(self.db_path, read_only=True, timeout=self.timeout, check_schema=True) as conn:
                rows = conn.execute(f"SELECT {_COLUMNS}, hash FROM api_keys").fetchall()
            self._keys = {int(r[0]): (r[6], _key(r[:6])) for r in rows}
            self._loaded = time.monotonic()
        finally:
            self._reading.release()

    async def refresh_async(self) -> None:
        """Refresh in a worker thread; wait for it at most `refresh_wait` seconds once keys were
        loaded (a writer holding the store's lock must not hold up requests: they go on with the
        list read a second ago, and the refresh finishes in the background)."""
        task = asyncio.ensure_future(run_in_threadpool(self._refresh_logged))
        if self._loaded == -float("inf"):
            await task
            return
        try:
            await asyncio.wait_for(asyncio.shield(task), self.refresh_wait)
        except asyncio.TimeoutError:
            pass

    def _refresh_logged(self) -> None:
        try:
            self.refresh()
        except StoreError as exc:
            if self._loaded == -float("inf"):
                raise
            log.warning("could not re-read the API keys (keeping the previous list): %s", exc)

    @property
    def required(self) -> bool:
        """Keys are checked if required at start-up or any active key exists now (never switches back off)."""
        if not self.required_at_start:
            if self._loaded == -float("inf"):
                self.refresh()
            if any(key.active for _, key in self._keys.values()):
                self.required_at_start = True  # once on, stays on for this process
        return self.required_at_start

    def check(self, token: str | None, scope: str) -> ApiKey | None:
        """The key allowed to act with `scope`; None in local mode; AccessDenied otherwise."""
        if not self.required:
            return None
        if not token:
            raise AccessDenied(401, f"this service requires an API key with scope {scope!r}: send "
                                    "'Authorization: Bearer <key>' or 'X-API-Key: <key>'")
        key_id = parse_token(token)
        if key_id is None:
            raise AccessDenied(401, "malformed API key (expected pspc_<id>_<secret>)")
        stored = self._keys.get(key_id)
        if stored is None or not hmac.compare_digest(stored[0], hash_token(token)):
            raise AccessDenied(401, "unknown API key")
        key = stored[1]
        if not key.active:
            raise AccessDenied(401, f"API key {key_id} ({key.name}) was revoked")
        if not key.allows(scope):
            raise AccessDenied(403, f"API key {key_id} ({key.name}) has scope {','.join(key.scopes)}; "
                                    f"this needs {scope!r}")
        return key

    def touch_due(self, key_id: int) -> bool:
        return time.monotonic() - self._touched.get(key_id, -float("inf")) >= self.touch_every

    def touch(self, key_id: int) -> None:
        """Record the key's last use (best effort: a busy writer must not fail a read request)."""
        if not self.touch_due(key_id):
            return
        self._touched[key_id] = time.monotonic()
        try:
            with database.connect(self.db_path, timeout=min(self.timeout, 0.5)) as conn:
                conn.execute("UPDATE api_keys SET last_used_at = ? WHERE id = ?", [utcnow(), key_id])
        except (StoreError, OSError):
            self._touched.pop(key_id, None)


# ---------------------------------------------------------------------------------------
# FastAPI dependencies
# ---------------------------------------------------------------------------------------
async def get_settings(request: Request) -> "ServiceSettings":
    """The ServiceSettings the app was built with (request.app.state.settings)."""
    return request.app.state.settings


def _token(request: Request, browser: bool) -> str | None:
    header = request.headers.get("authorization")
    if header:
        scheme, _, value = header.partition(" ")
        if scheme.lower() == "bearer" and value.strip():
            return value.strip()
    if request.headers.get("x-api-key"):
        return request.headers["x-api-key"].strip()
    if browser:
        return request.query_params.get(QUERY_PARAM) or request.cookies.get(COOKIE_NAME)
    return None


def require_scope(scope: str, *, browser: bool = False) -> Callable:
    """A dependency that lets the request through with a key holding `scope` (or in local mode).

    Returns the ApiKey used (None in local mode). `browser=True` (HTML pages) also accepts
    ``?key=`` and the ``auditor_key`` cookie.
    """
    if scope not in SCOPES:
        raise ValueError(f"unknown scope {scope!r}; choose from {', '.join(SCOPES)}")

    async def dependency(request: Request) -> ApiKey | None:
        # async, with the store reads (at most once a second) in a worker thread: most
        # requests are checked from memory without leaving the event loop
        ring: KeyRing = request.app.state.keys
        if ring.stale:
            await ring.refresh_async()
        key = ring.check(_token(request, browser), scope)
        if key is not None and ring.touch_due(key.id):
            await run_in_threadpool(ring.touch, key.id)
        request.state.api_key = key
        return key

    dependency.__name__ = f"require_{scope}" + ("_browser" if browser else "")
    return dependency


def local_mode_message(db_path: os.PathLike | str) -> str:
    return (f"LOCAL SINGLE-USER MODE: {db_path} holds no API key, so every request is allowed without one. "
            "Create a key with `auditor keys create NAME` to require keys.")
