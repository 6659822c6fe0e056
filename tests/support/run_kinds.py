"""A store holding one run of every kind on one dataset, as a rights holder's store might:
a network comparison (the network's own sample explained by PSPC, a PSPC-Square sample and a
Gaussian samples-only sample from the same noise) and an audit of a random-noise PNG file.

`every_kind_store(tmp_path_factory)` records it once per test process (seconds: numba
compiles the kernels on first use) and returns a private copy for each caller (the service
keeps its store open between requests).
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from auditor.store import database
from auditor.workflows.audit import record_audit
from auditor.workflows.comparison import record_comparison
from auditor.workflows.options import AuditOptions, ComparisonOptions
from tests.support.data import random_set
from tests.support.networks import GaussianNet

DESCRIPTOR = "pixel-correlation:8"
NOISE_FILE = "random-noise.png"


@dataclass(frozen=True)
class EveryKind:
    """The store's file and its runs: network (network-explained), pspc (a PSPC sample),
    gaussian (samples-only) and audit (of the noise file, whose sha256 is noise_sha256)."""

    db: Path
    network: int
    pspc: int
    gaussian: int
    audit: int
    noise_sha256: str
    network_name: str = "GaussianNet"

    @property
    def outputs(self) -> set[int]:
        return {self.network, self.pspc, self.gaussian}


_RECORDED: dict[str, EveryKind] = {}


def _record(folder: Path) -> EveryKind:
    db = folder / "provenance.duckdb"
    database.upgrade(db)
    data = random_set()
    noise = folder / NOISE_FILE
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (8, 8), dtype=np.uint8)).save(noise)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny tensors: more threads only synchronise
    try:
        comparison = record_comparison(db, data, GaussianNet(), options=ComparisonOptions(
            num_samples=2, steps=3, seed=3, patch_size=3, denoisers=("pspc-square", "gaussian"), descriptor=DESCRIPTOR,
            copy_k=2))
        audit = record_audit(db, data, noise, options=AuditOptions(
            noise_levels=(1.0, 0.3), draws=1, seed=0, patch_size=3, descriptor=DESCRIPTOR, copy_k=2))
    finally:
        torch.set_num_threads(threads)
    runs = comparison.run_ids
    return EveryKind(db, runs["network"], runs["pspc-square"], runs["gaussian"], audit.run_id,
                     audit.details["input"]["sha256"])


def every_kind_store(tmp_path_factory) -> EveryKind:
    """A private copy of the store of every kind (recorded on the first call of the process)."""
    if "store" not in _RECORDED:
        _RECORDED["store"] = _record(tmp_path_factory.mktemp("every-kind"))
    recorded = _RECORDED["store"]
    copy = tmp_path_factory.mktemp("every-kind-copy") / "provenance.duckdb"
    shutil.copy(recorded.db, copy)
    return replace(recorded, db=copy)
