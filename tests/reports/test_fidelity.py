"""Fidelity studies in the report service: /fidelity pages (reports.pages, templates) and
/api/fidelity (auditor/service/api/fidelity.py) on a store holding two studies."""

from __future__ import annotations

import html
import re

import pytest
from fastapi.testclient import TestClient
from markupsafe import escape

from auditor.store import database, studies
from auditor.service.auth import create_key
from auditor.service.app import ServiceSettings, create_app
from reports import plots
from tests.support.pages import assert_page
from tests.support.store import study_result


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    db = tmp_path_factory.mktemp("fidelity-pages") / "provenance.duckdb"
    database.upgrade(db)
    result = study_result()
    study_id = studies.store_study(db, result, name="tiny <study>", source="out/x/fidelity.json")
    bare = study_result(1)
    bare.update(similarity=None, similarity_to_network=None, tuned_schedule=None)
    bare_id = studies.store_study(db, bare, name="no sampling")
    return db, study_id, bare_id, result


@pytest.fixture(scope="module")
def client(store) -> TestClient:
    return TestClient(create_app(ServiceSettings(db_path=store[0])))


def cells(page: str, table_id: str) -> list[list[str]]:
    """The text of every body cell of a table, row by row."""
    body = page.split(f'id="{table_id}"', 1)[1].split("</table>", 1)[0].split("<tbody>", 1)[1]
    return [[html.unescape(re.sub(r"<[^>]+>", "", c)).strip() for c in re.findall(r"<td[^>]*>(.*?)</td>", row, re.S)]
            for row in re.findall(r"<tr[^>]*>(.*?)</tr>", body, re.S)]


@pytest.mark.slow
def test_study_page_shows_the_tables_record_and_plots(client, store):
    db, study_id, _, result = store
    page = assert_page(client.get(f"/fidelity/{study_id}"), 200, "tiny &lt;study&gt;", "c" * 64, "a" * 64, "b" * 64,
                       "pixel-correlation-32x32 (not SSCD)", "python 3.11")
    for process, curve in result["curves"].items():
        rows = cells(page, f"mse-table-{process}")
        for k, t in enumerate(curve["times"]):
            mse = [curve["mse"][d][k] for d in range(len(curve["names"]))]
            closest = curve["names"][mse.index(min(mse))]
            assert rows[k][:2] == [str(k), f"{t:.4g}"]
            assert rows[k][2:2 + len(mse)] == [f"{v:.3e}" for v in mse] and rows[k][-1] == closest
        # the closest cell is marked in every row
        marked = re.findall(r'<td class="num closest"[^>]*>([^<]+)</td>', page.split(f'id="mse-table-{process}"')[1]
                            .split("</table>")[0])
        assert marked == [f"{min(curve['mse'][d][k] for d in range(4)):.3e}" for k in range(len(curve["times"]))]
    concentration = cells(page, "concentration-table")
    assert concentration[1][1].startswith(f"{result['concentration']['mean_side'][1][0]:.1f}")
    similarity = cells(page, "similarity-table")
    assert [(r[0], r[1]) for r in similarity] == [(n, f"{v:.3f}") for n, v in result["similarity_to_network"].items()]
    schedule = cells(page, "schedule-table")
    assert [r[2] for r in schedule] == ["28", "9", "5", "3"] and [r[3] for r in schedule] == ["1", "0.6", "0.4", "0.2"]
    for line in result["findings"]:
        assert str(escape(line.lstrip(" -"))) in page
    # plots inline as data: URIs, as the sample report's: two MSE curves, concentration, similarity
    assert len(re.findall(r'<img class="plot"[^>]* src="data:image/png;base64,', page)) == 4
    assert 'href="/fidelity"' in page and 'href="/api/fidelity/1"' in page


@pytest.mark.slow
def test_study_without_sampling_or_tuning(client, store):
    page = assert_page(client.get(f"/fidelity/{store[2]}"), 200, "did not sample")
    assert 'id="schedule-table"' not in page and len(re.findall(r'<img class="plot"', page)) == 3


