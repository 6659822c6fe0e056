"""One rank of the distributed engine tests: `python -m tests.pspc.posterior.distributed_worker MODE OUT`
in a torchrun-like environment (tests.support.distributed).

MODE compare: compute `results(distributed=True)`; rank 0 saves them to OUT (torch.save) with
its collectives' traffic. MODE hang: rank 1 stops answering (sleeps); rank 0 writes the error
its first collective raised to OUT."""

from __future__ import annotations

import sys
import time

import torch

from pspc.denoisers import EmpiricalDenoiser, build_denoiser, pspc_square
from pspc.posterior.distributed import CollectiveError, TorchDistributedReduction, start_process_group, stop_process_group
from pspc.posterior.patch_posterior import patch_posterior
from pspc.posterior.patch_sets import square_patches
from pspc.posterior.weights import WeightRequest
from pspc.sharded import shard
from tests.support.data import noisy, random_training_set

NUM_IMAGES = 13  # shards of 6 and 7 images over 2 ranks
T = torch.tensor([0.05, 0.05, 0.4, 2.0, 30.0], dtype=torch.float64)  # mixed t: several patch sets in a batch
SMALL_CHUNKS = 900  # bytes: the torch path streams the data in chunks of one or two images
# mass < 1: at mass 1 the cut falls where the running sum of the weights meets 1, a matter of
# the last bit, which differs between one process and a logaddexp of two shards' normalisers


def training_set(xflip: bool = True):
    return random_training_set(count=NUM_IMAGES, channels=3, height=6, width=7, seed=4, xflip=xflip)


def queries(data):
    return noisy(data, T, seed=2)


def _weights(weights) -> list:
    return [(index, w.entry, w.weight, w.mass, w.entropy, w.ess, w.num_images) for index, w in weights]


def results(distributed: bool) -> dict:
    """Every case's output, x_hat and the weights, by name; the same on every rank when distributed."""
    data = training_set()
    z = queries(data)
    denoisers = {"square": pspc_square(data), "flex": build_denoiser("pspc-flex", data),
                 "empirical": EmpiricalDenoiser(data), "no-xflip": pspc_square(training_set(xflip=False)),
                 "without-some": pspc_square(data).without([0, 3, 12]),
                 "without-shard-1": pspc_square(data).without(range(6, 13)),  # rank 1 keeps nothing
                 "empirical-without-shard-1": EmpiricalDenoiser(data).without(range(6, 13)),
                 "without-shard-0-and-more": pspc_square(data).without([*range(6), 8])}
    out = {}
    for name, denoiser in denoisers.items():
        denoiser = shard(denoiser) if distributed else denoiser
        for top_k in (5, 64):  # 64 > 2N: the lists are shorter than top_k
            x_hat, weights = denoiser.posterior(z, T, WeightRequest(top_k=top_k, mass=0.999))
            out[f"{name}/k={top_k}"] = (x_hat, _weights(weights))
        out[f"{name}/forward"] = denoiser(z, T)
    square = pspc_square(data)  # removal after sharding: indices of the whole set, each rank its slice
    removed = (shard(square) if distributed else square).without([1, 7]).without([8])
    x_hat, weights = removed.posterior(z, T, WeightRequest(top_k=5, mass=0.999))
    out["without-after-sharding/k=5"] = (x_hat, _weights(weights))
    cases = {"torch-3x3": (3, [2, 9]), "torch-6x6": (6, [2, 9]), "torch-3x3-without-shard-1": (3, range(6, 13))}
    for name, (size, removed) in cases.items():
        for top_k in (5, 64):  # the torch path, many chunks, a mask excluding one image of each shard or all of one
            patch_set, excluded = square_patches(6, 7, size), torch.zeros(NUM_IMAGES, dtype=torch.bool)
            excluded[list(removed)] = True
            images = data.as_float()
            reduction = TorchDistributedReduction(NUM_IMAGES) if distributed else None
            if reduction is not None:
                images, excluded = images[reduction.start:reduction.end], excluded[reduction.start:reduction.end]
            x_hat, weights = patch_posterior(z, T, images, patch_set, True, WeightRequest(top_k=top_k, mass=0.999),
                                             SMALL_CHUNKS, excluded=excluded, reduction=reduction)
            out[f"{name}/k={top_k}"] = (x_hat, _weights([(None, weights)]))
    return out


def traffic_of_one_call() -> dict:
    """The collectives of one empirical call (B = 5, K = 1, C*H*W = 126, top_k = 5)."""
    data = training_set()
    denoiser = shard(EmpiricalDenoiser(data))
    denoiser.posterior(queries(data), T, WeightRequest(top_k=5))
    return denoiser.reduction.traffic.by_kind


def main(mode: str, out_path: str) -> None:
    start_process_group("gloo", timeout_s=3 if mode == "hang" else 60)
    rank = torch.distributed.get_rank()
    if mode == "compare":
        found = {"results": results(distributed=True), "traffic": traffic_of_one_call(),
                 "describe": shard(pspc_square(training_set())).describe()}
        if rank == 0:
            torch.save(found, out_path)
    elif mode == "hang":
        if rank == 1:
            time.sleep(6)
            return
        denoiser = shard(EmpiricalDenoiser(training_set()))
        began = time.perf_counter()
        try:
            denoiser(queries(training_set()), T)
        except CollectiveError as error:
            torch.save({"error": str(error), "seconds": time.perf_counter() - began}, out_path)
    stop_process_group()


if __name__ == "__main__":
    main(*sys.argv[1:])
