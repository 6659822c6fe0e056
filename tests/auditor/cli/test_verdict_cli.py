"""`auditor show` prints the stored copy verdict and `auditor runs --verdict` filters by it (issue 17)."""

from __future__ import annotations

import pytest

from tests.support.cli import run_cli
from tests.support.verdicts import verdict_store


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    path = tmp_path_factory.mktemp("verdicts-cli") / "provenance.duckdb"
    return path, verdict_store(path)


def test_show_prints_the_verdict_line(store, capsys):
    path, info = store
    code, out, _ = run_cli(capsys, "--db", path, "show", f"{info['run_id']}/0")
    assert code == 0
    line = next(line for line in out.splitlines() if line.startswith("verdict: "))
    assert line.startswith("verdict: partial copy of img-1 in box [0, 1, 2, 2]") and "found 90% of copies" in line
    code, out, _ = run_cli(capsys, "--db", path, "show", f"{info['run_id']}/1", "--step", "0")  # unfinished sample
    assert code == 0 and "verdict: no verdict recorded for this sample" in out.splitlines()
    code, out, _ = run_cli(capsys, "--db", path, "show", f"{info['other_run']}/0")
    assert code == 0 and "verdict: inconclusive: no calibration for descriptor region-match" in out


def _listed(out: str) -> list[int]:
    return [int(line.split()[0]) for line in out.splitlines() if line.split() and line.split()[0].isdigit()]


def test_runs_verdict_filter(store, capsys):
    path, info = store
    for verdict, expected in (("partial-copy", [info["run_id"]]), ("inconclusive", [info["other_run"]]),
                              (None, [info["other_run"], info["run_id"]])):
        code, out, _ = run_cli(capsys, "--db", path, "runs", *(["--verdict", verdict] if verdict else []))
        assert code == 0 and _listed(out) == expected, (verdict, out)
    code, out, _ = run_cli(capsys, "--db", path, "runs", "--verdict", "copy")
    assert code == 0 and "no runs with a copy verdict" in out
    code, _, err = run_cli(capsys, "--db", path, "runs", "--verdict", "partial copy")
    assert code == 2 and "invalid choice" in err
