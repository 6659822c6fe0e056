"""Provenance as Hive-partitioned Parquet: `parquet export` (a store to a folder), `parquet sql`
(read-only SQL over a folder, with the store's views), and `sample --parquet DIR` (recording
into a folder that many machines share; auditor.store.parquet_recorder)."""

from __future__ import annotations

import sys

from auditor.cli.common import MAX_INT, PROG, CLIError, Parents, db_path, device, integer, load_data
from auditor.store.query import FORMATS


def add_parquet(commands, parents: Parents) -> None:
    store = parents.store
    parquet = commands.add_parser(
        "parquet", parents=[store], help="provenance as Hive-partitioned Parquet: export, SQL",
        description="A folder of Parquet files that DuckDB, Spark and Trino read as it is: the per-step tables "
                    "under <table>/run_id=R/step=S/, the per-run ones under <table>/run_id=R/, the others as one "
                    "file. Recorders on many machines append to one folder with `auditor sample --parquet DIR`.")
    actions = parquet.add_subparsers(dest="parquet_command", required=True, metavar="ACTION")
    export = actions.add_parser(
        "export", parents=[store], help="export the store (--db) to a new folder",
        description="Write every provenance table of the store as Parquet under OUT_DIR (a new or empty folder), "
                    "all at once: the export is written beside it and renamed into place when complete.")
    export.set_defaults(handler=cmd_export)
    export.add_argument("out_dir", metavar="OUT_DIR")
    export.add_argument("--run", dest="runs", type=integer(low=1, high=MAX_INT), nargs="+", action="extend",
                        metavar="N", help="only these runs (the tables without a run id are exported whole)")
    export.add_argument("--pixels", action="store_true", help="with the training images' pixels (default: without)")
    export.add_argument("--overwrite", action="store_true",
                        help="replace an earlier export in OUT_DIR (only once the new one is complete)")
    sql = actions.add_parser(
        "sql", help="read-only SQL over a Parquet folder",
        description="Run one read-only statement over the folder's tables and the store's views (sample_sources, "
                    "step_sources, trajectory_sources, pixel_weights), as `auditor sql` does on a store. A run "
                    "recorded into the folder is complete only once its completion marker is there.")
    sql.set_defaults(handler=cmd_sql)
    sql.add_argument("folder", metavar="DIR")
    sql.add_argument("query", metavar="QUERY")
    sql.add_argument("--format", choices=FORMATS, default="table", help="(default: %(default)s)")
    sql.add_argument("--max-rows", type=integer(low=0), default=10000, metavar="N", help="(default: %(default)s)")


def cmd_export(args, argv=None) -> int:
    from auditor.store.parquet import export_parquet

    summary = export_parquet(db_path(args), args.out_dir, run_ids=args.runs, pixels=args.pixels,
                             overwrite=args.overwrite, timeout=args.lock_timeout)
    tables = sum(1 for rows in summary.rows.values() if rows)
    print(f"{summary.out_dir}: {sum(summary.rows.values())} rows of {tables} tables in {summary.files} Parquet files, "
          f"{summary.bytes / 2**20:.1f} MiB, {summary.seconds:.1f} s")
    print(f'query it with `{PROG} parquet sql {summary.out_dir} "SELECT ..."`')
    return 0


def cmd_sql(args, argv=None) -> int:
    from auditor.store.parquet import run_parquet_query
    from auditor.store.query import format_result

    result = run_parquet_query(args.folder, args.query, max_rows=args.max_rows)
    sys.stdout.write(format_result(result, args.format))
    if result.truncated and args.format != "table":
        print(f"{PROG}: output truncated to {args.max_rows} rows (raise --max-rows)", file=sys.stderr)
    return 0


def sample_into_parquet(args, argv, sampling_options) -> int:
    """`auditor sample --parquet DIR [--run-id N]`: record the run into a Parquet folder instead of
    the store. sampling_options(args): the sample command's checked SamplingOptions."""
    from tqdm import tqdm

    from auditor.workflows.options import Runtime
    from auditor.workflows.sampling import record_parquet_run

    if args.parquet is None:
        raise CLIError("--run-id names a run of a Parquet folder: give --parquet DIR too (a store numbers its runs)")
    if args.resume is not None:
        raise CLIError("--resume continues a run of a store; a run of a Parquet folder is not resumed: record it "
                       "again (a failed run stays, marked failed)")
    if args.dataset is not None:
        raise CLIError("--dataset reads a training set from the store; with --parquet give it with --data")
    options = sampling_options(args)
    data = load_data(args.data, args).with_xflip(not args.no_xflip)
    with tqdm(total=options.steps, desc="sampling", unit="step", file=sys.stderr, disable=None) as bar:
        run_id = record_parquet_run(args.parquet, data, options=options, run_id=args.run_id,
                                    runtime=Runtime(command=[PROG, *argv], progress=bar.update,
                                                    device=device(args.device)))
    print(f"run {run_id}: complete, {options.num_samples} samples x {options.steps} steps in {args.parquet}")
    print(f'query it with `{PROG} parquet sql {args.parquet} "SELECT * FROM sample_sources WHERE run_id = {run_id}"`')
    return 0
