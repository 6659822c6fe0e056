"""Benchmark: copies made by edits outside aligned correlation's grid (and at its edges).

    PYTHONPATH=. .venv/bin/python bench/copy_edits.py --out bench/results/copy_edits   # ~1 min

Aligned correlation (auditor.similarity.evidence) edits each candidate by one shift, crop or
blur of its grid. This measures how often it still finds, and calls, copies made otherwise:
a blur wider than the grid's, shifts of 3 (the grid's edge) and 4 px, and a shift followed
by a blur (two edits). Sources: --count distinct Fashion-MNIST training images (seeded), as
8-bit images against all 60k with mirrored entries; "called" uses the threshold
bench/copy_detection.py calibrated (--threshold, the joint rule's).
"""

from __future__ import annotations

import argparse
import os
import platform
import time
from pathlib import Path

import numpy as np
import torch

from auditor.similarity.benchmark import markdown_table, write_results
from auditor.similarity.cases import blur, shift
from auditor.similarity.evidence import AlignedCorrelation
from pspc.data.loaders import load_fashion_mnist


EDITS = {
    "blur sigma 1.5 (grid edge)": lambda x: blur(x, 1.5),
    "blur sigma 2": lambda x: blur(x, 2.0),
    "shift 3 px (grid edge)": lambda x: shift(x, 3, 0),
    "shift 4 px": lambda x: shift(x, 4, 0),
    "shift 1 px, then blur sigma 1": lambda x: blur(shift(x, 1, 1), 1.0),
}


COLUMNS = ("edit", "copies", "right source", "called copy of it", "median score")


def run(args) -> tuple[dict, str]:
    torch.set_num_threads(args.threads)
    load = os.getloadavg()
    train = load_fashion_mnist("train").images
    started = time.perf_counter()
    aligned = AlignedCorrelation(train)
    sources = np.random.default_rng(args.seed).choice(len(train), args.count, replace=False)
    originals = train[torch.from_numpy(sources)].float()
    rows = []
    for name, edit in EDITS.items():
        images = edit(originals).round().clamp(0, 255).to(torch.uint8)
        found = aligned(images)
        right = np.array([e.entry == s for e, s in zip(found, sources)])
        called = right & np.array([e.score >= args.threshold for e in found])
        rows.append({"edit": name, "copies": len(sources), "right source": float(right.mean()),
                     "called copy of it": float(called.mean()),
                     "median score": float(np.median([e.score for e in found]))})
    seconds = time.perf_counter() - started
    result = {"command": "PYTHONPATH=. .venv/bin/python bench/copy_edits.py --out " + str(args.out),
              "machine": {"cpus": os.cpu_count(), "load_average_at_start": load, "load_average_at_end": os.getloadavg(),
                          "python": platform.python_version(), "torch": torch.__version__},
              "threshold": args.threshold, "seed": args.seed, "evidence": aligned.describe(), "rows": rows,
              "seconds": seconds}
    text = (f"# Copies outside aligned correlation's edit grid\n\nCommand: `{result['command']}`\n\n"
            f"Machine: {os.cpu_count()} CPUs, load average {load} at start, {args.threads} torch thread(s); "
            f"{seconds:.0f} s.\n\n{args.count} training images (seed {args.seed}) against the 60k with mirrored "
            f"entries; called: score >= {args.threshold} (bench/results/copy_detection.md, joint rule).\n\n"
            + markdown_table(rows, COLUMNS) + "\n")
    return result, text


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--count", type=int, default=60)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--threshold", type=float, default=1.494)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=Path("bench/results/copy_edits"))
    args = parser.parse_args()
    write_results(args.out, *run(args))


if __name__ == "__main__":
    main()
