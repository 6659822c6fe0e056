"""Benchmark: seconds per image per PSPC denoiser call, idle and beside a CPU hog, and peak memory.

    PYTHONPATH=. python bench/denoise.py                              # Fashion-MNIST 60k + flips, batch 16
    PYTHONPATH=. python bench/denoise.py --limit 2000 --repeats 2     # quick
    PYTHONPATH=. python bench/denoise.py --json bench/results/denoise.json --markdown bench/results/denoise.md

Inputs are NOVEL by default: forward-process samples z = x + t eps of Fashion-MNIST TEST
images (`--queries`), which no training entry equals, as in sampling; `--queries train`
times noised training images instead (the old default).

For each configuration (patch set, batch size, CPU path) a fresh Python process loads the
training set (with x-flips: 2N entries), builds the denoiser, makes one warm-up call (JIT
compilation, caches), then runs `--repeats` rounds of two timed calls: one idle (nothing of
ours beside it) and one contended, with `--hogs` CPU hogs running: separate processes, each
a bounded busy loop (it ends by itself at a deadline) that this script starts before the call
and stops after it. Idle and contended calls alternate in one process, so their ratio is
measured under the same background load. Reported: seconds per image per call (min and
median over the rounds), the contended / idle ratio of the medians, the process's CPU
seconds per image (user + system, all threads; min), and the process's peak resident set
(ru_maxrss: every configuration has its own process, since it only ever grows). The parent
process imports neither torch nor the data, so that it adds nothing to a child's peak.

Each size is timed at the noise level the paper's schedule pairs it with (NOISE_LEVELS);
PSPC-Flex at FLEX_NOISE_LEVEL with the paper's lambda(t) and the isotropic stand-in
sensitivity of `build_denoiser("pspc-flex", ...)`. The path rule sends the whole image to
the GEMM path (pspc.posterior.gemm.uses_gemm), small windows (s = 3) to the single pass
(pspc.posterior.window_kernels.uses_single_pass) and the rest to the two-pass fused
kernels; `--paths auto,fused` also times the two-pass fused kernels, in a process of their
own, on the sets the rule sends elsewhere. For a set on the single pass, `--versus` (on by
default) adds to every round one idle call on the two-pass kernels in the same process,
between the others, and reports the ratio of the two minima (the speed-up, measured under
the same background load) and the largest difference between their outputs.
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
from contextlib import nullcontext
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent

# Patch size -> noise level it is used at: the paper's 32x32 schedule (t <= 0.3: 3, t = 1: 7,
# t = 3: 15, t >= 10: whole image), 28 being the whole Fashion-MNIST image.
NOISE_LEVELS = {3: 0.3, 7: 1.0, 15: 3.0, 28: 10.0}
FLEX_NOISE_LEVEL = 1.0
PATHS = ("auto", "fused")
HOG_SECONDS_MAX = 900.0  # a hog's deadline: it stops by itself even if this script dies
HOG = "import sys, time\nend = time.time() + float(sys.argv[1])\nwhile time.time() < end:\n    pass\n"


# ---------------------------------------------------------------------------------------
# Worker: one configuration, in its own process
# ---------------------------------------------------------------------------------------
def _max_rss_gib() -> float:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux


class Hogs:
    """`count` CPU hogs beside the timed call: busy loops in their own processes, bounded by a
    deadline, started on entry (once spinning) and killed on exit."""

    def __init__(self, count: int, seconds: float):
        self.count, self.seconds = count, min(seconds, HOG_SECONDS_MAX)
        self.processes: list[subprocess.Popen] = []

    def __enter__(self):
        self.processes = [subprocess.Popen([sys.executable, "-c", HOG, str(self.seconds)]) for _ in range(self.count)]
        time.sleep(0.3 if self.count else 0.0)  # past the interpreter's start-up: spinning
        return self

    def __exit__(self, *exc):
        for process in self.processes:
            process.kill()
            process.wait()


def _queries(config: dict, data, t: float):
    """z = x + t eps [batch] of the query images: test images (novel), or training images."""
    import torch

    from pspc.data.loaders import load_training_set

    generator = torch.Generator().manual_seed(config["seed"])
    if config["queries"] == "train":
        x = data.as_float()[torch.randint(len(data), (config["batch"],), generator=generator)]
    else:
        x = load_training_set(config["queries"], limit=config["batch"]).as_float()
        if len(x) < config["batch"]:
            raise RuntimeError(f"{config['queries']} has only {len(x)} images for a batch of {config['batch']}")
    return x + t * torch.randn(x.shape, generator=generator)


def _rule(patch_set, channels: int) -> str:
    """The CPU path the rule picks for a set: gemm, single pass or fused (the two passes)."""
    from pspc.posterior import gemm
    from pspc.posterior.patch_sets import WindowPatches

    if gemm.uses_gemm(patch_set):
        return "gemm"
    try:
        from pspc.posterior import window_kernels
    except ImportError:  # a tree without the single pass
        return "fused"
    if isinstance(patch_set, WindowPatches) and window_kernels.uses_single_pass(
            channels, patch_set.height, patch_set.width, patch_set.patch_h, patch_set.patch_w):
        return "single pass"
    return "fused"


def _force_two_passes() -> None:
    """Send every set to the two-pass fused kernels (what --paths fused and --versus time)."""
    from pspc.posterior import gemm

    gemm.GEMM_MAX_MASKS = 0
    try:
        from pspc.posterior import window_kernels
    except ImportError:
        return
    window_kernels.MAX_SPAN = 0


def _choose_path(path: str, patch_set, channels: int = 1) -> str | None:
    """Apply --paths: 'fused' forces the two-pass fused kernels (None: the set is on them anyway)."""
    chosen = _rule(patch_set, channels)
    if path == "auto":
        return chosen
    if chosen == "fused":
        return None
    _force_two_passes()
    return "fused (forced)"


class _TwoPasses:
    """Within the block: the two-pass fused kernels for every set (the rule restored after)."""

    def __enter__(self):
        from pspc.posterior import window_kernels

        self.saved = window_kernels.MAX_SPAN
        window_kernels.MAX_SPAN = 0

    def __exit__(self, *exc):
        from pspc.posterior import window_kernels

        window_kernels.MAX_SPAN = self.saved


def _timed_rounds(denoiser, z, t, config: dict, versus: bool = False) -> dict:
    """Alternate idle and contended calls (and, with versus, an idle call on the two-pass
    kernels); seconds per call (wall) and CPU seconds of each; `difference`: the largest
    difference between the output and the two-pass kernels'."""
    kinds = ("idle", "contended") + (("two_pass",) if versus else ())
    calls = {name: [] for kind in kinds for name in (kind, kind + "_cpu")}
    outputs = {}
    for _ in range(config["repeats"]):
        for kind in kinds:
            with Hogs(config["hogs"] if kind == "contended" else 0, 4 * config["budget"]), \
                    (_TwoPasses() if kind == "two_pass" else nullcontext()):
                cpu, wall = time.process_time(), time.perf_counter()
                outputs[kind] = denoiser(z, t)
                calls[kind].append(time.perf_counter() - wall)
                calls[kind + "_cpu"].append(time.process_time() - cpu)
        if sum(sum(calls[kind]) for kind in kinds) > config["budget"]:
            break
    if not all(out.isfinite().all() for out in outputs.values()):
        raise RuntimeError("denoiser returned non-finite values")
    if versus:
        calls["difference"] = float((outputs["idle"] - outputs["two_pass"]).abs().max())
    return calls


