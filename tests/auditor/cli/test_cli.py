"""The `auditor` command line on a tiny recorded run (12 random 8x8 images, 2 samples x 3 steps)."""

from __future__ import annotations

import csv
import io
import json
import os

import numpy as np
import pytest

from auditor import cli
from auditor.errors import UserError
from auditor.store import database
from tests.support.store import LockHolder


@pytest.fixture
def data_file(tmp_path):
    path = tmp_path / "tiny.npz"
    np.savez(path, images=np.random.RandomState(0).randint(0, 256, (12, 1, 8, 8)).astype(np.uint8))
    return path


def run(capsys, *argv):
    code = cli.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_db_upgrade_status_and_location(tmp_path, capsys, monkeypatch):
    db = tmp_path / "a.duckdb"
    code, out, err = run(capsys, "--db", db, "db", "upgrade")
    assert code == 0 and f"upgraded schema empty -> {database.head_revision()}" in out
    code, out, _ = run(capsys, "db", "upgrade", "--db", db)  # --db also after the command
    assert code == 0 and f"{database.head_revision()} (up to date)" in out
    code, out, _ = run(capsys, "db", "status", "--db", db)
    assert code == 0 and f"revision  {database.head_revision()} (current)" in out and "patch_weights" in out and "trajectory_sources" in out
    # $AUDITOR_DB, then ./provenance.duckdb
    monkeypatch.setenv("AUDITOR_DB", str(tmp_path / "env.duckdb"))
    assert run(capsys, "db", "upgrade")[0] == 0 and (tmp_path / "env.duckdb").exists()
    monkeypatch.delenv("AUDITOR_DB")
    monkeypatch.chdir(tmp_path)
    assert run(capsys, "db", "upgrade")[0] == 0 and (tmp_path / "provenance.duckdb").exists()


def test_errors_are_one_line_and_change_nothing(tmp_path, capsys, monkeypatch):
    missing = tmp_path / "missing.duckdb"
    for argv in (["sql", "SELECT 1"], ["runs"], ["show", "1/0"], ["db", "status"], ["ingest", "x.npz"]):
        code, out, err = run(capsys, "--db", missing, *argv)
        assert code == 2 and err.startswith("auditor: error: ") and "auditor db upgrade" in err, argv
        assert "Traceback" not in err
    assert not missing.exists()
    corrupt = tmp_path / "corrupt.duckdb"
    corrupt.write_bytes(os.urandom(5000))
    before = corrupt.read_bytes()
    for argv in (["db", "upgrade"], ["db", "status"], ["sql", "SELECT 1"]):
        code, _, err = run(capsys, "--db", corrupt, *argv)
        assert code == 2 and "not a DuckDB database file" in err and str(corrupt) in err
    assert corrupt.read_bytes() == before
    newer = tmp_path / "newer.duckdb"
    database.upgrade(newer)
    with database.connect(newer) as conn:
        conn.execute("UPDATE alembic_version SET version_num = 'ffff'")
    for argv in (["db", "upgrade"], ["db", "status"], ["runs"]):
        code, _, err = run(capsys, "--db", newer, *argv)
        assert code == 2 and "newer version of auditor" in err
    code, _, err = run(capsys, "--db", newer, "show", "1")
    assert code == 2 and "expected RUN/SAMPLE" in err
    monkeypatch.setenv("AUDITOR_DEBUG", "1")
    with pytest.raises(database.StoreError):
        cli.main(["--db", str(missing), "runs"])


