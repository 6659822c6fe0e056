"""Copy detection: faiss search against a brute-force numpy reference, IVF recall, flags,
training-set indexing (flips included), result records, Fig. 9 similarity matrix, persistence."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from auditor.similarity.copy_detection import (
    DEFAULT_THRESHOLDS, EXACT_MAX_ENTRIES, CopyDetectionError, CopyDetectionIndex, SimilarityMatrix,
    check_thresholds, choose_index, flag, similarity_matrix
)
from auditor.similarity.descriptors import PixelCorrelationDescriptor, SSCDDescriptor
from pspc.data.training_set import TrainingSet
from tests.support.networks import TinySSCD, save_script

pytestmark = [pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:DeprecationWarning")]


def unit_rows(array: np.ndarray) -> np.ndarray:
    return (array / np.linalg.norm(array, axis=1, keepdims=True)).astype(np.float32)


def fake_record(dimension: int) -> dict:
    """A descriptor record as Descriptor.describe() gives it, for precomputed descriptors."""
    return {"name": "test-vectors", "kind": "test", "dimension": dimension, "fingerprint": "0" * 64,
            "preprocessing": {"name": "none"}}


def brute_force(training: np.ndarray, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Exact nearest neighbours by inner product: a loop over queries, full sort."""
    entries, scores = [], []
    for q in queries.astype(np.float64):
        s = training.astype(np.float64) @ q
        order = np.argsort(-s, kind="stable")[:k]
        entries.append(order)
        scores.append(s[order])
    return np.array(entries), np.array(scores)


def clustered(num_clusters=40, per_cluster=50, dim=32, spread=0.25, seed=0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((num_clusters, dim))
    points = centres[:, None, :] + spread * rng.standard_normal((num_clusters, per_cluster, dim))
    return unit_rows(points.reshape(-1, dim))


def small_training_set(count=30, channels=1, size=12, seed=0, xflip=False) -> TrainingSet:
    generator = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (count, channels, size, size), generator=generator, dtype=torch.uint8)
    return TrainingSet(images, [f"train-{i}" for i in range(count)], name="small", xflip=xflip)


# -- thresholds ------------------------------------------------------------------------------

def test_flag_returns_the_highest_threshold_reached():
    assert DEFAULT_THRESHOLDS == (0.5, 0.6)
    assert flag(0.49) is None
    assert flag(0.5) == 0.5 and flag(0.59) == 0.5
    assert flag(0.6) == 0.6 and flag(0.97) == 0.6
    assert flag(0.35, thresholds=(0.3,)) == 0.3
    assert flag(0.75, thresholds=[0.8, 0.7]) == 0.7


@pytest.mark.parametrize("bad, message", [
    ((), "at least one"), ((0.5, 1.2), r"\[-1, 1\]"), ((float("nan"),), r"\[-1, 1\]"),
    ((0.5, 0.5), "repeat"), (("high",), "numbers"),
])
def test_bad_thresholds_are_refused(bad, message):
    with pytest.raises(CopyDetectionError, match=message):
        check_thresholds(bad)


# -- the index rule --------------------------------------------------------------------------

