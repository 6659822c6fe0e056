"""Fixtures of the provenance-store tests: small recorded runs, and what the engine computed.

`recorded_fashion`: one DuckDB file (session scope) with ONE run recorded on the first 200
Fashion-MNIST training images with x-flips (run 1, dataset 1, 2 samples, 18 Euler steps,
default top-k 16 / mass 0.99), plus every step's (t, z, D, weights) as the engine gave them
to the sampler callback. Skipped if the Debian package is absent.
`recorded_random`: random 8x8 data with flips, full weights (mass 1, top_k >= entries),
4 steps of fixed 3x3 patches, 3 samples.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from auditor.store import database
from tests.support.data import fashion_mnist, random_set
from tests.support.store import FASHION_OPTIONS, RANDOM_OPTIONS, Recorded, record


@pytest.fixture(scope="session")
def recorded_fashion(tmp_path_factory) -> Recorded:
    data = fashion_mnist()
    return record(tmp_path_factory.mktemp("fashion") / "provenance.duckdb", data, **FASHION_OPTIONS)


@pytest.fixture(scope="session")
def recorded_random(tmp_path_factory) -> Recorded:
    return record(tmp_path_factory.mktemp("random") / "provenance.duckdb", random_set(), **RANDOM_OPTIONS)


@pytest.fixture
def empty_db(tmp_path) -> Path:
    db = tmp_path / "provenance.duckdb"
    database.upgrade(db)
    return db
