"""IDX files (MNIST / Fashion-MNIST), raw or gzipped, and Fashion-MNIST from its Debian package."""

from __future__ import annotations

import gzip
import io
import math
import os
import struct
from pathlib import Path

import numpy as np

from pspc.data.files import (
    PathLike, check_limit, file_error, image_tensor, make_training_set, record_uris, require_file, wrap_errors
)
from pspc.data.training_set import TrainingSet, TrainingSetError

DEFAULT_FASHION_MNIST_ROOT = "/usr/share/datasets/fashion-mnist"
FASHION_MNIST_ROOT_ENV = "PSPC_FASHION_MNIST_ROOT"
FASHION_MNIST_CLASSES = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)
_FASHION_MNIST_SPLITS = {"train": "train", "test": "t10k", "t10k": "t10k"}

_IDX_UINT8 = 0x08
_GZIP_MAGIC = b"\x1f\x8b"


def _read_upto(stream: io.BufferedIOBase, size: int) -> bytearray:
    """Read up to `size` bytes (fewer only at end of file) into a writable buffer."""
    buf = bytearray(size)
    view = memoryview(buf)
    got = 0
    while got < size:
        n = stream.readinto(view[got:])
        if not n:
            break
        got += n
    del view
    if got < size:
        del buf[got:]
    return buf


def _open_maybe_gzip(path: Path) -> io.BufferedIOBase:
    """Open for reading, decompressing if the file starts with the gzip magic bytes 1f 8b."""
    with open(path, "rb") as f:
        gzipped = f.read(2) == _GZIP_MAGIC
    return gzip.open(path, "rb") if gzipped else open(path, "rb")


def _read_idx(path: Path, ndim: int, limit: int | None) -> tuple[np.ndarray, int]:
    """Parse an IDX file of uint8 records with `ndim` dimensions (gzipped or raw).

    Returns (the first `limit` records as an array [n, *dims[1:]], the declared count). The
    header must carry magic 0x000008<ndim> and the payload must hold exactly the declared
    bytes; with a `limit` below the count only the records read are checked.
    """
    expected_magic = (_IDX_UINT8 << 8) | ndim
    with wrap_errors(path, "corrupt or truncated IDX file"), _open_maybe_gzip(path) as f:
        header = bytes(_read_upto(f, 4))
        magic = struct.unpack(">I", header)[0] if len(header) == 4 else None
        if magic != expected_magic:
            kind = {1: "labels (1-D)", 3: "images (3-D)"}.get(ndim, f"{ndim}-D")
            found = "none (file shorter than 4 bytes)" if magic is None else f"0x{magic:08x}"
            raise file_error(path, f"wrong magic number {found}, expected 0x{expected_magic:08x} for IDX uint8 {kind}")
        header = bytes(_read_upto(f, 4 * ndim))
        if len(header) < 4 * ndim:
            raise file_error(path, f"truncated IDX header: {4 + len(header)} of {4 + 4 * ndim} bytes")
        dims = struct.unpack(f">{ndim}i", header)
        if any(d < 0 for d in dims):
            raise file_error(path, f"negative dimension in IDX header {dims}")
        count, record_shape = dims[0], dims[1:]
        if count == 0:
            raise file_error(path, "IDX file holds no records (empty set)")
        record_bytes = math.prod(record_shape)
        expected_bytes = count * record_bytes
        n = count if limit is None else min(count, limit)
        payload = _read_upto(f, n * record_bytes)
        if len(payload) < n * record_bytes:  # hit end of file: this is the whole payload
            raise file_error(
                path,
                f"truncated IDX payload: header declares {count} x {record_shape} = {expected_bytes} bytes, "
                f"file holds {len(payload)}",
            )
        if n == count:
            extra = len(f.read())
            if extra:
                raise file_error(
                    path,
                    f"IDX payload size mismatch: header declares {count} x {record_shape} = {expected_bytes} "
                    f"bytes, file holds {expected_bytes + extra} (trailing data)",
                )
    return np.frombuffer(payload, dtype=np.uint8).reshape(n, *record_shape), count


