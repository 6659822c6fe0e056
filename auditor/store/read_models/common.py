"""Rows shared by the read models: training image metadata and integer id checks."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from auditor.errors import NotFoundError

__all__ = ["META_COLUMNS", "ImageMeta", "float_image", "image_metadata", "integer_id"]

META_COLUMNS = ("image_id", "label", "label_name", "source_uri", "owner", "license")


@dataclass(frozen=True, kw_only=True)
class ImageMeta:
    """A training image's stored metadata (and its uint8 pixels [C, H, W] when stored)."""

    image_index: int
    image_id: str
    label: int | None = None
    label_name: str | None = None
    source_uri: str | None = None
    owner: str | None = None
    license: str | None = None
    pixels: np.ndarray | None = field(default=None, repr=False, compare=False)

    def as_dict(self) -> dict:
        return {"image_index": self.image_index, **{k: getattr(self, k) for k in META_COLUMNS}}


def image_metadata(conn, dataset_id: int, indices, shape: tuple[int, int, int],
                   pixels: bool = True) -> dict[int, ImageMeta]:
    """ImageMeta of training images `indices` of a dataset, read on an open connection."""
    indices = sorted({int(i) for i in indices})
    if not indices:
        return {}
    columns = ", ".join(META_COLUMNS) + (", pixels" if pixels else "")
    rows = conn.execute(f"SELECT image_index, {columns} FROM training_images WHERE dataset_id = ? AND image_index "
                        "IN (SELECT unnest(?::INTEGER[]))", [int(dataset_id), indices]).fetchall()
    size = int(np.prod(shape))
    out = {}
    for row in rows:
        blob = row[7] if pixels else None
        array = np.frombuffer(blob, np.uint8).reshape(shape) if blob is not None and len(blob) == size else None
        out[int(row[0])] = ImageMeta(image_index=int(row[0]), **dict(zip(META_COLUMNS, row[1:7])), pixels=array)
    return out


def float_image(blob: bytes | None, shape) -> np.ndarray | None:
    """A stored float32 image blob as an array [C, H, W] (a view of the bytes), None for NULL."""
    return None if blob is None else np.frombuffer(blob, "<f4").reshape(shape)


def integer_id(value, what: str) -> int:
    """`value` as an int; NotFoundError naming `what` when it is not one (no row has such an id)."""
    try:
        return int(value)
    except (TypeError, ValueError):
        raise NotFoundError(f"{what} must be an integer, got {value!r}") from None
