"""Workflows led by rank 0 over ranks (auditor.workflows.distributed.over_ranks, pspc.sharded.CallChannel):
a comparison, an audit, two counterfactuals and a resumed run over 2 gloo ranks record what one process
records (every table, to rounding), with the PSPC runs' denoiser records saying how the set was sharded;
a rank that cannot start fails rank 0 before it records anything; a run failed part-way and resumed
over 2 ranks equals the uninterrupted one-process run; `auditor sample --resume RUN --distributed`
under torchrun; `compare`, `audit` and `counterfactual` under a 1-rank torchrun environment in this
process; what they refuse over ranks."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from auditor.store import database
from auditor.workflows.options import SamplingOptions
from auditor.workflows.sampling import record_sampling_run
from tests.auditor.workflows import led_worker
from tests.auditor.workflows.test_comparison import files  # noqa: F401 - the fixture: (store, data file, network file)
from tests.auditor.workflows.test_distributed_sampling import assert_same_run, denoiser_record
from tests.support.cli import run_cli
from tests.support.data import fashion_mnist, random_set
from tests.support.distributed import free_port, launch_ranks, torchrun
from tests.support.store import fetch

pytestmark = pytest.mark.usefixtures("one_torch_thread")

SHARDS = {"world_size": 2, "backend": "gloo", "shards": [[0, 6], [6, 12]]}
VOLATILE = {"created_at", "started_at", "finished_at", "completed_at", "updated_at", "timings", "writer", "seconds",
            "parent_seconds", "sampling_seconds", "elapsed"}  # what differs between any two recordings


def stored(db) -> dict[str, list[dict]]:
    """Every table's rows without the VOLATILE columns, in a fixed order."""
    tables = [t for (t,) in fetch(db, "SELECT table_name FROM information_schema.tables WHERE table_type = 'BASE "
                                      "TABLE' ORDER BY 1")]
    found = {}
    for table in tables:
        columns = [c for (c,) in fetch(db, "SELECT column_name FROM information_schema.columns WHERE table_name = ? "
                                           "ORDER BY ordinal_position", [table]) if c not in VOLATILE]
        rows = fetch(db, f'SELECT {", ".join(chr(34) + c + chr(34) for c in columns)} FROM "{table}" ORDER BY ALL')
        found[table] = [dict(zip(columns, row)) for row in rows]
    return found


def assert_alike(found, expected, where: str) -> None:
    """Equal, but floats (and float32 image blobs) to rounding, JSON parsed, and a denoiser's
    "distributed" record (how the set was sharded) left out."""
    if isinstance(found, str) and isinstance(expected, str) and found[:1] in ("{", "["):
        found, expected = json.loads(found), json.loads(expected)
    if isinstance(found, dict) and isinstance(expected, dict):
        found, expected = ({k: v for k, v in d.items() if k not in VOLATILE | {"distributed"}} for d in (found, expected))
        assert found.keys() == expected.keys(), where
        for key in found:
            assert_alike(found[key], expected[key], f"{where}.{key}")
    elif isinstance(found, (list, tuple)) and isinstance(expected, (list, tuple)):
        assert len(found) == len(expected), where
        for i, (a, b) in enumerate(zip(found, expected)):
            assert_alike(a, b, f"{where}[{i}]")
    elif isinstance(found, bytes) and isinstance(expected, bytes) and len(found) % 4 == 0:
        assert len(found) == len(expected), where
        np.testing.assert_allclose(np.frombuffer(found, "<f4"), np.frombuffer(expected, "<f4"), rtol=0, atol=1e-5,
                                   err_msg=where)
    elif isinstance(found, float) and isinstance(expected, float):
        assert math.isclose(found, expected, rel_tol=1e-5, abs_tol=1e-6) or (math.isnan(found) and math.isnan(expected)), \
            (where, found, expected)
    else:
        assert found == expected, (where, found, expected)


