"""What every router of the JSON API shares: the error and page models, pagination, PNG and
JSON bodies."""

from __future__ import annotations

import io
import json
from typing import Generic, TypeVar

import numpy as np
from fastapi import Query, Request
from fastapi.encoders import jsonable_encoder
from fastapi.responses import Response
from pydantic import BaseModel, Field

from auditor.service.limits import MAX_ID

__all__ = ["ERRORS", "MAX_ID", "MAX_LIMIT", "ErrorBody", "Page", "Pagination", "json_body", "page", "png_bytes",
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
