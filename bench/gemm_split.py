"""Benchmark: the GEMM path's matrix products, MKL's static thread split against a dynamic one.

    PYTHONPATH=. .venv/bin/python bench/gemm_split.py [--rounds 7] [--markdown PATH]

The two products of one whole-image call at batch 16 over 60,000 images with flips
(pspc/posterior/gemm.py): query pieces [64, 784] @ images^T [784, 60000] and weight pieces
[64, 60000] @ images [60000, 784], float64 integers as the exact path makes them. "static":
torch's own product on all threads (MKL splits it statically); "dynamic": torch on one thread
inside a thread pool of as many workers as torch had threads, over column chunks picked up as
workers free up. Each round times both idle and beside one CPU hog (a busy-loop process);
the outputs are checked equal. Prints median and min seconds and the hog / idle ratio.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch

HOG = "import sys, time\nend = time.time() + float(sys.argv[1])\nwhile time.time() < end:\n    pass"


def _chunked(pool, a: torch.Tensor, b: torch.Tensor, chunk: int) -> torch.Tensor:
    out = torch.empty(a.shape[0], b.shape[1], dtype=a.dtype)

    def one(start: int) -> None:
        out[:, start:start + chunk] = a @ b[:, start:start + chunk]

    list(pool.map(one, range(0, b.shape[1], chunk)))
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--markdown", type=Path)
    args = parser.parse_args(argv)
    generator = torch.Generator().manual_seed(0)
    queries = torch.randint(-2**20, 2**20, (64, 784), generator=generator).double()
    images = torch.randint(0, 256, (60000, 784), generator=generator).double()
    weights = torch.randint(-2**20, 2**20, (64, 60000), generator=generator).double()
    threads = torch.get_num_threads()
    pool = ThreadPoolExecutor(threads)

    def static():
        return queries @ images.T, weights @ images

    def dynamic():
        torch.set_num_threads(1)
        try:
            return _chunked(pool, queries, images.T, 2048), _chunked(pool, weights, images, 32)
        finally:
            torch.set_num_threads(threads)

    for a, b in zip(static(), dynamic()):
        if not torch.equal(a, b):
            raise SystemExit("the two splits disagree")
    load = Path("/proc/loadavg").read_text().split()[:3]
    rows = []
    for name, run in (("static (MKL)", static), ("dynamic (column chunks)", dynamic)):
        times = {"idle": [], "hog": []}
        for _ in range(args.rounds):
            for kind in times:
                hog = subprocess.Popen([sys.executable, "-c", HOG, "60"]) if kind == "hog" else None
                if hog:
                    time.sleep(0.3)
                begin = time.perf_counter()
                run()
                times[kind].append(time.perf_counter() - begin)
                if hog:
                    hog.kill()
                    hog.wait()
        idle, hog = statistics.median(times["idle"]), statistics.median(times["hog"])
        rows.append(f"| {name} | {idle:.4f} (min {min(times['idle']):.4f}) | {hog:.4f} (min {min(times['hog']):.4f}) "
                    f"| {hog / idle:.2f} |")
    text = "\n".join([
        "# GEMM path: static against dynamic thread split", "",
        f"Command: `PYTHONPATH=. python bench/gemm_split.py --rounds {args.rounds}`", "",
        f"torch {torch.__version__}, {threads} threads; load average at start {' '.join(load)}; "
        f"{args.rounds} rounds, each idle then beside one CPU hog; seconds per call (two products, batch 16).", "",
        "| split | idle median | beside a hog | hog / idle |", "|---|---:|---:|---:|", *rows, ""])
    print(text)
    if args.markdown:
        args.markdown.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
