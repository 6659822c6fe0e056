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
"""

from __future__ import annotations

import codecs
import csv
import gzip
import importlib
import inspect
import io
import json
import math
import os
import pickle
import re
import struct
import zipfile
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator, Sequence

import numpy as np
import torch
from PIL import Image

from pspc.data.training_set import TrainingSet, TrainingSetError

__all__ = [
    "CIFAR10_FILES",
    "DEFAULT_FASHION_MNIST_ROOT",
    "FASHION_MNIST_CLASSES",
    "IMAGE_SUFFIXES",
    "RESIZE_POLICIES",
    "load_array",
    "load_cifar10",
    "load_edm_zip",
    "load_fashion_mnist",
    "load_idx",
    "load_image_folder",
    "load_training_set",
]

PathLike = str | os.PathLike

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

CIFAR10_FILES = tuple(f"data_batch_{i}" for i in range(1, 6)) + ("test_batch",)
_CIFAR_SIDE = 32

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp")
RESIZE_POLICIES = ("error", "resize", "center-crop", "pad")

_IDX_UINT8 = 0x08
_GZIP_MAGIC = b"\x1f\x8b"


# ---------------------------------------------------------------------------------------
# Shared helpers
# ---------------------------------------------------------------------------------------
def _error(path: PathLike, problem: str) -> TrainingSetError:
    return TrainingSetError(f"{os.fspath(path)}: {problem}")


@contextmanager
def _wrapped(path: PathLike, problem: str) -> Iterator[None]:
    """Turn any foreign exception raised inside into a TrainingSetError naming `path`."""
    try:
        yield
    except TrainingSetError:
        raise
    except Exception as exc:  # noqa: BLE001 - the point is to wrap everything
        raise _error(path, f"{problem} ({type(exc).__name__}: {exc})") from exc


def _require_file(path: PathLike, what: str) -> Path:
    path = Path(path)
    if not path.exists():
        raise _error(path, f"{what} not found (no such file)")
    if not path.is_file():
        raise _error(path, f"{what} is not a regular file")
    return path


def _check_limit(limit: int | None) -> int | None:
    if limit is None:
        return None
    if isinstance(limit, bool) or not isinstance(limit, (int, np.integer)) or limit < 1:
        raise TrainingSetError(f"limit must be a positive integer or None, got {limit!r}")
    return int(limit)


def _locations(path: Path, parts: Sequence[object]) -> list[str]:
    """source_uri of records inside a container file: absolute path + '#' + record."""
    prefix = f"{path.resolve()}#"
    return [f"{prefix}{part}" for part in parts]


def _to_images(array: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(array))


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


def _make_set(images, ids, metadata, name: str, source: PathLike) -> TrainingSet:
    return TrainingSet(images=images, ids=ids, metadata=metadata, name=name, source=os.fspath(source))


# ---------------------------------------------------------------------------------------
# IDX (MNIST / Fashion-MNIST)
# ---------------------------------------------------------------------------------------
def _read_idx(path: Path, ndim: int, limit: int | None) -> tuple[np.ndarray, int]:
    """Parse an IDX file of uint8 records with `ndim` dimensions (gzipped or raw).

    Returns (the first `limit` records as an array [n, *dims[1:]], the declared count). The
    header must carry magic 0x000008<ndim> and the payload must hold exactly the declared
    bytes; with a `limit` below the count only the records read are checked.
    """
    expected_magic = (_IDX_UINT8 << 8) | ndim
    with _wrapped(path, "corrupt or truncated IDX file"), _open_maybe_gzip(path) as f:
        header = bytes(_read_upto(f, 4))
        magic = struct.unpack(">I", header)[0] if len(header) == 4 else None
        if magic != expected_magic:
            kind = {1: "labels (1-D)", 3: "images (3-D)"}.get(ndim, f"{ndim}-D")
            found = "none (file shorter than 4 bytes)" if magic is None else f"0x{magic:08x}"
            raise _error(path, f"wrong magic number {found}, expected 0x{expected_magic:08x} for IDX uint8 {kind}")
        header = bytes(_read_upto(f, 4 * ndim))
        if len(header) < 4 * ndim:
            raise _error(path, f"truncated IDX header: {4 + len(header)} of {4 + 4 * ndim} bytes")
        dims = struct.unpack(f">{ndim}i", header)
        if any(d < 0 for d in dims):
            raise _error(path, f"negative dimension in IDX header {dims}")
        count, record_shape = dims[0], dims[1:]
        if count == 0:
            raise _error(path, "IDX file holds no records (empty set)")
        record_bytes = math.prod(record_shape)
        expected_bytes = count * record_bytes
        n = count if limit is None else min(count, limit)
        payload = _read_upto(f, n * record_bytes)
        if len(payload) < n * record_bytes:  # hit end of file: this is the whole payload
            raise _error(
                path,
                f"truncated IDX payload: header declares {count} x {record_shape} = {expected_bytes} bytes, "
                f"file holds {len(payload)}",
            )
        if n == count:
            extra = len(f.read())
            if extra:
                raise _error(
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
    limit = _check_limit(limit)
    images_path = _require_file(images_path, "IDX images file")
    pixels, count = _read_idx(images_path, 3, limit)
    labels = None
    if labels_path is not None:
        labels_path = _require_file(labels_path, "IDX labels file")
        labels, label_count = _read_idx(labels_path, 1, limit)
        if label_count != count:
            raise _error(labels_path, f"{label_count} labels for {count} images in {images_path}")
    split = _idx_split(images_path)
    ids = [f"{split}-{i:05d}" for i in range(len(pixels))]
    metadata = [{"source_uri": uri} for uri in _locations(images_path, range(len(pixels)))]
    if labels is not None:
        for row, label in zip(metadata, labels.tolist()):
            row["label"] = label
    name = name or images_path.name.removesuffix(".gz")
    return _make_set(_to_images(pixels[:, None]), ids, metadata, name, images_path)


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
        raise _error(
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
            raise _error(root / f"{prefix}-labels-idx1-ubyte.gz", f"label {row['label']} is not a Fashion-MNIST class")
        row["label_name"] = FASHION_MNIST_CLASSES[row["label"]]
    return data


# ---------------------------------------------------------------------------------------
# CIFAR-10 python batches
# ---------------------------------------------------------------------------------------
def _numpy_module(name: str):
    try:  # numpy >= 2 keeps the internals in numpy._core
        return importlib.import_module(f"numpy._core.{name}")
    except ImportError:  # numpy 1.x
        return importlib.import_module(f"numpy.core.{name}")


def _latin1_encode(text: str, encoding: str = "latin1") -> bytes:
    """_codecs.encode as used by Python 3 protocol-2 pickles of numpy arrays, latin-1 only."""
    if codecs.lookup(encoding).name != "iso8859-1":
        raise pickle.UnpicklingError(f"refusing _codecs.encode with encoding {encoding!r}")
    return codecs.encode(text, "latin1")


def _allowed_pickle_globals() -> dict[tuple[str, str], object]:
    multiarray, numeric = _numpy_module("multiarray"), _numpy_module("numeric")
    allowed: dict[tuple[str, str], object] = {
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): np.dtype,
        ("_codecs", "encode"): _latin1_encode,
    }
    for package in ("numpy.core", "numpy._core"):
        allowed[(f"{package}.multiarray", "_reconstruct")] = multiarray._reconstruct
        allowed[(f"{package}.numeric", "_frombuffer")] = numeric._frombuffer
    return allowed


class _RefusedGlobal(pickle.UnpicklingError):
    """The pickle names a global outside the allow-list."""


class _RestrictedUnpickler(pickle.Unpickler):
    """Unpickler that builds only builtin containers and numpy arrays.

    Pickle runs arbitrary code named by the file, so an untrusted "CIFAR batch" could
    execute anything. find_class allows only the array/dtype reconstructors numpy pickles
    use (protocol 2 via _reconstruct, protocol 5 via _frombuffer, and latin-1
    _codecs.encode for protocol-2 bytes written by Python 3) and refuses every other global.
    """

    _allowed: dict[tuple[str, str], object] | None = None

    def find_class(self, module: str, name: str):
        if _RestrictedUnpickler._allowed is None:
            _RestrictedUnpickler._allowed = _allowed_pickle_globals()
        try:
            return self._allowed[(module, name)]
        except KeyError:
            raise _RefusedGlobal(
                f"refusing to unpickle global {module}.{name} (only numpy arrays and builtin containers are "
                "allowed; pickle is unsafe on untrusted files)"
            ) from None


def _unpickle(path: Path) -> object:
    with open(path, "rb") as f:
        try:
            return _RestrictedUnpickler(f, encoding="bytes").load()
        except _RefusedGlobal as exc:
            raise _error(path, f"not a plain CIFAR pickle: {exc}") from exc
        except Exception as exc:  # noqa: BLE001
            raise _error(path, f"corrupt or truncated pickle ({type(exc).__name__}: {exc})") from exc


def _str_keys(obj: dict) -> dict:
    return {k.decode("utf-8", "replace") if isinstance(k, bytes) else k: v for k, v in obj.items()}


def _text(value: object) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


def _read_cifar_batch(path: Path) -> tuple[np.ndarray, list[int], list[str] | None]:
    """One CIFAR-10 batch: (uint8 [n, 3, 32, 32], labels, filenames or None)."""
    batch = _unpickle(path)
    if not isinstance(batch, dict):
        kind = type(batch).__name__
        raise _error(path, f"not a CIFAR-10 batch: expected a dict with 'data' and 'labels', got {kind}")
    batch = _str_keys(batch)
    missing = [k for k in ("data", "labels") if k not in batch]
    if missing:
        raise _error(path, f"not a CIFAR-10 batch: missing key(s) {missing}; keys are {sorted(batch)}")
    data = batch["data"]
    side = _CIFAR_SIDE
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3 * side * side:
        desc = f"{data.dtype} array {data.shape}" if isinstance(data, np.ndarray) else type(data).__name__
        raise _error(path, f"CIFAR-10 'data' must be a uint8 array [n, {3 * side * side}], got {desc}")
    n = data.shape[0]
    if n == 0:
        raise _error(path, "CIFAR-10 batch holds no images (empty set)")
    with _wrapped(path, "CIFAR-10 'labels' must be a list of integers"):
        labels = np.asarray(batch["labels"])
        if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer):
            raise ValueError(f"got {labels.dtype} array of shape {labels.shape}")
    if len(labels) != n:
        raise _error(path, f"{len(labels)} CIFAR-10 labels for {n} images")
    filenames = batch.get("filenames")
    if filenames is not None:
        with _wrapped(path, "CIFAR-10 'filenames' must be a list of names"):
            filenames = [_text(f) for f in filenames]
        if len(filenames) != n:
            raise _error(path, f"{len(filenames)} CIFAR-10 filenames for {n} images")
    return data.reshape(n, 3, side, side), labels.tolist(), filenames


def _cifar_label_names(meta_path: Path) -> list[str] | None:
    if not meta_path.is_file():
        return None
    meta = _unpickle(meta_path)
    names = _str_keys(meta).get("label_names") if isinstance(meta, dict) else None
    if not isinstance(names, (list, tuple)):
        raise _error(meta_path, "not a CIFAR-10 batches.meta: expected a dict with 'label_names'")
    return [_text(n) for n in names]


def _batch_sort_key(path: Path) -> tuple:
    return tuple(int(t) if t.isdigit() else t for t in re.split(r"(\d+)", path.name))


def _cifar_default_batches(root: Path) -> list[Path]:
    """data_batch_* in numeric order, else test_batch alone."""
    found = sorted((p for p in root.glob("data_batch_*") if p.is_file()), key=_batch_sort_key)
    if not found and (root / "test_batch").is_file():
        found = [root / "test_batch"]
    if not found:
        raise _error(root, "no CIFAR-10 batches (data_batch_* or test_batch) in this directory")
    return found


def load_cifar10(
    root_or_files: PathLike | Sequence[PathLike],
    *,
    batches: Sequence[str] | None = None,
    limit: int | None = None,
) -> TrainingSet:
    """CIFAR-10 in its python format (Krizhevsky 2009): 32x32 RGB, pickled batches.

    `root_or_files` is the ``cifar-10-batches-py`` directory (all data_batch_* in order, or
    the `batches` named, e.g. ["test_batch"]), one batch file, or a list of batch files.
    ids are f"{batch}-{row:05d}"; metadata holds label, label_name (from batches.meta when
    present), the original filename and source_uri.

    SECURITY: pickle can execute code, so never load pickles from untrusted sources. These
    files are read with a restricted unpickler that only builds builtin containers and numpy
    arrays and refuses any other global (e.g. os.system) with a TrainingSetError.
    """
    limit = _check_limit(limit)
    if isinstance(root_or_files, (str, os.PathLike)) and Path(root_or_files).is_dir():
        root = Path(root_or_files)
        files = [root / b for b in batches] if batches is not None else _cifar_default_batches(root)
        source: PathLike = root
    else:
        if batches is not None:
            raise TrainingSetError("load_cifar10: `batches` selects files inside a directory; pass a directory")
        single = isinstance(root_or_files, (str, os.PathLike))
        files = [Path(root_or_files)] if single else [Path(p) for p in root_or_files]
        if not files:
            raise TrainingSetError("load_cifar10: no batch files given (empty set)")
        root = files[0].parent
        source = files[0] if single else root
    files = [_require_file(p, "CIFAR-10 batch") for p in files]
    label_names = _cifar_label_names(root / "batches.meta")

    chunks, ids, metadata = [], [], []
    for path in files:
        if limit is not None and len(ids) >= limit:
            break
        data, labels, filenames = _read_cifar_batch(path)
        keep = len(labels) if limit is None else min(len(labels), limit - len(ids))
        chunks.append(data[:keep])
        for row, uri in enumerate(_locations(path, range(keep))):
            record = {"label": labels[row], "source_uri": uri}
            if label_names is not None:
                if not 0 <= labels[row] < len(label_names):
                    raise _error(path, f"label {labels[row]} at row {row} has no name in {root / 'batches.meta'}")
                record["label_name"] = label_names[labels[row]]
            if filenames is not None:
                record["filename"] = filenames[row]
            ids.append(f"{path.name}-{row:05d}")
            metadata.append(record)

    names = {p.name for p in files}
    if names <= set(CIFAR10_FILES[:-1]):
        name = "cifar10-train"
    elif names == {"test_batch"}:
        name = "cifar10-test"
    else:
        name = "cifar10"
    return _make_set(_to_images(np.concatenate(chunks)), ids, metadata, name, source)


# ---------------------------------------------------------------------------------------
# Decoded images (image folders and EDM zips)
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
        raise _error(where, f"unsupported image mode {image.mode!r} (16-bit or float); convert to 8-bit L or RGB")
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


def _decode_images(
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
        with _wrapped(where, "unreadable, corrupt or truncated image"), open_source() as f, Image.open(f) as image:
            image.load()
            image = _to_l_or_rgb(image, channels, where)
        hw = (image.height, image.width)
        if resize == "error":
            if size is not None and hw != size:
                raise _error(where, f"image is {hw[0]}x{hw[1]}, expected {size[0]}x{size[1]} (HxW); "
                             "pass resize='resize', 'center-crop' or 'pad' to convert")
            if first is not None and hw != first[1]:
                raise _error(
                    where,
                    f"mixed image sizes: {image_id} is {hw[0]}x{hw[1]} but {first[0]} is "
                    f"{first[1][0]}x{first[1][1]} (HxW); pass resize='resize', 'center-crop' or 'pad' with a size",
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
        raise TrainingSetError(f"resize={resize!r} needs a target size (int or (height, width))")
    if channels not in (None, 1, 3):
        raise TrainingSetError(f"channels must be None, 1 or 3, got {channels!r}")
    return size


# ---------------------------------------------------------------------------------------
# Image folders
# ---------------------------------------------------------------------------------------
def _is_image_name(parts: Sequence[str]) -> bool:
    """An image suffix, and no hidden (".x") or macOS resource-fork ("__MACOSX") component."""
    return Path(parts[-1]).suffix.lower() in IMAGE_SUFFIXES and not any(
        p.startswith(".") or p == "__MACOSX" for p in parts
    )


def _list_images(folder: Path) -> list[str]:
    """Relative posix paths of image files under `folder`, recursively, sorted."""
    found = []
    for path in folder.rglob("*"):
        rel = path.relative_to(folder)
        if _is_image_name(rel.parts) and path.is_file():
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
            raise _error(path, f"{where}: metadata fields must be an object, got {type(fields).__name__}")
        key = _metadata_key(key)
        if not key:
            raise _error(path, f"{where}: empty file name")
        if key in rows:
            raise _error(path, f"{where}: duplicate metadata for {key!r}")
        rows[key] = fields

    suffix = path.suffix.lower()
    if suffix == ".csv":
        with _wrapped(path, "unreadable metadata CSV"), open(path, newline="", encoding="utf-8-sig") as f:
            reader = csv.DictReader(f)
            header = reader.fieldnames or []
            key_column = next((c for c in ("file", "id") if c in header), None)
            if key_column is None:
                raise _error(path, f"metadata CSV needs a 'file' or 'id' column; header is {header}")
            for line, row in enumerate(reader, start=2):
                if None in row:
                    raise _error(path, f"line {line}: more cells than header columns")
                fields = {k: _csv_value(k, v) for k, v in row.items() if k != key_column and v is not None and v.strip()}
                add(row[key_column], fields, f"line {line}")
    elif suffix == ".json":
        with _wrapped(path, "unreadable metadata JSON"), open(path, encoding="utf-8") as f:
            doc = json.load(f)
        if isinstance(doc, list):
            for i, entry in enumerate(doc):
                if not isinstance(entry, dict) or not ({"file", "id"} & entry.keys()):
                    raise _error(path, f"entry {i}: expected an object with a 'file' key")
                key_field = "file" if "file" in entry else "id"
                add(entry[key_field], {k: v for k, v in entry.items() if k != key_field}, f"entry {i}")
        elif isinstance(doc, dict):
            for key, fields in doc.items():
                add(key, fields, f"entry {key!r}")
        else:
            raise _error(path, "metadata JSON must be a list of objects or an object mapping file -> fields")
    else:
        raise _error(path, "metadata file must be .csv or .json")
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
    limit = _check_limit(limit)
    size = _check_policy(resize, size, channels)
    folder = Path(folder)
    if not folder.is_dir():
        raise _error(folder, "image folder not found (not a directory)")
    files = _list_images(folder)
    if not files:
        raise _error(folder, f"no images ({', '.join(IMAGE_SUFFIXES)}) in this folder (empty set)")
    extra = {}
    if metadata is not None:
        metadata_path = _require_file(metadata, "metadata file")
        extra = _read_metadata_file(metadata_path)
        unknown = sorted(set(extra) - set(files))
        if unknown:
            raise _error(metadata_path, f"metadata for {len(unknown)} file(s) not in {folder}: {unknown[:5]}")
    files = files[:limit]
    sources = [(rel, str(folder / rel), lambda p=folder / rel: open(p, "rb")) for rel in files]
    pixels = _decode_images(sources, size=size, resize=resize, channels=channels)
    root = folder.resolve()
    rows = [{"source_uri": (root / rel).as_uri(), **extra.get(rel, {})} for rel in files]
    return _make_set(_to_images(pixels), files, rows, root.name, folder)


# ---------------------------------------------------------------------------------------
# Arrays (.npy / .npz)
# ---------------------------------------------------------------------------------------
def _as_nchw(array: np.ndarray, path: Path, what: str) -> np.ndarray:
    """[N,H,W] -> C=1; [N,C,H,W] if dim 1 is 1 or 3; else [N,H,W,C] if the last dim is 1 or 3."""
    if array.dtype != np.uint8:
        raise _error(
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
        raise _error(path, f"{what} {array.shape} has no channel axis of size 1 or 3 (NCHW or NHWC)")
    raise _error(path, f"{what} must be [N,H,W], [N,C,H,W] or [N,H,W,C], got shape {array.shape}")


def _pick_npz_arrays(npz, path: Path, key: str | None) -> tuple[str, np.ndarray, np.ndarray | None]:
    keys = list(npz.files)
    if key is not None:
        if key not in keys:
            raise _error(path, f"no array {key!r} in .npz; arrays are {keys}")
        image_key = key
    elif len(keys) == 1:
        image_key = keys[0]
    else:
        image_key = next((k for k in ("images", "x") if k in keys), None)
        if image_key is None:
            raise _error(path, f".npz holds arrays {keys}; name the images with key= (or store them as 'images'/'x')")
    label_key = next((k for k in ("labels", "y") if k in keys and k != image_key), None)
    return image_key, npz[image_key], npz[label_key] if label_key else None


def load_array(path: PathLike, *, key: str | None = None, limit: int | None = None) -> TrainingSet:
    """uint8 images from a .npy or .npz file (loaded with allow_pickle=False).

    Layouts: [N,H,W] (C=1), [N,C,H,W] when dim 1 is 1 or 3, otherwise [N,H,W,C] when the
    last dim is 1 or 3. Other dtypes are rejected (convert to uint8 first). A .npz needs
    `key`, a single array, or arrays named "images"/"x"; "labels"/"y" (1-D, length N)
    become metadata labels. ids are f"{stem}-{i:05d}".
    """
    limit = _check_limit(limit)
    path = _require_file(path, "array file")
    labels = None
    with _wrapped(path, "corrupt or unreadable .npy/.npz file"):
        with open(path, "rb") as f:
            is_npz = f.read(2) == b"PK"  # a zip archive; anything else is read as .npy
        if is_npz:  # (opened by us: np.load leaks its own handle when the zip is corrupt)
            with open(path, "rb") as f, np.load(f, allow_pickle=False) as npz:
                image_key, images, labels = _pick_npz_arrays(npz, path, key)
            what = f"array {image_key!r}"
        else:
            if key is not None:
                raise _error(path, f"key={key!r} given but this is a single .npy array")
            what, images = "array", np.load(path, mmap_mode="r", allow_pickle=False)  # read only [:limit]
        images = _as_nchw(images, path, what)
        if images.shape[0] == 0:
            raise _error(path, f"{what} holds no images (empty set)")
        if labels is not None and labels.shape != images.shape[:1]:
            raise _error(path, f"labels of shape {labels.shape} do not match {images.shape[0]} images in {what}")
        images = np.array(images[:limit], order="C")  # copies out of the memory map
    metadata = [{"source_uri": uri} for uri in _locations(path, range(len(images)))]
    if labels is not None:
        for row, label in zip(metadata, labels[: len(images)].tolist()):
            row["label"] = label
    ids = [f"{path.stem}-{i:05d}" for i in range(len(images))]
    return _make_set(_to_images(images), ids, metadata, path.stem, path)


# ---------------------------------------------------------------------------------------
# EDM dataset zips
# ---------------------------------------------------------------------------------------
def _edm_labels(zf: zipfile.ZipFile, path: Path, names: set[str]) -> dict[str, object]:
    if "dataset.json" not in zf.namelist():
        return {}
    where = f"{path}:dataset.json"
    with _wrapped(where, "unreadable dataset.json"):
        doc = json.loads(zf.read("dataset.json"))
    if not isinstance(doc, dict):
        raise _error(where, f"expected a JSON object with 'labels', got {type(doc).__name__}")
    labels = doc.get("labels")
    if labels is None:
        return {}
    if not isinstance(labels, list) or not all(isinstance(e, list) and len(e) == 2 for e in labels):
        raise _error(where, "'labels' must be a list of [file, label] pairs or null")
    mapping = {str(name): label for name, label in labels}
    unknown = sorted(set(mapping) - names)
    if unknown:
        raise _error(where, f"labels for {len(unknown)} file(s) not in the zip: {unknown[:5]}")
    return mapping


def load_edm_zip(path: PathLike, *, limit: int | None = None) -> TrainingSet:
    """An EDM-style data set zip (NVlabs/edm dataset_tool.py): images plus optional dataset.json.

    Images (PNG, or JPEG/BMP/WebP) at any depth, sorted by in-zip path, which is also the id.
    dataset.json {"labels": [["00000/img00000000.png", 6], ...] or null} gives labels. All
    images must have one size; channels follow the image-folder rules (L -> 1, else 3).
    """
    limit = _check_limit(limit)
    path = _require_file(path, "EDM dataset zip")
    with _wrapped(path, "corrupt or unreadable zip file"), zipfile.ZipFile(path) as zf:
        names = sorted(n for n in zf.namelist() if not n.endswith("/") and _is_image_name(n.split("/")))
        if not names:
            raise _error(path, f"no images ({', '.join(IMAGE_SUFFIXES)}) in this zip (empty set)")
        labels = _edm_labels(zf, path, set(names))
        names = names[:limit]
        sources = [(n, f"{path}:{n}", lambda n=n: io.BytesIO(zf.read(n))) for n in names]
        pixels = _decode_images(sources, size=None, resize="error", channels=None)
    metadata = []
    for n, uri in zip(names, _locations(path, names)):
        row = {"source_uri": uri}
        if labels.get(n) is not None:
            row["label"] = labels[n]
        metadata.append(row)
    return _make_set(_to_images(pixels), names, metadata, path.stem, path)


# ---------------------------------------------------------------------------------------
# One entry point for the CLI
# ---------------------------------------------------------------------------------------
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
        raise _error(spec, f"unrecognised training-set file type\n{ACCEPTED_SPECS}")
    raise _error(spec, f"no such file or directory, and not a built-in data set\n{ACCEPTED_SPECS}")


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
