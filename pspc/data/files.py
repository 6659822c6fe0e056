"""What every training-set loader shares: errors that name the file, limits, source URIs.

Loaders never let a raw struct / pickle / zip / PIL exception escape: each problem becomes
a TrainingSetError whose message names the file (`file_error`, `wrap_errors`).
"""

from __future__ import annotations

import os
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
import torch

from pspc.data.training_set import TrainingSet, TrainingSetError

PathLike = str | os.PathLike


def file_error(path: PathLike, problem: str) -> TrainingSetError:
    """The error "PATH: problem" (raise it)."""
    return TrainingSetError(f"{os.fspath(path)}: {problem}")


@contextmanager
def wrap_errors(path: PathLike, problem: str) -> Iterator[None]:
    """Turn any foreign exception raised inside into a TrainingSetError naming `path`."""
    try:
        yield
    except TrainingSetError:
        raise
    except Exception as exc:  # noqa: BLE001 - the point is to wrap everything
        raise file_error(path, f"{problem} ({type(exc).__name__}: {exc})") from exc


def require_file(path: PathLike, what: str) -> Path:
    """`path` as a Path, if it is an existing regular file; `what` names it in the error."""
    path = Path(path)
    if not path.exists():
        raise file_error(path, f"{what} not found (no such file)")
    if not path.is_file():
        raise file_error(path, f"{what} is not a regular file")
    return path


def check_limit(limit: int | None) -> int | None:
    """A loader's `limit` (keep the first N images): None or a positive int."""
    if limit is None:
        return None
    if isinstance(limit, bool) or not isinstance(limit, (int, np.integer)) or limit < 1:
        raise TrainingSetError(f"limit must be a positive integer or None, got {limit!r}")
    return int(limit)


def record_uris(path: Path, parts: Sequence[object]) -> list[str]:
    """source_uri of records inside a container file: absolute path + '#' + record."""
    prefix = f"{path.resolve()}#"
    return [f"{prefix}{part}" for part in parts]


def image_tensor(array: np.ndarray) -> torch.Tensor:
    """uint8 pixels [N, C, H, W] as a contiguous tensor (shares memory when already contiguous)."""
    return torch.from_numpy(np.ascontiguousarray(array))


def make_training_set(images, ids, metadata, name: str, source: PathLike) -> TrainingSet:
    """The TrainingSet a loader returns; `source` is the file or folder it read."""
    return TrainingSet(images=images, ids=ids, metadata=metadata, name=name, source=os.fspath(source))
