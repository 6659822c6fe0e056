"""The `auditor` command line: a thin layer over auditor.workflows and auditor.store.

  auditor db upgrade            create the store or migrate it to this version's schema
  auditor db status             schema revision, tables and row counts
  auditor ingest SPEC           record a training set (idempotent by fingerprint)
  auditor sample                PSPC sampling with every step's posterior weights recorded
  auditor runs                  list runs (status, size, timings)
  auditor show RUN/SAMPLE       the training images a sample was built from
  auditor sql "QUERY"           read-only SQL (table, CSV or JSON output)
  auditor serve                 the report service (HTML pages and JSON API) on 127.0.0.1:8000
  auditor quickstart            the Quick start: a store with one recorded run, then serve it
  auditor keys create|list|revoke   API keys of the service (stored hashed)
  auditor train-network         train the project's small EDM U-Net (pspc.networks.training) on a training set
  auditor train-descriptor      train the small learned copy descriptor (auditor.similarity.descriptor_training)
  auditor compare               a network vs PSPC from shared noise, the network's samples explained
  auditor audit IMAGE           attribute an external image to training images
  auditor fidelity run|import|list|show   denoisers against a network (auditor.workflows.fidelity), stored
  auditor export|verify RUN/SAMPLE   C2PA / W3C PROV exports of a sample, and their verification
  auditor c2pa init-ca          a signing CA and certificate for the exports
  auditor calibrate             the copy verdict's thresholds on a training set;  auditor hash IMAGE
  auditor counterfactual RUN/SAMPLE   the sample re-run without some training images (exact)
  auditor parquet export|sql    the provenance as Hive-partitioned Parquet; `sample --parquet DIR` appends

Modules: common (shared options and helpers), parser (the parser), and one module per command
group with its arguments and handlers (store, sampling, network, fidelity, export, copies,
counterfactual, parquet, descriptor).

The store is one DuckDB file: --db PATH, else $AUDITOR_DB, else ./provenance.duckdb. Bad
input (auditor.errors.outcome: a user error, the engine's InputError, an OSError on the
user's files) ends with `auditor: error: ...` and exit status 2, without a traceback (set
AUDITOR_DEBUG=1 to see one); nothing is changed by a command that fails that way. Any
other exception is a bug: its traceback is printed and the exit status is 1.
"""

from __future__ import annotations

import math
import os
import sys
import traceback

from auditor.cli.common import PROG, CLIError
from auditor.errors import EXIT_INTERNAL, EXIT_INTERRUPTED, EXIT_USAGE, outcome

__all__ = ["main"]


def _exit_code(exc: BaseException) -> int | None:
    """EXIT_USAGE for the user's errors (shown as one line), None for a bug."""
    found = outcome(exc)
    if found.user:
        return found.exit_code
    if isinstance(exc, OSError):  # the user's files: missing, unreadable, a directory, ...
        return EXIT_USAGE
    return None


def main(argv: list[str] | None = None) -> int:
    """Console entry point; returns the exit status (0 ok, 1 a bug, 2 bad input or usage, 130 interrupted)."""
    from auditor.cli.parser import build_parser

    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as exc:  # argparse has printed usage / help
        return exc.code if isinstance(exc.code, int) else EXIT_USAGE
    try:
        if not (math.isfinite(args.lock_timeout) and args.lock_timeout >= 0):
            raise CLIError(f"--lock-timeout must be >= 0 seconds, got {args.lock_timeout}")
        return args.handler(args, argv)
    except KeyboardInterrupt:
        if os.environ.get("AUDITOR_DEBUG"):
            raise
        hint = ("; the run is marked failed: see `auditor runs`, continue with `auditor sample --resume RUN_ID`"
                if args.command == "sample" else "")
        print(f"{PROG}: interrupted{hint}", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Exception as exc:  # noqa: BLE001 - every error ends as a message or a traceback, with its exit status
        if os.environ.get("AUDITOR_DEBUG"):
            raise
        code = _exit_code(exc)
        if code is None:
            traceback.print_exc()
            return EXIT_INTERNAL
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return code
