"""Calibrations and verdicts in the store (revision 0008, auditor.store.calibrations), `auditor calibrate`,
and the verdict of `auditor audit` (auditor.workflows.verdicts)."""

from __future__ import annotations

import pytest

from auditor.cli import copies as cli_copies
from auditor.errors import UserError
from auditor.similarity.calibration import CopyEvidence
from auditor.store import calibrations, database, datasets
from auditor.workflows.audit import record_audit
from auditor.workflows.options import AuditOptions
from auditor.similarity.calibration import RULES
from auditor.workflows.verdicts import CalibrationOptions, calibrate_store, record_verdicts, usable_calibrations
from pspc.data.loaders import load_fashion_mnist
from tests.support.cli import run_cli
from tests.support.data import fashion_mnist, random_set
from tests.support.store import fetch

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture
def db(tmp_path):
    path = tmp_path / "verdicts.duckdb"
    database.upgrade(path)
    return path


def thresholds_for(evidence: CopyEvidence, copy=1.0, partial=0.05) -> list[dict]:
    return [{"evidence": name, "fingerprint": source.fingerprint, "call": call, "threshold": value, "target_fpr": 0.005,
             "tpr": 0.9, "fpr": 0.004, "positives": 10, "negatives": 100, "families": ["exact"]}
            for (name, source), call, value in zip(evidence.sources.items(), ("copy", "partial copy"), (copy, partial))]


def test_migration_0008_creates_the_tables_and_downgrade_drops_them(tmp_path):
    path = tmp_path / "m.duckdb"
    database.upgrade(path, "0007")
    assert database.upgrade(path, "0008") == ("0007", "0008")
    tables = {r[0] for r in fetch(path, "SELECT table_name FROM duckdb_tables()")}
    assert {"copy_calibrations", "copy_verdicts"} <= tables
    assert database.upgrade(path, "0007") == ("0008", "0007")
    assert not {"copy_calibrations", "copy_verdicts"} & {r[0] for r in fetch(path, "SELECT table_name FROM duckdb_tables()")}


def test_calibrations_are_found_only_for_their_fingerprint_and_dataset(db):
    data = random_set()
    dataset_id, _ = datasets.ingest(db, data)
    evidence = CopyEvidence(data.images)
    ids = calibrations.store_calibrations(db, dataset_id, thresholds_for(evidence), {"command": ["test"]})
    fingerprints = {name: s.fingerprint for name, s in evidence.sources.items()}
    current = calibrations.current_calibrations(db, dataset_id, fingerprints)
    assert [current[n]["id"] for n in ("aligned-correlation", "region-match")] == ids
    assert current["region-match"]["record"] == {"command": ["test"], "families": ["exact"]}
    assert calibrations.current_calibrations(db, dataset_id, {**fingerprints, "region-match": "other"}).keys() == {
        "aligned-correlation"}
    assert calibrations.current_calibrations(db, dataset_id + 1, fingerprints) == {}
    newer = calibrations.store_calibrations(db, dataset_id, thresholds_for(evidence, copy=2.0), {})
    assert calibrations.current_calibrations(db, dataset_id, fingerprints)["aligned-correlation"]["id"] == newer[0]
    with pytest.raises(UserError, match="no dataset 99"):
        calibrations.store_calibrations(db, 99, thresholds_for(evidence), {})


@pytest.mark.slow
def test_audit_verdict_is_inconclusive_until_calibrated_then_calibrated(db):
    data = random_set()
    x = data.as_float()[2]
    options = AuditOptions(noise_levels=(1.0,), draws=2, patch_size=3, copy_k=0)
    first = record_audit(db, data, x, options=options)
    assert first.verdict.verdict == "copy" and first.verdict.evidence == "exact-hash"  # pixel-identical
    shifted = x.roll(1, dims=-1)
    uncalibrated = record_audit(db, data, shifted, options=options)
    assert uncalibrated.verdict.verdict == "inconclusive" and "run auditor calibrate" in uncalibrated.verdict.reason
    stored = calibrations.load_verdicts(db, uncalibrated.run_id)
    assert sorted(stored) == [0, 1] and stored[0]["verdict"] == "inconclusive" and stored[0]["threshold"] is None
    dataset_id = datasets.find_dataset(db, data.fingerprint)["id"]
    evidence = CopyEvidence(data.images)
    ids = calibrations.store_calibrations(db, dataset_id, thresholds_for(evidence, copy=50.0, partial=2.0), {})
    verdicts = record_verdicts(db, data, dataset_id, uncalibrated.run_id, shifted[None], evidence=evidence)
    assert verdicts[0].verdict == "no copy found" and verdicts[0].calibration_id == ids[0]
    assert verdicts[0].threshold == 50.0 and verdicts[0].tpr == 0.9
    assert calibrations.runs_with_verdict(db, "copy") == [first.run_id]
    assert calibrations.runs_with_verdict(db, "no copy found") == [uncalibrated.run_id]
    with pytest.raises(UserError, match="unknown verdict"):
        calibrations.runs_with_verdict(db, "maybe")


