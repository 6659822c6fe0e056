"""`auditor counterfactual RUN/SAMPLE`: runs, lists, prints JSON, and refuses bad input changing nothing."""

import json

import pytest

from auditor.cli import counterfactual as cli_counterfactual
from auditor.workflows import options
from tests.support.cli import run_cli
from tests.support.data import random_set
from tests.support.store import fetch, record



@pytest.fixture
def store(tmp_path):
    return record(tmp_path / "store.duckdb", random_set(), num_samples=1, steps=4, top_k=32, mass=1.0)


def test_counterfactual_runs_and_lists(store, capsys):
    code, out, err = run_cli(capsys, "--db", store.db, "counterfactual", "1/0", "--without", "img-3,img-5",
                             "--no-verdict")
    assert code == 0, err
    assert "counterfactual run 2 of sample 1/0: re-sampled from the same initial noise" in out
    assert "removed 2 training image(s) (by id): img-3, img-5" in out
    assert "see it with `auditor show 2/0`" in out
    code, out, _ = run_cli(capsys, "--db", store.db, "counterfactual", "1/0", "--random", "3", "--seed", "2",
                           "--no-verdict", "--json")
    outcome = json.loads(out)
    assert (outcome["run_id"], outcome["removed_count"], outcome["selector"]) == (
        3, 3, {"by": "random", "value": 3, "seed": 2})
    assert outcome["verdict_before"] is None and "change_map" not in outcome
    code, out, _ = run_cli(capsys, "--db", store.db, "counterfactual", "1/0", "--list")
    assert code == 0 and "3 at random, seed 2" in out and "by id" in out and "(2 rows)" in out


@pytest.mark.parametrize("argv, message", [
    (["1/0"], "choose the removed images"),
    (["1/0", "--without", ","], "--without needs at least one training image id"),
    (["1/0", "--without", "img-1,zzz", "--no-verdict"], "no training image 'zzz'"),
    (["1/0", "--random", "12", "--no-verdict"], "at least one must remain"),
    (["7/0", "--top", "2"], "no run 7"),
])
def test_bad_requests_change_nothing(store, capsys, argv, message):
    before = fetch(store.db, "SELECT count(*) FROM runs")
    code, _, err = run_cli(capsys, "--db", store.db, "counterfactual", *argv)
    assert code == 2 and message in err
    assert fetch(store.db, "SELECT count(*) FROM runs") == before


def test_two_selections_are_a_usage_error(store, capsys):
    code, _, err = run_cli(capsys, "--db", store.db, "counterfactual", "1/0", "--top", "2", "--owner", "x")
    assert code == 2 and "not allowed with argument" in err


def test_the_cli_limit_matches_the_options():
    assert cli_counterfactual.MAX_REMOVED_IDS == options.MAX_REMOVED_IDS


def test_show_says_what_a_counterfactual_removed_and_a_parent_how_many_it_has(store, capsys):
    run_cli(capsys, "--db", store.db, "counterfactual", "1/0", "--without", "img-2", "--no-verdict")
    code, out, _ = run_cli(capsys, "--db", store.db, "show", "2/0", "--top", "2")
    assert code == 0 and "counterfactual of 1/0 (resample) without 1 training image(s) (img-2): MSE" in out
    code, out, _ = run_cli(capsys, "--db", store.db, "show", "1/0", "--top", "2")
    assert "counterfactuals: 1 (`auditor counterfactual 1/0 --list`)" in out
