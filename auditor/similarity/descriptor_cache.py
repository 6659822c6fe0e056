"""A disk cache of the training entries' descriptors, so that a learned or SSCD descriptor
describes the 120k Fashion-MNIST entries (60k images and their mirrors) once, not on every
`auditor calibrate`, audit or comparison (80-100 s on one CPU thread).

:func:`entry_descriptors` returns the descriptors of every entry of a training set (the
images, then their mirrored copies when xflip) and keeps them in
``$PSPC_CACHE_DIR/descriptors`` (default ``$XDG_CACHE_HOME/pspc-auditor`` or
``~/.cache/pspc-auditor``; ``PSPC_CACHE_DIR=off`` turns the cache off) as KEY.npy with a
KEY.json sidecar. The key is the sha256 of what determines the array: the descriptor's
fingerprint and its checkpoint's sha256, the training images' fingerprint (sha256 over
shape and pixels), the transform (mirrored entries or not, their order) and the device
type. Files are written to a temporary name and renamed, so a reader never sees half a
file. On load the sidecar must name the same key and the array must have the recorded
shape, dtype float32, finite values and the recorded sha256; anything else is recomputed
and replaced with a :class:`DescriptorCacheWarning`, never trusted. Only descriptors that
pin their model bytes (learned, SSCD) are cached: the pixel-correlation fallback is cheap.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import warnings
from pathlib import Path

import numpy as np
import torch

from auditor.similarity.descriptors import Descriptor
from pspc.data.training_set import TrainingSet

__all__ = ["CACHE_DIR_ENV", "CACHE_FORMAT", "CACHED_KINDS", "DescriptorCacheWarning", "cache_dir", "cache_key",
           "entry_descriptors", "images_fingerprint"]

CACHE_DIR_ENV = "PSPC_CACHE_DIR"
CACHE_FORMAT = "pspc-auditor entry descriptors v1"
CACHED_KINDS = ("learned", "sscd")  # descriptors whose identity pins the model's bytes (a checkpoint sha256)
OFF = ("off", "none", "0")


class DescriptorCacheWarning(UserWarning):
    """A cached descriptor file was unreadable or did not match: it was recomputed and replaced."""


def cache_dir() -> Path | None:
    """$PSPC_CACHE_DIR (None when 'off'), else $XDG_CACHE_HOME/pspc-auditor, else ~/.cache/pspc-auditor."""
    configured = os.environ.get(CACHE_DIR_ENV, "").strip()
    if configured.lower() in OFF:
        return None
    if configured:
        return Path(configured).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base).expanduser() / "pspc-auditor"


def images_fingerprint(images: torch.Tensor) -> str:
    """The training set's fingerprint of these uint8 images (sha256 over shape and pixels)."""
    return TrainingSet(images, range(len(images))).fingerprint


def _identity(descriptor: Descriptor, images: torch.Tensor, xflip: bool) -> dict:
    return {"format": CACHE_FORMAT, "descriptor": descriptor.fingerprint, "name": descriptor.name,
            "checkpoint_sha256": getattr(descriptor, "sha256", None), "training_fingerprint": images_fingerprint(images),
            "transform": {"xflip": bool(xflip), "order": "images, then their mirrors" if xflip else "images"},
            "device": torch.device(descriptor.device).type}


def _key(identity: dict) -> str:
    return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()


def cache_key(descriptor: Descriptor, images: torch.Tensor, xflip: bool) -> str:
    """The cache file's name: sha256 of what determines the entries' descriptors (module docstring)."""
    return _key(_identity(descriptor, images, xflip))


def _compute(descriptor: Descriptor, images: torch.Tensor, xflip: bool, batch_size: int | None) -> torch.Tensor:
    described = descriptor(images, batch_size=batch_size)
    return torch.cat([described, descriptor(images.flip(-1), batch_size=batch_size)]) if xflip else described


def _array_sha256(array: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(array).tobytes()).hexdigest()


def _load(folder: Path, key: str, identity: dict, shape: tuple[int, int]) -> np.ndarray | None:
    """The cached array, or None when absent; a DescriptorCacheWarning (and None) when it does not check out."""
    array_path, sidecar_path = folder / f"{key}.npy", folder / f"{key}.json"
    if not array_path.exists() and not sidecar_path.exists():
        return None
    try:
        sidecar = json.loads(sidecar_path.read_text())
        if sidecar.get("identity") != identity:
            raise ValueError("its sidecar describes other descriptors")
        array = np.load(array_path, allow_pickle=False)
        if array.dtype != np.float32 or tuple(array.shape) != shape or list(shape) != sidecar.get("shape"):
            raise ValueError(f"it holds {array.dtype} {tuple(array.shape)}, expected float32 {shape}")
        if _array_sha256(array) != sidecar.get("sha256"):
            raise ValueError("its sha256 differs from the sidecar's (a corrupt or half-replaced file)")
        if not np.isfinite(array).all():
            raise ValueError("it holds NaN or infinite values")
    except (OSError, EOFError, ValueError, TypeError, AttributeError) as error:  # JSONDecodeError is a ValueError
        warnings.warn(f"descriptor cache {array_path} is not usable ({error}); recomputing and replacing it",
                      DescriptorCacheWarning, stacklevel=3)
        return None
    return array


def _write_atomically(path: Path, write) -> None:
    handle, temporary = tempfile.mkstemp(prefix=path.name + ".", suffix=".part", dir=path.parent)
    try:
        with os.fdopen(handle, "wb") as out:
            write(out)
            out.flush()
            os.fsync(out.fileno())
        os.replace(temporary, path)
    finally:
        if os.path.exists(temporary):
            os.remove(temporary)


def _store(folder: Path, key: str, identity: dict, array: np.ndarray) -> None:
    """KEY.npy then KEY.json, each by rename: a reader pairing a new sidecar with an old array sees a sha256
    mismatch and recomputes. A folder that cannot be written only costs the cache, with a warning."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        _write_atomically(folder / f"{key}.npy", lambda out: np.save(out, array, allow_pickle=False))
        sidecar = {"identity": identity, "shape": list(array.shape), "dtype": "float32", "sha256": _array_sha256(array)}
        _write_atomically(folder / f"{key}.json", lambda out: out.write(json.dumps(sidecar, indent=1).encode()))
    except OSError as error:
        warnings.warn(f"cannot write the descriptor cache in {folder} ({error}); descriptors are not cached",
                      DescriptorCacheWarning, stacklevel=3)


def entry_descriptors(descriptor: Descriptor, images: torch.Tensor, *, xflip: bool,
                      batch_size: int | None = None) -> torch.Tensor:
    """Descriptors [E, D] of the training entries: images uint8 [N, C, H, W], then (xflip) their
    mirrors, from the cache when it holds them for exactly this descriptor, these pixels and this
    transform (see the module docstring)."""
    folder = cache_dir()
    if folder is None or descriptor.kind not in CACHED_KINDS:
        return _compute(descriptor, images, xflip, batch_size)
    folder = folder / "descriptors"
    identity = _identity(descriptor, images, xflip)
    key = _key(identity)
    shape = (len(images) * (2 if xflip else 1), int(descriptor.dimension))
    cached = _load(folder, key, identity, shape)
    if cached is not None:
        return torch.from_numpy(cached)
    described = _compute(descriptor, images, xflip, batch_size)
    _store(folder, key, identity, described.numpy())
    return described