def test_cli_defaults_agree_with_the_options():
    assert (cli_copies.DEFAULT_PER_FAMILY, cli_copies.DEFAULT_NOVEL_COUNT, cli_copies.DEFAULT_TARGET_FPR,
            cli_copies.DEFAULT_RULE, cli_copies.DEFAULT_CONFIDENCE) == (
        CalibrationOptions.per_family, CalibrationOptions.novel_count, CalibrationOptions.target_fpr,
        CalibrationOptions.rule, CalibrationOptions.confidence)
    assert cli_copies.RULES == RULES


def _row(row_id: int, evidence: str, group: str | None = None, fingerprint: str | None = None) -> dict:
    record = {"joint": {"group": group}} if group else {}
    return {"id": row_id, "evidence": evidence, "evidence_fingerprint": fingerprint or f"fp-{evidence}",
            "record": record, "threshold": float(row_id)}


FINGERPRINTS = {"aligned-correlation": "fp-aligned-correlation", "region-match": "fp-region-match"}
WITH_DESCRIPTOR = {**FINGERPRINTS, "descriptor-match": "fp-descriptor-match"}


def test_jointly_chosen_thresholds_are_used_together_or_not_at_all():
    """A joint calibration's thresholds hold the union's bound only together: never mixed with another's."""
    two = [_row(4, "region-match", "B"), _row(3, "aligned-correlation", "B")]
    three = [_row(2, "descriptor-match", "A"), _row(1, "region-match", "A"), _row(0, "aligned-correlation", "A")]
    rows = two + three  # newest first: B (without descriptor-match) after A (with it)
    assert {n: r["id"] for n, r in usable_calibrations(rows, FINGERPRINTS).items()} == {
        "aligned-correlation": 3, "region-match": 4}
    # with descriptor-match, B does not cover it: all of A, not B's aligned and region mixed with A's descriptor
    assert {n: r["id"] for n, r in usable_calibrations(rows, WITH_DESCRIPTOR).items()} == {
        "descriptor-match": 2, "region-match": 1, "aligned-correlation": 0}
    # a group of another fingerprint does not count; an incomplete group leaves the verdict inconclusive
    other = [_row(4, "region-match", "B", "other"), _row(3, "aligned-correlation", "B")] + three
    assert {n: r["id"] for n, r in usable_calibrations(other, FINGERPRINTS).items()} == {
        "aligned-correlation": 0, "region-match": 1}
    assert set(usable_calibrations(two, WITH_DESCRIPTOR)) == {"aligned-correlation", "region-match"}
    # per-source rows (no group) are taken per source, as before; a newer complete set of them wins
    single = [_row(9, "descriptor-match"), _row(8, "region-match"), _row(7, "aligned-correlation")]
    assert {n: r["id"] for n, r in usable_calibrations(single + three, WITH_DESCRIPTOR).items()} == {
        "descriptor-match": 9, "region-match": 8, "aligned-correlation": 7}
    assert {n: r["id"] for n, r in usable_calibrations(single[:1] + three, WITH_DESCRIPTOR).items()} == {
        "descriptor-match": 2, "region-match": 1, "aligned-correlation": 0}


@pytest.mark.slow
def test_calibrate_stores_thresholds_and_the_cli_lists_them(db, tmp_path, capsys):
    train, novel = fashion_mnist(200), load_fashion_mnist("test", limit=120)
    result = calibrate_store(db, train, novel, CalibrationOptions(per_family=2, novel_count=40, target_fpr=0.05))
    assert [t["evidence"] for t in result.thresholds] == ["aligned-correlation", "region-match"]
    for t in result.thresholds:
        assert t["fpr"] <= 0.05 and 0 <= t["test_fpr"] <= 1 and 0 <= t["test_tpr"] <= 1
    joint, union = result.record["joint"], result.record["test"]["union"]
    assert joint["sources"] == ["aligned-correlation", "region-match"] and joint["negatives"] == 20
    assert not joint["bound_met"] and joint["false_positives"] == 0  # 20 novel images cannot bound 5 %: none called
    assert union["negatives"] == 20 and 0 <= union["fpr"] <= union["fpr_upper"] <= 1
    dataset_id = result.dataset_id
    fingerprints = {t["evidence"]: t["fingerprint"] for t in result.thresholds}
    used = usable_calibrations(calibrations.list_calibrations(db, dataset_id), fingerprints)
    assert sorted(r["id"] for r in used.values()) == sorted(result.ids)
    rows = calibrations.list_calibrations(db)
    assert [r["id"] for r in rows] == sorted(result.ids, reverse=True)
    assert rows[0]["record"]["novel"]["fingerprint"] == novel.fingerprint
    code, out, err = run_cli(capsys, "--db", db, "calibrate", "--list")
    assert code == 0, err
    assert "aligned-correlation" in out and "region-match" in out and "held-out TPR" in out
    code, out, err = run_cli(capsys, "--db", db, "calibrate", "--data", "fashion-mnist", "--limit", "200",
                             "--per-family", "2", "--novel-count", "40", "--rule", "per-source", "--target-fpr", "0.05")
    assert code == 0, err
    assert "novel images called copy or partial copy" not in out and "held out" in out  # no joint budget
    assert "cannot bound" not in err
    with pytest.raises(UserError, match="same size"):
        calibrate_store(db, random_set(), novel)
    code, out, err = run_cli(capsys, "--db", db, "calibrate", "--target-fpr", "2")
    assert code == 2 and "(0, 1)" in err