@pytest.mark.slow
def test_ingest_sample_runs_show_sql(tmp_path, capsys, data_file):
    db = tmp_path / "p.duckdb"
    assert run(capsys, "--db", db, "db", "upgrade")[0] == 0
    code, out, _ = run(capsys, "--db", db, "ingest", data_file)
    assert code == 0 and "dataset 1: created" in out and "fingerprint " in out
    code, out, _ = run(capsys, "--db", db, "ingest", data_file)
    assert code == 0 and "dataset 1: already present" in out
    code, out, _ = run(capsys, "--db", db, "ingest", data_file, "--limit", "5")
    assert code == 0 and "dataset 2: created" in out

    code, out, err = run(capsys, "--db", db, "sample", "--data", data_file, "--num", "2", "--steps", "3", "--seed", "4",
                         "--top-k", "4")
    assert code == 0, err
    assert "run 1: complete, 2 samples x 3 steps" in out
    code, out, _ = run(capsys, "--db", db, "runs")
    assert code == 0 and "complete" in out and "3/3" in out and "pspc-square" in out
    code, out, _ = run(capsys, "--db", db, "runs", "--dataset", "2")
    assert code == 0 and out.startswith("no runs on dataset 2")
    code, _, err = run(capsys, "--db", db, "runs", "--dataset", "7")
    assert code == 2 and "no dataset '7'" in err

    code, out, _ = run(capsys, "--db", db, "show", "1/1", "--top", "3")
    assert code == 0 and "run 1, sample 1, final image" in out
    lines = out.splitlines()
    assert lines[-1] == "(3 rows)" and "tiny.npz#" in out
    code, out, _ = run(capsys, "--db", db, "show", "1/0", "--step", "1")
    assert code == 0 and "D(z_t) at step 1" in out
    for target, message in (("9/0", "run 9"), ("1/7", "sample 7")):
        code, _, err = run(capsys, "--db", db, "show", target)
        assert code == 2 and message in err

    # sql: the shares of the final image agree with `show`, in every format
    query = "SELECT image_index, share FROM sample_sources WHERE run_id = 1 AND sample_index = 1 ORDER BY share DESC"
    code, out, _ = run(capsys, "--db", db, "sql", query, "--format", "json")
    rows = json.loads(out)
    assert code == 0 and abs(sum(r["share"] for r in rows) - 1) < 0.05  # top-k with mass 0.99: about 1
    code, out, _ = run(capsys, "--db", db, "sql", query, "--format", "csv", "--max-rows", "2")
    parsed = list(csv.reader(io.StringIO(out)))
    assert parsed[0] == ["image_index", "share"] and len(parsed) == 3
    assert int(parsed[1][0]) == rows[0]["image_index"]
    code, out, _ = run(capsys, "--db", db, "sql", "SELECT count(*) AS n FROM steps")
    assert code == 0 and out.split() == ["n", "-", "6", "(1", "row)"]
    before = db.read_bytes()
    code, _, err = run(capsys, "--db", db, "sql", "DELETE FROM runs")
    assert code == 2 and "read-only: DELETE statements are not allowed" in err
    code, _, err = run(capsys, "--db", db, "sql", "SELECT * FRM runs")
    assert code == 2 and "syntax error" in err
    assert db.read_bytes() == before


@pytest.mark.slow
def test_resume_a_failed_run(tmp_path, capsys, data_file):
    from auditor.workflows import sampling as runs
    from auditor.workflows.options import SamplingOptions
    from pspc.data.loaders import load_training_set

    db = tmp_path / "p.duckdb"
    database.upgrade(db)
    data = load_training_set(str(data_file)).with_xflip()

    def stop(step, *args):
        if step == 1:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        runs.record_sampling_run(db, data, options=SamplingOptions(num_samples=2, steps=3, top_k=4), callback=stop)
    code, out, _ = run(capsys, "--db", db, "runs")
    assert "failed" in out
    code, _, err = run(capsys, "--db", db, "sample", "--data", data_file, "--resume", "1", "--num", "3")
    assert code == 2 and "drop --num" in err
    code, _, err = run(capsys, "--db", db, "sample", "--data", data_file, "--limit", "5", "--resume", "1")
    assert code == 2 and "fingerprint" in err
    code, out, err = run(capsys, "--db", db, "sample", "--data", data_file, "--resume", "1")
    assert code == 0, err
    assert "run 1: complete" in out
    code, out, _ = run(capsys, "--db", db, "sql", "SELECT count(DISTINCT step) AS s FROM steps WHERE run_id = 1")
    assert out.split()[2] == "3"


def test_locked_store(tmp_path, capsys):
    db = tmp_path / "p.duckdb"
    database.upgrade(db)
    holder = LockHolder(db)
    try:
        code, _, err = run(capsys, "--db", db, "--lock-timeout", "0.2", "sql", "SELECT 1")
        assert code == 2 and "another process" in err and str(db) in err
    finally:
        holder.release()
    assert run(capsys, "--db", db, "sql", "SELECT 1")[0] == 0


def test_bad_options(tmp_path, capsys, data_file):
    db = tmp_path / "p.duckdb"
    database.upgrade(db)
    for argv, message in (
        (["sample", "--data", data_file, "--mass", "1.5"], "--mass must be in (0, 1]"),
        (["sample", "--data", data_file, "--num", "0"], "--num must be an integer >= 1, got 0"),
        (["sample", "--data", data_file, "--patch-size", "99"], "patch_size 99 does not fit the 8x8 images"),
        (["sample", "--data", data_file, "--denoiser", "empirical", "--patch-size", "3"], "--patch-size applies"),
        (["sample", "--data", tmp_path / "nothing.npz"], "nothing.npz"),
        (["--lock-timeout", "-1", "runs"], "--lock-timeout"),
        (["sql", "SELECT 1", "--max-rows", "-3"], "--max-rows"),
    ):
        code, _, err = run(capsys, "--db", db, *argv)
        assert code == 2 and message in err, (argv, err)
    code, _, err = run(capsys, "--db", db, "sample", "--sampler", "rk4")
    assert code == 2 and "invalid choice" in err
    with database.connect(db, read_only=True) as conn:
        assert conn.execute("SELECT count(*) FROM runs").fetchone()[0] == 0


