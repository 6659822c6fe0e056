"""Samples of a run: list, detail (its steps), sources (of the image or of one pixel), images,
the attribution map and the full sample report."""

from __future__ import annotations

from typing import Any, Literal

from fastapi import APIRouter, Depends, Path, Query, Request
from fastapi.responses import Response
from pydantic import BaseModel, Field

from auditor.errors import UserError
from auditor.service.api.common import (CACHED, MAX_ID, PNG, Page, Pagination, Shape, TrainingImageRef, errors,
                                        json_body, page, png_bytes)
from auditor.service.api.runs import AuditedImage, RunKindName, RunStatus
from auditor.service.auth import get_settings
from auditor.service.cache import cached_response
from auditor.service.limits import MAX_PIXEL
from auditor.store import attribution, calibrations, catalog
from auditor.store.calibrations import VERDICTS
from auditor.store.run_kinds import describe_run, run_kind

router = APIRouter(tags=["samples"])

RunId = Path(ge=1, le=MAX_ID, description="run id")
SampleIndex = Path(ge=0, le=MAX_ID, description="sample index within the run (0-based)")
MAX_TOP = 1000
MAX_SCALE = 32
FOUND = errors(400, 404, 422)  # what every route here can answer besides 200
CACHED_FOUND = {**CACHED, **FOUND}  # and the routes answered through auditor.service.cache


class SampleSummary(BaseModel):
    run_id: int = Field(ge=1)
    sample_index: int = Field(ge=0)
    kind: RunKindName = Field(description="its run's kind: sample, network-explained or audit (whose image is an "
                                          "outside file, not a generated sample)")
    seed: int = Field(description="the seed of this sample's initial noise (an audit's: of its noise draw)")
    complete: bool = Field(description="whether the final image is recorded")
    steps_recorded: int = Field(ge=0)
    links: dict[str, str] = Field(default_factory=dict)


class StepInfo(BaseModel):
    step: int = Field(ge=0)
    t: float = Field(ge=0, description="noise level of z_t (EDM time)")
    t_next: float = Field(ge=0)
    patch_set_id: int = Field(ge=1)
    patch_set: dict = Field(description="the patch set's description (kind, size, ...)")
    num_patches: int = Field(ge=1)
    mean_mass: float | None = Field(None, description="mean captured posterior mass of the kept weights")
    mean_entropy: float | None = Field(None, description="mean entropy (nats) of the full weight vectors")
    mean_ess: float | None = Field(None, description="mean effective sample size of the full weight vectors")


class SampleVerdict(BaseModel):
    """A sample's stored copy verdict (copy_verdicts): what it is, why, and how often the tool is wrong there."""

    verdict: Literal[VERDICTS] = Field(description="copy, partial copy, no copy found or inconclusive")
    reason: str
    sentence: str = Field(description="the verdict in one sentence, as the report page and `auditor show` give it")
    alarm: bool = Field(description="true only for copy / partial copy from a calibrated threshold or identical pixels")
    evidence: str | None = Field(None, description="the evidence source that decided it (exact-hash, "
                                                   "aligned-correlation, region-match)")
    score: float | None = None
    threshold: float | None = None
    tpr: float | None = Field(None, description="true-positive rate measured at the threshold on calibration")
    fpr: float | None = Field(None, description="false-positive rate measured at the threshold on calibration")
    calibration_id: int | None = None
    sources: list[dict[str, Any]] = Field(default_factory=list, description="entry, image_index, image_id, flip")
    region: dict[str, Any] | None = Field(None, description="a partial copy's box [top, left, height, width] and area")


class SampleDetail(SampleSummary):
    image_label: str = Field(description="what the sample's image is: a generated sample, the network's sample, "
                                         "an audited image")
    audited_image: AuditedImage | None = Field(None, description="an audit's input file; null for other kinds")
    shape: Shape
    dataset_id: int = Field(ge=1)
    run_status: RunStatus
    steps: list[StepInfo]
    verdict: SampleVerdict | None = Field(None, description="the stored copy verdict; null: no verdict recorded "
                                                           "for this sample")


