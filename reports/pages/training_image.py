"""A training image's page (TrainingImagePage, template training_image.html): the rights
holder's view, from auditor.store.read_models.training_images.TrainingImageData."""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import ClassVar

import numpy as np

from auditor.store.read_models.training_images import TrainingImageData
from auditor.store.run_kinds import run_kind
from reports import maps
from reports.pages.common import (MAIN_SIZE, TINY_SIZE, Context, DatasetInfo, Pagination, PatchLocation, Picture,
                                  check_options, dataset_info, display_scale)

__all__ = ["ImageIdentity", "OutputUse", "StepUse", "TrainingImageExport", "TrainingImagePage", "UsageRow",
           "build_training_image_export", "build_training_image_page", "usage_overlay"]


@dataclass(kw_only=True)
class StepUse:
    """One step of one sample that kept weight on the image: its share of D(z_t) there
    (mirrored part apart) and the patch locations it gave (boxes in the original image)."""

    step: int
    t: float
    t_next: float
    share: float
    flip_share: float
    locations: list[PatchLocation]


@dataclass(kw_only=True)
class UsageRow:
    """One sample that used the image: its run's kind (public name and label,
    auditor.store.run_kinds), its final image, the image's share of it (None if the final step
    did not keep it or the run is not complete), and every step that used it."""

    run_id: int
    sample_index: int
    run_status: str
    kind: str
    kind_label: str
    image: Picture | None
    final_share: float | None
    max_share: float
    steps: list[StepUse]
    outlined: Picture | None = None  # the training image with this sample's final-step patches outlined


@dataclass(kw_only=True)
class ImageIdentity:
    """Which training image: its data set, index, id, sha256, label and rights metadata."""

    dataset: DatasetInfo
    image_index: int
    image_id: str
    sha256: str
    label: int | None
    label_name: str | None
    source_uri: str | None
    owner: str | None
    license: str | None


def _identity(data: TrainingImageData) -> dict:
    image = data.image
    return {"dataset": dataset_info(data.dataset), **{f.name: image[f.name] for f in fields(ImageIdentity)
                                                       if f.name != "dataset"}}


@dataclass(kw_only=True)
class TrainingImagePage(Context, ImageIdentity):
    """A training image (template training_image.html): its metadata, where in it PSPC took
    patches for final images (usage map), and every sample, step and patch location that
    used it, largest final share first (paginated by sample). Only outputs (samples and
    network samples) count unless include_audits; left_out: the audit samples that used it or
    were matched to it and are not counted."""

    documented_template: ClassVar[str] = "training_image.html"

    extra: dict | None
    thumbnail: Picture | None
    usage_map: Picture | None  # share of final images taken from each of its pixels (viridis)
    usage_total: float  # sum of its shares over all final images
    samples_using: int
    steps_using: int
    usages: list[UsageRow]
    pagination: Pagination
    locations_per_step: int = 0
    include_audits: bool = False
    left_out: int = 0

    @property
    def title(self) -> str:
        return f"Training image {self.image_id}"


def usage_overlay(pixels: np.ndarray | None, values: np.ndarray) -> np.ndarray:
    """Used pixels in viridis (by how much, relative to the most used), over the training image
    dimmed to a third where nothing was taken (or black when its pixels are not stored)."""
    coloured = maps.colormap(values).astype(np.float64)
    base = maps.image_rgb(pixels).astype(np.float64) / 3 if pixels is not None else np.zeros_like(coloured)
    alpha = np.where(values > 0, 0.55 + 0.45 * values, 0.0)[..., None]
    return np.round((1 - alpha) * base + alpha * coloured).astype(np.uint8)


def _usage_row(data: TrainingImageData, key: tuple[int, int], locations: int) -> UsageRow:
    entry = data.usage["samples"][key]
    steps = []
    for step in sorted(entry["steps"]):
        s = entry["steps"][step]
        located = sorted(s["locations"], key=lambda p: (-p["weight"], p["position"]))[:locations]
        steps.append(StepUse(step=step, t=s["t"], t_next=s["t_next"], share=s["share"], flip_share=s["flip_share"],
                             locations=[PatchLocation(**p) for p in located]))
    final_step = next((st for st in steps if st.t_next == 0), None)
    outlined = None
    if data.pixels is not None and final_step is not None:
        scale = display_scale(data.shape[2], TINY_SIZE)
        outlined = Picture(rgb=maps.outlined_thumbnail(data.pixels, [p.box for p in final_step.locations], scale),
                           scale=scale, display=1, alt="patches this sample's final image took from the training image")
    image = Picture.of(data.finals[key], TINY_SIZE, f"sample {key[1]} of run {key[0]}") if key in data.finals else None
    kind = run_kind(data.kinds.get(key[0]))
    return UsageRow(run_id=key[0], sample_index=key[1], run_status=data.statuses.get(key[0], "?"),
                    kind=kind.name, kind_label=kind.label, image=image,
                    final_share=entry["final_share"], max_share=entry["max_share"], steps=steps, outlined=outlined)


