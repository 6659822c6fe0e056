"""GET /api/scores and /api/runs/{run}/samples/{i}/scores: the attribution scores, the headline,
and a sample's training images ranked by any of them, paged."""

import numpy as np
import pytest
from fastapi.testclient import TestClient

from pspc.posterior.scores import SCORES

from auditor.service.app import ServiceSettings, create_app
from auditor.store.scores import HEADLINE_SCORE, sample_scores
from tests.support.data import random_set
from tests.support.store import record


@pytest.fixture(scope="module")
def client(tmp_path_factory):
    recorded = record(tmp_path_factory.mktemp("scores") / "store.duckdb", random_set(), num_samples=1, steps=3,
                      top_k=32, mass=1.0)
    return TestClient(create_app(ServiceSettings(db_path=recorded.db)), base_url="http://localhost"), recorded.db


def test_the_registry_names_one_headline(client):
    listed = client[0].get("/api/scores").json()
    assert [s["name"] for s in listed] == list(SCORES)
    assert [s["name"] for s in listed if s["headline"]] == [HEADLINE_SCORE]
    assert all(s["meaning"] for s in listed) and not next(s for s in listed if s["name"] == "nda")["fraction"]


@pytest.mark.parametrize("score", [HEADLINE_SCORE, "nda", "region"])
def test_a_sample_ranked_by_a_score_pages_through_every_positive_one(client, score):
    http, db = client
    values = sample_scores(db, 1, 0, [score])[score]
    ranked = [f"img-{i}" for i in np.argsort(-values, kind="stable") if values[i] > 0]
    first = http.get(f"/api/runs/1/samples/0/scores?score={score}&top=3").json()
    assert first["score"]["name"] == score and first["total"] == len(ranked)
    assert [r["image_id"] for r in first["items"]] == ranked[:3]
    rest = http.get(f"/api/runs/1/samples/0/scores?score={score}&top=100&offset=3").json()
    assert [r["image_id"] for r in rest["items"]] == ranked[3:]
    assert first["items"][0]["score"] == pytest.approx(values.max())


def test_bad_score_requests(client):
    http, _ = client
    assert http.get("/api/runs/1/samples/0/scores?score=best").status_code == 400
    assert http.get("/api/runs/1/samples/5/scores").status_code == 404
    assert http.get("/api/runs/9/samples/0/scores").status_code == 404