def test_index_rule_is_exact_up_to_the_limit_then_ivf():
    assert choose_index(EXACT_MAX_ENTRIES).kind == "flat" and choose_index(EXACT_MAX_ENTRIES).exact
    ivf = choose_index(EXACT_MAX_ENTRIES + 1)
    expected_nlist = round(4 * math.sqrt(EXACT_MAX_ENTRIES + 1))
    assert (ivf.kind, ivf.nlist, ivf.nprobe) == ("ivf", expected_nlist, expected_nlist // 16)
    assert ivf.train_size == 64 * expected_nlist and not ivf.exact
    medium = choose_index(100_000, exact_max_entries=1000)
    assert (medium.kind, medium.nlist, medium.nprobe, medium.train_size) == ("ivf", 1265, 79, 64 * 1265)
    small = choose_index(2000, exact_max_entries=100)  # round(4 sqrt(2000)) = 179, capped at 2000 // 39
    assert (small.kind, small.nlist, small.nprobe, small.train_size) == ("ivf", 51, 8, 2000)
    assert choose_index(2000, "ivf", nlist=10).nprobe == 8  # never fewer than 8 lists probed


@pytest.mark.parametrize("kwargs, message", [
    (dict(num_entries=0), "empty"),
    (dict(num_entries=10, kind="hnsw"), "unknown index kind"),
    (dict(num_entries=30, kind="ivf"), "at least 39 entries"),
    (dict(num_entries=1000, kind="ivf", nlist=100), r"nlist must be in \[1, 25\]"),
    (dict(num_entries=1000, kind="ivf", nlist=10, nprobe=11), r"nprobe must be in \[1, nlist = 10\]"),
    (dict(num_entries=1000, kind="flat", nprobe=4), "IVF index only"),
])
def test_bad_index_settings_are_refused(kwargs, message):
    with pytest.raises(CopyDetectionError, match=message):
        choose_index(**kwargs)


# -- searching -------------------------------------------------------------------------------

def test_exact_search_equals_brute_force():
    rng = np.random.default_rng(1)
    training = unit_rows(rng.standard_normal((500, 64)))
    queries = unit_rows(rng.standard_normal((20, 64)))
    index = CopyDetectionIndex.from_descriptors(training, fake_record(64))
    assert index.config.kind == "flat"
    entries, scores = index.nearest(queries, k=5)
    expected_entries, expected_scores = brute_force(training, queries, 5)
    assert entries.dtype == np.int64 and scores.dtype == np.float32
    assert np.array_equal(entries, expected_entries)
    assert np.abs(scores - expected_scores).max() < 1e-5
    assert index.nearest(torch.from_numpy(queries), k=1)[0][:, 0].tolist() == expected_entries[:, 0].tolist()


def test_ivf_recall_on_a_clustered_set():
    training = clustered()
    rng = np.random.default_rng(2)
    picks = rng.choice(len(training), 200, replace=False)
    queries = unit_rows(training[picks] + 0.05 * rng.standard_normal((200, training.shape[1])))
    exact_entries, exact_scores = brute_force(training, queries, 10)
    index = CopyDetectionIndex.from_descriptors(training, fake_record(32), kind="ivf", nlist=20, nprobe=4)
    assert index.config.kind == "ivf" and not index.config.exact
    entries, scores = index.nearest(queries, k=10)
    recall_at_1 = np.mean(entries[:, 0] == exact_entries[:, 0])
    recall_at_10 = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(entries, exact_entries)])
    assert recall_at_1 >= 0.95 and recall_at_10 >= 0.9
    found = entries >= 0
    assert np.abs(scores[found] - (training[entries[found]] * queries[:, None, :].repeat(10, 1)[found]).sum(-1)).max() < 1e-5


def test_ivf_probing_every_list_is_exact():
    training = clustered(seed=3)
    queries = unit_rows(np.random.default_rng(4).standard_normal((30, 32)))
    index = CopyDetectionIndex.from_descriptors(training, fake_record(32), kind="ivf", nlist=16, nprobe=16)
    entries, scores = index.nearest(queries, k=3)
    expected_entries, expected_scores = brute_force(training, queries, 3)
    assert np.array_equal(entries, expected_entries) and np.abs(scores - expected_scores).max() < 1e-5


def test_search_input_is_checked():
    index = CopyDetectionIndex.from_descriptors(unit_rows(np.eye(4, 8) + 0.1), fake_record(8))
    assert index.nearest(np.ones((1, 8), np.float32) / math.sqrt(8), k=10)[0].shape == (1, 4)  # k clamped to N
    with pytest.raises(CopyDetectionError, match=r"\[B, 8\]"):
        index.nearest(np.ones((2, 7), np.float32))
    with pytest.raises(CopyDetectionError, match="NaN"):
        index.nearest(np.full((1, 8), np.nan, np.float32))
    with pytest.raises(CopyDetectionError, match="k must be at least 1"):
        index.nearest(np.ones((1, 8), np.float32), k=0)
    with pytest.raises(CopyDetectionError, match="lacks"):
        CopyDetectionIndex.from_descriptors(np.eye(4, dtype=np.float32), {"name": "x"})
    with pytest.raises(CopyDetectionError, match="2 ids for 4"):
        CopyDetectionIndex.from_descriptors(np.eye(4, dtype=np.float32), fake_record(4), ids=["a", "b"])
    with pytest.raises(CopyDetectionError, match="faiss-gpu"):
        CopyDetectionIndex.from_descriptors(np.eye(4, dtype=np.float32), fake_record(4), gpu=True)


# -- a training set, one call ----------------------------------------------------------------

