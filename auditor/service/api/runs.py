"""Runs: the list (newest first) and one run's full reproducibility record."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from fastapi import APIRouter, Depends, Path, Query, Request
from pydantic import BaseModel, Field

from auditor.store import database
from auditor.workflows import sampling as runs
from auditor.service.auth import get_settings
from auditor.store.database import NotFoundError, json_value
from auditor.service.api import Page, Pagination, page

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
              dataset_id: int | None = Query(None, ge=1, description="only runs on this dataset"),
              status: str | None = Query(None, description="only runs with this status (running, complete, failed)"),
              settings=Depends(get_settings)):
    if status is not None and status not in RUN_STATUSES:
        raise ValueError(f"unknown status {status!r}; choose from {', '.join(RUN_STATUSES)}")
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
    with database.connect(settings.db_path, read_only=True, timeout=settings.lock_timeout) as conn:
        row = conn.execute("SELECT r.seed, r.top_k, r.mass_threshold, r.denoiser, r.sampler, r.versions, r.command, "
                           "r.writer, r.timings, d.id, d.fingerprint, d.name, d.source, d.count, d.channels, d.height, "
                           "d.width FROM runs r JOIN datasets d ON d.id = r.dataset_id WHERE r.id = ?",
                           [run_id]).fetchone()
    if row is None:
        raise NotFoundError(f"{settings.db_path}: no run {run_id}")
    (seed, top_k, mass, denoiser, sampler, versions, command, writer, timings, d_id, fingerprint, name, source, count,
     c, h, w) = row
    return {**summary, "seed": seed, "top_k": top_k, "mass_threshold": mass, "denoiser_config": json_value(denoiser),
            "sampler_config": json_value(sampler), "versions": json_value(versions), "command": json_value(command),
            "writer": json_value(writer), "timings": json_value(timings),
            "dataset_record": {"id": d_id, "fingerprint": fingerprint, "name": name, "source": source, "count": count,
                               "shape": [c, h, w]}}


@router.get("/runs/{run_id}", response_model=RunDetail, summary="One run: configuration, status, reproducibility")
def get_run(request: Request, run_id: int = Path(ge=1), settings=Depends(get_settings)):
    return {**load_run(settings, run_id), "links": run_links(request, run_id)}
