"""Exports honour their options and cover what the pages show: no image under images=none,
each drill-down thumbnail once and within its budget, a CSV with every section of the report
page, and the rights holder's export of a training image (every output that used it)."""

from __future__ import annotations

import csv
import io
import json
import re

import numpy as np
import pytest

from auditor.service import pages as service_pages
from auditor.store import attribution, database
from auditor.store.read_models.sample import SampleProvenance
from auditor.store.read_models.training_images import load_training_image
from reports import render
from reports.pages.sample_views import label_views, step_attribution
from reports.pages.training_image import build_training_image_export


def _csv(text: str) -> list[dict]:
    return list(csv.DictReader(io.StringIO(text)))


def test_images_none_leaves_out_every_image(random_store):
    report = service_pages.sample_report(random_store.db, random_store.complete_run, 0, all_steps=True)
    assert "data:image" in render.report_json(report)
    bare = render.report_json(report, images="none")
    assert "data:image" not in bare and "base64" not in bare
    drill = json.loads(bare)["views"][0]["drilldown"]
    assert drill["images"] and all(info["thumbnail"] is None and info["image_id"] for info in drill["images"].values())


def _script_data(page: str) -> dict:
    return json.loads(re.search(r'<script type="application/json" id="report-data">(.*?)</script>', page, re.S)[1])


def test_drilldown_pixel_rows_are_the_drilldown(random_store):
    report = service_pages.sample_report(random_store.db, random_store.complete_run, 1, all_steps=True,
                                         drilldown_top=4)
    data = _script_data(render.export_html(report))
    for view in report.views:
        drill, rows = view.drilldown, data["steps"][str(view.step)]["drilldown"]
        scale = rows["scale"]
        assert len(rows["pixel_row"]) == drill.height * drill.width
        for y in range(drill.height):
            for x in range(drill.width):
                cells = rows["rows"][rows["pixel_row"][y * drill.width + x]]
                kept = drill.image_index[y, x] >= 0
                assert cells[0] == round(drill.mass[y, x] * scale)
                assert cells[1::3] == drill.image_index[y, x][kept].tolist()
                assert cells[2::3] == np.rint(drill.weight[y, x][kept] * scale).astype(int).tolist()
                assert cells[3::3] == np.rint(drill.flip[y, x][kept] * scale).astype(int).tolist()


def test_each_drilldown_thumbnail_is_embedded_once(random_store):
    report = service_pages.sample_report(random_store.db, random_store.complete_run, 0, all_steps=True)
    page = render.export_html(report)
    data = _script_data(page)
    listed = {i for view in report.views for i in np.unique(view.drilldown.image_index).tolist() if i >= 0}
    assert {int(i) for i in data["images"]} == listed
    block = re.search(r'<script type="application/json" id="report-data">(.*?)</script>', page, re.S)[1]
    thumbnails = [info["thumbnail"] for info in data["images"].values() if "thumbnail" in info]
    assert thumbnails and all(block.count(uri) == 1 for uri in set(thumbnails))  # not once per step
    assert len(page) < 2 * 2**20


def test_drilldown_thumbnails_keep_to_their_budget(random_store):
    data = SampleProvenance.load(random_store.db, random_store.complete_run, 0)
    steps = [row.step for row in data.steps]
    with database.connect(random_store.db, read_only=True) as conn:
        data.fetch_images(conn, range(len(random_store.training_set)))
    views = [step_attribution(data, step, 10, 5, "top1", {}) for step in steps]
    label_views(data, views, budget=10**9)
    uris = {i: info["thumbnail"] for v in views for i, info in v.drilldown.images.items()}
    assert all(uris.values())
    largest = {}
    for v in views:
        for i, w in zip(v.drilldown.image_index.reshape(-1).tolist(), v.drilldown.weight.reshape(-1).tolist()):
            if i >= 0:
                largest[i] = max(largest.get(i, 0.0), w)
    ranked = sorted(largest, key=lambda i: (-largest[i], i))
    budget = sum(len(uris[i]) for i in ranked[:3])
    label_views(data, views, budget=budget)
    kept = {i for v in views for i, info in v.drilldown.images.items() if info["thumbnail"]}
    assert kept == set(ranked[:3])  # the images with the largest weight in some pixel, until the budget is spent
    assert all(info["image_id"] for v in views for info in v.drilldown.images.values())


def test_csv_covers_the_page(comparison_store):
    report = service_pages.sample_report(comparison_store.db, comparison_store.pspc_run, 0)
    rows = _csv(render.report_csv(report))
    assert tuple(rows[0]) == render.CSV_COLUMNS and {r["section"] for r in rows} == set(render.CSV_SECTIONS)
    timeline = [r for r in rows if r["section"] == "timeline"]
    assert [int(r["step"]) for r in timeline] == [s.step for s in report.timeline]
    for row, step in zip(timeline, report.timeline):
        assert float(row["captured"]) == step.captured and float(row["ess_median"]) == step.ess_median
        assert float(row["trajectory_weight"]) == step.coefficient and row["patches"] == step.patch
    copies = [r for r in rows if r["section"] == "copy"]
    assert [(int(r["image_index"]), r["descriptor"], float(r["score"])) for r in copies] == \
        [(c.image_index, c.descriptor, c.score) for c in report.copy_matches]
    assert all(r["flagged"] in ("true", "false") for r in copies)
    similarity = [r for r in rows if r["section"] == "similarity"]
    assert [(r["descriptor"], float(r["score"])) for r in similarity] == \
        [(s.descriptor, s.score) for s in report.network.scores]
    assert all(int(r["counterpart_run_id"]) == report.network.counterpart_run_id for r in similarity)
    network = [r for r in rows if r["section"] == "network-step"]
    assert [(int(r["step"]), float(r["mse"])) for r in network] == [(s.step, s.mse) for s in report.network.steps]


def test_rights_holder_export_lists_every_output(comparison_store):
    db = comparison_store.db
    with database.connect(db, read_only=True) as conn:
        image_index, image_id = conn.execute(
            "SELECT c.image_index, i.image_id FROM copy_matches c JOIN runs r ON r.id = c.run_id "
            "JOIN training_images i ON i.dataset_id = r.dataset_id AND i.image_index = c.image_index "
            "ORDER BY c.score DESC LIMIT 1").fetchone()
    data = load_training_image(db, 1, image_index, limit=1, offset=0)  # the page's first sample only
    export = build_training_image_export(data)
    usage = attribution.image_usage(db, 1, image_id)
    used = {(r["run_id"], r["sample_index"]): r["share"] for r in usage}
    got = {(o.run_id, o.sample_index): o for o in export.outputs}
    assert set(used) <= set(got) and len(got) > 1  # every sample, not the page's slice
    for key, share in used.items():
        assert got[key].final_share == pytest.approx(share, abs=1e-12)
    matched = [o for o in export.outputs if o.copy_matches]
    assert matched and all(m["score"] <= 1 and m["descriptor"] for o in matched for m in o.copy_matches)
    assert {o.run_kind for o in export.outputs} <= {"pspc", "network-explained"}
    rows = _csv(render.training_image_csv(export))
    assert tuple(rows[0]) == render.USAGE_COLUMNS and all(r["image_id"] == image_id for r in rows)
    assert {(int(r["run_id"]), int(r["sample_index"])) for r in rows} == set(got)
    scored = [r for r in rows if r["copy_score"]]
    assert len(scored) == sum(len(o.copy_matches) for o in export.outputs)
    body = json.loads(render.report_json(export, "none"))
    assert body["page"] == "TrainingImageExport" and len(body["outputs"]) == len(export.outputs)
