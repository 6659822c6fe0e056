"""Fixtures of the provenance-store tests: small recorded runs, and what the engine computed.

`recorded_fashion`: one DuckDB file (session scope) with ONE run recorded on the first 200
Fashion-MNIST training images with x-flips (run 1, dataset 1, 2 samples, 18 Euler steps,
default top-k 16 / mass 0.99), plus every step's (t, z, D, weights) as the engine gave them
to the sampler callback. Skipped if the Debian package is absent.
`recorded_random`: random 8x8 data with flips, full weights (mass 1, top_k >= entries),
4 steps of fixed 3x3 patches, 3 samples.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import torch

from auditor.store import database
from auditor.workflows import sampling as runs
from pspc.data.loaders import load_fashion_mnist
from pspc.data.training_set import TrainingSet
from tests.conftest import FASHION_MNIST_ROOT, random_training_set


@dataclass
class Recorded:
    db: Path
    run_id: int
    training_set: TrainingSet
    steps: dict = field(default_factory=dict)  # step -> (t, z, D, weights) from the engine
    options: dict = field(default_factory=dict)


def record(db: Path, training_set: TrainingSet, **options) -> Recorded:
    """Record a run (upgrading the file first), keeping what the engine passed to the callback."""
    database.upgrade(db)
    captured = {}

    def keep(step, t, z, denoised, weights):
        captured[step] = (t, z.clone(), denoised.clone(), weights)

    run_id = runs.record_sampling_run(db, training_set, callback=keep, **options)
    return Recorded(db, run_id, training_set, captured, options)


def fashion_mnist(limit: int = 200) -> TrainingSet:
    if not os.path.isdir(FASHION_MNIST_ROOT):
        pytest.skip("Fashion-MNIST not installed: apt-get install -y dataset-fashion-mnist")
    return load_fashion_mnist("train", limit=limit).with_xflip()


FASHION_OPTIONS = dict(num_samples=2, steps=18, seed=0)
RANDOM_OPTIONS = dict(num_samples=3, steps=4, seed=5, patch_size=3, top_k=64, mass=1.0)


@pytest.fixture(scope="session")
def recorded_fashion(tmp_path_factory) -> Recorded:
    data = fashion_mnist()
    return record(tmp_path_factory.mktemp("fashion") / "provenance.duckdb", data, **FASHION_OPTIONS)


def random_set() -> TrainingSet:
    return random_training_set(count=12, channels=1, height=8, width=8, seed=3, xflip=True)


@pytest.fixture(scope="session")
def recorded_random(tmp_path_factory) -> Recorded:
    return record(tmp_path_factory.mktemp("random") / "provenance.duckdb", random_set(), **RANDOM_OPTIONS)


@pytest.fixture
def empty_db(tmp_path) -> Path:
    db = tmp_path / "provenance.duckdb"
    database.upgrade(db)
    return db


def engine_shares(weights, step_index_of_sample: int, num_images: int, patch_set) -> dict[int, float]:
    """share[image] of one sample from the engine's weights: sum_k,j w * (sum_{q in M_k} 1/cov(q)) / HW."""
    coverage = patch_set.coverage()
    patch_share = patch_set.patch_sums(1.0 / coverage) / coverage.numel()  # [K]
    out: dict[int, float] = {}
    for index, w in weights:
        rows = (index == step_index_of_sample).nonzero().flatten()
        if not len(rows):
            continue
        b = int(rows[0])
        entry, weight = w.entry[b], w.weight[b].to(torch.float64)
        valid = entry >= 0
        contribution = (weight * patch_share[:, None])[valid]
        images = (entry[valid] % num_images)
        totals = torch.zeros(num_images, dtype=torch.float64).index_add_(0, images, contribution)
        for i in totals.nonzero().flatten().tolist():
            out[i] = out.get(i, 0.0) + float(totals[i])
    return out
