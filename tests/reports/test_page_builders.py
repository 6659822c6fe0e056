"""The report contexts say exactly what auditor.store.attribution (the SQL views) says on a recorded store."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from auditor.service import pages
from auditor.store import attribution, database, runs
from auditor.store.database import NotFoundError
from auditor.store.example_queries import EXAMPLE_QUERIES
from auditor.store.read_models.sample import SampleProvenance
from reports.pages.common import MAX_PER_PAGE, Pagination
from reports.pages.sample import z_display

ABS = 1e-12


def _stores(request):
    return request.getfixturevalue(request.param)


@pytest.fixture(params=["fashion_store", "random_store"])
def store(request):
    return _stores(request)


def _steps(db, run_id, sample_index):
    with database.connect(db, read_only=True) as conn:
        return conn.execute("SELECT step, t, t_next FROM steps WHERE run_id = ? AND sample_index = ? ORDER BY step",
                            [run_id, sample_index]).fetchall()


def _patches(rows):
    return [(p.step, p.position, p.top, p.left, p.height, p.width, pytest.approx(p.weight, abs=1e-7)) for p in rows]


def test_final_sources_equal_the_sample_sources_view(store):
    for sample_index in (0, 1):
        report = pages.sample_report(store.db, store.complete_run, sample_index, top=8, patches=4)
        expected = attribution.sample_sources(store.db, store.complete_run, sample_index, top=8, patches=4)
        assert [s.image_index for s in report.sources] == [r["image_index"] for r in expected]
        for got, want in zip(report.sources, expected):
            assert got.share == pytest.approx(want["share"], abs=ABS)
            assert got.flip_share == pytest.approx(want["flip_share"], abs=ABS)
            for key in ("image_id", "label", "label_name", "source_uri", "owner", "license"):
                assert getattr(got, key) == want[key]
            assert _patches(got.patches) == [tuple(p[:6]) + (pytest.approx(p[6], abs=1e-7),) for p in want["patches"]]
        every = attribution.sample_sources(store.db, store.complete_run, sample_index, top=10**6)
        assert report.sources_total == pytest.approx(sum(r["share"] for r in every), abs=1e-9)


def test_trajectory_and_step_shares_equal_the_views(store):
    report = pages.sample_report(store.db, store.complete_run, 0, top=6, step_top=4)
    expected = attribution.trajectory_sources(store.db, store.complete_run, 0, top=6)
    assert [s.image_index for s in report.trajectory] == [r["image_index"] for r in expected]
    for got, want in zip(report.trajectory, expected):
        assert got.share == pytest.approx(want["share"], abs=ABS)
        assert got.flip_share == pytest.approx(want["flip_share"], abs=ABS)
    coefficients = attribution.step_coefficients(_steps(store.db, store.complete_run, 0))
    for k, row in enumerate(report.timeline):
        assert row.coefficient == pytest.approx(coefficients[row.step], abs=ABS)
        every = attribution.sample_sources(store.db, store.complete_run, 0, step=row.step, top=10**6, patches=0)
        want = every[:4]
        assert [s.image_index for s in row.top_sources] == [r["image_index"] for r in want]
        for got, ref in zip(row.top_sources, want):
            assert got.share == pytest.approx(ref["share"], abs=ABS)
            assert got.image_id == ref["image_id"]
        assert row.captured == pytest.approx(sum(r["share"] for r in every), abs=1e-9)
        # each source's share series is its share at every step
        shares = {r["image_index"]: r["share"] for r in every}
        for source in report.sources[:3] + report.trajectory[:3]:
            assert source.share_by_step[k] == pytest.approx(shares.get(source.image_index, 0.0), abs=ABS)


def test_pixel_maps_equal_pixel_attribution_and_pixel_sources(store):
    data = SampleProvenance.load(store.db, store.complete_run, 1)
    for row in data.steps:
        fast = data.pixel_attribution(row.step)
        slow = attribution.pixel_attribution(store.db, store.complete_run, 1, row.step)
        assert np.array_equal(fast["image_index"], slow["image_index"].numpy())
        assert np.array_equal(fast["flip"], slow["flip"].numpy())
        np.testing.assert_allclose(fast["weights"], slow["weights"].numpy(), rtol=0, atol=1e-12)
    # the drill-down lists pixel_sources' answer for every pixel checked
    last = data.steps[-1].step
    report = pages.sample_report(store.db, store.complete_run, 1, step=last, drilldown_top=3)
    drill = report.view.drilldown
    _, height, width = data.shape
    for y, x in [(0, 0), (height // 2, width // 2), (height - 1, width - 1), (1, width - 2)]:
        want = attribution.pixel_sources(store.db, store.complete_run, 1, last, y, x, top=3)
        got = [(int(i), w, f) for i, w, f in zip(drill.image_index[y, x], drill.weight[y, x], drill.flip[y, x]) if i >= 0]
        assert [g[0] for g in got] == [r["image_index"] for r in want]
        for (_, weight, flip), ref in zip(got, want):
            assert weight == pytest.approx(ref["weight"], abs=1e-12)
            assert flip == pytest.approx(ref["flip_share"], abs=1e-12)
        assert drill.mass[y, x] == pytest.approx(float(attribution.pixel_attribution(
            store.db, store.complete_run, 1, last)["weights"][:, y, x].sum()), abs=1e-12)
        for ref in want:
            assert drill.images[ref["image_index"]]["image_id"] == ref["image_id"]


def test_step_summaries_equal_patch_stats(store):
    report = pages.sample_report(store.db, store.complete_run, 0)
    with database.connect(store.db, read_only=True) as conn:
        rows = conn.execute("SELECT step, avg(mass), min(mass), avg(entropy), max(entropy), avg(ess), median(CAST(ess AS DOUBLE)) "
                            "FROM patch_stats WHERE run_id = ? AND sample_index = 0 GROUP BY step ORDER BY step",
                            [store.complete_run]).fetchall()
    assert [r[0] for r in rows] == [s.step for s in report.timeline]
    for row, s in zip(rows, report.timeline):
        got = (s.mass_mean, s.mass_min, s.entropy_mean, s.entropy_max, s.ess_mean, s.ess_median)
        assert got == pytest.approx(row[1:], rel=1e-9, abs=1e-9)


def test_report_record_and_images_are_the_stored_ones(fashion_store):
    report = pages.sample_report(fashion_store.db, fashion_store.complete_run, 1)
    with database.connect(fashion_store.db, read_only=True) as conn:
        run = conn.execute("SELECT seed, top_k, mass_threshold, command FROM runs WHERE id = ?",
                           [fashion_store.complete_run]).fetchone()
        final = conn.execute("SELECT final_image, seed FROM samples WHERE run_id = ? AND sample_index = 1",
                             [fashion_store.complete_run]).fetchone()
    record = report.record
    assert record.dataset.fingerprint == fashion_store.training_set.fingerprint
    assert (record.run_seed, record.top_k, record.mass_threshold) == (run[0], run[1], pytest.approx(run[2]))
    assert record.sample_seed == final[1] == report.seed == run[0] + 1
    assert record.command == json.loads(run[3]) and "auditor sample" in record.command_line
    assert record.versions["torch"] and record.denoiser_kind == "pspc-square" and record.dataset.xflip is True
    assert report.complete and report.status == "complete" and report.step == report.final_step == 5
    stored = np.frombuffer(final[0], "<f4").reshape(1, 28, 28)
    expected = np.clip(np.round((stored + 1) * 127.5), 0, 255).astype(np.uint8)[0]
    assert np.array_equal(report.image.rgb[..., 0], expected) and report.image.display * 28 >= 200
    # D(z_t) at the final step is the sample
    assert np.array_equal(report.view.denoised.rgb, report.image.rgb)
    assert [s.step for s in report.timeline] == list(range(6))


def test_failed_run_reports_its_recorded_steps_and_says_so(random_store):
    report = pages.sample_report(random_store.db, random_store.failed_run, 1)
    assert report.status == "failed" and not report.complete and report.image is None
    assert report.sources == [] and report.final_step is None
    assert report.step == 1 and report.steps_recorded == 2 and report.steps_planned == 4
    assert any("not there yet" in note for note in report.notes)
    assert report.trajectory  # the recorded steps still attribute
    json.dumps(report.to_json())


def test_unknown_ids_and_bad_options_are_refused(random_store):
    db, run = random_store.db, random_store.complete_run
    with pytest.raises(NotFoundError, match="no run 99"):
        pages.sample_report(db, 99, 0)
    with pytest.raises(NotFoundError, match="has no sample 3"):
        pages.sample_report(db, run, 3)
    with pytest.raises(NotFoundError, match="no recorded step 9"):
        pages.sample_report(db, run, 0, step=9)
    with pytest.raises(ValueError, match="top"):
        pages.sample_report(db, run, 0, top=0)
    with pytest.raises(ValueError, match="concentration"):
        pages.sample_report(db, run, 0, concentration="gini")
    with pytest.raises(NotFoundError):
        pages.run_context(db, 42)
    with pytest.raises(ValueError, match="page"):
        pages.run_context(db, run, page=0)
    with pytest.raises(NotFoundError, match="no dataset 5"):
        pages.training_image_context(db, 5, 0)
    with pytest.raises(NotFoundError, match="no training image 10"):
        pages.training_image_context(db, 1, 10)


def test_json_is_the_page_data_with_or_without_images(random_store):
    report = pages.sample_report(random_store.db, random_store.complete_run, 2, all_steps=True)
    full = json.loads(json.dumps(report.to_json()))
    bare = json.loads(json.dumps(report.to_json(images="none")))
    assert full["page"] == "SampleReport" and full["image"]["png"].startswith("data:image/png;base64,")
    assert bare["image"] is None and bare["sources"][0]["thumbnail"] is None
    assert [s["image_index"] for s in bare["sources"]] == [s.image_index for s in report.sources]
    assert len(bare["views"]) == len(report.timeline) == 4
    drill = bare["views"][0]["drilldown"]
    assert len(drill["image_index"]) == drill["height"] * drill["width"] * drill["top"]
    with pytest.raises(ValueError, match="image format"):
        report.to_json(images="png")


def test_run_page_gallery_and_pagination(random_store):
    page = pages.run_context(random_store.db, random_store.complete_run, page=2, per_page=2)
    assert page.pagination.total == 3 and [s.sample_index for s in page.samples] == [2]
    # the gallery's source is the headline one (the largest trajectory share), not the final image's
    top = attribution.trajectory_sources(random_store.db, random_store.complete_run, 2, top=1)[0]
    item = page.samples[0]
    assert (item.top_image_index, item.top_image_id) == (top["image_index"], top["image_id"])
    assert item.top_share == pytest.approx(top["share"], abs=ABS) and item.image is not None
    failed = pages.run_context(random_store.db, random_store.failed_run)
    assert failed.record.status == "failed" and all(s.image is None and s.top_image_id is None for s in failed.samples)
    assert failed.steps_recorded == 2


def test_training_image_page_equals_image_usage(store):
    with database.connect(store.db, read_only=True) as conn:
        image_index, image_id = conn.execute(
            "SELECT s.image_index, i.image_id FROM sample_sources s JOIN training_images i ON i.image_index = s.image_index "
            "WHERE s.run_id = ? ORDER BY s.share DESC LIMIT 1", [store.complete_run]).fetchone()
    page = pages.training_image_context(store.db, 1, image_index, per_page=50)
    assert page.image_id == image_id
    every_step = attribution.image_usage(store.db, 1, image_id, all_steps=True)
    finals = attribution.image_usage(store.db, 1, image_id)
    got = {(u.run_id, u.sample_index, s.step): (s.share, s.flip_share) for u in page.usages for s in u.steps}
    assert set(got) == {(r["run_id"], r["sample_index"], r["step"]) for r in every_step}
    for r in every_step:
        share, flip = got[(r["run_id"], r["sample_index"], r["step"])]
        assert share == pytest.approx(r["share"], abs=ABS) and flip == pytest.approx(r["flip_share"], abs=ABS)
    final_of = {(u.run_id, u.sample_index): u.final_share for u in page.usages}
    for r in finals:
        assert final_of[(r["run_id"], r["sample_index"])] == pytest.approx(r["share"], abs=ABS)
    assert page.usage_total == pytest.approx(sum(r["share"] for r in finals), abs=1e-9)
    assert page.steps_using == len(every_step)
    # largest final share first
    shares = [u.final_share if u.final_share is not None else -1 for u in page.usages]
    assert shares == sorted(shares, reverse=True)


def test_usage_map_sums_to_the_final_shares(random_store):
    """The usage map spreads each final share over the training pixels it came from: its sum
    is the image's total share of final images (before normalising for display)."""
    from auditor.store.read_models.patches import patch_geometry
    from auditor.store.read_models.training_images import image_usage

    with database.connect(random_store.db, read_only=True) as conn:
        rows = conn.execute("""
            SELECT w.run_id, w.sample_index, w.step, w.position, w.flip, w.source_top, w.source_left, w.weight,
                   s.t, s.t_next, s.patch_set_id
            FROM patch_weights w JOIN steps s USING (run_id, sample_index, step) WHERE w.image_index = 4""").fetchnumpy()
        share_rows = conn.execute("""
            SELECT v.run_id, v.sample_index, v.step, v.share, v.flip_share, s.t, s.t_next
            FROM step_shares v JOIN steps s USING (run_id, sample_index, step) WHERE v.image_index = 4""").fetchall()
        geometry = patch_geometry(conn, np.unique(rows["patch_set_id"]).tolist())
    statuses = {r["id"]: r["status"] for r in runs.run_summaries(random_store.db)}
    usage = image_usage(share_rows, rows, geometry, statuses, (8, 8))
    assert usage["pixel_map"].sum() == pytest.approx(usage["final_total"], rel=1e-9)
    # slow reference: every final-step weight row spreads w / coverage(p) / HW onto training pixel p (mirrored if flip)
    reference = np.zeros((8, 8))
    for r in range(len(rows["run_id"])):
        if rows["t_next"][r] != 0 or statuses[int(rows["run_id"][r])] != "complete":
            continue
        g = geometry[int(rows["patch_set_id"][r])]
        position = int(rows["position"][r])
        for k in range(len(g.member_pixel)):
            if g.member_position[k] != position:
                continue
            pixel = int(g.member_pixel[k])
            y, x = divmod(pixel, 8)
            reference[y, 7 - x if rows["flip"][r] else x] += rows["weight"][r] / g.coverage[pixel] / 64
    np.testing.assert_allclose(usage["pixel_map"], reference, atol=1e-15)


