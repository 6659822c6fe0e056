"""The learned copy descriptor: the committed checkpoint, what it finds that pixel correlation misses, its
errors, and its place in the copy verdict (descriptor-match, calibrated on its own)."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch

from auditor.similarity.calibration import CALLS, CopyEvidence, calibrate
from auditor.similarity.cases import build_cases, near_copy, split_cases
from auditor.similarity.copy_detection import CopyDetectionIndex
from auditor.similarity.descriptor_training import TrainingOptions, save_descriptor, train_descriptor
from auditor.similarity.descriptors import (
    DescriptorError, LearnedDescriptor, PixelCorrelationDescriptor, load_descriptor
)
from auditor.similarity.evidence import Evidence
from auditor.similarity.learned_descriptor import DEFAULT_CHECKPOINT, SOURCE_TREE, NetConfig
from auditor.similarity.verdict import decide, judge_image
from pspc.data.loaders import load_fashion_mnist
from tests.support.data import fashion_mnist

IDS = [f"img-{i}" for i in range(10)]
CALIBRATED = {"aligned-correlation": {"id": 1, "threshold": 1.5, "tpr": 0.97, "fpr": 0.004},
              "region-match": {"id": 2, "threshold": 0.05, "tpr": 0.99, "fpr": 0.003}}
DESCRIPTOR_CALIBRATION = {"id": 3, "threshold": 0.4, "tpr": 0.9, "fpr": 0.005}
pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def learned() -> LearnedDescriptor:
    assert (SOURCE_TREE / DEFAULT_CHECKPOINT).is_file(), "the committed checkpoint is missing"
    return load_descriptor("fmnist-copy")


def evidence(score, entry=3):
    return Evidence(score, entry, [(entry, score)])


def test_committed_checkpoint_loads_and_embeds_to_unit_vectors(learned):
    assert isinstance(learned, LearnedDescriptor) and learned.kind == "learned"
    assert (SOURCE_TREE / DEFAULT_CHECKPOINT).stat().st_size < 1_000_000
    data = fashion_mnist(16)
    vectors = learned(data.images)
    assert vectors.shape == (16, learned.dimension) and vectors.dtype == torch.float32
    assert torch.allclose(vectors.norm(dim=1), torch.ones(16), atol=1e-5)
    assert torch.equal(learned(data.as_float()), vectors)  # floats in [-1, 1] score as their 8-bit pixels
    assert learned.training_fingerprint == load_fashion_mnist("train").fingerprint  # trained on these images
    record = learned.describe()
    assert record["checkpoint"]["sha256"] == learned.sha256 and record["training"]["seed"] == 0
    assert load_descriptor(f"learned:{SOURCE_TREE / DEFAULT_CHECKPOINT}").fingerprint == learned.fingerprint


def _rank_first(descriptor, training, queries, sources) -> float:
    index = CopyDetectionIndex.build(training, descriptor)
    entries, _ = index.nearest(descriptor(queries), k=1)
    return float(np.mean(entries[:, 0] % len(training) == sources))


def test_shifted_copies_are_found_by_the_learned_descriptor_not_by_pixel_correlation(learned):
    training = fashion_mnist(1000)
    rng = np.random.default_rng(0)
    sources = rng.permutation(len(training))[:40]
    originals = training.images[torch.from_numpy(sources)].float()
    queries = torch.cat([near_copy(originals[:20], "shift-1", rng), near_copy(originals[20:], "shift-2", rng)])
    queries = queries.round().clamp(0, 255).to(torch.uint8)
    assert _rank_first(learned, training, queries, sources) >= 0.9
    assert _rank_first(PixelCorrelationDescriptor(), training, queries, sources) <= 0.5
    # unshifted, both find them: the contrast is the shift
    exact = originals.to(torch.uint8)
    assert _rank_first(PixelCorrelationDescriptor(), training, exact, sources) == 1.0


def test_bad_input_is_refused_with_the_problem_named(learned):
    with pytest.raises(DescriptorError, match="1 or 3 channels"):
        learned(torch.zeros(2, 2, 28, 28, dtype=torch.uint8))
    nan = torch.zeros(2, 1, 28, 28)
    nan[1, 0, 3, 3] = float("nan")
    with pytest.raises(DescriptorError, match=r"NaN or infinite values \(batch rows \[1\]\)"):
        learned(nan)
    with pytest.raises(DescriptorError, match="trained on 28x28 images; got 32x32"):
        learned(torch.zeros(2, 1, 32, 32, dtype=torch.uint8))
    with pytest.raises(DescriptorError, match="no such learned-descriptor checkpoint"):
        load_descriptor("learned:/nonexistent/copy.pt")


def test_a_checkpoint_that_is_not_the_one_its_record_describes_is_refused(tmp_path):
    data = fashion_mnist(32)
    options = TrainingOptions(steps=1, batch=16, group=4, network=NetConfig(channels=(4, 8, 8, 8), dimension=8))
    path = tmp_path / "copy.pt"
    save_descriptor(train_descriptor(data.images, options), path)
    record = path.with_suffix(".json").read_text()
    save_descriptor(train_descriptor(data.images, replace(options, seed=5)), path)
    path.with_suffix(".json").write_text(record)
    with pytest.raises(DescriptorError, match="the record describes another checkpoint"):
        LearnedDescriptor.load(path)
    path.write_bytes(b"not a checkpoint")
    path.with_suffix(".json").unlink()
    with pytest.raises(DescriptorError, match="not a learned-descriptor checkpoint"):
        LearnedDescriptor.load(path)


def test_an_uncalibrated_learned_descriptor_gives_inconclusive():
    verdict = decide([], evidence(0.1), evidence(0.01), CALIBRATED, IDS, descriptor=evidence(0.95))
    assert verdict.verdict == "inconclusive"
    assert "no calibration for descriptor descriptor-match on this training set" in verdict.reason
    assert verdict.scores["descriptor-match"] == {"score": 0.95, "threshold": None}
    # it never borrows SSCD's 0.5 / 0.6 or another source's threshold: only its own calibration decides
    calibrated = {**CALIBRATED, "descriptor-match": DESCRIPTOR_CALIBRATION}
    copy = decide([], evidence(0.1), evidence(0.01), calibrated, IDS, descriptor=evidence(0.45, 7))
    assert (copy.verdict, copy.evidence, copy.threshold, copy.calibration_id) == ("copy", "descriptor-match", 0.4, 3)
    assert copy.sources[0]["image_id"] == "img-7"
    none = decide([], evidence(0.1), evidence(0.01), calibrated, IDS, descriptor=evidence(0.39))
    assert none.verdict == "no copy found" and "descriptor-match 0.390 < 0.400" in none.reason
    assert decide([], evidence(2.0), evidence(0.01), calibrated, IDS, descriptor=evidence(0.1)).evidence == \
        "aligned-correlation"


@pytest.mark.slow
def test_copy_evidence_with_the_learned_descriptor_is_calibrated_per_source(learned):
    train = fashion_mnist(300).images
    novel = load_fashion_mnist("test", limit=200).images
    cases = build_cases(train, novel, per_family=4, seed=0, novel_count=100)
    calibration, test = split_cases(cases)
    source = CopyEvidence(train, descriptor=learned)
    assert set(source.sources) == {"aligned-correlation", "region-match", "descriptor-match"}
    assert CALLS["descriptor-match"][0] == "copy"
    thresholds = {t.evidence: t for t in calibrate(source, calibration, target_fpr=0.02)}
    assert thresholds["descriptor-match"].fingerprint == source.descriptor.fingerprint != learned.fingerprint
    assert thresholds["descriptor-match"].fpr <= 0.02 and thresholds["descriptor-match"].tpr > 0.5
    shifted = test.of("shift-1").images[0]
    without = {name: {**t.to_dict(), "id": i} for i, (name, t) in enumerate(thresholds.items())
               if name != "descriptor-match"}
    assert judge_image(source, shifted, without, [str(i) for i in range(300)]).verdict == "inconclusive"
