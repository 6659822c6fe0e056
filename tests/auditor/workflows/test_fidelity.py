"""Fidelity studies (auditor.workflows.fidelity) in the store (auditor.store.studies, revision 0007) and
`auditor fidelity run|import|list|show`.

`study_result()` (tests.support.store) builds a fidelity.json-shaped result from the library's
own classes with random numbers (no network: fast); tests/reports/test_fidelity.py uses it too. The end
to end tests run a whole study on the first 200 Fashion-MNIST images with a tiny untrained
EDM network, through the CLI and through bench/fidelity.py.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from auditor import cli
from auditor.store import database, studies
from auditor.workflows import fidelity
from auditor.workflows.options import KINDS, StudyOptions
from tests.support.cli import run_cli
from tests.support.data import FASHION_MNIST_ROOT
from tests.support.paths import REPO
from tests.support.store import NAMES, fetch, study_result

TABLES = ("fidelity_studies", "fidelity_errors", "fidelity_concentration", "fidelity_similarity", "fidelity_schedule")


def counts(db) -> dict:
    return {table: fetch(db, f"SELECT count(*) FROM {table}")[0][0] for table in TABLES}


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny networks on a shared CPU: one thread avoids OpenMP oversubscription (torch's, and
    numba's, whose kernels reset the OpenMP thread count that torch's LAPACK then uses)."""
    import numba

    threads, kernels = torch.get_num_threads(), numba.get_num_threads()
    torch.set_num_threads(1)
    numba.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
    numba.set_num_threads(kernels)


# ---------------------------------------------------------------------------------------
# Migration 0007
# ---------------------------------------------------------------------------------------
def test_migration_0007_creates_the_tables_and_downgrade_drops_them(tmp_path):
    db = tmp_path / "store.duckdb"
    assert database.upgrade(db, "0006") == (None, "0006")
    assert not {n for (n,) in fetch(db, "SELECT table_name FROM duckdb_tables()")} & set(TABLES)
    assert database.upgrade(db, "0007") == ("0006", "0007")
    assert set(TABLES) <= {n for (n,) in fetch(db, "SELECT table_name FROM duckdb_tables()")}
    columns = {n for (n,) in fetch(db, "SELECT column_name FROM duckdb_columns() WHERE table_name = 'fidelity_errors'")}
    assert {"study_id", "process", "denoiser", "level", "t", "mse", "stderr", "states"} <= columns
    head = database.head_revision()
    assert database.upgrade(db) == ("0007", head)  # writing needs the current schema
    studies.store_study(db, study_result())
    assert database.upgrade(db, "0006") == (head, "0006")
    assert not {n for (n,) in fetch(db, "SELECT table_name FROM duckdb_tables()")} & set(TABLES)
    assert database.upgrade(db) == ("0006", database.head_revision())


# ---------------------------------------------------------------------------------------
# Store and load
# ---------------------------------------------------------------------------------------
def test_store_then_load_gives_back_every_number(empty_db):
    result = study_result()
    study_id = studies.store_study(empty_db, result, source="test")
    loaded = studies.load_study(empty_db, study_id)
    assert loaded["id"] == study_id and loaded["name"] == "fidelity-test" and loaded["source"] == "test"
    assert loaded["network_sha256"] == "c" * 64 and loaded["training_fingerprint"] == "a" * 64
    assert loaded["test_fingerprint"] == "b" * 64 and loaded["seed"] == 7
    assert loaded["record"] == result["record"] and loaded["findings"] == result["findings"]
    assert list(loaded["curves"]) == ["forward", "reverse"]
    for process, curve in result["curves"].items():
        got = loaded["curves"][process]
        for key in ("process", "times", "names", "mse", "stderr", "denoisers"):
            assert got[key] == curve[key], (process, key)  # exact: DOUBLE columns
        assert got["states"] == len(curve["errors"][0][0])
    for key in ("times", "fractions", "mean_side", "median_side", "within", "record"):
        assert loaded["concentration"][key] == result["concentration"][key], key
    assert loaded["similarity_to_network"] == result["similarity_to_network"]
    assert loaded["descriptor"] == "pixel-correlation-32x32 (not SSCD)"
    assert loaded["similarity"] == {k: v for k, v in result["similarity"].items() if k != "scores"}
    assert loaded["tuned_schedule"] == result["tuned_schedule"]
    assert studies.store_study(empty_db, loaded) == study_id + 1  # a loaded study stores again


