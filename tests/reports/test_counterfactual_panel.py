"""The counterfactual sections of the sample report and the run page (reports.pages.counterfactual,
auditor.store.read_models.counterfactual): the panel's figures are the stored outcome, its
pictures are the images that outcome compares, a parent lists its counterfactuals, and a
counterfactual without a stored outcome shows none."""

from __future__ import annotations

import shutil

import numpy as np
import pytest

from auditor.store import calibrations, database
from auditor.store.counterfactuals import counterfactuals_of, load_counterfactual
from auditor.store.read_models.counterfactual import SampleCounterfactuals, load_sample_counterfactuals
from auditor.store.read_models.runs import load_run_page
from auditor.store.read_models.sample import SampleProvenance
from auditor.store.scores import HEADLINE_SCORE
from auditor.workflows.audit import record_audit
from auditor.workflows.counterfactual import record_counterfactual
from auditor.workflows.options import AuditOptions, CounterfactualOptions
from reports import maps
from reports.pages.common import Pagination
from reports.pages.counterfactual import CHANGE_COLORMAP, change_picture, counterfactual_list
from reports.pages.run import build_run_page
from reports.pages.sample import build_sample_report
from tests.support.counterfactuals import FAILURE, HOSTILE_OWNER, counterfactual_store
from tests.support.data import HOSTILE_ID, random_set
from tests.support.store import fetch


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    return counterfactual_store(tmp_path_factory.mktemp("counterfactual-pages") / "provenance.duckdb")


def report_of(db, run_id: int, sample_index: int = 0, **read):
    data = SampleProvenance.load(db, run_id, sample_index)
    found = load_sample_counterfactuals(db, data.run, data.dataset, sample_index, **read)
    return build_sample_report(data, counterfactuals=found)


def stored_image(db, sql: str, params) -> np.ndarray:
    (blob,), = fetch(db, sql, params)
    return np.frombuffer(blob, "<f4").reshape(3, 8, 8)


def test_the_panel_is_the_stored_outcome_and_the_images_it_compares(store):
    db = store.db
    panel = report_of(db, store.removed_by_id).counterfactual
    outcome = load_counterfactual(db, store.removed_by_id)
    assert (panel.parent_run_id, panel.parent_sample, panel.mode, panel.how) == (store.parent, 0, "resample", "by id")
    assert panel.sentence == ("sample 1/0 re-run without 2 training images: same initial noise, denoiser, patch sets "
                              "and sampler")
    assert [r.image_id for r in panel.removed] == [HOSTILE_ID, "img-1&<b>"] and panel.removed_more == 0
    assert all(r.thumbnail is not None for r in panel.removed)
    assert (panel.mse, panel.max_abs, panel.similarity, panel.descriptor, panel.diverged_step) == (
        outcome["mse"], outcome["max_abs"], outcome["similarity"], outcome["descriptor"], outcome["diverged_step"])
    assert (panel.seconds, panel.parent_seconds) == (outcome["seconds"], outcome["parent_seconds"])
    assert [(s.step, s.t, s.mse, s.max_abs) for s in panel.steps] == [
        (c["step"], c["t"], c["mse"], c["max_abs"]) for c in outcome["step_changes"]]
    assert [s.step for s in panel.steps if s.diverged] == ([outcome["diverged_step"]]
                                                           if outcome["diverged_step"] is not None else [])
    assert panel.verdict.verdict == calibrations.load_verdicts(db, store.removed_by_id)[0]["verdict"]
    assert panel.parent_verdict.verdict == calibrations.load_verdicts(db, store.parent)[0]["verdict"]
    # the pictures: the parent's final image, the counterfactual's, and their stored difference
    parent = stored_image(db, "SELECT final_image FROM samples WHERE run_id = ? AND sample_index = 0", [store.parent])
    image = stored_image(db, "SELECT final_image FROM samples WHERE run_id = ?", [store.removed_by_id])
    change = np.asarray(outcome["change_map"], np.float64)
    assert np.abs((image.astype(np.float64) - parent) - change).max() < 1e-6
    assert (panel.parent_image.rgb == maps.image_rgb(parent)).all() and (panel.image.rgb == maps.image_rgb(image)).all()
    shown = change.mean(axis=0)  # an RGB set: the mean over its channels, which the page says
    span = float(np.abs(shown).max())
    assert panel.change_note == "mean over the 3 channels" and panel.change_range == pytest.approx(span)
    assert (panel.change.rgb == maps.colormap(shown, CHANGE_COLORMAP, vmin=-span, vmax=span)).all()
    assert panel.cost_ratio == pytest.approx(outcome["seconds"] / outcome["parent_seconds"])
    assert report_of(db, store.removed_by_id).counterfactuals is None  # a counterfactual lists none of its own


