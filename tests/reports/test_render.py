"""Rendering: every page renders, data is escaped, the export is self-contained, JSON and CSV parse."""

from __future__ import annotations

import csv
import html.parser
import io
import json
import re

import numpy as np
import pytest
from PIL import Image

from auditor.service import pages as service_pages
from reports import plots, render
from reports.pages.common import Picture
from reports.pages.network import NetworkComparison, NetworkStep, SimilarityScore

from tests.support.data import HOSTILE_ID


class _Collector(html.parser.HTMLParser):
    """Every tag with its attributes, every script's text (parses the page as a browser would tokenise it)."""

    def __init__(self):
        super().__init__()
        self.tags: list[tuple[str, dict]] = []
        self.scripts: list[tuple[dict, str]] = []
        self._script = None

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))
        if tag == "script":
            self._script = (dict(attrs), [])

    def handle_data(self, data):
        if self._script is not None:
            self._script[1].append(data)

    def handle_endtag(self, tag):
        if tag == "script" and self._script is not None:
            self.scripts.append((self._script[0], "".join(self._script[1])))
            self._script = None


def parse(page: str) -> _Collector:
    collector = _Collector()
    collector.feed(page)
    return collector


@pytest.fixture(scope="module")
def hostile_report(random_store):
    return service_pages.sample_report(random_store.db, random_store.complete_run, 0, all_steps=True)


@pytest.mark.slow
def test_every_page_renders(random_store):
    db, run = random_store.db, random_store.complete_run
    pages = [service_pages.index_context(db), service_pages.index_context(db, q="img"),
             service_pages.run_context(db, run), service_pages.run_context(db, random_store.failed_run),
             service_pages.training_image_context(db, 1, 2),
             service_pages.sql_context(db, "SELECT * FROM runs"), service_pages.sql_context(db, "DROP TABLE runs")]
    for built in pages:
        page = render.render_page(built, render.Links(""))
        assert page.startswith("<!DOCTYPE html>") and page.rstrip().endswith("</html>")
        parse(page)
    sample = render.render_sample(service_pages.sample_report(db, run, 1, step=2), render.Links("/prefix"))
    for element in ('id="map-dominant"', 'id="map-concentration"', 'id="timeline"', 'id="record"', 'id="drill"',
                    'href="/prefix/runs/1/samples/1/export.html"', 'href="/prefix/datasets/1/images/'):
        assert element in sample
    failed = render.render_sample(service_pages.sample_report(db, random_store.failed_run, 0))
    assert "not there yet" in failed and "The final image is not recorded yet" in failed
    error = render.render_error(404, "no run <b>9</b>")
    assert "404" in error and "no run &lt;b&gt;9&lt;/b&gt;" in error


def test_training_data_is_escaped_everywhere(random_store, hostile_report):
    db = random_store.db
    pages = [render.render_sample(hostile_report), render.export_html(hostile_report),
             render.render_page(service_pages.training_image_context(db, 1, 0)),
             render.render_page(service_pages.index_context(db, q="script")),
             render.render_page(service_pages.sql_context(db, "SELECT image_id, owner FROM training_images"))]
    run_page = render.render_page(service_pages.run_context(db, random_store.complete_run))
    assert "hostile &lt;set&gt;" in run_page and "hostile <set>" not in run_page
    sample_uses_hostile = any(s.image_id == HOSTILE_ID for s in hostile_report.sources + hostile_report.trajectory)
    assert sample_uses_hostile
    for page in pages:
        parsed = parse(page)
        # the only scripts are the page's own: the JSON data block and the drill-down script
        assert len(parsed.scripts) <= 2
        assert "<script>alert" not in page and "<script>x</script>" not in page and "<i>0</i>" not in page
        assert "&lt;script&gt;alert(" in page or "\\u003cscript\\u003ealert(" in page
        for attrs, text in parsed.scripts:
            assert "alert(" not in text or "\\u003cscript\\u003ealert(" in text
    # the embedded data still carries the exact id
    data = next(text for attrs, text in parse(pages[0]).scripts if attrs.get("type") == "application/json")
    images = [info["image_id"] for info in json.loads(data)["images"].values()]
    assert HOSTILE_ID in images


def test_export_is_self_contained(hostile_report):
    page = render.export_html(hostile_report)
    parsed = parse(page)
    for tag, attrs in parsed.tags:
        for name in ("src", "href", "action", "poster", "data"):
            value = attrs.get(name)
            if value is None:
                continue
            assert not re.match(r"^\s*(https?:)?//", value), f"<{tag} {name}={value[:60]}> would make a request"
            if name == "src":
                assert value.startswith("data:"), f"<{tag} src={value[:60]}> is not inline"
            if name == "href":
                assert value.startswith(("#", "data:")), f"<{tag} href={value[:60]}> leads out of the file"
        assert not (tag == "link" and attrs.get("rel") == "stylesheet")
        assert not (tag == "script" and "src" in attrs)
    assert "@import" not in page and "url(http" not in page
    data = json.loads(next(text for attrs, text in parsed.scripts if attrs.get("type") == "application/json"))
    assert sorted(map(int, data["steps"])) == [s.step for s in hostile_report.timeline]
    for view in data["steps"].values():
        assert view["dominant"].startswith("data:image/png;base64,")
    images = [attrs["src"] for tag, attrs in parsed.tags if tag == "img"]
    assert len(images) > 20


