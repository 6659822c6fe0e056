"""The report service's JSON API (auditor.service.app, auditor/service/api/) on a small recorded store.

Every endpoint and every error status, checked against the library (auditor.store.attribution) and
against what the engine computed while sampling (the `recorded_fashion` fixture).
"""

from __future__ import annotations

import io
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from auditor.store import attribution, database
from auditor.store.recorder import from_blob
from auditor.service.app import ServiceSettings, create_app
from pspc.data.training_set import to_uint8
from tests.support.paths import REPO
from tests.support.store import engine_shares



@pytest.fixture(scope="module")
def store(recorded_fashion, tmp_path_factory) -> Path:
    """A private copy of the recorded store (the service keeps it open between requests)."""
    path = tmp_path_factory.mktemp("api") / "provenance.duckdb"
    shutil.copy(recorded_fashion.db, path)
    return path


@pytest.fixture(scope="module")
def client(store) -> TestClient:
    return TestClient(create_app(ServiceSettings(db_path=store, sql_row_cap=50)))


def png_pixels(content: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(content)))


def assert_error(response, status: int, *words: str) -> dict:
    assert response.status_code == status, response.text
    body = response.json()
    assert body["status"] == status and isinstance(body["error"], str) and body["message"]
    for word in words:
        assert word in body["message"], body["message"]
    return body


# ---------------------------------------------------------------------------------------
# Runs
# ---------------------------------------------------------------------------------------
def test_runs_list_is_paginated_with_total_and_links(client, recorded_fashion):
    body = client.get("/api/runs").json()
    assert body["total"] == 1 and body["offset"] == 0 and body["next"] is None and body["previous"] is None
    run = body["items"][0]
    assert run["id"] == recorded_fashion.run_id and run["status"] == "complete"
    assert run["samples"] == 2 and run["steps"] == run["planned_steps"] == 18
    assert run["links"]["self"].endswith(f"/api/runs/{run['id']}")
    empty = client.get("/api/runs", params={"offset": 1}).json()
    assert empty["items"] == [] and empty["total"] == 1 and empty["previous"].endswith("offset=0&limit=50")
    assert client.get("/api/runs", params={"status": "failed"}).json()["total"] == 0
    assert client.get("/api/runs", params={"dataset_id": 1}).json()["total"] == 1


def test_run_detail_carries_the_reproducibility_record(client, recorded_fashion):
    run = client.get(f"/api/runs/{recorded_fashion.run_id}").json()
    data = recorded_fashion.training_set
    assert run["dataset_record"]["fingerprint"] == data.fingerprint
    assert run["dataset_record"]["shape"] == [1, 28, 28] and run["dataset_record"]["count"] == len(data)
    assert run["seed"] == 0 and run["top_k"] == 16 and run["mass_threshold"] == pytest.approx(0.99)
    assert run["denoiser_config"]["kind"] == "pspc-square"
    assert len(run["sampler_config"]["time_steps"]) == 19
    assert {"python", "torch", "duckdb"} <= set(run["versions"])


@pytest.mark.parametrize("url, status", [("/api/runs/999", 404), ("/api/runs/abc", 400), ("/api/runs/0", 400),
                                         ("/api/runs?limit=0", 400), ("/api/runs?limit=1001", 400),
                                         ("/api/runs?offset=-1", 400), ("/api/runs?status=done", 400)])
def test_run_errors(client, url, status):
    assert_error(client.get(url), status)


# ---------------------------------------------------------------------------------------
# Samples
# ---------------------------------------------------------------------------------------
def test_samples_list_and_detail(client, recorded_fashion):
    run_id = recorded_fashion.run_id
    page = client.get(f"/api/runs/{run_id}/samples", params={"limit": 1}).json()
    assert page["total"] == 2 and len(page["items"]) == 1 and page["next"].endswith("offset=1&limit=1")
    second = client.get(page["next"]).json()
    assert [s["sample_index"] for s in second["items"]] == [1] and second["next"] is None
    assert second["items"][0]["seed"] == 1 and second["items"][0]["complete"]
    detail = client.get(f"/api/runs/{run_id}/samples/1").json()
    assert detail["shape"] == [1, 28, 28] and detail["steps_recorded"] == 18
    engine_t = [recorded_fashion.steps[s][0] for s in range(18)]
    assert [s["t"] for s in detail["steps"]] == pytest.approx(engine_t)
    assert detail["steps"][-1]["t_next"] == 0
    assert all(0 < s["mean_mass"] <= 1 + 1e-6 and s["num_patches"] >= 1 for s in detail["steps"])


