"""The JSON API, one router per resource (shared models and helpers: auditor.service.api.common).

`build_router()` gives the router that auditor.service.app.create_app mounts under /api.
Read routes need the `read` scope, job submission the `submit` scope (auditor.service.auth);
in local single-user mode nothing is checked. /api/health is public.

Every error is an ErrorBody (JSON), declared per route with the statuses it can answer:
400 (a Host header that does not name the service), 409 and 503 (each reads the store) on
every route, 401 and 403 on every route but /api/health, and each route's own beside them:
400 again for bad parameters (with FastAPI's 422, declared as never sent), 404, 413, 414, ...
"""

from __future__ import annotations

from fastapi import APIRouter, Depends

from auditor.service.api import fidelity, health, jobs, provenance, query, runs, samples, training_images
from auditor.service.api.common import errors
from auditor.service.auth import require_scope

__all__ = ["build_router"]


def build_router() -> APIRouter:
    """Every API route, with the scope each needs."""
    router = APIRouter(responses=errors(400, 409, 503))  # any Host refused; every route reads the store
    router.include_router(health.router)  # public
    read, keyed = [Depends(require_scope("read"))], errors(401, 403)
    for resource in (runs, samples, training_images, query, fidelity, provenance):
        router.include_router(resource.router, dependencies=read, responses=keyed)
    router.include_router(jobs.router, responses=keyed)  # per route: read to look, submit to submit
    return router
