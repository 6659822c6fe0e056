"""Attribution maps as images: numpy RGB arrays [H, W, 3] uint8 and PNG bytes.

- `dominant_source_map`: each pixel coloured by the training image with the largest weight
  in it (its mirrored copy counted with it), drawn from a fixed qualitative palette for the
  legend images (the step's top sources) and grey for any other image.
- `concentration_map`: how concentrated each pixel's attribution is: the top-1 share
  (largest image weight / the pixel's captured mass) or the normalised entropy of the
  pixel's weights over training images, through a perceptual colormap (viridis).
- `enlarge`: nearest-neighbour enlargement (no smoothing: a pixel stays a square).
- `outlined_thumbnail`: a training image enlarged with the patch boxes it gave outlined;
  boxes are in the ORIGINAL image's coordinates (the store keeps the mirrored box for a
  mirrored entry, see auditor.store.recorder), mirrored ones drawn dashed.

Inputs follow `auditor.store.attribution.pixel_attribution`: {"image_index" [E], "flip" [E],
"weights" [E, H, W]} as torch tensors or numpy arrays. The helpers at the end
(`attribution_map`, `attribution_map_png`, `thumbnail_png`) are what the service's PNG
endpoints call, on data it read from the store (a SampleProvenance, training pixels).
"""

from __future__ import annotations

import base64
import io
import math
from dataclasses import dataclass
from typing import Iterable, Sequence

import numpy as np

from auditor.errors import UserError
from auditor.store.read_models.sample import SampleProvenance, per_image_weights

__all__ = ["CONCENTRATION_KINDS", "MAP_KINDS", "OTHER_COLOUR", "OUTLINE_COLOUR", "PALETTE", "attribution_map",
           "attribution_map_png", "Box", "colormap", "colormap_table", "concentration_map", "concentration_values",
           "data_uri", "dominant_source_map", "DominantMap", "enlarge", "hex_to_rgb", "image_rgb", "LegendEntry",
           "map_legend_images", "outlined_thumbnail", "per_image_weights", "png_bytes", "thumbnail_png"]

# Tableau 10 without its grey, plus a near-black: ten colours told apart at a glance.
PALETTE = ("#4e79a7", "#f28e2b", "#e15759", "#76b7b2", "#59a14f", "#edc948", "#b07aa1", "#ff9da7", "#9c755f",
           "#2b2b2b")
OTHER_COLOUR = "#c8c8c8"  # any image outside the legend (and pixels with no kept weight)
OUTLINE_COLOUR = "#e15759"  # patch boxes of an image that has no legend colour
MAP_KINDS = ("dominant", "concentration")
CONCENTRATION_KINDS = ("top1", "entropy")
MAX_SCALE = 64


def hex_to_rgb(colour: str) -> tuple[int, int, int]:
    """'#rrggbb' -> (r, g, b)."""
    value = colour.lstrip("#")
    if len(value) != 6:
        raise ValueError(f"expected a colour #rrggbb, got {colour!r}")
    return int(value[0:2], 16), int(value[2:4], 16), int(value[4:6], 16)


def _numpy(value) -> np.ndarray:
    if hasattr(value, "detach"):  # torch tensor
        value = value.detach().cpu().numpy()
    return np.asarray(value)


# ---------------------------------------------------------------------------------------
# Images
# ---------------------------------------------------------------------------------------
def image_rgb(image) -> np.ndarray:
    """An image as RGB uint8 [H, W, 3]: float [C, H, W] in [-1, 1] (the store's format;
    rounded and clipped as pspc.data.training_set.to_uint8), or uint8 [C, H, W] (training
    pixels). C = 1 is replicated to grey; C = 3 is taken as RGB."""
    array = _numpy(image)
    if array.ndim != 3 or array.shape[0] not in (1, 3):
        raise ValueError(f"expected an image [C, H, W] with C = 1 or 3, got shape {array.shape}")
    if array.dtype != np.uint8:
        array = np.clip(np.round((array.astype(np.float32) + 1.0) * 127.5), 0, 255).astype(np.uint8)
    array = np.transpose(array, (1, 2, 0))
    if array.shape[2] == 1:
        array = np.repeat(array, 3, axis=2)
    return np.ascontiguousarray(array)