def test_list_page_links_every_study_and_nav_links_it(client, store):
    db, study_id, bare_id, _ = store
    page = assert_page(client.get("/fidelity"), 200, "Fidelity studies", "tiny &lt;study&gt;", "no sampling")
    assert f'href="/fidelity/{study_id}"' in page and f'href="/fidelity/{bare_id}"' in page
    assert page.index(f'href="/fidelity/{bare_id}"') < page.index(f'href="/fidelity/{study_id}"')  # newest first
    assert 'href="/fidelity"' in assert_page(client.get("/"), 200)  # the nav, on every page


def test_unknown_and_bad_ids(client):
    page = assert_page(client.get("/fidelity/99"), 404, "no fidelity study 99")
    assert "provenance.duckdb" not in page
    assert_page(client.get("/fidelity/abc"), 400)
    body = client.get("/api/fidelity/99")
    assert body.status_code == 404 and "no fidelity study 99" in body.json()["message"]
    assert client.get("/api/fidelity/0").status_code == 400


def test_api_gives_the_stored_numbers(client, store):
    db, study_id, bare_id, result = store
    listing = client.get("/api/fidelity").json()
    assert listing["total"] == 2 and [s["id"] for s in listing["items"]] == [bare_id, study_id]
    item = listing["items"][1]
    assert item["network_sha256"] == "c" * 64 and item["training_fingerprint"] == "a" * 64 and item["tuned"]
    assert item["denoisers"] == result["curves"]["forward"]["names"] and item["links"]["page"] == f"/fidelity/{study_id}"
    assert client.get("/api/fidelity", params={"limit": 1}).json()["next"] is not None
    study = client.get(item["links"]["self"]).json()
    assert study == {**studies.load_study(db, study_id), "created_at": study["created_at"], "links": item["links"]}
    for process, curve in result["curves"].items():
        assert study["curves"][process]["mse"] == curve["mse"] and study["curves"][process]["states"] == 3 - (
            process == "reverse")
    assert study["similarity_to_network"] == result["similarity_to_network"]
    assert study["descriptor"] == "pixel-correlation-32x32 (not SSCD)"
    assert study["tuned_schedule"] == result["tuned_schedule"] and study["findings"] == result["findings"]


def test_pages_and_api_need_the_read_scope(store, tmp_path):
    import shutil

    db = tmp_path / "keys.duckdb"
    shutil.copy(store[0], db)
    _, reader = create_key(db, "reader", ["read"])
    client = TestClient(create_app(ServiceSettings(db_path=db)))
    assert_page(client.get("/fidelity"), 401, "API key")
    assert_page(client.get(f"/fidelity/{store[1]}"), 401)
    assert client.get("/api/fidelity").status_code == 401
    assert client.get(f"/api/fidelity/{store[1]}").status_code == 401
    headers = {"Authorization": f"Bearer {reader}"}
    assert_page(client.get(f"/fidelity/{store[1]}", headers=headers), 200, "tiny &lt;study&gt;")
    assert client.get("/api/fidelity", headers=headers).json()["total"] == 2


def test_plots_are_png_or_svg_bytes(store):
    curve = store[3]["curves"]["forward"]
    png = plots.fidelity_curves_plot(curve["times"], curve["names"], curve["mse"], curve["stderr"], "forward")
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    svg = plots.concentration_plot([0.3, 1.0], [0.5, 0.95], [[1.0, 3.0], [2.0, 5.0]], fmt="svg")
    assert svg.lstrip().startswith(b"<?xml") and b"<svg" in svg
    assert plots.similarity_heatmap(["network", "a"], [[1.0, 0.5], [0.5, 1.0]], "d")[:4] == b"\x89PNG"
    with pytest.raises(ValueError, match="no fidelity curve"):
        plots.fidelity_curves_plot([], [], [], [])
    with pytest.raises(ValueError, match="unknown plot format"):
        plots.similarity_heatmap(["a"], [[1.0]], "d", fmt="gif")
