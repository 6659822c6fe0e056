"""The tree merge of the shards' top-k lists (pspc.posterior.distributed, merge="tree"): for 2, 3 and 4
local gloo ranks it gives every rank the same entries and weights as the all-gather, which gives the
one-process ones; each rank's top-k traffic is what the formulas say (the all-gather: R - 1 lists in;
the tree: tree_merge_lists of them); "auto" picks the tree above TREE_ABOVE ranks."""

from __future__ import annotations

import pytest
import torch

from pspc.posterior.distributed import MERGES, TREE_ABOVE, DistributedError, TorchDistributedReduction, tree_merge_lists
from tests.pspc.posterior import merge_worker
from tests.support.distributed import launch_ranks

LIST_BYTES = 8 * 2 * 5 * 1 * 5  # one packed top-k list of merge_worker.TRAFFIC_CASE: [2, B, K, top_k] float64


@pytest.fixture(scope="module")
def four_ranks(tmp_path_factory):
    """Every rank's merge_worker results: rank -> {R: {merge: {results, traffic}}}."""
    out = tmp_path_factory.mktemp("merge")
    found = launch_ranks(["-m", "tests.pspc.posterior.merge_worker", str(out)], world_size=4, timeout=400)
    for rank, (code, _, err) in enumerate(found):
        assert code == 0, f"rank {rank} failed:\n{err[-4000:]}"
    return {rank: torch.load(out / f"rank{rank}.pt", weights_only=False) for rank in range(4)}


@pytest.mark.slow
@pytest.mark.parametrize("world", merge_worker.WORLDS)
def test_the_tree_gives_every_rank_the_all_gathers_top_k_which_is_the_one_process_one(four_ranks, world):
    single = merge_worker.results()
    gathered = four_ranks[0][world]["gather"]["results"]
    for rank in range(world):
        tree = four_ranks[rank][world]["tree"]["results"]
        assert tree.keys() == gathered.keys() == single.keys()
        for name, (x_hat, weights) in tree.items():
            x_gather, weights_gather = gathered[name]
            assert torch.equal(x_hat, x_gather), (world, rank, name)  # the same all-reduces
            for (entry, weight, *stats), (entry_g, weight_g, *stats_g) in zip(weights, weights_gather, strict=True):
                assert torch.equal(entry, entry_g) and torch.equal(weight, weight_g), (world, rank, name)
                assert all(torch.equal(a, b) for a, b in zip(stats, stats_g)), (world, rank, name)
    for name, (x_hat, weights) in gathered.items():
        x_ref, weights_ref = single[name]
        torch.testing.assert_close(x_hat, x_ref, rtol=0, atol=1e-6, msg=name)
        for (entry, weight, *_), (entry_ref, weight_ref, *_) in zip(weights, weights_ref, strict=True):
            assert torch.equal(entry, entry_ref), (world, name)  # global ids, in the same order
            torch.testing.assert_close(weight, weight_ref, rtol=1e-5, atol=1e-6, msg=name)


@pytest.mark.slow
@pytest.mark.parametrize("world", merge_worker.WORLDS)
def test_each_ranks_top_k_traffic_is_the_formulas(four_ranks, world):
    for rank in range(world):
        gather, tree = (four_ranks[rank][world][merge]["traffic"] for merge in ("gather", "tree"))
        assert gather == {"calls": 1, "sent": LIST_BYTES, "received": (world - 1) * LIST_BYTES}
        lists = tree_merge_lists(rank, world)
        assert tree["sent"] == tree["received"] == lists * LIST_BYTES, (rank, tree)


def test_tree_rounds_grow_with_log2_of_the_ranks():
    assert [tree_merge_lists(0, r) for r in (1, 2, 3, 4, 5, 8, 64, 512)] == [0, 1, 2, 2, 3, 3, 6, 9]
    assert [tree_merge_lists(r, 3) for r in range(3)] == [2, 1, 1]  # rank 2 hands its list to rank 0
    assert max(tree_merge_lists(r, 96) for r in range(96)) == 7  # 64 + 32: log2(64) + 1
    assert sum(tree_merge_lists(r, 6) for r in range(6)) == 2 * 2 + 2 * 3 + 2 * 1


def test_auto_merges_by_the_tree_above_eight_ranks_and_a_bad_merge_is_refused(monkeypatch):
    import pspc.posterior.distributed as distributed

    assert MERGES == ("auto", "gather", "tree") and TREE_ABOVE == 8
    for world, expected in ((1, "gather"), (8, "gather"), (9, "tree"), (512, "tree")):
        monkeypatch.setattr(distributed.dist, "get_rank", lambda group=None: 0)
        monkeypatch.setattr(distributed.dist, "get_world_size", lambda group=None, w=world: w)
        monkeypatch.setattr(distributed.dist, "get_backend", lambda group=None: "gloo")
        assert TorchDistributedReduction(1000, merge="auto").merge == expected
        assert TorchDistributedReduction(1000, merge="gather").merge == "gather"
    with pytest.raises(DistributedError, match="merge must be one of auto, gather, tree, got 'ring'"):
        TorchDistributedReduction(1000, merge="ring")
