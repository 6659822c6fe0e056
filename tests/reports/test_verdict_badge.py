"""The stored copy verdict on the sample report (issue 17): a badge at the top with its sentence,
red only for a calibrated copy / partial copy, and the same in the JSON and a `verdict` CSV section."""

from __future__ import annotations

import csv
import io

import pytest

from auditor.service import pages as service_pages
from auditor.store import calibrations
from auditor.similarity.verdict import Verdict
from reports import render
from reports.pages.sample import NO_VERDICT, verdict_badge
from tests.support.verdicts import INCONCLUSIVE, PARTIAL, verdict_store


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    path = tmp_path_factory.mktemp("verdicts") / "provenance.duckdb"
    return path, verdict_store(path)


def _badge(html: str) -> str:
    start = html.index('id="verdict"')
    return html[start:html.index("</p>", start)]


def test_partial_copy_badge_json_and_csv(store):
    path, info = store
    report = service_pages.sample_report(path, info["run_id"], 0)
    badge = _badge(render.render_sample(report))
    assert 'class="chip failed"' in badge and 'data-verdict="partial copy"' in badge
    for text in ("img-1", "box [0, 1, 2, 2]", "0.910 &gt;= calibrated threshold 0.800", "found 90% of copies",
                 "1.0% of novel images", "TPR 90.0%", "FPR 1.0%"):
        assert text in badge, text
    verdict = report.to_json("none")["verdict"]
    assert verdict["verdict"] == "partial copy" and verdict["alarm"] is True and verdict["calibration_id"] == 7
    assert verdict["region"] == {"box": [0, 1, 2, 2], "area": 0.44} and verdict["sources"] == PARTIAL["sources"]
    rows = [r for r in csv.DictReader(io.StringIO(render.report_csv(report))) if r["section"] == "verdict"]
    assert [(r["verdict"], r["descriptor"], float(r["score"]), float(r["threshold"]), float(r["tpr"]), float(r["fpr"]),
             r["image_id"], r["region"]) for r in rows] == \
        [("partial copy", "region-match", 0.91, 0.8, 0.9, 0.01, "img-1", "0 1 2 2")]


def test_inconclusive_is_grey_and_a_missing_verdict_is_said(store):
    path, info = store
    badge = _badge(render.render_sample(service_pages.sample_report(path, info["other_run"], 0)))
    assert 'data-verdict="inconclusive"' in badge and "failed" not in badge and "run auditor calibrate" in badge
    report = service_pages.sample_report(path, info["run_id"], 1)
    badge = _badge(render.render_sample(report))
    assert NO_VERDICT in badge and "failed" not in badge
    assert report.to_json("none")["verdict"] is None
    assert not [r for r in csv.DictReader(io.StringIO(render.report_csv(report))) if r["section"] == "verdict"]


def test_an_uncalibrated_copy_call_is_never_red():
    assert not verdict_badge({**PARTIAL, "calibration_id": None}).alarm
    assert not verdict_badge({**PARTIAL, "verdict": "no copy found"}).alarm
    assert verdict_badge({**PARTIAL, "verdict": "copy", "evidence": "exact-hash", "calibration_id": None,
                          "region": None}).alarm


@pytest.mark.parametrize("row", [PARTIAL, {**PARTIAL, "verdict": "copy", "region": None}, INCONCLUSIVE])
def test_the_badge_sentence_is_the_verdicts_own(row):
    verdict = Verdict(row["verdict"], row["reason"], row.get("evidence"), row.get("sources", []), row.get("score"),
                      row.get("threshold"), row.get("tpr"), row.get("fpr"), row.get("calibration_id"),
                      row.get("region"))
    assert verdict_badge(row).sentence == verdict.sentence


def test_a_cached_report_shows_a_verdict_stored_after_it(tmp_path):
    path = tmp_path / "provenance.duckdb"
    info = verdict_store(path)
    assert service_pages.sample_report(path, info["run_id"], 0).verdict.verdict == "partial copy"
    calibrations.store_verdicts(path, info["run_id"], {0: INCONCLUSIVE})  # same row count, other verdict
    assert service_pages.sample_report(path, info["run_id"], 0).verdict.verdict == "inconclusive"
