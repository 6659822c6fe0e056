"""One rank of the top-k merge tests: `python -m tests.pspc.posterior.merge_worker OUT_DIR` as one of 4
ranks in a torchrun-like environment (tests.support.distributed). For each world size R in WORLDS, the
ranks 0..R-1 form a group of their own and run every case of `results` with the top-k lists merged by
the all-gather and by the tree; rank r saves {R: {merge: results}} and the top-k traffic of one call
per merge to OUT_DIR/rank{r}.pt."""

from __future__ import annotations

import sys
from pathlib import Path

import torch
import torch.distributed as dist

from pspc.denoisers import EmpiricalDenoiser, build_denoiser, pspc_square
from pspc.posterior.distributed import start_process_group, stop_process_group
from pspc.posterior.weights import WeightRequest
from pspc.sharded import shard
from tests.pspc.posterior.distributed_worker import T, queries, training_set

WORLDS = (2, 3, 4)  # 13 images: shards of 6-7, 4-5 and 3-4 images; odd R folds a rank into the tree
TRAFFIC_CASE = ("empirical", 5)  # B = 5, K = 1, top_k = 5: one list is 8 * 2 * 5 * 1 * 5 = 400 bytes


def denoisers(data) -> dict:
    return {"square": pspc_square(data), "flex": build_denoiser("pspc-flex", data), "empirical": EmpiricalDenoiser(data),
            "without-some": pspc_square(data).without([0, 3, 12]),
            "without-half": pspc_square(data).without(range(6, 13))}  # the last ranks keep nothing


def results(group=None, merge: str | None = None) -> dict:
    """name/k=top_k -> (x_hat, [(entry, weight, mass, entropy, ess)] per patch set); sharded over
    `group` with `merge` unless merge is None (one process)."""
    data = training_set()
    z, out = queries(data), {}
    for name, denoiser in denoisers(data).items():
        denoiser = denoiser if merge is None else shard(denoiser, group=group, merge=merge)
        for top_k in (5, 64):  # 64 > 2N: the lists are shorter than top_k
            x_hat, weights = denoiser.posterior(z, T, WeightRequest(top_k=top_k, mass=0.999))
            out[f"{name}/k={top_k}"] = (x_hat, [(w.entry, w.weight, w.mass, w.entropy, w.ess) for _, w in weights])
    return out


def top_k_traffic(group, merge: str) -> dict:
    """One call's top-k collectives on this rank: (calls, bytes sent, bytes received)."""
    kind, top_k = TRAFFIC_CASE
    denoiser = shard(EmpiricalDenoiser(training_set()), group=group, merge=merge)
    denoiser.posterior(queries(training_set()), T, WeightRequest(top_k=top_k))
    traffic = denoiser.reduction.traffic
    calls, sent, _ = traffic.by_kind["top-k"]
    return {"calls": calls, "sent": sent, "received": traffic.received["top-k"]}


def main(out_dir: str) -> None:
    start_process_group("gloo", timeout_s=60)
    rank = dist.get_rank()
    found = {}
    for world in WORLDS:
        group = dist.new_group(list(range(world)))  # every rank takes part in creating every group
        if rank < world:
            found[world] = {merge: {"results": results(group, merge), "traffic": top_k_traffic(group, merge)}
                            for merge in ("gather", "tree")}
    torch.save(found, Path(out_dir) / f"rank{rank}.pt")
    stop_process_group()


if __name__ == "__main__":
    main(*sys.argv[1:])