@pytest.mark.parametrize("url", ["/api/runs/999/samples", "/api/runs/1/samples/2", "/api/runs/999/samples/0",
                                 "/api/runs/1/samples/2/sources", "/api/runs/1/samples/0/sources?step=18",
                                 "/api/runs/1/samples/0/image.png?step=99"])
def test_unknown_samples_and_steps_are_404(client, url):
    assert_error(client.get(url), 404)


def test_sources_of_a_sample_match_the_engine(client, recorded_fashion):
    """Shares from the API = shares computed from the engine's own posterior weights."""
    run_id, last = recorded_fashion.run_id, 17
    weights = recorded_fashion.steps[last][3]
    expected = engine_shares(weights, 0, len(recorded_fashion.training_set), weights[0][1].patch_set)
    body = client.get(f"/api/runs/{run_id}/samples/0/sources", params={"top": 5}).json()
    assert body["what"] == "final image" and len(body["items"]) == 5
    library = attribution.sample_sources(recorded_fashion.db, run_id, 0, top=5)
    assert [s["image_index"] for s in body["items"]] == [s["image_index"] for s in library]
    assert [s["share"] for s in body["items"]] == pytest.approx([s["share"] for s in library])
    for s in body["items"]:
        assert s["share"] == pytest.approx(expected[s["image_index"]], rel=1e-4)
    assert [s["image_index"] for s in body["items"]] == \
        [i for i, _ in sorted(expected.items(), key=lambda kv: (-kv[1], kv[0]))[:5]]
    shares = [s["share"] for s in body["items"]]
    assert shares == sorted(shares, reverse=True)
    top = body["items"][0]
    assert top["image_id"].startswith("train-") and top["label_name"] and top["source_uri"]
    assert top["patches"] and {"step", "position", "top", "left", "height", "width", "weight"} <= set(top["patches"][0])
    assert top["links"]["thumbnail"].endswith(f"/training-images/{top['image_index']}/image.png")


def test_sources_pagination_is_a_slice_of_the_ranking(client, recorded_fashion):
    url = f"/api/runs/{recorded_fashion.run_id}/samples/0/sources"
    whole = client.get(url, params={"top": 6, "step": 10}).json()
    second = client.get(url, params={"top": 3, "offset": 3, "step": 10}).json()
    assert [s["image_index"] for s in second["items"]] == [s["image_index"] for s in whole["items"][3:6]]
    with database.connect(recorded_fashion.db, read_only=True) as conn:
        total = conn.execute("SELECT count(*) FROM step_sources WHERE run_id = ? AND sample_index = 0 AND step = 10",
                             [recorded_fashion.run_id]).fetchone()[0]
    assert whole["total"] == second["total"] == total > 6
    assert second["next"] is not None and "offset=6" in second["next"]
    assert second["what"] == "D(z_t) at step 10" and second["step"] == 10


def test_trajectory_sources_and_conflicting_parameters(client, recorded_fashion):
    url = f"/api/runs/{recorded_fashion.run_id}/samples/0/sources"
    body = client.get(url, params={"trajectory": "true", "top": 3}).json()
    library = attribution.trajectory_sources(recorded_fashion.db, recorded_fashion.run_id, 0, top=3)
    assert [s["share"] for s in body["items"]] == pytest.approx([s["share"] for s in library])
    assert_error(client.get(url, params={"trajectory": "true", "step": 2}), 400, "either step or trajectory")
    assert_error(client.get(url, params={"top": 0}), 400)
    assert_error(client.get(url, params={"step": -1}), 400)


