"""Loaders for real public image data sets, each returning a :class:`TrainingSet`.

Attribution is only as good as the record of what the model could have copied from, so every
loader keeps the stored pixels exactly (no silent resizing or colour conversion unless asked
for), gives each image a stable id, and records where it came from (``source_uri``).
Nothing is ever downloaded: the loaders read local files only.

Every problem with the input (missing, corrupt or truncated file, wrong format, mixed sizes,
unsupported channels, empty set, metadata for unknown files, ...) raises
:class:`TrainingSetError` with a message that names the file and the problem; raw
struct / pickle / zip / PIL exceptions never escape.

Formats: IDX (MNIST / Fashion-MNIST, optionally gzipped), CIFAR-10 python batches, folders of
PNG/JPEG/BMP/WebP images, ``.npy`` / ``.npz`` arrays and EDM ``dataset_tool.py`` zips.
:func:`load_training_set` turns one string spec into the right loader (the CLI entry point).
One module per format: pspc.data.idx, .cifar, .image_folder, .arrays, .edm_zip (shared
helpers in pspc.data.files); this module re-exports their loaders.
"""

from __future__ import annotations

import inspect
import os
from pathlib import Path
from typing import Callable

from pspc.data.arrays import load_array
from pspc.data.cifar import CIFAR10_FILES, load_cifar10
from pspc.data.edm_zip import load_edm_zip
from pspc.data.files import file_error
from pspc.data.idx import (
    DEFAULT_FASHION_MNIST_ROOT, FASHION_MNIST_CLASSES, FASHION_MNIST_ROOT_ENV, load_fashion_mnist, load_idx
)
from pspc.data.image_folder import IMAGE_SUFFIXES, RESIZE_POLICIES, decode_images, load_image_folder
from pspc.data.training_set import TrainingSet, TrainingSetError

__all__ = [
    "ACCEPTED_SPECS",
    "CIFAR10_FILES",
    "DEFAULT_FASHION_MNIST_ROOT",
    "FASHION_MNIST_CLASSES",
    "FASHION_MNIST_ROOT_ENV",
    "IMAGE_SUFFIXES",
    "RESIZE_POLICIES",
    "decode_images",
    "load_array",
    "load_cifar10",
    "load_edm_zip",
    "load_fashion_mnist",
    "load_idx",
    "load_image_folder",
    "load_training_set",
]


ACCEPTED_SPECS = """accepted training-set specs:
  fashion-mnist | fashion-mnist:train | fashion-mnist:test   built-in (apt-get install -y dataset-fashion-mnist)
  FILE.npy | FILE.npz                                         uint8 image array
  FILE.zip                                                    EDM dataset_tool zip
  FILE.gz | FILE.idx | *-images-idx3-ubyte[.gz]               IDX images (labels-idx1 file beside it is used)
  DIR with data_batch_* / test_batch, or one such file        CIFAR-10 python batches
  DIR of .png/.jpg/.jpeg/.bmp/.webp images                    image folder"""


def _resolve_spec(spec: str) -> tuple[Callable[..., TrainingSet], tuple, dict]:
    """(loader, positional args, fixed keyword args) for a spec string."""
    head, _, split = spec.partition(":")
    if head == "fashion-mnist":
        return load_fashion_mnist, (), {"split": split or "train"}
    path = Path(spec)
    if path.is_dir():
        if any(path.glob("data_batch_*")) or (path / "test_batch").is_file():
            return load_cifar10, (path,), {}
        return load_image_folder, (path,), {}
    if path.is_file():
        name = path.name.lower()
        if path.suffix.lower() in (".npy", ".npz"):
            return load_array, (path,), {}
        if path.suffix.lower() == ".zip":
            return load_edm_zip, (path,), {}
        if name.startswith("data_batch_") or name == "test_batch":
            return load_cifar10, (path,), {}
        if path.suffix.lower() in (".gz", ".idx") or "ubyte" in name or "idx3" in name:
            labels = path.with_name(path.name.replace("images-idx3", "labels-idx1"))
            return load_idx, (path,), {"labels_path": labels if labels != path and labels.is_file() else None}
        raise file_error(spec, f"unrecognised training-set file type\n{ACCEPTED_SPECS}")
    raise file_error(spec, f"no such file or directory, and not a built-in data set\n{ACCEPTED_SPECS}")


def folder_options(resize: str | None, size: str | None) -> dict:
    """The command line's --resize POLICY / --size H[xW] as loader options ({} when neither is given)."""
    options = {}
    if resize is not None:
        options["resize"] = resize
    if size is not None:
        height, _, width = size.lower().partition("x")
        try:
            options["size"] = (int(height), int(width or height))
        except ValueError:
            raise TrainingSetError(f"--size {size!r}: expected H or HxW in pixels, e.g. 28 or 32x32") from None
    return options


def load_training_set(spec: str, *, limit: int | None = None, **options) -> TrainingSet:
    """Load a training set from one string spec (see ACCEPTED_SPECS); the CLI's entry point.

    `limit` keeps the first `limit` images; other `options` go to the chosen loader (e.g.
    size/resize/channels/metadata for image folders, key for .npz, batches for CIFAR-10,
    root for Fashion-MNIST) and are rejected with a TrainingSetError if it does not take them.
    """
    spec = os.fspath(spec)
    loader, args, fixed = _resolve_spec(spec)
    accepted = set(list(inspect.signature(loader).parameters)[len(args):])
    unknown = sorted(set(options) - accepted)
    if unknown:
        raise TrainingSetError(f"{spec}: option(s) {unknown} do not apply to {loader.__name__}")
    return loader(*args, **{**fixed, **options}, limit=limit)
