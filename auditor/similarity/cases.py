"""Labelled copy-detection cases built from a training set: the ground truth of calibration.

Every case is an 8-bit image with its family, the training entry it was made from (-1 for
a novel image) and, for copies, the mask of the pixels taken from that entry:

- exact copies: a training image as stored (``exact``) or mirrored (``exact-mirrored``);
- near copies: additive Gaussian noise of std 4, 8 and 16 levels (of 255), brightness
  (+40 levels), contrast (x0.7 about the mean), shifts of 1 and 2 pixels (zero fill),
  a slight crop (2-3 px off each side) resized back, JPEG at quality 20, Gaussian blur
  (sigma 1 px);
- partial copies: a region of a training image (rectangle, ellipse or half-plane; 25 % or
  50 % of the area) pasted at the same place into a novel image (the mask is the region);
- novel: images that are not in the training set (for Fashion-MNIST, its test set).

``split_cases`` divides cases into disjoint calibration and test halves (sources and novel
images are never shared between them), so thresholds are chosen on one and measured on
the other. Everything is seeded: the same seed gives the same cases.
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from auditor.errors import UserError

__all__ = ["COPY_FAMILIES", "FAMILIES", "NEAR_FAMILIES", "PARTIAL_FAMILIES", "Cases", "CasesError", "build_cases",
           "split_cases", "split_rows"]

EXACT_FAMILIES = ("exact", "exact-mirrored")
NEAR_FAMILIES = ("noise-4", "noise-8", "noise-16", "brightness", "contrast", "shift-1", "shift-2", "crop-resize",
                 "jpeg-20", "blur")
PARTIAL_FAMILIES = ("partial-25-rect", "partial-25-ellipse", "partial-50-rect", "partial-50-ellipse",
                    "partial-50-half")
COPY_FAMILIES = EXACT_FAMILIES + NEAR_FAMILIES
FAMILIES = COPY_FAMILIES + PARTIAL_FAMILIES + ("novel",)


class CasesError(UserError):
    """Cases cannot be built as asked (too few images, unknown family)."""


@dataclass
class Cases:
    """images uint8 [M, C, H, W]; family[i]; source[i] = training entry (N..2N-1 mirrored; -1 novel);
    mask bool [M, H, W]: the pixels taken from the source (all for copies, none for novel)."""

    images: torch.Tensor
    family: list[str]
    source: np.ndarray
    mask: np.ndarray

    def __len__(self) -> int:
        return len(self.family)

    def select(self, keep) -> "Cases":
        keep = np.asarray(keep)
        if keep.dtype == bool:
            keep = np.flatnonzero(keep)
        return Cases(self.images[torch.from_numpy(keep)], [self.family[i] for i in keep], self.source[keep],
                     self.mask[keep])

    def of(self, *families: str) -> "Cases":
        return self.select([f in families for f in self.family])

    @staticmethod
    def concat(parts: list["Cases"]) -> "Cases":
        return Cases(torch.cat([p.images for p in parts]), [f for p in parts for f in p.family],
                     np.concatenate([p.source for p in parts]), np.concatenate([p.mask for p in parts]))


# -- transformations (float images in [0, 255], [B, C, H, W]) ------------------------------

def _gaussian_kernel(sigma: float) -> torch.Tensor:
    radius = max(1, int(math.ceil(3 * sigma)))
    x = torch.arange(-radius, radius + 1, dtype=torch.float32)
    kernel = torch.exp(-x ** 2 / (2 * sigma ** 2))
    return kernel / kernel.sum()


def blur(images: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur (replicate padding), per channel."""
    kernel = _gaussian_kernel(sigma)
    c, r = images.shape[1], len(kernel) // 2
    out = F.conv2d(F.pad(images, (r, r, 0, 0), mode="replicate"), kernel.view(1, 1, 1, -1).repeat(c, 1, 1, 1), groups=c)
    return F.conv2d(F.pad(out, (0, 0, r, r), mode="replicate"), kernel.view(1, 1, -1, 1).repeat(c, 1, 1, 1), groups=c)


