"""Sampling runs over ranks (auditor.workflows.distributed, `auditor sample --distributed`): a
2-rank torchrun run records what one process records; a rank that dies mid-run fails the run
with the error recorded, and the run resumes in one process to the uninterrupted result; a
1-rank group in this process; what the CLI refuses to run over ranks (resuming over ranks:
test_distributed_workflows)."""

from __future__ import annotations

import json

import pytest
import torch

from auditor.store import database
from auditor.store.recorder import from_blob
from auditor.workflows.distributed import record_distributed_sampling_run
from auditor.workflows.options import SamplingOptions
from auditor.workflows.sampling import record_sampling_run, resume_run
from tests.auditor.workflows.distributed_worker import OPTIONS
from tests.support.cli import run_cli
from tests.support.data import fashion_mnist, random_set
from tests.support.distributed import free_port, launch_ranks, torchrun
from tests.support.store import fetch

WEIGHTS = "SELECT sample_index, step, position, rank, image_index, flip, weight FROM patch_weights WHERE run_id = ? ORDER BY 1, 2, 3, 4"
STATS = "SELECT sample_index, step, position, mass, entropy, ess FROM patch_stats WHERE run_id = ? ORDER BY 1, 2, 3"
STEPS = "SELECT sample_index, step, t, z, denoised FROM steps WHERE run_id = ? ORDER BY 1, 2"
FINAL = "SELECT final_image FROM samples WHERE run_id = ? ORDER BY sample_index"


def assert_same_run(db, run_id, reference_db, reference_id, shape):
    """The two runs' stored weights (same entries, weights to 1e-6), statistics, steps and final images agree."""
    weights, expected = fetch(db, WEIGHTS, [run_id]), fetch(reference_db, WEIGHTS, [reference_id])
    assert len(weights) == len(expected) > 0
    assert [row[:6] for row in weights] == [row[:6] for row in expected]
    assert max(abs(a[6] - b[6]) for a, b in zip(weights, expected)) < 1e-6
    stats, expected = fetch(db, STATS, [run_id]), fetch(reference_db, STATS, [reference_id])
    assert [row[:3] for row in stats] == [row[:3] for row in expected]
    torch.testing.assert_close(torch.tensor([row[3:] for row in stats]), torch.tensor([row[3:] for row in expected]),
                               rtol=1e-5, atol=1e-6)
    for found, reference in zip(fetch(db, STEPS, [run_id]), fetch(reference_db, STEPS, [reference_id])):
        assert found[:3] == reference[:3]
        for a, b in zip(found[3:], reference[3:]):
            torch.testing.assert_close(from_blob(a, shape), from_blob(b, shape), rtol=0, atol=1e-5)
    finals = [from_blob(row[0], shape) for row in fetch(db, FINAL, [run_id])]
    for found, reference in zip(finals, (from_blob(row[0], shape) for row in fetch(reference_db, FINAL, [reference_id]))):
        torch.testing.assert_close(found, reference, rtol=0, atol=1e-5)


def denoiser_record(db, run_id) -> dict:
    return json.loads(fetch(db, "SELECT denoiser FROM runs WHERE id = ?", [run_id])[0][0])


@pytest.mark.slow
def test_a_two_rank_auditor_sample_records_what_one_process_records(tmp_path):
    data = fashion_mnist(24)  # what --data fashion-mnist --limit 24 loads (with x-flips)
    one, two = tmp_path / "one.duckdb", tmp_path / "two.duckdb"
    for db in (one, two):
        database.upgrade(db)
    options = ["--data", "fashion-mnist", "--limit", "24", "--num-samples", "2", "--steps", "4", "--top-k", "4"]
    code, out, err = torchrun(["-m", "auditor.cli", "--db", two, "sample", "--distributed", *options])
    assert code == 0, err[-4000:]
    assert "run 1: complete, 2 samples x 4 steps, the training set sharded over 2 ranks" in out
    reference = record_sampling_run(one, data, options=SamplingOptions(num_samples=2, steps=4, top_k=4))
    assert_same_run(two, 1, one, reference, data.image_shape)
    record = denoiser_record(two, 1)
    assert record.pop("distributed") == {"world_size": 2, "backend": "gloo", "shards": [[0, 12], [12, 24]]}
    assert record == denoiser_record(one, reference)  # the whole set's record: same data fingerprint


