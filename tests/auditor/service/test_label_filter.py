"""`label=` on /api/datasets/{id}/training-images takes a class number or a class name."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from auditor.service.app import ServiceSettings, create_app
from auditor.store import database, datasets
from tests.support.data import fashion_mnist


@pytest.fixture(scope="module")
def client(tmp_path_factory):
    db = tmp_path_factory.mktemp("labels") / "provenance.duckdb"
    database.upgrade(db)
    datasets.ingest(db, fashion_mnist(60))
    return TestClient(create_app(ServiceSettings(db_path=db)), raise_server_exceptions=False)


def _indices(client, label) -> list[int]:
    response = client.get("/api/datasets/1/training-images", params={"label": label, "limit": 100})
    assert response.status_code == 200, response.text
    return [item["image_index"] for item in response.json()["items"]]


def test_label_by_number_or_by_class_name(client):
    trousers = _indices(client, 1)
    assert trousers and _indices(client, "trouser") == trousers == _indices(client, " Trouser ")
    assert _indices(client, "T-shirt/top") == _indices(client, 0)
    refused = client.get("/api/datasets/1/training-images", params={"label": "jacket"})
    assert refused.status_code == 400
    assert "jacket" in refused.text and "Trouser (1)" in refused.text  # names the class names there are
    assert client.get("/api/datasets/9/training-images", params={"label": "trouser"}).status_code == 404