def test_rows_answer_plain_sql(empty_db):
    result = study_result()
    study_id = studies.store_study(empty_db, result, name="mine")
    closest = fetch(empty_db, "SELECT level, arg_min(denoiser, mse) FROM fidelity_errors WHERE study_id = ? "
                              "AND process = 'forward' GROUP BY level ORDER BY level", [study_id])
    curve = result["curves"]["forward"]
    assert [name for _, name in closest] == [curve["names"][int(np.argmin(np.array(curve["mse"])[:, k]))]
                                             for k in range(len(curve["times"]))]
    assert fetch(empty_db, "SELECT denoiser, similarity, descriptor FROM fidelity_similarity ORDER BY position") == \
        [(n, v, "pixel-correlation-32x32 (not SSCD)") for n, v in result["similarity_to_network"].items()]
    assert fetch(empty_db, "SELECT step, patch_size, flex_lambda FROM fidelity_schedule ORDER BY step") == \
        [(0, 28, 1.0), (1, 9, 0.6), (2, 5, 0.4), (3, 3, 0.2)]
    assert fetch(empty_db, "SELECT count(*) FROM fidelity_concentration")[0][0] == 9
    assert fetch(empty_db, "SELECT name, network_sha256, training_fingerprint FROM fidelity_studies") == \
        [("mine", "c" * 64, "a" * 64)]


def test_list_studies_newest_first(empty_db):
    assert studies.list_studies(empty_db) == []
    first = studies.store_study(empty_db, study_result(0))
    bare = study_result(1)
    bare.update(similarity=None, similarity_to_network=None, tuned_schedule=None)
    second = studies.store_study(empty_db, bare, name="no sampling")
    rows = studies.list_studies(empty_db)
    assert [r["id"] for r in rows] == [second, first]
    assert rows[0]["name"] == "no sampling" and not rows[0]["tuned"] and rows[0]["descriptor"] is None
    assert rows[1]["tuned"] and rows[1]["processes"] == ["forward", "reverse"] and rows[1]["denoisers"] == NAMES
    assert rows[1]["training_set"] == "fashion-mnist-train" and rows[1]["network_name"] == "tiny"
    loaded = studies.load_study(empty_db, second)
    assert loaded["similarity"] is None and loaded["similarity_to_network"] is None and loaded["tuned_schedule"] is None


def test_unknown_study_is_not_found(empty_db):
    with pytest.raises(database.NotFoundError, match="no fidelity study 3"):
        studies.load_study(empty_db, 3)


def _set(path: str, value):
    def change(result):
        *parents, last = path.split(".")
        target = result
        for key in parents:
            target = target[int(key)] if isinstance(target, list) else target[key]
        if value is KeyError:
            del target[last]
        elif isinstance(target, list):
            target[int(last)] = value
        else:
            target[last] = value
    return change


BAD = [
    (_set("curves", KeyError), "curves is missing"),
    (_set("record.training_set.fingerprint", KeyError), "record.training_set.fingerprint is missing"),
    (_set("curves.forward.mse.1.2", float("nan")), "curves.forward.mse[1][2] is NaN"),
    (_set("curves.reverse.stderr.0.0", float("inf")), "curves.reverse.stderr[0][0] is infinite"),
    (_set("curves.forward.times.0", "0.1"), "curves.forward.times[0] must be a number, got str"),
    (_set("curves.forward.mse.3", [0.1, 0.2]), "curves.forward.mse[3] must have 4 entries, got 2"),
    (_set("curves.forward.names", "empirical"), "curves.forward.names must be a list, got str"),
    (_set("concentration.mean_side.2.1", None), "concentration.mean_side[2][1] must be a number, got null"),
    (_set("similarity_to_network.gaussian", float("nan")), "similarity_to_network.gaussian is NaN"),
    (_set("similarity", None), "similarity is null, but similarity_to_network needs its descriptor"),
    (_set("tuned_schedule.2.lambda", -1.0), "tuned_schedule[2].lambda must be > 0"),
    (_set("tuned_schedule.1.patch_size", 4.5), "tuned_schedule[1].patch_size must be an integer, got float"),
    (_set("findings.0", 3), "findings[0] must be a string, got int"),
    (_set("record", []), "record must be an object, got list"),
]