@pytest.mark.slow
def test_a_rank_that_dies_mid_run_fails_the_run_with_the_error_and_it_resumes_to_the_uninterrupted_result(tmp_path):
    db, reference_db = tmp_path / "two.duckdb", tmp_path / "one.duckdb"
    for path in (db, reference_db):
        database.upgrade(path)
    (code, out, err), (dead, _, _) = launch_ranks(["-m", "tests.auditor.workflows.distributed_worker", str(db)])
    assert code == 0 and dead == 3, err[-4000:]
    assert "failed: rank 0 of 2 (gloo): the log-normaliser max collective failed" in out, out
    (status, error), = fetch(db, "SELECT status, error FROM runs WHERE id = 1")
    assert status == "failed" and error.startswith("CollectiveError: rank 0 of 2 (gloo)"), error
    assert [row[0] for row in fetch(db, "SELECT DISTINCT step FROM steps ORDER BY 1")] == [0, 1]
    assert all(row[0] is None for row in fetch(db, FINAL, [1]))  # nothing of the unfinished samples is final

    resume_run(db, 1, random_set())  # in one process: the stored denoiser, less "distributed", is rebuilt
    reference = record_sampling_run(reference_db, random_set(), options=OPTIONS)
    assert fetch(db, "SELECT status FROM runs WHERE id = 1") == [("complete",)]
    assert_same_run(db, 1, reference_db, reference, random_set().image_shape)


def test_one_rank_in_this_process_records_the_run_with_its_distribution(empty_db, tmp_path, monkeypatch):
    for name, value in {"RANK": "0", "WORLD_SIZE": "1", "LOCAL_RANK": "0", "MASTER_ADDR": "127.0.0.1",
                        "MASTER_PORT": str(free_port())}.items():
        monkeypatch.setenv(name, value)
    run_id = record_distributed_sampling_run(empty_db, random_set(), options=OPTIONS)
    assert not torch.distributed.is_initialized()  # left at the end
    reference_db = tmp_path / "one.duckdb"
    database.upgrade(reference_db)
    reference = record_sampling_run(reference_db, random_set(), options=OPTIONS)
    assert denoiser_record(empty_db, run_id)["distributed"] == {"world_size": 1, "backend": "gloo",
                                                                "shards": [[0, 12]]}
    assert_same_run(empty_db, run_id, reference_db, reference, random_set().image_shape)


def test_distributed_without_torchrun_says_how_to_launch(empty_db, capsys, monkeypatch):
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR"):
        monkeypatch.delenv(name, raising=False)
    code, _, err = run_cli(capsys, "--db", empty_db, "sample", "--distributed", "--num", "1")
    assert code == 2 and "--distributed needs torchrun's environment" in err and "torchrun --nproc-per-node" in err


@pytest.mark.parametrize("option, value, why", [("--dataset", "1", "every rank loads the training set"),
                                                 ("--parquet", "out", "every rank would record its own run")])
def test_what_does_not_run_over_ranks_is_refused_under_torchrun(empty_db, capsys, monkeypatch, option, value, why):
    for name, env in {"RANK": "0", "WORLD_SIZE": "2", "LOCAL_RANK": "0", "MASTER_ADDR": "127.0.0.1"}.items():
        monkeypatch.setenv(name, env)  # torchrun's environment implies --distributed
    code, _, err = run_cli(capsys, "--db", empty_db, "sample", option, value)
    assert code == 2 and f"{option} does not run over ranks: {why}" in err, err


def test_the_collective_timeout_must_be_positive(empty_db, capsys, monkeypatch):
    for name, env in {"RANK": "0", "WORLD_SIZE": "2", "LOCAL_RANK": "0", "MASTER_ADDR": "127.0.0.1"}.items():
        monkeypatch.setenv(name, env)
    code, _, err = run_cli(capsys, "--db", empty_db, "sample", "--collective-timeout", "0")
    assert code == 2 and "--collective-timeout must be > 0 seconds, got 0.0" in err, err


def test_num_samples_spells_num_where_torchrun_would_take_num_for_its_own_numa_options():
    from auditor.cli.parser import build_parser

    assert build_parser().parse_args(["sample", "--num-samples", "3"]).num == 3