@pytest.fixture(scope="module")
def led(tmp_path_factory):
    """(the store of the 2-rank phases, the one-process reference, an uninterrupted run of FAILED)."""
    root = tmp_path_factory.mktemp("led")
    two, one, uninterrupted = (root / f"{name}.duckdb" for name in ("two", "one", "uninterrupted"))
    for db in (two, one, uninterrupted):
        database.upgrade(db)
    for db in (two, one):
        assert led_worker.record_failed_run(db) == led_worker.FAILED_RUN
    ports = ",".join(str(free_port()) for _ in led_worker.PHASES)
    ranks = launch_ranks(["-m", "tests.auditor.workflows.led_worker", str(two), ports], timeout=400)
    for rank, (code, _, err) in enumerate(ranks):
        assert code == 0, f"rank {rank} failed:\n{err[-4000:]}"
    assert "unready: rank 0 of 2: not every rank started" in ranks[0][1], ranks[0][1]  # and recorded nothing
    assert "unready: this rank cannot read its training set" in ranks[1][1], ranks[1][1]
    led_worker.run_phases(one)
    record_sampling_run(uninterrupted, random_set(), options=led_worker.FAILED)
    return two, one, uninterrupted


@pytest.mark.slow
def test_rank_0_records_what_one_process_records_for_every_led_workflow(led):
    two, one, _ = led
    found, expected = stored(two), stored(one)
    assert found.keys() == expected.keys()
    assert len(expected["runs"]) == 7 and len(expected["counterfactuals"]) == 2 and expected["copy_verdicts"]
    for table in expected:
        assert len(found[table]) == len(expected[table]), table
        for i, (a, b) in enumerate(zip(found[table], expected[table])):
            assert_alike(a, b, f"{table}[{i}]")


@pytest.mark.slow
def test_the_led_pspc_runs_say_how_the_set_was_sharded(led):
    two, one, _ = led
    kinds = dict(fetch(two, "SELECT id, kind FROM runs"))
    assert kinds == {1: "pspc", 2: "network-explained", 3: "pspc", 4: "samples-only", 5: "external-audit",
                     6: "counterfactual", 7: "counterfactual"}
    for run_id in (2, 3, 5, 6, 7):  # the explainer, the PSPC run, the audit's and the counterfactuals' denoisers
        record = denoiser_record(two, run_id)
        assert record.pop("distributed") == SHARDS, run_id
        assert record == denoiser_record(one, run_id), run_id
    for run_id in (1, 4):  # created in one process (then resumed over ranks); the gaussian on rank 0 alone
        assert "distributed" not in denoiser_record(two, run_id), run_id


@pytest.mark.slow
def test_a_run_failed_part_way_and_resumed_over_two_ranks_equals_the_uninterrupted_run(led):
    two, _, uninterrupted = led
    assert fetch(two, "SELECT status FROM runs WHERE id = 1") == [("complete",)]
    timings = json.loads(fetch(two, "SELECT timings FROM runs WHERE id = 1")[0][0])
    assert timings["resumed_from_step"] == led_worker.FAIL_AT + 1
    assert timings["resumed_with"] == SHARDS  # created in one process: the record of the resume says two ranks
    assert_same_run(two, 1, uninterrupted, 1, random_set().image_shape)


@pytest.mark.slow
def test_auditor_sample_resume_distributed_continues_a_failed_run_over_two_ranks(tmp_path):
    data = fashion_mnist(24)  # what --data fashion-mnist --limit 24 loads (x-flips: the run's setting)
    db, reference = tmp_path / "two.duckdb", tmp_path / "one.duckdb"
    options = SamplingOptions(num_samples=2, steps=4, top_k=4, mass=0.95, sampler="heun")
    for path in (db, reference):
        database.upgrade(path)

    def fail(step, *_):
        if step == 1:
            raise RuntimeError("stopped on purpose")

    with pytest.raises(RuntimeError, match="on purpose"):
        record_sampling_run(db, data, options=options, callback=fail)
    code, out, err = torchrun(["-m", "auditor.cli", "--db", db, "sample", "--resume", "1", "--distributed",
                               "--data", "fashion-mnist", "--limit", "24"], timeout=300)
    assert code == 0, err[-4000:]
    assert "run 1: complete, 2 samples x 4 steps, resumed sharded over 2 ranks" in out, out
    expected = record_sampling_run(reference, data, options=options)
    assert_same_run(db, 1, reference, expected, data.image_shape)


