"""Small training sets: random ones, the hostile set (HTML in its ids and metadata), the
first Fashion-MNIST images (skipped without the Debian package), and forward-process noise."""

from __future__ import annotations

import os

import pytest
import torch

from pspc.data.loaders import load_fashion_mnist
from pspc.data.training_set import TrainingSet

FASHION_MNIST_ROOT = os.environ.get("PSPC_FASHION_MNIST_ROOT", "/usr/share/datasets/fashion-mnist")
HOSTILE_ID = '<script>alert("id")</script>'


def random_training_set(count=10, channels=1, height=6, width=7, seed=0, xflip=False) -> TrainingSet:
    generator = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (count, channels, height, width), generator=generator, dtype=torch.uint8)
    return TrainingSet(images, [f"img-{i}" for i in range(count)], name="random", xflip=xflip)


def noisy(training_set: TrainingSet, t: torch.Tensor, seed=1, indices=None) -> torch.Tensor:
    """Forward-process samples z = x + t eps from the set (float32)."""
    generator = torch.Generator().manual_seed(seed)
    x = training_set.as_float()
    indices = list(range(len(t))) if indices is None else indices
    x = x[[i % len(training_set) for i in indices]]
    return x + t.float()[:, None, None, None] * torch.randn(x.shape, generator=generator)


def random_set() -> TrainingSet:
    """12 random 8x8 grey images with x-flips (the provenance-store tests' data)."""
    return random_training_set(count=12, channels=1, height=8, width=8, seed=3, xflip=True)


def fashion_mnist(limit: int = 200) -> TrainingSet:
    """The first `limit` Fashion-MNIST training images with x-flips (skip if the Debian package is absent)."""
    if not os.path.isdir(FASHION_MNIST_ROOT):
        pytest.skip("Fashion-MNIST not installed: apt-get install -y dataset-fashion-mnist")
    return load_fashion_mnist("train", limit=limit).with_xflip()


def hostile_set() -> TrainingSet:
    """Random 8x8 RGB data with x-flips whose ids and rights metadata contain HTML (to check escaping)."""
    generator = torch.Generator().manual_seed(7)
    images = torch.randint(0, 256, (10, 3, 8, 8), generator=generator, dtype=torch.uint8)
    ids = [HOSTILE_ID if i == 0 else f"img-{i}&<b>" if i == 1 else f"img-{i}" for i in range(10)]
    metadata = [{"label": i % 3, "label_name": f"class <i>{i % 3}</i>", "source_uri": f"https://example.org/img/{i}.png",
                 "owner": "Owner <script>x</script>" if i < 3 else f"owner {i}", "license": "CC-BY-4.0"}
                for i in range(10)]
    return TrainingSet(images, ids, metadata, name="hostile <set>", source="memory", xflip=True)
