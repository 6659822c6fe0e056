"""The counterfactual panel in a real browser at a phone's 390 px: `auditor serve` and headless
Chromium as in tests/reports/test_browser.py (its `server` fixture serves a copy of the module's
`fashion_store`, here the counterfactual store). The panel's three images decode and fit the
window, its figures are the stored outcome, and the page neither scrolls sideways nor logs a
problem. Skipped when Chromium or `websockets` is absent."""

from __future__ import annotations

import pytest

from auditor.store.counterfactuals import load_counterfactual
from reports.render import environment
from tests.reports.test_browser import CHROMIUM, Browser, server  # noqa: F401 (server: a fixture)
from tests.support.counterfactuals import counterfactual_store
from tests.support.pages import artifacts_dir
from tests.support.store import Store

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(CHROMIUM is None, reason="headless Chromium is not installed (apt-get install chromium)")]


@pytest.fixture(scope="module")
def fashion_store(tmp_path_factory) -> Store:
    """What `server` serves: the counterfactual store (tests.support.counterfactuals)."""
    built = counterfactual_store(tmp_path_factory.mktemp("counterfactual-browser") / "provenance.duckdb")
    return Store(built.db, built.training_set, built.removed_by_id, built.failed)


def test_the_counterfactual_panel_on_a_phone(server, fashion_store, tmp_path):
    run = fashion_store.complete_run
    browser = Browser(tmp_path / "profile", width=390, height=900)
    try:
        browser.navigate(f"{server}/runs/{run}/samples/0")
        browser.js("document.getElementById('counterfactual').scrollIntoView()")
        for element in ("cf-parent-image", "cf-image", "cf-change"):
            assert browser.js(f"(() => {{ const i = document.getElementById('{element}'); const r = i.getBoundingClientRect();"
                              f" return i.complete && i.naturalWidth === 8 && r.width >= 250 && r.right <= 390; }})()"), element
        outcome = load_counterfactual(fashion_store.db, run)
        number = environment().filters["number"]
        assert browser.js("document.getElementById('cf-mse').textContent") == number(outcome["mse"], 3)
        assert browser.js("document.getElementById('cf-max').textContent") == number(outcome["max_abs"], 3)
        assert browser.js("document.querySelectorAll('#cf-steps tbody tr').length") == len(outcome["step_changes"])
        assert browser.js("document.querySelectorAll('#cf-removed a').length") == outcome["removed_count"]
        assert browser.js("document.documentElement.scrollWidth <= window.innerWidth")
        browser.screenshot(artifacts_dir(tmp_path) / "counterfactual-390px.png")
        browser.navigate(f"{server}/runs/{fashion_store.failed_run}/samples/0")  # no figures, and says so
        assert browser.js("document.getElementById('cf-missing').textContent").startswith(
            f"Run {fashion_store.failed_run} failed")
        assert browser.js("document.getElementById('cf-mse') === null")
        assert browser.js("document.documentElement.scrollWidth <= window.innerWidth")
        browser.settle()
        assert browser.problems() == []
    finally:
        browser.close()
