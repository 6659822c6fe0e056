"""The JSON API, one router per resource; shared response models, pagination and PNG output.

Every router here is mounted under /api by auditor.service.app.create_app. Read routes need the
`read` scope, job submission the `submit` scope (auditor.service.auth); in local single-user mode
nothing is checked.
"""

from __future__ import annotations

import hashlib
import io
import threading
from collections import OrderedDict
from typing import Callable, Generic, TypeVar

import numpy as np
from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import Response
from starlette.concurrency import run_in_threadpool
from pydantic import BaseModel, Field

from auditor.service.auth import require_scope

__all__ = ["ErrorBody", "Page", "Pagination", "ResponseCache", "api_router", "cached_response", "json_body", "page",
           "png_response"]

T = TypeVar("T")
MAX_LIMIT = 1000


class ErrorBody(BaseModel):
    """Every error response."""

    status: int = Field(description="the HTTP status code")
    error: str = Field(description="a short name: bad_request, not_found, forbidden, ...")
    message: str = Field(description="what went wrong, in words")


ERRORS = {code: {"model": ErrorBody} for code in (400, 401, 403, 404, 409, 503)}


class Page(BaseModel, Generic[T]):
    """One page of a list: `items`, the `total` count, and links to the next and previous pages."""

    items: list[T]
    total: int = Field(description="items in the whole list")
    limit: int
    offset: int
    next: str | None = Field(None, description="URL of the next page (absent on the last)")
    previous: str | None = Field(None, description="URL of the previous page (absent on the first)")


class Pagination:
    """`?limit=` (1..1000, default 50) and `?offset=` (>= 0) of every list."""

    def __init__(self, limit: int = Query(50, ge=1, le=MAX_LIMIT, description="items per page"),
                 offset: int = Query(0, ge=0, description="items to skip")):
        self.limit, self.offset = limit, offset


def page(request: Request, items: list, total: int, pagination: Pagination) -> dict:
    """A Page dict for `items` (already the requested slice) of a list of `total` items."""
    limit, offset = pagination.limit, pagination.offset
    following = offset + limit
    return {"items": items, "total": int(total), "limit": limit, "offset": offset,
            "next": str(request.url.include_query_params(offset=following, limit=limit)) if following < total else None,
            "previous": (str(request.url.include_query_params(offset=max(0, offset - limit), limit=limit))
                         if offset > 0 else None)}


def png_bytes(image_uint8: np.ndarray, scale: int = 1) -> bytes:
    """A uint8 [C, H, W] image (C = 1 or 3) as PNG, enlarged `scale` times by pixel repetition."""
    from PIL import Image

    array = np.asarray(image_uint8, dtype=np.uint8)
    if scale > 1:
        array = array.repeat(scale, axis=1).repeat(scale, axis=2)
    pil = Image.fromarray(array[0] if array.shape[0] == 1 else array.transpose(1, 2, 0))
    buffer = io.BytesIO()
    pil.save(buffer, format="PNG")
    return buffer.getvalue()


def png_response(image_uint8: np.ndarray, scale: int = 1) -> Response:
    """png_bytes as a response (for images that never change, e.g. training images)."""
    return Response(png_bytes(image_uint8, scale), media_type="image/png",
                    headers={"Cache-Control": "private, max-age=3600"})


class Health(BaseModel):
    status: str = Field(description="'ok' when the store is readable at this version's schema")
    schema_revision: str
    keys_required: bool = Field(description="false: local single-user mode, nothing is checked")
    version: str


def health(request: Request):
    """Public (no key): for load balancers and container health checks."""
    from auditor.store import database

    settings = request.app.state.settings
    revision = database.require_current(settings.db_path, settings.lock_timeout)
    return {"status": "ok", "schema_revision": revision, "keys_required": request.app.state.keys.required,
            "version": request.app.version}


