"""What every page shares: Pictures, JSON, the base Context, Pagination, and the run record.

Images are `Picture`s: RGB uint8 arrays already enlarged for display (nearest neighbour,
no smoothing), PNG-encoded on demand; `to_json(images="data-uri")` inlines them as data:
URIs, `images="none"` leaves them out (for API clients that fetch the PNG endpoints).
"""

from __future__ import annotations

import math
import shlex
import threading
from collections import OrderedDict
from dataclasses import dataclass, field, fields, is_dataclass
from datetime import date, datetime
from typing import ClassVar

import numpy as np

from auditor.errors import UserError, without_folders
from auditor.store.read_models.common import ImageMeta
from auditor.store.run_kinds import describe_run, run_kind
from reports import maps

__all__ = ["IMAGE_FORMATS", "MAIN_SIZE", "MAX_PER_PAGE", "MAX_TOP", "THUMB_SIZE", "TIMELINE_SIZE", "TINY_SIZE",
           "Context", "DatasetInfo", "KindInfo", "PatchLocation", "Pagination", "Picture", "RunRecord", "check_options",
           "dataset_info", "display_scale", "kind_info", "meta_dict", "run_record", "to_jsonable", "training_thumbnail"]

IMAGE_FORMATS = ("data-uri", "none")
MAX_TOP = 100
MAX_PER_PAGE = 200

# Display sizes (CSS pixels) the pictures are enlarged to, at an integer factor.
MAIN_SIZE = 280
THUMB_SIZE = 140
TIMELINE_SIZE = 84
TINY_SIZE = 56


