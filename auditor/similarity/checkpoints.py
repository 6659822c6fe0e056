"""SSCD checkpoints: the official list, the download cache, and sha256 pinning.

Kept apart from the descriptors themselves: fetching a file once, verified, is its own
concern (and the seam the tests replace to prove the cache is used: `open_url`).
"""

from __future__ import annotations

import hashlib
import os
import re
import tempfile
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from auditor.errors import UserError

CACHE_ENV = "PSPC_SSCD_CACHE"  # folder for downloaded checkpoints
# the copy verdict's descriptor (auditor.similarity.calibration.verdict_descriptor): unset or "none" (default: no
# descriptor-match), "auto" (the committed learned descriptor on the training set it was trained on) or a
# load_descriptor spec such as fmnist-copy or learned:PATH
COPY_DESCRIPTOR_ENV = "PSPC_COPY_DESCRIPTOR"


class DescriptorError(UserError):
    """A descriptor cannot be loaded or computed: names the file or input and the problem."""


@dataclass(frozen=True)
class OfficialCheckpoint:
    """One of the TorchScript checkpoints the SSCD authors publish."""

    name: str
    url: str
    dimension: int
    trunk: str
    training: str
    sha256: str | None = None  # the authors publish no checksums: pin the one of a copy you trust


SSCD_BASE_URL = "https://dl.fbaipublicfiles.com/sscd-copy-detection"


def official(name: str, dimension: int, trunk: str, training: str) -> OfficialCheckpoint:
    return OfficialCheckpoint(name, f"{SSCD_BASE_URL}/{name}.torchscript.pt", dimension, trunk, training)


# From the README of facebookresearch/sscd-copy-detection ("Pretrained models"). The authors
# recommend sscd_disc_mixup as the default and sscd_disc_large as the more accurate option.
OFFICIAL_SSCD_CHECKPOINTS: dict[str, OfficialCheckpoint] = {
    c.name: c
    for c in (
        official("sscd_disc_blur", 512, "ResNet50", "DISC, strong blur"),
        official("sscd_disc_advanced", 512, "ResNet50", "DISC, advanced augmentations"),
        official("sscd_disc_mixup", 512, "ResNet50", "DISC, advanced augmentations + mixup"),
        official("sscd_disc_large", 1024, "ResNeXt101 32x4", "DISC, advanced augmentations + mixup"),
        official("sscd_imagenet_blur", 512, "ResNet50", "ImageNet, strong blur"),
        official("sscd_imagenet_advanced", 512, "ResNet50", "ImageNet, advanced augmentations"),
        official("sscd_imagenet_mixup", 512, "ResNet50", "ImageNet, advanced augmentations + mixup"),
    )
}


def default_cache_dir() -> Path:
    """$PSPC_SSCD_CACHE, else $XDG_CACHE_HOME/pspc-auditor/sscd, else ~/.cache/pspc-auditor/sscd."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base).expanduser() / "pspc-auditor" / "sscd"


def check_sha256(value: str | None, where: str) -> str | None:
    if value is None:
        return None
    value = str(value).strip().lower()
    if not re.fullmatch(r"[0-9a-f]{64}", value):
        raise DescriptorError(f"{where}: sha256 must be 64 hex digits, got {value!r}")
    return value


def open_url(url: str):
    """Open a URL for reading (a seam the tests replace to prove the cache is used)."""
    return urllib.request.urlopen(url, timeout=60)


def download(url: str, destination: Path, sha256: str,
              progress: Callable[[int, int | None], None] | None = None) -> None:
    """Stream `url` into `destination` atomically, removing it if its sha256 is not `sha256`."""
    destination.parent.mkdir(parents=True, exist_ok=True)
    digest = hashlib.sha256()
    handle, part = tempfile.mkstemp(prefix=destination.name + ".", suffix=".part", dir=destination.parent)
    try:
        with os.fdopen(handle, "wb") as out:
            try:
                response = open_url(url)
            except (OSError, ValueError) as error:
                raise DescriptorError(f"cannot download {url}: {error}") from error
            with response:
                length = response.headers.get("Content-Length") if getattr(response, "headers", None) else None
                total, done = (int(length) if length else None), 0
                while block := response.read(1 << 20):
                    out.write(block)
                    digest.update(block)
                    done += len(block)
                    if progress is not None:
                        progress(done, total)
        actual = digest.hexdigest()
        if actual != sha256:
            raise DescriptorError(
                f"sha256 mismatch for {url}: expected {sha256}, got {actual}; the downloaded file was removed")
        os.replace(part, destination)
    finally:
        if os.path.exists(part):
            os.remove(part)


def split_pinned_url(url: str) -> tuple[str, str | None]:
    """'https://host/x.pt#sha256=HEX' -> ('https://host/x.pt', 'HEX') (pip's pinning convention)."""
    parsed = urllib.parse.urlsplit(url)
    if parsed.fragment.startswith("sha256="):
        return urllib.parse.urlunsplit(parsed._replace(fragment="")), parsed.fragment[len("sha256="):]
    return url, None


def is_url(text: str) -> bool:
    return urllib.parse.urlsplit(text).scheme in ("http", "https", "file")
