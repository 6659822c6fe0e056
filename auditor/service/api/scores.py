"""Attribution scores: the candidates (pspc.posterior.scores), which one is the headline, and a
sample's training images ranked by any of them (auditor.store.scores)."""

from __future__ import annotations

from typing import Literal

from fastapi import APIRouter, Depends, Path, Query, Request
from pydantic import BaseModel, Field

from auditor.service.api.common import MAX_ID, Page, Pagination, TrainingImageRef, errors, page
from auditor.service.auth import get_settings
from auditor.store.scores import HEADLINE_SCORE, SCORES, is_fraction, score_page

__all__ = ["router"]

router = APIRouter(tags=["samples"])
ScoreName = Literal[tuple(SCORES)]
MAX_TOP = 1000


class ScoreInfo(BaseModel):
    name: str
    meaning: str = Field(description="what the score says, in one sentence")
    headline: bool = Field(description="the score reports lead with (chosen by measurement: bench/attribution.py)")
    fraction: bool = Field(description="a fraction of the image (else a sum of posterior weights)")


class ScoredSource(TrainingImageRef):
    score: float = Field(description="the training image's value of the score")
    final_share: float = Field(ge=0, description="fraction of the finished image built from it")


class ScoredSourcesPage(Page[ScoredSource]):
    run_id: int = Field(ge=1)
    sample_index: int = Field(ge=0)
    score: ScoreInfo


def _info(name: str) -> dict:
    return {"name": name, "meaning": SCORES[name].meaning, "headline": name == HEADLINE_SCORE,
            "fraction": is_fraction(name)}


@router.get("/scores", response_model=list[ScoreInfo], responses=errors(400, 422),
            summary="The attribution scores and which one is the headline")
def list_scores():
    return [_info(name) for name in SCORES]


@router.get("/runs/{run_id}/samples/{sample_index}/scores", response_model=ScoredSourcesPage,
            responses=errors(400, 404, 422), summary="A sample's training images ranked by an attribution score")
def sample_scores(request: Request, run_id: int = Path(ge=1, le=MAX_ID), sample_index: int = Path(ge=0, le=MAX_ID),
                  score: ScoreName = Query(HEADLINE_SCORE, description="the score (default: the headline)"),
                  top: int = Query(10, ge=1, le=MAX_TOP), offset: int = Query(0, ge=0, le=MAX_ID),
                  settings=Depends(get_settings)):
    rows, total = score_page(settings.db_path, run_id, sample_index, score=score, top=top, offset=offset,
                             timeout=settings.lock_timeout)
    return {**page(request, rows, total, Pagination(limit=top, offset=offset)), "run_id": run_id,
            "sample_index": sample_index, "score": _info(score)}