def enlarge(rgb: np.ndarray, scale: int) -> np.ndarray:
    """Nearest-neighbour enlargement by an integer factor: pixel (y, x) becomes the block
    [y*scale, (y+1)*scale) x [x*scale, (x+1)*scale). No smoothing."""
    scale = int(scale)
    if not 1 <= scale <= MAX_SCALE:
        raise UserError(f"scale must be an integer in 1..{MAX_SCALE}, got {scale}")
    rgb = np.asarray(rgb)
    return np.repeat(np.repeat(rgb, scale, axis=0), scale, axis=1)


def png_bytes(rgb: np.ndarray) -> bytes:
    """PNG bytes of an RGB uint8 [H, W, 3] (or grey [H, W]) array (lossless)."""
    from PIL import Image

    array = np.ascontiguousarray(np.asarray(rgb, dtype=np.uint8))
    if array.ndim not in (2, 3) or (array.ndim == 3 and array.shape[2] != 3):
        raise ValueError(f"expected RGB [H, W, 3] or grey [H, W] uint8, got shape {array.shape}")
    if array.ndim == 3 and (array[..., 0] == array[..., 1]).all() and (array[..., 0] == array[..., 2]).all():
        array = np.ascontiguousarray(array[..., 0])  # grey: a third of the bytes, same pixels
    buffer = io.BytesIO()
    Image.fromarray(array, "RGB" if array.ndim == 3 else "L").save(buffer, format="PNG", compress_level=6)
    return buffer.getvalue()


def data_uri(png: bytes) -> str:
    """A PNG as a data: URI (for pages that must not make requests, e.g. the exported report)."""
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def colormap(values: np.ndarray, name: str = "viridis", vmin: float = 0.0, vmax: float = 1.0) -> np.ndarray:
    """Values [H, W] through a matplotlib colormap (256-entry table) -> RGB uint8 [H, W, 3].
    Values are clipped to [vmin, vmax]; NaN shows as the 'other' grey."""
    values = np.asarray(values, dtype=np.float64)
    table = colormap_table(name)
    span = vmax - vmin if vmax > vmin else 1.0
    scaled = np.clip((np.nan_to_num(values, nan=vmin) - vmin) / span, 0.0, 1.0)
    out = table[np.round(scaled * 255).astype(np.int64)]
    out[np.isnan(values)] = hex_to_rgb(OTHER_COLOUR)
    return out


_TABLES: dict[str, np.ndarray] = {}


def colormap_table(name: str) -> np.ndarray:
    """A matplotlib colormap as a 256-entry RGB uint8 table [256, 3] (kept per process)."""
    if name not in _TABLES:
        import matplotlib

        try:
            cmap = matplotlib.colormaps[name]
        except KeyError:
            raise ValueError(f"unknown colormap {name!r}") from None
        _TABLES[name] = np.round(cmap(np.linspace(0.0, 1.0, 256))[:, :3] * 255).astype(np.uint8)
    return _TABLES[name]


# ---------------------------------------------------------------------------------------
# Attribution maps (per_image_weights: auditor.store.read_models.sample, where the sample's
# per-pixel sources are computed from it)
# ---------------------------------------------------------------------------------------
@dataclass(frozen=True, kw_only=True)
class LegendEntry:
    """One colour of the dominant-source map: the training image it stands for (None for
    'other'), its share of the image at that step, and the fraction of pixels it dominates."""

    colour: str
    image_index: int | None
    share: float | None
    pixels: float
    label: str = ""  # filled by the caller (image id); 'other' for the grey entry


@dataclass(kw_only=True)
class DominantMap:
    """rgb [H, W, 3] uint8; dominant [H, W]: image index with the largest weight (-1: none
    kept); legend: the palette entries in order, then 'other'."""

    rgb: np.ndarray
    dominant: np.ndarray
    legend: list[LegendEntry]