def _idx_split(path: Path) -> str:
    """'train' from train-images-idx3-ubyte.gz, 't10k' from t10k-..., else the file stem."""
    base = path.name.removesuffix(".gz")
    if "-images" in base:
        return base.split("-images")[0] or "images"
    return Path(base).stem


def load_idx(
    images_path: PathLike,
    labels_path: PathLike | None = None,
    *,
    name: str | None = None,
    limit: int | None = None,
) -> TrainingSet:
    """Images (and optional labels) in IDX format, the MNIST / Fashion-MNIST file format.

    Gzip is detected from the magic bytes, not the extension. Images become [N, 1, H, W];
    ids are f"{split}-{i:05d}" (split from the file name, e.g. "train" or "t10k"), metadata
    holds "label" (if labels are given) and "source_uri" = f"{absolute path}#{i}". With
    `limit`, only the first `limit` records are read and converted.
    """
    limit = check_limit(limit)
    images_path = require_file(images_path, "IDX images file")
    pixels, count = _read_idx(images_path, 3, limit)
    labels = None
    if labels_path is not None:
        labels_path = require_file(labels_path, "IDX labels file")
        labels, label_count = _read_idx(labels_path, 1, limit)
        if label_count != count:
            raise file_error(labels_path, f"{label_count} labels for {count} images in {images_path}")
    split = _idx_split(images_path)
    ids = [f"{split}-{i:05d}" for i in range(len(pixels))]
    metadata = [{"source_uri": uri} for uri in record_uris(images_path, range(len(pixels)))]
    if labels is not None:
        for row, label in zip(metadata, labels.tolist()):
            row["label"] = label
    name = name or images_path.name.removesuffix(".gz")
    return make_training_set(image_tensor(pixels[:, None]), ids, metadata, name, images_path)


def load_fashion_mnist(split: str = "train", root: PathLike | None = None, limit: int | None = None) -> TrainingSet:
    """Fashion-MNIST (Xiao et al. 2017), the project's default real data set: 28x28 grayscale.

    Read from the Debian package ``dataset-fashion-mnist`` (files ``train-images-idx3-ubyte.gz``
    etc.). `root` defaults to $PSPC_FASHION_MNIST_ROOT, else /usr/share/datasets/fashion-mnist.
    split is "train" (60k) or "test" (10k, files named t10k-*). Metadata adds "label_name".
    """
    if split not in _FASHION_MNIST_SPLITS:
        raise TrainingSetError(f"unknown Fashion-MNIST split {split!r}; use 'train' or 'test'")
    if root is None:
        root = os.environ.get(FASHION_MNIST_ROOT_ENV) or DEFAULT_FASHION_MNIST_ROOT
    root = Path(root)
    if not root.is_dir():
        raise file_error(
            root,
            "Fashion-MNIST directory not found; install it with `apt-get install -y dataset-fashion-mnist` "
            f"or point ${FASHION_MNIST_ROOT_ENV} at a directory holding the *-idx*-ubyte.gz files",
        )
    prefix = _FASHION_MNIST_SPLITS[split]
    public_split = "test" if prefix == "t10k" else "train"
    data = load_idx(
        root / f"{prefix}-images-idx3-ubyte.gz",
        root / f"{prefix}-labels-idx1-ubyte.gz",
        name=f"fashion-mnist-{public_split}",
        limit=limit,
    )
    for row in data.metadata:
        if not 0 <= row["label"] < len(FASHION_MNIST_CLASSES):
            raise file_error(root / f"{prefix}-labels-idx1-ubyte.gz", f"label {row['label']} is not a Fashion-MNIST class")
        row["label_name"] = FASHION_MNIST_CLASSES[row["label"]]
    return data
