"""The shipped default calibration of the copy verdict (auditor.similarity.shipped) and its use by
auditor.workflows.verdicts.judge: only on exactly its training set and evidence parameters, stored once,
named in the verdict, and beaten by the store's own newer calibration.

Data: the first 200 Fashion-MNIST training images (with x-flips) and a shifted copy of image 7; the
"benchmark results" are hand-made with the current evidence's fingerprints.
"""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
import torch

from auditor.similarity import shipped as shipped_module
from auditor.similarity.calibration import CopyEvidence
from auditor.similarity.cases import near_copy
from auditor.similarity.shipped import (
    DEFAULT_VERDICT, ShippedCalibrationError, build_shipped, file_sha256, load_shipped, shipped_rows
)
from auditor.store import calibrations, database, datasets
from auditor.store.calibrations import verdict_sentence
from auditor.workflows.verdicts import CalibrationOptions, calibrate_store, judge
from pspc.data.loaders import load_fashion_mnist
from tests.support.data import fashion_mnist
from tests.support.store import fetch

pytestmark = pytest.mark.usefixtures("one_torch_thread")

PROVENANCE = "shipped calibration (bench/copy_detection.py)"


@pytest.fixture(scope="module")
def data():
    return fashion_mnist(200)


@pytest.fixture(scope="module")
def evidence(data):
    return CopyEvidence(data.images, xflip=data.xflip, descriptor="none")


@pytest.fixture(scope="module")
def shifted(data):
    image = near_copy(data.images[7:8].float(), "shift-2", np.random.default_rng(0)).round().clamp(0, 255)
    return image.to(torch.uint8)


@pytest.fixture
def db(tmp_path, data):
    path = tmp_path / "shipped.duckdb"
    database.upgrade(path)
    dataset_id, _ = datasets.ingest(path, data)
    return path, dataset_id


def results_for(evidence: CopyEvidence, aligned=0.5, region=0.3, **fingerprints) -> dict:
    """Benchmark results (bench/copy_detection.py's JSON) holding the default verdict's two rows, and a
    per-source row that is not the default."""
    joint = {"thresholds": {"aligned-correlation": aligned, "region-match": region}, "fpr": 0.005, "fpr_upper": 0.009,
             "target_fpr": 0.01, "confidence": 0.95, "bound_met": True}
    rows = []
    for name, call, value in (("aligned-correlation", "copy", aligned), ("region-match", "partial copy", region)):
        row = {"evidence": name, "fingerprint": fingerprints.get(name, evidence.sources[name].fingerprint),
               "call": call, "threshold": value, "target_fpr": 0.01, "tpr": 0.8, "fpr": 0.002, "positives": 60,
               "negatives": 200, "families": ["shift-2"] if call == "copy" else ["partial-50-rect"], "rule": "joint",
               "fpr_upper": 0.01, "confidence": 0.95, "joint": joint}
        rows += [{**row, "verdict": DEFAULT_VERDICT},
                 {**row, "rule": "per-source", "joint": None, "threshold": value / 2,
                  "verdict": "hash, aligned-correlation, region-match (per-source 0.005, the previous rule)"}]
    return {"command": "PYTHONPATH=. .venv/bin/python bench/copy_detection.py", "cases": {"per_family": 60},
            "calibration": rows, "machine": {"cpus": 2}}


def write_shipped(tmp_path, results: dict, description: dict):
    path = tmp_path / "shipped_calibrations.json"
    path.write_text(json.dumps(build_shipped(results, description)))
    return path


def count_rows(db_path) -> int:
    return fetch(db_path, "SELECT count(*) FROM copy_calibrations")[0][0]


