""".npy / .npz arrays of uint8 images (loaded with allow_pickle=False)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from pspc.data.files import (
    PathLike, check_limit, file_error, image_tensor, make_training_set, record_uris, require_file, wrap_errors
)
from pspc.data.training_set import TrainingSet


NPY_MAGIC = b"\x93NUMPY"  # how every .npy file starts (numpy.lib.format)


def load_npy(path: PathLike, mmap_mode: str | None = None) -> np.ndarray:
    """One .npy array, without pickles. A file that does not start with the .npy header is
    refused as such (np.load would try it as a pickle and suggest allow_pickle=True)."""
    with open(path, "rb") as f:
        head = f.read(len(NPY_MAGIC))
    if head[:2] == b"PK":
        raise ValueError("this is a .npz archive (several arrays), not a single .npy array")
    if head != NPY_MAGIC:
        raise ValueError("not a .npy file: it does not start with the NumPy header \\x93NUMPY")
    return np.load(path, mmap_mode=mmap_mode, allow_pickle=False)


def _as_nchw(array: np.ndarray, path: Path, what: str) -> np.ndarray:
    """[N,H,W] -> C=1; [N,C,H,W] if dim 1 is 1 or 3; else [N,H,W,C] if the last dim is 1 or 3."""
    if array.dtype != np.uint8:
        raise file_error(
            path,
            f"{what} must be uint8 pixels 0..255, got {array.dtype}; convert first, e.g. "
            "np.clip(np.rint(x), 0, 255).astype(np.uint8)",
        )
    if array.ndim == 3:
        return array[:, None]
    if array.ndim == 4:
        if array.shape[1] in (1, 3):
            return array
        if array.shape[3] in (1, 3):
            return array.transpose(0, 3, 1, 2)
        raise file_error(path, f"{what} {array.shape} has no channel axis of size 1 or 3 (NCHW or NHWC)")
    raise file_error(path, f"{what} must be [N,H,W], [N,C,H,W] or [N,H,W,C], got shape {array.shape}")


def _pick_npz_arrays(npz, path: Path, key: str | None) -> tuple[str, np.ndarray, np.ndarray | None]:
    keys = list(npz.files)
    if key is not None:
        if key not in keys:
            raise file_error(path, f"no array {key!r} in .npz; arrays are {keys}")
        image_key = key
    elif len(keys) == 1:
        image_key = keys[0]
    else:
        image_key = next((k for k in ("images", "x") if k in keys), None)
        if image_key is None:
            raise file_error(path, f".npz holds arrays {keys}; name the images with key= (or store them as 'images'/'x')")
    label_key = next((k for k in ("labels", "y") if k in keys and k != image_key), None)
    return image_key, npz[image_key], npz[label_key] if label_key else None


def load_array(path: PathLike, *, key: str | None = None, limit: int | None = None) -> TrainingSet:
    """uint8 images from a .npy or .npz file (loaded with allow_pickle=False).

    Layouts: [N,H,W] (C=1), [N,C,H,W] when dim 1 is 1 or 3, otherwise [N,H,W,C] when the
    last dim is 1 or 3. Other dtypes are rejected (convert to uint8 first). A .npz needs
    `key`, a single array, or arrays named "images"/"x"; "labels"/"y" (1-D, length N)
    become metadata labels. ids are f"{stem}-{i:05d}".
    """
    limit = check_limit(limit)
    path = require_file(path, "array file")
    labels = None
    with wrap_errors(path, "corrupt or unreadable .npy/.npz file"):
        with open(path, "rb") as f:
            is_npz = f.read(2) == b"PK"  # a zip archive; anything else is read as .npy
        if is_npz:  # (opened by us: np.load leaks its own handle when the zip is corrupt)
            with open(path, "rb") as f, np.load(f, allow_pickle=False) as npz:
                image_key, images, labels = _pick_npz_arrays(npz, path, key)
            what = f"array {image_key!r}"
        else:
            if key is not None:
                raise file_error(path, f"key={key!r} given but this is a single .npy array")
            what, images = "array", load_npy(path, mmap_mode="r")  # read only [:limit]
        images = _as_nchw(images, path, what)
        if images.shape[0] == 0:
            raise file_error(path, f"{what} holds no images (empty set)")
        if labels is not None and labels.shape != images.shape[:1]:
            raise file_error(path, f"labels of shape {labels.shape} do not match {images.shape[0]} images in {what}")
        images = np.array(images[:limit], order="C")  # copies out of the memory map
    metadata = [{"source_uri": uri} for uri in record_uris(path, range(len(images)))]
    if labels is not None:
        for row, label in zip(metadata, labels[: len(images)].tolist()):
            row["label"] = label
    ids = [f"{path.stem}-{i:05d}" for i in range(len(images))]
    return make_training_set(image_tensor(images), ids, metadata, path.stem, path)
