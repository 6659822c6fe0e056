"""Benchmark: what one more process buys for exact sharded PSPC (pspc.sharded, gloo over loopback).

    PYTHONPATH=. python bench/distributed.py                      # Fashion-MNIST 60k with flips, worlds 1 and 2
    PYTHONPATH=. python bench/distributed.py --limit 4000 --repeats 1   # quick
    PYTHONPATH=. python bench/distributed.py --merge --worlds 2,3,4 --limit 2000 --out bench/results/distributed.merge

For each world size R, R processes (one thread each; the environment torchrun would give
them) load the training set with x-flips (2N entries), keep their shard, make one warm-up
call, then time `repeats` calls of `posterior` (the recorded sampling step: D and the
top-k weights) on a batch of NOVEL inputs (noised Fashion-MNIST test images) for
PSPC-Square s = 3 at t = 0.3 and the whole image (empirical) at t = 10. Each rank
reports its wall and CPU time per call and its collectives' time and bytes (the reduction's
traffic counter). Reported per configuration: wall time per call (the slowest rank), the
compute per rank (wall - time in collectives), its CPU seconds (what the rank's own core
would take: on a shared machine the wall time also counts the other processes' turns), the
collective time of the rank that waited least (about the transfer and synchronisation cost;
the others also wait for the slowest), and the bytes each rank contributes per call, by
collective; then what that implies at 8, 64 and 512 ranks (`projection`).

--merge: the top-k merge alone, all-gather against tree (pspc.posterior.distributed.MERGES), for
PSPC-Square s = 3: per rank and call the top-k bytes sent and received and the seconds in the
merge's collectives, whether the two give the same entries and weights, and the bytes rank 0's
calls cost when it leads (pspc.sharded.CallChannel: z, t and the call's settings); then the
formulas at 8, 64 and 512 ranks (`merge_projection`).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import socket
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
CASES = (("pspc-square", 3, 0.3), ("empirical", 28, 10.0))  # (kind, s, t): s = 28 is the whole image
ONE_THREAD = {"OMP_NUM_THREADS": "1", "NUMBA_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


# ---------------------------------------------------------------------------------------
# Worker: one rank
# ---------------------------------------------------------------------------------------
def rank_main(config: dict) -> dict:
    """One rank's timings; runs in a process with torchrun's environment."""
    sys.path.insert(0, str(REPO))
    import torch

    from pspc.data.loaders import load_training_set
    from pspc.denoisers import build_denoiser
    from pspc.posterior.distributed import start_process_group, stop_process_group
    from pspc.posterior.weights import WeightRequest
    from pspc.sharded import shard

    start_process_group("gloo", timeout_s=3600)
    data = load_training_set("fashion-mnist:train", limit=config["limit"]).with_xflip()
    tests = load_training_set("fashion-mnist:test", limit=config["batch"]).as_float()
    request, found = WeightRequest(top_k=config["top_k"]), []
    for kind, size, t in CASES:
        denoiser = shard(build_denoiser(kind, data, patch_size=size if kind == "pspc-square" else None))
        z = tests + t * torch.randn(tests.shape, generator=torch.Generator().manual_seed(0))
        with torch.no_grad():
            denoiser.posterior(z[:1], t, request)  # JIT compilation, layouts
            calls = []
            for _ in range(config["repeats"]):
                before = _snapshot(denoiser.reduction.traffic)
                began, cpu = time.perf_counter(), time.process_time()
                denoiser.posterior(z, t, request)
                wall, cpu = time.perf_counter() - began, time.process_time() - cpu
                calls.append({"wall": wall, "cpu": cpu, **_difference(_snapshot(denoiser.reduction.traffic), before)})
        found.append({"kind": kind, "size": size, "t": t, "calls": calls, "shard": denoiser.reduction.shard_size,
                      "patches": denoiser.patch_set_at(t).num_patches})
    stop_process_group()
    return {"rank": int(os.environ["RANK"]), "cases": found}


def _snapshot(traffic) -> dict:
    return {"seconds": traffic.seconds, "bytes": traffic.bytes, "by_kind": dict(traffic.by_kind)}


def _difference(after: dict, before: dict) -> dict:
    by_kind = {kind: after["by_kind"][kind][1] - before["by_kind"].get(kind, (0, 0, 0.0))[1] for kind in after["by_kind"]}
    return {"collective_seconds": after["seconds"] - before["seconds"], "collective_bytes": after["bytes"] - before["bytes"],
            "bytes_by_kind": by_kind}


def merge_rank_main(config: dict) -> dict:
    """One rank's top-k merge figures (the --merge mode); runs in a process with torchrun's environment."""
    sys.path.insert(0, str(REPO))
    import torch

    from pspc.data.loaders import load_training_set
    from pspc.denoisers import pspc_square
    from pspc.posterior.distributed import start_process_group, stop_process_group
    from pspc.posterior.weights import WeightRequest
    from pspc.sharded import CallChannel, follow, shard

    start_process_group("gloo", timeout_s=3600)
    data = load_training_set("fashion-mnist:train", limit=config["limit"]).with_xflip()
    tests = load_training_set("fashion-mnist:test", limit=config["batch"]).as_float()
    request, (_, size, t) = WeightRequest(top_k=config["top_k"]), CASES[0]
    z = tests + t * torch.randn(tests.shape, generator=torch.Generator().manual_seed(0))
    found, tops = {}, {}
    with torch.no_grad():
        for merge in ("gather", "tree"):
            denoiser = shard(pspc_square(data, size), merge=merge)
            denoiser.posterior(z[:1], t, request)  # JIT compilation, layouts
            calls = []
            for _ in range(config["repeats"]):
                traffic = denoiser.reduction.traffic
                before = (traffic.by_kind["top-k"], traffic.received["top-k"])
                _, weights = denoiser.posterior(z, t, request)
                (calls_after, sent, seconds), received = traffic.by_kind["top-k"], traffic.received["top-k"]
                calls.append({"collectives": calls_after - before[0][0], "sent": sent - before[0][1],
                              "received": received - before[1], "seconds": seconds - before[0][2]})
            found[merge] = calls
            tops[merge] = weights[0][1]
        channel = CallChannel()  # one led call: what telling it to the other ranks costs
        if channel.rank == 0:
            channel.lead(pspc_square(data, size)).posterior(z, t, request)
            channel.close()
        else:
            follow(channel, data)
    stop_process_group()
    same = bool(torch.equal(tops["gather"].entry, tops["tree"].entry) and torch.equal(tops["gather"].weight,
                                                                                       tops["tree"].weight))
    return {"rank": int(os.environ["RANK"]), "merges": found, "identical": same, "patches": int(tops["tree"].weight.shape[1]),
            "led_call_bytes": channel.traffic.by_kind["call"][1], "led_call_seconds": channel.traffic.by_kind["call"][2]}


def run_world(world_size: int, config: dict) -> list[dict]:
    """Every rank's result for one world size (ranks started as torchrun would, on loopback)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    processes = []
    for rank in range(world_size):
        env = {**os.environ, **ONE_THREAD, "RANK": str(rank), "WORLD_SIZE": str(world_size), "LOCAL_RANK": str(rank),
               "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "PYTHONPATH": str(REPO)}
        processes.append(subprocess.Popen([sys.executable, __file__, "--rank", json.dumps(config)], env=env,
                                          stdout=subprocess.PIPE, text=True))
    outputs = [process.communicate()[0] for process in processes]
    if any(process.returncode for process in processes):
        raise RuntimeError(f"a rank failed in world {world_size}: exit codes {[p.returncode for p in processes]}")
    return [json.loads(out.strip().splitlines()[-1]) for out in outputs]


# ---------------------------------------------------------------------------------------
# Report
# ---------------------------------------------------------------------------------------
def summarise(worlds: dict[int, list[dict]], batch: int) -> list[dict]:
    rows = []
    for world_size, ranks in worlds.items():
        for index, (kind, size, t) in enumerate(CASES):
            cases = [rank["cases"][index] for rank in ranks]
            calls = len(cases[0]["calls"])
            wall = [max(case["calls"][c]["wall"] for case in cases) for c in range(calls)]
            compute = [max(case["calls"][c]["wall"] - case["calls"][c]["collective_seconds"] for case in cases)
                       for c in range(calls)]
            collective = [min(case["calls"][c]["collective_seconds"] for case in cases) for c in range(calls)]
            cpu = [max(case["calls"][c]["cpu"] for case in cases) for c in range(calls)]
            rows.append({"world_size": world_size, "kind": kind, "size": size, "t": t, "batch": batch,
                         "patches": cases[0]["patches"], "entries_per_rank": 2 * cases[0]["shard"],
                         "wall_s": min(wall), "compute_s": min(compute), "collective_s": min(collective),
                         "cpu_s": min(cpu),
                         "bytes": cases[0]["calls"][0]["collective_bytes"],
                         "bytes_by_kind": cases[0]["calls"][0]["bytes_by_kind"]})
    return rows


def projection(row: dict, world_size: int, pixels: int, top_k: int) -> dict:
    """One call at `world_size` ranks from a world-1 row: CPU seconds / R; bytes per rank from what is
    reduced (all-reduces: 2 B K + B C H W + 2 B K + 1 float64, each ring all-reduce moving about
    twice its size; the top-k all-gather: 2 B K k float64 sent, R - 1 times that received)."""
    batch, patches = row["batch"], row["patches"]
    reduced = 8 * (4 * batch * patches + batch * pixels + 1)
    gathered = 8 * 2 * batch * patches * top_k
    return {"world_size": world_size, "compute_s": row["cpu_s"] / world_size,
            "all_reduce_mib": 2 * reduced * (world_size - 1) / world_size / 2**20,
            "all_gather_mib": gathered * (world_size - 1) / 2**20}


def report(rows: list[dict], config: dict, pixels: int) -> str:
    lines = [f"Fashion-MNIST train, {config['limit'] or 60000} images with x-flips, batch {config['batch']} of noised "
             f"test images, top-k {config['top_k']}, one thread per rank, gloo over loopback; "
             f"{config['repeats']} timed call(s), best shown. Machine: {config['machine']}.", "",
             "| R | denoiser | s | K | entries/rank | wall s/call | compute s/call (slowest rank) | CPU s/call/rank "
             "| collective s (least-waiting rank) | bytes/call/rank | by collective |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        kinds = ", ".join(f"{kind} {nbytes}" for kind, nbytes in r["bytes_by_kind"].items())
        lines.append(f"| {r['world_size']} | {r['kind']} | {r['size']} | {r['patches']} | {r['entries_per_rank']} "
                     f"| {r['wall_s']:.3f} | {r['compute_s']:.3f} | {r['cpu_s']:.3f} | {r['collective_s']:.4f} "
                     f"| {r['bytes']} | {kinds} |")
    lines += ["", "Projected from the world-1 CPU seconds (compute scales 1/R when each rank has its own core) "
                  "and the bytes reduced per call:", "",
              "| denoiser | R | compute s/call/rank | all-reduce MiB moved/rank | top-k all-gather MiB received/rank |",
              "|---|---|---|---|---|"]
    for r in (r for r in rows if r["world_size"] == 1):
        for world_size in (8, 64, 512):
            p = projection(r, world_size, pixels, config["top_k"])
            lines.append(f"| {r['kind']} s={r['size']} | {world_size} | {p['compute_s']:.4f} | {p['all_reduce_mib']:.2f} "
                         f"| {p['all_gather_mib']:.1f} |")
    return "\n".join(lines)


def merge_projection(world_size: int, batch: int, patches: int, top_k: int) -> dict:
    """The top-k merge's bytes per rank and call at `world_size` ranks: one list is 8 * 2 B K k
    (weights and ids, float64); the all-gather makes every rank receive R - 1 of them, the tree at
    most log2(P) + 1 (tree_merge_lists, P the largest power of two <= R), in as many rounds."""
    from pspc.posterior.distributed import tree_merge_lists

    one = 8 * 2 * batch * patches * top_k
    tree = max(tree_merge_lists(rank, world_size) for rank in range(world_size))
    return {"world_size": world_size, "list_mib": one / 2**20, "gather_received_mib": (world_size - 1) * one / 2**20,
            "tree_received_mib": tree * one / 2**20, "tree_rounds": tree}


def merge_report(worlds: dict[int, list[dict]], config: dict) -> str:
    lines = [f"Top-k merge, PSPC-Square s = 3 at t = 0.3: Fashion-MNIST train, {config['limit']} images with x-flips, "
             f"batch {config['batch']}, top-k {config['top_k']}, one thread per rank, gloo over loopback; "
             f"{config['repeats']} timed call(s), best shown. Machine: {config['machine']}.", "",
             "| R | merge | rank | collectives/call | bytes sent/call | bytes received/call | merge s/call | same top-k as "
             "the all-gather |", "|---|---|---|---|---|---|---|---|"]
    for world_size, ranks in worlds.items():
        for merge in ("gather", "tree"):
            for rank in ranks:
                best = min(rank["merges"][merge], key=lambda c: c["seconds"])
                lines.append(f"| {world_size} | {merge} | {rank['rank']} | {best['collectives']} | {best['sent']} | "
                             f"{best['received']} | {best['seconds']:.4f} | {'yes' if rank['identical'] else 'NO'} |")
    led = {w: max(r["led_call_bytes"] for r in ranks) for w, ranks in worlds.items()}
    patches = next(iter(worlds.values()))[0]["patches"]
    lines += ["", "Rank 0 leading (compare, audit, counterfactual, resume): bytes per call told to the other ranks "
                  f"(z, t, the settings and patch sets the first time): {', '.join(f'R = {w}: {b}' for w, b in led.items())}.",
              "", f"At more ranks (the formulas; batch {config['batch']}, K = {patches}, top-k {config['top_k']}):", "",
              "| R | one list MiB | all-gather: MiB received/rank | tree: MiB received/rank (max over ranks) | tree rounds |",
              "|---|---|---|---|---|"]
    for world_size in (8, 64, 512):
        p = merge_projection(world_size, config["batch"], patches, config["top_k"])
        lines.append(f"| {world_size} | {p['list_mib']:.2f} | {p['gather_received_mib']:.1f} | {p['tree_received_mib']:.1f} "
                     f"| {p['tree_rounds']} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rank", help=argparse.SUPPRESS)  # internal: run one rank with this JSON config
    parser.add_argument("--limit", type=int, default=None, help="training images (default: all 60000)")
    parser.add_argument("--worlds", default="1,2", help="world sizes (default: %(default)s)")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--top-k", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--out", type=Path, help="also write the table (.md) and the raw results (.json) here")
    parser.add_argument("--merge", action="store_true", help="the top-k merge: all-gather against tree")
    args = parser.parse_args(argv)
    if args.rank is not None:
        config = json.loads(args.rank)
        print(json.dumps(merge_rank_main(config) if config.get("mode") == "merge" else rank_main(config)))
        return 0
    config = {"limit": args.limit, "batch": args.batch, "top_k": args.top_k, "repeats": args.repeats,
              "mode": "merge" if args.merge else "scaling"}
    started = os.getloadavg()[0]
    worlds = {int(w): run_world(int(w), config) for w in args.worlds.split(",")}
    config["machine"] = (f"{os.cpu_count()} CPUs ({platform.processor() or platform.machine()}), shared with other "
                         f"work: load average {started:.1f} at the start, {os.getloadavg()[0]:.1f} at the end")
    rows = [] if args.merge else summarise(worlds, args.batch)
    text = merge_report(worlds, config) if args.merge else report(rows, config, pixels=28 * 28)
    print(text)
    if args.out:
        Path(f"{args.out}.md").write_text(text + "\n")  # not with_suffix: distributed.merge -> distributed.merge.md
        Path(f"{args.out}.json").write_text(json.dumps({"config": config, "rows": rows, "raw": worlds}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
