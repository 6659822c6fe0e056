"""CIFAR-10 in its python format (pickled batches), read with a restricted unpickler.

Pickle runs whatever code the file names, so an untrusted "CIFAR batch" could execute
anything; the batches are read with an unpickler that builds only builtin containers and
numpy arrays and refuses every other global.
"""

from __future__ import annotations

import codecs
import importlib
import os
import pickle
import re
from pathlib import Path
from typing import Sequence

import numpy as np

from pspc.data.files import (
    PathLike, check_limit, file_error, image_tensor, make_training_set, record_uris, require_file, wrap_errors
)
from pspc.data.training_set import TrainingSet, TrainingSetError

CIFAR10_FILES = tuple(f"data_batch_{i}" for i in range(1, 6)) + ("test_batch",)
_CIFAR_SIDE = 32


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
            raise file_error(path, f"not a plain CIFAR pickle: {exc}") from exc
        except Exception as exc:  # noqa: BLE001
            raise file_error(path, f"corrupt or truncated pickle ({type(exc).__name__}: {exc})") from exc


def _str_keys(obj: dict) -> dict:
    return {k.decode("utf-8", "replace") if isinstance(k, bytes) else k: v for k, v in obj.items()}


def _text(value: object) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


def _read_cifar_batch(path: Path) -> tuple[np.ndarray, list[int], list[str] | None]:
    """One CIFAR-10 batch: (uint8 [n, 3, 32, 32], labels, filenames or None)."""
    batch = _unpickle(path)
    if not isinstance(batch, dict):
        kind = type(batch).__name__
        raise file_error(path, f"not a CIFAR-10 batch: expected a dict with 'data' and 'labels', got {kind}")
    batch = _str_keys(batch)
    missing = [k for k in ("data", "labels") if k not in batch]
    if missing:
        raise file_error(path, f"not a CIFAR-10 batch: missing key(s) {missing}; keys are {sorted(batch)}")
    data = batch["data"]
    side = _CIFAR_SIDE
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3 * side * side:
        desc = f"{data.dtype} array {data.shape}" if isinstance(data, np.ndarray) else type(data).__name__
        raise file_error(path, f"CIFAR-10 'data' must be a uint8 array [n, {3 * side * side}], got {desc}")
    n = data.shape[0]
    if n == 0:
        raise file_error(path, "CIFAR-10 batch holds no images (empty set)")
    with wrap_errors(path, "CIFAR-10 'labels' must be a list of integers"):
        labels = np.asarray(batch["labels"])
        if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer):
            raise ValueError(f"got {labels.dtype} array of shape {labels.shape}")  # wrapped: a TrainingSetError
    if len(labels) != n:
        raise file_error(path, f"{len(labels)} CIFAR-10 labels for {n} images")
    filenames = batch.get("filenames")
    if filenames is not None:
        with wrap_errors(path, "CIFAR-10 'filenames' must be a list of names"):
            filenames = [_text(f) for f in filenames]
        if len(filenames) != n:
            raise file_error(path, f"{len(filenames)} CIFAR-10 filenames for {n} images")
    return data.reshape(n, 3, side, side), labels.tolist(), filenames


def _cifar_label_names(meta_path: Path) -> list[str] | None:
    if not meta_path.is_file():
        return None
    meta = _unpickle(meta_path)
    names = _str_keys(meta).get("label_names") if isinstance(meta, dict) else None
    if not isinstance(names, (list, tuple)):
        raise file_error(meta_path, "not a CIFAR-10 batches.meta: expected a dict with 'label_names'")
    return [_text(n) for n in names]


def _batch_sort_key(path: Path) -> tuple:
    return tuple(int(t) if t.isdigit() else t for t in re.split(r"(\d+)", path.name))


def _cifar_default_batches(root: Path) -> list[Path]:
    """data_batch_* in numeric order, else test_batch alone."""
    found = sorted((p for p in root.glob("data_batch_*") if p.is_file()), key=_batch_sort_key)
    if not found and (root / "test_batch").is_file():
        found = [root / "test_batch"]
    if not found:
        raise file_error(root, "no CIFAR-10 batches (data_batch_* or test_batch) in this directory")
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
    limit = check_limit(limit)
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
    files = [require_file(p, "CIFAR-10 batch") for p in files]
    label_names = _cifar_label_names(root / "batches.meta")

    chunks, ids, metadata = [], [], []
    for path in files:
        if limit is not None and len(ids) >= limit:
            break
        data, labels, filenames = _read_cifar_batch(path)
        keep = len(labels) if limit is None else min(len(labels), limit - len(ids))
        chunks.append(data[:keep])
        for row, uri in enumerate(record_uris(path, range(keep))):
            record = {"label": labels[row], "source_uri": uri}
            if label_names is not None:
                if not 0 <= labels[row] < len(label_names):
                    raise file_error(path, f"label {labels[row]} at row {row} has no name in {root / 'batches.meta'}")
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
    return make_training_set(image_tensor(np.concatenate(chunks)), ids, metadata, name, source)
