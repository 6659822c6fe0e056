"""Benchmark: the cost of recording provenance, its size, and the latency of the README queries.

    PYTHONPATH=. python bench/provenance.py                      # Fashion-MNIST 60k + flips (slow)
    PYTHONPATH=. python bench/provenance.py --limit 5000         # quicker, same shape of result

1. Sampling cost. The same PSPC-Square sampling (64 samples x 18 Euler steps, seed 0) three
   ways: plain (no weights asked of the engine), with the posterior weights computed but not
   stored, and recorded into a fresh store (`auditor.workflows.sampling.record_sampling_run`). Recording
   overhead = recorded / plain - 1 (the target is under 20 %); the middle row separates what
   the engine spends on the weights from what the store spends on writing them.
2. Writing. Rows written per second of the recorder's own time (conversion to Arrow plus
   the per-step transaction), and bytes per sample: growth of the checkpointed file over the
   store holding only the ingested training set, divided by the number of samples.
3. Queries. The recorded run is replicated under new run ids (INSERT ... SELECT, the same
   rows with another run_id) until patch_weights holds at least --target-rows rows, then
   every example query of README.md (auditor.store.example_queries) is timed through
   `auditor.store.query.run_query`, the path `auditor sql` takes: open the file read-only (a new
   DuckDB instance, about 20 ms, with cold buffers), check the schema, run, fetch, close;
   and on a read-only connection kept open (warm buffers, what a long-lived reader sees).
   Median and max over --repeats runs after one warm-up (target: under 50 ms).
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))  # this working tree's packages, not installed ones

import torch  # noqa: E402

from auditor.store import database, datasets  # noqa: E402
from auditor.workflows.options import SamplingOptions  # noqa: E402
from auditor.workflows.sampling import record_sampling_run  # noqa: E402
from auditor.store.example_queries import EXAMPLE_QUERIES  # noqa: E402
from auditor.store.query import run_query  # noqa: E402
from pspc.denoisers import build_denoiser  # noqa: E402
from pspc.data.loaders import load_training_set  # noqa: E402
from pspc.posterior.weights import WeightRequest  # noqa: E402
from pspc.samplers import SamplerConfig, initial_noise, sample  # noqa: E402

BULK_TABLES = ("samples", "steps", "patch_weights", "patch_stats", "step_shares")


def checkpointed_size(db: Path) -> int:
    with database.connect(db) as conn:
        conn.execute("COMMIT")
        conn.execute("CHECKPOINT")
        conn.execute("BEGIN TRANSACTION")
    return db.stat().st_size


def count_rows(db: Path) -> dict[str, int]:
    with database.connect(db, read_only=True) as conn:
        return {t: conn.execute(f"SELECT count(*) FROM {t}").fetchone()[0] for t in BULK_TABLES}


def time_sampling(data, args, request: WeightRequest | None) -> float:
    denoiser = build_denoiser("pspc-square", data)
    config = SamplerConfig(num_steps=args.steps)
    z = initial_noise(args.samples, data.image_shape, args.seed, config.t_max)
    begin = time.perf_counter()
    sample(denoiser, z, config, request=request)
    return time.perf_counter() - begin


def replicate(db: Path, run_id: int, target_rows: int) -> int:
    """Copy run `run_id` under new run ids until patch_weights holds >= target_rows rows."""
    with database.connect(db, read_only=True) as conn:
        per_run = conn.execute("SELECT count(*) FROM patch_weights WHERE run_id = ?", [run_id]).fetchone()[0]
        total = conn.execute("SELECT count(*) FROM patch_weights").fetchone()[0]
    copies = 0
    while total < target_rows:
        with database.connect(db, timeout=60) as conn:
            new = conn.execute("INSERT INTO runs SELECT nextval('run_ids'), * EXCLUDE (id) FROM runs WHERE id = ? "
                               "RETURNING id", [run_id]).fetchone()[0]
            for table in BULK_TABLES:
                conn.execute(f"INSERT INTO {table} SELECT ? AS run_id, * EXCLUDE (run_id) FROM {table} "
                             f"WHERE run_id = ?", [new, run_id])
        total += per_run
        copies += 1
    return copies


def time_queries(db: Path, repeats: int) -> list[tuple[str, int, float, float, float]]:
    """Per example query: rows, median and max ms through run_query (open, check, query, close:
    a fresh DuckDB instance with cold buffers each time), median ms on a connection kept open
    (measured after, since one process cannot hold two differently configured connections)."""
    cold = {}
    for query in EXAMPLE_QUERIES:
        result = run_query(db, query.sql, max_rows=None)  # warm-up (and the row count)
        seconds = []
        for _ in range(repeats):
            begin = time.perf_counter()
            run_query(db, query.sql, max_rows=None)
            seconds.append(time.perf_counter() - begin)
        cold[query.name] = (len(result.rows), statistics.median(seconds), max(seconds))
    out = []
    warm = database.open_raw(db, read_only=True)
    try:
        for query in EXAMPLE_QUERIES:
            warm.execute(query.sql).fetchall()
            seconds = []
            for _ in range(repeats):
                begin = time.perf_counter()
                warm.execute(query.sql).fetchall()
                seconds.append(time.perf_counter() - begin)
            out.append((query.name, *cold[query.name], statistics.median(seconds)))
    finally:
        warm.close()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", default="fashion-mnist")
    parser.add_argument("--limit", type=int, help="first N training images (default: all)")
    parser.add_argument("--samples", type=int, default=64)
    parser.add_argument("--steps", type=int, default=18)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--top-k", type=int, default=16)
    parser.add_argument("--mass", type=float, default=0.99)
    parser.add_argument("--target-rows", type=int, default=10_000_000)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--db", type=Path, help="store to create (default: a temporary file)")
    args = parser.parse_args()

    data = load_training_set(args.data, limit=args.limit).with_xflip()
    workdir = tempfile.TemporaryDirectory(prefix="bench-provenance-")
    db = args.db or Path(workdir.name) / "provenance.duckdb"
    if db.exists():
        sys.exit(f"{db} exists; give a new path")
    print(f"# {data.name}: {len(data)} images + x-flips ({data.num_entries} entries), {args.samples} samples x "
          f"{args.steps} Euler steps, top-k {args.top_k}, mass {args.mass}; torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads, {platform.processor() or platform.machine()}, {os.cpu_count()} cpus")

    time_sampling(data.subset(range(min(len(data), 64))), argparse.Namespace(**{**vars(args), "samples": 1,
                                                                                  "steps": 2}), None)  # JIT warm-up
    plain = time_sampling(data, args, None)
    with_weights = time_sampling(data, args, WeightRequest(top_k=args.top_k, mass=args.mass))

    database.upgrade(db)
    datasets.ingest(db, data)
    empty_size = checkpointed_size(db)
    begin = time.perf_counter()
    run_id = record_sampling_run(db, data, options=SamplingOptions(num_samples=args.samples, steps=args.steps,
                                                                   seed=args.seed, top_k=args.top_k, mass=args.mass))
    recorded = time.perf_counter() - begin
    with database.connect(db, read_only=True) as conn:
        timings = database.json_value(conn.execute("SELECT timings FROM runs WHERE id = ?", [run_id]).fetchone()[0])
    rows = count_rows(db)
    written = sum(rows.values())
    per_sample = (checkpointed_size(db) - empty_size) / args.samples

    print("\n| sampling (64 x 18 steps unless told) | seconds | vs plain |")
    print("|---|---:|---:|")
    for name, seconds in (("plain, no weights", plain), ("weights computed, not stored", with_weights),
                          ("recorded into the store", recorded)):
        print(f"| {name} | {seconds:.1f} | {100 * (seconds / plain - 1):+.1f} % |")
    print(f"\n| writing | value |\n|---|---:|")
    print(f"| rows written (steps + weights + stats + samples) | {written:,} |")
    print(f"| patch_weights rows per sample | {rows['patch_weights'] / args.samples:,.0f} |")
    print(f"| recorder time (Arrow conversion + transactions) | {timings['recording']:.2f} s |")
    print(f"| rows written per second of recorder time | {written / timings['recording']:,.0f} |")
    print(f"| bytes per sample in the store (checkpointed) | {per_sample:,.0f} |")
    print(f"| recorder share of the recorded run's wall time | {100 * timings['recording'] / recorded:.1f} % |")

    copies = replicate(db, run_id, args.target_rows)
    rows = count_rows(db)
    size = checkpointed_size(db)
    print(f"\n# store for the queries: run {run_id} + {copies} copies, {rows['patch_weights']:,} patch_weights rows, "
          f"{rows['step_shares']:,} step_shares rows, {size / 2**20:,.0f} MiB; {args.repeats} runs each")
    print("\n| README query | rows | run_query median ms | run_query max ms | open connection median ms |")
    print("|---|---:|---:|---:|---:|")
    for name, count, median, worst, hot in time_queries(db, args.repeats):
        print(f"| {name} | {count} | {1000 * median:.1f} | {1000 * worst:.1f} | {1000 * hot:.1f} |")

if __name__ == "__main__":
    main()