def test_pixel_sources_match_the_dense_attribution(client, recorded_fashion):
    """Reference: pixel_attribution's dense maps at (y, x), summed over the flip copies."""
    run_id, step, y, x = recorded_fashion.run_id, 12, 14, 9
    body = client.get(f"/api/runs/{run_id}/samples/1/pixel-sources",
                      params={"step": step, "y": y, "x": x, "top": 1000}).json()
    dense = attribution.pixel_attribution(recorded_fashion.db, run_id, 1, step)
    expected: dict[int, float] = {}
    for image, w in zip(dense["image_index"].tolist(), dense["weights"][:, y, x].tolist()):
        if w > 0:
            expected[image] = expected.get(image, 0.0) + w
    got = {s["image_index"]: s["weight"] for s in body["items"]}
    assert got.keys() == expected.keys() and body["total"] == len(expected)
    for image, w in expected.items():
        assert got[image] == pytest.approx(w, rel=1e-6)
    paged = client.get(f"/api/runs/{run_id}/samples/1/pixel-sources",
                       params={"step": step, "y": y, "x": x, "top": 2, "offset": 1}).json()
    assert [s["image_index"] for s in paged["items"]] == [s["image_index"] for s in body["items"][1:3]]


@pytest.mark.parametrize("params", [{"step": 3, "y": 28, "x": 0}, {"step": 3, "y": 0, "x": 40},
                                    {"step": 3, "y": -1, "x": 0}, {"y": 1, "x": 1}, {"step": "a", "y": 1, "x": 1}])
def test_pixel_sources_bad_parameters_are_400(client, params):
    assert_error(client.get("/api/runs/1/samples/0/pixel-sources", params=params), 400)


def test_sample_image_png_is_the_stored_image_enlarged_without_smoothing(client, recorded_fashion):
    run_id = recorded_fashion.run_id
    response = client.get(f"/api/runs/{run_id}/samples/0/image.png", params={"scale": 3})
    assert response.status_code == 200 and response.headers["content-type"] == "image/png"
    pixels = png_pixels(response.content)
    with database.connect(recorded_fashion.db, read_only=True) as conn:
        blob = conn.execute("SELECT final_image FROM samples WHERE run_id = ? AND sample_index = 0",
                            [run_id]).fetchone()[0]
    expected = to_uint8(from_blob(blob, (1, 28, 28)))[0].numpy()
    assert pixels.shape == (84, 84)
    assert np.array_equal(pixels[::3, ::3], expected) and np.array_equal(pixels[2::3, 2::3], expected)
    z = png_pixels(client.get(f"/api/runs/{run_id}/samples/0/image.png", params={"step": 0, "what": "z"}).content)
    assert np.array_equal(z, to_uint8(recorded_fashion.steps[0][1][0])[0].numpy())
    assert_error(client.get(f"/api/runs/{run_id}/samples/0/image.png", params={"scale": 33}), 400)


def test_attribution_map_png_colours_each_pixel_by_its_dominant_image(client, recorded_fashion):
    """Reference: the dominant image per pixel from the dense attribution, by a loop over pixels."""
    from reports.maps import OTHER_COLOUR, PALETTE, hex_to_rgb

    run_id, step = recorded_fashion.run_id, 17
    response = client.get(f"/api/runs/{run_id}/samples/0/attribution-map.png", params={"scale": 1})
    assert response.status_code == 200 and response.headers["content-type"] == "image/png"
    rgb = png_pixels(response.content)
    assert rgb.shape == (28, 28, 3)
    dense = attribution.pixel_attribution(recorded_fashion.db, run_id, 0, step)
    legend = [s["image_index"] for s in attribution.sample_sources(recorded_fashion.db, run_id, 0, top=len(PALETTE))]
    images, weights = dense["image_index"].tolist(), dense["weights"].numpy()
    for y in range(28):
        for x in range(28):
            per_image: dict[int, float] = {}
            for e, image in enumerate(images):
                per_image[image] = per_image.get(image, 0.0) + float(weights[e, y, x])
            best = min(per_image, key=lambda i: (-per_image[i], i))
            colour = PALETTE[legend.index(best)] if best in legend else OTHER_COLOUR
            assert tuple(rgb[y, x]) == hex_to_rgb(colour), (y, x)
    big = png_pixels(client.get(f"/api/runs/{run_id}/samples/0/attribution-map.png",
                                params={"scale": 4, "kind": "concentration", "step": 3}).content)
    assert big.shape == (112, 112, 3)
    assert_error(client.get(f"/api/runs/{run_id}/samples/0/attribution-map.png", params={"kind": "x"}), 400)
    assert_error(client.get(f"/api/runs/{run_id}/samples/0/attribution-map.png", params={"step": 18}), 404)
    assert_error(client.get(f"/api/runs/{run_id}/samples/5/attribution-map.png"), 404)