def test_index_search_and_pagination(random_store):
    page = pages.index_context(random_store.db, q="img-", per_page=3, page=2)
    assert page.hits_pagination.total == 9 and [h.image_index for h in page.hits] == [4, 5, 6]
    exact = pages.index_context(random_store.db, q="https://example.org/img/3.png")
    assert [(h.image_index, h.exact) for h in exact.hits] == [(3, True)]
    hostile = pages.index_context(random_store.db, q='<script>alert("id")</script>')
    assert hostile.hits[0].image_index == 0 and hostile.hits[0].exact
    assert [r["id"] for r in pages.index_context(random_store.db).runs] == [2, 1]
    assert pages.index_context(random_store.db, q="no such thing").hits == []


def test_sql_page_runs_read_only_queries_and_reports_errors(fashion_store):
    page = pages.sql_context(fashion_store.db, "SELECT id, status FROM runs")
    assert page.columns == ["id", "status"] and page.rows == [["1", "complete"]] and page.error is None
    assert [e.name for e in page.examples] == [q.name for q in EXAMPLE_QUERIES]
    refused = pages.sql_context(fashion_store.db, "DELETE FROM runs")
    assert refused.error and "read-only" in refused.error and refused.rows == [] and refused.refused
    broken = pages.sql_context(fashion_store.db, "SELEC 1")
    assert broken.error and "syntax" in broken.error.lower() and not broken.refused
    capped = pages.sql_context(fashion_store.db, "SELECT * FROM range(50)", max_rows=10)
    assert capped.truncated and len(capped.rows) == 10
    nulls = pages.sql_context(fashion_store.db, "SELECT NULL AS a, 1.5::DOUBLE AS b")
    assert nulls.rows == [[None, "1.5"]]
    assert pages.sql_context(fashion_store.db, None).columns == []


