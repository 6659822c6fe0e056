"""The copy verdict's rules (auditor.similarity.verdict.decide) and the calibration of its thresholds."""

from __future__ import annotations

import numpy as np
import pytest

from auditor.similarity.calibration import CopyEvidence, calibrate
from auditor.similarity.cases import build_cases, split_cases
from auditor.similarity.evidence import Evidence
from auditor.similarity.verdict import INVERSION_BOUND, decide, judge_image
from pspc.data.loaders import load_fashion_mnist
from tests.support.data import fashion_mnist

IDS = [f"img-{i}" for i in range(10)]
CALIBRATED = {"aligned-correlation": {"id": 1, "threshold": 1.5, "tpr": 0.97, "fpr": 0.004},
              "region-match": {"id": 2, "threshold": 0.05, "tpr": 0.99, "fpr": 0.003}}


def evidence(score, entry=3, mask=None):
    box = (0, 0, 2, 2) if mask is not None else None
    return Evidence(score, entry, [(entry, score)], mask=mask, box=box)


def test_uncalibrated_evidence_is_inconclusive_and_names_what_to_run():
    verdict = decide([], evidence(9.0), evidence(0.9), {}, IDS)
    assert verdict.verdict == "inconclusive" and verdict.threshold is None
    assert "no calibration for descriptor aligned-correlation and region-match on this training set" in verdict.reason
    assert "run auditor calibrate" in verdict.reason
    partly = decide([], evidence(9.0), evidence(0.9), {"aligned-correlation": CALIBRATED["aligned-correlation"]}, IDS)
    assert partly.verdict == "inconclusive" and "region-match" in partly.reason and "aligned" not in partly.reason


def test_exact_pixels_are_a_copy_even_uncalibrated():
    verdict = decide([13], None, None, {}, IDS)
    assert verdict.verdict == "copy" and verdict.evidence == "exact-hash"
    assert verdict.sources == [{"entry": 13, "image_index": 3, "image_id": "img-3", "flip": True}]


def test_a_failed_inversion_is_inconclusive_whatever_else():
    verdict = decide([3], evidence(9.0), None, CALIBRATED, IDS, reconstruction={"max_abs_error": 1.56})
    assert verdict.verdict == "inconclusive" and verdict.reason.startswith("inversion failed")
    assert f"{INVERSION_BOUND:g}" in verdict.reason
    fine = decide([3], None, None, CALIBRATED, IDS, reconstruction={"max_abs_error": INVERSION_BOUND / 2})
    assert fine.verdict == "copy"


def test_calibrated_calls_carry_score_threshold_and_rates():
    copy = decide([], evidence(2.0), evidence(0.01), CALIBRATED, IDS)
    assert (copy.verdict, copy.score, copy.threshold, copy.tpr, copy.fpr, copy.calibration_id) == (
        "copy", 2.0, 1.5, 0.97, 0.004, 1)
    assert "copy of img-3" in copy.sentence and "97%" in copy.sentence
    mask = np.zeros((4, 4), bool)
    mask[:2, :2] = True
    partial = decide([], evidence(0.2), evidence(0.3, 5, mask), CALIBRATED, IDS)
    assert partial.verdict == "partial copy" and partial.sources[0]["image_id"] == "img-5"
    assert partial.region == {"box": [0, 0, 2, 2], "area": 0.25, "mask": ["1100", "1100", "0000", "0000"]}
    none = decide([], evidence(0.2), evidence(0.01), CALIBRATED, IDS)
    assert none.verdict == "no copy found" and none.threshold == 1.5 and "missed 3%" in none.reason
    assert none.to_dict()["scores"]["region-match"] == {"score": 0.01, "threshold": 0.05}


@pytest.mark.slow
def test_calibration_on_fashion_mnist_separates_copies_from_novel_images():
    train = fashion_mnist(300).images
    novel = load_fashion_mnist("test", limit=200).images
    cases = build_cases(train, novel, per_family=4, seed=0, novel_count=100)
    calibration, test = split_cases(cases)
    source = CopyEvidence(train)
    thresholds = {t.evidence: t for t in calibrate(source, calibration, target_fpr=0.02)}
    assert set(thresholds) == {"aligned-correlation", "region-match"}
    for t in thresholds.values():
        assert t.fpr <= 0.02 and t.negatives == 50 and t.tpr > 0.5
        assert t.fingerprint == source.sources[t.evidence].fingerprint
    calibrated = {name: {**t.to_dict(), "id": i} for i, (name, t) in enumerate(thresholds.items())}
    exact = test.of("exact")
    assert judge_image(source, exact.images[0], calibrated, [str(i) for i in range(300)]).verdict == "copy"
    with pytest.raises(ValueError, match="target_fpr"):
        calibrate(source, calibration, target_fpr=0)