def shift(images: torch.Tensor, dy: int, dx: int) -> torch.Tensor:
    """Translate by (dy, dx) pixels, zero fill (Fashion-MNIST's background is black)."""
    out = torch.zeros_like(images)
    h, w = images.shape[-2:]
    out[..., max(dy, 0):h + min(dy, 0), max(dx, 0):w + min(dx, 0)] = \
        images[..., max(-dy, 0):h + min(-dy, 0), max(-dx, 0):w + min(-dx, 0)]
    return out


def _jpeg(image: torch.Tensor, quality: int) -> torch.Tensor:
    array = image.round().clamp(0, 255).to(torch.uint8).permute(1, 2, 0).numpy()
    picture = Image.fromarray(array[..., 0] if array.shape[2] == 1 else array)
    buffer = io.BytesIO()
    picture.save(buffer, format="JPEG", quality=quality)
    decoded = np.asarray(Image.open(io.BytesIO(buffer.getvalue())).convert(picture.mode), dtype=np.float32)
    return torch.from_numpy(decoded.reshape(array.shape)).permute(2, 0, 1)


def _crop_resize(image: torch.Tensor, rng: np.random.Generator) -> torch.Tensor:
    h, w = image.shape[-2:]
    top, left, bottom, right = (int(v) for v in rng.integers(1, 3, size=4))
    crop = image[None, :, top:h - bottom, left:w - right]
    return F.interpolate(crop, size=(h, w), mode="bilinear", align_corners=False, antialias=True)[0]


def near_copy(images: torch.Tensor, family: str, rng: np.random.Generator) -> torch.Tensor:
    """A near copy of each image [B, C, H, W] (float 0..255) by `family` (see NEAR_FAMILIES)."""
    if family.startswith("noise-"):
        std = float(family.split("-")[1])
        noise = torch.from_numpy(rng.standard_normal(images.shape).astype(np.float32))
        return images + std * noise
    if family == "brightness":
        return images + 40.0
    if family == "contrast":
        mean = images.mean(dim=(1, 2, 3), keepdim=True)
        return mean + 0.7 * (images - mean)
    if family.startswith("shift-"):
        step = int(family.split("-")[1])
        out = []
        for image in images:
            dy, dx = [(step, 0), (-step, 0), (0, step), (0, -step), (step, step), (-step, step)][rng.integers(6)]
            out.append(shift(image[None], dy, dx)[0])
        return torch.stack(out)
    if family == "crop-resize":
        return torch.stack([_crop_resize(image, rng) for image in images])
    if family == "jpeg-20":
        return torch.stack([_jpeg(image, 20) for image in images])
    if family == "blur":
        return blur(images, 1.0)
    raise CasesError(f"unknown near-copy family {family!r}; expected one of {', '.join(NEAR_FAMILIES)}")


def region_mask(family: str, height: int, width: int, rng: np.random.Generator) -> np.ndarray:
    """A random region of the partial family's shape covering its fraction (25 / 50 %) of the image."""
    _, percent, shape = family.split("-")
    area = int(percent) / 100 * height * width
    y, x = np.mgrid[0:height, 0:width]
    if shape == "half":
        side = rng.integers(4)
        return [y < height / 2, y >= height / 2, x < width / 2, x >= width / 2][side]
    aspect = float(rng.uniform(0.75, 1.33))
    if shape == "rect":
        rh = min(height, max(1, int(round(math.sqrt(area * aspect)))))
        rw = min(width, max(1, int(round(area / rh))))
        top, left = int(rng.integers(0, height - rh + 1)), int(rng.integers(0, width - rw + 1))
        return (y >= top) & (y < top + rh) & (x >= left) & (x < left + rw)
    if shape == "ellipse":
        a = math.sqrt(area * aspect / math.pi)  # semi-axes with pi a b = area
        b = area / (math.pi * a)
        cy = float(rng.uniform(min(a, height / 2), max(height - a, height / 2)))
        cx = float(rng.uniform(min(b, width / 2), max(width - b, width / 2)))
        return ((y + 0.5 - cy) / a) ** 2 + ((x + 0.5 - cx) / b) ** 2 <= 1
    raise CasesError(f"unknown partial-copy shape {shape!r} in {family!r}")


