"""Exact copies by hash: the store's pixel sha256, computed from a file, and a lookup table.

The store's ``training_images.sha256`` (``TrainingSet.image_sha256``) is the sha256 of the
ASCII text ``uint8:CxHxW`` (the image's shape, e.g. ``uint8:1x28x28``) followed by the
image's raw uint8 pixels in [C, H, W] order (channel-major, rows top to bottom). It names
the pixels, not the file: a PNG and a BMP of the same picture have the same pixel hash and
different byte hashes. :func:`file_hashes` gives both for a file; :class:`ExactHashes`
finds the training entries (original or mirrored) with a given pixel hash.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import torch

from pspc.data.arrays import load_npy
from pspc.data.image_folder import IMAGE_SUFFIXES, decode_images
from pspc.data.training_set import TrainingSetError, to_uint8
from pspc.record import file_sha256

from auditor.errors import UserError

__all__ = ["ExactHashes", "HashError", "file_hashes", "pixel_sha256"]


class HashError(UserError):
    """A file or array that cannot be hashed as pixels: names it and the problem."""


def pixel_sha256(pixels) -> str:
    """sha256 of b"uint8:CxHxW" + the uint8 pixels [C, H, W] (the store's training_images.sha256)."""
    array = pixels.numpy() if isinstance(pixels, torch.Tensor) else np.asarray(pixels)
    if array.dtype != np.uint8 or array.ndim != 3:
        raise HashError(f"pixel hashes are of uint8 [C, H, W] arrays, got {array.dtype} of shape {array.shape}")
    digest = hashlib.sha256(("uint8:" + "x".join(map(str, array.shape))).encode())
    digest.update(np.ascontiguousarray(array).tobytes())
    return digest.hexdigest()


def _file_pixels(path: Path) -> tuple[np.ndarray, str]:
    """uint8 [C, H, W] pixels of an image file or .npy array, and how they were read."""
    if path.suffix.lower() == ".npy":
        try:
            array = load_npy(path)
        except Exception as exc:  # noqa: BLE001 - numpy raises ValueError, OSError, EOFError, ...
            raise HashError(f"{path}: not a readable .npy array ({exc})") from None
        array = array[None] if array.ndim == 2 else array
        if array.ndim != 3:
            raise HashError(f"{path}: expected one image [H, W] or [C, H, W], got shape {array.shape}")
        if array.dtype == np.uint8:
            return array, "uint8 array"
        if np.issubdtype(array.dtype, np.floating) and np.isfinite(array).all() and np.abs(array).max() <= 1.0:
            return to_uint8(torch.from_numpy(array.astype(np.float32))).numpy(), "floats in [-1, 1] rounded to uint8"
        raise HashError(f"{path}: a {array.dtype} array; pixel hashes need uint8 pixels or finite floats in [-1, 1]")
    if path.suffix.lower() not in IMAGE_SUFFIXES:
        raise HashError(f"{path}: unsupported file type {path.suffix or '(none)'!r}; give an image "
                        f"({', '.join(IMAGE_SUFFIXES)}) or a .npy array")
    try:
        pixels = decode_images([(path.name, str(path), lambda: open(path, "rb"))], size=None, resize="error",
                               channels=None)[0]
    except TrainingSetError as exc:
        raise HashError(str(exc)) from None
    return pixels, "decoded image (8-bit gray or RGB, alpha composited onto black)"


def file_hashes(path, channels: int | None = None) -> dict:
    """{"file_sha256": of the bytes, "pixel_sha256": as the store defines it, "shape", "read"}.

    channels=1: an RGB file whose three channels are equal is hashed as grayscale (as
    `auditor audit` reads it), so it matches a grayscale training set's hash.
    """
    path = Path(path)
    if not path.is_file():
        raise HashError(f"{path}: no such file")
    pixels, read = _file_pixels(path)
    if channels == 1 and pixels.shape[0] == 3 and (pixels == pixels[:1]).all():
        pixels, read = pixels[:1], read + "; equal RGB channels taken as grayscale"
    return {"path": str(path), "file_sha256": file_sha256(path), "pixel_sha256": pixel_sha256(pixels),
            "shape": list(pixels.shape), "read": read}


class ExactHashes:
    """Pixel hash -> the training entries with exactly those pixels (mirrored entries N..2N-1)."""

    name = "exact-hash"

    def __init__(self, training: torch.Tensor, xflip: bool = True):
        self.num_images = len(training)
        self.table: dict[str, list[int]] = {}
        views = [(training, 0)] + ([(training.flip(-1), self.num_images)] if xflip else [])
        for images, offset in views:
            for i, image in enumerate(images):
                self.table.setdefault(pixel_sha256(image), []).append(i + offset)

    def entries(self, pixels) -> list[int]:
        """Entries whose pixels equal `pixels` (uint8 [C, H, W]), originals first."""
        return sorted(self.table.get(pixel_sha256(pixels), []))

    def describe(self) -> dict:
        return {"name": self.name, "kind": self.name, "fingerprint": "sha256(uint8:CxHxW + pixels)",
                "definition": "sha256 of b'uint8:CxHxW' followed by the uint8 pixels in [C, H, W] order"}