def test_the_shipped_calibration_is_used_and_stored_once(tmp_path, db, data, evidence, shifted):
    db_path, dataset_id = db
    path = write_shipped(tmp_path, results_for(evidence), data.describe())
    [plain] = judge(db_path, data, dataset_id, shifted, evidence=evidence, shipped_path=None)
    assert plain.verdict == "inconclusive" and count_rows(db_path) == 0
    [unstored] = judge(db_path, data, dataset_id, shifted, evidence=evidence, shipped_path=path,
                       store_shipped=False)
    assert (unstored.verdict, unstored.threshold, unstored.calibration_id) == ("copy", 0.5, None)
    assert PROVENANCE in unstored.reason and count_rows(db_path) == 0
    [first] = judge(db_path, data, dataset_id, shifted, evidence=evidence, shipped_path=path)
    [second] = judge(db_path, data, dataset_id, shifted, evidence=evidence, shipped_path=path)
    assert first.verdict == "copy" and first.evidence == "aligned-correlation" and first.threshold == 0.5
    assert first.sources[0]["image_index"] == 7
    assert first.calibration_id is not None and second.calibration_id == first.calibration_id
    assert count_rows(db_path) == 2  # the two thresholds, once
    sha256 = file_sha256(path)
    assert PROVENANCE in first.reason and sha256[:12] in first.reason
    assert PROVENANCE in verdict_sentence(first.to_dict())
    command = "PYTHONPATH=. .venv/bin/python bench/copy_detection.py"
    assert first.scores["calibration"]["shipped"] == {"file": str(path), "sha256": sha256,
                                                      "source": "bench/copy_detection.py", "command": command}
    stored = calibrations.list_calibrations(db_path, dataset_id)
    assert {r["evidence"]: r["threshold"] for r in stored} == {"aligned-correlation": 0.5, "region-match": 0.3}
    assert {r["record"]["joint"]["group"] for r in stored} == {f"shipped-{sha256[:16]}"}
    assert all(r["record"]["shipped"]["sha256"] == sha256 for r in stored)


def test_the_shipped_calibration_is_never_borrowed_for_another_training_set(tmp_path, db, data, evidence, shifted):
    db_path, dataset_id = db
    other = write_shipped(tmp_path, results_for(evidence), fashion_mnist(100).describe())
    [verdict] = judge(db_path, data, dataset_id, shifted, evidence=evidence, shipped_path=other)
    assert verdict.verdict == "inconclusive" and "run auditor calibrate" in verdict.reason
    assert count_rows(db_path) == 0
    shipped = build_shipped(results_for(evidence), data.describe())
    fingerprints = {name: source.fingerprint for name, source in evidence.sources.items()}
    assert len(shipped_rows(shipped, data.fingerprint, True, fingerprints)) == 2
    assert shipped_rows(shipped, data.fingerprint, False, fingerprints) == []  # without the mirrored entries
    assert shipped_rows(shipped, fashion_mnist(100).fingerprint, True, fingerprints) == []


def test_the_shipped_calibration_needs_every_evidence_fingerprint(tmp_path, db, data, evidence, shifted):
    db_path, dataset_id = db
    path = write_shipped(tmp_path, results_for(evidence, **{"region-match": "other parameters"}), data.describe())
    [verdict] = judge(db_path, data, dataset_id, shifted, evidence=evidence, shipped_path=path)
    assert verdict.verdict == "inconclusive" and count_rows(db_path) == 0
    shipped = build_shipped(results_for(evidence), data.describe())
    fingerprints = {name: source.fingerprint for name, source in evidence.sources.items()}
    # a source the shipped file did not calibrate (the descriptor's): none of its thresholds, not a partial set
    assert shipped_rows(shipped, data.fingerprint, True, {**fingerprints, "descriptor-match": "fp"}) == []
    assert [r["evidence"] for r in shipped_rows(shipped, data.fingerprint, True, fingerprints)] == [
        "aligned-correlation", "region-match"]


def test_a_newer_calibration_of_the_store_wins_over_the_shipped_one(tmp_path, db, data, evidence, shifted):
    db_path, dataset_id = db
    path = write_shipped(tmp_path, results_for(evidence, aligned=-100.0), data.describe())
    [shipped] = judge(db_path, data, dataset_id, shifted, evidence=evidence, shipped_path=path)
    assert shipped.threshold == -100.0 and PROVENANCE in shipped.reason
    options = CalibrationOptions(per_family=2, novel_count=40, target_fpr=0.05, verdict_descriptor="none")
    result = calibrate_store(db_path, data, load_fashion_mnist("test", limit=120), options)
    [own] = judge(db_path, data, dataset_id, shifted, evidence=evidence, shipped_path=path)
    assert own.calibration_id in result.ids and own.calibration_id > shipped.calibration_id
    assert own.threshold == result.thresholds[0]["threshold"] != -100.0 and PROVENANCE not in own.reason
    assert "calibration" not in own.scores and count_rows(db_path) == 4