def test_network_section_comes_from_the_comparison(comparison_store):
    from auditor.store.comparisons import sample_counterpart

    db = comparison_store.db
    pspc = pages.sample_report(db, comparison_store.pspc_run, 1)
    counterpart = sample_counterpart(db, comparison_store.pspc_run, 1)
    net = pspc.network
    assert net is not None and not net.is_network_sample and net.counterpart_run_id == comparison_store.network_run
    assert [(s.descriptor, s.score, s.flagged) for s in net.scores] == \
        [(c["descriptor"], pytest.approx(c["score"]), c["flagged"]) for c in counterpart["similarity"]]
    assert "not SSCD" in net.scores[0].descriptor and net.scores[0].thresholds == [0.5, 0.6]
    assert [(s.step, s.mse) for s in net.steps] == [(c["step"], pytest.approx(c["mse"])) for c in counterpart["steps"]]
    network_image = np.clip(np.round((counterpart["image"].numpy() + 1) * 127.5), 0, 255).astype(np.uint8)
    assert np.array_equal(net.image.rgb, network_image.transpose(1, 2, 0))
    explained = pages.sample_report(db, comparison_store.network_run, 1)
    assert explained.record.kind == "network-explained" and explained.network.is_network_sample
    assert explained.network.counterpart_run_id == comparison_store.pspc_run
    # copy detection rows, with their descriptor and thresholds
    with database.connect(db, read_only=True) as conn:
        rows = conn.execute("SELECT rank, image_index, flip, score FROM copy_matches WHERE run_id = ? AND "
                            "sample_index = 1 ORDER BY rank", [comparison_store.pspc_run]).fetchall()
    assert [(c.rank, c.image_index, c.flip, pytest.approx(c.score)) for c in pspc.copy_matches] == rows
    assert all(c.thumbnail is not None and c.thresholds == [0.5, 0.6] for c in pspc.copy_matches)
    data = pspc.to_json(images="none")
    assert data["network"]["scores"][0]["descriptor"] == net.scores[0].descriptor and data["copy_matches"]
    # a run in no comparison has no network section; one can be passed or switched off
    assert pages.sample_report(db, comparison_store.pspc_run, 1, network=None).network is None
    with pytest.raises(ValueError, match="network"):
        pages.sample_report(db, comparison_store.pspc_run, 1, network="yes")


