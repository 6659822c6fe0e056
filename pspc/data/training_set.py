"""The training set PSPC composes its outputs from: uint8 images, stable ids, metadata.

A result is only reproducible if we know exactly which pixels it was computed on, so every
training set carries a content fingerprint (sha256 over shape and bytes). Horizontal-flip
augmentation is virtual: an *entry* is (image index, flip flag), and the flipped image is
never materialised; the denoisers compare flipped queries against the original pixels.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from functools import cached_property
from typing import Sequence

import numpy as np
import torch

from pspc.errors import InputError

METADATA_FIELDS = ("label", "source_uri", "owner", "license")


class TrainingSetError(InputError):
    """Bad training data: names the file (if any) and the problem."""


@dataclass(frozen=True)
class Entry:
    """One (possibly virtual) member of the training distribution."""

    index: int  # index of the stored image
    image_id: str
    flip: bool  # True: the horizontally mirrored image


@dataclass
class TrainingSet:
    """uint8 images [N, C, H, W] (C = 1 or 3) with a stable id and metadata per image.

    metadata[i] may hold any of METADATA_FIELDS (missing keys mean unknown).
    xflip=True doubles the distribution with mirrored entries (entries N..2N-1).
    """

    images: torch.Tensor
    ids: list[str]
    metadata: list[dict] = field(default_factory=list)
    name: str = "unnamed"
    source: str = ""
    xflip: bool = False

    def __post_init__(self):
        images = self.images
        if isinstance(images, np.ndarray):
            images = torch.from_numpy(np.ascontiguousarray(images))
        if not isinstance(images, torch.Tensor):
            raise TrainingSetError(f"{self._where()}images must be a tensor or array, got {type(images).__name__}")
        if images.dtype != torch.uint8:
            raise TrainingSetError(f"{self._where()}images must be uint8, got {images.dtype}")
        if images.ndim != 4:
            raise TrainingSetError(f"{self._where()}images must be [N, C, H, W], got shape {tuple(images.shape)}")
        n, c, h, w = images.shape
        if n == 0:
            raise TrainingSetError(f"{self._where()}training set is empty")
        if c not in (1, 3):
            raise TrainingSetError(f"{self._where()}images must have 1 or 3 channels, got {c}")
        if h < 1 or w < 1:
            raise TrainingSetError(f"{self._where()}images have empty spatial size {h}x{w}")
        self.images = images.contiguous()
        self.ids = [str(i) for i in self.ids]
        if len(self.ids) != n:
            raise TrainingSetError(f"{self._where()}{len(self.ids)} ids for {n} images")
        if len(set(self.ids)) != n:
            dup = next(i for i in self.ids if self.ids.count(i) > 1)
            raise TrainingSetError(f"{self._where()}image ids must be unique; {dup!r} repeats")
        if not self.metadata:
            self.metadata = [{} for _ in range(n)]
        if len(self.metadata) != n:
            raise TrainingSetError(f"{self._where()}{len(self.metadata)} metadata rows for {n} images")

    def _where(self) -> str:
        return f"{self.source}: " if getattr(self, "source", "") else ""

    # -- shape -------------------------------------------------------------------------
    def __len__(self) -> int:
        return self.images.shape[0]

    @property
    def channels(self) -> int:
        return self.images.shape[1]

    @property
    def resolution(self) -> tuple[int, int]:
        return tuple(self.images.shape[2:])

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return tuple(self.images.shape[1:])

    # -- identity ----------------------------------------------------------------------
    @cached_property
    def fingerprint(self) -> str:
        """sha256 over the shape and the raw bytes: identifies the exact data."""
        digest = hashlib.sha256()
        digest.update(("uint8:" + "x".join(map(str, self.images.shape))).encode())
        digest.update(self.images.numpy().tobytes())
        return digest.hexdigest()

    def image_sha256(self, index: int) -> str:
        """sha256 of one image's bytes (shape-prefixed), for per-image provenance."""
        digest = hashlib.sha256()
        digest.update(("uint8:" + "x".join(map(str, self.image_shape))).encode())
        digest.update(self.images[index].numpy().tobytes())
        return digest.hexdigest()

    def describe(self) -> dict:
        """Reproducibility record of the data (not the pixels)."""
        return {
            "name": self.name,
            "source": self.source,
            "fingerprint": self.fingerprint,
            "count": len(self),
            "shape": list(self.image_shape),
            "xflip": self.xflip,
        }

    # -- entries (virtual x-flip) ------------------------------------------------------
    @property
    def num_entries(self) -> int:
        return len(self) * (2 if self.xflip else 1)

    def entry(self, j: int) -> Entry:
        n = len(self)
        if not 0 <= j < self.num_entries:
            raise IndexError(f"entry {j} out of range for {self.num_entries} entries")
        index, flip = (j - n, True) if j >= n else (j, False)
        return Entry(index=index, image_id=self.ids[index], flip=flip)

    def with_xflip(self, xflip: bool = True) -> "TrainingSet":
        """Same images (shared, not copied), with or without virtual mirrored entries."""
        return TrainingSet(self.images, self.ids, self.metadata, self.name, self.source, xflip)

    def subset(self, indices: Sequence[int] | slice) -> "TrainingSet":
        """A new training set holding the selected images (ids and metadata kept)."""
        idx = list(range(len(self)))[indices] if isinstance(indices, slice) else [int(i) for i in indices]
        return TrainingSet(
            self.images[idx].clone(),
            [self.ids[i] for i in idx],
            [dict(self.metadata[i]) for i in idx],
            self.name,
            self.source,
            self.xflip,
        )

    def index_of(self, image_id: str) -> int:
        try:
            return self._id_index[str(image_id)]
        except KeyError:
            raise KeyError(f"unknown training image id {image_id!r} in {self.name}") from None

    @cached_property
    def _id_index(self) -> dict[str, int]:
        return {image_id: i for i, image_id in enumerate(self.ids)}

    # -- pixels ------------------------------------------------------------------------
    def as_float(self, device: torch.device | str | None = None, dtype=torch.float32) -> torch.Tensor:
        """Images in the diffusion data range [-1, 1] (uint8 / 127.5 - 1)."""
        return to_model_range(self.images.to(device), dtype)

    def entry_images(self, dtype=torch.float64) -> torch.Tensor:
        """All entries materialised (flips included) in [-1, 1]: for references and small sets only."""
        x = self.as_float(dtype=dtype)
        return torch.cat([x, x.flip(-1)]) if self.xflip else x


def to_model_range(images_uint8: torch.Tensor, dtype=torch.float32) -> torch.Tensor:
    """uint8 pixels in the diffusion data range: x = u / 127.5 - 1, in [-1, 1]."""
    return images_uint8.to(dtype) / 127.5 - 1.0


def to_uint8(images: torch.Tensor) -> torch.Tensor:
    """[-1, 1] floats to uint8 pixels (rounded, clipped)."""
    return ((images.detach().float() + 1.0) * 127.5).round().clamp(0, 255).to(torch.uint8)
