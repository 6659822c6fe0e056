"""Runs: the list (newest first) and one run's full reproducibility record."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from fastapi import APIRouter, Depends, Path, Query, Request
from pydantic import BaseModel, Field

from auditor.errors import NotFoundError, UserError
from auditor.service.api.common import MAX_ID, Page, Pagination, page
from auditor.service.auth import get_settings
from auditor.store import catalog, runs

router = APIRouter(tags=["runs"])

RUN_STATUSES = ("running", "complete", "failed")


class RunSummary(BaseModel):
    id: int
    dataset_id: int
    dataset: str | None = Field(None, description="the dataset's name")
    status: str = Field(description="running, complete or failed; 'running (writer pid N gone)' for a dead writer")
    denoiser: str | None = Field(None, description="denoiser kind (pspc-square, pspc-flex, empirical)")
    samples: int
    steps: int = Field(description="steps recorded so far")
    planned_steps: int | None = None
    created_at: datetime | None = Field(None, description="UTC")
    finished_at: datetime | None = Field(None, description="UTC")
    seconds: float | None = None
    error: str | None = None
    links: dict[str, str] = Field(default_factory=dict)


class DatasetRecord(BaseModel):
    id: int
    fingerprint: str = Field(description="sha256 over the training images' shape and bytes")
    name: str
    source: str
    count: int
    shape: list[int] = Field(description="[C, H, W]")


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


def _summary(request: Request, row: dict) -> dict:
    return {**row, "links": run_links(request, row["id"])}


@router.get("/runs", response_model=Page[RunSummary], summary="List runs (newest first)")
def list_runs(request: Request, pagination: Pagination = Depends(),
              dataset_id: int | None = Query(None, ge=1, le=MAX_ID, description="only runs on this dataset"),
              status: str | None = Query(None, description="only runs with this status (running, complete, failed)"),
              settings=Depends(get_settings)):
    if status is not None and status not in RUN_STATUSES:
        raise UserError(f"unknown status {status!r}; choose from {', '.join(RUN_STATUSES)}")
    rows = runs.run_summaries(settings.db_path, dataset_id, timeout=settings.lock_timeout)
    if status is not None:
        rows = [r for r in rows if r["status"].split(" ")[0] == status]
    chunk = rows[pagination.offset:pagination.offset + pagination.limit]
    return page(request, [_summary(request, r) for r in chunk], len(rows), pagination)


def load_run(settings, run_id: int) -> dict:
    """One run's full record (RunDetail fields without links)."""
    summary = next((r for r in runs.run_summaries(settings.db_path, timeout=settings.lock_timeout)
                    if r["id"] == run_id), None)
    if summary is None:
        raise NotFoundError(f"{settings.db_path}: no run {run_id}")
    run, dataset = catalog.read_run_record(settings.db_path, run_id, timeout=settings.lock_timeout)
    return {**summary, **{k: run[k] for k in ("seed", "top_k", "mass_threshold", "versions", "command", "writer",
                                              "timings")},
            "denoiser_config": run["denoiser"], "sampler_config": run["sampler"],
            "dataset_record": {**{k: dataset[k] for k in ("id", "fingerprint", "name", "source", "count")},
                               "shape": [dataset["channels"], dataset["height"], dataset["width"]]}}


@router.get("/runs/{run_id}", response_model=RunDetail, summary="One run: configuration, status, reproducibility")
def get_run(request: Request, run_id: int = Path(ge=1, le=MAX_ID), settings=Depends(get_settings)):
    return {**load_run(settings, run_id), "links": run_links(request, run_id)}
