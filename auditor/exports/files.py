"""Writing export files: private (mode 0600) and atomic (a temporary file beside the target,
renamed over it), so that an error leaves no partial file and nobody else can read the keys or
the exports on a shared machine."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

__all__ = ["PRIVATE_MODE", "write_private"]

PRIVATE_MODE = 0o600


def write_private(path: str | os.PathLike, data: bytes, *, overwrite: bool = True) -> Path:
    """Write `data` to `path` with mode 0600 through a temporary file renamed over it; the
    temporary file is removed on any error. overwrite=False: FileExistsError if `path` exists."""
    path = Path(path)
    if path.is_dir():
        raise IsADirectoryError(f"{path} is a directory; give a file name")
    if not path.parent.is_dir():
        raise FileNotFoundError(f"{path.parent}: no such folder")
    if not overwrite and path.exists():
        raise FileExistsError(f"{path} exists already")
    handle, partial = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".partial", dir=path.parent)
    try:
        os.fchmod(handle, PRIVATE_MODE)
        with os.fdopen(handle, "wb") as out:
            out.write(data)
            out.flush()
            os.fsync(out.fileno())
        if not overwrite and path.exists():  # appeared meanwhile
            raise FileExistsError(f"{path} exists already")
        os.replace(partial, path)
    finally:
        if os.path.exists(partial):
            os.remove(partial)
    return path
