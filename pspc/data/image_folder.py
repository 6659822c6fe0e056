"""Folders of PNG / JPEG / BMP / WebP images, and the decoding EDM zips share with them.

`decode_images` turns image files into uint8 [N, C, H, W] under a size policy
(RESIZE_POLICIES: error, resize, center-crop, pad) and a channel policy; images already at
the target size keep their exact pixels. Metadata comes from an optional CSV or JSON file.
"""

from __future__ import annotations

import csv
import io
import json
import re
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
from PIL import Image

from pspc.data.files import (
    PathLike, check_limit, file_error, image_tensor, make_training_set, require_file, wrap_errors
)
from pspc.data.training_set import TrainingSet, TrainingSetError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp")
RESIZE_POLICIES = ("error", "resize", "center-crop", "pad")


# ---------------------------------------------------------------------------------------
# Decoding under size and channel policies (image folders and EDM zips)
# ---------------------------------------------------------------------------------------
_HIGH_DEPTH_PREFIXES = ("I", "F")  # 16/32-bit integer and float modes
_ALPHA_MODES = {"RGBA", "RGBa", "LA", "La", "PA"}
_GRAY_MODES = {"1", "L", "LA", "La"}


def _normalize_size(size: int | Sequence[int] | None) -> tuple[int, int] | None:
    if size is None:
        return None
    if isinstance(size, (int, np.integer)) and not isinstance(size, bool):
        size = (int(size), int(size))
    try:
        h, w = (int(s) for s in size)
    except (TypeError, ValueError):
        raise TrainingSetError(f"size must be an int or (height, width), got {size!r}") from None
    if h < 1 or w < 1:
        raise TrainingSetError(f"size must be positive, got {size!r}")
    return h, w


def _flatten_alpha(image: Image.Image) -> Image.Image:
    """Composite transparent images onto black (what they show on the model's -1 background)."""
    has_alpha = image.mode in _ALPHA_MODES or (image.mode == "P" and "transparency" in image.info)
    if not has_alpha:
        return image
    gray = image.mode in _GRAY_MODES
    rgba = image.convert("RGBA")
    flat = Image.alpha_composite(Image.new("RGBA", rgba.size, (0, 0, 0, 255)), rgba).convert("RGB")
    return flat.convert("L") if gray else flat


def _to_l_or_rgb(image: Image.Image, channels: int | None, where: str) -> Image.Image:
    """8-bit "L" or "RGB": alpha composited onto black, palette/CMYK/... converted to RGB."""
    if image.mode.startswith(_HIGH_DEPTH_PREFIXES):
        raise file_error(where, f"unsupported image mode {image.mode!r} (16-bit or float); convert to 8-bit L or RGB")
    image = _flatten_alpha(image)
    native = "L" if image.mode in _GRAY_MODES else "RGB"
    target = {None: native, 1: "L", 3: "RGB"}[channels]
    return image.convert(target)  # always a copy: the opened image is closed after this


