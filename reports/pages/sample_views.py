"""The sample report's per-step attribution views: dominant-source and concentration maps with
their legend, and the per-pixel drill-down of D(z_t)."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from auditor.store.read_models.sample import SampleProvenance
from reports import maps
from reports.pages.common import MAIN_SIZE, TINY_SIZE, Picture, meta_dict, training_thumbnail

__all__ = ["PIXEL_SCALE", "THUMBNAIL_BUDGET", "DrillDown", "LegendItem", "StepAttribution", "label_views",
           "legend_images", "palette_for", "step_attribution"]

PIXEL_SCALE = 100_000  # the drill-down's weights in the page's script data: integers of 1e-5 (five decimals)
# Data-URI characters of drill-down thumbnails per report: the images with the largest weight in some
# pixel get one until the budget is spent (early steps spread each pixel over thousands of images;
# a thumbnail for each made the exported quickstart report 8.7 MB). The others are listed without.
THUMBNAIL_BUDGET = 400_000


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

    def to_json(self, images: str = "data-uri", digits: int = 5) -> dict:
        """Flat row-major lists, weights rounded to `digits` decimals; images="none" leaves the
        listed images' thumbnails out (None), as every other picture of the report."""
        listed = {str(k): v if images != "none" else {**v, "thumbnail": None} for k, v in self.images.items()}
        return {"step": self.step, "height": self.height, "width": self.width, "top": self.top,
                "image_index": self.image_index.reshape(-1).tolist(),
                "weight": np.round(self.weight.reshape(-1), digits).tolist(),
                "flip": np.round(self.flip.reshape(-1), digits).tolist(),
                "mass": np.round(self.mass.reshape(-1), digits).tolist(), "images": listed}

    def pixel_rows(self, scale: int = PIXEL_SCALE) -> dict:
        """The compact form the page's script reads: each distinct pixel as one row [mass,
        image_index, weight, mirrored part, ...] (its listed images, no padding) in integer units
        of 1/scale, and `pixel_row` [H * W] (row-major) naming each pixel's row. Large patches give
        every pixel the same row, so a whole-image step costs one row."""
        rows: list[list[int]] = []
        seen: dict[tuple, int] = {}
        pixel_row = []
        index = self.image_index.reshape(-1, self.top)
        weight = np.rint(self.weight.reshape(-1, self.top) * scale).astype(np.int64)
        flip = np.rint(self.flip.reshape(-1, self.top) * scale).astype(np.int64)
        mass = np.rint(self.mass.reshape(-1) * scale).astype(np.int64)
        for p in range(len(mass)):
            kept = index[p] >= 0
            row = (int(mass[p]), *np.stack([index[p][kept], weight[p][kept], flip[p][kept]], 1).reshape(-1).tolist())
            if row not in seen:
                seen[row] = len(rows)
                rows.append(list(row))
            pixel_row.append(seen[row])
        return {"step": self.step, "height": self.height, "width": self.width, "scale": scale, "rows": rows,
                "pixel_row": pixel_row}


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


def label_views(data: SampleProvenance, views: list[StepAttribution], budget: int | None = None) -> None:
    """Image ids in the legends, and metadata for every image a drill-down lists, with a tiny
    thumbnail for those with the largest weight in some pixel until `budget` data-URI
    characters (default THUMBNAIL_BUDGET) are spent (None for the rest)."""
    budget = THUMBNAIL_BUDGET if budget is None else int(budget)
    largest: dict[int, float] = {}
    for v in views:
        for item in v.legend:
            if item.image_index is not None and item.image_index in data.images:
                item.image_id = data.images[item.image_index].image_id
        listed = v.drilldown.image_index.reshape(-1)
        keep = listed >= 0
        for i, w in zip(listed[keep].tolist(), v.drilldown.weight.reshape(-1)[keep].tolist()):
            if w > largest.get(i, -1.0):
                largest[i] = w
    thumbs: dict[int, str | None] = {}
    for i in sorted(largest, key=lambda i: (-largest[i], i)):
        thumb = training_thumbnail(data.dataset["fingerprint"], data.images.get(i), TINY_SIZE) if budget > 0 else None
        uri = thumb.data_uri() if thumb is not None else None
        if uri is not None and len(uri) > budget:
            uri, budget = None, 0
        budget -= len(uri or "")
        thumbs[i] = uri
    for v in views:
        v.drilldown.images = {i: {**meta_dict(data.images.get(i), i), "thumbnail": thumbs[i]}
                              for i in sorted(int(i) for i in np.unique(v.drilldown.image_index) if i >= 0)}
