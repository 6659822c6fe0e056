"""The JSON API, one router per resource (shared models and helpers: auditor.service.api.common).

`build_router()` gives the router that auditor.service.app.create_app mounts under /api.
Read routes need the `read` scope, job submission the `submit` scope (auditor.service.auth);
in local single-user mode nothing is checked. /api/health is public.
"""

from __future__ import annotations

from fastapi import APIRouter, Depends

from auditor.service.api import fidelity, health, jobs, query, runs, samples, training_images
from auditor.service.api.common import ERRORS
from auditor.service.auth import require_scope

__all__ = ["build_router"]


def build_router() -> APIRouter:
    """Every API route, with the scope each needs."""
    router = APIRouter(responses=ERRORS)
    router.include_router(health.router)  # public
    read = [Depends(require_scope("read"))]
    for resource in (runs, samples, training_images, query, fidelity):
        router.include_router(resource.router, dependencies=read)
    router.include_router(jobs.router)  # per route: read to look, submit to submit
    return router
