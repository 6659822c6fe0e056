"""The report service: a FastAPI app over the provenance store (HTML pages and a JSON API).

`create_app(ServiceSettings(db_path=...))` builds the app; `auditor serve` runs it with
uvicorn. The JSON API lives under /api (routers in auditor/routers/, one per resource), the
HTML pages at / (auditor/routers/pages.py, rendered from reports/); both read the store
through the same library functions, so a page and its JSON say the same thing.

Errors are JSON objects {"status", "error", "message"} with the status saying what went
wrong: 400 bad parameter or malformed SQL, 401/403 key missing or without the scope, 404
unknown id, 409 store at another schema revision, 413 body too large, 503 store locked by
another process past the lock timeout (with Retry-After).

The store is opened per request, one short transaction at a time (auditor.store.database), so a
sampling job running in another process can write between requests.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from auditor.store import database
from auditor.service.auth import COOKIE_NAME, QUERY_PARAM, AccessDenied, KeyRing, has_active_keys, local_mode_message
from auditor.store.database import LockedError, NotFoundError, SchemaError, StoreError

__all__ = ["ServiceSettings", "create_app", "error_body"]

log = logging.getLogger("auditor.service.app")

API_TITLE = "pspc-auditor report service"
API_DESCRIPTION = """\
Per-image attribution reports over a PSPC provenance store: which training images, at which
locations, built each generated image. Every list is paginated (`limit`, `offset`; the answer
carries `total` and `next`). Errors are `{"status", "error", "message"}`.

Access: when the store holds an API key, send it as `Authorization: Bearer <key>` or
`X-API-Key: <key>`; scope `read` for every GET, `submit` for POST /api/jobs. With no key in the
store the service runs in local single-user mode and checks nothing.
"""


@dataclass
class ServiceSettings:
    """What the service needs to know; tests build one on a temporary store.

    keys_required: None derives it from the store at start-up (any active key -> True);
    True forces key checks even before a key exists. Once keys are required they stay
    required for the life of the process, even if every key is revoked.
    """

    db_path: Path
    lock_timeout: float = database.DEFAULT_TIMEOUT
    sql_row_cap: int = 1000
    sql_time_limit_s: float = 5.0
    max_upload_bytes: int = 10 * 2**20
    cache_bytes: int = 256 * 2**20  # responses about complete runs kept in memory (they never change)
    jobs_dir: Path | None = None  # job logs; default: <store folder>/<store name>.jobs/
    keys_required: bool | None = None
    max_running_jobs: int = 1  # sampling jobs at a time (each uses every CPU core it can)
    job_lock_timeout: float = 120.0  # a job's writer waits this long for the lock (readers may be busy)
    job_niceness: int = 10  # jobs run this much nicer than the service (serving keeps the CPU first)
    python: str | None = None  # interpreter for job subprocesses (default: this one)

    def __post_init__(self):
        self.db_path = Path(self.db_path)
        if self.jobs_dir is None:
            self.jobs_dir = self.db_path.parent / f"{self.db_path.name}.jobs"
        self.jobs_dir = Path(self.jobs_dir)
        for name in ("sql_row_cap", "max_upload_bytes", "max_running_jobs"):
            if int(getattr(self, name)) < 1:
                raise StoreError(f"{name} must be >= 1, got {getattr(self, name)}")
        if int(self.cache_bytes) < 0:
            raise StoreError(f"cache_bytes must be >= 0 (0: no cache), got {self.cache_bytes}")
        for name in ("lock_timeout", "sql_time_limit_s", "job_lock_timeout"):
            if not float(getattr(self, name)) > 0:
                raise StoreError(f"{name} must be > 0, got {getattr(self, name)}")


# ---------------------------------------------------------------------------------------
# Errors
# ---------------------------------------------------------------------------------------
_KINDS = {400: "bad_request", 401: "unauthorized", 403: "forbidden", 404: "not_found", 405: "method_not_allowed",
          409: "conflict", 413: "payload_too_large", 422: "unprocessable", 500: "internal_error",
          503: "unavailable"}


def error_body(status: int, message: str) -> dict:
    return {"status": status, "error": _KINDS.get(status, "error"), "message": message}


def _error(status: int, message: str, headers: dict | None = None) -> JSONResponse:
    return JSONResponse(error_body(status, message), status_code=status, headers=headers)


def _validation_message(exc: RequestValidationError) -> str:
    parts = []
    for err in exc.errors():
        where = ".".join(str(p) for p in err.get("loc", ()) if p not in ("body",)) or "request"
        parts.append(f"{where}: {err.get('msg', 'invalid')}")
    return "; ".join(parts) or "invalid request"


def _install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(AccessDenied)
    async def access_denied(request: Request, exc: AccessDenied):
        headers = {"WWW-Authenticate": 'Bearer realm="auditor"'} if exc.status == 401 else None
        return _error(exc.status, exc.message, headers)

    @app.exception_handler(NotFoundError)
    async def not_found(request: Request, exc: NotFoundError):
        return _error(404, str(exc))

    @app.exception_handler(LockedError)
    async def locked(request: Request, exc: LockedError):
        return _error(503, str(exc), {"Retry-After": "1"})

    @app.exception_handler(SchemaError)
    async def schema(request: Request, exc: SchemaError):
        text = str(exc)
        fixable = "auditor db upgrade" in text or "upgrade auditor" in text
        return _error(409 if fixable else 500, text)

    @app.exception_handler(StoreError)
    async def store(request: Request, exc: StoreError):
        return _error(400, str(exc))

    @app.exception_handler(ValueError)
    async def bad_value(request: Request, exc: ValueError):  # the library's bad-input errors
        return _error(400, str(exc))

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError):
        return _error(400, _validation_message(exc))

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException):
        message = exc.detail if isinstance(exc.detail, str) else str(exc.detail)
        return _error(exc.status_code, message, getattr(exc, "headers", None))

    @app.exception_handler(Exception)
    async def internal(request: Request, exc: Exception):
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        return _error(500, f"internal error ({type(exc).__name__}); see the server log")


# ---------------------------------------------------------------------------------------
# Middleware (plain ASGI: cheap, and they see every request)
# ---------------------------------------------------------------------------------------
class BodyLimit:
    """413 for a request body over `limit` bytes: by Content-Length up front; a body without
    one (chunked) is read up to the limit before the app sees it, then handed on."""

    def __init__(self, app, limit: int):
        self.app, self.limit = app, limit

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        too_big = _error(413, f"request body over the limit of {self.limit} bytes")
        length = dict(scope.get("headers", ())).get(b"content-length")
        if length is not None:
            if length.isdigit() and int(length) > self.limit:
                return await too_big(scope, receive, send)
            return await self.app(scope, receive, send)
        if scope.get("method") in ("GET", "HEAD", "OPTIONS", "DELETE"):
            return await self.app(scope, receive, send)
        events, size = [], 0
        while True:
            event = await receive()
            events.append(event)
            if event["type"] != "http.request":
                break
            size += len(event.get("body", b""))
            if size > self.limit:
                return await too_big(scope, receive, send)
            if not event.get("more_body", False):
                break
        replay = iter(events)

        async def buffered():
            event = next(replay, None)
            return event if event is not None else await receive()

        await self.app(scope, buffered, send)


class RememberKey:
    """An HTML page opened with ?key=... sets the auditor_key cookie, so the page's links work."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["path"].startswith("/api"):
            return await self.app(scope, receive, send)
        request = Request(scope)
        token = request.query_params.get(QUERY_PARAM)
        if not token:
            return await self.app(scope, receive, send)

        async def with_cookie(event):
            if event["type"] == "http.response.start" and 200 <= event["status"] < 400:
                cookie = f"{COOKIE_NAME}={token}; Path=/; HttpOnly; SameSite=Strict"
                event = {**event, "headers": [*event.get("headers", []), (b"set-cookie", cookie.encode("latin-1"))]}
            await send(event)

        await self.app(scope, receive, with_cookie)