def dominant_source_map(attribution: dict, legend_images: Sequence[int], shares: dict | None = None,
                        palette: Sequence[str] = PALETTE, per_image: tuple | None = None) -> DominantMap:
    """Colour each pixel by its dominant training image (largest weight, the mirrored copy
    counted with the image; ties go to the smaller image index). Images in `legend_images`
    get palette colours in that order (at most len(palette)); any other dominant image, and
    a pixel with no kept weight, is grey. `shares`: image index -> share at that step, put
    in the legend."""
    legend_images = [int(i) for i in legend_images][:len(palette)]
    if len(set(legend_images)) != len(legend_images):
        raise ValueError("legend images must be distinct")
    images, weights, _ = per_image if per_image is not None else per_image_weights(attribution)
    height, width = weights.shape[1:]
    if len(images):
        best = weights.argmax(axis=0)  # first maximum: images are ascending, so the smaller index wins ties
        dominant = np.where(weights.max(axis=0) > 0, images[best], -1)
    else:
        dominant = np.full((height, width), -1, np.int64)
    rgb = np.empty((height, width, 3), np.uint8)
    rgb[...] = hex_to_rgb(OTHER_COLOUR)
    legend = []
    covered = np.zeros((height, width), bool)
    for colour, image_index in zip(palette, legend_images):
        where = dominant == image_index
        rgb[where] = hex_to_rgb(colour)
        covered |= where
        legend.append(LegendEntry(colour=colour, image_index=image_index,
                                  share=None if shares is None else shares.get(image_index),
                                  pixels=float(where.mean()) if where.size else 0.0))
    legend.append(LegendEntry(colour=OTHER_COLOUR, image_index=None, share=None,
                              pixels=float((~covered).mean()) if covered.size else 0.0, label="other"))
    return DominantMap(rgb=rgb, dominant=dominant.astype(np.int64), legend=legend)