def test_sample_report_json_is_the_page_context(client, recorded_fashion):
    run_id = recorded_fashion.run_id
    report = client.get(f"/api/runs/{run_id}/samples/1/report", params={"top": 4}).json()
    assert report["page"] == "SampleReport" and report["run_id"] == run_id and report["sample_index"] == 1
    assert report["image"]["png"].startswith("data:image/png;base64,")
    library = attribution.sample_sources(recorded_fashion.db, run_id, 1, top=4)
    assert [s["image_index"] for s in report["sources"]] == [s["image_index"] for s in library]
    assert len(report["timeline"]) == 18 and report["record"]["run_id"] == run_id
    bare = client.get(f"/api/runs/{run_id}/samples/1/report", params={"images": "none", "top": 4}).json()
    assert bare["image"] is None
    assert [s["image_index"] for s in bare["sources"]] == [s["image_index"] for s in library]
    assert_error(client.get(f"/api/runs/{run_id}/samples/1/report", params={"step": 99}), 404)
    assert_error(client.get(f"/api/runs/{run_id}/samples/1/report", params={"images": "url"}), 400)


# ---------------------------------------------------------------------------------------
# Training images (the rights holder's view)
# ---------------------------------------------------------------------------------------
def test_datasets_and_training_image_search(client, recorded_fashion):
    data = recorded_fashion.training_set
    datasets = client.get("/api/datasets").json()
    assert datasets["total"] == 1 and datasets["items"][0]["fingerprint"] == data.fingerprint
    assert client.get("/api/datasets/1").json()["count"] == len(data)
    page = client.get("/api/datasets/1/training-images", params={"limit": 7, "offset": 7}).json()
    assert page["total"] == len(data) and [i["image_index"] for i in page["items"]] == list(range(7, 14))
    found = client.get("/api/datasets/1/training-images", params={"image_id": data.ids[42]}).json()
    assert found["total"] == 1 and found["items"][0]["image_index"] == 42
    by_label = client.get("/api/datasets/1/training-images", params={"label": 3, "limit": 1000}).json()
    assert by_label["total"] == sum(1 for m in data.metadata if m["label"] == 3)
    by_uri = client.get("/api/datasets/1/training-images", params={"source_uri": "IDX3-UBYTE.GZ#19"}).json()
    assert {i["image_index"] for i in by_uri["items"]} == {19, *range(190, 200)}
    image = client.get("/api/datasets/1/training-images/42").json()
    assert image["image_id"] == data.ids[42] and image["sha256"] == data.image_sha256(42)
    png = png_pixels(client.get("/api/datasets/1/training-images/42/image.png").content)
    assert np.array_equal(png, data.images[42, 0].numpy())
    flipped = png_pixels(client.get("/api/datasets/1/training-images/42/image.png", params={"flip": "true"}).content)
    assert np.array_equal(flipped, data.images[42, 0].flip(-1).numpy())


def test_reverse_lookup_by_index_and_by_id_match_the_library(client, recorded_fashion):
    top = attribution.sample_sources(recorded_fashion.db, recorded_fashion.run_id, 0, top=1)[0]
    index, image_id = top["image_index"], top["image_id"]
    library = attribution.image_usage(recorded_fashion.db, 1, image_id)
    by_index = client.get(f"/api/datasets/1/training-images/{index}/usage").json()
    by_id = client.get("/api/datasets/1/usage", params={"image_id": image_id}).json()
    assert by_index["total"] == by_id["total"] == len(library) >= 1
    for got in (by_index, by_id):  # DuckDB's parallel sums may differ in the last bit between queries
        assert [(u["run_id"], u["sample_index"], u["step"]) for u in got["items"]] == \
            [(u["run_id"], u["sample_index"], u["step"]) for u in library]
        assert [u["share"] for u in got["items"]] == pytest.approx([u["share"] for u in library], rel=1e-9)
    assert by_index["training_image"]["image_id"] == image_id and not by_index["all_steps"]
    steps = client.get(f"/api/datasets/1/training-images/{index}/usage", params={"all_steps": "true", "limit": 5}).json()
    assert steps["total"] == len(attribution.image_usage(recorded_fashion.db, 1, image_id, all_steps=True))
    assert len(steps["items"]) == min(5, steps["total"])


