"""Shared fixtures: small training sets (random and a Fashion-MNIST slice)."""

import os

import pytest
import torch

from pspc.data.loaders import load_fashion_mnist
from pspc.data.training_set import TrainingSet

FASHION_MNIST_ROOT = os.environ.get("PSPC_FASHION_MNIST_ROOT", "/usr/share/datasets/fashion-mnist")


def random_training_set(count=10, channels=1, height=6, width=7, seed=0, xflip=False) -> TrainingSet:
    generator = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (count, channels, height, width), generator=generator, dtype=torch.uint8)
    return TrainingSet(images, [f"img-{i}" for i in range(count)], name="random", xflip=xflip)


@pytest.fixture(scope="session")
def fashion_slice() -> TrainingSet:
    """The first 24 Fashion-MNIST training images (skip if the Debian package is absent)."""
    if not os.path.isdir(FASHION_MNIST_ROOT):
        pytest.skip("Fashion-MNIST not installed: apt-get install -y dataset-fashion-mnist")
    return load_fashion_mnist("train", limit=24)


def noisy(training_set: TrainingSet, t: torch.Tensor, seed=1, indices=None) -> torch.Tensor:
    """Forward-process samples z = x + t eps from the set (float32)."""
    generator = torch.Generator().manual_seed(seed)
    x = training_set.as_float()
    indices = list(range(len(t))) if indices is None else indices
    x = x[[i % len(training_set) for i in indices]]
    return x + t.float()[:, None, None, None] * torch.randn(x.shape, generator=generator)
