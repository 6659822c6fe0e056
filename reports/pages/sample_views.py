"""The sample report's per-step attribution views: dominant-source and concentration maps with
their legend, and the per-pixel drill-down of D(z_t)."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from auditor.store.read_models.sample import SampleProvenance
from reports import maps
from reports.pages.common import MAIN_SIZE, TINY_SIZE, Picture, meta_dict, training_thumbnail

__all__ = ["DrillDown", "LegendItem", "StepAttribution", "label_views", "legend_images", "palette_for",
           "step_attribution"]


@dataclass(kw_only=True)
class LegendItem:
    """A colour of the dominant-source map: the image it stands for (None: 'other'), its
    share of D(z_t) at the step and the fraction of pixels it dominates."""

    colour: str
    image_index: int | None
    image_id: str
    share: float | None
    pixels: float


@dataclass(kw_only=True)
class DrillDown:
    """Per-pixel drill-down of D(z_t) at one step: for each pixel (y, x), its `top` training
    images by weight (image_index -1 pads), their weight in the pixel (mirrored copy
    included) and the mirrored part; mass: the pixel's captured mass. `images` gives each
    listed image's id, label and rights metadata."""

    step: int
    height: int
    width: int
    top: int
    image_index: np.ndarray = field(repr=False)  # int [H, W, top]
    weight: np.ndarray = field(repr=False)  # float [H, W, top]
    flip: np.ndarray = field(repr=False)  # float [H, W, top]
    mass: np.ndarray = field(repr=False)  # float [H, W]
    images: dict[int, dict] = field(default_factory=dict, repr=False)

    def to_json(self, images: str = "data-uri") -> dict:
        return self.compact()

    def compact(self, digits: int = 5) -> dict:
        """The data the page's script reads: flat row-major lists, weights rounded."""
        return {"step": self.step, "height": self.height, "width": self.width, "top": self.top,
                "image_index": self.image_index.reshape(-1).tolist(),
                "weight": np.round(self.weight.reshape(-1), digits).tolist(),
                "flip": np.round(self.flip.reshape(-1), digits).tolist(),
                "mass": np.round(self.mass.reshape(-1), digits).tolist(),
                "images": {str(k): v for k, v in self.images.items()}}


@dataclass(kw_only=True)
class StepAttribution:
    """The attribution maps of D(z_t) at one step: dominant-source map with its legend,
    concentration map (kind 'top1' or 'entropy', see reports.maps), D(z_t) itself, and the
    per-pixel drill-down."""

    step: int
    t: float
    denoised: Picture
    dominant: Picture
    legend: list[LegendItem]
    concentration: Picture
    concentration_kind: str
    concentration_mean: float | None
    drilldown: DrillDown


def legend_images(data: SampleProvenance, step: int, top: int) -> list[int]:
    """The dominant-source map's legend at `step`: its top sources, at most one per palette colour."""
    return [int(i) for i in data.step_shares(step).image_index[:min(top, len(maps.PALETTE))]]


def palette_for(legend: list[int], colours: dict[int, str]) -> list[str]:
    """Palette colours for legend images: an image's established colour if it has one, else the
    next palette colour nobody in this legend uses."""
    used = {colours[i] for i in legend if i in colours}
    free = [c for c in maps.PALETTE if c not in used]
    return [colours[i] if i in colours else free.pop(0) for i in legend]


def step_attribution(data: SampleProvenance, step: int, top: int, drilldown_top: int, concentration: str,
                     colours: dict[int, str]) -> StepAttribution:
    """The maps and drill-down of D(z_t) at `step`; the legend is the step's top sources, and
    images already coloured (the final sources, `colours`) keep their colour."""
    row = data.step_row(step)
    attribution = data.pixel_attribution(step)
    share_of = data.step_shares(step).as_dict()
    legend = legend_images(data, step, top)
    per_image = data.image_weights(step)
    dominant = maps.dominant_source_map(attribution, legend, share_of, palette_for(legend, colours), per_image)
    items = [LegendItem(colour=e.colour, image_index=e.image_index,
                        image_id="other" if e.image_index is None else str(e.image_index), share=e.share,
                        pixels=e.pixels) for e in dominant.legend]
    values, concentration_rgb = maps.concentration_map(attribution, concentration, int(data.dataset["count"]),
                                                       per_image=per_image)
    finite = values[np.isfinite(values)]
    sources = data.pixel_sources(step, drilldown_top)
    drilldown = DrillDown(step=step, height=sources.height, width=sources.width, top=sources.top,
                          image_index=sources.image_index, weight=sources.weight, flip=sources.flip, mass=sources.mass)
    return StepAttribution(
        step=step, t=row.t, denoised=Picture.of(row.denoised, MAIN_SIZE, f"D(z_t) at step {step}"),
        dominant=Picture.of_rgb(dominant.rgb, MAIN_SIZE, f"dominant training image per pixel at step {step}"),
        legend=items,
        concentration=Picture.of_rgb(concentration_rgb, MAIN_SIZE,
                                     f"attribution concentration ({concentration}) at step {step}"),
        concentration_kind=concentration, concentration_mean=float(finite.mean()) if finite.size else None,
        drilldown=drilldown)


def label_views(data: SampleProvenance, views: list[StepAttribution]) -> None:
    """Image ids in the legends, and metadata with tiny thumbnails for every image a drill-down lists."""
    thumbs: dict[int, str | None] = {}
    for v in views:
        for item in v.legend:
            if item.image_index is not None and item.image_index in data.images:
                item.image_id = data.images[item.image_index].image_id
        images = {}
        for i in sorted(int(i) for i in np.unique(v.drilldown.image_index) if i >= 0):
            meta = data.images.get(i)
            if i not in thumbs:
                thumb = training_thumbnail(data.dataset["fingerprint"], meta, TINY_SIZE)
                thumbs[i] = thumb.data_uri() if thumb is not None else None
            images[i] = {**meta_dict(meta, i), "thumbnail": thumbs[i]}
        v.drilldown.images = images
