"""Files uploaded with a job (an audit's image): type-checked, kept under the jobs folder by sha256.

`store_upload(jobs_dir, data, name)` tells what the bytes are from their content, never from
the client's file name or Content-Type: a PNG, JPEG, BMP or WebP picture (Pillow reads its
header) or a .npy array (NumPy's magic), the types `auditor audit` takes. It keeps them as
`<jobs folder>/uploads/<sha256>.<suffix>` (mode 0600, written to a temporary file renamed
into place) and returns the UploadedImage record that the job's request keeps; the job's
subprocess reads that file, and its run records the same sha256 (runs.details.input).

`check_upload` reads the stored file as `auditor audit` does
(auditor.workflows.audit.load_audit_image) against the dataset's shape, after comparing the
picture's header size with it, so that a small file that would decode into a huge image is
refused before it is decoded. Messages name the upload by the client's file name, never by
its path on the server. The size limit is the service's max_upload_bytes on the whole request
body (auditor.service.middleware.BodyLimit: 413).
"""

from __future__ import annotations

import hashlib
import io
import os
from pathlib import Path
from typing import Literal, Sequence

from pydantic import BaseModel, ConfigDict, Field

from auditor.errors import NotFoundError, StoreError, UserError
from auditor.exports.files import write_private
from pspc.data.arrays import NPY_MAGIC

__all__ = ["SUFFIXES", "UploadError", "UploadedImage", "check_upload", "identify", "store_upload", "upload_path"]

#: what an upload may be (the formats `auditor audit` reads) and the suffix it is kept with
SUFFIXES = {"png": ".png", "jpeg": ".jpg", "bmp": ".bmp", "webp": ".webp", "npy": ".npy"}
_PILLOW_FORMATS = ("PNG", "JPEG", "BMP", "WEBP")
UPLOADS = "uploads"


class UploadError(UserError):
    """An uploaded file that cannot be used: names it by the client's file name and says why."""


class UploadedImage(BaseModel):
    """An uploaded image as a job's request records it (the file itself is found by its sha256)."""

    model_config = ConfigDict(extra="forbid")

    sha256: str = Field(pattern=r"^[0-9a-f]{64}$", description="sha256 of the uploaded bytes")
    format: Literal["png", "jpeg", "bmp", "webp", "npy"] = Field(description="what the content is (not its name)")
    bytes: int = Field(ge=1, description="its size")
    name: str = Field("", max_length=255, description="the file name the client gave (only to name it)")
    width: int | None = Field(None, ge=1, description="a picture's width, from its header")
    height: int | None = Field(None, ge=1, description="a picture's height, from its header")


def _label(record: UploadedImage) -> str:
    return f"the uploaded image {record.name!r}" if record.name else "the uploaded image"


def identify(data: bytes) -> tuple[str, tuple[int, int] | None]:
    """(format, (width, height) of a picture or None for an array) of uploaded bytes, by content."""
    if data.startswith(NPY_MAGIC):
        return "npy", None
    from PIL import Image

    try:
        with Image.open(io.BytesIO(data), formats=_PILLOW_FORMATS) as image:
            found = "jpeg" if image.format in ("JPEG", "MPO") else str(image.format).lower()
            size = image.size
    except Exception:  # noqa: BLE001 - Pillow raises UnidentifiedImageError, OSError, SyntaxError, ...
        found = None
    if found not in SUFFIXES:
        raise UploadError("the uploaded file is neither a PNG, JPEG, BMP or WebP image nor a .npy array (the types "
                          "`auditor audit` reads)")
    return found, (int(size[0]), int(size[1]))


def upload_path(jobs_dir: str | os.PathLike, record: UploadedImage) -> Path:
    """Where the upload is kept: <jobs folder>/uploads/<sha256>.<suffix>."""
    return Path(jobs_dir) / UPLOADS / f"{record.sha256}{SUFFIXES[record.format]}"


def _client_name(name: str | None) -> str:
    """The client's file name, as text to show: its last part, printable, at most 255 characters."""
    last = (name or "").replace("\\", "/").rsplit("/", 1)[-1]
    return "".join(ch for ch in last if ch.isprintable())[:255]


def store_upload(jobs_dir: str | os.PathLike, data: bytes, name: str | None = None) -> tuple[UploadedImage, bool]:
    """Check what `data` is and keep it under the jobs folder: (its record, whether the file is
    new: False when the same bytes were uploaded before). UploadError for an empty file or one
    of another type."""
    if not data:
        raise UploadError("the uploaded image is empty")
    found, size = identify(data)
    record = UploadedImage(sha256=hashlib.sha256(data).hexdigest(), format=found, bytes=len(data),
                           name=_client_name(name), width=size[0] if size else None,
                           height=size[1] if size else None)
    path = upload_path(jobs_dir, record)
    if path.is_file():
        return record, False
    path.parent.mkdir(parents=True, exist_ok=True)
    write_private(path, data)  # mode 0600, through a temporary file renamed into place
    return record, True


def check_upload(record: UploadedImage, path: Path, shape: Sequence[int]) -> None:
    """Read the stored upload as `auditor audit` does against the dataset's [C, H, W] `shape`:
    UploadError saying what does not fit (size, channels, type, values), NotFoundError when
    the file is gone, StoreError when it no longer has its sha256."""
    from auditor.workflows.audit import AuditInputError, load_audit_image

    label = _label(record)
    if not path.is_file():
        raise NotFoundError(f"{label} (sha256 {record.sha256[:12]}) is no longer in the jobs folder; upload it again")
    _, h, w = (int(v) for v in shape)
    if record.width is not None and (record.height, record.width) != (h, w):  # before decoding it
        raise UploadError(f"{label} is {record.height}x{record.width} (HxW), the dataset's images are {h}x{w}; resize "
                          "or crop it first (patches are compared position by position, so nothing is resized)")
    try:
        info = load_audit_image(path, shape)[1]
    except AuditInputError as exc:
        message = str(exc)
        for form in sorted({str(path.resolve()), str(path)}, key=len, reverse=True):
            message = message.replace(form, label)
        raise UploadError(message) from None
    if info["sha256"] != record.sha256:
        raise StoreError(f"{label}: the kept file no longer has sha256 {record.sha256[:12]}...; upload it again")
