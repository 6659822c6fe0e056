"""The sample report leads with the headline attribution score (auditor.store.scores): its largest
source is the headline score's first, labelled with the score and how far it can be trusted."""

import json
from pathlib import Path

import pytest

from auditor.service.pages import sample_report
from auditor.store.scores import HEADLINE_MEASURED, HEADLINE_SCORE, headline_trust, score_sources
from reports.render import render_sample
from tests.support.data import random_set
from tests.support.store import record

RESULTS = Path(__file__).resolve().parents[2] / "bench" / "results" / "attribution.json"


@pytest.fixture(scope="module")
def recorded(tmp_path_factory):
    return record(tmp_path_factory.mktemp("headline") / "store.duckdb", random_set(), num_samples=1, steps=4,
                  top_k=32, mass=1.0)


def test_the_reports_largest_source_is_the_headline_scores(recorded):
    report = sample_report(recorded.db, 1, 0)
    first = score_sources(recorded.db, 1, 0, score=HEADLINE_SCORE, top=1)[0]
    assert report.trajectory[0].image_index == first["image_index"]  # the trajectory section IS the headline
    assert report.trajectory[0].share == pytest.approx(first["score"], rel=1e-6)
    assert report.headline["score"] == HEADLINE_SCORE and report.headline["trust"] == headline_trust()
    html = render_sample(report)
    assert f"headline: {HEADLINE_SCORE}" in html and "LDS" in html and report.trajectory[0].image_id in html
    # the headline ranking is the first sources section, ahead of the final image's shares
    assert html.index(f"Top training sources: the headline, {HEADLINE_SCORE}") < html.index("Shares of the final image")


def test_the_measured_figures_are_the_benchmarks():
    results = json.loads(RESULTS.read_text())
    assert results["lds"]["headline"] == HEADLINE_SCORE  # the benchmark's headline rule chose it
    lds = results["lds"]["test"][HEADLINE_SCORE]
    assert HEADLINE_MEASURED["lds_rerun"] == pytest.approx((lds["b"]["mean"], lds["b"]["se"]), abs=5e-4)
    assert HEADLINE_MEASURED["lds_denoising"] == pytest.approx((lds["a"]["mean"], lds["a"]["se"]), abs=5e-4)
    mean = lambda values: sum(values) / len(values)  # noqa: E731
    assert HEADLINE_MEASURED["top10_mse"] == pytest.approx(mean(results["removal"][HEADLINE_SCORE]["10"]["mse"]),
                                                           rel=5e-3)
    assert HEADLINE_MEASURED["random10_mse"] == pytest.approx(mean(results["removal"]["random"]["10"]["mse"]),
                                                              rel=5e-3)


def test_every_measured_score_is_the_benchmarks():
    from auditor.store.scores import MEASURED_SCORES

    results = json.loads(RESULTS.read_text())
    for name, (a, a_se, b, b_se, top10) in MEASURED_SCORES.items():
        lds = results["lds"]["test"][name]
        assert (a, a_se, b, b_se) == pytest.approx((lds["a"]["mean"], lds["a"]["se"], lds["b"]["mean"], lds["b"]["se"]),
                                                   abs=5e-4), name
        removed = results["removal"][name]["10"]["mse"]
        assert top10 == pytest.approx(sum(removed) / len(removed), rel=5e-3), name


def test_the_fidelity_page_shows_the_measured_lds(tmp_path):
    from reports.pages.common import Pagination
    from reports.pages.fidelity import build_fidelity_list_page
    from reports.render import render_page

    html = render_page(build_fidelity_list_page([], pagination=Pagination.window(1, 20)))
    assert "How far the attribution can be trusted" in html and f"{HEADLINE_SCORE} <span class=\"muted\">(headline)" in html
    assert "0.307 ± 0.05" in html and "self-consistency" in html


def test_the_tuned_scores_use_the_parameters_the_benchmark_chose():
    from pspc.posterior.scores import INFORMATIVE_DEFAULT, STEP_WEIGHTS

    tuned = json.loads(RESULTS.read_text())["tuned"]
    assert list(INFORMATIVE_DEFAULT) == tuned["chosen_parameter"]
    assert [t for t, _ in STEP_WEIGHTS] == pytest.approx([t for t, _ in tuned["step_weights"]], rel=1e-4)
    assert [w for _, w in STEP_WEIGHTS] == pytest.approx([w for _, w in tuned["step_weights"]], abs=5e-4)