def build_training_image_page(data: TrainingImageData, *, pagination: Pagination,
                              locations: int = 8) -> TrainingImagePage:
    """The page of the image `data` holds, read for `pagination` (a Pagination.window), with at
    most `locations` patch locations per step (largest weight first)."""
    check_options(locations=(locations, 0, 1000))
    usages = [_usage_row(data, key, locations) for key in data.shown]
    thumbnail = usage_map = None
    image = data.image
    if data.pixels is not None:
        thumbnail = Picture.of(data.pixels, MAIN_SIZE // 2 * 2, f"training image {image['image_id']}")
    pixel_map = data.usage["pixel_map"]
    if pixel_map is not None and pixel_map.max() > 0:
        usage_map = Picture.of_rgb(usage_overlay(data.pixels, pixel_map / pixel_map.max()), MAIN_SIZE // 2 * 2,
                                   "share of final images taken from each pixel of the training image")
    return TrainingImagePage(
        **_identity(data), extra=image["extra"], thumbnail=thumbnail,
        usage_map=usage_map, usage_total=data.usage["final_total"], samples_using=data.total,
        steps_using=data.usage["steps_using"], usages=usages, pagination=pagination.of(data.total),
        locations_per_step=locations, include_audits=data.include_audits, left_out=data.left_out)


@dataclass(kw_only=True)
class OutputUse:
    """One output (a run's sample) that used the image or that copy detection matched to it:
    the image's share of the final image (None when the final step kept none of it or the run
    is not complete), its largest share of D(z_t) at any step and at which step, the steps
    that kept it, and the copy detection matches that name it (descriptor, rank, score, flag,
    flagged, flip). run_kind: runs.kind as stored (pspc, network-explained, ...); kind: the
    public kind (sample, network-explained, audit) and kind_label (auditor.store.run_kinds)."""

    run_id: int
    sample_index: int
    run_status: str
    run_kind: str
    kind: str
    kind_label: str
    final_share: float | None
    max_share: float
    max_share_step: int | None
    steps_using: int
    copy_matches: list[dict]


@dataclass(kw_only=True)
class TrainingImageExport(Context, ImageIdentity):
    """The rights holder's export of a training image (export.csv / export.json of its page):
    its identity and rights metadata and EVERY output that used it, largest final share first,
    then the outputs only copy detection names. Audits of outside images are included only
    with include_audits; left_out counts those not included."""

    usage_total: float
    samples_using: int
    outputs: list[OutputUse]
    include_audits: bool = False
    left_out: int = 0

    @property
    def title(self) -> str:
        return f"Uses of training image {self.image_id}"


def build_training_image_export(data: TrainingImageData) -> TrainingImageExport:
    """Every output of the image `data` holds (read with any pagination: the export takes them all)."""
    samples = data.usage["samples"]
    keys = list(data.usage["order"]) + sorted(set(data.copy_matches) - set(samples))
    outputs = []
    for key in keys:
        entry = samples.get(key, {"steps": {}, "final_share": None, "max_share": 0.0})
        steps = entry["steps"]
        largest = max(steps, key=lambda s: (steps[s]["share"], -s)) if steps else None
        kind = run_kind(data.kinds.get(key[0]))
        outputs.append(OutputUse(run_id=key[0], sample_index=key[1], run_status=data.statuses.get(key[0], "?"),
                                 run_kind=data.kinds.get(key[0], "pspc"), kind=kind.name, kind_label=kind.label,
                                 final_share=entry["final_share"],
                                 max_share=entry["max_share"], max_share_step=largest, steps_using=len(steps),
                                 copy_matches=list(data.copy_matches.get(key, []))))
    return TrainingImageExport(**_identity(data), usage_total=data.usage["final_total"], samples_using=data.total,
                               outputs=outputs, include_audits=data.include_audits, left_out=data.left_out)