def test_runs_outside_comparisons_have_no_network_section(random_store):
    report = pages.sample_report(random_store.db, random_store.complete_run, 0)
    assert report.network is None and report.copy_matches == []


def test_pagination_arithmetic():
    p = Pagination(page=3, per_page=10, total=25)
    assert (p.offset, p.pages, p.has_previous, p.has_next, p.first_item, p.last_item) == (20, 3, True, False, 21, 25)
    assert Pagination(page=1, per_page=10, total=0).pages == 1
    with pytest.raises(ValueError):
        Pagination(page=1, per_page=0, total=5)
    with pytest.raises(ValueError):
        Pagination(page=1, per_page=MAX_PER_PAGE + 1, total=5)


def test_z_display_is_the_variance_preserving_scaling():
    z = np.full((1, 2, 2), 3.0, np.float32)
    assert np.allclose(z_display(z, 2.0), 3.0 / math.sqrt(5.0))


def test_reports_of_complete_runs_are_cached_until_their_rows_change(comparison_store, random_store, tmp_path):
    import shutil

    db = tmp_path / "provenance.duckdb"
    shutil.copy(comparison_store.db, db)
    first = pages.sample_report(db, comparison_store.pspc_run, 0)
    assert pages.sample_report(db, comparison_store.pspc_run, 0) is first
    assert pages.sample_report(db, comparison_store.pspc_run, 0, step=1) is not first
    assert first.copy_matches
    with database.connect(db) as conn:  # rows that can still arrive for a complete run change the key
        conn.execute("DELETE FROM copy_matches WHERE run_id = ? AND sample_index = 0", [comparison_store.pspc_run])
    again = pages.sample_report(db, comparison_store.pspc_run, 0)
    assert again is not first and again.copy_matches == []
    # runs that are not complete are read afresh every time
    failed = pages.sample_report(random_store.db, random_store.failed_run, 0)
    assert pages.sample_report(random_store.db, random_store.failed_run, 0) is not failed