# ---------------------------------------------------------------------------------------
# The app
# ---------------------------------------------------------------------------------------
def create_app(settings: ServiceSettings) -> FastAPI:
    """The service on `settings.db_path` (which must exist at the current schema revision).

    Jobs whose subprocess is gone (the service was restarted while they ran) are marked
    failed here, before the first request.
    """
    from auditor.service import jobs
    from auditor.service.api import ResponseCache, api_router
    from auditor.service.pages import router as pages_router

    database.require_current(settings.db_path, settings.lock_timeout)
    database.keep_open(settings.db_path)  # released whenever a writer (a job) waits for the lock
    if settings.keys_required is None:
        settings.keys_required = has_active_keys(settings.db_path, settings.lock_timeout)
    app = FastAPI(title=API_TITLE, description=API_DESCRIPTION, version=_version(),
                  openapi_url="/api/openapi.json", docs_url="/api/docs", redoc_url=None)
    app.state.settings = settings
    app.state.keys = KeyRing(settings.db_path, settings.lock_timeout, bool(settings.keys_required))
    app.state.jobs = jobs.JobRunner(settings)
    app.state.cache = ResponseCache(settings.cache_bytes)
    app.state.jobs.recover()
    _install_error_handlers(app)
    app.include_router(api_router, prefix="/api")
    app.include_router(pages_router)
    app.add_middleware(RememberKey)
    app.add_middleware(BodyLimit, limit=int(settings.max_upload_bytes))
    if not settings.keys_required:
        log.info(local_mode_message(settings.db_path))
    return app


def startup_message(settings: ServiceSettings, url: str) -> str:
    """What `auditor serve` prints: where, which store, and whether keys are required."""
    lines = [f"auditor service on {url}  (API docs: {url.rstrip('/')}/api/docs)",
             f"store: {Path(settings.db_path).resolve()}"]
    if settings.keys_required:
        lines.append("API keys REQUIRED: send 'Authorization: Bearer <key>' (API) or open a page with ?key=<key>")
    else:
        lines.append(local_mode_message(settings.db_path))
    return "\n".join(lines)


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("pspc-auditor")
    except PackageNotFoundError:
        return os.environ.get("PSPC_AUDITOR_VERSION", "0.1.0")