def concentration_values(attribution: dict, kind: str = "top1", num_images: int | None = None,
                         per_image: tuple | None = None) -> np.ndarray:
    """Per-pixel concentration [H, W] in [0, 1] (NaN where no weight was kept).

    top1: the largest image weight / the pixel's captured mass (1 = one image made it).
    entropy: entropy of the pixel's weights over training images (normalised to sum 1),
    divided by log(num_images) (the data set's image count; 0 = one image, 1 = uniform over
    all). Mirrored copies count with their image in both."""
    if kind not in CONCENTRATION_KINDS:
        raise UserError(f"unknown concentration kind {kind!r}; choose from {', '.join(CONCENTRATION_KINDS)}")
    images, weights, _ = per_image if per_image is not None else per_image_weights(attribution)
    if not len(images):
        return np.full(_numpy(attribution["weights"]).shape[1:], np.nan)
    total = weights.sum(axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        p = weights / total
        if kind == "top1":
            values = p.max(axis=0)
        else:
            if num_images is None or num_images < 2:
                raise UserError("entropy needs num_images >= 2 (the data set's image count)")
            plogp = np.where(p > 0, p * np.log(np.where(p > 0, p, 1.0)), 0.0)
            values = np.clip(-plogp.sum(axis=0) / math.log(num_images), 0.0, 1.0)
    return np.where(total > 0, values, np.nan)


def concentration_map(attribution: dict, kind: str = "top1", num_images: int | None = None,
                      cmap: str = "viridis", per_image: tuple | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(values [H, W], rgb [H, W, 3]): `concentration_values` through a perceptual colormap
    on [0, 1] (viridis: dark = spread over many images, yellow = concentrated for top1;
    reversed for entropy so yellow always means concentrated)."""
    values = concentration_values(attribution, kind, num_images, per_image)
    shown = values if kind == "top1" else 1.0 - values
    return values, colormap(shown, cmap)


# ---------------------------------------------------------------------------------------
# Thumbnails with patch locations
# ---------------------------------------------------------------------------------------
@dataclass(frozen=True, kw_only=True)
class Box:
    """A patch's bounding box in the ORIGINAL training image; flip: it was used mirrored."""

    top: int
    left: int
    height: int
    width: int
    flip: bool = False

    @classmethod
    def of(cls, box: "Box | tuple") -> "Box":
        """A Box, or one from a tuple (top, left, height, width[, flip])."""
        return box if isinstance(box, Box) else cls(**dict(zip(("top", "left", "height", "width", "flip"), box)))


def _border(height: int, width: int, thickness: int) -> np.ndarray:
    mask = np.zeros((height, width), bool)
    t = min(thickness, height, width)
    mask[:t, :] = mask[-t:, :] = True
    mask[:, :t] = mask[:, -t:] = True
    return mask


def _dashes(height: int, width: int, dash: int) -> np.ndarray:
    """On/off pattern along the rectangle's edges (distance along the nearer edge)."""
    y, x = np.mgrid[:height, :width]
    along = np.where((y < height // 2) == (x < width // 2), x + y, x + (height - 1 - y))
    return (along // dash) % 2 == 0


def outlined_thumbnail(pixels, boxes: Iterable[Box | tuple], scale: int = 4, colour: str = OUTLINE_COLOUR,
                       thickness: int = 1, dash: int = 3) -> np.ndarray:
    """A training image (uint8 or float [C, H, W]) enlarged `scale` times, nearest, with each
    box's outline drawn just inside the enlarged box: rows [top*scale, (top+height)*scale),
    columns [left*scale, (left+width)*scale), `thickness` enlarged pixels wide. Mirrored
    boxes (flip=True) are dashed. Boxes are in the original image's coordinates."""
    rgb = enlarge(image_rgb(pixels), scale)
    height, width = rgb.shape[:2]
    colour_rgb = np.array(hex_to_rgb(colour), np.uint8)
    for box in boxes:
        box = Box.of(box)
        if box.height < 1 or box.width < 1 or box.top < 0 or box.left < 0 or \
                (box.top + box.height) * scale > height or (box.left + box.width) * scale > width:
            raise ValueError(f"box {box} is outside the {height // scale}x{width // scale} image")
        y0, x0 = box.top * scale, box.left * scale
        h, w = box.height * scale, box.width * scale
        mask = _border(h, w, thickness)
        if box.flip:
            mask &= _dashes(h, w, dash)
        rgb[y0:y0 + h, x0:x0 + w][mask] = colour_rgb
    return rgb


# ---------------------------------------------------------------------------------------
# The service's PNG endpoints (on data read from the store)
# ---------------------------------------------------------------------------------------
def map_legend_images(data: SampleProvenance, step: int | None = None, top: int = len(PALETTE)) -> list[int]:
    """The images a dominant map's legend names: the step's `top` sources (pass them as the
    sample's `images` to have their ids in the legend)."""
    return [int(i) for i in data.step_shares(step).image_index[:int(top)]]


def attribution_map(data: SampleProvenance, step: int | None = None, *, kind: str = "dominant",
                    top: int = len(PALETTE),
                    concentration: str = "top1") -> tuple[np.ndarray, list[LegendEntry] | None]:
    """The attribution map of D(z_t) at `step` (None: the last recorded step, whose D is the
    final image for a complete run) of the sample `data` holds, at native resolution:
    (rgb [H, W, 3], legend or None).

    kind 'dominant': legend = the step's `top` sources (largest share first) then 'other',
    each labelled with the image id (when `data` fetched it, see map_legend_images, else its
    index); kind 'concentration': per-pixel `concentration` ('top1' or 'entropy'), no legend.
    NotFoundError for a step not recorded; ValueError for a bad kind or top."""
    if kind not in MAP_KINDS:
        raise UserError(f"unknown map kind {kind!r}; choose from {', '.join(MAP_KINDS)}")
    if not 1 <= int(top) <= len(PALETTE):
        raise UserError(f"top must be in 1..{len(PALETTE)}, got {top}")
    step = data.resolve_step(step)
    attribution = data.pixel_attribution(step)
    if kind == "concentration":
        _, rgb = concentration_map(attribution, concentration, data.dataset["count"])
        return rgb, None
    shares = data.step_shares(step)
    legend_images = map_legend_images(data, step, top)
    dominant = dominant_source_map(attribution, legend_images, dict(zip(shares.image_index.tolist(),
                                                                         shares.share.tolist())))
    ids = {i: data.images[i].image_id for i in legend_images if i in data.images}
    legend = [LegendEntry(colour=e.colour, image_index=e.image_index, share=e.share, pixels=e.pixels,
                          label="other" if e.image_index is None else ids.get(e.image_index, str(e.image_index)))
              for e in dominant.legend]
    return dominant.rgb, legend


def attribution_map_png(data: SampleProvenance, step: int | None = None, *, kind: str = "dominant", scale: int = 8,
                        top: int = len(PALETTE), concentration: str = "top1") -> bytes:
    """`attribution_map` enlarged `scale` times (nearest) as PNG bytes."""
    rgb, _ = attribution_map(data, step, kind=kind, top=top, concentration=concentration)
    return png_bytes(enlarge(rgb, scale))


def thumbnail_png(pixels, *, scale: int = 4, boxes: Iterable[Box | tuple] = ()) -> bytes:
    """A training image's pixels (uint8 [C, H, W], e.g. auditor.store.datasets.training_pixels)
    enlarged, with `boxes` outlined, as PNG."""
    return png_bytes(outlined_thumbnail(pixels, boxes, scale))