class PatchUse(BaseModel):
    """Where a source was used: patch `position` of `step`, read from the box (top, left, height,
    width) of the ORIGINAL training image (mirrored box for the flipped copy)."""

    step: int = Field(ge=0)
    position: int = Field(ge=0, description="the patch's index in its patch set")
    top: int = Field(ge=0, le=MAX_PIXEL)
    left: int = Field(ge=0, le=MAX_PIXEL)
    height: int = Field(ge=1, le=MAX_PIXEL)
    width: int = Field(ge=1, le=MAX_PIXEL)
    weight: float = Field(ge=0)


class Source(TrainingImageRef):
    share: float = Field(ge=0, description="fraction of the image built from this training image (kept weights)")
    flip_share: float = Field(ge=0, description="the part of `share` from its mirrored copy")
    patches: list[PatchUse] = Field(default_factory=list, description="its largest kept weights")
    links: dict[str, str] = Field(default_factory=dict)


class SourcesPage(Page[Source]):
    run_id: int = Field(ge=1)
    sample_index: int = Field(ge=0)
    what: str = Field(description="'final image', 'D(z_t) at step N' or 'trajectory'")
    step: int | None = Field(None, ge=0)


class PixelSource(TrainingImageRef):
    weight: float = Field(ge=0, description="weight of this training image in the pixel (sum over its copies)")
    flip_share: float = Field(ge=0)
    links: dict[str, str] = Field(default_factory=dict)


class PixelSourcesPage(Page[PixelSource]):
    run_id: int = Field(ge=1)
    sample_index: int = Field(ge=0)
    step: int = Field(ge=0)
    y: int = Field(ge=0, le=MAX_PIXEL)
    x: int = Field(ge=0, le=MAX_PIXEL)


def sample_links(request: Request, run_id: int, sample_index: int) -> dict[str, str]:
    params = {"run_id": run_id, "sample_index": sample_index}
    return {"self": str(request.url_for("get_sample", **params)),
            "sources": str(request.url_for("sample_sources", **params)),
            "report": str(request.url_for("sample_report", **params)),
            "image": str(request.url_for("sample_image", **params)),
            "attribution_map": str(request.url_for("attribution_map", **params)),
            "page": f"/runs/{run_id}/samples/{sample_index}"}


def _training_links(request: Request, dataset_id: int, image_index: int) -> dict[str, str]:
    params = {"dataset_id": dataset_id, "image_index": image_index}
    return {"training_image": str(request.url_for("get_training_image", **params)),
            "thumbnail": str(request.url_for("training_image_png", **params))}


@router.get("/runs/{run_id}/samples", response_model=Page[SampleSummary], responses=FOUND, summary="Samples of a run")
def list_samples(request: Request, run_id: int = RunId, pagination: Pagination = Depends(),
                 settings=Depends(get_settings)):
    num_samples, rows = catalog.list_samples(settings.db_path, run_id, limit=pagination.limit,
                                             offset=pagination.offset, timeout=settings.lock_timeout)
    kind = run_kind(catalog.read_run_record(settings.db_path, run_id, timeout=settings.lock_timeout)[0]["kind"]).name
    items = [{**r, "run_id": run_id, "kind": kind, "links": sample_links(request, run_id, r["sample_index"])}
             for r in rows]
    return page(request, items, num_samples, pagination)


@router.get("/runs/{run_id}/samples/{sample_index}", response_model=SampleDetail, responses=FOUND,
            summary="One sample: seed, status and its recorded steps")
def get_sample(request: Request, run_id: int = RunId, sample_index: int = SampleIndex,
               settings=Depends(get_settings)):
    detail = catalog.sample_detail(settings.db_path, run_id, sample_index, timeout=settings.lock_timeout)
    run, dataset = detail["run"], detail["dataset"]
    facts = describe_run(run["kind"], run["details"], run["denoiser"], run["sampler"])
    return {"run_id": run_id, "sample_index": sample_index, "kind": facts["kind"],
            "image_label": run_kind(run["kind"]).image_label, "audited_image": facts["audited_image"],
            "seed": detail["seed"], "complete": detail["complete"],
            "steps_recorded": len(detail["steps"]), "shape": [dataset["channels"], dataset["height"], dataset["width"]],
            "dataset_id": run["dataset_id"], "run_status": run["status"], "steps": detail["steps"],
            "verdict": _verdict(settings, run_id, sample_index), "links": sample_links(request, run_id, sample_index)}


