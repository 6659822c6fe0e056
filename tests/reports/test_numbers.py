"""Numbers a reader can read: one definition per figure (the "How to read this report" panel,
also in the JSON), "Captured" the same figure wherever it appears, the timeline's ESS its
median, colours that mean what they say, and heatmap labels inside the figure."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest

from auditor.service import pages as service_pages
from reports import plots, render
from reports.pages.common import Picture
from reports.pages.glossary import SAMPLE_DEFINITIONS
from reports.pages.network import NetworkComparison, SimilarityScore


@pytest.fixture(scope="module")
def report(fashion_store):
    return service_pages.sample_report(fashion_store.db, fashion_store.complete_run, 0)


def _cells(page: str, cls: str) -> list[str]:
    return [re.sub(r"<[^>]+>", " ", m).split()[0] for m in re.findall(rf'<td class="num {cls}">(.*?)</td>', page, re.S)]


def test_captured_is_one_figure_everywhere(report):
    page = render.render_sample(report)
    percent = render.environment().filters["percent"]
    timeline = _cells(page, "captured")
    assert timeline == [percent(s.captured) for s in report.timeline]
    # the patch-mean of patch_stats is another figure: it must not be what the page calls Captured
    assert any(percent(s.mass_mean) != percent(s.captured) for s in report.timeline)
    hero = re.search(r'id="captured">([^<]+)<', page)[1]
    final = report.timeline_step(report.final_step)
    assert hero == timeline[-1] == percent(final.captured) and report.sources_total == pytest.approx(final.captured)
    assert render.sample_plots(report)["stats"].startswith("data:image/png")


def test_timeline_ess_is_the_median(report):
    page = render.render_sample(report)
    number = render.environment().filters["number"]
    assert _cells(page, "ess") == [number(s.ess_median) for s in report.timeline]
    assert any(s.ess_mean > 2 * s.ess_median for s in report.timeline)  # the mean would mislead here


def test_every_figure_is_defined_once_on_the_page_and_in_the_json(report):
    page = render.render_sample(report)
    panel = page.split('id="how-to-read"', 1)[1].split("</section>", 1)[0]
    for definition in SAMPLE_DEFINITIONS:
        assert panel.count(f"<dt>{definition.term}</dt>") == 1 and page.count(f"<dt>{definition.term}</dt>") == 1
    terms = [d["term"] for d in json.loads(render.report_json(report, "none"))["definitions"]]
    assert terms == [d.term for d in SAMPLE_DEFINITIONS] and {"Captured", "Entropy", "ESS"} <= set(terms)
    timeline = page.split('id="timeline"', 1)[1].split("</thead>", 1)[0]
    assert "title=" not in timeline  # no figure explained only in a hover tooltip


def _network(score: float, flagged: bool) -> NetworkComparison:
    return NetworkComparison(network={"name": "net"}, image=Picture.of(np.zeros((1, 8, 8), np.float32), 64, "net"),
                             role="pspc-square", counterpart_role="network", counterpart_run_id=2, comparison_id=1,
                             scores=[SimilarityScore(descriptor="sscd", score=score, thresholds=[0.5, 0.6],
                                                     flag=0.6 if flagged else None, flagged=flagged)])


def test_high_agreement_with_the_network_is_good_news(random_store):
    db, run = random_store.db, random_store.complete_run
    agree = render.render_sample(service_pages.sample_report(db, run, 0, network=_network(0.964, True)))
    assert re.search(r'class="value big good" id="agreement">0.964<', agree)
    network = agree.split('id="network"', 1)[1].split("</section>", 1)[0]
    assert 'class="score agrees"' in network and "chip failed" not in network and "the same image" in network
    differ = render.render_sample(service_pages.sample_report(db, run, 0, network=_network(0.21, False)))
    assert re.search(r'class="value big warn" id="agreement">0.21<', differ) and "they differ" in differ
    assert "var(--bad)" not in agree.split("<body>", 1)[1]


@pytest.mark.parametrize("names", [["network", "pspc-square (tuned)"],
                                   ["network", "empirical", "gaussian", "cfdm", "pspc-square", "pspc-flex",
                                    "pspc-square (tuned)", "pspc-flex (tuned)"]])
def test_heatmap_labels_lie_inside_the_figure(names):
    n = len(names)
    figure = plots.similarity_figure(names, np.full((n, n), 0.7), "sscd_disc_mixup (resize-288, centre-crop-224, "
                                                                  "normalise-imagenet)")
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    renderer = FigureCanvasAgg(figure).get_renderer()
    figure.draw(renderer)
    box = figure.bbox
    texts = [t for ax in figure.axes for t in (*ax.get_xticklabels(), *ax.get_yticklabels(), ax.title) if t.get_text()]
    for text in texts:
        extent = text.get_window_extent(renderer)
        assert box.x0 - 1 <= extent.x0 and extent.x1 <= box.x1 + 1 and box.y0 - 1 <= extent.y0 and \
            extent.y1 <= box.y1 + 1, f"{text.get_text()!r} is cut off: {extent} outside {box}"
