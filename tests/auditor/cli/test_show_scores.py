"""`auditor show RUN/SAMPLE [--score NAME]`: the final image's sources ranked by an attribution score,
the headline one by default, with what the score means."""

import numpy as np
import pytest

from pspc.posterior.scores import SCORES

from auditor.cli import store as cli_store
from auditor.store.scores import HEADLINE_SCORE, sample_scores
from tests.support.cli import run_cli
from tests.support.data import random_set
from tests.support.store import record


@pytest.fixture(scope="module")
def recorded(tmp_path_factory):
    return record(tmp_path_factory.mktemp("show") / "store.duckdb", random_set(), num_samples=1, steps=3, top_k=32,
                  mass=1.0)



@pytest.mark.parametrize("score", [None, "nda", "final-share"])
def test_show_ranks_by_the_score(recorded, capsys, score):
    code, out, _ = run_cli(capsys, "--db", recorded.db, "show", "1/0", "--top", "3", *(["--score", score] if score else []))
    name = score or HEADLINE_SCORE
    assert code == 0 and f"top 3 training sources by {name} (" in out and SCORES[name].meaning in out
    assert ("headline score:" in out) == (name == HEADLINE_SCORE)
    values = sample_scores(recorded.db, 1, 0, [name])[name]
    expected = [f"img-{i}" for i in np.argsort(-values, kind="stable")[:3]]
    rows = [line.split() for line in out.splitlines() if line.split() and line.split()[0].isdigit()]
    assert [row[4] for row in rows] == expected


def test_a_score_with_a_step_is_refused(recorded, capsys):
    code, _, err = run_cli(capsys, "--db", recorded.db, "show", "1/0", "--step", "1", "--score", "nda")
    assert code == 2 and "--score ranks the final image's sources" in err
    code, _, err = run_cli(capsys, "--db", recorded.db, "show", "1/0", "--score", "best")
    assert code == 2 and "invalid choice: 'best'" in err


def test_the_cli_names_every_score():
    assert cli_store.SCORE_NAMES == tuple(SCORES)
