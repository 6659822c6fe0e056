"""Fixtures of the report tests: small recorded stores.

`fashion_store`: the first 200 Fashion-MNIST training images with x-flips, run 1 with 2
samples and 6 Euler steps (PSPC-Square on the default schedule, top-k 16, mass 0.99).
Skipped without the Debian package.
`random_store`: random 8x8 RGB data with x-flips whose ids and rights metadata contain
HTML (to check escaping): run 1 complete (3 samples, 4 steps of 3x3 patches, full
weights), run 2 failed after its first 2 steps (an interrupted writer).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from auditor.store import database
from auditor.workflows import sampling as runs
from pspc.data.training_set import TrainingSet
from tests.auditor.conftest import fashion_mnist, record

HOSTILE_ID = '<script>alert("id")</script>'


@dataclass
class Store:
    db: Path
    training_set: TrainingSet
    complete_run: int
    failed_run: int | None = None


@pytest.fixture(scope="session")
def fashion_store(tmp_path_factory) -> Store:
    data = fashion_mnist(200)
    recorded = record(tmp_path_factory.mktemp("reports-fashion") / "provenance.duckdb", data, num_samples=2, steps=6,
                      seed=0, command=["auditor", "sample", "--limit", "200", "--num", "2", "--steps", "6"])
    return Store(recorded.db, data, recorded.run_id)


def hostile_set() -> TrainingSet:
    generator = torch.Generator().manual_seed(7)
    images = torch.randint(0, 256, (10, 3, 8, 8), generator=generator, dtype=torch.uint8)
    ids = [HOSTILE_ID if i == 0 else f"img-{i}&<b>" if i == 1 else f"img-{i}" for i in range(10)]
    metadata = [{"label": i % 3, "label_name": f"class <i>{i % 3}</i>", "source_uri": f"https://example.org/img/{i}.png",
                 "owner": "Owner <script>x</script>" if i < 3 else f"owner {i}", "license": "CC-BY-4.0"}
                for i in range(10)]
    return TrainingSet(images, ids, metadata, name="hostile <set>", source="memory", xflip=True)


class Interrupt(Exception):
    pass


@pytest.fixture(scope="session")
def random_store(tmp_path_factory) -> Store:
    data = hostile_set()
    db = tmp_path_factory.mktemp("reports-random") / "provenance.duckdb"
    recorded = record(db, data, num_samples=3, steps=4, seed=5, patch_size=3, top_k=64, mass=1.0)

    def stop(step, t, z, denoised, weights):
        if step == 1:
            raise Interrupt("stopped after step 1")

    with pytest.raises(Interrupt):
        runs.record_sampling_run(db, data, num_samples=2, steps=4, seed=9, patch_size=3, top_k=8, mass=0.9,
                                 callback=stop)
    return Store(db, data, recorded.run_id, recorded.run_id + 1)


class GaussianNet(torch.nn.Module):
    """A stand-in network with the EDM interface net(z, sigma): the optimal denoiser of N(0, I) data."""

    def forward(self, z, sigma):
        sigma = sigma.reshape(-1, 1, 1, 1).to(z.dtype)
        return z / (1 + sigma ** 2)


@dataclass
class ComparisonStore:
    db: Path
    network_run: int
    pspc_run: int


@pytest.fixture(scope="session")
def comparison_store(tmp_path_factory) -> ComparisonStore:
    """A network comparison (auditor.workflows.comparison) on the hostile set: network-explained run and a
    PSPC-Square run from the same noise, similarity and copy matches by the pixel-correlation
    descriptor (2 samples, 4 steps of 3x3 patches)."""
    from auditor.workflows import comparison

    db = tmp_path_factory.mktemp("reports-comparison") / "provenance.duckdb"
    database.upgrade(db)
    result = comparison.record_comparison(db, hostile_set(), GaussianNet(), num_samples=2, steps=4, seed=3,
                                          patch_size=3, descriptor="pixel-correlation", copy_k=3)
    return ComparisonStore(db, result.network_run_id, result.run_ids["pspc-square"])


def artifacts_dir(tmp_path: Path) -> Path:
    """Where tests keep artifacts (screenshots): $PSPC_TEST_ARTIFACTS, else a temporary folder."""
    folder = Path(os.environ.get("PSPC_TEST_ARTIFACTS") or tmp_path / "artifacts")
    folder.mkdir(parents=True, exist_ok=True)
    return folder


__all__ = ["HOSTILE_ID", "Store", "artifacts_dir", "database"]