# ---------------------------------------------------------------------------------------
# The commands under a 1-rank torchrun environment (this process), and what they refuse
# ---------------------------------------------------------------------------------------
@pytest.fixture
def one_rank(monkeypatch):
    for name, value in {"RANK": "0", "WORLD_SIZE": "1", "LOCAL_RANK": "0", "MASTER_ADDR": "127.0.0.1",
                        "MASTER_PORT": str(free_port())}.items():
        monkeypatch.setenv(name, value)


ONE_RANK = {"world_size": 1, "backend": "gloo", "shards": [[0, 12]]}


@pytest.mark.slow
def test_compare_audit_and_counterfactual_run_led_under_torchrun(files, one_rank, capsys):
    db, data, network = files
    code, out, err = run_cli(capsys, "--db", db, "compare", "--network", network, "--data", data, "--num-samples", 1,
                             "--steps", 2, "--patch-size", 3, "--denoisers", "pspc-square,gaussian", "--descriptor",
                             led_worker.DESCRIPTOR, "--copy-k", 1, "--top-k-merge", "tree")
    assert code == 0, err
    assert "comparison 1: network tiny" in out and not torch.distributed.is_initialized()
    image = data.parent / "image.npy"
    np.save(image, random_set().images[2].numpy())
    code, out, err = run_cli(capsys, "--db", db, "audit", image, "--no-network", "--data", data, "--noise-levels",
                             "1,0.3", "--descriptor", led_worker.DESCRIPTOR, "--copy-k", 1)
    assert code == 0, err
    assert "run 4: audit of" in out
    code, out, err = run_cli(capsys, "--db", db, "counterfactual", "2/0", "--top", 1, "--no-verdict")
    assert code == 0, err
    assert "counterfactual run 5 of sample 2/0" in out
    for run_id in (1, 2, 4, 5):
        assert denoiser_record(db, run_id)["distributed"] == ONE_RANK, run_id
    assert "distributed" not in denoiser_record(db, 3)  # gaussian: not a PSPC denoiser


@pytest.mark.parametrize("argv, why", [
    (["compare", "--dataset", "1"], "--dataset does not run over ranks: every rank loads the training set"),
    (["audit", "x.png", "--no-network", "--dataset", "1"], "--dataset does not run over ranks"),
    (["counterfactual", "1/0", "--list"], "--list does not run over ranks: run `auditor counterfactual --list`"),
    (["compare", "--collective-timeout", "-1"], "--collective-timeout must be > 0 seconds, got -1.0"),
])
def test_what_the_led_commands_refuse_under_torchrun(empty_db, capsys, monkeypatch, argv, why):
    for name, env in {"RANK": "0", "WORLD_SIZE": "2", "LOCAL_RANK": "0", "MASTER_ADDR": "127.0.0.1"}.items():
        monkeypatch.setenv(name, env)  # torchrun's environment implies --distributed
    code, _, err = run_cli(capsys, "--db", empty_db, *argv)
    assert code == 2 and why in err, err


def test_distributed_compare_without_torchrun_says_how_to_launch(empty_db, capsys, monkeypatch):
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR"):
        monkeypatch.delenv(name, raising=False)
    code, _, err = run_cli(capsys, "--db", empty_db, "counterfactual", "1/0", "--top", "1", "--distributed")
    assert code == 2 and "--distributed needs torchrun's environment" in err
    assert "torchrun --nproc-per-node N -m auditor.cli ... counterfactual --distributed" in err


def test_the_clis_merge_choices_are_the_engines():
    from auditor.cli.distributed import MERGE_CHOICES
    from pspc.posterior.distributed import MERGES

    assert MERGE_CHOICES == MERGES
