"""Exact PSPC sharded over processes (pspc.posterior.distributed, pspc.sharded): 2 local ranks
with gloo over loopback against one process, on both paths (fused kernels and torch), with
x-flips, mixed t in a batch, Flex masks, exclusion masks (one emptying a whole shard) and the
top-k; the collectives' bytes; a rank that stops answering; the shard split and the setup's errors."""

from __future__ import annotations

import pytest
import torch

from pspc.denoisers import pspc_square
from pspc.posterior.distributed import (
    DistributedError, TorchDistributedReduction, shard_range, start_process_group, torchrun_environment
)
from tests.pspc.posterior import distributed_worker
from tests.support.distributed import launch_ranks

WORKER = ["-m", "tests.pspc.posterior.distributed_worker"]


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory):
    """What rank 0 of a 2-rank run of distributed_worker found (same on both ranks)."""
    out = tmp_path_factory.mktemp("distributed") / "results.pt"
    results = launch_ranks([*WORKER, "compare", str(out)])
    for rank, (code, _, err) in enumerate(results):
        assert code == 0, f"rank {rank} failed:\n{err[-4000:]}"
    return torch.load(out, weights_only=False)


@pytest.mark.slow
def test_two_ranks_give_the_one_process_result_on_every_case(two_ranks):
    single = distributed_worker.results(distributed=False)
    assert two_ranks["results"].keys() == single.keys()
    for name, expected in single.items():
        found = two_ranks["results"][name]
        if name.endswith("/forward"):
            torch.testing.assert_close(found, expected, rtol=0, atol=1e-6, msg=name)
            continue
        (x_hat, weights), (x_ref, weights_ref) = found, expected
        torch.testing.assert_close(x_hat, x_ref, rtol=0, atol=1e-6, msg=name)
        assert len(weights) == len(weights_ref), name
        for (index, entry, weight, mass, entropy, ess, n), (index_ref, entry_ref, *ref) in zip(weights, weights_ref):
            assert index is None or torch.equal(index, index_ref), name
            assert torch.equal(entry, entry_ref), name  # the same top-k entries (global ids), in the same order
            for value, reference in zip((weight, mass, entropy, ess), ref[:4]):
                torch.testing.assert_close(value, reference, rtol=1e-5, atol=1e-6, msg=name)
            assert n == ref[4] == distributed_worker.NUM_IMAGES, name


@pytest.mark.slow
def test_the_collectives_carry_what_the_formula_says(two_ranks):
    batch, patches, pixels, top_k = 5, 1, 3 * 6 * 7, 5
    assert two_ranks["traffic"] == {k: (1, nbytes, pytest.approx(two_ranks["traffic"][k][2])) for k, nbytes in {
        "log-normaliser max": 8 * batch * patches, "log-normaliser sum": 8 * batch * patches,
        "numerator": 8 * batch * pixels, "entropy, sum w^2": 8 * (2 * batch * patches + 1),
        "top-k": 8 * 2 * batch * patches * top_k}.items()}


@pytest.mark.slow
def test_the_record_says_how_the_set_was_sharded_and_is_otherwise_the_whole_denoisers(two_ranks):
    record = two_ranks["describe"]
    assert record.pop("distributed") == {"world_size": 2, "backend": "gloo", "shards": [[0, 6], [6, 13]]}
    assert record == pspc_square(distributed_worker.training_set()).describe()


@pytest.mark.slow
def test_a_rank_that_stops_answering_fails_the_others_with_a_collective_error_after_the_timeout(tmp_path):
    out = tmp_path / "error.pt"
    results = launch_ranks([*WORKER, "hang", str(out)])
    assert results[0][0] == 0, results[0][2][-4000:]
    found = torch.load(out)
    assert "rank 0 of 2 (gloo): the log-normaliser max collective failed" in found["error"], found
    assert 2 < found["seconds"] < 15, found  # the 3 s timeout, not the sleeping rank's 6 s


def test_shards_are_consecutive_balanced_and_cover_the_set():
    for count, world in ((13, 2), (120, 8), (7, 7), (1000, 64)):
        shards = [shard_range(count, rank, world) for rank in range(world)]
        assert shards[0][0] == 0 and shards[-1][1] == count
        assert all(a[1] == b[0] for a, b in zip(shards, shards[1:]))
        sizes = [end - start for start, end in shards]
        assert max(sizes) - min(sizes) <= 1 and min(sizes) >= 1


def test_a_shard_split_that_leaves_a_rank_without_images_is_refused():
    with pytest.raises(DistributedError, match="3 training images cannot be split over 4 ranks"):
        shard_range(3, 0, 4)
    with pytest.raises(DistributedError, match="rank must be in"):
        shard_range(10, 2, 2)


def test_torchrun_environment_is_found_only_when_all_its_variables_are_set():
    full = {"RANK": "1", "WORLD_SIZE": "4", "LOCAL_RANK": "1", "MASTER_ADDR": "node0"}
    assert torchrun_environment(full) == {"rank": 1, "world_size": 4, "local_rank": 1}
    assert torchrun_environment({k: v for k, v in full.items() if k != "MASTER_ADDR"}) is None
    with pytest.raises(DistributedError, match="must be integers"):
        torchrun_environment({**full, "RANK": "one"})


def test_starting_without_torchrun_names_the_missing_variables(monkeypatch):
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR"):
        monkeypatch.delenv(name, raising=False)
    with pytest.raises(DistributedError, match="RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR not set.*torchrun"):
        start_process_group()


def test_a_shard_mask_of_the_wrong_size_is_refused():
    reduction = TorchDistributedReduction.__new__(TorchDistributedReduction)  # no process group needed
    reduction.rank, reduction.start, reduction.end, reduction.num_images = 1, 6, 13, 13
    assert reduction.shard_excluded(torch.ones(7, dtype=torch.bool)).all()  # a whole shard may go
    assert reduction.shard_excluded(torch.zeros(7, dtype=torch.bool)) is None
    with pytest.raises(DistributedError, match=r"bool tensor \[7\] \(images 6..12 of 13\), got \(13,\)"):
        reduction.shard_excluded(torch.zeros(13, dtype=torch.bool))
