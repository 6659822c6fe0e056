"""The attribution assertion carries the sample's stored copy verdict (issue 17), or says that
none is recorded; `auditor verify`'s store check compares it."""

from __future__ import annotations

from auditor.exports.assertion import (
    NOT_ASSESSED, assertion_images, attribution_assertion, compare_with_store, verdict_record
)
from auditor.store.read_models.exports import load_export_record
from tests.support.verdicts import verdict_store


def claim(db, run_id: int, sample_index: int) -> dict:
    record = load_export_record(db, run_id, sample_index, images=lambda d: assertion_images(d, 5))
    return attribution_assertion(record, top=5)


def test_the_stored_verdict_goes_into_the_assertion(tmp_path):
    db = tmp_path / "provenance.duckdb"
    info = verdict_store(db)
    partial = claim(db, info["run_id"], 0)["verdict"]
    assert partial["status"] == "assessed" and partial["verdict"] == "partial copy"
    assert (partial["score"], partial["threshold"], partial["tpr"], partial["fpr"]) == (0.91, 0.8, 0.9, 0.01)
    assert partial["calibration_id"] == 7 and partial["sources"][0]["image_id"] == "img-1"
    assert partial["region"] == {"box": [0, 1, 2, 2], "area": 0.44}  # the mask stays in the store
    assert claim(db, info["run_id"], 1)["verdict"] == NOT_ASSESSED  # sample 1 has no verdict
    assert claim(db, info["other_run"], 0)["verdict"]["verdict"] == "inconclusive"


def test_verify_notices_a_changed_verdict(tmp_path):
    db = tmp_path / "provenance.duckdb"
    info = verdict_store(db)
    stored = claim(db, info["run_id"], 0)
    assert compare_with_store(stored, stored) == []
    forged = {**stored, "verdict": {**stored["verdict"], "verdict": "no copy found"}}
    assert compare_with_store(forged, stored) == ["copy verdict: the image says 'no copy found', the store "
                                                  "'partial copy'"]
    assert verdict_record(None) is NOT_ASSESSED