def test_the_panel_travels_in_the_report_json(store):
    body = report_of(store.db, store.removed_by_id).to_json("none")
    assert body["counterfactual"]["mse"] == load_counterfactual(store.db, store.removed_by_id)["mse"]
    assert body["counterfactual"]["change"] is None and body["counterfactual"]["removed"][0]["image_id"] == HOSTILE_ID


def test_the_removed_list_is_cut_and_the_rest_counted(store):
    panel = report_of(store.db, store.removed_by_owner, removed=2).counterfactual
    assert panel.how == f"owner {HOSTILE_OWNER!r}" and panel.removed_count == 3
    assert [r.image_index for r in panel.removed] == [0, 1] and panel.removed_more == 1
    assert panel.verdict is None  # verdict=False: not assessed


def test_a_failed_or_running_counterfactual_shows_no_figures_and_says_why(store, tmp_path):
    panel = report_of(store.db, store.failed).counterfactual
    assert panel.status == "failed" and "failed" in panel.missing and "no figures" in panel.missing
    assert panel.sentence.startswith("sample 1/0 re-run without 2 training images")  # from the run's record
    assert (panel.mse, panel.change, panel.image, panel.steps, panel.removed) == (None, None, None, [], [])
    running = tmp_path / "running.duckdb"
    shutil.copy(store.db, running)
    with database.connect(running) as conn:
        conn.execute("UPDATE runs SET status = 'running', error = NULL WHERE id = ?", [store.failed])
    panel = report_of(running, store.failed).counterfactual
    assert panel.missing.startswith(f"Run {store.failed} is running") and panel.mse is None
    assert FAILURE not in panel.missing


def test_a_parent_lists_its_counterfactuals_oldest_first(store):
    listed = report_of(store.db, store.parent, 0).counterfactuals
    assert report_of(store.db, store.parent, 0).counterfactual is None
    stored = {r["run_id"]: r for r in counterfactuals_of(store.db, store.parent, 0)}
    assert [(r.run_id, r.status, r.removed_count) for r in listed.rows] == [
        (store.removed_by_id, "complete", 2), (store.removed_by_owner, "complete", 3), (store.failed, "failed", 2)]
    for row in listed.rows[:2]:
        outcome = stored[row.run_id]
        assert (row.mse, row.max_abs, row.similarity, row.diverged_step) == (
            outcome["mse"], outcome["max_abs"], outcome["similarity"], outcome["diverged_step"])
    assert listed.rows[2].mse is None and listed.rows[2].how == "the top 2 by " + HEADLINE_SCORE
    none = report_of(store.db, store.parent, 1).counterfactuals
    assert none.rows == [] and none.runnable and none.command == "auditor counterfactual 1/1 --top 10"
    assert none.api_body == {"dataset_id": 1, "run_id": 1, "sample_index": 1, "top": 10}


@pytest.mark.parametrize("run, reason", [
    ({"kind": "samples-only", "status": "complete"}, "no posterior weights"),
    ({"kind": "pspc", "status": "running"}, "run 7 is running"),
    ({"kind": None, "status": "failed"}, "run 7 is failed"),
])
def test_the_list_says_why_no_counterfactual_can_be_run(run, reason):
    listed = counterfactual_list(SampleCounterfactuals(), {"id": 7, "dataset_id": 1, **run}, 0)
    assert not listed.runnable and reason in listed.why_not
    assert counterfactual_list(SampleCounterfactuals(), {"id": 7, "dataset_id": 1, "kind": "counterfactual",
                                                         "status": "complete"}, 0) is None