def test_a_corrupt_shipped_file_is_refused_naming_it(tmp_path, db, data, evidence, shifted):
    db_path, dataset_id = db
    path = tmp_path / "shipped_calibrations.json"
    assert load_shipped(path) is None  # absent: no shipped calibration
    path.write_text('{"thresholds": [')
    with pytest.raises(ShippedCalibrationError, match=re.escape(f"{path}: not a valid shipped copy calibration")):
        judge(db_path, data, dataset_id, shifted, evidence=evidence, shipped_path=path)
    path.write_text(json.dumps({"thresholds": []}))
    with pytest.raises(ShippedCalibrationError, match="training_set"):
        load_shipped(path)


def test_build_shipped_refuses_results_without_the_default_rows(evidence, data):
    results = results_for(evidence)
    with pytest.raises(ValueError, match="no default verdict's thresholds"):
        build_shipped({**results, "calibration": [r for r in results["calibration"] if r["rule"] == "per-source"]},
                      data.describe())
    with pytest.raises(ValueError, match="region-match"):
        build_shipped({**results, "calibration": results["calibration"][:2]}, data.describe())
    with pytest.raises(ValueError, match="no default verdict's thresholds"):
        build_shipped({"command": "x"}, data.describe())
    shipped = build_shipped(results, data.describe())
    assert [t["threshold"] for t in shipped["thresholds"]] == [0.5, 0.3]
    assert shipped["training_set"]["fingerprint"] == data.fingerprint and shipped["machine"] == {"cpus": 2}
    assert "test" not in shipped and "test_tpr" not in shipped["thresholds"][0]  # the results have no test half


def test_build_shipped_takes_the_test_half_rates_measured_at_its_thresholds(evidence, data):
    results = results_for(evidence)
    results["tables"] = {
        "aligned-correlation": [{"family": "shift-2", "cases": 30, "TPR @ cal": 0.6},
                                {"family": "novel", "cases": 2000, "TPR @ cal": 0.003}],
        "region-match": [{"family": "novel", "cases": 2000, "TPR @ cal": 0.004}]}  # its family is missing: omitted
    results["verdict"] = {DEFAULT_VERDICT: [{"family": "novel", "cases": 2000, "copy": 0.004,
                                             "partial copy": 0.002}]}
    shipped = build_shipped(results, data.describe())
    aligned, region = shipped["thresholds"]
    assert (aligned["test_tpr"], aligned["test_fpr"]) == (0.6, 0.003) and "test_tpr" not in region
    assert shipped["test"]["union"]["false_positives"] == 12 and shipped["test"]["union"]["negatives"] == 2000
    # tables measured at another threshold (the joint configuration with more sources) are not this one's rates
    more = DEFAULT_VERDICT.replace("region-match", "region-match, descriptor-match")
    aligned_row, region_row = (r for r in results["calibration"] if r["verdict"] == DEFAULT_VERDICT)
    results["calibration"] += [{**aligned_row, "threshold": 0.7, "verdict": more}, {**region_row, "verdict": more},
                               {**aligned_row, "evidence": "descriptor-match", "verdict": more}]
    assert "test_tpr" not in build_shipped(results, data.describe())["thresholds"][0]


def test_main_writes_the_file_and_refuses_stale_results(tmp_path, monkeypatch, capsys, data, evidence):
    monkeypatch.setattr("pspc.data.loaders.load_fashion_mnist", lambda split: data.with_xflip(False))
    results, out = tmp_path / "copy_detection.json", tmp_path / "out.json"
    results.write_text(json.dumps(results_for(evidence, **{"aligned-correlation": "an older version's"})))
    assert shipped_module.main(["--results", str(results), "--out", str(out)]) == 1
    assert "is stale: its aligned-correlation fingerprint" in capsys.readouterr().err and not out.exists()
    results.write_text(json.dumps(results_for(evidence)))
    assert shipped_module.main(["--results", str(results), "--out", str(out)]) == 0
    written = load_shipped(out)
    described = data.describe()
    assert written["training_set"] == {k: described[k] for k in ("fingerprint", "count", "shape", "xflip", "name")}
    assert [t["evidence"] for t in written["thresholds"]] == ["aligned-correlation", "region-match"]
