"""Fixtures of the export tests: a local CA (auditor.exports.signing) and a store holding every
kind of run an export meets.

`local_ca`: a CA and its signer in a temporary folder (session scope: EC keys, milliseconds).
`kinds_store`: random 8x8 data with x-flips (tests.support.data.random_set); run 1 is the
network-explained run of a comparison with the tiny network (tests.support.networks), run 2
its PSPC-Square run, run 3 the Gaussian samples-only run; run 4 a direct audit of training
image 5 (no network) with copy detection. Full weights (mass 1), 3x3 patches, 4 steps.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from auditor.exports.signing import LocalCA, create_local_ca
from auditor.store import database
from auditor.workflows.audit import record_audit
from auditor.workflows.comparison import record_comparison
from auditor.workflows.options import AuditOptions, ComparisonOptions
from pspc.data.training_set import TrainingSet
from tests.support.data import random_set
from tests.support.networks import tiny_network

FULL_WEIGHTS = dict(patch_size=3, top_k=64, mass=1.0)


@dataclass
class KindsStore:
    db: Path
    training_set: TrainingSet
    network_run: int
    pspc_run: int
    samples_only_run: int
    audit_run: int


@pytest.fixture(scope="session")
def local_ca(tmp_path_factory) -> LocalCA:
    return create_local_ca(tmp_path_factory.mktemp("ca") / "c2pa-ca")


@pytest.fixture(scope="session")
def kinds_store(tmp_path_factory) -> KindsStore:
    db = tmp_path_factory.mktemp("kinds") / "provenance.duckdb"
    database.upgrade(db)
    data = random_set()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny tensors: more threads only synchronise
    try:
        result = record_comparison(db, data, tiny_network(), options=ComparisonOptions(
            num_samples=1, steps=4, seed=5, denoisers=("pspc-square", "gaussian"), descriptor="pixel-correlation:8",
            copy_k=3, **FULL_WEIGHTS))
        audit = record_audit(db, data, data.as_float()[5], options=AuditOptions(
            noise_levels=(2.0, 0.5), draws=1, seed=7, descriptor="pixel-correlation:8", copy_k=2, **FULL_WEIGHTS))
    finally:
        torch.set_num_threads(threads)
    runs = result.run_ids
    return KindsStore(db, data, runs["network"], runs["pspc-square"], runs["gaussian"], audit.run_id)
