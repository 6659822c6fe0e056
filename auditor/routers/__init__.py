"""The JSON API, one router per resource; shared response models, pagination and PNG output.

Every router here is mounted under /api by auditor.service.create_app. Read routes need the
`read` scope, job submission the `submit` scope (auditor.access); in local single-user mode
nothing is checked.
"""

from __future__ import annotations

import io
from typing import Generic, TypeVar

import numpy as np
from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import Response
from pydantic import BaseModel, Field

from ..access import require_scope

__all__ = ["ErrorBody", "Page", "Pagination", "api_router", "page", "png_response"]

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


def png_response(image_uint8: np.ndarray, scale: int = 1, *, cache: bool = True) -> Response:
    """A uint8 [C, H, W] image (C = 1 or 3) as PNG, enlarged `scale` times by pixel repetition."""
    from PIL import Image

    array = np.asarray(image_uint8, dtype=np.uint8)
    if scale > 1:
        array = array.repeat(scale, axis=1).repeat(scale, axis=2)
    pil = Image.fromarray(array[0] if array.shape[0] == 1 else array.transpose(1, 2, 0))
    buffer = io.BytesIO()
    pil.save(buffer, format="PNG")
    headers = {"Cache-Control": "private, max-age=3600"} if cache else {"Cache-Control": "no-store"}
    return Response(buffer.getvalue(), media_type="image/png", headers=headers)


class Health(BaseModel):
    status: str = Field(description="'ok' when the store is readable at this version's schema")
    schema_revision: str
    keys_required: bool = Field(description="false: local single-user mode, nothing is checked")
    version: str


def health(request: Request):
    """Public (no key): for load balancers and container health checks."""
    from .. import database

    settings = request.app.state.settings
    revision = database.require_current(settings.db_path, settings.lock_timeout)
    return {"status": "ok", "schema_revision": revision, "keys_required": request.app.state.keys.required,
            "version": request.app.version}


def _build() -> APIRouter:
    from . import jobs, query, runs, samples, training_images

    router = APIRouter(responses=ERRORS)
    router.add_api_route("/health", health, methods=["GET"], response_model=Health, tags=["service"],
                         summary="Is the service up and its store readable (no key needed)")
    read = [Depends(require_scope("read"))]
    router.include_router(runs.router, dependencies=read)
    router.include_router(samples.router, dependencies=read)
    router.include_router(training_images.router, dependencies=read)
    router.include_router(query.router, dependencies=read)
    router.include_router(jobs.router)  # per route: read to look, submit to submit
    return router


api_router = _build()