@pytest.mark.parametrize("url, status", [("/api/datasets/9", 404), ("/api/datasets/9/training-images", 404),
                                         ("/api/datasets/1/training-images/200", 404),
                                         ("/api/datasets/1/training-images/200/image.png", 404),
                                         ("/api/datasets/1/usage?image_id=nope", 404),
                                         ("/api/datasets/1/usage", 400),
                                         ("/api/datasets/1/training-images/-1", 400)])
def test_training_image_errors(client, url, status):
    assert_error(client.get(url), status)


# ---------------------------------------------------------------------------------------
# Read-only SQL
# ---------------------------------------------------------------------------------------
def test_sql_select_get_post_and_csv(client, recorded_fashion):
    body = client.get("/api/sql", params={"sql": "SELECT id, status FROM runs"}).json()
    assert body["columns"] == ["id", "status"] and body["rows"] == [[recorded_fashion.run_id, "complete"]]
    assert body["row_cap"] == 50 and not body["truncated"]
    posted = client.post("/api/sql", json={"sql": "SELECT z FROM steps LIMIT 1"}).json()
    assert posted["rows"] == [["<3136 bytes>"]]
    csv = client.get("/api/sql", params={"sql": "SELECT 1 AS a, 'x' AS b", "format": "csv"})
    assert csv.headers["content-type"].startswith("text/csv") and csv.text == "a,b\n1,x\n"


def test_sql_row_cap_and_max_rows(client):
    capped = client.get("/api/sql", params={"sql": "SELECT * FROM range(500)"}).json()
    assert capped["row_count"] == 50 and capped["truncated"]
    small = client.post("/api/sql", json={"sql": "SELECT * FROM range(500)", "max_rows": 3}).json()
    assert small["rows"] == [[0], [1], [2]] and small["truncated"]
    more = client.post("/api/sql", json={"sql": "SELECT * FROM range(500)", "max_rows": 10**6}).json()
    assert more["row_count"] == 50  # never above the service's cap


@pytest.mark.parametrize("sql", ["DROP TABLE runs", "DELETE FROM runs", "INSERT INTO runs (id) VALUES (9)",
                                 "UPDATE runs SET status = 'x'", "CREATE TABLE t (x INT)", "ATTACH 'other.db'",
                                 "COPY runs TO 'out.csv'", "PRAGMA version", "SET threads = 1"])
def test_sql_write_statements_are_403_and_change_nothing(client, store, sql):
    assert_error(client.post("/api/sql", json={"sql": sql}), 403, "read-only")
    with database.connect(store, read_only=True) as conn:
        assert conn.execute("SELECT count(*), min(status) FROM runs").fetchone() == (1, "complete")


@pytest.mark.parametrize("sql, word", [("SELEC 1", "malformed"), ("", "at least 1 character"),
                                       ("SELECT 1; SELECT 2", "one statement"),
                                       ("SELECT * FROM no_such_table", "no_such_table")])
def test_sql_bad_queries_are_400(client, sql, word):
    assert_error(client.post("/api/sql", json={"sql": sql}), 400, word)


def test_sql_time_limit(store):
    slow = TestClient(create_app(ServiceSettings(db_path=store, sql_time_limit_s=0.2)))
    started = time.monotonic()
    response = slow.post("/api/sql", json={"sql": "SELECT count(*) FROM range(100000) a, range(100000) b "
                                                   "WHERE a.range * b.range % 7 = 3"})
    assert_error(response, 400, "interrupted")
    assert time.monotonic() - started < 5


def test_sql_examples_are_listed_and_run(client):
    examples = client.get("/api/sql/examples").json()
    assert len(examples) >= 3 and all({"name", "title", "sql"} <= set(e) for e in examples)
    for example in examples:
        assert client.post("/api/sql", json={"sql": example["sql"]}).status_code == 200, example["name"]


