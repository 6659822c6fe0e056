"""GET /api/health: public (no key), for load balancers and container health checks."""

from __future__ import annotations

from typing import Literal

from fastapi import APIRouter, Request
from pydantic import BaseModel, Field

from auditor.store import database

router = APIRouter(tags=["service"])


class Health(BaseModel):
    status: Literal["ok"] = Field(description="the store is readable at this version's schema (else an error)")
    schema_revision: str
    keys_required: bool = Field(description="false: local single-user mode, nothing is checked")
    version: str


@router.get("/health", response_model=Health, summary="Is the service up and its store readable (no key needed)")
def health(request: Request):
    """Public (no key): for load balancers and container health checks."""
    settings = request.app.state.settings
    revision = database.require_current(settings.db_path, settings.lock_timeout)
    return {"status": "ok", "schema_revision": revision, "keys_required": request.app.state.keys.required,
            "version": request.app.version}
