"""The JSON API, one router per resource (shared models and helpers: auditor.service.api.common).

`build_router()` gives the router of every route under /api, which auditor.service.app.create_app
includes; GET /api is its index (auditor.service.api.index).
Read routes need the `read` scope, job submission the `submit` scope (auditor.service.auth);
in local single-user mode nothing is checked. /api/health is public.

Every error is an ErrorBody (JSON), declared per route with the statuses it can answer:
400 (a Host header that does not name the service), 409 and 503 (each reads the store) on
every route, 401 and 403 on every route but /api/health, and each route's own beside them:
400 again for bad parameters (with FastAPI's 422, declared as never sent), 404, 413, 414, ...
"""

from __future__ import annotations

from fastapi import APIRouter, Depends

from auditor.service.api import (counterfactuals, fidelity, health, index, jobs, provenance, query, runs, samples,
                                 scores, training_images)
from auditor.service.api.common import errors
from auditor.service.auth import require_scope

__all__ = ["TAGS", "build_router"]

#: the resources (OpenAPI tags) in the order the docs and the /api index list them, each said in one line
TAGS = [
    {"name": "runs", "description": "Recorded runs (PSPC sampling, network-explained, audits, samples-only): the list, "
                                    "newest first, and each run's reproducibility record"},
    {"name": "samples", "description": "The samples of a run: which training images built each (the image, or one "
                                       "pixel), its images, attribution maps and the report's data"},
    {"name": "training images", "description": "Datasets and their training images, and the rights holder's view: "
                                               "the generated samples that used an image"},
    {"name": "counterfactuals", "description": "A sample re-run without some training images (exact): the change "
                                               "of its image, step by step, and its copy verdict beside the parent's"},
    {"name": "provenance", "description": "A sample's provenance records for third parties: C2PA manifests and "
                                          "W3C PROV documents"},
    {"name": "sql", "description": "Read-only SQL over the store's provenance tables and views, and example queries"},
    {"name": "fidelity", "description": "Fidelity studies: how closely training-free denoisers reproduce a network"},
    {"name": "jobs", "description": "Background jobs (PSPC sampling, network comparisons, audits of uploaded images, "
                                    "counterfactuals): "
                                    "submit one, then follow its status, progress and log, or cancel it"},
    {"name": "service", "description": "The service itself: this index (with the docs' links) and its health"},
]


def build_router() -> APIRouter:
    """Every API route, with the scope each needs."""
    router = APIRouter(prefix="/api", responses=errors(400, 409, 503))  # any Host refused; all read the store
    router.include_router(health.router)  # public
    read, keyed = [Depends(require_scope("read"))], errors(401, 403)
    index.add_index(router, dependencies=[Depends(require_scope("read", browser=True))], responses=keyed)
    for resource in (runs, samples, scores, counterfactuals, training_images, query, fidelity, provenance):
        router.include_router(resource.router, dependencies=read, responses=keyed)
    router.include_router(jobs.router, responses=keyed)  # per route: read to look, submit to submit
    return router
