"""The report pages' data: one documented dataclass per page, built from the store.

Each page's context is built by one function (`build_sample_report`, `build_run_page`,
`build_training_image_page`, `build_index_page`, `build_sql_page`, `build_fidelity_list_page`,
`build_fidelity_page`); the HTML template
(`documented_template`) and the JSON (`to_json()`) are two renderings of the same object,
so `.json` gives exactly what the page shows.

Images are `Picture`s: RGB uint8 arrays already enlarged for display (nearest neighbour,
no smoothing), PNG-encoded on demand; `to_json(images="data-uri")` inlines them as data:
URIs, `images="none"` leaves them out (for API clients that fetch the PNG endpoints).

Numbers come from the store exactly as auditor.store.attribution computes them (see
auditor.store.provenance; tests/reports/test_context.py compares them). Shares use the KEPT
posterior weights, so a step's shares sum to its mean captured mass (at most 1).
"""

from __future__ import annotations

import math
import os
import shlex
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field, fields, is_dataclass
from datetime import date, datetime
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from auditor.store import database, datasets, query
from auditor.workflows import sampling as runs
from auditor.store.database import NotFoundError, StoreError, json_value
from auditor.store.example_queries import EXAMPLE_QUERIES

from reports import maps
from auditor.store.provenance import ImageMeta, SampleProvenance, Shares, image_metadata, patch_geometry

__all__ = ["CopyMatch", "DatasetInfo", "DrillDown", "FidelityListPage", "FidelityPage", "GalleryItem", "IndexPage",
           "MseRow", "MseTable", "NetworkComparison", "NetworkStep", "Pagination", "SimilarityScore",
           "build_fidelity_list_page", "build_fidelity_page", "network_comparison",
           "PatchLocation", "Picture", "RunPage", "RunRecord", "SampleReport", "SearchHit", "Source", "SqlPage",
           "StepAttribution", "StepSource", "StepSummary", "StepUse", "TrainingImagePage", "UsageRow",
           "build_index_page", "build_run_page", "build_sample_report", "build_sql_page",
           "build_training_image_page", "to_jsonable", "z_display"]

IMAGE_FORMATS = ("data-uri", "none")
MAX_TOP = 100
MAX_PER_PAGE = 200

# Display sizes (CSS pixels) the pictures are enlarged to, at an integer factor.
MAIN_SIZE = 280
THUMB_SIZE = 140
TIMELINE_SIZE = 84
TINY_SIZE = 56


