"""Runs: the list (newest first) and one run's full reproducibility record."""

from __future__ import annotations

from typing import Any, Literal

from fastapi import APIRouter, Depends, Path, Query, Request
from pydantic import BaseModel, Field

from auditor.errors import NotFoundError
from auditor.service.api.common import MAX_ID, Page, Pagination, Shape, UtcDateTime, errors, page
from auditor.service.auth import get_settings
from auditor.store import catalog, runs
from auditor.store.schema import RUN_STATUSES

router = APIRouter(tags=["runs"])

RunStatus = Literal[RUN_STATUSES]  # running, complete, failed


class RunSummary(BaseModel):
    id: int = Field(ge=1)
    dataset_id: int = Field(ge=1)
    dataset: str | None = Field(None, description="the dataset's name")
    status: RunStatus = Field(description="as stored: running, complete or failed")
    status_note: str | None = Field(None, description="what else is known of the status: 'writer pid N gone' for a "
                                                      "running run whose writer no longer exists (resume it)")
    denoiser: str | None = Field(None, description="denoiser kind (pspc-square, pspc-flex, empirical)")
    samples: int = Field(ge=0)
    steps: int = Field(ge=0, description="steps recorded so far")
    planned_steps: int | None = Field(None, ge=0)
    created_at: UtcDateTime | None = None
    finished_at: UtcDateTime | None = None
    seconds: float | None = None
    error: str | None = None
    links: dict[str, str] = Field(default_factory=dict)


class DatasetRecord(BaseModel):
    id: int
    fingerprint: str = Field(description="sha256 over the training images' shape and bytes")
    name: str
    source: str
    count: int = Field(ge=0)
    shape: Shape


class RunDetail(RunSummary):
    """A run with everything needed to reproduce it."""

    seed: int = Field(description="sample i starts from noise seeded with seed + i")
    top_k: int
    mass_threshold: float
    denoiser_config: dict[str, Any] = Field(description="the denoiser's full description (kind, schedules, dataset)")
    sampler_config: dict[str, Any] = Field(description="sampler settings and time steps")
    versions: dict[str, Any]
    command: list[str] | None = None
    writer: dict[str, Any] | None = Field(None, description="host and pid of the process that wrote the run")
    timings: dict[str, Any] | None = None
    dataset_record: DatasetRecord


def run_links(request: Request, run_id: int) -> dict[str, str]:
    return {"self": str(request.url_for("get_run", run_id=run_id)),
            "samples": str(request.url_for("list_samples", run_id=run_id)),
            "page": f"/runs/{run_id}"}


def _with_status(row: dict) -> dict:
    """run_summaries' row with its status split: the stored status, and the note that follows it."""
    status, _, note = row["status"].partition(" ")
    return {**row, "status": status, "status_note": note.strip(" ()") or None}


def _summary(request: Request, row: dict) -> dict:
    return {**row, "links": run_links(request, row["id"])}


@router.get("/runs", response_model=Page[RunSummary], responses=errors(400, 404, 422),
            summary="List runs (newest first)")
def list_runs(request: Request, pagination: Pagination = Depends(),
              dataset_id: int | None = Query(None, ge=1, le=MAX_ID, description="only runs on this dataset"),
              status: RunStatus | None = Query(None, description="only runs with this status"),
              settings=Depends(get_settings)):
    rows = [_with_status(r) for r in runs.run_summaries(settings.db_path, dataset_id, timeout=settings.lock_timeout)]
    if status is not None:
        rows = [r for r in rows if r["status"] == status]
    chunk = rows[pagination.offset:pagination.offset + pagination.limit]
    return page(request, [_summary(request, r) for r in chunk], len(rows), pagination)


def load_run(settings, run_id: int) -> dict:
    """One run's full record (RunDetail fields without links)."""
    summary = next((r for r in runs.run_summaries(settings.db_path, timeout=settings.lock_timeout)
                    if r["id"] == run_id), None)
    if summary is None:
        raise NotFoundError(f"{settings.db_path}: no run {run_id}")
    run, dataset = catalog.read_run_record(settings.db_path, run_id, timeout=settings.lock_timeout)
    fields = ("seed", "top_k", "mass_threshold", "versions", "command", "writer", "timings")
    return {**_with_status(summary), **{k: run[k] for k in fields},
            "denoiser_config": run["denoiser"], "sampler_config": run["sampler"],
            "dataset_record": {**{k: dataset[k] for k in ("id", "fingerprint", "name", "source", "count")},
                               "shape": [dataset["channels"], dataset["height"], dataset["width"]]}}


@router.get("/runs/{run_id}", response_model=RunDetail, responses=errors(400, 404, 422),
            summary="One run: configuration, status, reproducibility")
def get_run(request: Request, run_id: int = Path(ge=1, le=MAX_ID), settings=Depends(get_settings)):
    return {**load_run(settings, run_id), "links": run_links(request, run_id)}
