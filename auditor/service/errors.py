"""Errors as the service answers them: JSON objects {"status", "error", "message"}, and the
ONE handler that maps an exception to its response through auditor.errors.outcome.

User errors (auditor.errors.UserError and its subclasses, pspc.errors.InputError) answer
their table status with their message: 400 bad input, 404 unknown id, 409 conflict or a
store at another (fixable) schema revision, 503 store locked (with Retry-After). Anything
else is a bug: 500 with a generic message, and the traceback goes to the log. Failed key
checks (401 with WWW-Authenticate, 403), invalid requests (400) and HTTP errors raised by
FastAPI itself (404 unknown route, 405, ...) have their own small handlers.

Messages go out through public_message: the store's path on the server (and the jobs
folder's) and tracebacks stay in the server log, out of every response.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from auditor.errors import AuditorError, outcome
from auditor.service.auth import AccessDenied
from pspc.errors import InputError

__all__ = ["error_body", "error_response", "install_error_handlers", "public_message", "validation_message"]

log = logging.getLogger("auditor.service.app")

KINDS = {400: "bad_request", 401: "unauthorized", 403: "forbidden", 404: "not_found", 405: "method_not_allowed",
         409: "conflict", 413: "payload_too_large", 422: "unprocessable", 500: "internal_error", 503: "unavailable"}


def error_body(status: int, message: str) -> dict:
    return {"status": status, "error": KINDS.get(status, "error"), "message": message}


def error_response(status: int, message: str, headers: dict | None = None) -> JSONResponse:
    return JSONResponse(error_body(status, message), status_code=status, headers=headers)


_TRACEBACK_MARKERS = ("Traceback (most recent call last)", "Stack Trace:")


def _path_forms(path: os.PathLike | str | None) -> list[str]:
    """The ways a message may spell `path`: as configured, absolute, with symlinks resolved."""
    if path is None or not str(path):
        return []
    path = Path(path)
    return [form for form in {str(path), str(path.absolute()), str(path.resolve())} if len(form) > 1]


def public_message(message: str, settings=None) -> str:
    """`message` as a response may carry it: no traceback (cut where one starts) and, given the
    service's settings, no path of its store ("<path>: " prefixes dropped, "the store" elsewhere)
    or of its jobs folder ("the jobs folder")."""
    for marker in _TRACEBACK_MARKERS:
        if marker in message:
            message = message[:message.index(marker)].rstrip() or "see the server log"
    if settings is None:
        return message
    replacements = [(form, "the store") for form in _path_forms(getattr(settings, "db_path", None))]
    replacements += [(form, "the jobs folder") for form in _path_forms(getattr(settings, "jobs_dir", None))]
    for form, name in sorted(replacements, key=lambda pair: -len(pair[0])):  # the longest spelling first
        message = message.replace(f"{form}: ", "").replace(form, name)
    return message


def _settings(request: Request):
    return getattr(request.app.state, "settings", None)


def validation_message(exc: RequestValidationError) -> str:
    parts = []
    for err in exc.errors():
        where = ".".join(str(p) for p in err.get("loc", ()) if p not in ("body",)) or "request"
        parts.append(f"{where}: {err.get('msg', 'invalid')}")
    return "; ".join(parts) or "invalid request"


async def _by_outcome(request: Request, exc: Exception) -> JSONResponse:
    """THE handler: the status, message and headers of auditor.errors.outcome(exc)."""
    result = outcome(exc)
    if not result.user:
        log.exception("unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
        return error_response(result.status, f"internal error ({type(exc).__name__}); see the server log")
    return error_response(result.status, public_message(str(exc), _settings(request)), dict(result.headers) or None)


async def _access_denied(request: Request, exc: AccessDenied) -> JSONResponse:
    headers = {"WWW-Authenticate": 'Bearer realm="auditor"'} if exc.status == 401 else None
    return error_response(exc.status, exc.message, headers)


async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
    return error_response(400, validation_message(exc))


async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
    message = exc.detail if isinstance(exc.detail, str) else str(exc.detail)
    return error_response(exc.status_code, public_message(message, _settings(request)), getattr(exc, "headers", None))


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(AccessDenied, _access_denied)
    app.add_exception_handler(RequestValidationError, _invalid)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    # The auditor's and the engine's errors are answered where they are raised; any other
    # exception reaches Starlette's outermost middleware, which answers with the same
    # handler and then re-raises it for the server to log.
    for kind in (AuditorError, InputError, Exception):
        app.add_exception_handler(kind, _by_outcome)
