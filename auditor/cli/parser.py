"""The `auditor` argument parser: every command group's subcommands, each with its handler
(`args.handler(args, argv)`), in the order `auditor --help` lists them."""

from __future__ import annotations

import argparse

from auditor.cli import copies, counterfactual, descriptor, export, fidelity, network, parquet, sampling, store
from auditor.cli.common import PROG, Parents, data_options, store_options


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG, parents=[store_options(False)],
        description="Provenance store for PSPC sampling: record every step's posterior weights in DuckDB "
                    "and query them with SQL.",
        epilog="Run `auditor COMMAND --help` for a command's options. AUDITOR_DEBUG=1 shows tracebacks.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    parents = Parents(store=store_options(True), data=data_options())
    for add in (store.add_db, store.add_ingest, sampling.add_sample, store.add_runs, store.add_show, store.add_sql,
                sampling.add_serve, sampling.add_quickstart, store.add_keys, network.add_train_network,
                descriptor.add_train_descriptor, network.add_compare_and_audit, fidelity.add_fidelity,
                export.add_export, export.add_verify,
                export.add_c2pa, copies.add_calibrate, copies.add_hash, counterfactual.add_counterfactual,
                parquet.add_parquet):
        add(commands, parents)
    return parser
