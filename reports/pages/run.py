"""A run's page (RunPage, template run.html): its reproducibility record and a paginated
gallery of samples, from auditor.store.read_models.runs.RunPageData."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from auditor.store.read_models.counterfactual import CounterfactualOrigin, counterfactual_origin
from auditor.store.read_models.runs import RunPageData
from reports.pages.common import THUMB_SIZE, Context, Pagination, Picture, RunRecord, run_record
from reports.pages.counterfactual import mode_sentence

__all__ = ["GalleryItem", "RunPage", "build_run_page"]


@dataclass(kw_only=True)
class GalleryItem:
    """One sample of a run: its final image and its headline source, the largest trajectory
share (None until complete)."""

    sample_index: int
    seed: int
    image: Picture | None
    steps_recorded: int
    top_image_index: int | None = None
    top_image_id: str | None = None
    top_label_name: str | None = None
    top_share: float | None = None


@dataclass(kw_only=True)
class RunPage(Context):
    """A run (template run.html): its reproducibility record and a paginated gallery of samples;
    for a counterfactual run, its origin (parent sample, mode, selector) and `origin_sentence`,
    what it is in one sentence."""

    documented_template: ClassVar[str] = "run.html"

    record: RunRecord
    steps_recorded: int
    samples: list[GalleryItem]
    pagination: Pagination
    origin: CounterfactualOrigin | None = None
    origin_sentence: str | None = None

    @property
    def title(self) -> str:
        return f"Run {self.record.run_id}"


def build_run_page(data: RunPageData, *, pagination: Pagination) -> RunPage:
    """The run page of `data`, read for `pagination` (a Pagination.window: its offset and per_page)."""
    run_id = int(data.run["id"])
    items = []
    for sample in data.samples:
        image = None
        if sample.final_image is not None:
            image = Picture.of(sample.final_image, THUMB_SIZE, f"sample {sample.sample_index} of run {run_id}")
        item = GalleryItem(sample_index=sample.sample_index, seed=sample.seed, image=image,
                           steps_recorded=int(data.step_counts.get(sample.sample_index, 0)))
        if sample.sample_index in data.top_sources:
            image_index, share = data.top_sources[sample.sample_index]
            meta = data.images.get(image_index)
            item.top_image_index, item.top_share = int(image_index), float(share)
            item.top_image_id = meta.image_id if meta else str(image_index)
            item.top_label_name = meta.label_name if meta else None
        items.append(item)
    origin = counterfactual_origin(data.run)
    return RunPage(record=run_record(data.run, data.dataset, None),
                   steps_recorded=max(data.step_counts.values(), default=0), samples=items,
                   pagination=pagination.of(data.total), origin=origin,
                   origin_sentence=None if origin is None else mode_sentence(origin, origin.removed_count))
