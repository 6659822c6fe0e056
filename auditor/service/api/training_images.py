"""Datasets and their training images, and the rights holder's view: every generated sample
(and, optionally, every sampling step) that used a given training image, and how much. Only
outputs count (samples and network samples, auditor.store.run_kinds): audits of outside images
only with include_audits=true."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Path, Query, Request
from fastapi.responses import Response
from pydantic import BaseModel, Field

from auditor.service.api.common import MAX_ID, PNG, Page, Pagination, Shape, UtcDateTime, errors, page, png_response
from auditor.service.api.runs import RunKindName
from auditor.service.auth import get_settings
from auditor.store import attribution, catalog, datasets
from auditor.store.read_models.training_images import label_number

router = APIRouter(tags=["training images"])

DatasetId = Path(ge=1, le=MAX_ID, description="dataset id")
ImageIndex = Path(ge=0, le=MAX_ID, description="index of the training image in its dataset (0-based)")
FOUND = errors(400, 404, 422)  # what the routes on one dataset can answer besides 200
INCLUDE_AUDITS = Query(False, description="count audits of outside images too (an audited image may be anything, "
                                          "random noise included); default: outputs only")


class DatasetInfo(BaseModel):
    id: int = Field(ge=1)
    fingerprint: str = Field(description="sha256 over the images' shape and bytes")
    name: str
    source: str
    count: int = Field(ge=0)
    shape: Shape
    created_at: UtcDateTime | None = None
    links: dict[str, str] = Field(default_factory=dict)


class TrainingImage(BaseModel):
    dataset_id: int = Field(ge=1)
    image_index: int = Field(ge=0)
    image_id: str
    sha256: str = Field(description="sha256 of the image's bytes (shape-prefixed)")
    label: int | None = None
    label_name: str | None = None
    source_uri: str | None = None
    owner: str | None = None
    license: str | None = None
    extra: dict[str, Any] | None = None
    links: dict[str, str] = Field(default_factory=dict)


class Usage(BaseModel):
    run_id: int = Field(ge=1)
    sample_index: int = Field(ge=0)
    step: int = Field(ge=0)
    share: float = Field(ge=0, description="fraction of the output built from this training image")
    flip_share: float = Field(ge=0, description="the part of `share` from its mirrored copy")
    kind: RunKindName = Field(description="the run's kind: sample or network-explained (outputs), or audit (only "
                                          "with include_audits)")
    links: dict[str, str] = Field(default_factory=dict)


class UsagePage(Page[Usage]):
    training_image: TrainingImage
    all_steps: bool = Field(description="every recorded step (true) or only the final images (false)")
    include_audits: bool = Field(description="whether audits of outside images are counted (false: outputs only)")


def _dataset(request: Request, row: dict) -> dict:
    return {**{k: row[k] for k in ("id", "fingerprint", "name", "source", "count", "created_at")},
            "shape": [row["channels"], row["height"], row["width"]],
            "links": {"self": str(request.url_for("get_dataset", dataset_id=row["id"])),
                      "training_images": str(request.url_for("list_training_images", dataset_id=row["id"]))}}


def _image(request: Request, dataset_id: int, row: dict) -> dict:
    params = {"dataset_id": dataset_id, "image_index": row["image_index"]}
    return {**row, "dataset_id": dataset_id,
            "links": {"self": str(request.url_for("get_training_image", **params)),
                      "usage": str(request.url_for("training_image_usage", **params)),
                      "image": str(request.url_for("training_image_png", **params)),
                      "page": f"/datasets/{dataset_id}/images/{row['image_index']}"}}


@router.get("/datasets", response_model=Page[DatasetInfo], responses=errors(400, 422),
            summary="Training sets in the store")
def list_datasets(request: Request, pagination: Pagination = Depends(), settings=Depends(get_settings)):
    rows = datasets.list_datasets(settings.db_path, timeout=settings.lock_timeout)
    chunk = rows[pagination.offset:pagination.offset + pagination.limit]
    return page(request, [_dataset(request, r) for r in chunk], len(rows), pagination)


@router.get("/datasets/{dataset_id}", response_model=DatasetInfo, responses=FOUND, summary="One training set")
def get_dataset(request: Request, dataset_id: int = DatasetId, settings=Depends(get_settings)):
    return _dataset(request, datasets.find_dataset(settings.db_path, dataset_id, timeout=settings.lock_timeout))


@router.get("/datasets/{dataset_id}/training-images", response_model=Page[TrainingImage], responses=FOUND,
            summary="Training images of a dataset; search by id, source URI, owner or label")
def list_training_images(request: Request, dataset_id: int = DatasetId, pagination: Pagination = Depends(),
                         image_id: str | None = Query(None, max_length=500, description="exact image id"),
                         source_uri: str | None = Query(None, max_length=2000,
                                                        description="part of the source URI (case-insensitive)"),
                         owner: str | None = Query(None, max_length=500, description="part of the owner's name"),
                         label: str | None = Query(None, max_length=200, description="class label: its number, or its "
                                                   "name (label_name, case-insensitive, e.g. trouser)"),
                         settings=Depends(get_settings)):
    label = label_number(settings.db_path, dataset_id, label, timeout=settings.lock_timeout)
    rows, total = catalog.list_training_images(settings.db_path, dataset_id, image_id=image_id, source_uri=source_uri,
                                               owner=owner, label=label, limit=pagination.limit,
                                               offset=pagination.offset, timeout=settings.lock_timeout)
    items = [_image(request, dataset_id, r) for r in rows]
    return page(request, items, total, pagination)


def load_training_image(settings, dataset_id: int, image_index: int) -> dict:
    return catalog.training_image(settings.db_path, dataset_id, image_index, timeout=settings.lock_timeout)


@router.get("/datasets/{dataset_id}/training-images/{image_index}", response_model=TrainingImage, responses=FOUND,
            summary="One training image's metadata")
def get_training_image(request: Request, dataset_id: int = DatasetId, image_index: int = ImageIndex,
                       settings=Depends(get_settings)):
    return _image(request, dataset_id, load_training_image(settings, dataset_id, image_index))


@router.get("/datasets/{dataset_id}/training-images/{image_index}/usage", response_model=UsagePage, responses=FOUND,
            summary="Reverse lookup: the samples (or steps) built from this training image, largest share first")
def training_image_usage(request: Request, dataset_id: int = DatasetId, image_index: int = ImageIndex,
                         pagination: Pagination = Depends(),
                         all_steps: bool = Query(False, description="every recorded step, not only final images"),
                         min_share: float = Query(0.0, ge=0.0, le=1.0, description="only shares above this"),
                         include_audits: bool = INCLUDE_AUDITS, settings=Depends(get_settings)):
    image = load_training_image(settings, dataset_id, image_index)
    rows = attribution.image_usage(settings.db_path, dataset_id, image["image_id"], min_share=min_share,
                                   all_steps=all_steps, include_audits=include_audits, timeout=settings.lock_timeout)
    chunk = rows[pagination.offset:pagination.offset + pagination.limit]
    items = [{**r, "links": {
        "sample": str(request.url_for("get_sample", run_id=r["run_id"], sample_index=r["sample_index"])),
        "report": str(request.url_for("sample_report", run_id=r["run_id"], sample_index=r["sample_index"])),
        "page": f"/runs/{r['run_id']}/samples/{r['sample_index']}"}} for r in chunk]
    return {**page(request, items, len(rows), pagination), "training_image": _image(request, dataset_id, image),
            "all_steps": all_steps, "include_audits": include_audits}


@router.get("/datasets/{dataset_id}/usage", response_model=UsagePage, responses=FOUND,
            summary="Reverse lookup by training image id (as `usage` above)")
def training_image_usage_by_id(request: Request, dataset_id: int = DatasetId,
                               image_id: str = Query(min_length=1, max_length=500,
                                                     description="the training image's id"),
                               pagination: Pagination = Depends(), all_steps: bool = Query(False),
                               min_share: float = Query(0.0, ge=0.0, le=1.0), include_audits: bool = INCLUDE_AUDITS,
                               settings=Depends(get_settings)):
    index = catalog.training_image_index(settings.db_path, dataset_id, image_id, timeout=settings.lock_timeout)
    return training_image_usage(request, dataset_id, index, pagination, all_steps, min_share, include_audits,
                                settings)


@router.get("/datasets/{dataset_id}/training-images/{image_index}/image.png", summary="The training image as PNG",
            response_class=Response, responses={**PNG, **FOUND})
def training_image_png(dataset_id: int = DatasetId, image_index: int = ImageIndex,
                       scale: int = Query(1, ge=1, le=32, description="enlarge by pixel repetition"),
                       flip: bool = Query(False, description="the mirrored copy"),
                       settings=Depends(get_settings)):
    pixels = datasets.training_pixels(settings.db_path, dataset_id, [image_index], timeout=settings.lock_timeout)[0]
    return png_response(pixels[:, :, ::-1] if flip else pixels, scale)