def _verdict(settings, run_id: int, sample_index: int) -> dict | None:
    from reports.pages.common import to_jsonable
    from reports.pages.sample import verdict_badge

    badge = verdict_badge(calibrations.load_verdicts(settings.db_path, run_id, timeout=settings.lock_timeout)
                          .get(sample_index))
    return None if badge is None else to_jsonable(badge, "none")


@router.get("/runs/{run_id}/samples/{sample_index}/sources", response_model=SourcesPage, responses=CACHED_FOUND,
            summary="Training images a sample was built from, largest share first")
async def sample_sources(request: Request, run_id: int = RunId, sample_index: int = SampleIndex,
                   step: int | None = Query(None, ge=0, le=MAX_ID,
                                             description="D(z_t) at this step instead of the final image"),
                   top: int = Query(10, ge=1, le=MAX_TOP, description="sources per page"),
                   offset: int = Query(0, ge=0, le=MAX_ID),
                   patches: int = Query(5, ge=0, le=50, description="largest patch uses listed per source"),
                   trajectory: bool = Query(False, description="aggregate over the whole trajectory instead "
                                                                "(400 together with step)"),
                   settings=Depends(get_settings)):
    if trajectory and step is not None:
        raise UserError("give either step or trajectory=true, not both")

    def compute():
        kwargs = dict(top=offset + top, patches=patches, timeout=settings.lock_timeout)
        if trajectory:
            rows = attribution.trajectory_sources(settings.db_path, run_id, sample_index, **kwargs)
            what = "trajectory"
        else:
            rows = attribution.sample_sources(settings.db_path, run_id, sample_index, step=step, **kwargs)
            what = "final image" if step is None else f"D(z_t) at step {step}"
        total = catalog.count_sources(settings.db_path, run_id, sample_index, step=step, trajectory=trajectory,
                                      timeout=settings.lock_timeout)
        dataset_id = catalog.read_run_record(settings.db_path, run_id, timeout=settings.lock_timeout)[0]["dataset_id"]
        items = []
        for r in rows[offset:]:
            uses = [dict(zip(("step", "position", "top", "left", "height", "width", "weight"), p))
                    for p in r["patches"]]
            items.append({**{k: v for k, v in r.items() if k not in ("patches", "steps")}, "patches": uses,
                          "links": _training_links(request, dataset_id, r["image_index"])})
        return json_body(SourcesPage, {**page(request, items, total, Pagination(limit=top, offset=offset)),
                                       "run_id": run_id, "sample_index": sample_index, "what": what, "step": step})

    return await cached_response(request, run_id, compute)


@router.get("/runs/{run_id}/samples/{sample_index}/pixel-sources", response_model=PixelSourcesPage,
            responses=CACHED_FOUND,
            summary="Training images output pixel (y, x) of D(z_t) at a step is composed from")
async def pixel_sources(request: Request, run_id: int = RunId, sample_index: int = SampleIndex,
                  step: int = Query(ge=0, le=MAX_ID),
                  y: int = Query(ge=0, le=MAX_PIXEL, description="the pixel's row (400 unless below the height)"),
                  x: int = Query(ge=0, le=MAX_PIXEL, description="the pixel's column (400 unless below the width)"),
                  top: int = Query(10, ge=1, le=MAX_TOP), offset: int = Query(0, ge=0, le=MAX_ID),
                  settings=Depends(get_settings)):
    def compute():
        dataset, total = catalog.count_pixel_sources(settings.db_path, run_id, sample_index, step, y, x,
                                                     timeout=settings.lock_timeout)
        dataset_id = dataset["id"]
        rows = attribution.pixel_sources(settings.db_path, run_id, sample_index, step, y, x, top=offset + top,
                                         timeout=settings.lock_timeout)[offset:]
        items = [{**r, "links": _training_links(request, dataset_id, r["image_index"])} for r in rows]
        return json_body(PixelSourcesPage, {**page(request, items, total, Pagination(limit=top, offset=offset)),
                                            "run_id": run_id, "sample_index": sample_index, "step": step,
                                            "y": y, "x": x})

    return await cached_response(request, run_id, compute)