def test_build_indexes_every_entry_including_flips():
    training_set = small_training_set(xflip=True)
    descriptor = PixelCorrelationDescriptor(size=12)
    progress = []
    index = CopyDetectionIndex.build(training_set, descriptor, batch_size=7, progress=lambda d, t: progress.append((d, t)))
    assert index.num_entries == 60 and index.include_flips
    assert progress[-1] == (60, 60) and [d for d, _ in progress] == sorted(d for d, _ in progress)
    originals = descriptor(training_set.images).numpy()
    mirrored = descriptor(training_set.images.flip(-1)).numpy()
    every_entry = np.concatenate([originals, mirrored])

    queries = torch.cat([training_set.images[[3, 8]], training_set.images[[5]].flip(-1)])
    result = index.detect(queries, k=4, sample_ids=["s0", "s1", "s2"])
    expected_entries, expected_scores = brute_force(every_entry, descriptor(queries).numpy(), 4)
    got = np.array([[m.entry for m in result.matches if m.sample == s] for s in range(3)])
    assert np.array_equal(got, expected_entries)
    assert np.abs(np.array([m.score for m in result.matches]) - expected_scores.flatten()).max() < 1e-5
    best = result.best()
    assert [(m.image_id, m.flip, m.sample_id) for m in best] == [("train-3", False, "s0"), ("train-8", False, "s1"),
                                                                  ("train-5", True, "s2")]
    assert all(abs(m.score - 1) < 1e-5 and m.flag == 0.6 for m in best)
    assert best[2].entry == 35 and best[2].image_index == 5


def test_build_without_flips_and_with_an_ivf_index():
    training_set = small_training_set(count=400, size=8, seed=5, xflip=True)
    progress = []
    index = CopyDetectionIndex.build(training_set, PixelCorrelationDescriptor(size=8), include_flips=False,
                                     exact_max_entries=100, progress=lambda d, t: progress.append((d, t)))
    assert index.num_entries == 400 and not index.include_flips
    assert index.config.kind == "ivf" and index.config.nlist == 10  # 400 // 39 caps round(4 sqrt(400)) = 80
    assert progress[-1] == (400 + index.config.train_size, 400 + index.config.train_size)
    result = index.detect(training_set.images[:20], k=1)
    assert [m.image_id for m in result.best()] == training_set.ids[:20]  # every image finds itself


def test_build_with_an_sscd_torchscript_descriptor(tmp_path):
    descriptor = SSCDDescriptor.load(save_script(TinySSCD(), tmp_path / "tiny.torchscript.pt"))
    training_set = small_training_set(count=12, channels=3, size=16, seed=9)
    index = CopyDetectionIndex.build(training_set, descriptor, batch_size=5)
    queries = training_set.images[[2, 7]]
    entries, scores = index.nearest(descriptor(queries), k=12)
    expected_entries, expected_scores = brute_force(descriptor(training_set.images).numpy(), descriptor(queries).numpy(), 12)
    assert np.abs(scores - expected_scores).max() < 1e-5
    assert entries[:, 0].tolist() == [2, 7]
    assert index.describe()["training_set"]["fingerprint"] == training_set.fingerprint


# -- records ---------------------------------------------------------------------------------

def test_results_carry_descriptor_preprocessing_and_thresholds():
    training_set = small_training_set()
    descriptor = PixelCorrelationDescriptor(size=12)
    index = CopyDetectionIndex.build(training_set, descriptor)
    result = index.detect(training_set.images[:2], k=3, thresholds=(0.3, 0.9))
    assert result.descriptor == descriptor.describe() and result.thresholds == (0.3, 0.9)
    assert result.index["config"]["kind"] == "flat" and result.index["config"]["exact"]
    assert len(result.matches) == 6 and result.k == 3 and result.num_samples == 2
    rows = result.rows()
    assert {r["descriptor"] for r in rows} == {descriptor.name}
    assert json.loads(rows[0]["preprocessing"]) == descriptor.preprocessing.describe()
    assert all(r["thresholds"] == [0.3, 0.9] and r["flag"] == flag(r["score"], (0.3, 0.9)) for r in rows)
    json.dumps(result.to_dict())  # storable as it is
    assert result.flagged(0.9) == [m for m in result.matches if m.score >= 0.9] and len(result.flagged(0.9)) == 2
    text = result.summary()
    assert descriptor.name in text and "fixed-12-luma" in text and "0.3, 0.9" in text and ">= 0.9" in text


