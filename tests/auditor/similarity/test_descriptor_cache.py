"""The disk cache of the training entries' descriptors (auditor.similarity.descriptor_cache): a second
build describes nothing, a corrupt or mismatched file is recomputed and replaced, never trusted, and the
key changes with the pixels, the transform and the checkpoint."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from auditor.similarity.copy_detection import CopyDetectionIndex
from auditor.similarity.descriptor_cache import (
    CACHE_DIR_ENV, DescriptorCacheWarning, cache_dir, cache_key, entry_descriptors
)
from auditor.similarity.descriptor_evidence import DescriptorMatch
from auditor.similarity.descriptors import LearnedDescriptor, PixelCorrelationDescriptor
from auditor.similarity.learned_descriptor import CopyNet, NetConfig
from tests.support.data import random_training_set

pytestmark = pytest.mark.usefixtures("one_torch_thread")


class Counting(LearnedDescriptor):
    """A tiny learned descriptor (8x8 images) that counts the images its network describes."""

    def __init__(self, sha256: str = "ab" * 32, seed: int = 0):
        torch.manual_seed(seed)
        super().__init__(CopyNet(NetConfig(channels=(2, 2, 2, 2), dimension=4, image_size=(8, 8))), name="tiny",
                         sha256=sha256)
        self.described = 0

    def _embed(self, batch):
        self.described += len(batch)
        return super()._embed(batch)


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv(CACHE_DIR_ENV, str(tmp_path / "cache"))
    return tmp_path / "cache" / "descriptors"


@pytest.fixture
def images():
    return random_training_set(count=20, height=8, width=8, seed=4).images


def test_the_second_call_describes_nothing_and_returns_the_same_array(cache, images):
    descriptor = Counting()
    first = entry_descriptors(descriptor, images, xflip=True)
    assert descriptor.described == 40 and first.shape == (40, 4)
    assert torch.equal(first[20:], descriptor(images.flip(-1)))  # images, then their mirrors
    descriptor.described = 0
    second = entry_descriptors(descriptor, images, xflip=True)
    assert descriptor.described == 0 and torch.equal(first, second)
    key = cache_key(descriptor, images, True)
    assert sorted(p.name for p in cache.iterdir()) == [f"{key}.json", f"{key}.npy"]  # no temporary file left
    sidecar = json.loads((cache / f"{key}.json").read_text())
    assert sidecar["identity"]["checkpoint_sha256"] == "ab" * 32 and sidecar["shape"] == [40, 4]


def test_index_and_descriptor_match_use_the_cache(cache, images):
    from pspc.data.training_set import TrainingSet

    descriptor = Counting()
    training = TrainingSet(images, [str(i) for i in range(20)], xflip=True)
    built = CopyDetectionIndex.build(training, descriptor)
    assert descriptor.described == 40
    descriptor.described = 0
    match = DescriptorMatch(images, descriptor)
    again = CopyDetectionIndex.build(training, descriptor)
    assert descriptor.described == 0  # both from the cache the first build wrote
    queries = descriptor(images[:5])
    assert np.array_equal(built.nearest(queries, k=3)[0], again.nearest(queries, k=3)[0])
    assert [e.alignment["similarity"] for e in match(images[:5])] == pytest.approx([1.0] * 5)  # itself, found


@pytest.mark.parametrize("damage", ["flip a byte", "truncate", "other sidecar", "bad json", "no sidecar"])
def test_a_damaged_cache_file_is_recomputed_and_replaced(cache, images, damage):
    descriptor = Counting()
    expected = entry_descriptors(descriptor, images, xflip=True)
    key = cache_key(descriptor, images, True)
    array, sidecar = cache / f"{key}.npy", cache / f"{key}.json"
    if damage == "flip a byte":
        data = bytearray(array.read_bytes())
        data[-3] ^= 0xFF
        array.write_bytes(bytes(data))
    elif damage == "truncate":
        array.write_bytes(array.read_bytes()[:100])
    elif damage == "other sidecar":
        record = json.loads(sidecar.read_text())
        record["identity"]["training_fingerprint"] = "0" * 64
        sidecar.write_text(json.dumps(record))
    elif damage == "bad json":
        sidecar.write_text("{")
    else:
        sidecar.unlink()
    descriptor.described = 0
    with pytest.warns(DescriptorCacheWarning, match="not usable"):
        again = entry_descriptors(descriptor, images, xflip=True)
    assert descriptor.described == 40 and torch.equal(again, expected)
    descriptor.described = 0
    assert torch.equal(entry_descriptors(descriptor, images, xflip=True), expected)  # replaced: trusted again
    assert descriptor.described == 0


def test_the_key_changes_with_pixels_transform_and_checkpoint(images):
    descriptor = Counting()
    key = cache_key(descriptor, images, True)
    other = images.clone()
    other[0, 0, 0, 0] ^= 1
    assert len({key, cache_key(descriptor, other, True), cache_key(descriptor, images, False),
                cache_key(Counting(sha256="cd" * 32), images, True), cache_key(descriptor, images[:19], True)}) == 5
    assert cache_key(Counting(), images.clone(), True) == key  # same bytes, same key


def test_off_and_cheap_descriptors_are_not_cached(tmp_path, monkeypatch, images):
    monkeypatch.setenv(CACHE_DIR_ENV, "off")
    assert cache_dir() is None
    descriptor = Counting()
    entry_descriptors(descriptor, images, xflip=False)
    entry_descriptors(descriptor, images, xflip=False)
    assert descriptor.described == 40  # computed twice
    monkeypatch.setenv(CACHE_DIR_ENV, str(tmp_path / "cache"))
    entry_descriptors(PixelCorrelationDescriptor(8), images, xflip=True)
    assert not (tmp_path / "cache").exists()
    monkeypatch.delenv(CACHE_DIR_ENV)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_dir() == tmp_path / "xdg" / "pspc-auditor"


def test_an_unwritable_cache_folder_only_costs_the_cache(tmp_path, monkeypatch, images):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    monkeypatch.setenv(CACHE_DIR_ENV, str(blocker))
    descriptor = Counting()
    with pytest.warns(DescriptorCacheWarning, match="cannot write"):
        described = entry_descriptors(descriptor, images, xflip=False)
    assert torch.equal(described, descriptor(images))