def test_image_folder_size_policy_from_the_command_line(tmp_path, capsys):
    """--resize / --size reach the image-folder loader, which its mixed-size error names."""
    from PIL import Image

    from auditor.cli.common import RESIZE_POLICIES
    from pspc.data.image_folder import RESIZE_POLICIES as LOADER_POLICIES

    assert RESIZE_POLICIES == LOADER_POLICIES
    db, folder = tmp_path / "p.duckdb", tmp_path / "images"
    folder.mkdir()
    Image.new("L", (8, 8), 30).save(folder / "a.png")
    Image.new("L", (12, 10), 200).save(folder / "b.png")
    database.upgrade(db)
    code, _, err = run(capsys, "--db", db, "ingest", folder)
    assert code == 2 and "mixed image sizes" in err and "--resize POLICY --size HxW" in err
    code, out, err = run(capsys, "--db", db, "ingest", folder, "--resize", "center-crop", "--size", "8")
    assert code == 0 and "2 images 1x8x8" in out, err
    code, _, err = run(capsys, "--db", db, "ingest", folder, "--resize", "pad", "--size", "8y")
    assert code == 2 and "--size '8y': expected H or HxW" in err


def test_a_bug_prints_its_traceback_and_exits_1(tmp_path, capsys, monkeypatch):
    """auditor.errors.outcome decides: user errors are one line and exit 2; anything else (a plain
    ValueError included) is a bug: traceback, exit 1; Ctrl-C is 130 with the resume hint for `sample`."""
    from auditor.cli import sampling, store
    from auditor.errors import NotFoundError

    db = tmp_path / "p.duckdb"
    database.upgrade(db)

    def raising(exc):
        def handler(args, argv=None):
            raise exc
        return handler

    monkeypatch.setattr(store, "cmd_runs", raising(ValueError("a bug, not the user's input")))
    code, _, err = run(capsys, "--db", db, "runs")
    assert code == 1 and "Traceback" in err and "ValueError: a bug, not the user's input" in err
    monkeypatch.setattr(store, "cmd_runs", raising(NotFoundError("no run 9")))
    code, _, err = run(capsys, "--db", db, "runs")
    assert code == 2 and err == "auditor: error: no run 9\n"
    monkeypatch.setattr(store, "cmd_runs", raising(FileNotFoundError(2, "No such file or directory", "x.npy")))
    code, _, err = run(capsys, "--db", db, "runs")
    assert code == 2 and err.startswith("auditor: error: ") and "x.npy" in err
    monkeypatch.setattr(sampling, "cmd_sample", raising(KeyboardInterrupt()))
    code, _, err = run(capsys, "--db", db, "sample")
    assert code == 130 and "auditor sample --resume RUN_ID" in err


def test_serve_options_override_the_environment_which_overrides_defaults(tmp_path, monkeypatch):
    from auditor.cli.parser import build_parser
    from auditor.cli.sampling import serve_settings

    monkeypatch.setenv("AUDITOR_SQL_ROW_CAP", "7")
    monkeypatch.setenv("AUDITOR_MAX_RUNNING_JOBS", "3")
    args = build_parser().parse_args(["--db", str(tmp_path / "s.duckdb"), "serve", "--max-running-jobs", "2"])
    settings = serve_settings(args)
    assert (settings.sql_row_cap, settings.max_running_jobs, settings.sql_time_limit_s) == (7, 2, 5.0)
    monkeypatch.setenv("AUDITOR_SQL_ROW_CAP", "abc")
    with pytest.raises(UserError, match="sql_row_cap"):  # exit 2, the field named
        serve_settings(args)


HUGE = "100000000000000000000"  # 10**20 > 2**63


@pytest.mark.parametrize("argv, option", [(["sample", "--num", HUGE], "--num"), (["sample", "--num", "1e20"], "--num"),
                                          (["sample", "--steps", HUGE], "--steps"),
                                          (["sample", "--top-k", HUGE], "--top-k"),
                                          (["sample", "--resume", HUGE], "--resume"),
                                          (["sample", "--seed", "-" + HUGE], "--seed"),
                                          (["fidelity", "show", HUGE], "ID"),
                                          (["compare", "--num", HUGE], "--num"),
                                          (["train-network", "--threads", HUGE], "--threads"),
                                          (["show", "1/0", "--top", HUGE], "--top"),
                                          (["sql", "SELECT 1", "--max-rows", HUGE], "--max-rows"),
                                          (["keys", "revoke", HUGE], "ID")])
def test_integer_options_out_of_range_are_usage_errors(tmp_path, capsys, argv, option):
    db = tmp_path / "p.duckdb"
    assert run(capsys, "--db", db, "db", "upgrade")[0] == 0
    code, out, err = run(capsys, "--db", db, *argv)
    assert code == 2, err
    assert f"error: argument {option}: " in err and "Traceback" not in err, err
    assert err.strip().splitlines()[-1].startswith("auditor "), err