@router.get("/runs/{run_id}/samples/{sample_index}/image.png", summary="The sample as PNG",
            response_class=Response, responses={**PNG, **CACHED_FOUND})
async def sample_image(request: Request, run_id: int = RunId, sample_index: int = SampleIndex,
                 step: int | None = Query(None, ge=0, le=MAX_ID, description="a step's image instead of the final one"),
                 what: Literal["denoised", "z"] = Query("denoised", description="at a step: D(z_t) or z_t"),
                 scale: int = Query(1, ge=1, le=MAX_SCALE, description="enlarge by pixel repetition"),
                 settings=Depends(get_settings)):
    from pspc.data.training_set import to_uint8

    from auditor.store.recorder import from_blob

    def compute():
        blob, shape = catalog.sample_image_blob(settings.db_path, run_id, sample_index, step, what,
                                                timeout=settings.lock_timeout)
        return png_bytes(to_uint8(from_blob(blob, shape)).numpy(), scale), "image/png"

    return await cached_response(request, run_id, compute)


@router.get("/runs/{run_id}/samples/{sample_index}/attribution-map.png", summary="Attribution map as PNG",
            response_class=Response, responses={**PNG, **CACHED_FOUND})
async def attribution_map(request: Request, run_id: int = RunId, sample_index: int = SampleIndex,
                    step: int | None = Query(None, ge=0, le=MAX_ID,
                                             description="D(z_t) at this step (default: the last step, "
                                                         "whose D is the final image)"),
                    kind: Literal["dominant", "concentration"] = Query(
                        "dominant", description="dominant: each pixel coloured by its dominant training image "
                                                "(legend: the step's top sources in palette order, then grey); "
                                                "concentration: how concentrated each pixel's attribution is"),
                    concentration: Literal["top1", "entropy"] = Query(
                        "top1", description="kind=concentration: top-1 share or normalised entropy (viridis, "
                                            "yellow = concentrated)"),
                    scale: int = Query(8, ge=1, le=MAX_SCALE, description="enlarge by pixel repetition"),
                    settings=Depends(get_settings)):
    from auditor.store.read_models.sample import SampleProvenance
    from reports.maps import attribution_map_png

    def compute():
        data = SampleProvenance.load(settings.db_path, run_id, sample_index, timeout=settings.lock_timeout)
        return attribution_map_png(data, step, kind=kind, scale=scale, concentration=concentration), "image/png"

    return await cached_response(request, run_id, compute)


@router.get("/runs/{run_id}/samples/{sample_index}/report", response_model=dict[str, Any], responses=CACHED_FOUND,
            summary="The sample report's data: exactly what the HTML report page shows")
async def sample_report(request: Request, run_id: int = RunId, sample_index: int = SampleIndex,
                  step: int | None = Query(None, ge=0, le=MAX_ID,
                                           description="the step whose maps and drill-down are shown "
                                                       "(default: the final step)"),
                  top: int = Query(10, ge=1, le=100, description="top sources listed"),
                  step_top: int = Query(3, ge=0, le=50, description="top sources per timeline step"),
                  concentration: Literal["top1", "entropy"] = Query("top1"),
                  images: Literal["data-uri", "none"] = Query(
                      "data-uri", description="images inline as PNG data URIs, or left out (fetch them from the "
                                              "image and attribution-map endpoints)"),
                  settings=Depends(get_settings)):
    from auditor.service.pages import sample_report as build_report

    def compute():
        report = build_report(settings.db_path, run_id, sample_index, step=step, top=top, step_top=step_top,
                              concentration=concentration, timeout=settings.lock_timeout)
        return json_body(None, report.to_json(images))

    return await cached_response(request, run_id, compute, by_run=False)  # the report is cached by its state
