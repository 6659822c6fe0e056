"""Counterfactuals on the HTML pages (auditor/service/pages.py): a counterfactual's sample page shows
its panel with the stored figures, the parent sample lists its counterfactuals (or how to run
one), a failed or running counterfactual says it has no figures, ids and owners are escaped, and
a new counterfactual or verdict reaches a page already built (the per-process report cache)."""

from __future__ import annotations

import html
import re
import shutil

import pytest
from fastapi.testclient import TestClient
from markupsafe import escape

from auditor.service.app import ServiceSettings, create_app
from auditor.store import calibrations, database
from auditor.store.counterfactuals import load_counterfactual
from auditor.workflows.counterfactual import record_counterfactual
from auditor.workflows.options import CounterfactualOptions
from reports.render import environment
from tests.support.counterfactuals import (FAILURE, HOSTILE_OWNER, CounterfactualStore, counterfactual_store,
                                          store_parent_verdicts)
from tests.support.data import HOSTILE_ID
from tests.support.pages import assert_page

number = environment().filters["number"]


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    return counterfactual_store(tmp_path_factory.mktemp("counterfactual-service") / "provenance.duckdb")


def client_on(db) -> TestClient:
    return TestClient(create_app(ServiceSettings(db_path=db)))


@pytest.fixture(scope="module")
def client(store, tmp_path_factory) -> TestClient:
    copy = tmp_path_factory.mktemp("counterfactual-served") / "provenance.duckdb"
    shutil.copy(store.db, copy)
    return client_on(copy)


def text_of(page: str, element_id: str) -> str:
    """The text of the element with this id (tags dropped, entities decoded, spaces squeezed)."""
    found = re.search(rf'id="{element_id}"[^>]*>(.*?)</(div|p|dd|span|pre)>', page, re.S)
    assert found, element_id
    return " ".join(html.unescape(re.sub(r"<[^>]+>", " ", found.group(1))).split())


def section(page: str, element_id: str) -> str:
    found = re.search(rf'<section class="card" id="{element_id}">(.*?)</section>', page, re.S)
    assert found, element_id
    return found.group(1)


def test_the_counterfactual_page_shows_the_stored_outcome(client, store):
    page = assert_page(client.get(f"/runs/{store.removed_by_id}/samples/0"), 200, 'id="counterfactual"')
    outcome = load_counterfactual(store.db, store.removed_by_id)
    assert text_of(page, "cf-mse") == number(outcome["mse"], 3)
    assert text_of(page, "cf-max") == number(outcome["max_abs"], 3)
    assert text_of(page, "cf-similarity") == number(outcome["similarity"], 4)
    diverged = outcome["diverged_step"]
    assert text_of(page, "cf-diverged") == (f"step {diverged}" if diverged is not None else "never")
    assert text_of(page, "cf-seconds") == f"{number(outcome['seconds'], 3)} s"
    assert number(outcome["parent_seconds"], 3) in text_of(page, "cf-parent-seconds")
    assert text_of(page, "cf-verdict") == calibrations.load_verdicts(store.db, store.removed_by_id)[0]["verdict"]
    assert text_of(page, "cf-parent-verdict") == "parent's: " + calibrations.load_verdicts(store.db, 1)[0]["verdict"]
    panel = section(page, "counterfactual")
    assert 'href="/runs/1/samples/0"' in panel and text_of(page, "cf-how") == "by id"
    assert 'href="/datasets/1/images/0"' in panel and 'href="/datasets/1/images/1"' in panel
    for element in ("cf-parent-image", "cf-image", "cf-change"):
        assert f'id="{element}" src="data:image/png;base64,' in panel
    assert "mean over the 3 channels" in panel and len(re.findall(r"<tr[ >]", section(page, "counterfactual"))) == 4
    assert page.index('id="counterfactual"') < page.index('id="sources"')  # near the top, apart from the sources


def test_the_parent_lists_its_counterfactuals_or_how_to_run_one(client, store):
    page = assert_page(client.get("/runs/1/samples/0"), 200, 'id="cf-list"')
    listed = section(page, "counterfactuals")
    for run_id in (store.removed_by_id, store.removed_by_owner, store.failed):
        assert f'href="/runs/{run_id}/samples/0"' in listed
    assert number(load_counterfactual(store.db, store.removed_by_owner)["mse"], 3) in listed
    assert "no change stored: it failed" in listed
    alone = assert_page(client.get("/runs/1/samples/1"), 200, 'id="cf-none"')
    assert text_of(alone, "cf-command") == "auditor counterfactual 1/1 --top 10"
    assert "POST /api/jobs/counterfactual" in alone
    assert 'id="counterfactual"' not in alone


def test_a_failed_counterfactual_says_it_has_no_figures(client, store):
    page = assert_page(client.get(f"/runs/{store.failed}/samples/0"), 200, 'id="cf-missing"')
    assert "failed" in text_of(page, "cf-missing") and 'id="cf-mse"' not in page and 'id="cf-change"' not in page
    assert escape(FAILURE) in page  # the error itself, in the record
    run = assert_page(client.get(f"/runs/{store.failed}"), 200, 'id="counterfactual-origin"')
    assert 'href="/runs/1/samples/0"' in section(run, "counterfactual-origin") and "(it is failed)" in run


def test_a_running_counterfactual_says_it_has_no_figures_yet(store, tmp_path):
    db = tmp_path / "running.duckdb"
    shutil.copy(store.db, db)
    with database.connect(db) as conn:
        conn.execute("UPDATE runs SET status = 'running', error = NULL WHERE id = ?", [store.failed])
    page = assert_page(client_on(db).get(f"/runs/{store.failed}/samples/0"), 200, 'id="cf-missing"')
    assert text_of(page, "cf-missing").startswith(f"Run {store.failed} is running") and 'id="cf-mse"' not in page


def test_ids_and_owners_are_escaped(client, store):
    by_id = assert_page(client.get(f"/runs/{store.removed_by_id}/samples/0"), 200)
    assert HOSTILE_ID not in by_id and escape(HOSTILE_ID) in section(by_id, "counterfactual")
    by_owner = assert_page(client.get(f"/runs/{store.removed_by_owner}/samples/0"), 200)
    assert HOSTILE_OWNER not in by_owner and "<b>" not in section(by_owner, "counterfactual")
    assert text_of(by_owner, "cf-how") == f"owner {HOSTILE_OWNER!r}"
    parent = assert_page(client.get("/runs/1/samples/0"), 200)
    assert HOSTILE_OWNER not in section(parent, "counterfactuals")
    assert escape(f"owner {HOSTILE_OWNER!r}") in section(parent, "counterfactuals")


@pytest.mark.slow
def test_a_new_counterfactual_and_a_new_parent_verdict_reach_pages_built_before(store, tmp_path):
    """The report of a complete run is kept per process: its key must change with them."""
    db = tmp_path / "provenance.duckdb"
    shutil.copy(store.db, db)
    client = client_on(db)
    assert 'id="cf-none"' in client.get("/runs/1/samples/1").text
    new = record_counterfactual(db, 1, 1, options=CounterfactualOptions(without=("img-5",), verdict=False)).run_id
    assert f'href="/runs/{new}/samples/0"' in section(client.get("/runs/1/samples/1").text, "counterfactuals")
    assert text_of(client.get(f"/runs/{new}/samples/0").text, "cf-parent-verdict") == "parent's: not assessed"
    verdicts = store_parent_verdicts(CounterfactualStore(db, store.training_set), [0, 1])
    assert text_of(client.get(f"/runs/{new}/samples/0").text, "cf-parent-verdict") == \
        "parent's: " + verdicts[1]["verdict"]