def display_scale(size: int, target: int) -> int:
    """The integer enlargement that shows `size` pixels about `target` px wide (1..maps.MAX_SCALE)."""
    return int(max(1, min(maps.MAX_SCALE, target // max(1, size))))


def check_options(**values) -> None:
    """Each name=(value, low, high): ValueError unless value is an integer in low..high."""
    for name, (value, low, high) in values.items():
        if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or not low <= value <= high:
            raise UserError(f"{name} must be an integer in {low}..{high}, got {value!r}")


# ---------------------------------------------------------------------------------------
# Pictures and JSON
# ---------------------------------------------------------------------------------------
@dataclass(kw_only=True)
class Picture:
    """An image of a report: rgb uint8 [H, W, 3] (native resolution, or already enlarged
    `scale` times where outlines need finer lines than a pixel), shown `display` times
    larger without smoothing (CSS image-rendering: pixelated). `alt` describes it."""

    rgb: np.ndarray = field(repr=False)
    scale: int = 1
    display: int = 1
    alt: str = ""
    _png: bytes | None = field(default=None, init=False, repr=False, compare=False)

    @classmethod
    def of(cls, image, target: int = MAIN_SIZE, alt: str = "") -> "Picture":
        """From a float [C, H, W] image in [-1, 1] or uint8 pixels [C, H, W], shown about `target` px wide."""
        rgb = maps.image_rgb(image)
        return cls(rgb=rgb, scale=1, display=display_scale(rgb.shape[1], target), alt=alt)

    @classmethod
    def of_rgb(cls, rgb: np.ndarray, target: int = MAIN_SIZE, alt: str = "") -> "Picture":
        return cls(rgb=np.ascontiguousarray(rgb, dtype=np.uint8), scale=1, display=display_scale(rgb.shape[1], target),
                   alt=alt)

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
        raise UserError(f"unknown image format {images!r}; choose from {', '.join(IMAGE_FORMATS)}")
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


class Context:
    """Base of the page contexts (dataclasses): `documented_template` names the page's
    template; `to_json()` renders every field, so `.json` gives exactly what the page shows."""

    documented_template: ClassVar[str] = ""

    def to_json(self, images: str = "data-uri") -> dict:
        return {"page": type(self).__name__, **{f.name: to_jsonable(getattr(self, f.name), images)
                                                 for f in fields(self) if f.metadata.get("json", True)}}


@dataclass(kw_only=True)
class Pagination:
    """Page `page` (1-based) of `per_page` items out of `total`."""

    page: int
    per_page: int
    total: int

    def __post_init__(self):
        if self.page < 1:
            raise UserError(f"page must be >= 1, got {self.page}")
        if not 1 <= self.per_page <= MAX_PER_PAGE:
            raise UserError(f"per_page must be in 1..{MAX_PER_PAGE}, got {self.per_page}")

    @classmethod
    def window(cls, page, per_page) -> "Pagination":
        """The page asked for, checked, before the total is known (total 0): its offset and per_page
        say which rows to read."""
        return cls(page=int(page), per_page=int(per_page), total=0)

    def of(self, total: int) -> "Pagination":
        """This page of `total` items."""
        return Pagination(page=self.page, per_page=self.per_page, total=int(total))

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

    def slice(self, items: list) -> list:
        """This page's items of the whole list."""
        return items[self.offset:self.offset + self.per_page]


# ---------------------------------------------------------------------------------------
# Shared pieces
# ---------------------------------------------------------------------------------------
@dataclass(kw_only=True)
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


def dataset_info(dataset: dict, xflip: bool | None = None) -> DatasetInfo:
    """A DatasetInfo from a datasets row (dict)."""
    return DatasetInfo(id=int(dataset["id"]), name=dataset["name"], source=dataset["source"],
                       fingerprint=dataset["fingerprint"], count=int(dataset["count"]),
                       channels=int(dataset["channels"]), height=int(dataset["height"]), width=int(dataset["width"]),
                       xflip=xflip)


@dataclass(kw_only=True)
class KindInfo:
    """What a run's kind makes it, as pages show it (auditor.store.run_kinds): name (sample,
    network-explained, audit), label, image_label (what its image is called), summary (one
    sentence), output (a generator's output) and audit; generator (the denoiser's kind, the
    network's name, None for an audited image), explainer (the PSPC denoiser whose weights are
    the attribution, None without any), method (an audit's 'inversion' or 'direct', else the
    sampler's), network ({id, name}) and audited_image ({file, sha256, format})."""

    name: str
    label: str
    image_label: str
    summary: str
    output: bool
    audit: bool
    generator: str | None
    explainer: str | None
    method: str | None
    network: dict | None = None
    audited_image: dict | None = None

    @property
    def kind(self) -> str:
        """The public kind (as the run lists' rows name it)."""
        return self.name


def kind_info(run: dict) -> KindInfo:
    """The KindInfo of a run (auditor.store.runs.read_run's dict)."""
    entry = run_kind(run.get("kind"))
    facts = describe_run(run.get("kind"), run.get("details"), run.get("denoiser"), run.get("sampler"))
    return KindInfo(name=entry.name, label=entry.label, image_label=entry.image_label, summary=entry.summary,
                    output=entry.output, audit=entry.audit, generator=facts["generator"],
                    explainer=facts["explainer"], method=facts["method"], network=facts["network"],
                    audited_image=facts["audited_image"])


@dataclass(kw_only=True)
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
    kind: str = "pspc"  # as stored (runs.kind): 'pspc', 'network-explained', 'external-audit', ...
    details: dict | None = None  # the kind's own record (comparison, audit method and input)
    kind_info: KindInfo  # what the kind makes the run (labels, generator, audited file)

    @property
    def command_line(self) -> str | None:
        return shlex.join(str(a) for a in self.command) if self.command else None

    @property
    def steps_planned(self) -> int | None:
        return self.sampler.get("num_steps") if self.sampler else None


def run_record(run: dict, dataset: dict, sample_seed: int | None) -> RunRecord:
    """The RunRecord of a run and its dataset (auditor.store.runs.read_run's dicts)."""
    denoiser = run.get("denoiser") or {}
    return RunRecord(run_id=int(run["id"]), status=run["status"], created_at=run.get("created_at"),
                     finished_at=run.get("finished_at"), error=without_folders(run.get("error")),
                     dataset=dataset_info(dataset, (denoiser.get("dataset") or {}).get("xflip")),
                     denoiser_kind=denoiser.get("kind"), denoiser=denoiser, sampler=run.get("sampler") or {},
                     run_seed=int(run["seed"]), sample_seed=sample_seed, num_samples=int(run["num_samples"]),
                     top_k=int(run["top_k"]), mass_threshold=float(run["mass_threshold"]),
                     versions=run.get("versions") or {}, command=run.get("command"), writer=run.get("writer"),
                     timings=run.get("timings"), kind=run.get("kind") or "pspc", details=run.get("details"),
                     kind_info=kind_info(run))


@dataclass(kw_only=True)
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
        return maps.Box(top=self.top, left=self.left, height=self.height, width=self.width, flip=self.flip)


def meta_dict(meta: ImageMeta | None, image_index: int) -> dict:
    """A training image's metadata as a dict (its index as id when the store does not have it)."""
    if meta is None:
        return {"image_index": image_index, "image_id": str(image_index), "label": None, "label_name": None,
                "source_uri": None, "owner": None, "license": None}
    return meta.as_dict()