def _fit(image: Image.Image, size: tuple[int, int], policy: str) -> Image.Image:
    """Apply a resize policy; images already at `size` are left untouched (exact pixels)."""
    h, w = size
    if image.size == (w, h):
        return image
    lanczos = Image.Resampling.LANCZOS
    if policy == "resize":
        return image.resize((w, h), lanczos)
    iw, ih = image.size
    if policy == "center-crop":
        scale = max(h / ih, w / iw)
        nw, nh = max(w, round(iw * scale)), max(h, round(ih * scale))
        left, top = (nw - w) // 2, (nh - h) // 2
        return image.resize((nw, nh), lanczos).crop((left, top, left + w, top + h))
    # pad: fit inside, centre on black
    scale = min(h / ih, w / iw)
    nw, nh = min(w, max(1, round(iw * scale))), min(h, max(1, round(ih * scale)))
    canvas = Image.new(image.mode, (w, h), 0)
    canvas.paste(image.resize((nw, nh), lanczos), ((w - nw) // 2, (h - nh) // 2))
    return canvas


def decode_images(
    sources: Sequence[tuple[str, str, Callable[[], io.BufferedIOBase]]],
    *,
    size: tuple[int, int] | None,
    resize: str,
    channels: int | None,
) -> np.ndarray:
    """Decode (id, where, open) sources into uint8 [N, C, H, W] under a size/channel policy.

    resize="error": every image must have the size of the first (or `size` if given).
    channels=None: 1 if every image is grayscale, else 3 (grayscale replicated to RGB).
    """
    arrays: list[np.ndarray] = []
    first: tuple[str, tuple[int, int]] | None = None
    for image_id, where, open_source in sources:
        with wrap_errors(where, "unreadable, corrupt or truncated image"), open_source() as f, Image.open(f) as image:
            image.load()
            image = _to_l_or_rgb(image, channels, where)
        hw = (image.height, image.width)
        if resize == "error":
            if size is not None and hw != size:
                raise file_error(where, f"image is {hw[0]}x{hw[1]}, expected {size[0]}x{size[1]} (HxW); "
                             "pass resize='resize', 'center-crop' or 'pad' to convert")
            if first is not None and hw != first[1]:
                raise file_error(
                    where,
                    f"mixed image sizes: {image_id} is {hw[0]}x{hw[1]} but {first[0]} is "
                    f"{first[1][0]}x{first[1][1]} (HxW); pass resize='resize', 'center-crop' or 'pad' with a size "
                    "(command line: --resize POLICY --size HxW)",
                )
        else:
            image = _fit(image, size, resize)
        if first is None:
            first = (image_id, (image.height, image.width))
        arrays.append(np.asarray(image, dtype=np.uint8))
    if not arrays:
        raise TrainingSetError("no images to decode (empty set)")
    if any(a.ndim == 3 for a in arrays):  # mixed: replicate grayscale into RGB (as PIL L -> RGB does)
        arrays = [a if a.ndim == 3 else np.repeat(a[:, :, None], 3, axis=2) for a in arrays]
        return np.stack(arrays).transpose(0, 3, 1, 2)
    return np.stack(arrays)[:, None]


def _check_policy(resize: str, size, channels) -> tuple[int, int] | None:
    if resize not in RESIZE_POLICIES:
        raise TrainingSetError(f"unknown resize policy {resize!r}; use one of {', '.join(RESIZE_POLICIES)}")
    size = _normalize_size(size)
    if resize != "error" and size is None:
        raise TrainingSetError(f"resize={resize!r} needs a target size (int or (height, width); "
                               "command line: --size HxW)")
    if channels not in (None, 1, 3):
        raise TrainingSetError(f"channels must be None, 1 or 3, got {channels!r}")
    return size


# ---------------------------------------------------------------------------------------
# Image folders
# ---------------------------------------------------------------------------------------
def is_image_name(parts: Sequence[str]) -> bool:
    """An image suffix, and no hidden (".x") or macOS resource-fork ("__MACOSX") component."""
    return Path(parts[-1]).suffix.lower() in IMAGE_SUFFIXES and not any(
        p.startswith(".") or p == "__MACOSX" for p in parts
    )


def _list_images(folder: Path) -> list[str]:
    """Relative posix paths of image files under `folder`, recursively, sorted."""
    found = []
    for path in folder.rglob("*"):
        rel = path.relative_to(folder)
        if is_image_name(rel.parts) and path.is_file():
            found.append(rel.as_posix())
    return sorted(found)


def _metadata_key(value: object) -> str:
    key = str(value).strip().replace("\\", "/")
    return key[2:] if key.startswith("./") else key


def _csv_value(column: str, value: str) -> object:
    """CSV cells are text; an integer "label" becomes an int like the other loaders' labels."""
    value = value.strip()
    return int(value) if column == "label" and re.fullmatch(r"[+-]?\d+", value) else value


def _read_metadata_file(path: Path) -> dict[str, dict]:
    """file -> fields from a CSV (header with a `file` or `id` column) or a JSON file."""
    rows: dict[str, dict] = {}

    def add(key: object, fields: object, where: str) -> None:
        if not isinstance(fields, dict):
            raise file_error(path, f"{where}: metadata fields must be an object, got {type(fields).__name__}")
        key = _metadata_key(key)
        if not key:
            raise file_error(path, f"{where}: empty file name")
        if key in rows:
            raise file_error(path, f"{where}: duplicate metadata for {key!r}")
        rows[key] = fields

    suffix = path.suffix.lower()
    if suffix == ".csv":
        with wrap_errors(path, "unreadable metadata CSV"), open(path, newline="", encoding="utf-8-sig") as f:
            reader = csv.DictReader(f)
            header = reader.fieldnames or []
            key_column = next((c for c in ("file", "id") if c in header), None)
            if key_column is None:
                raise file_error(path, f"metadata CSV needs a 'file' or 'id' column; header is {header}")
            for line, row in enumerate(reader, start=2):
                if None in row:
                    raise file_error(path, f"line {line}: more cells than header columns")
                fields = {k: _csv_value(k, v) for k, v in row.items() if k != key_column and v is not None and v.strip()}
                add(row[key_column], fields, f"line {line}")
    elif suffix == ".json":
        with wrap_errors(path, "unreadable metadata JSON"), open(path, encoding="utf-8") as f:
            doc = json.load(f)
        if isinstance(doc, list):
            for i, entry in enumerate(doc):
                if not isinstance(entry, dict) or not ({"file", "id"} & entry.keys()):
                    raise file_error(path, f"entry {i}: expected an object with a 'file' key")
                key_field = "file" if "file" in entry else "id"
                add(entry[key_field], {k: v for k, v in entry.items() if k != key_field}, f"entry {i}")
        elif isinstance(doc, dict):
            for key, fields in doc.items():
                add(key, fields, f"entry {key!r}")
        else:
            raise file_error(path, "metadata JSON must be a list of objects or an object mapping file -> fields")
    else:
        raise file_error(path, "metadata file must be .csv or .json")
    return rows


def load_image_folder(
    folder: PathLike,
    *,
    size: int | tuple[int, int] | None = None,
    resize: str = "error",
    channels: int | None = None,
    metadata: PathLike | None = None,
    limit: int | None = None,
) -> TrainingSet:
    """A folder of PNG / JPEG / BMP / WebP images, searched recursively (hidden paths skipped).

    ids are the relative posix paths, in sorted order. Size policy (`resize`): "error"
    (default: all images must share one size, or equal `size`), "resize" (Lanczos to `size`,
    aspect not kept), "center-crop" (scale the image to cover `size`, crop the centre) or
    "pad" (scale to fit inside `size`, centre on black); `size` is an int or (H, W). Images
    already at the target size are never resampled. Channels: None infers 1 if all images
    are grayscale, else 3; 1 or 3 forces conversion. Transparency is composited onto black;
    palette / CMYK images become RGB; 16-bit and float images are rejected.

    `metadata` (optional) is a CSV with a `file` (or `id`) column, or a JSON list of objects
    with "file" or an object mapping file -> fields. Fields (METADATA_FIELDS label /
    source_uri / owner / license, plus any extra columns, which are kept) override the
    default source_uri (the image's file URI); an entry for a file not in the folder is an
    error. An integer "label" cell in a CSV becomes an int; other cells stay strings.
    """
    limit = check_limit(limit)
    size = _check_policy(resize, size, channels)
    folder = Path(folder)
    if not folder.is_dir():
        raise file_error(folder, "image folder not found (not a directory)")
    files = _list_images(folder)
    if not files:
        raise file_error(folder, f"no images ({', '.join(IMAGE_SUFFIXES)}) in this folder (empty set)")
    extra = {}
    if metadata is not None:
        metadata_path = require_file(metadata, "metadata file")
        extra = _read_metadata_file(metadata_path)
        unknown = sorted(set(extra) - set(files))
        if unknown:
            raise file_error(metadata_path, f"metadata for {len(unknown)} file(s) not in {folder}: {unknown[:5]}")
    files = files[:limit]
    sources = [(rel, str(folder / rel), lambda p=folder / rel: open(p, "rb")) for rel in files]
    pixels = decode_images(sources, size=size, resize=resize, channels=channels)
    root = folder.resolve()
    rows = [{"source_uri": (root / rel).as_uri(), **extra.get(rel, {})} for rel in files]
    return make_training_set(image_tensor(pixels), files, rows, root.name, folder)
