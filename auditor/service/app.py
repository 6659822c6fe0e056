"""The report service: a FastAPI app over the provenance store (HTML pages and a JSON API).

`create_app(ServiceSettings(db_path=...))` builds the app; `auditor serve` runs it with
uvicorn. The JSON API lives under /api (auditor.service.api, one router per resource), the
HTML pages at / (auditor.service.pages, rendered from reports/); both read the store
through the same library functions, so a page and its JSON say the same thing.

Errors are JSON objects {"status", "error", "message"} with the status saying what went
wrong (auditor.service.errors): 400 bad parameter, malformed SQL or a Host header that does not
name the service (settings.allowed_hosts), 401/403 key missing or
without the scope, 404 unknown id, 409 store at another schema revision, 413 body too
large, 500 a bug (logged), 503 store locked by another process past the lock timeout (with
Retry-After).

The store is opened per request, one short transaction at a time (auditor.store.database), so a
sampling job running in another process can write between requests.

Every response carries a Content-Security-Policy, X-Frame-Options and X-Content-Type-Options
(auditor.service.middleware); the API's index (/api) and docs (/api/docs, /api/redoc,
/api/openapi.json) need the read scope like the rest once keys are required, and are served
with no request to another site (auditor.service.docs).
"""

from __future__ import annotations

import logging
import os

from fastapi import FastAPI

from auditor.service.api import TAGS, build_router
from auditor.service.auth import KeyRing
from auditor.service.cache import ResponseCache
from auditor.service.docs import assets_router, router as docs_router
from auditor.service.errors import install_error_handlers
from auditor.service.jobs import JobRunner
from auditor.service.middleware import BodyLimit, RememberKey, SecurityHeaders, TrustedHosts
from auditor.service.login import router as login_router
from auditor.service.pages import router as pages_router
from auditor.service.settings import ServiceSettings, local_mode_message
from auditor.store import database, keys
from pspc.record import package_version

# ServiceSettings (auditor.service.settings) is create_app's argument, importable from here with it.
__all__ = ["ServiceSettings", "create_app"]

log = logging.getLogger("auditor.service.app")

API_TITLE = "pspc-auditor report service"
API_DESCRIPTION = """\
Per-image attribution reports over a PSPC provenance store: which training images, at which
locations, built each generated image. Every list is paginated (`limit`, `offset`; the answer
carries `total` and `next`). Errors are `{"status", "error", "message"}`.

Access: when the store holds an API key, send it as `Authorization: Bearer <key>` or
`X-API-Key: <key>`; scope `read` for every GET, `submit` for POST /api/jobs (and /api/jobs/{kind}).
With no key in the store the service runs in local single-user mode and checks nothing.

`GET /api` lists the resources; this documentation is served by the service itself (Swagger UI at
/api/docs, ReDoc at /api/redoc), with no request to another site.
"""


def create_app(settings: ServiceSettings) -> FastAPI:
    """The service on `settings.db_path` (which must exist at the current schema revision).

    Sets `settings.keys_required` when it is None (from the store's keys). Jobs whose
    subprocess is gone (the service was restarted while they ran) are marked failed here,
    before the first request.
    """
    database.require_current(settings.db_path, settings.lock_timeout)
    database.keep_open(settings.db_path)  # released whenever a writer (a job) waits for the lock
    if settings.keys_required is None:
        settings.keys_required = keys.has_active_keys(settings.db_path, settings.lock_timeout)
    app = FastAPI(title=API_TITLE, description=API_DESCRIPTION, version=_version(), openapi_tags=TAGS,
                  openapi_url=None, docs_url=None, redoc_url=None)  # the docs are docs_router's, behind the read scope
    app.state.settings = settings
    app.state.keys = KeyRing(settings.db_path, settings.lock_timeout, bool(settings.keys_required))
    app.state.jobs = JobRunner(settings)
    app.state.cache = ResponseCache(settings.cache_bytes)
    app.state.jobs.recover()
    install_error_handlers(app)
    app.include_router(build_router())
    app.include_router(docs_router)
    app.include_router(assets_router)
    app.include_router(pages_router)
    app.include_router(login_router)
    app.add_middleware(RememberKey)
    app.add_middleware(BodyLimit, limit=int(settings.max_upload_bytes))
    app.add_middleware(TrustedHosts, hosts=settings.allowed_hosts)
    app.add_middleware(SecurityHeaders)  # outermost: on every answer, the refusals above included
    if not settings.keys_required:
        log.info(local_mode_message(settings.db_path))
    return app


def _version() -> str:
    """The API's version: the installed package's, else $PSPC_AUDITOR_VERSION, else 0.1.0."""
    return package_version("pspc-auditor", None) or os.environ.get("PSPC_AUDITOR_VERSION", "0.1.0")