# ---------------------------------------------------------------------------------------
# Bodies, schema, lock, OpenAPI
# ---------------------------------------------------------------------------------------
def test_oversized_bodies_are_413(store):
    small = TestClient(create_app(ServiceSettings(db_path=store, max_upload_bytes=1000)))
    big = {"sql": "SELECT 1 -- " + "x" * 2000}
    assert_error(small.post("/api/sql", json=big), 413, "1000 bytes")

    def chunks():  # no Content-Length: counted while streaming
        for _ in range(10):
            yield b"x" * 500

    assert_error(small.post("/api/sql", content=chunks(), headers={"content-type": "application/json"}), 413)
    assert small.post("/api/sql", json={"sql": "SELECT 1"}).status_code == 200


def test_malformed_bodies_are_400(client):
    assert_error(client.post("/api/sql", content=b"{not json", headers={"content-type": "application/json"}), 400)
    assert_error(client.post("/api/sql", json={"query": "SELECT 1"}), 400, "sql")


def test_store_at_another_revision_is_409(store, tmp_path):
    path = tmp_path / "old.duckdb"
    shutil.copy(store, path)
    app = TestClient(create_app(ServiceSettings(db_path=path)))
    database.upgrade(path, "0003")  # e.g. an operator downgraded the file under the running service
    assert_error(app.get("/api/runs"), 409, "auditor db upgrade")
    with pytest.raises(database.SchemaError):
        create_app(ServiceSettings(db_path=path))


@pytest.mark.slow
def test_store_locked_by_another_process_is_503(store, tmp_path):
    """Another process takes the write lock (the service lets go of its idle connection when
    the writer announces itself) and keeps it: requests fail with 503 after the lock timeout."""
    path = tmp_path / "locked.duckdb"
    shutil.copy(store, path)
    app = TestClient(create_app(ServiceSettings(db_path=path, lock_timeout=0.3)))
    assert app.get("/api/runs").status_code == 200  # the service now keeps the file open
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time\nfrom auditor.store import database\n"
                               f"c = database.open_raw({str(path)!r}, timeout=20)\nprint('locked', flush=True)\n"
                               "sys.stdin.read()"], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                              cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)})
    try:
        assert holder.stdout.readline().strip() == "locked"
        started = time.monotonic()
        response = app.get("/api/runs")
        assert_error(response, 503, "lock")
        assert response.headers["retry-after"] == "1" and time.monotonic() - started < 5
    finally:
        holder.stdin.close()
        holder.wait(timeout=20)
    assert app.get("/api/runs").status_code == 200


def test_one_error_table_user_errors_keep_their_status_and_bugs_are_500(store, monkeypatch, caplog):
    """auditor.errors.outcome decides: user errors answer their status and message; anything
    else (here a plain ValueError, i.e. a bug) is 500 with a generic message, traceback logged."""
    import logging

    from auditor.errors import ConflictError, LockedError, SchemaError, UserError
    from auditor.store import runs
    from pspc.errors import InputError

    client = TestClient(create_app(ServiceSettings(db_path=store)), raise_server_exceptions=False)

    def raising(exc):
        def run_summaries(*args, **kwargs):
            raise exc
        return run_summaries

    monkeypatch.setattr(runs, "run_summaries", raising(ValueError("invalid literal for int(): 'x'")))
    with caplog.at_level(logging.ERROR, logger="auditor.service.app"):
        body = assert_error(client.get("/api/runs"), 500, "internal error (ValueError)")
    assert "literal" not in body["message"] and body["error"] == "internal_error"
    assert any(r.exc_info and r.exc_info[0] is ValueError for r in caplog.records)
    for exc, status in [(UserError("bad option"), 400), (InputError("bad shape"), 400), (ConflictError("busy"), 409),
                        (SchemaError("old store: run `auditor db upgrade`"), 409), (SchemaError("broken store"), 500),
                        (LockedError("locked by another process"), 503)]:
        monkeypatch.setattr(runs, "run_summaries", raising(exc))
        response = client.get("/api/runs")
        assert_error(response, status, str(exc))
        assert response.headers.get("retry-after") == ("1" if status == 503 else None)