@pytest.mark.slow
def test_a_replay_is_compared_with_the_parent_s_last_composite(tmp_path):
    """An audit's counterfactual replays its recorded states: the parent image is PSPC's
    composite at the audit's last step (not the audited image), here on grey images."""
    data = random_set()
    db = tmp_path / "store.duckdb"
    database.upgrade(db)
    audit = record_audit(db, data, data.as_float()[5], options=AuditOptions(
        noise_levels=(2.0, 0.5), draws=1, seed=7, top_k=64, mass=1.0, patch_size=3, copy_k=0))
    run_id = record_counterfactual(db, audit.run_id, 0, options=CounterfactualOptions(
        without=("img-5",), verdict=False)).run_id
    panel = report_of(db, run_id).counterfactual
    assert panel.mode == "replay" and "recorded trajectory replayed" in panel.sentence
    assert panel.parent_label == "Parent: its last step's PSPC composite"
    (blob,), = fetch(db, "SELECT denoised FROM steps WHERE run_id = ? ORDER BY step DESC LIMIT 1", [audit.run_id])
    assert (panel.parent_image.rgb == maps.image_rgb(np.frombuffer(blob, "<f4").reshape(1, 8, 8))).all()
    outcome = load_counterfactual(db, run_id)
    assert panel.change_note is None and panel.change_range == pytest.approx(outcome["max_abs"])  # one channel
    assert [r.image_id for r in panel.removed] == ["img-5"]


def test_the_change_map_is_white_at_zero_and_states_its_range():
    table = maps.colormap_table(CHANGE_COLORMAP)
    picture, span, note = change_picture(np.array([[[-0.5, 0.0], [0.25, 0.5]]]))
    assert span == 0.5 and note is None
    assert (picture.rgb[0, 0] == table[0]).all() and (picture.rgb[1, 1] == table[255]).all()
    assert (picture.rgb[0, 1] == table[128]).all()  # 0 is the scale's middle (near white)
    unchanged, span, _ = change_picture(np.zeros((1, 2, 2)))
    assert span == 0.0 and (unchanged.rgb == table[128]).all()  # not the low end of the scale


def test_the_run_page_of_a_counterfactual_names_its_parent(store):
    def page(run_id):
        return build_run_page(load_run_page(store.db, run_id, limit=24, offset=0), pagination=Pagination.window(1, 24))

    cf = page(store.removed_by_owner)
    assert (cf.origin.parent_run_id, cf.origin.parent_sample, cf.origin.how) == (1, 0, f"owner {HOSTILE_OWNER!r}")
    assert cf.origin_sentence.startswith("sample 1/0 re-run without 3 training images")
    assert page(store.parent).origin is None and page(store.parent).origin_sentence is None


def test_the_record_of_a_counterfactual_calls_its_denoiser_pspc_without_the_removed_images(store):
    from reports.render import render_page

    def html(run_id):
        return render_page(build_run_page(load_run_page(store.db, run_id, limit=24, offset=0),
                                          pagination=Pagination.window(1, 24)))

    counterfactual, parent = html(store.removed_by_owner), html(store.parent)
    assert "<dt>Denoiser</dt>" in counterfactual and "without the removed training images" in counterfactual
    assert "Explainer" not in counterfactual and 'class="chip kind-counterfactual"' in counterfactual
    assert "without the removed training images" not in parent


def test_every_run_kind_has_its_own_chip_colour():
    from pathlib import Path

    from auditor.store.run_kinds import KIND_NAMES

    css = (Path(__file__).resolve().parents[2] / "reports" / "templates" / "base.html").read_text()
    assert [kind for kind in KIND_NAMES if f".chip.kind-{kind} {{" not in css] == []
