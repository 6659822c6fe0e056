"""TrainingSet: validation, fingerprint, virtual x-flip entries."""

import numpy as np
import pytest
import torch

from pspc.data.training_set import TrainingSet, TrainingSetError, to_uint8
from tests.support.data import random_training_set


def test_fingerprint_identifies_shape_and_bytes():
    a = random_training_set(count=4)
    assert a.fingerprint == random_training_set(count=4).fingerprint
    changed = a.images.clone()
    changed[0, 0, 0, 0] ^= 1
    assert TrainingSet(changed, a.ids).fingerprint != a.fingerprint
    assert TrainingSet(a.images.reshape(4, 1, 7, 6), a.ids).fingerprint != a.fingerprint
    assert a.with_xflip().fingerprint == a.fingerprint  # flips are configuration, not data


def test_xflip_entries_are_virtual():
    base = random_training_set(count=3)
    flipped = base.with_xflip()
    assert flipped.images.data_ptr() == base.images.data_ptr()  # no copy
    assert flipped.num_entries == 6
    assert flipped.entry(4).index == 1 and flipped.entry(4).flip and flipped.entry(4).image_id == "img-1"
    assert not flipped.entry(1).flip
    with pytest.raises(IndexError):
        flipped.entry(6)
    assert torch.equal(flipped.entry_images()[4], base.as_float(dtype=torch.float64)[1].flip(-1))


@pytest.mark.parametrize("images, ids, message", [
    (np.zeros((0, 1, 4, 4), np.uint8), [], "empty"),
    (np.zeros((2, 2, 4, 4), np.uint8), ["a", "b"], "1 or 3 channels, got 2"),
    (np.zeros((2, 4, 4), np.uint8), ["a", "b"], r"\[N, C, H, W\]"),
    (np.zeros((2, 1, 4, 4), np.float32), ["a", "b"], "uint8"),
    (np.zeros((2, 1, 4, 4), np.uint8), ["a"], "1 ids for 2 images"),
    (np.zeros((2, 1, 4, 4), np.uint8), ["a", "a"], "'a' repeats"),
])
def test_bad_training_sets_are_named(images, ids, message):
    with pytest.raises(TrainingSetError, match=message):
        TrainingSet(images, ids, source="bad.npz")


def test_subset_keeps_ids_metadata_and_lookup():
    base = TrainingSet(np.arange(3 * 4, dtype=np.uint8).reshape(3, 1, 2, 2), ["x", "y", "z"],
                       [{"label": 0}, {"label": 1}, {"label": 2}])
    sub = base.subset([2, 0])
    assert sub.ids == ["z", "x"] and sub.metadata[0]["label"] == 2
    assert base.index_of("y") == 1
    with pytest.raises(KeyError, match="unknown training image id 'w'"):
        base.index_of("w")
    assert torch.equal(to_uint8(base.as_float()), base.images)