def measure(config: dict) -> dict:
    """Time one (denoiser, t, batch, path) configuration; runs inside a fresh process."""
    sys.path.insert(0, str(REPO))  # measure this working tree's pspc, not an installed one
    import numba
    import torch

    from pspc.data.loaders import load_training_set
    from pspc.denoisers import build_denoiser
    from pspc.schedules import Schedule

    begin = time.perf_counter()
    data = load_training_set(config["data"], limit=config["limit"]).with_xflip(config["xflip"])
    load_seconds = time.perf_counter() - begin
    rss_loaded = _max_rss_gib()
    denoiser = build_denoiser(config["kind"], data, patch_size=config["size"])
    t, batch = config["t"], config["batch"]
    path = _choose_path(config["path"], denoiser.patch_set_at(t), data.images.shape[1])
    if path is None:
        return {"skipped": "the path rule runs the fused kernels on this set already"}
    versus = bool(config.get("versus")) and path == "single pass"
    z = _queries(config, data, t)
    with torch.no_grad():
        begin = time.perf_counter()
        denoiser(z[:1], t)
        warmup_seconds = time.perf_counter() - begin
        if versus:
            with _TwoPasses():
                denoiser(z[:1], t)
        calls = _timed_rounds(denoiser, z, t, config, versus)
    described = denoiser.describe()
    lam = described.get("lambda")  # PSPC-Flex: the lambda(t) schedule used
    if lam:
        lam = Schedule(tuple(lam["times"]), tuple(lam["values"]), lam["interpolation"], lam["name"])(t)
    idle, contended = statistics.median(calls["idle"]), statistics.median(calls["contended"])
    compared = {}
    if versus:
        compared = {"two_pass_min_per_image": min(calls["two_pass"]) / batch,
                    "speedup": min(calls["two_pass"]) / min(calls["idle"]), "difference": calls.pop("difference")}
    return {**compared,
        "dataset": data.name, "entries": data.num_entries, "fingerprint": data.fingerprint, "ran": path,
        "torch_threads": torch.get_num_threads(), "numba_threads": numba.get_num_threads(),
        "threading_layer": numba.threading_layer(), "load_seconds": load_seconds, "warmup_seconds": warmup_seconds,
        "calls": calls, "idle_per_image": idle / batch, "idle_min_per_image": min(calls["idle"]) / batch,
        "contended_per_image": contended / batch, "contended_min_per_image": min(calls["contended"]) / batch,
        "ratio": contended / idle, "cpu_per_image": min(calls["idle_cpu"]) / batch,
        "rss_after_load_gib": rss_loaded, "peak_rss_gib": _max_rss_gib(), "lambda": lam, "describe": described,
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
    environment = dict(os.environ)
    if config.get("threading_layer"):
        environment["NUMBA_THREADING_LAYER"] = config["threading_layer"]
    proc = subprocess.run([sys.executable, __file__, "--worker", json.dumps(config)],
                          capture_output=True, text=True, env=environment)
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


def _path_list(text: str) -> list[str]:
    values = [v.strip() for v in text.split(",") if v.strip()]
    if not values or set(values) - set(PATHS):
        raise argparse.ArgumentTypeError(f"expected a comma-separated list of {', '.join(PATHS)}, got {text!r}")
    return values


def default_queries(data: str) -> str:
    """The novel inputs for a training-set spec: Fashion-MNIST's test split for Fashion-MNIST."""
    if data.split(":")[0] == "fashion-mnist":
        return "fashion-mnist:test"
    raise argparse.ArgumentTypeError(f"no held-out split known for --data {data!r}: give --queries SPEC "
                                     f"(a training-set spec of novel images) or --queries train")


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default="fashion-mnist", help="training-set spec (default: %(default)s)")
    parser.add_argument("--queries", help="images to noise as inputs: a training-set spec, or 'train' for the "
                                          "training images (default: fashion-mnist:test for Fashion-MNIST)")
    parser.add_argument("--limit", type=int, help="first N training images only (default: all)")
    parser.add_argument("--xflip", action=argparse.BooleanOptionalAction, default=True,
                        help="x-flip entries, 2N in all (default: on)")
    parser.add_argument("--batches", type=_int_list, default=[16], help="batch sizes (default: 16)")
    parser.add_argument("--sizes", type=_int_list, default=list(NOISE_LEVELS),
                        help=f"PSPC-Square patch sizes, from {sorted(NOISE_LEVELS)} (default: all)")
    parser.add_argument("--flex", action=argparse.BooleanOptionalAction, default=True,
                        help=f"also PSPC-Flex at t = {FLEX_NOISE_LEVEL} (default: on)")
    parser.add_argument("--paths", type=_path_list, default=["auto"],
                        help="CPU paths: auto (the rule), fused (the two-pass fused kernels forced; only for sets "
                             "the rule sends to the GEMM path or the single pass) (default: auto)")
    parser.add_argument("--versus", action=argparse.BooleanOptionalAction, default=True,
                        help="for sets on the single pass, also time the two-pass kernels in the same process, "
                             "interleaved (default: on)")
    parser.add_argument("--repeats", type=int, default=3, help="rounds of one idle and one contended call (default: 3)")
    parser.add_argument("--hogs", type=int, default=1, help="CPU hogs beside each contended call (default: 1)")
    parser.add_argument("--budget", type=float, default=120.0,
                        help="stop the rounds once a configuration's timed calls exceed this many seconds "
                             "(at least one round; default: %(default)s)")
    parser.add_argument("--threading-layer", choices=["omp", "workqueue", "tbb"],
                        help="numba's threading layer (NUMBA_THREADING_LAYER; default: numba's choice)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, metavar="PATH", help="also save the results as JSON")
    parser.add_argument("--markdown", type=Path, metavar="PATH", help="also save the report as Markdown")
    args = parser.parse_args(argv)
    unknown = sorted(set(args.sizes) - set(NOISE_LEVELS))
    if unknown:
        parser.error(f"no noise level for size(s) {unknown}; NOISE_LEVELS pairs {NOISE_LEVELS}")
    if args.repeats < 1 or args.hogs < 0 or (args.limit is not None and args.limit < 1):
        parser.error("--repeats and --limit must be >= 1, --hogs >= 0")
    if args.queries is None:
        try:
            args.queries = default_queries(args.data)
        except argparse.ArgumentTypeError as exc:
            parser.error(str(exc))
    return args


def configurations(args) -> list[dict]:
    common = {"data": args.data, "limit": args.limit, "xflip": args.xflip, "repeats": args.repeats,
              "budget": args.budget, "seed": args.seed, "queries": args.queries, "hogs": args.hogs,
              "threading_layer": args.threading_layer, "versus": args.versus}
    denoisers = [("pspc-square", s, NOISE_LEVELS[s]) for s in args.sizes]
    if args.flex:
        denoisers.append(("pspc-flex", None, FLEX_NOISE_LEVEL))
    return [{**common, "kind": kind, "size": size, "t": t, "batch": batch, "path": path}
            for kind, size, t in denoisers for batch in args.batches for path in args.paths]


def _package_version(name: str) -> str:
    try:
        return version(name)
    except PackageNotFoundError:
        return "?"


def uptime() -> str:
    """`uptime`'s line (the load averages over 1, 5 and 15 minutes), or os.getloadavg()'s."""
    try:
        return subprocess.run(["uptime"], capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "load average: " + ", ".join(f"{v:.2f}" for v in os.getloadavg())


def machine() -> dict:
    return {"cpu_count": os.cpu_count(), "usable_cpus": len(os.sched_getaffinity(0)),
            "processor": platform.processor() or platform.machine(), "python": platform.python_version(),
            "torch": _package_version("torch"), "numpy": _package_version("numpy"),
            "numba": _package_version("numba"), "uptime": uptime()}


def table(results: list[dict]) -> str:
    rows = ["| denoiser | s | t | batch | path | idle s/image (min / median) | contended s/image (min / median) "
            "| contended / idle | CPU s/image | peak RSS GiB | two-pass, same process: idle min, speed-up |",
            "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        name = r["kind"] + (f" (λ={r['lambda']:g})" if r.get("lambda") is not None else "")
        head = f"| {name} | {r['size'] or 'flex'} | {r['t']:g} | {r['batch']} | {r.get('ran', r['path'])} |"
        if "skipped" in r:
            continue
        if "error" in r:
            rows.append(f"{head} error: {r['error'][:100]} | | | | | |")
        else:
            versus = (f"{r['two_pass_min_per_image']:.4f}, {r['speedup']:.2f}x (outputs within "
                      f"{r['difference']:.1e})" if "speedup" in r else "")
            rows.append(f"{head} {r['idle_min_per_image']:.4f} / {r['idle_per_image']:.4f} "
                        f"| {r['contended_min_per_image']:.4f} / {r['contended_per_image']:.4f} | {r['ratio']:.2f} "
                        f"| {r['cpu_per_image']:.4f} | {r['peak_rss_gib']:.2f} | {versus} |")
    return "\n".join(rows)


def report(args, info: dict, results: list[dict], load_before, load_after) -> str:
    """The printed (and --markdown) report: command, machine, load, the table."""
    done = [r for r in results if "error" not in r and "skipped" not in r]
    threads = ",".join(sorted({f"{r['numba_threads']} numba / {r['torch_threads']} torch" for r in done})) or "?"
    layers = ",".join(sorted({r["threading_layer"] for r in done})) or "?"
    name, entries = (done[0]["dataset"], done[0]["entries"]) if done else (args.data, "?")
    return "\n".join([
        "# Denoiser speed: idle and beside a CPU hog", "",
        f"Command: `PYTHONPATH=. python bench/denoise.py {' '.join(sys.argv[1:])}`", "",
        f"Machine: {info['cpu_count']} CPUs ({info['usable_cpus']} usable, {info['processor']}), threads "
        f"{threads}, numba threading layer {layers}; torch {info['torch']}, numpy {info['numpy']}, numba "
        f"{info['numba']}, python {info['python']}.", "",
        f"`uptime` at start: `{load_before}`; at end: `{load_after}` (the load beside every call, idle ones "
        f"included, besides this script's hogs).", "",
        f"Data: {name}, limit {args.limit or 'none'}, {entries} entries{' (x-flip)' if args.xflip else ''}; inputs: "
        f"{'noised training images' if args.queries == 'train' else f'noised {args.queries} images (novel)'}; "
        f"{args.repeats} rounds of an idle and a contended call ({args.hogs} hog process(es)) after one warm-up "
        f"call on 1 image.", "", table(results), ""])


def main(argv=None) -> int:
    args = parse_args(argv)
    info = machine()
    results = []
    for config in configurations(args):
        label = f"{config['kind']} s={config['size'] or '-'} t={config['t']} batch={config['batch']} {config['path']}"
        print(f"running {label} ...", file=sys.stderr, flush=True)
        results.append({**config, **run_in_fresh_process(config)})
    finished = uptime()
    text = report(args, info, results, info["uptime"], finished)
    print(text)
    if args.json:
        args.json.write_text(json.dumps({"command": sys.argv, "machine": info, "uptime_end": finished,
                                         "args": {k: str(v) for k, v in vars(args).items()}, "results": results},
                                        indent=2, default=str) + "\n")
    if args.markdown:
        args.markdown.write_text(text)
    return 0


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--worker":
        sys.exit(_worker_main(sys.argv[2]))
    sys.exit(main())
