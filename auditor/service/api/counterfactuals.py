"""Counterfactuals: what a sample became without some training images (auditor.store.counterfactuals).
Submit one with POST /api/jobs/counterfactual; read them here: one counterfactual run's outcome,
and the counterfactuals of a sample."""

from __future__ import annotations

from typing import Any, Literal

from fastapi import APIRouter, Depends, Path, Request
from pydantic import BaseModel, Field

from auditor.service.api.common import MAX_ID, UtcDateTime, errors
from auditor.service.auth import get_settings
from auditor.store import calibrations
from auditor.store.counterfactuals import counterfactuals_of, load_counterfactual

__all__ = ["CounterfactualDetail", "CounterfactualSummary", "router"]

router = APIRouter(tags=["counterfactuals"])
FOUND = errors(400, 404, 422)


class RemovedImage(BaseModel):
    image_index: int
    image_id: str


class CounterfactualSummary(BaseModel):
    """A counterfactual run's change against its parent sample (pixels in [-1, 1])."""

    run_id: int = Field(description="the counterfactual run (kind 'counterfactual')")
    parent_run_id: int
    parent_sample: int
    mode: Literal["resample", "replay"] = Field(description="resample: the same initial noise, denoiser, patch sets "
                                                            "and sampler; replay: the parent's recorded states")
    selector: dict[str, Any] = Field(description="how the removed images were chosen: {by, value, seed}")
    removed_count: int
    removed_sha256: str = Field(description="sha256 of the sorted removed indices as little-endian int64")
    mse: float = Field(description="mean over pixels of (counterfactual - parent)^2")
    max_abs: float = Field(description="largest |counterfactual - parent| over pixels")
    similarity: float | None = Field(None, description="descriptor cosine similarity of the two images")
    descriptor: str | None = None
    diverged_step: int | None = Field(None, description="first step whose D(z_t) changed by more than one grey "
                                                        "level (2/255); null if none")
    seconds: float | None = Field(None, description="the counterfactual's compute")
    parent_seconds: float | None = Field(None, description="the parent's sampling seconds per sample")
    created_at: UtcDateTime
    links: dict[str, str]


class CounterfactualDetail(CounterfactualSummary):
    step_changes: list[dict[str, float]] = Field(description="per step: step, t, mse and max_abs of D(z_t)")
    change_map: list[list[list[float]]] = Field(description="[C][H][W] counterfactual - parent")
    removed: list[RemovedImage] = Field(description="the first 50 removed images, by index")
    verdict: dict[str, Any] | None = Field(None, description="the counterfactual image's stored copy verdict")
    parent_verdict: dict[str, Any] | None = Field(None, description="the parent sample's stored copy verdict")


def _links(request: Request, row: dict) -> dict[str, str]:
    return {"self": str(request.url_for("get_counterfactual", run_id=row["run_id"])),
            "run": str(request.url_for("get_run", run_id=row["run_id"])),
            "parent": str(request.url_for("get_sample", run_id=row["parent_run_id"],
                                          sample_index=row["parent_sample"]))}


def _summary(request: Request, row: dict) -> dict:
    fields = CounterfactualSummary.model_fields
    return {**{k: v for k, v in row.items() if k in fields}, "links": _links(request, row)}


@router.get("/runs/{run_id}/counterfactual", response_model=CounterfactualDetail, responses=FOUND,
            summary="A counterfactual run's change against its parent sample")
def get_counterfactual(request: Request, run_id: int = Path(ge=1, le=MAX_ID), settings=Depends(get_settings)):
    row = load_counterfactual(settings.db_path, run_id, timeout=settings.lock_timeout)
    verdicts = lambda run: calibrations.load_verdicts(settings.db_path, run, timeout=settings.lock_timeout)  # noqa: E731
    return {**_summary(request, row), "step_changes": row["step_changes"], "removed": row["removed"],
            "change_map": row["change_map"].tolist(), "verdict": verdicts(run_id).get(0),
            "parent_verdict": verdicts(row["parent_run_id"]).get(row["parent_sample"])}


@router.get("/runs/{run_id}/samples/{sample_index}/counterfactuals", response_model=list[CounterfactualSummary],
            responses=FOUND, summary="The counterfactuals of a sample, oldest first")
def list_counterfactuals(request: Request, run_id: int = Path(ge=1, le=MAX_ID),
                         sample_index: int = Path(ge=0, le=MAX_ID), settings=Depends(get_settings)):
    from auditor.store.runs import check_sample_index, load_run

    check_sample_index(settings.db_path, load_run(settings.db_path, run_id, timeout=settings.lock_timeout)[0],
                       sample_index)
    return [_summary(request, r) for r in counterfactuals_of(settings.db_path, run_id, sample_index,
                                                             timeout=settings.lock_timeout)]
