"""What every router of the JSON API shares: the error and page models and the error responses
each route declares, UTC timestamps, pagination, the query-string limit, PNG and JSON bodies."""

from __future__ import annotations

import io
import json
from datetime import datetime, timezone
from typing import Annotated, Callable, Generic, TypeVar

import numpy as np
from fastapi import HTTPException, Query, Request
from fastapi.encoders import jsonable_encoder
from fastapi.responses import Response
from pydantic import AfterValidator, BaseModel, Field

from auditor.service.limits import MAX_ID

__all__ = ["CACHED", "ERROR_DESCRIPTIONS", "MAX_ID", "MAX_LIMIT", "PNG", "ErrorBody", "Page", "Pagination",
           "Shape", "TrainingImageRef", "UtcDateTime", "errors", "json_body", "limit_query_string", "page", "png_bytes", "png_response"]

T = TypeVar("T")
MAX_LIMIT = 1000


class ErrorBody(BaseModel):
    """Every error response."""

    status: int = Field(ge=400, le=599, description="the HTTP status code")
    error: str = Field(min_length=1, description="a short name: bad_request, not_found, forbidden, ...")
    message: str = Field(min_length=1, description="what went wrong, in words")


#: what each error status of the API means (every one answers an ErrorBody)
ERROR_DESCRIPTIONS = {
    400: "a bad parameter or body (the message names it: every request that fails validation), or a Host "
         "header that does not name the service",
    401: "keys are required and the request has none, or an unknown or revoked one",
    403: "the API key lacks the scope this needs",
    404: "no such id in the store",
    409: "the store is at another schema revision (`auditor db upgrade`), or the request clashes with its state",
    413: "the request body is over the service's limit (max_upload_bytes)",
    414: "the query string is over the limit of this GET; send the same request as POST",
    422: "never sent: requests that fail validation answer 400 (declared in place of FastAPI's default 422)",
    503: "another process holds the store's lock past the lock timeout: retry after Retry-After seconds",
}


def errors(*statuses: int) -> dict:
    """The `responses=` entries declaring `statuses` as ErrorBody answers: JSON, as long as the
    route's response_class is JSONResponse or a plain Response (FastAPI declares an error model
    in the route's own media type: never give a route PlainTextResponse, declare its 200 instead)."""
    return {status: {"model": ErrorBody, "description": ERROR_DESCRIPTIONS[status]} for status in statuses}


#: the 304 of the routes whose answers carry an ETag (auditor.service.cache.cached_response)
CACHED = {304: {"description": "not modified: If-None-Match named the answer's ETag"}}
#: the 200 answer of the PNG routes (declared with response_class=Response, so that their errors stay JSON)
PNG = {200: {"description": "PNG image", "content": {"image/png": {"schema": {"type": "string", "format": "binary"}}}}}


def _as_utc(value: datetime) -> datetime:
    """The store keeps naive UTC timestamps: say so with the offset (an aware one is converted)."""
    return value.replace(tzinfo=timezone.utc) if value.tzinfo is None else value.astimezone(timezone.utc)


#: an image's [C, H, W]
Shape = Annotated[list[Annotated[int, Field(ge=1)]], Field(min_length=3, max_length=3, description="[C, H, W]")]

#: a timestamp answered in UTC with its offset (ISO 8601 `...Z`), as OpenAPI's `date-time` requires
UtcDateTime = Annotated[datetime, AfterValidator(_as_utc)]


def limit_query_string(max_bytes: int, instead: str) -> Callable:
    """A dependency answering 414 (JSON, naming the limit and `instead`) for a query string over
    `max_bytes` (counted as sent, percent-encoded)."""

    def check(request: Request) -> None:
        size = len(request.scope.get("query_string", b""))
        if size > max_bytes:
            raise HTTPException(414, f"the query string is {size} bytes, over the limit of {max_bytes} bytes of "
                                     f"{request.method} {request.url.path}; use {instead} instead")

    return check


class TrainingImageRef(BaseModel):
    """A training image as every list of sources names it: its index, id, label and rights fields."""

    image_index: int = Field(ge=0)
    image_id: str | None = None
    label: int | None = None
    label_name: str | None = None
    source_uri: str | None = None
    owner: str | None = None
    license: str | None = None


class Page(BaseModel, Generic[T]):
    """One page of a list: `items`, the `total` count, and links to the next and previous pages."""

    items: list[T]
    total: int = Field(ge=0, description="items in the whole list")
    limit: int = Field(ge=1, le=MAX_LIMIT)
    offset: int = Field(ge=0)
    next: str | None = Field(None, description="URL of the next page (absent on the last)")
    previous: str | None = Field(None, description="URL of the previous page (absent on the first)")


class Pagination:
    """`?limit=` (1..1000, default 50) and `?offset=` (>= 0) of every list."""

    def __init__(self, limit: int = Query(50, ge=1, le=MAX_LIMIT, description="items per page"),
                 offset: int = Query(0, ge=0, le=MAX_ID, description="items to skip")):
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


def json_body(model: type[BaseModel] | None, data) -> tuple[bytes, str]:
    """A response body as FastAPI would write it (validated by `model` when given)."""
    if model is not None:
        return model.model_validate(data).model_dump_json().encode(), "application/json"
    return json.dumps(jsonable_encoder(data), separators=(",", ":")).encode(), "application/json"
