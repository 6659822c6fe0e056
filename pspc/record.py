"""What a result's record needs to be reproduced: package versions and sha256 digests.

One place for them, so that a run, a study, a trained network and the service all report
the same versions and hash files the same way.
"""

from __future__ import annotations

import hashlib
import os
import platform
import subprocess
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import torch

SOURCE_TREE = Path(__file__).resolve().parents[1]  # the repository root, when run from a checkout
CHUNK = 1 << 20


def package_version(package: str, missing: str | None = "not installed") -> str | None:
    """The installed version of `package`, or `missing`."""
    try:
        return version(package)
    except PackageNotFoundError:
        return missing


def own_version(with_commit: bool = False) -> str:
    """pspc-auditor's installed version, else the source tree's (pyproject.toml, and the git
    commit when `with_commit`); 'unknown' when neither can be read."""
    installed = package_version("pspc-auditor", None)
    if installed is not None:
        return installed
    try:
        import tomllib

        base = tomllib.loads((SOURCE_TREE / "pyproject.toml").read_text())["project"]["version"]
    except Exception:  # noqa: BLE001 - a missing version must not stop a run
        return "unknown"
    if not with_commit:
        return f"{base} (source tree)"
    git = ["git", "-C", str(SOURCE_TREE)]
    try:
        commit = subprocess.run([*git, "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                                timeout=5).stdout.strip()
        dirty = subprocess.run([*git, "status", "--porcelain", "--untracked-files=no"], capture_output=True,
                               text=True, timeout=5).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        commit, dirty = "", ""
    return f"{base} (source tree{', commit ' + commit if commit else ''}{', modified' if dirty else ''})"


def versions(*packages: str, missing: str | None = "not installed") -> dict:
    """python, torch, numpy and the named packages' versions (`missing` for absent ones)."""
    import numpy

    return {"python": platform.python_version(), "torch": torch.__version__, "numpy": numpy.__version__,
            **{name: package_version(name, missing) for name in packages}}


def file_sha256(path: str | os.PathLike, chunk: int = CHUNK) -> str:
    """sha256 of a file's bytes, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def module_sha256(module: torch.nn.Module) -> str:
    """sha256 of an in-memory module: its class and every tensor (name, dtype, shape, bytes)."""
    digest = hashlib.sha256(f"{type(module).__module__}.{type(module).__qualname__}".encode())
    for name, tensor in sorted(module.state_dict().items()):
        value = tensor.detach().cpu().contiguous()
        digest.update(f"{name}:{value.dtype}:{tuple(value.shape)}".encode())
        digest.update(value.view(torch.uint8).numpy().tobytes() if value.numel() else b"")
    return digest.hexdigest()


def environment(device: torch.device, *, packages: tuple[str, ...] = (), processor: bool = False,
                with_commit: bool = False) -> dict:
    """Where a result was computed: device, threads (torch's, and numba's, which run the
    fused CPU kernels), platform (and processor) and the versions of python, pspc-auditor,
    torch, numpy and `packages`. torch's thread count is left as it was: numba's first
    get_num_threads() starts its thread pool, which resets torch's to every core (a
    `--threads 1` training ran on all cores after its first record)."""
    import numba
    import numpy

    torch_threads = torch.get_num_threads()
    numba_threads = numba.get_num_threads()
    torch.set_num_threads(torch_threads)
    record = {
        "device": str(device),
        "cuda_device": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
        "torch_threads": torch_threads,
        "numba_threads": numba_threads,
        "platform": platform.platform(),
    }
    if processor:
        record["processor"] = platform.processor() or platform.machine()
    record["versions"] = {"python": platform.python_version(), "pspc-auditor": own_version(with_commit),
                          "torch": torch.__version__, "numpy": numpy.__version__,
                          **{name: package_version(name) for name in packages}}
    return record
