"""Exports over HTTP: the rights holder's export of a training image page, and images=none on
the report endpoints (no inline image at all)."""

from __future__ import annotations

import csv
import io
import shutil

import pytest
from fastapi.testclient import TestClient

from auditor.service.app import ServiceSettings, create_app
from auditor.store import attribution
from tests.support.pages import assert_page


@pytest.fixture(scope="module")
def client(random_store, tmp_path_factory) -> TestClient:
    db = tmp_path_factory.mktemp("page-exports") / "provenance.duckdb"
    shutil.copy(random_store.db, db)
    return TestClient(create_app(ServiceSettings(db_path=db)))


def test_training_image_page_links_its_export(client, random_store):
    top = attribution.sample_sources(random_store.db, random_store.complete_run, 0, top=1)[0]
    page = assert_page(client.get(f"/datasets/1/images/{top['image_index']}"), 200)
    assert f'href="/datasets/1/images/{top["image_index"]}/export.csv"' in page
    response = client.get(f"/datasets/1/images/{top['image_index']}/export.csv")
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/csv")
    assert response.headers["content-disposition"] == \
        f'attachment; filename="pspc-uses-dataset1-image{top["image_index"]}.csv"'
    rows = list(csv.DictReader(io.StringIO(response.text)))
    usage = attribution.image_usage(random_store.db, 1, top["image_id"])
    assert {(int(r["run_id"]), int(r["sample_index"])) for r in rows} >= {(u["run_id"], u["sample_index"]) for u in usage}
    body = client.get(f"/datasets/1/images/{top['image_index']}/export.json").json()
    assert body["page"] == "TrainingImageExport" and body["image_id"] == top["image_id"]
    assert client.get(f"/datasets/1/images/{top['image_index']}/export.xml").status_code in (400, 404)
    assert client.get("/datasets/1/images/99999/export.csv").status_code == 404


def test_images_none_ships_no_image(client, random_store):
    run = random_store.complete_run
    for url in (f"/api/runs/{run}/samples/0/report?images=none", f"/runs/{run}/samples/0/export.json?images=none"):
        response = client.get(url)
        assert response.status_code == 200 and "data:image" not in response.text, url
