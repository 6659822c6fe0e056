"""Fixtures of the report tests: small recorded stores (`random_store`, the hostile one, is in
tests/conftest.py: the service's page tests use it too).

`fashion_store`: the first 200 Fashion-MNIST training images with x-flips, run 1 with 2
samples and 6 Euler steps (PSPC-Square on the default schedule, top-k 16, mass 0.99).
Skipped without the Debian package.
`comparison_store`: a network comparison on the hostile set (tests.support.data.hostile_set).
"""

from __future__ import annotations

import pytest

from auditor.store import database
from auditor.workflows.options import ComparisonOptions
from tests.support.data import fashion_mnist, hostile_set
from tests.support.networks import GaussianNet
from tests.support.store import ComparisonStore, Store, record


@pytest.fixture(scope="session")
def fashion_store(tmp_path_factory) -> Store:
    data = fashion_mnist(200)
    recorded = record(tmp_path_factory.mktemp("reports-fashion") / "provenance.duckdb", data, num_samples=2, steps=6,
                      seed=0, command=["auditor", "sample", "--limit", "200", "--num", "2", "--steps", "6"])
    return Store(recorded.db, data, recorded.run_id)


@pytest.fixture(scope="session")
def comparison_store(tmp_path_factory) -> ComparisonStore:
    """A network comparison (auditor.workflows.comparison) on the hostile set: network-explained run and a
    PSPC-Square run from the same noise, similarity and copy matches by the pixel-correlation
    descriptor (2 samples, 4 steps of 3x3 patches)."""
    from auditor.workflows import comparison

    db = tmp_path_factory.mktemp("reports-comparison") / "provenance.duckdb"
    database.upgrade(db)
    result = comparison.record_comparison(db, hostile_set(), GaussianNet(), options=ComparisonOptions(
        num_samples=2, steps=4, seed=3, patch_size=3, descriptor="pixel-correlation", copy_k=3))
    return ComparisonStore(db, result.network_run_id, result.run_ids["pspc-square"])