def test_settings_are_one_validated_object_read_from_the_environment(store, monkeypatch, tmp_path):
    from auditor.errors import UserError

    monkeypatch.setenv("AUDITOR_DB", str(store))
    monkeypatch.setenv("AUDITOR_SQL_ROW_CAP", "7")
    monkeypatch.setenv("AUDITOR_KEYS_REQUIRED", "true")
    monkeypatch.setenv("AUDITOR_CACHE_BYTES", "")  # empty: unset
    settings = ServiceSettings()
    assert settings.db_path == store and settings.sql_row_cap == 7 and settings.keys_required is True
    assert settings.cache_bytes == 256 * 2**20 and settings.lock_timeout == database.DEFAULT_TIMEOUT
    assert settings.jobs_dir == store.parent / f"{store.name}.jobs"
    given = ServiceSettings(db_path=tmp_path / "other.duckdb", sql_row_cap=3, jobs_dir=str(tmp_path))
    assert given.db_path == tmp_path / "other.duckdb" and given.sql_row_cap == 3 and given.jobs_dir == tmp_path
    monkeypatch.delenv("AUDITOR_DB")
    assert ServiceSettings().db_path == Path("provenance.duckdb")
    for bad in ({"sql_row_cap": 0}, {"lock_timeout": 0}, {"sql_time_limit_s": float("nan")}, {"cache_bytes": -1},
                {"max_running_jobs": 0}, {"max_upload_bytes": 0}, {"job_lock_timeout": -1}, {"no_such_setting": 1}):
        with pytest.raises(UserError, match=f"service settings: {next(iter(bad))}"):
            ServiceSettings(db_path=store, **bad)
    monkeypatch.setenv("AUDITOR_MAX_UPLOAD_BYTES", "lots")
    with pytest.raises(UserError, match="max_upload_bytes"):
        ServiceSettings(db_path=store)


def test_openapi_documents_every_endpoint(client):
    schema = client.get("/api/openapi.json").json()
    paths = set(schema["paths"])
    for path in ["/api/runs", "/api/runs/{run_id}", "/api/runs/{run_id}/samples",
                 "/api/runs/{run_id}/samples/{sample_index}", "/api/runs/{run_id}/samples/{sample_index}/sources",
                 "/api/runs/{run_id}/samples/{sample_index}/pixel-sources",
                 "/api/runs/{run_id}/samples/{sample_index}/image.png",
                 "/api/runs/{run_id}/samples/{sample_index}/attribution-map.png",
                 "/api/runs/{run_id}/samples/{sample_index}/report", "/api/datasets",
                 "/api/datasets/{dataset_id}/training-images/{image_index}/usage", "/api/datasets/{dataset_id}/usage",
                 "/api/sql", "/api/sql/examples", "/api/jobs", "/api/jobs/{job_id}", "/api/jobs/{job_id}/log",
                 "/api/jobs/{job_id}/cancel"]:
        assert path in paths, path
    components = schema["components"]["schemas"]
    assert {"RunDetail", "SourcesPage", "SampleJobRequest", "JobStatus", "ErrorBody", "SqlResult"} <= set(components)
    assert "404" in schema["paths"]["/api/runs/{run_id}"]["get"]["responses"]
    # no path parameter is a file path: every one is an integer
    for path, methods in schema["paths"].items():
        for operation in methods.values():
            for parameter in operation.get("parameters", []):
                if parameter["in"] == "path":
                    assert parameter["schema"]["type"] == "integer", (path, parameter["name"])


# ---------------------------------------------------------------------------------------
# Serving and deployment
# ---------------------------------------------------------------------------------------
@pytest.mark.slow
def test_auditor_serve_prints_the_url_and_the_key_mode(store, tmp_path):
    import socket

    import httpx

    path = tmp_path / "served.duckdb"
    shutil.copy(store, path)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = subprocess.Popen([sys.executable, "-m", "auditor.cli", "--db", str(path), "serve", "--port", str(port)],
                              cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)}, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True)
    try:
        first = [server.stdout.readline() for _ in range(3)]
        assert first[0].startswith(f"auditor service on http://127.0.0.1:{port}/")
        assert "LOCAL SINGLE-USER MODE" in "".join(first)
        deadline = time.monotonic() + 30
        while True:
            try:
                health = httpx.get(f"http://127.0.0.1:{port}/api/health", timeout=2)
                break
            except httpx.HTTPError:
                assert time.monotonic() < deadline and server.poll() is None
                time.sleep(0.1)
        assert health.json()["status"] == "ok" and health.json()["keys_required"] is False
        assert httpx.get(f"http://127.0.0.1:{port}/api/runs/1").json()["id"] == 1
    finally:
        server.send_signal(subprocess.signal.SIGINT)
        server.wait(timeout=20)