@pytest.mark.parametrize("change, message", BAD, ids=[m.split(" ")[0] for _, m in BAD])
def test_bad_results_are_refused_naming_the_field_and_nothing_is_stored(empty_db, change, message):
    result = study_result()
    change(result)
    with pytest.raises(studies.StudyError, match=f"fidelity result: {message}".replace("[", r"\[").replace(
            "]", r"\]").replace("(", r"\(").replace(")", r"\)")):
        studies.store_study(empty_db, result)
    assert counts(empty_db) == dict.fromkeys(TABLES, 0)


def test_store_in_the_callers_session_rolls_back_with_it(empty_db):
    class Later(Exception):
        pass

    with pytest.raises(Later):
        with database.session(empty_db) as session:
            assert studies.store_study(session, study_result()) >= 1
            raise Later
    assert counts(empty_db) == dict.fromkeys(TABLES, 0)
    with database.session(empty_db) as session:
        study_id = studies.store_study(session, study_result(), name="in a session")
    assert studies.load_study(empty_db, study_id)["name"] == "in a session"


def test_store_refuses_a_store_at_another_revision(tmp_path):
    old = tmp_path / "old.duckdb"
    database.upgrade(old, "0006")
    with pytest.raises(database.SchemaError, match="auditor db upgrade"):
        studies.store_study(old, study_result())
    with pytest.raises(database.StoreError, match="no provenance store"):
        studies.store_study(tmp_path / "missing.duckdb", study_result())
    assert not (tmp_path / "missing.duckdb").exists()


# ---------------------------------------------------------------------------------------
# CLI: import, list, show and their errors
# ---------------------------------------------------------------------------------------
def test_cli_import_list_show(empty_db, tmp_path, capsys):
    path = tmp_path / "fidelity.json"
    result = study_result()
    path.write_text(json.dumps(result, indent=1))
    code, out, err = run_cli(capsys, "fidelity", "import", path, "--db", empty_db)
    assert code == 0 and "fidelity study 1: imported" in out and "/fidelity/1" in out, err
    code, out, _ = run_cli(capsys, "fidelity", "list", "--db", empty_db)
    assert code == 0 and "fidelity-test" in out and ("c" * 12) in out and ("a" * 12) in out
    code, out, _ = run_cli(capsys, "fidelity", "show", "1", "--db", empty_db)
    mse = result["curves"]["reverse"]["mse"]
    assert code == 0 and "reverse process" in out and f"{mse[2][1]:.3e}" in out and result["findings"][0] in out
    assert "tuned schedule" in out and "pixel-correlation-32x32 (not SSCD)" in out


def test_cli_errors_are_one_line_exit_2_and_store_nothing(empty_db, tmp_path, capsys):
    bad_json = tmp_path / "bad.json"
    bad_json.write_text('{"record": ')
    nan = tmp_path / "nan.json"
    result = study_result()
    result["curves"]["forward"]["mse"][0][1] = float("nan")
    nan.write_text(json.dumps(result))  # NaN, as json.dumps writes it
    for argv, words in [(["import", tmp_path / "missing.json"], "missing.json: no such file"),
                        (["import", bad_json], "bad.json: not a fidelity.json (invalid JSON"),
                        (["import", nan], "curves.forward.mse[0][1] is NaN"),
                        (["show", "9"], "no fidelity study 9"),
                        (["run", "--network", tmp_path / "none.pt"], "no network at"),
                        (["run", "--denoisers", "nope"], "unknown denoiser(s) ['nope']")]:
        code, out, err = run_cli(capsys, "fidelity", *argv, "--db", empty_db)
        assert code == 2 and err.startswith("auditor: error: ") and words in err, (argv, err)
        assert "Traceback" not in err and len(err.strip().splitlines()) == 1
    code, _, err = run_cli(capsys, "fidelity", "list", "--db", tmp_path / "none.duckdb")
    assert code == 2 and "auditor db upgrade" in err
    assert counts(empty_db) == dict.fromkeys(TABLES, 0)