class ResponseCache:
    """Responses about FINISHED runs, kept in memory (least recently used first out, at most
    `max_bytes`): a complete run's stored data never changes, so its sources, maps and
    report are computed once. Concurrent requests for the same missing entry wait for the
    one computing it. Runs still being written (or failed, which may be resumed) are never
    cached."""

    def __init__(self, max_bytes: int):
        self.max_bytes = int(max_bytes)
        self._entries: OrderedDict = OrderedDict()
        self._size = 0
        self._lock = threading.Lock()
        self._computing: dict = {}
        self._complete: set[int] = set()
        self.hits = self.misses = 0

    def run_is_final(self, settings, run_id: int) -> bool:
        if run_id in self._complete:
            return True
        from auditor.store import database

        with database.connect(settings.db_path, read_only=True, timeout=settings.lock_timeout) as conn:
            row = conn.execute("SELECT status FROM runs WHERE id = ?", [int(run_id)]).fetchone()
        if row is not None and row[0] == "complete":
            self._complete.add(int(run_id))
            return True
        return False

    def peek(self, key) -> tuple[bytes, str, str] | None:
        """The cached entry, or None (never waits: safe on the event loop)."""
        with self._lock:
            if key in self._entries:
                self._entries.move_to_end(key)
                self.hits += 1
                return self._entries[key]
        return None

    def get_or_compute(self, key, compute: Callable[[], tuple]) -> tuple:
        while True:
            with self._lock:
                if key in self._entries:
                    self._entries.move_to_end(key)
                    self.hits += 1
                    return self._entries[key]
                waiting = self._computing.get(key)
                if waiting is None:
                    self._computing[key] = threading.Event()
                    self.misses += 1
                    break
            waiting.wait()  # someone else computes it (or fails: then try ourselves)
        try:
            value = compute()
            with self._lock:
                size = len(value[0])
                if size <= self.max_bytes // 4:
                    self._entries[key] = value
                    self._size += size
                    while self._size > self.max_bytes:
                        _, (old, *_) = self._entries.popitem(last=False)
                        self._size -= len(old)
            return value
        finally:
            with self._lock:
                self._computing.pop(key).set()


async def cached_response(request: Request, run_id: int, compute: Callable[[], tuple[bytes, str]]) -> Response:
    """`compute()` -> (body, media type), from the cache when run `run_id` is complete; with an
    ETag (If-None-Match answers 304). A cache hit is answered on the event loop; reading the
    store and computing run in a worker thread."""
    settings = request.app.state.settings
    cache: ResponseCache = request.app.state.cache
    final = run_id in cache._complete or await run_in_threadpool(cache.run_is_final, settings, run_id)
    if final:  # cached with its ETag: a hit costs no hashing of the body
        key = (request.url.path, tuple(sorted(request.query_params.multi_items())))
        found = cache.peek(key)
        body, media_type, etag = found if found is not None else await run_in_threadpool(
            cache.get_or_compute, key, lambda: _with_etag(*compute()))
        headers = {"Cache-Control": "private, max-age=3600", "ETag": etag}
    else:
        body, media_type, etag = _with_etag(*await run_in_threadpool(compute))
        headers = {"Cache-Control": "no-cache", "ETag": etag}
    if request.headers.get("if-none-match") == headers["ETag"]:
        return Response(status_code=304, headers=headers)
    return Response(body, media_type=media_type, headers=headers)


def _with_etag(body: bytes, media_type: str) -> tuple[bytes, str, str]:
    return body, media_type, '"' + hashlib.blake2b(body, digest_size=12).hexdigest() + '"'


def json_body(model: type[BaseModel] | None, data) -> tuple[bytes, str]:
    """A response body as FastAPI would write it (validated by `model` when given)."""
    import json

    from fastapi.encoders import jsonable_encoder

    if model is not None:
        return model.model_validate(data).model_dump_json().encode(), "application/json"
    return json.dumps(jsonable_encoder(data), separators=(",", ":")).encode(), "application/json"


def _build() -> APIRouter:
    from auditor.service.api import fidelity, jobs, query, runs, samples, training_images

    router = APIRouter(responses=ERRORS)
    router.add_api_route("/health", health, methods=["GET"], response_model=Health, tags=["service"],
                         summary="Is the service up and its store readable (no key needed)")
    read = [Depends(require_scope("read"))]
    router.include_router(runs.router, dependencies=read)
    router.include_router(samples.router, dependencies=read)
    router.include_router(training_images.router, dependencies=read)
    router.include_router(query.router, dependencies=read)
    router.include_router(fidelity.router, dependencies=read)
    router.include_router(jobs.router)  # per route: read to look, submit to submit
    return router


api_router = _build()
