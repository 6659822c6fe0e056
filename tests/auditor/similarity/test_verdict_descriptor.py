"""The learned descriptor in the copy verdict: which training sets get it (verdict_descriptor), and stored
verdicts (auditor.workflows.verdicts.judge) that use it only with its own calibration."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from auditor.similarity.calibration import CopyEvidence, verdict_descriptor
from auditor.similarity.cases import near_copy
from auditor.similarity.checkpoints import COPY_DESCRIPTOR_ENV
from auditor.similarity.descriptors import LearnedDescriptor, PixelCorrelationDescriptor, load_descriptor
from auditor.store import calibrations, database, datasets
from auditor.workflows.verdicts import judge
from pspc.data.loaders import load_fashion_mnist
from tests.support.data import fashion_mnist

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_the_verdict_has_no_descriptor_unless_one_is_configured(monkeypatch):
    monkeypatch.delenv(COPY_DESCRIPTOR_ENV, raising=False)
    images = fashion_mnist(300).images
    assert verdict_descriptor(images) is None and CopyEvidence(images).descriptor is None
    monkeypatch.setenv(COPY_DESCRIPTOR_ENV, "fmnist-copy")
    assert isinstance(verdict_descriptor(images), LearnedDescriptor)
    assert set(CopyEvidence(images).sources) == {"aligned-correlation", "region-match", "descriptor-match"}
    assert CopyEvidence(images, descriptor=None).descriptor is None
    monkeypatch.setenv(COPY_DESCRIPTOR_ENV, "pixel-correlation:8")
    assert isinstance(verdict_descriptor(images), PixelCorrelationDescriptor)
    monkeypatch.setenv(COPY_DESCRIPTOR_ENV, "none")
    assert verdict_descriptor(images) is None


@pytest.mark.slow
def test_auto_gives_the_learned_descriptor_only_on_the_set_it_was_trained_on(monkeypatch):
    monkeypatch.setenv(COPY_DESCRIPTOR_ENV, "auto")
    train = load_fashion_mnist("train")
    full = train.images
    found = verdict_descriptor(full)
    assert isinstance(found, LearnedDescriptor) and found.training_fingerprint == train.fingerprint
    assert verdict_descriptor(full[:300]) is None  # another training set: no borrowed descriptor
    assert verdict_descriptor(full.flip(-1)) is None  # same count and shape, other pixels
    assert verdict_descriptor(full, "none") is None


def _threshold(name, source, call, value, tpr=0.9) -> dict:
    return {"evidence": name, "fingerprint": source.fingerprint, "call": call, "threshold": value, "target_fpr": 0.005,
            "tpr": tpr, "fpr": 0.004, "positives": 10, "negatives": 100, "families": ["shift-2"]}


def test_stored_verdicts_use_descriptor_match_only_with_its_calibration(tmp_path):
    db = tmp_path / "verdicts.duckdb"
    database.upgrade(db)
    data = fashion_mnist(200)
    dataset_id, _ = datasets.ingest(db, data)
    evidence = CopyEvidence(data.images, descriptor=load_descriptor("fmnist-copy"))
    sources = evidence.sources
    calibrations.store_calibrations(db, dataset_id, [
        _threshold("aligned-correlation", sources["aligned-correlation"], "copy", 50.0),
        _threshold("region-match", sources["region-match"], "partial copy", 2.0)], {})
    shifted = near_copy(data.images[7:8].float(), "shift-2", np.random.default_rng(0)).round().clamp(0, 255)
    shifted = shifted.to(torch.uint8)
    [uncalibrated] = judge(db, data, dataset_id, shifted, evidence=evidence)
    assert uncalibrated.verdict == "inconclusive" and "descriptor-match" in uncalibrated.reason
    ids = calibrations.store_calibrations(db, dataset_id, [
        _threshold("descriptor-match", sources["descriptor-match"], "copy", 0.3, tpr=0.8)], {})
    [verdict] = judge(db, data, dataset_id, shifted, evidence=evidence)
    assert (verdict.verdict, verdict.evidence, verdict.threshold, verdict.calibration_id) == (
        "copy", "descriptor-match", 0.3, ids[0])
    assert verdict.sources[0]["image_index"] == 7 and not verdict.sources[0]["flip"]
    assert verdict.scores["aligned-correlation"]["threshold"] == 50.0
