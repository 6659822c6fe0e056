"""`auditor parquet export|sql` and `auditor sample --parquet DIR` on a tiny recorded run."""

from __future__ import annotations

import json

import numpy as np
import pytest

from auditor.store.example_queries import example_query

from tests.support.cli import run_cli
from tests.support.rows import same_rows


@pytest.fixture
def data_file(tmp_path):
    path = tmp_path / "tiny.npy"
    np.save(path, np.random.RandomState(0).randint(0, 256, (12, 8, 8)).astype(np.uint8))
    return path


TINY = ["--num", "2", "--steps", "3", "--patch-size", "3"]


def json_answer(capsys, *argv):
    code, out, err = run_cli(capsys, *argv, "--format", "json")
    assert code == 0, err
    return [tuple(row.values()) for row in json.loads(out)]


def test_export_then_sql_answers_as_the_store(recorded_random, tmp_path, capsys):
    out = tmp_path / "export"
    code, printed, err = run_cli(capsys, "parquet", "export", "--db", recorded_random.db, out, "--run", 1)
    assert code == 0, err
    assert f"{out}: " in printed and "Parquet files" in printed and (out / "steps" / "run_id=1").is_dir()
    sql = example_query("top-sources").sql
    same_rows(json_answer(capsys, "parquet", "sql", out, sql),
              json_answer(capsys, "sql", "--db", recorded_random.db, sql))
    code, printed, _ = run_cli(capsys, "parquet", "sql", out, "SELECT id, status FROM runs")
    assert code == 0 and "complete" in printed and "(1 row)" in printed


def test_bad_input_is_one_line_and_changes_nothing(recorded_random, tmp_path, capsys):
    taken = tmp_path / "taken"
    taken.mkdir()
    (taken / "notes.txt").write_text("keep me")
    cases = [
        (["parquet", "export", "--db", recorded_random.db, taken], "not empty"),
        (["parquet", "export", "--db", recorded_random.db, tmp_path / "new", "--run", "99"], "no run 99"),
        (["parquet", "export", "--db", tmp_path / "missing.duckdb", tmp_path / "new"], "no provenance store"),
        (["parquet", "sql", tmp_path / "missing", "SELECT 1"], "no such folder"),
        (["parquet", "sql", taken, "SELECT 1"], "not a Parquet provenance folder"),
    ]
    for argv, message in cases:
        code, _, err = run_cli(capsys, *argv)
        assert code == 2 and err.startswith("auditor: error: ") and message in err, (argv, err)
        assert "Traceback" not in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["taken"]
    assert [p.name for p in taken.iterdir()] == ["notes.txt"]


def test_sample_records_into_a_parquet_folder(data_file, tmp_path, capsys):
    folder = tmp_path / "shared"
    code, out, err = run_cli(capsys, "sample", "--parquet", folder, "--data", data_file, *TINY, "--run-id", 41)
    assert code == 0, err
    assert "run 41: complete, 2 samples x 3 steps" in out and not (tmp_path / "provenance.duckdb").exists()
    assert json_answer(capsys, "parquet", "sql", folder, "SELECT id, status, num_samples FROM runs") == [
        (41, "complete", 2)]
    assert json_answer(capsys, "parquet", "sql", folder, "SELECT count(DISTINCT sample_index) FROM sample_sources "
                                                        "WHERE run_id = 41") == [(2,)]
    code, _, err = run_cli(capsys, "parquet", "sql", folder, "SELEC 1")
    assert code == 2 and "malformed SQL" in err
    code, _, err = run_cli(capsys, "sample", "--parquet", folder, "--data", data_file, *TINY, "--run-id", 41)
    assert code == 2 and "run id 41 is taken" in err


def test_sample_options_that_need_a_store_are_refused_with_parquet(data_file, tmp_path, capsys):
    for argv, message in ((["--run-id", "3"], "give --parquet DIR too"),
                          (["--parquet", tmp_path / "p", "--resume", "3"], "not resumed"),
                          (["--parquet", tmp_path / "p", "--dataset", "1"], "--dataset reads a training set")):
        code, _, err = run_cli(capsys, "sample", "--data", data_file, *argv)
        assert code == 2 and message in err, err
    assert not (tmp_path / "p").exists()