# ---------------------------------------------------------------------------------------
# End to end: a whole (tiny) study through the CLI and through bench/fidelity.py
# ---------------------------------------------------------------------------------------
TINY_STUDY = ["--limit", "200", "--test-images", "2", "--samples", "2", "--steps", "3", "--ts", "0.5,2",
              "--sensitivity-grid", "1", "--sensitivity-samples", "1", "--denoisers", "gaussian,pspc-square",
              "--descriptor", "pixel-correlation", "--tune", "--tune-states", "1", "--tune-sizes", "3,28",
              "--tune-lambdas", "0.5,1", "--seed", "3"]


@pytest.fixture(scope="module")
def tiny_network(tmp_path_factory) -> Path:
    """An untrained 28x28 EDM network (random weights, no attention: fast on a CPU)."""
    if not os.path.isdir(FASHION_MNIST_ROOT):
        pytest.skip("Fashion-MNIST not installed: apt-get install -y dataset-fashion-mnist")
    from pspc.networks import NetworkConfig, save_network
    from tests.support.networks import tiny_net

    config = NetworkConfig(image_channels=1, resolution=(28, 28), model_channels=8, channel_mult=(1, 2),
                           attention_levels=(), groups=4)
    return save_network(tmp_path_factory.mktemp("network") / "tiny28.pt", tiny_net(config))


@pytest.fixture(scope="module")
def cli_study(tiny_network, tmp_path_factory) -> tuple[Path, str]:
    db = tmp_path_factory.mktemp("fidelity-run") / "provenance.duckdb"
    database.upgrade(db)
    argv = ["fidelity", "run", "--db", str(db), "--network", str(tiny_network), *TINY_STUDY, "--name", "tiny"]
    code = cli.main(argv)
    assert code == 0
    return db, studies.list_studies(db)[0]["id"]


@pytest.mark.slow
def test_cli_run_stores_the_whole_study(cli_study, tiny_network):
    db, study_id = cli_study
    study = studies.load_study(db, study_id)
    assert study["name"] == "tiny" and study["source"] == "auditor fidelity run"
    assert study["record"]["command"][:3] == ["auditor", "fidelity", "run"]
    configuration = study["record"]["configuration"]
    assert "db" not in configuration and "name" not in configuration and configuration["seed"] == 3
    assert study["network_sha256"] == study["record"]["network"]["network"]["sha256"]
    assert len(study["network_sha256"]) == 64 and study["record"]["training_set"]["count"] == 200
    names = ["gaussian", "pspc-square", "pspc-square (tuned)"]
    assert study["curves"]["forward"]["names"] == names and study["curves"]["forward"]["times"] == [0.5, 2.0]
    assert study["curves"]["forward"]["states"] == 2 and study["curves"]["reverse"]["states"] == 2
    assert len(study["curves"]["reverse"]["times"]) == 3  # one level per Euler step
    assert all(v > 0 and math.isfinite(v) for row in study["curves"]["reverse"]["mse"] for v in row)
    assert study["concentration"]["times"] == [1.0] and study["concentration"]["fractions"] == [0.5, 0.75, 0.95]
    assert list(study["similarity_to_network"]) == names
    assert study["descriptor"].startswith("pixel-correlation")
    tuned = study["tuned_schedule"]
    assert len(tuned) == 3 and all(row["patch_size"] in (3, 28) and row["lambda"] in (0.5, 1.0) for row in tuned)
    assert study["record"]["schedule_file"] is None  # no --out: the tuned file was temporary
    assert any("pspc-square closer than gaussian" in line for line in study["findings"])