def test_queries_must_use_the_index_descriptor():
    training_set = small_training_set()
    index = CopyDetectionIndex.build(training_set, PixelCorrelationDescriptor(size=12))
    with pytest.raises(CopyDetectionError, match="built with descriptor"):
        index.detect(training_set.images[:1], descriptor=PixelCorrelationDescriptor(size=8))
    with pytest.raises(CopyDetectionError, match="1 sample ids for 2"):
        index.detect(training_set.images[:2], sample_ids=["only-one"])
    bare = CopyDetectionIndex.from_descriptors(np.eye(4, dtype=np.float32), fake_record(4))
    with pytest.raises(CopyDetectionError, match="no descriptor attached"):
        bare.detect(training_set.images[:1])


def test_save_and_load_round_trip(tmp_path):
    training_set = small_training_set(count=200, size=8, seed=2)
    descriptor = PixelCorrelationDescriptor(size=8)
    index = CopyDetectionIndex.build(training_set, descriptor, kind="ivf", nlist=4, nprobe=2)
    queries = descriptor(training_set.images[:10])
    folder = index.save(tmp_path / "index")
    loaded = CopyDetectionIndex.load(folder, descriptor=descriptor, training_set=training_set)
    assert loaded.config == index.config and loaded.ids == index.ids
    for a, b in zip(index.nearest(queries, 5), loaded.nearest(queries, 5)):
        assert np.array_equal(a, b)
    assert loaded.detect(training_set.images[:1]).best()[0].image_id == training_set.ids[0]
    with pytest.raises(CopyDetectionError, match="built with descriptor"):
        CopyDetectionIndex.load(folder, descriptor=PixelCorrelationDescriptor(size=16))
    with pytest.raises(CopyDetectionError, match="built on training set"):
        CopyDetectionIndex.load(folder, training_set=small_training_set(count=200, size=8, seed=3))
    with pytest.raises(CopyDetectionError, match="not a saved copy-detection index"):
        CopyDetectionIndex.load(tmp_path / "elsewhere")


# -- Fig. 9 ----------------------------------------------------------------------------------

def test_similarity_matrix_is_the_mean_similarity_over_shared_noises():
    base = small_training_set(count=6, channels=1, size=12, seed=11).images
    noise = torch.randint(-40, 40, base.shape, generator=torch.Generator().manual_seed(1))
    sets = {"network": base, "pspc": (base.int() + noise).clamp(0, 255).to(torch.uint8),
            "other": small_training_set(count=6, size=12, seed=12).images}
    descriptor = PixelCorrelationDescriptor(size=12)
    matrix = similarity_matrix(sets, descriptor, thresholds=(0.5, 0.6))
    d = {name: descriptor(images).numpy().astype(np.float64) for name, images in sets.items()}
    for i, a in enumerate(sets):
        for j, b in enumerate(sets):
            pairs = [float(d[a][s] @ d[b][s]) for s in range(6)]
            assert abs(matrix.mean[i, j] - np.mean(pairs)) < 1e-5
            assert abs(matrix.std[i, j] - np.std(pairs)) < 1e-5
            assert matrix.fraction_above(0.5)[i, j] == np.mean([p >= 0.5 for p in pairs])
    assert np.allclose(matrix.mean, matrix.mean.T) and np.allclose(np.diag(matrix.mean), 1, atol=1e-5)
    assert matrix.mean[0, 1] > 0.6 > abs(matrix.mean[0, 2])  # a light perturbation stays a copy
    assert matrix.count == 6 and matrix.descriptor["name"] == descriptor.name
    rows = matrix.rows()
    assert len(rows) == 9 and rows[1]["a"] == "network" and rows[1]["b"] == "pspc"
    assert rows[1]["fraction_above"]["0.6"] == matrix.fraction_above(0.6)[0, 1]
    json.dumps(matrix.to_dict())
    assert "network" in matrix.summary() and descriptor.name in matrix.summary()


def test_similarity_matrix_input_is_checked():
    descriptor = PixelCorrelationDescriptor(size=8)
    images = small_training_set(count=4, size=8).images
    with pytest.raises(CopyDetectionError, match="same"):
        similarity_matrix({"a": images, "b": images[:3]}, descriptor)
    with pytest.raises(CopyDetectionError, match="at least one"):
        similarity_matrix({}, descriptor)
    with pytest.raises(CopyDetectionError, match="repeat"):
        similarity_matrix([("a", images), ("a", images)], descriptor)
    with pytest.raises(CopyDetectionError, match="samples of 'b'.*NaN"):
        similarity_matrix({"a": images, "b": torch.full((4, 1, 8, 8), float("nan"))}, descriptor)
    with pytest.raises(CopyDetectionError, match=r"\[B, 3\]"):
        SimilarityMatrix.from_descriptors({"a": np.ones((2, 4))}, fake_record(3))