# -- building ------------------------------------------------------------------------------

def _entry_images(training: torch.Tensor, entries: np.ndarray) -> torch.Tensor:
    """uint8 images of training entries (entries >= N are the mirrored images)."""
    n = len(training)
    images = training[torch.from_numpy(entries % n)]
    flips = torch.from_numpy(entries >= n)[:, None, None, None]
    return torch.where(flips, images.flip(-1), images)


def build_cases(training: torch.Tensor, novel: torch.Tensor, *, per_family: int = 100, seed: int = 0,
                families=FAMILIES, novel_count: int | None = None) -> Cases:
    """`per_family` cases of every family (`novel_count` novel ones, default per_family) from
    training images [N, C, H, W] uint8 and novel images (not in the training set; each is
    used once at most, as a novel case or as a partial copy's host). Sources are distinct
    training images drawn with `seed`."""
    unknown = [f for f in families if f not in FAMILIES]
    if unknown:
        raise CasesError(f"unknown case families {unknown}; expected some of {', '.join(FAMILIES)}")
    n, (c, h, w) = len(training), tuple(training.shape[1:])
    if tuple(novel.shape[1:]) != (c, h, w):
        raise CasesError(f"novel images are {tuple(novel.shape[1:])}, the training images {(c, h, w)}")
    copies = [f for f in families if f != "novel"]
    hosts = [f for f in copies if f in PARTIAL_FAMILIES]
    novel_count = per_family if novel_count is None else int(novel_count)
    need_novel = per_family * len(hosts) + (novel_count if "novel" in families else 0)
    if n < per_family * len(copies) or len(novel) < need_novel:
        raise CasesError(f"{per_family} cases per family need {per_family * len(copies)} training and {need_novel} "
                         f"novel images; got {n} and {len(novel)}")
    rng = np.random.default_rng(seed)
    sources = rng.permutation(n)[:per_family * len(copies)].reshape(len(copies), per_family)
    novel_order = rng.permutation(len(novel))
    parts, used_novel = [], 0
    for family, picked in zip(copies, sources):
        entries = picked + n if family == "exact-mirrored" else picked
        images = _entry_images(training, entries)
        masks = np.ones((per_family, h, w), bool)
        if family in NEAR_FAMILIES:
            images = near_copy(images.float(), family, rng).round().clamp(0, 255).to(torch.uint8)
        elif family in PARTIAL_FAMILIES:
            host = novel[torch.from_numpy(novel_order[used_novel:used_novel + per_family])]
            used_novel += per_family
            masks = np.stack([region_mask(family, h, w, rng) for _ in range(per_family)])
            images = torch.where(torch.from_numpy(masks)[:, None], images, host)
        parts.append(Cases(images.contiguous(), [family] * per_family, entries.astype(np.int64), masks))
    if "novel" in families:
        picked = torch.from_numpy(novel_order[used_novel:used_novel + novel_count])
        parts.append(Cases(novel[picked].contiguous(), ["novel"] * novel_count, np.full(novel_count, -1, np.int64),
                           np.zeros((novel_count, h, w), bool)))
    return Cases.concat(parts)


def split_rows(cases: Cases, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(calibration rows, test rows): each family split in halves at random (seeded)."""
    rng = np.random.default_rng(seed + 1)
    calibration = np.zeros(len(cases), bool)
    families = np.asarray(cases.family)
    for family in dict.fromkeys(cases.family):
        rows = np.flatnonzero(families == family)
        calibration[rng.permutation(rows)[:len(rows) // 2]] = True
    return np.flatnonzero(calibration), np.flatnonzero(~calibration)


def split_cases(cases: Cases, seed: int = 0) -> tuple[Cases, Cases]:
    """(calibration, test): disjoint halves of every family (see split_rows)."""
    calibration, test = split_rows(cases, seed)
    return cases.select(calibration), cases.select(test)
