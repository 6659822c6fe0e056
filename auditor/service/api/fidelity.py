"""Fidelity studies (auditor.workflows.fidelity): how closely training-free denoisers reproduce a network.

The list (newest first) and one study's stored numbers: MSE against the network per process,
denoiser and noise level, the gradient-concentration table, the samples' similarity to the
network's (with the descriptor's name), the tuned schedule and the findings, with the
study's record (network sha256, dataset fingerprints, seeds, versions). The HTML page
/fidelity/{id} shows the same data.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Path, Request
from pydantic import BaseModel, Field

from auditor.service.api.common import MAX_ID, Page, Pagination, UtcDateTime, errors, page
from auditor.service.auth import get_settings
from auditor.store import studies

router = APIRouter(tags=["fidelity"])

StudyId = Path(ge=1, le=MAX_ID, description="fidelity study id")


class StudySummary(BaseModel):
    id: int = Field(ge=1)
    name: str
    created_at: UtcDateTime | None = None
    source: str | None = Field(None, description="'auditor fidelity run', or the imported file")
    network_name: str | None = None
    network_sha256: str | None = Field(None, description="sha256 of the network's file")
    training_set: str | None = Field(None, description="the training set's name")
    training_fingerprint: str = Field(description="sha256 over the training images' shape and bytes")
    test_fingerprint: str | None = Field(None, description="the held-out images' fingerprint")
    seed: int | None = None
    processes: list[str] = Field(description="forward, reverse")
    denoisers: list[str]
    descriptor: str | None = Field(None, description="the descriptor that scored the samples' similarity")
    tuned: bool = Field(description="whether the study holds a schedule tuned on the network (Appendix B)")
    links: dict[str, str] = Field(default_factory=dict)


class Curves(BaseModel):
    process: str
    times: list[float] = Field(description="noise levels t (reverse process: the sampling steps' t)")
    names: list[str] = Field(description="denoisers, in the order of the rows of mse and stderr")
    mse: list[list[float]] = Field(description="[denoiser][level] mean MSE against the network (mean over pixels)")
    stderr: list[list[float]] = Field(description="[denoiser][level] standard error of that mean")
    states: int | None = Field(None, description="noisy states averaged per level")
    denoisers: dict[str, Any] = Field(description="each denoiser's configuration (describe())")


class Concentration(BaseModel):
    times: list[float]
    fractions: list[float]
    mean_side: list[list[float]] = Field(description="[level][fraction] side of the centred square, mean over pixels")
    median_side: list[list[float]]
    within: dict[str, list[float]] = Field(default_factory=dict,
                                           description="square side -> mean fraction of G inside it, per level")
    record: dict[str, Any] = Field(default_factory=dict)


class Study(BaseModel):
    """A stored study: the numbers of fidelity.json (less the per-state errors and per-sample scores)."""

    id: int = Field(ge=1)
    name: str
    created_at: UtcDateTime | None = None
    source: str | None = None
    network_name: str | None = None
    network_sha256: str | None = None
    training_fingerprint: str
    test_fingerprint: str | None = None
    seed: int | None = None
    record: dict[str, Any] = Field(description="command, configuration, datasets, network, sensitivity, states, "
                                                "versions, machine, timings")
    curves: dict[str, Curves] = Field(description="process -> MSE curves (Figs. 4, 7)")
    concentration: Concentration = Field(description="gradient concentration (Fig. 3)")
    similarity: dict[str, Any] | None = Field(None, description="similarity matrix of the samples (Fig. 9)")
    similarity_to_network: dict[str, float] | None = Field(None, description="denoiser -> mean similarity of its "
                                                                              "samples to the network's")
    descriptor: str | None = None
    tuned_schedule: list[dict[str, Any]] | None = Field(None, description="per step: t, patch_size, lambda, errors")
    findings: list[str]
    links: dict[str, str] = Field(default_factory=dict)


def _links(request: Request, study_id: int) -> dict[str, str]:
    return {"self": str(request.url_for("get_fidelity_study", study_id=study_id)), "page": f"/fidelity/{study_id}"}


@router.get("/fidelity", response_model=Page[StudySummary], responses=errors(400, 422),
            summary="List fidelity studies (newest first)")
def list_fidelity_studies(request: Request, pagination: Pagination = Depends(), settings=Depends(get_settings)):
    rows = studies.list_studies(settings.db_path, timeout=settings.lock_timeout)
    chunk = rows[pagination.offset:pagination.offset + pagination.limit]
    return page(request, [{**r, "links": _links(request, r["id"])} for r in chunk], len(rows), pagination)


@router.get("/fidelity/{study_id}", response_model=Study, responses=errors(400, 404, 422),
            summary="One fidelity study's stored numbers and record")
def get_fidelity_study(request: Request, study_id: int = StudyId, settings=Depends(get_settings)):
    return {**studies.load_study(settings.db_path, study_id, timeout=settings.lock_timeout),
            "links": _links(request, study_id)}