def test_json_and_csv_exports_parse_and_agree(fashion_store):
    report = service_pages.sample_report(fashion_store.db, fashion_store.complete_run, 0)
    data = json.loads(render.report_json(report))
    assert data["run_id"] == fashion_store.complete_run and data["record"]["dataset"]["fingerprint"] == \
        fashion_store.training_set.fingerprint
    assert json.loads(render.report_json(report, images="none"))["image"] is None
    rows = list(csv.DictReader(io.StringIO(render.report_csv(report))))
    assert tuple(rows[0]) == render.CSV_COLUMNS
    final = [r for r in rows if r["section"] == "final"]
    assert [int(r["image_index"]) for r in final] == [s.image_index for s in report.sources]
    assert [float(r["share"]) for r in final] == [s.share for s in report.sources]
    assert all(r["step"] == str(report.final_step) for r in final) and "step 5" in final[0]["patches"]
    trajectory = [r for r in rows if r["section"] == "trajectory"]
    assert [r["image_id"] for r in trajectory] == [s.image_id for s in report.trajectory]
    steps = [r for r in rows if r["section"] == "step"]
    assert len(steps) == sum(len(s.top_sources) for s in report.timeline)
    assert {r["label_name"] for r in final} <= {s.label_name for s in report.sources}


@pytest.mark.slow
def test_plots_are_images(fashion_store):
    report = service_pages.sample_report(fashion_store.db, fashion_store.complete_run, 1)
    for png in (plots.step_stats_plot(report.timeline), plots.source_share_plot(report.timeline, report.sources),
                plots.network_error_plot([NetworkStep(step=s.step, t=s.t, mse=0.01 * (s.step + 1))
                                          for s in report.timeline])):
        image = Image.open(io.BytesIO(png))
        assert image.format == "PNG" and image.size[0] >= 600
    svg = plots.step_stats_plot(report.timeline, fmt="svg")
    assert svg.lstrip().startswith(b"<?xml") and b"<svg" in svg
    with pytest.raises(ValueError, match="format"):
        plots.step_stats_plot(report.timeline, fmt="gif")
    with pytest.raises(ValueError, match="nothing|no recorded"):
        plots.step_stats_plot([])
    uris = render.sample_plots(report)
    assert uris["stats"].startswith("data:image/png") and uris["shares"].startswith("data:image/png")
    assert uris["network"] is None
    assert render.sample_plots(report) == uris  # cached on the plotted numbers


@pytest.mark.slow
def test_network_and_copy_sections_render_when_present(comparison_store, random_store):
    db = comparison_store.db
    report = service_pages.sample_report(db, comparison_store.pspc_run, 0)
    page = render.render_sample(report)
    assert 'id="network"' in page and 'id="copies"' in page and "Network counterpart" in page
    assert "pixel-correlation-32x32 (not SSCD)" in page and "below thresholds 0.5, 0.6" in page
    assert render.sample_plots(report)["network"].startswith("data:image/png")
    parse(page)
    explained = render.render_sample(service_pages.sample_report(db, comparison_store.network_run, 0))
    assert "Network sample, explained by PSPC" in explained and "network-explained" in explained
    network = NetworkComparison(network={"name": "edm <net>"},
                                image=Picture.of(np.zeros((3, 8, 8), np.float32), 64, "net"),
                                role="pspc-square", counterpart_role="network", counterpart_run_id=7, comparison_id=1,
                                scores=[SimilarityScore(descriptor="sscd_disc_mixup", score=0.64, thresholds=[0.5, 0.6],
                                                        flag=0.6, flagged=True, preprocessing="resize-288")],
                                steps=[NetworkStep(step=0, t=80.0, mse=0.2, max_abs_error=0.9),
                                       NetworkStep(step=1, t=9.0, mse=0.1, max_abs_error=0.5)])
    flagged = render.render_sample(service_pages.sample_report(random_store.db, random_store.complete_run, 0,
                                                               network=network))
    assert "at or above threshold 0.6" in flagged and "edm &lt;net&gt;" in flagged and "resize-288" in flagged
    without = render.render_sample(service_pages.sample_report(random_store.db, random_store.complete_run, 0))
    assert 'id="network"' not in without and 'id="copies"' not in without


def test_script_json_cannot_close_the_script_element():
    text = str(render.script_json({"a": "</script><script>alert(1)</script>", "b": "&"}))
    assert "<" not in text and ">" not in text and "&" not in text
    assert json.loads(text) == {"a": "</script><script>alert(1)</script>", "b": "&"}
