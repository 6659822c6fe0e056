"""Benchmark: seconds per image and peak memory of one PSPC denoiser call.

    PYTHONPATH=. python bench/denoise.py                              # Fashion-MNIST train, 60k (slow)
    PYTHONPATH=. python bench/denoise.py --limit 2000 --batches 1,4   # quick

For each patch size s (PSPC-Square with s fixed) and for PSPC-Flex, and for each batch size,
a fresh Python process loads the training set (with x-flips: 2N entries), builds the
denoiser, makes one warm-up call on a single image (JIT compilation, patch-set caches),
then times `repeats` calls on a batch of forward-process inputs z = x + t eps. Reported:
median seconds per image, and the process's peak resident set (ru_maxrss), which is why
every configuration gets its own process: ru_maxrss only ever grows. The parent process
imports neither torch nor the data so that it adds nothing to a child's peak.

Each size is timed at the noise level the default schedule pairs it with (NOISE_LEVELS);
PSPC-Flex at FLEX_NOISE_LEVEL, with the paper's lambda(t) and the isotropic stand-in
sensitivity of `build_denoiser("pspc-flex", ...)`.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent

# Patch size -> noise level it is used at: the paper's 32x32 schedule (t <= 0.3: 3, t = 1: 7,
# t = 3: 15, t >= 10: whole image), 28 being the whole Fashion-MNIST image.
NOISE_LEVELS = {3: 0.3, 7: 1.0, 15: 3.0, 28: 10.0}
FLEX_NOISE_LEVEL = 1.0


# ---------------------------------------------------------------------------------------
# Worker: one configuration, in its own process
# ---------------------------------------------------------------------------------------
def _max_rss_gib() -> float:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux


def measure(config: dict) -> dict:
    """Time one (denoiser, t, batch) configuration; runs inside a fresh process."""
    sys.path.insert(0, str(REPO))  # measure this working tree's pspc, not an installed one
    import torch

    from pspc.denoisers import build_denoiser
    from pspc.data.loaders import load_training_set
    from pspc.schedules import Schedule

    begin = time.perf_counter()
    data = load_training_set(config["data"], limit=config["limit"]).with_xflip(config["xflip"])
    load_seconds = time.perf_counter() - begin
    rss_loaded = _max_rss_gib()
    denoiser = build_denoiser(config["kind"], data, patch_size=config["size"])
    t, batch = config["t"], config["batch"]

    generator = torch.Generator().manual_seed(config["seed"])
    picks = torch.randint(len(data), (batch,), generator=generator)
    x = data.as_float()[picks]
    z = x + t * torch.randn(x.shape, generator=generator)

    with torch.no_grad():
        begin = time.perf_counter()
        denoiser(z[:1], t)
        warmup_seconds = time.perf_counter() - begin
        times = []
        while len(times) < config["repeats"] and (not times or sum(times) < config["budget"]):
            begin = time.perf_counter()
            out = denoiser(z, t)
            times.append(time.perf_counter() - begin)
    if not torch.isfinite(out).all():
        raise RuntimeError("denoiser returned non-finite values")
    described = denoiser.describe()
    lam = described.get("lambda")  # PSPC-Flex: the lambda(t) schedule used
    if lam:
        lam = Schedule(tuple(lam["times"]), tuple(lam["values"]), lam["interpolation"], lam["name"])(t)
    return {
        "dataset": data.name,
        "entries": data.num_entries,
        "fingerprint": data.fingerprint,
        "torch_threads": torch.get_num_threads(),
        "load_seconds": load_seconds,
        "warmup_seconds": warmup_seconds,
        "call_seconds": times,
        "seconds_per_image": statistics.median(times) / batch,
        "rss_after_load_gib": rss_loaded,
        "peak_rss_gib": _max_rss_gib(),
        "lambda": lam,
        "describe": described,
    }


def _worker_main(config_json: str) -> int:
    config = json.loads(config_json)
    try:
        result = measure(config)
    except Exception as exc:  # noqa: BLE001 - reported in the table, the other rows go on
        result = {"error": f"{type(exc).__name__}: {exc}"}
    print(json.dumps(result))
    return 0


def run_in_fresh_process(config: dict) -> dict:
    proc = subprocess.run([sys.executable, __file__, "--worker", json.dumps(config)],
                          capture_output=True, text=True)
    lines = proc.stdout.strip().splitlines()
    if proc.returncode != 0 or not lines:
        tail = proc.stderr.strip().splitlines()[-1:] or [f"exit status {proc.returncode}"]
        return {"error": f"worker failed: {tail[0]}"}
    return json.loads(lines[-1])


# ---------------------------------------------------------------------------------------
# Driver
# ---------------------------------------------------------------------------------------
def _int_list(text: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"expected positive integers, got {text!r}")
    return values


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default="fashion-mnist", help="training-set spec (default: %(default)s)")
    parser.add_argument("--limit", type=int, help="first N training images only (default: all)")
    parser.add_argument("--xflip", action=argparse.BooleanOptionalAction, default=True,
                        help="x-flip entries, 2N in all (default: on)")
    parser.add_argument("--batches", type=_int_list, default=[1, 16, 64], help="batch sizes (default: 1,16,64)")
    parser.add_argument("--sizes", type=_int_list, default=list(NOISE_LEVELS),
                        help=f"PSPC-Square patch sizes, from {sorted(NOISE_LEVELS)} (default: all)")
    parser.add_argument("--flex", action=argparse.BooleanOptionalAction, default=True,
                        help=f"also PSPC-Flex at t = {FLEX_NOISE_LEVEL} (default: on)")
    parser.add_argument("--repeats", type=int, default=3, help="timed calls per configuration (default: 3)")
    parser.add_argument("--budget", type=float, default=60.0,
                        help="stop repeating once a configuration's timed calls exceed this many seconds "
                             "(at least one call; default: %(default)s)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, metavar="PATH", help="also save the results as JSON")
    args = parser.parse_args(argv)
    unknown = sorted(set(args.sizes) - set(NOISE_LEVELS))
    if unknown:
        parser.error(f"no noise level for size(s) {unknown}; NOISE_LEVELS pairs {NOISE_LEVELS}")
    if args.repeats < 1 or (args.limit is not None and args.limit < 1):
        parser.error("--repeats and --limit must be >= 1")
    return args


def configurations(args) -> list[dict]:
    common = {"data": args.data, "limit": args.limit, "xflip": args.xflip, "repeats": args.repeats,
              "budget": args.budget, "seed": args.seed}
    denoisers = [("pspc-square", s, NOISE_LEVELS[s]) for s in args.sizes]
    if args.flex:
        denoisers.append(("pspc-flex", None, FLEX_NOISE_LEVEL))
    return [{**common, "kind": kind, "size": size, "t": t, "batch": batch}
            for kind, size, t in denoisers for batch in args.batches]


def _package_version(name: str) -> str:
    try:
        return version(name)
    except PackageNotFoundError:
        return "?"


def machine() -> dict:
    return {"cpu_count": os.cpu_count(), "usable_cpus": len(os.sched_getaffinity(0)),
            "processor": platform.processor() or platform.machine(), "python": platform.python_version(),
            "torch": _package_version("torch"), "numpy": _package_version("numpy"),
            "numba": _package_version("numba")}


def table(results: list[dict]) -> str:
    rows = ["| denoiser | s | t | batch | s/image | peak RSS GiB | RSS after load GiB | calls |",
            "|---|---|---|---|---|---|---|---|"]
    for r in results:
        name = r["kind"] + (f" (λ={r['lambda']:g})" if r.get("lambda") is not None else "")
        size = str(r["size"]) if r["size"] else "flex"
        if "error" in r:
            rows.append(f"| {name} | {size} | {r['t']:g} | {r['batch']} | error: {r['error'][:100]} | | | |")
        else:
            rows.append(f"| {name} | {size} | {r['t']:g} | {r['batch']} | {r['seconds_per_image']:.4f} "
                        f"| {r['peak_rss_gib']:.2f} | {r['rss_after_load_gib']:.2f} | {len(r['call_seconds'])} |")
    return "\n".join(rows)


def main(argv=None) -> int:
    args = parse_args(argv)
    info = machine()
    results = []
    for config in configurations(args):
        label = f"{config['kind']} s={config['size'] or '-'} t={config['t']} batch={config['batch']}"
        print(f"running {label} ...", file=sys.stderr, flush=True)
        results.append({**config, **run_in_fresh_process(config)})
    done = [r for r in results if "error" not in r]
    threads = ",".join(sorted({str(r["torch_threads"]) for r in done})) or "?"
    name, entries = (done[0]["dataset"], done[0]["entries"]) if done else (args.data, "?")
    warmup = max((r["warmup_seconds"] for r in done), default=0.0)
    print(f"machine: {info['cpu_count']} CPUs ({info['usable_cpus']} usable, {info['processor']}), "
          f"torch {info['torch']} with {threads} thread(s), numpy {info['numpy']}, numba {info['numba']}, "
          f"python {info['python']}")
    print(f"data: {name}, limit {args.limit or 'none'}, {entries} entries{' (x-flip)' if args.xflip else ''}; "
          f"median of up to {args.repeats} calls after one warm-up call on 1 image (up to {warmup:.1f} s, JIT included)")
    print()
    print(table(results))
    if args.json:
        args.json.write_text(json.dumps({"machine": info, "args": {k: str(v) for k, v in vars(args).items()},
                                         "results": results}, indent=2, default=str) + "\n")
        print(f"\nresults saved to {args.json}")
    return 0


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--worker":
        sys.exit(_worker_main(sys.argv[2]))
    sys.exit(main())