def _scale(size: int, target: int) -> int:
    return int(max(1, min(maps.MAX_SCALE, target // max(1, size))))


# ---------------------------------------------------------------------------------------
# Pictures and JSON
# ---------------------------------------------------------------------------------------
@dataclass
class Picture:
    """An image of a report: rgb uint8 [H, W, 3] (native resolution, or already enlarged
    `scale` times where outlines need finer lines than a pixel), shown `display` times
    larger without smoothing (CSS image-rendering: pixelated). `alt` describes it."""

    rgb: np.ndarray = field(repr=False)
    scale: int = 1
    display: int = 1
    alt: str = ""
    _png: bytes | None = field(default=None, repr=False, compare=False)

    @classmethod
    def of(cls, image, target: int = MAIN_SIZE, alt: str = "") -> "Picture":
        """From a float [C, H, W] image in [-1, 1] or uint8 pixels [C, H, W], shown about `target` px wide."""
        rgb = maps.image_rgb(image)
        return cls(rgb, 1, _scale(rgb.shape[1], target), alt)

    @classmethod
    def of_rgb(cls, rgb: np.ndarray, target: int = MAIN_SIZE, alt: str = "") -> "Picture":
        return cls(np.ascontiguousarray(rgb, dtype=np.uint8), 1, _scale(rgb.shape[1], target), alt)

    @property
    def width(self) -> int:
        return int(self.rgb.shape[1])

    @property
    def height(self) -> int:
        return int(self.rgb.shape[0])

    @property
    def display_width(self) -> int:
        return self.width * self.display

    @property
    def display_height(self) -> int:
        return self.height * self.display

    def png(self) -> bytes:
        if self._png is None:
            self._png = maps.png_bytes(self.rgb)
        return self._png

    def data_uri(self) -> str:
        return maps.data_uri(self.png())

    def to_json(self, images: str = "data-uri") -> dict | None:
        if images == "none":
            return None
        return {"width": self.width, "height": self.height, "scale": self.scale, "display_width": self.display_width,
                "display_height": self.display_height, "alt": self.alt, "png": self.data_uri()}


_THUMBNAILS: "OrderedDict[tuple, Picture]" = OrderedDict()
_THUMBNAILS_LOCK = threading.Lock()
_THUMBNAIL_CACHE_SIZE = 8192


def training_thumbnail(fingerprint: str, meta: ImageMeta | None, target: int, flip: bool = False) -> Picture | None:
    """A training image as a Picture shown about `target` px wide, PNG-encoded once per process
    (training images never change: the key is the dataset's content fingerprint)."""
    if meta is None or meta.pixels is None:
        return None
    key = (fingerprint, meta.image_index, target, flip)
    with _THUMBNAILS_LOCK:
        cached = _THUMBNAILS.get(key)
        if cached is not None:
            _THUMBNAILS.move_to_end(key)
            return cached
    pixels = meta.pixels[:, :, ::-1] if flip else meta.pixels
    picture = Picture.of(pixels, target, f"training image {meta.image_id}{' (mirrored)' if flip else ''}")
    picture.png()
    with _THUMBNAILS_LOCK:
        _THUMBNAILS[key] = picture
        while len(_THUMBNAILS) > _THUMBNAIL_CACHE_SIZE:
            _THUMBNAILS.popitem(last=False)
    return picture


def to_jsonable(value, images: str = "data-uri"):
    """Dataclasses, numpy values, datetimes and Pictures as plain JSON values (NaN -> None)."""
    if images not in IMAGE_FORMATS:
        raise ValueError(f"unknown image format {images!r}; choose from {', '.join(IMAGE_FORMATS)}")
    if hasattr(value, "to_json") and not isinstance(value, type):  # Picture, DrillDown, page contexts
        return value.to_json(images)
    if is_dataclass(value) and not isinstance(value, type):
        return {f.name: to_jsonable(getattr(value, f.name), images) for f in fields(value)
                if not f.name.startswith("_") and f.metadata.get("json", True)}
    if isinstance(value, dict):
        return {str(k): to_jsonable(v, images) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_jsonable(v, images) for v in value]
    if isinstance(value, np.ndarray):
        return to_jsonable(value.tolist(), images)
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        value = float(value)
        return value if math.isfinite(value) else None
    if isinstance(value, (datetime, date)):
        return value.isoformat()
    if isinstance(value, (bytes, bytearray, memoryview)):
        return f"<{len(bytes(value))} bytes>"
    return value


class _Context:
    """Base of the page contexts: `to_json()` renders every field."""

    documented_template: ClassVar[str] = ""

    def to_json(self, images: str = "data-uri") -> dict:
        return {"page": type(self).__name__, **{f.name: to_jsonable(getattr(self, f.name), images)
                                                 for f in fields(self) if f.metadata.get("json", True)}}


@dataclass
class Pagination:
    """Page `page` (1-based) of `per_page` items out of `total`."""

    page: int
    per_page: int
    total: int

    def __post_init__(self):
        if self.page < 1:
            raise ValueError(f"page must be >= 1, got {self.page}")
        if not 1 <= self.per_page <= MAX_PER_PAGE:
            raise ValueError(f"per_page must be in 1..{MAX_PER_PAGE}, got {self.per_page}")

    @property
    def offset(self) -> int:
        return (self.page - 1) * self.per_page

    @property
    def pages(self) -> int:
        return max(1, math.ceil(self.total / self.per_page))

    @property
    def has_previous(self) -> bool:
        return self.page > 1

    @property
    def has_next(self) -> bool:
        return self.page * self.per_page < self.total

    @property
    def first_item(self) -> int:
        return min(self.total, self.offset + 1)

    @property
    def last_item(self) -> int:
        return min(self.total, self.offset + self.per_page)


# ---------------------------------------------------------------------------------------
# Shared pieces
# ---------------------------------------------------------------------------------------
@dataclass
class DatasetInfo:
    """The training set a run used, identified by its content fingerprint."""

    id: int
    name: str
    source: str
    fingerprint: str
    count: int
    channels: int
    height: int
    width: int
    xflip: bool | None = None  # whether mirrored copies were entries (from the run's denoiser record)


@dataclass
class RunRecord:
    """Everything needed to reproduce a run (and, with sample_seed, one sample of it)."""

    run_id: int
    status: str
    created_at: datetime | None
    finished_at: datetime | None
    error: str | None
    dataset: DatasetInfo
    denoiser_kind: str | None
    denoiser: dict
    sampler: dict
    run_seed: int
    sample_seed: int | None
    num_samples: int
    top_k: int
    mass_threshold: float
    versions: dict
    command: list | None
    writer: dict | None
    timings: dict | None
    kind: str = "pspc"  # 'pspc', 'network-explained' (a network's sample attributed by PSPC), 'external-audit', ...
    details: dict | None = None  # the kind's own record (comparison, audit method and input)

    @property
    def command_line(self) -> str | None:
        return shlex.join(str(a) for a in self.command) if self.command else None

    @property
    def steps_planned(self) -> int | None:
        return self.sampler.get("num_steps") if self.sampler else None


def _record(run: dict, dataset: dict, sample_seed: int | None) -> RunRecord:
    denoiser = run.get("denoiser") or {}
    info = DatasetInfo(int(dataset["id"]), dataset["name"], dataset["source"], dataset["fingerprint"],
                       int(dataset["count"]), int(dataset["channels"]), int(dataset["height"]), int(dataset["width"]),
                       (denoiser.get("dataset") or {}).get("xflip"))
    return RunRecord(int(run["id"]), run["status"], run.get("created_at"), run.get("finished_at"), run.get("error"),
                     info, denoiser.get("kind"), denoiser, run.get("sampler") or {}, int(run["seed"]), sample_seed,
                     int(run["num_samples"]), int(run["top_k"]), float(run["mass_threshold"]),
                     run.get("versions") or {}, run.get("command"), run.get("writer"), run.get("timings"),
                     run.get("kind") or "pspc", run.get("details"))


@dataclass
class PatchLocation:
    """A patch a training image gave: at `step`, patch `position`, whose box is (top, left,
    height, width) in the ORIGINAL training image (the mirrored box when flip), with its
    kept posterior weight."""

    step: int
    position: int
    top: int
    left: int
    height: int
    width: int
    flip: bool
    weight: float

    @property
    def box(self) -> maps.Box:
        return maps.Box(self.top, self.left, self.height, self.width, self.flip)


@dataclass
class Source:
    """A training image an output was built from, with its rights metadata and how much.

    share: fraction of the image built from it (mirrored copy included), flip_share: the
    mirrored copy's part; patches: its largest kept weights, outlined on `thumbnail`;
    colour: its colour in the dominant-source map (None if outside the legend);
    share_by_step: its share at every recorded step (aligned with the report's timeline);
    steps: for trajectory sources, in how many steps it kept weight."""

    image_index: int
    image_id: str
    label: int | None
    label_name: str | None
    source_uri: str | None
    owner: str | None
    license: str | None
    share: float
    flip_share: float
    patches: list[PatchLocation]
    thumbnail: Picture | None = None
    colour: str | None = None
    share_by_step: list[float] = field(default_factory=list)
    steps: int | None = None


@dataclass
class StepSource:
    """A top source of one step (timeline): id, label, share and mirrored part, small thumbnail."""

    image_index: int
    image_id: str
    label_name: str | None
    share: float
    flip_share: float
    thumbnail: Picture | None = None


@dataclass
class StepSummary:
    """One sampling step: t -> t_next, the patch set, z_t and D(z_t), its top sources and the
    patch_stats summaries over patch positions (captured mass of the kept weights; entropy
    in nats and effective sample size of the full posterior weight vector)."""

    step: int
    t: float
    t_next: float
    coefficient: float  # the step's weight in the trajectory attribution
    patch: str  # e.g. '7x7 windows (484 patches)'
    patch_size: int | None
    num_patches: int
    patch_set: dict
    z: Picture  # z_t / sqrt(1 + t^2), see z_display
    denoised: Picture
    top_sources: list[StepSource]
    captured: float  # sum of the step's shares = mean captured mass over pixels
    mass_mean: float | None = None
    mass_min: float | None = None
    entropy_mean: float | None = None
    entropy_max: float | None = None
    ess_mean: float | None = None
    ess_median: float | None = None
    kept_mean: float | None = None


@dataclass
class LegendItem:
    """A colour of the dominant-source map: the image it stands for (None: 'other'), its
    share of D(z_t) at the step and the fraction of pixels it dominates."""

    colour: str
    image_index: int | None
    image_id: str
    share: float | None
    pixels: float


@dataclass
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


@dataclass
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


@dataclass
class NetworkStep:
    """Agreement of network and PSPC at one step of the network's trajectory: MSE (and
    largest absolute difference) between their denoiser outputs on the same z_t."""

    step: int
    t: float
    mse: float
    max_abs_error: float | None = None


@dataclass
class SimilarityScore:
    """A descriptor similarity between the sample and its counterpart, with what makes it
    meaningful: the descriptor's name, its preprocessing and record, the thresholds used and
    the highest one reached (`flag`, None if none)."""

    descriptor: str
    score: float
    thresholds: list[float]
    flag: float | None
    flagged: bool
    preprocessing: Any = None
    record: dict = field(default_factory=dict)

    @property
    def threshold(self) -> float | None:
        """The threshold shown next to the score: the highest reached, else the lowest."""
        return self.flag if self.flag is not None else (min(self.thresholds) if self.thresholds else None)


@dataclass
class NetworkComparison:
    """The sample's counterpart in a network comparison (auditor.workflows.comparison), sampled from the
    same initial noise: for a PSPC sample, the network's sample; for a network-explained
    sample (the network's own, attributed by PSPC on its trajectory), the PSPC sample. With
    the similarity scores of the pair and the network run's per-step agreement between the
    network's and PSPC's denoiser outputs (how far the attribution can be trusted per step)."""

    network: dict  # what the network is: id, name, kind, sha256, source, record
    image: Picture | None  # the counterpart's final image
    role: str  # this run's role in the comparison: 'network' or the denoiser kind
    counterpart_role: str
    counterpart_run_id: int | None
    comparison_id: int | None
    scores: list[SimilarityScore] = field(default_factory=list)
    steps: list[NetworkStep] = field(default_factory=list)

    @property
    def flagged(self) -> bool:
        """Some descriptor's score reaches one of its thresholds: a likely copy."""
        return any(s.flagged for s in self.scores)

    @property
    def is_network_sample(self) -> bool:
        return self.role == "network"


def network_comparison(counterpart: dict | None) -> NetworkComparison | None:
    """A NetworkComparison from auditor.workflows.comparison.sample_counterpart's record (None stays None)."""
    if counterpart is None:
        return None
    image = counterpart.get("image")
    picture = Picture.of(np.asarray(image, np.float32), MAIN_SIZE, f"{counterpart.get('counterpart_role')} sample") \
        if image is not None else None
    scores = [SimilarityScore(s["descriptor"], float(s["score"]), [float(t) for t in (s.get("thresholds") or [])],
                              None if s.get("flag") is None else float(s["flag"]), bool(s.get("flagged")),
                              s.get("preprocessing"), s.get("descriptor_record") or {})
              for s in counterpart.get("similarity", [])]
    steps = [NetworkStep(int(s["step"]), float(s["t"]), float(s["mse"]),
                         None if s.get("max_abs_error") is None else float(s["max_abs_error"]))
             for s in counterpart.get("steps", [])]
    return NetworkComparison(counterpart.get("network") or {}, picture, str(counterpart.get("role")),
                             str(counterpart.get("counterpart_role")), counterpart.get("counterpart_run_id"),
                             counterpart.get("comparison_id"), scores, steps)


@dataclass
class CopyMatch:
    """A nearest training image of the sample by descriptor (copy detection), with the
    descriptor, thresholds and the highest threshold reached."""

    rank: int
    image_index: int
    image_id: str
    flip: bool
    score: float
    descriptor: str
    thresholds: list[float]
    flag: float | None
    flagged: bool
    thumbnail: Picture | None = None


# ---------------------------------------------------------------------------------------
# Sample report
# ---------------------------------------------------------------------------------------
@dataclass
class SampleReport(_Context):
    """The report on one generated image (template sample.html).

    image: the final image (None until the run completes); record: the run's
    reproducibility record with this sample's seed; sources: the final image's top
    training sources; trajectory: the trajectory-aggregated sources (which images built it
    along the sampling path); step: the step the maps show; views: the attribution maps and
    drill-down of `step` (and of every step in an exported report); timeline: every
    recorded step; network: the network counterpart when the run belongs to a network
    comparison (else None); copy_matches: the nearest training images by descriptor, when
    copy detection ran on the sample; notes: things the reader must know (run still running,
    pixels not stored, ...)."""

    documented_template: ClassVar[str] = "sample.html"

    run_id: int
    sample_index: int
    seed: int
    status: str
    complete: bool
    image: Picture | None
    image_shape: tuple[int, int, int]
    record: RunRecord
    sources: list[Source]
    sources_total: float  # sum of all sources' shares (captured mass of the final image)
    trajectory: list[Source]
    step: int
    final_step: int | None
    steps_recorded: int
    steps_planned: int | None
    views: list[StepAttribution]
    timeline: list[StepSummary]
    network: NetworkComparison | None = None
    copy_matches: list[CopyMatch] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    built_ms: float = 0.0

    @property
    def view(self) -> StepAttribution:
        """The attribution of the chosen step."""
        return next(v for v in self.views if v.step == self.step)

    @property
    def title(self) -> str:
        return f"Run {self.run_id} · sample {self.sample_index}"

    def timeline_step(self, step: int) -> StepSummary | None:
        return next((s for s in self.timeline if s.step == step), None)


def z_display(z: np.ndarray, t: float) -> np.ndarray:
    """z_t as shown: z_t / sqrt(1 + t^2) (the variance-preserving scaling), so a noisy
    state at large t is unit-variance noise and one at small t is the image itself."""
    return np.asarray(z, np.float32) / np.float32(math.sqrt(1.0 + float(t) ** 2))


def _meta_dict(meta: ImageMeta | None, image_index: int) -> dict:
    if meta is None:
        return {"image_index": image_index, "image_id": str(image_index), "label": None, "label_name": None,
                "source_uri": None, "owner": None, "license": None}
    return meta.as_dict()


def _sources(data: SampleProvenance, shares: Shares, top: int, patches: int, steps, colours: dict[int, str],
             coefficients=None, with_steps: bool = False) -> list[Source]:
    chosen = shares.top(top)
    indices = chosen.image_index.tolist()
    located = data.top_patches(indices, steps, patches, coefficients)
    series = data.share_series(indices)
    out = []
    for k, image in enumerate(indices):
        meta = data.images.get(image)
        colour = colours.get(image)
        locations = [PatchLocation(**p) for p in located.get(image, [])]
        thumbnail = None
        if meta is not None and meta.pixels is not None:
            scale = _scale(meta.pixels.shape[2], THUMB_SIZE)
            rgb = maps.outlined_thumbnail(meta.pixels, [p.box for p in locations], scale,
                                          colour or maps.OUTLINE_COLOUR, thickness=max(1, scale // 3),
                                          dash=max(2, scale // 2 + 1))
            thumbnail = Picture(rgb, scale, 1, f"training image {meta.image_id} with the patches it gave outlined")
        d = _meta_dict(meta, image)
        out.append(Source(image, d["image_id"], d["label"], d["label_name"], d["source_uri"], d["owner"],
                          d["license"], float(chosen.share[k]), float(chosen.flip_share[k]), locations, thumbnail,
                          colour, series[image], int(chosen.steps[k]) if with_steps and chosen.steps is not None
                          else None))
    return out


def _drilldown(data: SampleProvenance, step: int, per_image: tuple, top: int) -> DrillDown:
    images, weights, mirrored = per_image
    height, width = weights.shape[1:] if weights.ndim == 3 else data.shape[1:]
    k = min(top, len(images))
    if k:
        order = np.argsort(-weights, axis=0, kind="stable")[:k]  # [k, H, W]; ties: smaller image index first
        picked_weight = np.take_along_axis(weights, order, 0)
        picked_flip = np.take_along_axis(mirrored, order, 0)
        picked_image = np.where(picked_weight > 0, images[order], -1)
        picked_weight = np.where(picked_weight > 0, picked_weight, 0.0)
        picked_flip = np.where(picked_image >= 0, picked_flip, 0.0)
    else:
        picked_image = np.full((top, height, width), -1)
        picked_weight = picked_flip = np.zeros((top, height, width))
    if k < top:  # pad to `top` entries per pixel
        pad = top - k
        picked_image = np.concatenate([picked_image, np.full((pad, height, width), -1)])
        picked_weight = np.concatenate([picked_weight, np.zeros((pad, height, width))])
        picked_flip = np.concatenate([picked_flip, np.zeros((pad, height, width))])
    mass = weights.sum(0) if len(images) else np.zeros((height, width))
    return DrillDown(step, int(height), int(width), int(top), np.moveaxis(picked_image, 0, -1).astype(np.int64),
                     np.moveaxis(picked_weight, 0, -1), np.moveaxis(picked_flip, 0, -1), mass)


def _step_attribution(data: SampleProvenance, step: int, top: int, drilldown_top: int, concentration: str,
                      colours: dict[int, str]) -> StepAttribution:
    row = data.step_row(step)
    attribution = data.pixel_attribution(step)
    shares = data.step_shares(step)
    share_of = shares.as_dict()
    # the legend: this step's top sources; images already coloured (final sources) keep their colour
    legend_images = [int(i) for i in shares.image_index[:min(top, len(maps.PALETTE))]]
    palette = _palette_for(legend_images, colours)
    per_image = maps.per_image_weights(attribution)
    dominant = maps.dominant_source_map(attribution, legend_images, share_of, palette, per_image)
    legend = [LegendItem(e.colour, e.image_index, "other" if e.image_index is None else str(e.image_index), e.share,
                         e.pixels) for e in dominant.legend]
    values, concentration_rgb = maps.concentration_map(attribution, concentration, int(data.dataset["count"]),
                                                       per_image=per_image)
    finite = values[np.isfinite(values)]
    alt = f"D(z_t) at step {step}"
    return StepAttribution(
        step, row.t, Picture.of(row.denoised, MAIN_SIZE, alt),
        Picture.of_rgb(dominant.rgb, MAIN_SIZE, f"dominant training image per pixel at step {step}"), legend,
        Picture.of_rgb(concentration_rgb, MAIN_SIZE, f"attribution concentration ({concentration}) at step {step}"),
        concentration, float(finite.mean()) if finite.size else None,
        _drilldown(data, step, per_image, drilldown_top))


def _palette_for(legend_images: list[int], colours: dict[int, str]) -> list[str]:
    """Palette colours for legend images: an image's established colour if it has one, else the
    next palette colour nobody in this legend uses."""
    used = {colours[i] for i in legend_images if i in colours}
    free = [c for c in maps.PALETTE if c not in used]
    return [colours[i] if i in colours else free.pop(0) for i in legend_images]


def _check_options(**values) -> None:
    for name, (value, low, high) in values.items():
        if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or not low <= value <= high:
            raise ValueError(f"{name} must be an integer in {low}..{high}, got {value!r}")


def build_sample_report(db_path, run_id: int, sample_index: int, *, step: int | None = None, top: int = 10,
                        step_top: int = 3, patches: int = 12, drilldown_top: int = 5, all_steps: bool = False,
                        concentration: str = "top1", network: NetworkComparison | None | str = "auto",
                        timeout: float = database.DEFAULT_TIMEOUT) -> SampleReport:
    """The report on sample `sample_index` of run `run_id`.

    step: the step whose attribution maps and drill-down are shown (None: the final step,
    or the last recorded one while the run is not complete); top: sources listed (the first
    10 get palette colours in the maps); step_top: sources per timeline step; patches: patch
    locations per source; drilldown_top: training images listed per pixel; all_steps: build
    the maps and drill-down of every recorded step (the self-contained export, whose step
    selector works offline); concentration: 'top1' or 'entropy'; network: 'auto' reads the
    sample's network comparison from the store (auditor.workflows.comparison.sample_counterpart), None
    leaves the section out, or pass a NetworkComparison.

    The store is read in one short read-only transaction; the report of a complete run is
    kept per process (see _report_key) and shared: treat it as read-only. NotFoundError for
    an unknown run, sample or step; ValueError for bad options."""
    started = time.perf_counter()
    _check_options(top=(top, 1, MAX_TOP), step_top=(step_top, 0, 50), patches=(patches, 0, 100),
                   drilldown_top=(drilldown_top, 1, 20))
    if concentration not in maps.CONCENTRATION_KINDS:
        raise ValueError(f"unknown concentration kind {concentration!r}; "
                         f"choose from {', '.join(maps.CONCENTRATION_KINDS)}")
    if isinstance(network, str) and network != "auto":
        raise ValueError(f"network must be 'auto', None or a NetworkComparison, got {network!r}")
    options = (step, top, step_top, patches, drilldown_top, all_steps, concentration, network)
    cacheable = network is None or isinstance(network, str)
    with database.connect(db_path, read_only=True, timeout=timeout, check_schema=True) as conn:
        key = _report_key(conn, db_path, run_id, sample_index, options) if cacheable else None
        if key is not None:
            with _REPORTS_LOCK:
                cached = _REPORTS.get(key)
                if cached is not None:
                    _REPORTS.move_to_end(key)
                    return cached
        data = SampleProvenance.read(conn, db_path, run_id, sample_index)
        chosen = data.resolve_step(step)  # raises before anything else is computed
        final_step = data.final_step
        final = data.final_shares()
        trajectory = data.trajectory_shares()
        all_shares = data.all_step_shares()
        view_steps = [row.step for row in data.steps] if all_steps else [chosen]
        colours = {}
        if final is not None:
            colours = {int(i): c for i, c in zip(final.image_index[:top].tolist(), maps.PALETTE)}
        # the maps are computed inside the transaction (milliseconds) so that one read fetches every image they list
        views = [_step_attribution(data, s, top, drilldown_top, concentration, colours) for s in view_steps]
        wanted = set()
        if final is not None:
            wanted.update(final.image_index[:top].tolist())
        wanted.update(trajectory.image_index[:top].tolist())
        for shares in all_shares.values():
            wanted.update(shares.image_index[:step_top].tolist())
        for v in views:
            wanted.update(item.image_index for item in v.legend if item.image_index is not None)
            wanted.update(int(i) for i in np.unique(v.drilldown.image_index) if i >= 0)
        matches = conn.execute("SELECT rank, image_index, flip, score, descriptor, thresholds, flag, flagged "
                               "FROM copy_matches WHERE run_id = ? AND sample_index = ? ORDER BY descriptor, rank",
                               [data.run["id"], data.sample_index]).fetchall()
        wanted.update(int(m[1]) for m in matches)
        data.fetch_images(conn, wanted)
    # everything below works on the arrays read above; the file is closed
    notes = []
    _label_views(data, views)

    if final is not None:
        sources = _sources(data, final, top, patches, [final_step], colours)
        sources_total = float(final.share.sum())
    else:
        sources, sources_total = [], 0.0
        notes.append(f"Run {data.run['id']} is {data.run['status']}: {len(data.steps)} of "
                     f"{data.run['sampler'].get('num_steps', '?')} steps are recorded, so the final image and its "
                     "sources are not there yet; the maps show the last recorded step.")
    coefficients = data.coefficients()
    trajectory_sources = _sources(data, trajectory, top, patches, None, colours, coefficients, with_steps=True)
    stats = data.stats_summary()
    timeline = []
    for row in data.steps:
        geometry = data.geometry[row.patch_set_id]
        shares = all_shares[row.step]
        top_step = []
        for image, share, flip in zip(shares.image_index[:step_top].tolist(), shares.share[:step_top].tolist(),
                                      shares.flip_share[:step_top].tolist()):
            meta = data.images.get(image)
            thumb = training_thumbnail(data.dataset["fingerprint"], meta, TINY_SIZE)
            top_step.append(StepSource(image, meta.image_id if meta else str(image), meta.label_name if meta else None,
                                       share, flip, thumb))
        timeline.append(StepSummary(
            row.step, row.t, row.t_next, coefficients.get(row.step, 0.0), geometry.label, geometry.patch_size,
            geometry.num_patches, geometry.description,
            Picture.of(z_display(row.z, row.t), TIMELINE_SIZE, f"z_t at step {row.step} (t = {row.t:.4g})"),
            Picture.of(row.denoised, TIMELINE_SIZE, f"D(z_t) at step {row.step}"), top_step, float(shares.share.sum()),
            **stats.get(row.step, {})))
    if any(meta.pixels is None for meta in data.images.values()):
        notes.append("The store holds no pixels for some training images (ingested before schema revision 0003): "
                     "their thumbnails are missing. Run `auditor ingest` on the same data again to add them.")
    image = Picture.of(data.final_image, MAIN_SIZE, f"generated sample {sample_index} of run {run_id}") \
        if data.final_image is not None else None
    if network == "auto":
        from auditor.workflows.comparison import sample_counterpart

        network = network_comparison(sample_counterpart(db_path, data.run["id"], data.sample_index, timeout=timeout))
    copy_matches = []
    for rank, image_index, flip, score, descriptor, thresholds, flag, flagged in matches:
        meta = data.images.get(int(image_index))
        copy_matches.append(CopyMatch(
            int(rank), int(image_index), meta.image_id if meta else str(image_index), bool(flip), float(score),
            descriptor, [float(t) for t in (json_value(thresholds) or [])], None if flag is None else float(flag),
            bool(flagged), training_thumbnail(data.dataset["fingerprint"], meta, TINY_SIZE, bool(flip))))
    report = SampleReport(
        int(data.run["id"]), data.sample_index, data.seed, data.run["status"], data.complete, image, data.shape,
        _record(data.run, data.dataset, data.seed), sources, sources_total, trajectory_sources, chosen, final_step,
        len(data.steps), (data.run.get("sampler") or {}).get("num_steps"), views, timeline, network, copy_matches,
        notes, round((time.perf_counter() - started) * 1000, 1))
    if key is not None:
        with _REPORTS_LOCK:
            _REPORTS[key] = report
            while len(_REPORTS) > _REPORT_CACHE_SIZE:
                _REPORTS.popitem(last=False)
    return report


# Reports of COMPLETE runs, whose rows never change, are kept per process: the key holds the
# run's identity (file, id, creation and completion time) and the counts of the rows that can
# still be added for it later (similarity scores, copy matches, comparison membership).
_REPORTS: "OrderedDict[tuple, SampleReport]" = OrderedDict()
_REPORTS_LOCK = threading.Lock()
_REPORT_CACHE_SIZE = 32


def _report_key(conn, db_path, run_id, sample_index, options: tuple) -> tuple | None:
    try:
        run_id, sample_index = int(run_id), int(sample_index)
    except (TypeError, ValueError):
        return None
    row = conn.execute("""
        SELECT r.status, r.created_at, r.finished_at,
               (SELECT count(*) FROM similarity_scores s WHERE s.run_a = r.id OR s.run_b = r.id),
               (SELECT count(*) FROM copy_matches c WHERE c.run_id = r.id),
               (SELECT count(*) FROM comparison_runs m WHERE m.run_id = r.id)
        FROM runs r WHERE r.id = ?""", [run_id]).fetchone()
    if row is None or row[0] != "complete":
        return None
    return (str(Path(os.fspath(db_path)).resolve()), run_id, sample_index, *row[1:], options)


def _label_views(data: SampleProvenance, views: list[StepAttribution]) -> None:
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
            images[i] = {**_meta_dict(meta, i), "thumbnail": thumbs[i]}
        v.drilldown.images = images


# ---------------------------------------------------------------------------------------
# Run page
# ---------------------------------------------------------------------------------------
@dataclass
class GalleryItem:
    """One sample of a run: its final image and its largest source (None until complete)."""

    sample_index: int
    seed: int
    image: Picture | None
    steps_recorded: int
    top_image_index: int | None = None
    top_image_id: str | None = None
    top_label_name: str | None = None
    top_share: float | None = None


@dataclass
class RunPage(_Context):
    """A run (template run.html): its reproducibility record and a paginated gallery of samples."""

    documented_template: ClassVar[str] = "run.html"

    record: RunRecord
    steps_recorded: int
    samples: list[GalleryItem]
    pagination: Pagination

    @property
    def title(self) -> str:
        return f"Run {self.record.run_id}"


def build_run_page(db_path, run_id: int, *, page: int = 1, per_page: int = 24,
                   timeout: float = database.DEFAULT_TIMEOUT) -> RunPage:
    """Run `run_id` with samples [offset, offset + per_page). NotFoundError for an unknown run."""
    pagination = Pagination(int(page), int(per_page), 0)
    with database.connect(db_path, read_only=True, timeout=timeout, check_schema=True) as conn:
        row = conn.execute(f"SELECT {', '.join('r.' + c for c in SampleProvenance._RUN)}, "
                           f"{', '.join('d.' + c for c in SampleProvenance._DATASET)} "
                           "FROM runs r JOIN datasets d ON d.id = r.dataset_id WHERE r.id = ?",
                           [_int(run_id, "run id")]).fetchone()
        if row is None:
            raise NotFoundError(f"{db_path}: no run {run_id}")
        run = dict(zip(SampleProvenance._RUN, row[:len(SampleProvenance._RUN)]))
        for key in ("denoiser", "sampler", "versions", "command", "writer", "timings", "details"):
            run[key] = json_value(run[key])
        dataset = dict(zip(SampleProvenance._DATASET, row[len(SampleProvenance._RUN):]))
        pagination.total = int(run["num_samples"])
        samples = conn.execute("SELECT sample_index, seed, final_image FROM samples WHERE run_id = ? "
                               "ORDER BY sample_index LIMIT ? OFFSET ?",
                               [int(run_id), pagination.per_page, pagination.offset]).fetchall()
        indices = [s[0] for s in samples]
        step_counts = dict(conn.execute("SELECT sample_index, count(*) FROM steps WHERE run_id = ? "
                                        "GROUP BY sample_index", [int(run_id)]).fetchall())
        tops = {}
        if indices and run["status"] == "complete":
            for sample_index, image_index, share in conn.execute("""
                    SELECT sample_index, image_index, share FROM (
                        SELECT sample_index, image_index, share,
                               row_number() OVER (PARTITION BY sample_index ORDER BY share DESC, image_index) AS r
                        FROM sample_sources WHERE run_id = ? AND sample_index IN (SELECT unnest(?::INTEGER[])))
                    WHERE r = 1""", [int(run_id), indices]).fetchall():
                tops[sample_index] = (image_index, share)
        shape = (dataset["channels"], dataset["height"], dataset["width"])
        meta = image_metadata(conn, dataset["id"], [t[0] for t in tops.values()], shape, pixels=False)
    items = []
    for sample_index, seed, final in samples:
        image = None
        if final is not None:
            array = np.frombuffer(final, "<f4").reshape(shape)
            image = Picture.of(array, THUMB_SIZE, f"sample {sample_index} of run {run_id}")
        item = GalleryItem(int(sample_index), int(seed), image, int(step_counts.get(sample_index, 0)))
        if sample_index in tops:
            image_index, share = tops[sample_index]
            m = meta.get(image_index)
            item.top_image_index, item.top_share = int(image_index), float(share)
            item.top_image_id = m.image_id if m else str(image_index)
            item.top_label_name = m.label_name if m else None
        items.append(item)
    steps_recorded = max(step_counts.values(), default=0)
    return RunPage(_record(run, dataset, None), steps_recorded, items, pagination)


def _int(value, what: str) -> int:
    try:
        return int(value)
    except (TypeError, ValueError):
        raise NotFoundError(f"{what} must be an integer, got {value!r}") from None


# ---------------------------------------------------------------------------------------
# Training-image page (the rights holder's view)
# ---------------------------------------------------------------------------------------
@dataclass
class StepUse:
    """One step of one sample that kept weight on the image: its share of D(z_t) there
    (mirrored part apart) and the patch locations it gave (boxes in the original image)."""

    step: int
    t: float
    t_next: float
    share: float
    flip_share: float
    locations: list[PatchLocation]


@dataclass
class UsageRow:
    """One sample that used the image: its final image, the image's share of it (None if the
    final step did not keep it or the run is not complete), and every step that used it."""

    run_id: int
    sample_index: int
    run_status: str
    image: Picture | None
    final_share: float | None
    max_share: float
    steps: list[StepUse]
    outlined: Picture | None = None  # the training image with this sample's final-step patches outlined


@dataclass
class TrainingImagePage(_Context):
    """A training image (template training_image.html): its metadata, where in it PSPC took
    patches for final images (usage map), and every sample, step and patch location that
    used it, largest final share first (paginated by sample)."""

    documented_template: ClassVar[str] = "training_image.html"

    dataset: DatasetInfo
    image_index: int
    image_id: str
    sha256: str
    label: int | None
    label_name: str | None
    source_uri: str | None
    owner: str | None
    license: str | None
    extra: dict | None
    thumbnail: Picture | None
    usage_map: Picture | None  # share of final images taken from each of its pixels (viridis)
    usage_total: float  # sum of its shares over all final images
    samples_using: int
    steps_using: int
    usages: list[UsageRow]
    pagination: Pagination
    locations_per_step: int = 0

    @property
    def title(self) -> str:
        return f"Training image {self.image_id}"


def build_training_image_page(db_path, dataset_id: int, image_index: int, *, page: int = 1, per_page: int = 20,
                              locations: int = 8, timeout: float = database.DEFAULT_TIMEOUT) -> TrainingImagePage:
    """Training image `image_index` of dataset `dataset_id` and every use of it, samples
    [offset, offset + per_page) by largest final share. NotFoundError for unknown ids."""
    pagination = Pagination(int(page), int(per_page), 0)
    _check_options(locations=(locations, 0, 1000))
    dataset_id, image_index = _int(dataset_id, "dataset id"), _int(image_index, "image index")
    with database.connect(db_path, read_only=True, timeout=timeout, check_schema=True) as conn:
        drow = conn.execute("SELECT id, name, source, fingerprint, count, channels, height, width FROM datasets "
                            "WHERE id = ?", [dataset_id]).fetchone()
        if drow is None:
            raise NotFoundError(f"{db_path}: no dataset {dataset_id}")
        irow = conn.execute("SELECT image_id, sha256, label, label_name, source_uri, owner, license, extra, pixels "
                            "FROM training_images WHERE dataset_id = ? AND image_index = ?",
                            [dataset_id, image_index]).fetchone()
        if irow is None:
            raise NotFoundError(f"{db_path}: dataset {dataset_id} has no training image {image_index} "
                                f"(indices 0..{drow[4] - 1})")
        rows = conn.execute("""
            SELECT w.run_id, w.sample_index, w.step, w.position, w.flip, w.source_top, w.source_left, w.weight,
                   s.t, s.t_next, s.patch_set_id
            FROM patch_weights w
            JOIN runs r ON r.id = w.run_id
            JOIN steps s ON s.run_id = w.run_id AND s.sample_index = w.sample_index AND s.step = w.step
            WHERE r.dataset_id = ? AND w.image_index = ?""", [dataset_id, image_index]).fetchnumpy()
        share_rows = conn.execute("""
            SELECT v.run_id, v.sample_index, v.step, v.share, v.flip_share, s.t, s.t_next
            FROM step_shares v
            JOIN runs r ON r.id = v.run_id
            JOIN steps s ON s.run_id = v.run_id AND s.sample_index = v.sample_index AND s.step = v.step
            WHERE r.dataset_id = ? AND v.image_index = ?""", [dataset_id, image_index]).fetchall()
        geometry = patch_geometry(conn, np.unique(rows["patch_set_id"]).tolist())
        statuses = dict(conn.execute("SELECT id, status FROM runs WHERE dataset_id = ?", [dataset_id]).fetchall())
        usage = _usage(share_rows, rows, geometry, statuses, (int(drow[6]), int(drow[7])))
        pagination.total = len(usage["order"])
        shown = usage["order"][pagination.offset:pagination.offset + pagination.per_page]
        finals = {}
        if shown:
            run_ids = sorted({r for r, _ in shown})
            for run_id, sample_index, final in conn.execute(
                    "SELECT run_id, sample_index, final_image FROM samples WHERE run_id IN (SELECT unnest(?::BIGINT[]))",
                    [run_ids]).fetchall():
                if (run_id, sample_index) in usage["samples"] and final is not None:
                    finals[(run_id, sample_index)] = final
    shape = (int(drow[5]), int(drow[6]), int(drow[7]))
    pixels = np.frombuffer(irow[8], np.uint8).reshape(shape) if irow[8] is not None else None
    info = DatasetInfo(int(drow[0]), drow[1], drow[2], drow[3], int(drow[4]), *shape)
    usages = []
    for key in shown:
        entry = usage["samples"][key]
        steps = []
        for step in sorted(entry["steps"]):
            s = entry["steps"][step]
            located = sorted(s["locations"], key=lambda p: (-p.weight, p.position))[:locations]
            steps.append(StepUse(step, s["t"], s["t_next"], s["share"], s["flip_share"], located))
        final_step = next((st for st in steps if st.t_next == 0), None)
        outlined = None
        if pixels is not None and final_step is not None:
            scale = _scale(shape[2], TINY_SIZE)
            outlined = Picture(maps.outlined_thumbnail(pixels, [p.box for p in final_step.locations], scale),
                               scale, 1, "patches this sample's final image took from the training image")
        image = Picture.of(np.frombuffer(finals[key], "<f4").reshape(shape), TINY_SIZE,
                           f"sample {key[1]} of run {key[0]}") if key in finals else None
        usages.append(UsageRow(key[0], key[1], statuses.get(key[0], "?"), image, entry["final_share"],
                               entry["max_share"], steps, outlined))
    thumbnail = usage_map = None
    if pixels is not None:
        thumbnail = Picture.of(pixels, MAIN_SIZE // 2 * 2, f"training image {irow[0]}")
    if usage["pixel_map"] is not None and usage["pixel_map"].max() > 0:
        values = usage["pixel_map"] / usage["pixel_map"].max()
        usage_map = Picture.of_rgb(_usage_overlay(pixels, values), MAIN_SIZE // 2 * 2,
                                   "share of final images taken from each pixel of the training image")
    extra = json_value(irow[7])
    return TrainingImagePage(info, image_index, irow[0], irow[1], irow[2], irow[3], irow[4], irow[5], irow[6], extra,
                             thumbnail, usage_map, usage["final_total"], len(usage["order"]), usage["steps_using"],
                             usages, pagination, locations)


def _usage_overlay(pixels: np.ndarray | None, values: np.ndarray) -> np.ndarray:
    """Used pixels in viridis (by how much, relative to the most used), over the training image
    dimmed to a third where nothing was taken (or black when its pixels are not stored)."""
    coloured = maps.colormap(values).astype(np.float64)
    base = maps.image_rgb(pixels).astype(np.float64) / 3 if pixels is not None else np.zeros_like(coloured)
    alpha = np.where(values > 0, 0.55 + 0.45 * values, 0.0)[..., None]
    return np.round((1 - alpha) * base + alpha * coloured).astype(np.uint8)


def _usage(share_rows: list, rows: dict, geometry: dict, statuses: dict, size: tuple[int, int]) -> dict:
    """Per (run, sample): per-step share of the image (step_shares rows, as view step_sources)
    with the patch locations it gave (patch_weights rows); the final share; and the usage map
    over the training image's pixels (share of final images taken from each source pixel,
    summed over samples)."""
    height, width = size
    samples: dict[tuple[int, int], dict] = {}
    for run_id, sample_index, step, share, flip_share, t, t_next in share_rows:
        entry = samples.setdefault((int(run_id), int(sample_index)), {"steps": {}, "final_share": None,
                                                                      "max_share": 0.0})
        entry["steps"][int(step)] = {"t": float(t), "t_next": float(t_next), "share": float(share),
                                     "flip_share": float(flip_share), "locations": []}
    pixel_map = np.zeros(height * width)
    n = len(rows["run_id"])
    for r in range(n):
        key = (int(rows["run_id"][r]), int(rows["sample_index"][r]))
        step = int(rows["step"][r])
        g = geometry[int(rows["patch_set_id"][r])]
        position = int(rows["position"][r])
        weight = float(rows["weight"][r])
        flip = bool(rows["flip"][r])
        s = samples.get(key, {}).get("steps", {}).get(step)
        if s is not None:
            s["locations"].append(PatchLocation(step, position, int(rows["source_top"][r]),
                                                int(rows["source_left"][r]), int(g.box_height[position]),
                                                int(g.box_width[position]), flip, weight))
        if float(rows["t_next"][r]) == 0 and statuses.get(key[0]) == "complete":
            # output pixel p of the patch took training pixel p (mirrored: x -> W - 1 - x) with weight w / coverage(p)
            start, stop = g.member_starts[position], g.member_starts[position + 1]
            pixel = g.member_pixel[start:stop]
            source = pixel if not flip else (pixel // width) * width + (width - 1 - pixel % width)
            np.add.at(pixel_map, source, weight / g.coverage[pixel] / (height * width))
    final_total = 0.0
    steps_using = 0
    for key, entry in samples.items():
        steps_using += len(entry["steps"])
        entry["max_share"] = max(s["share"] for s in entry["steps"].values())
        final = [s["share"] for s in entry["steps"].values() if s["t_next"] == 0]
        if final and statuses.get(key[0]) == "complete":
            entry["final_share"] = final[0]
            final_total += final[0]
    order = sorted(samples, key=lambda k: (-(samples[k]["final_share"] or -1.0), -samples[k]["max_share"], k))
    return {"samples": samples, "order": order, "final_total": final_total, "steps_using": steps_using,
            "pixel_map": pixel_map.reshape(height, width) if n else None}


# ---------------------------------------------------------------------------------------
# Index (runs, datasets, search)
# ---------------------------------------------------------------------------------------
@dataclass
class SearchHit:
    """A training image matching the search (exact id or source URI first, then containing it)."""

    dataset_id: int
    dataset: str
    image_index: int
    image_id: str
    label_name: str | None
    source_uri: str | None
    owner: str | None
    license: str | None
    exact: bool


@dataclass
class IndexPage(_Context):
    """The start page (template index.html): runs (paginated, newest first), datasets, and
    the search for a training image by id or source URI (paginated)."""

    documented_template: ClassVar[str] = "index.html"

    runs: list[dict]
    runs_pagination: Pagination
    datasets: list[dict]
    q: str | None
    hits: list[SearchHit]
    hits_pagination: Pagination | None
    title: str = "Provenance store"


def build_index_page(db_path, *, q: str | None = None, page: int = 1, per_page: int = 20,
                     timeout: float = database.DEFAULT_TIMEOUT) -> IndexPage:
    """Runs page `page` (or search hits page `page` when q is given) of `per_page`."""
    pagination = Pagination(int(page), int(per_page), 0)
    all_runs = runs.run_summaries(db_path, timeout=timeout)
    all_datasets = datasets.list_datasets(db_path, timeout=timeout)
    q = (q or "").strip() or None
    hits, hits_pagination = [], None
    runs_pagination = Pagination(1 if q else pagination.page, pagination.per_page, len(all_runs))
    if q is not None:
        if len(q) > 1000:
            raise ValueError("search text is too long (at most 1000 characters)")
        hits_pagination = Pagination(pagination.page, pagination.per_page, 0)
        needle = q.lower()
        where = ("(i.image_id = ? OR i.source_uri = ? OR contains(lower(i.image_id), ?) "
                 "OR contains(lower(coalesce(i.source_uri, '')), ?))")
        params = [q, q, needle, needle]
        with database.connect(db_path, read_only=True, timeout=timeout, check_schema=True) as conn:
            hits_pagination.total = int(conn.execute(f"SELECT count(*) FROM training_images i WHERE {where}",
                                                     params).fetchone()[0])
            rows = conn.execute(f"""
                SELECT i.dataset_id, d.name, i.image_index, i.image_id, i.label_name, i.source_uri, i.owner, i.license,
                       (i.image_id = ? OR i.source_uri = ?) AS exact
                FROM training_images i JOIN datasets d ON d.id = i.dataset_id
                WHERE {where}
                ORDER BY exact DESC, i.dataset_id, i.image_index
                LIMIT ? OFFSET ?""", [q, q, *params, hits_pagination.per_page, hits_pagination.offset]).fetchall()
        hits = [SearchHit(*row[:8], bool(row[8])) for row in rows]
    shown_runs = all_runs[runs_pagination.offset:runs_pagination.offset + runs_pagination.per_page]
    return IndexPage(shown_runs, runs_pagination, all_datasets, q, hits, hits_pagination)


# ---------------------------------------------------------------------------------------
# SQL page
# ---------------------------------------------------------------------------------------
@dataclass
class ExampleItem:
    name: str
    title: str
    sql: str


@dataclass
class SqlPage(_Context):
    """Read-only SQL (template sql.html): the statement, its result (columns, rows as display
    text, `null` marks NULL cells), or the error; and the documented example queries."""

    documented_template: ClassVar[str] = "sql.html"

    sql: str | None
    columns: list[str]
    rows: list[list[Any]]
    truncated: bool
    error: str | None
    elapsed_ms: float | None
    max_rows: int
    time_limit_s: float
    examples: list[ExampleItem]
    refused: bool = False  # a well-formed statement that is not read-only (the service answers 403)
    title: str = "SQL"


def _cell(value) -> Any:
    if value is None:
        return None
    if isinstance(value, float):
        return f"{value:.6g}" if math.isfinite(value) else str(value)
    if isinstance(value, (bytes, bytearray, memoryview)):
        return f"<{len(bytes(value))} bytes>"
    if isinstance(value, (datetime, date)):
        return value.isoformat(sep=" ") if isinstance(value, datetime) else value.isoformat()
    if isinstance(value, (list, dict, tuple)):
        import json

        return json.dumps(to_jsonable(value), separators=(", ", ": "))
    return str(value)


def build_sql_page(db_path, sql: str | None = None, *, max_rows: int = 1000, query_timeout: float = 5.0,
                   timeout: float = database.DEFAULT_TIMEOUT) -> SqlPage:
    """Run `sql` (one read-only statement; none: just the form) with at most `max_rows` rows
    and `query_timeout` seconds. A refused or failing statement gives the page with `error`
    set (the message of auditor.store.query), never an exception."""
    examples = [ExampleItem(e.name, e.title, e.sql) for e in EXAMPLE_QUERIES]
    sql = sql if sql and sql.strip() else None
    columns, rows, truncated, error, elapsed, refused = [], [], False, None, None, False
    if sql is not None:
        refused = _is_write(sql)
        started = time.perf_counter()
        try:
            result = query.run_query(db_path, sql, max_rows=max_rows, timeout=timeout, query_timeout=query_timeout)
            columns = list(result.columns)
            rows = [[_cell(v) for v in row] for row in result.rows]
            truncated = bool(result.truncated)
        except NotFoundError:
            raise
        except StoreError as exc:
            error = str(exc)
        elapsed = round((time.perf_counter() - started) * 1000, 1)
    return SqlPage(sql, columns, rows, truncated, error, elapsed, max_rows, query_timeout, examples, refused)


def _is_write(sql: str) -> bool:
    """One well-formed statement of a kind auditor.store.query refuses (not a syntax error)."""
    import duckdb

    try:
        statements = duckdb.extract_statements(sql)
    except duckdb.Error:
        return False
    return len(statements) == 1 and statements[0].type not in query.ALLOWED


# ---------------------------------------------------------------------------------------
# Fidelity studies (auditor.workflows.fidelity): denoisers against a network
# ---------------------------------------------------------------------------------------
@dataclass
class FidelityListPage(_Context):
    """The stored fidelity studies (template fidelity_list.html), newest first, paginated;
    each as auditor.workflows.fidelity.list_studies gives it."""

    documented_template: ClassVar[str] = "fidelity_list.html"

    studies: list[dict]
    pagination: Pagination
    title: str = "Fidelity studies"


def build_fidelity_list_page(db_path, *, page: int = 1, per_page: int = 20,
                             timeout: float = database.DEFAULT_TIMEOUT) -> FidelityListPage:
    from auditor.workflows.fidelity import list_studies

    studies = list_studies(db_path, timeout=timeout)
    pagination = Pagination(int(page), int(per_page), len(studies))
    return FidelityListPage(studies[pagination.offset:pagination.offset + pagination.per_page], pagination)


@dataclass
class MseRow:
    """One noise level of a process: every denoiser's MSE against the network (and its
    standard error), the closest denoiser, and whether t lies in the paper's range for its finding."""

    level: int  # reverse process: the sampling step
    t: float
    mse: list[float]
    stderr: list[float]
    closest: str
    in_range: bool


@dataclass
class MseTable:
    """A process's MSE table: rows are noise levels, columns denoisers (Figs. 4, 7)."""

    process: str
    names: list[str]
    rows: list[MseRow]
    states: int | None  # noisy states averaged per level
    range_means: dict[str, float | None]  # mean MSE per denoiser over the levels in the finding's range


@dataclass
class FidelityPage(_Context):
    """One fidelity study (template fidelity.html): the network and data it ran on, the MSE
    table per process with the closest denoiser marked, the gradient-concentration table,
    the samples' similarity to the network's (with the descriptor's name), the tuned
    schedule, the findings, and `study` (auditor.workflows.fidelity.load_study: every stored number)."""

    documented_template: ClassVar[str] = "fidelity.html"

    study_id: int
    name: str
    created_at: datetime | None
    source: str | None
    network: dict  # NetworkDenoiser.describe(): name, image shape, loader record (path, sha256, config)
    training_set: dict  # TrainingSet.describe(): name, source, fingerprint, count, shape, xflip
    test_set: dict
    seed: int | None
    tables: list[MseTable]
    finding_range: tuple[float, float]
    similarity: list[dict]  # denoiser, similarity, std (over the samples)
    descriptor: str | None
    schedule: list[dict] | None
    findings: list[str]
    study: dict = field(repr=False)

    @property
    def title(self) -> str:
        return f"Fidelity study {self.study_id}: {self.name}"

    @property
    def record(self) -> dict:
        return self.study["record"]

    @property
    def concentration(self) -> dict:
        return self.study["concentration"]

    @property
    def network_sha256(self) -> str | None:
        return self.study["network_sha256"]

    @property
    def command_line(self) -> str | None:
        command = self.record.get("command")
        return shlex.join(str(a) for a in command) if command else None


def _mse_table(curve: dict, finding_range: tuple[float, float]) -> MseTable:
    names, mse, stderr = curve["names"], curve["mse"], curve["stderr"]
    rows = []
    for k, t in enumerate(curve["times"]):
        column = [mse[d][k] for d in range(len(names))]
        rows.append(MseRow(k, t, column, [stderr[d][k] for d in range(len(names))],
                           names[int(np.argmin(column))], finding_range[0] <= t <= finding_range[1]))
    inside = [row for row in rows if row.in_range]
    means = {name: float(np.mean([row.mse[d] for row in inside])) if inside else None for d, name in enumerate(names)}
    return MseTable(curve["process"], names, rows, curve.get("states"), means)


def build_fidelity_page(db_path, study_id: int, *, timeout: float = database.DEFAULT_TIMEOUT) -> FidelityPage:
    """Study `study_id` from the store. NotFoundError for an unknown id."""
    from auditor.workflows.fidelity import FINDING_RANGE, load_study

    study = load_study(db_path, _int(study_id, "fidelity study id"), timeout=timeout)
    record = study["record"]
    matrix = study["similarity"] or {}
    similarity = []
    for name, value in (study["similarity_to_network"] or {}).items():
        names, std = matrix.get("names") or [], matrix.get("std") or []
        spread = std[0][names.index(name)] if name in names and std else None
        similarity.append({"denoiser": name, "similarity": value, "std": spread})
    return FidelityPage(study["id"], study["name"], study["created_at"], study["source"], record.get("network") or {},
                        record.get("training_set") or {}, record.get("test_set") or {}, study["seed"],
                        [_mse_table(curve, FINDING_RANGE) for curve in study["curves"].values()], FINDING_RANGE,
                        similarity, study["descriptor"], study["tuned_schedule"], study["findings"], study)
