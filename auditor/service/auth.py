"""API keys of the report service: tokens, their hashes, and the FastAPI checks.

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

The rows (hash, scopes, revocation, last use) are auditor.store.keys'; this module makes and
hashes tokens and checks them. `auditor keys` uses create_key (listing and revoking are auditor.store.keys).
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import re
import secrets
import threading
import time
from typing import Callable, Iterable

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request

from auditor.errors import StoreError
from auditor.service.settings import ServiceSettings
from auditor.store import database, keys
from auditor.store.keys import SCOPES, ApiKey

log = logging.getLogger("auditor.service.auth")

__all__ = ["AccessDenied", "ApiKey", "COOKIE_NAME", "KeyRing", "QUERY_PARAM", "SCOPES", "TOKEN_PREFIX",
           "create_key", "get_settings", "hash_token", "parse_token", "require_scope", "verify_key", "well_formed_token"]

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


def hash_token(token: str) -> str:
    """What the store keeps of a key: sha256 of the whole token, hex."""
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def well_formed_token(token: str | None) -> bool:
    """Whether `token` is exactly ``pspc_<id>_<secret>`` (nothing around it): only such a value
    is safe to echo into a header (the auditor_key cookie): ASCII, no ``;``, ``,``, spaces or quotes."""
    return bool(token) and token.isascii() and _TOKEN.fullmatch(token) is not None


def parse_token(token: str) -> int | None:
    """The key id of a well-formed token, else None."""
    match = _TOKEN.match(token.strip()) if token else None
    return int(match.group(1)) if match else None


# ---------------------------------------------------------------------------------------
# Library: create and verify (list and revoke are auditor.store.keys')
# ---------------------------------------------------------------------------------------
def create_key(db_path, name: str, scopes: Iterable[str] = ("read",),
               timeout: float = database.DEFAULT_TIMEOUT) -> tuple[ApiKey, str]:
    """Store a new key; returns (key, token). The token is not stored and cannot be shown again."""
    name = (name or "").strip()
    if not name:
        raise StoreError("an API key needs a name (who or what uses it)")
    scopes = keys.normalise_scopes(scopes)
    key_id = keys.next_key_id(db_path, timeout)
    token = f"{TOKEN_PREFIX}_{key_id}_{secrets.token_urlsafe(32)}"
    return keys.insert_key(db_path, key_id, name, scopes, hash_token(token), timeout), token


def verify_key(db_path, token: str, timeout: float = database.DEFAULT_TIMEOUT) -> ApiKey:
    """The active key a token belongs to; AccessDenied(401) for a malformed, unknown or revoked token."""
    key_id = parse_token(token)
    if key_id is None:
        raise AccessDenied(401, "malformed API key (expected pspc_<id>_<secret>)")
    found = keys.key_with_hash(db_path, key_id, timeout)
    if found is None or not hmac.compare_digest(found[1], hash_token(token)):
        raise AccessDenied(401, "unknown API key")
    if not found[0].active:
        raise AccessDenied(401, f"API key {key_id} was revoked")
    return found[0]


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
            self._keys = keys.keys_with_hashes(self.db_path, self.timeout)
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
            keys.touch_key(self.db_path, key_id, timeout=min(self.timeout, 0.5))
        except (StoreError, OSError):
            self._touched.pop(key_id, None)


# ---------------------------------------------------------------------------------------
# FastAPI dependencies
# ---------------------------------------------------------------------------------------
async def get_settings(request: Request) -> ServiceSettings:
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
