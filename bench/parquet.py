"""Benchmark: exporting a store to Hive-partitioned Parquet, and the README queries on both.

    PYTHONPATH=. python bench/parquet.py STORE [--repeats 5] [--out DIR]

1. Export. `auditor.store.parquet.export_parquet` of the whole store (pixels left out, the
   default): seconds, Parquet files and bytes, against the store file's size.
2. Queries. Every example query of README.md (auditor.store.example_queries), median and max
   over --repeats runs after one warm-up, through `auditor.store.query.run_query` (what
   `auditor sql` runs: open the file read-only, check, run, fetch, close) and through
   `auditor.store.parquet.run_parquet_query` (what `auditor parquet sql` runs: read the
   manifest, make the views over read_parquet in a new in-memory DuckDB, check, run, fetch);
   and warm: the statement alone on a connection kept open (the store's read-only one, and
   open_parquet's), what a long-lived reader sees. The row counts of both are compared.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))  # this working tree's packages, not installed ones

from auditor.store import database  # noqa: E402
from auditor.store.example_queries import EXAMPLE_QUERIES  # noqa: E402
from auditor.store.parquet import export_parquet, open_parquet, run_parquet_query  # noqa: E402
from auditor.store.query import SQL_CONFIG, run_query  # noqa: E402


def timed(call, repeats: int) -> tuple[float, float, object]:
    """(median ms, max ms, last result) of `repeats` calls after one warm-up."""
    result = call()
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        result = call()
        times.append(1000 * (time.perf_counter() - started))
    return statistics.median(times), max(times), result


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("store")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", help="the export's folder (default: a temporary one)")
    args = parser.parse_args(argv)
    store = Path(args.store)
    with tempfile.TemporaryDirectory(prefix="bench-parquet-") as scratch:
        out = Path(args.out) if args.out else Path(scratch) / "export"
        summary = export_parquet(store, out, overwrite=True)
        print(f"export: {summary.seconds:.2f} s, {summary.files} files, {summary.bytes / 2**20:.2f} MiB "
              f"(store file {store.stat().st_size / 2**20:.2f} MiB); rows: "
              + ", ".join(f"{name} {rows}" for name, rows in summary.rows.items() if rows))
        print("\n| query | store: auditor sql | Parquet: auditor parquet sql | store, warm | Parquet, warm | rows |\n"
              "|---|---:|---:|---:|---:|---:|")
        cells = {query.name: [] for query in EXAMPLE_QUERIES}
        for query in EXAMPLE_QUERIES:  # cold first: a kept connection would keep the store's DuckDB instance warm
            for call in (lambda: run_query(store, query.sql).rows, lambda: run_parquet_query(out, query.sql).rows):
                cells[query.name].append(timed(call, args.repeats))
        with database.connect(store, read_only=True, config=SQL_CONFIG) as kept, open_parquet(out) as views:
            for query in EXAMPLE_QUERIES:
                for call in (lambda: kept.execute(query.sql).fetchall(), lambda: views.execute(query.sql).fetchall()):
                    cells[query.name].append(timed(call, args.repeats))
        for name, timings in cells.items():
            counts = {len(rows) for _, _, rows in timings}
            print(f"| {name} | " + " | ".join(f"{median:.1f} / {worst:.1f}" for median, worst, _ in timings)
                  + f" | {len(timings[0][2])}{'' if len(counts) == 1 else ' (DIFFERENT ROW COUNTS)'} |")
        print("(milliseconds, median / max)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