@pytest.mark.slow
def test_bench_writes_its_files_and_stores_the_same_numbers(cli_study, tiny_network, tmp_path):
    db, study_id = cli_study
    out = tmp_path / "bench-out"
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "NUMBA_NUM_THREADS": "1"}
    completed = subprocess.run([sys.executable, "bench/fidelity.py", "--network", str(tiny_network), *TINY_STUDY,
                                "--out", str(out), "--db", str(db)], cwd=REPO, env=env, capture_output=True,
                               text=True, timeout=300)
    assert completed.returncode == 0, completed.stderr[-3000:]
    assert {"fidelity.json", "summary.md", "sensitivity.pt", "schedule.json", "samples.npy", "mse_forward.png",
            "mse_reverse.png", "concentration.png", "samples.png", "similarity.png"} <= {p.name for p in out.iterdir()}
    assert (out / "mse_forward.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    written = json.loads((out / "fidelity.json").read_text())
    assert list(written) == list(studies.RESULT_KEYS)
    assert written["record"]["configuration"]["out"] == str(out)
    assert written["record"]["schedule_file"] == str(out / "schedule.json")
    assert "## The paper's finding on this data" in (out / "summary.md").read_text()
    listed = studies.list_studies(db)
    assert len(listed) == 2 and listed[0]["source"] == str(out / "fidelity.json")
    stored, by_cli = studies.load_study(db, listed[0]["id"]), studies.load_study(db, study_id)
    for process, curve in written["curves"].items():
        assert stored["curves"][process]["mse"] == curve["mse"]
        assert np.ravel(stored["curves"][process]["mse"]).tolist() == pytest.approx(
            np.ravel(by_cli["curves"][process]["mse"]).tolist(), rel=1e-6)  # same options, same numbers
    assert stored["tuned_schedule"] == by_cli["tuned_schedule"]
    # the file imports again (the format every earlier run wrote)
    code = cli.main(["fidelity", "import", str(out / "fidelity.json"), "--db", str(db), "--name", "again"])
    assert code == 0 and studies.load_study(db, listed[0]["id"] + 1)["curves"] == stored["curves"]
    # a bad option is one line and exit status 2
    completed = subprocess.run([sys.executable, "bench/fidelity.py", "--test-images", "0"], cwd=REPO, env=env,
                               capture_output=True, text=True, timeout=120)
    assert completed.returncode == 2 and completed.stderr.strip() == "fidelity: error: --test-images must be >= 1"


def test_study_options_resolve_presets():
    quick = StudyOptions(quick=True, limit=200).resolved()
    assert quick.limit == 200 and quick.test_images == 8 and quick.times == [0.03, 0.1, 0.3, 1.0, 3.0, 10.0]
    full = StudyOptions().resolved()
    assert full.limit is None and full.grid == [0.01, 0.03, 0.1, 0.3, 1.0, 3.0, 10.0, 30.0]
    assert full.kinds == list(KINDS) == list(fidelity.KINDS)
    with pytest.raises(studies.StudyError, match="--ts takes comma-separated numbers"):
        StudyOptions(ts="a,b").resolved()
    with pytest.raises(studies.StudyError, match="no schedule file at"):
        StudyOptions(schedule="/nonexistent/schedule.json").resolved()
    with pytest.raises(studies.StudyError, match="--test-images must be >= 1"):
        StudyOptions(test_images=0).resolved()


def test_study_options_from_the_command_line():
    """`auditor fidelity run` and bench/fidelity.py: the parsed options are a StudyOptions, whose
    record keeps every option in the parser's order, then times, grid and kinds."""
    import argparse

    from auditor.cli.fidelity import add_study_options, study_options

    parser = add_study_options(argparse.ArgumentParser(add_help=False))
    args = parser.parse_args(["--quick", "--limit", "200", "--schedule", str(REPO / "README.md")])
    options = study_options(args).resolved()
    assert options == StudyOptions(quick=True, limit=200, schedule=REPO / "README.md").resolved()
    configuration = options.configuration(Path("out/x"))
    dests = [action.dest for action in parser._actions]  # the parser's own order, as the record had it
    assert list(configuration) == [*dests, "out", "times", "grid", "kinds"]
    assert configuration["schedule"] == str(REPO / "README.md") and configuration["out"] == "out/x"
    assert "out" not in options.configuration()