def _compose() -> list[str] | None:
    """`docker compose` (v2 plugin) or `docker-compose` (v1), whichever this machine has."""
    docker = shutil.which("docker")
    if docker and subprocess.run([docker, "compose", "version"], capture_output=True).returncode == 0:
        return [docker, "compose"]
    legacy = shutil.which("docker-compose")
    return [legacy] if legacy else None


def test_docker_compose_file_validates():
    compose = _compose()
    if compose is None:
        pytest.skip("no docker compose client on this machine")
    result = subprocess.run([*compose, "-f", str(REPO / "docker-compose.yml"), "config"], capture_output=True,
                            text=True, cwd=REPO)
    assert result.returncode == 0, result.stderr
    assert "/data" in result.stdout and "8000" in result.stdout and "AUDITOR_DB" in result.stdout


def test_responses_about_complete_runs_are_cached_with_etags(store, tmp_path):
    app = create_app(ServiceSettings(db_path=store))
    client = TestClient(app)
    url = "/api/runs/1/samples/0/sources?top=4&step=6"
    first = client.get(url)
    assert first.headers["cache-control"].startswith("private") and first.headers["etag"]
    again = client.get(url)
    assert again.content == first.content and app.state.cache.hits >= 1
    assert client.get(url, headers={"If-None-Match": first.headers["etag"]}).status_code == 304
    # the same answer as computed afresh by another service instance without a cache
    fresh = TestClient(create_app(ServiceSettings(db_path=store, cache_bytes=0))).get(url)
    assert fresh.json() == first.json()
    assert fresh.headers["etag"] == again.headers["etag"] == first.headers["etag"]  # cached with the entry
    # a small cache evicts the oldest entries and stays within its bound
    small = create_app(ServiceSettings(db_path=store, cache_bytes=3 * len(first.content)))
    small_client = TestClient(small)
    for top in range(1, 9):
        assert small_client.get(f"/api/runs/1/samples/0/sources?top={top}&step=6").status_code == 200
    assert 0 < small.state.cache.size <= small.state.cache.max_bytes and len(small.state.cache) < 8
    # a run still being written is never cached
    path = tmp_path / "running.duckdb"
    shutil.copy(store, path)
    with database.connect(path) as conn:
        conn.execute("UPDATE runs SET status = 'running' WHERE id = 1")
    running = TestClient(create_app(ServiceSettings(db_path=path)))
    response = running.get(url)
    assert response.status_code == 200 and response.headers["cache-control"] == "no-cache"
    assert running.app.state.cache.misses == 0


# ---------------------------------------------------------------------------------------
# Integers beyond int64 are refused (400), never a 500
# ---------------------------------------------------------------------------------------
HUGE = "100000000000000000000"  # 10**20 > 2**63


@pytest.mark.parametrize("url", [f"/api/runs?offset={HUGE}", f"/api/runs/{HUGE}", f"/api/runs/{HUGE}/samples",
                                 f"/api/runs/1/samples/{HUGE}", "/api/runs/1/samples/0/sources?top=1e20",
                                 f"/api/runs/1/samples/0/sources?top={HUGE}",
                                 f"/api/runs/1/samples/0/sources?offset={HUGE}",
                                 f"/api/runs/1/samples/0/sources?step={HUGE}",
                                 f"/api/runs/1/samples/0/pixel-sources?step=0&y={HUGE}&x=0",
                                 f"/api/datasets/{HUGE}", f"/api/datasets/1/training-images/{HUGE}",
                                 f"/api/datasets/1/training-images?label={HUGE}", f"/api/fidelity/{HUGE}",
                                 f"/api/jobs/{HUGE}"])
def test_integers_beyond_int64_are_400(store, url):
    client = TestClient(create_app(ServiceSettings(db_path=store)), raise_server_exceptions=False)
    assert_error(client.get(url), 400)
