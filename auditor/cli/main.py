"""The `auditor` command line: a thin layer over the provenance store library.

  auditor db upgrade            create the store or migrate it to this version's schema
  auditor db status             schema revision, tables and row counts
  auditor ingest SPEC           record a training set (idempotent by fingerprint)
  auditor sample                PSPC sampling with every step's posterior weights recorded
  auditor runs                  list runs (status, size, timings)
  auditor show RUN/SAMPLE       the training images a sample was built from
  auditor sql "QUERY"           read-only SQL (table, CSV or JSON output)
  auditor serve                 the report service (HTML pages and JSON API) on 127.0.0.1:8000
  auditor keys create|list|revoke   API keys of the service (stored hashed)
  auditor train-network         train the project's small EDM U-Net (pspc.networks.training) on a training set
  auditor fidelity run|import|list|show   denoisers against a network (auditor.workflows.fidelity), stored

The store is one DuckDB file: --db PATH, else $AUDITOR_DB, else ./provenance.duckdb. Bad
input ends with `auditor: error: ...` and exit status 2, without a traceback (set
AUDITOR_DEBUG=1 to see one); nothing is changed by a command that fails that way.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
from pathlib import Path

from auditor.store import database
from auditor.store.database import StoreError

PROG = "auditor"
EXIT_USAGE = 2
RECORDABLE_KINDS = ("pspc-square", "pspc-flex", "empirical")  # denoisers with posterior weights
DEFAULT_NETWORK = "checkpoints/fmnist-unet.pt"  # what `auditor train-network` writes for Fashion-MNIST
SAMPLE_DEFAULTS = {"num": 16, "steps": 18, "sampler": "euler", "seed": 0, "top_k": 16, "mass": 0.99,
                   "denoiser": "pspc-square", "patch_size": None}


class CLIError(ValueError):
    """A problem with the user's request; printed as `auditor: error: ...`."""


# ---------------------------------------------------------------------------------------
# Arguments
# ---------------------------------------------------------------------------------------
def _store_options(suppress: bool) -> argparse.ArgumentParser:
    """--db and --lock-timeout, accepted before or after the command."""
    parent = argparse.ArgumentParser(add_help=False)
    default = argparse.SUPPRESS if suppress else None
    parent.add_argument("--db", metavar="PATH", default=default,
                        help="the store (default: $AUDITOR_DB, else ./provenance.duckdb)")
    parent.add_argument("--lock-timeout", type=float, metavar="S",
                        default=argparse.SUPPRESS if suppress else database.DEFAULT_TIMEOUT,
                        help=f"seconds to wait while another process holds the file (default: {database.DEFAULT_TIMEOUT:g})")
    return parent


def _data_options() -> argparse.ArgumentParser:
    parent = argparse.ArgumentParser(add_help=False)
    group = parent.add_argument_group("training data")
    group.add_argument("--data", default="fashion-mnist", metavar="SPEC",
                       help="training set: fashion-mnist[:train|:test], a .npy/.npz/.zip/IDX file, a CIFAR-10 "
                            "batch directory or an image folder (default: %(default)s)")
    group.add_argument("--limit", type=int, metavar="N", help="keep only the first N training images (default: all)")
    return parent


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG, parents=[_store_options(False)],
        description="Provenance store for PSPC sampling: record every step's posterior weights in DuckDB "
                    "and query them with SQL.",
        epilog="Run `auditor COMMAND --help` for a command's options. AUDITOR_DEBUG=1 shows tracebacks.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    store, data = _store_options(True), _data_options()

    db = commands.add_parser("db", parents=[store], help="create, migrate or inspect the store",
                             description="Schema migrations (Alembic, migrations/) and a summary of the store.")
    db_commands = db.add_subparsers(dest="db_command", required=True, metavar="ACTION")
    db_commands.add_parser("upgrade", parents=[store], help="create the file or migrate it to the current schema")
    db_commands.add_parser("status", parents=[store], help="schema revision, tables and row counts")

    ingest = commands.add_parser("ingest", parents=[store], help="record a training set (idempotent)",
                                 description="Record a training set's fingerprint, image ids, hashes and metadata. "
                                             "Ingesting the same pixels again changes nothing.")
    ingest.add_argument("spec", metavar="SPEC", help="training data spec, as for `pspc --data`")
    ingest.add_argument("--limit", type=int, metavar="N", help="keep only the first N images (default: all)")

    sample = commands.add_parser(
        "sample", parents=[store, data], help="PSPC sampling, recording every step",
        description="Sample with PSPC on the EDM schedule and record, per step and sample, z_t, D(z_t) and "
                    "the top-k posterior weights of every patch (sample i starts from seed + i). A run is "
                    "atomic: it is 'complete' only once its last step is stored; Ctrl-C or an error marks it "
                    "'failed', and --resume RUN_ID continues it.")
    sample.add_argument("--no-xflip", action="store_true", help="without the mirrored training images")
    sample.add_argument("--dataset", type=int, metavar="ID",
                        help="sample on a dataset held in the store (its stored pixels, ids and metadata) "
                             "instead of loading --data")
    sample.add_argument("--denoiser", choices=RECORDABLE_KINDS, help="(default: pspc-square)")
    sample.add_argument("--patch-size", type=int, metavar="S",
                        help="pspc-square: fixed s x s patches (default: the paper's s(t) schedule)")
    sample.add_argument("--num", type=int, metavar="N", help="number of samples (default: 16)")
    sample.add_argument("--steps", type=int, help="sampling steps (default: 18)")
    sample.add_argument("--sampler", choices=("euler", "heun"), help="(default: euler)")
    sample.add_argument("--seed", type=int, help="(default: 0)")
    sample.add_argument("--top-k", type=int, metavar="K", help="kept weights per sample and patch (default: 16)")
    sample.add_argument("--mass", type=float, metavar="M",
                        help="stop keeping weights once they hold mass M, in (0, 1] (default: 0.99)")
    sample.add_argument("--device", default="cpu", help="cpu or cuda[:N] (default: %(default)s)")
    sample.add_argument("--resume", type=int, metavar="RUN_ID",
                        help="continue an interrupted run with its stored configuration (pass the same --data)")

    runs = commands.add_parser("runs", parents=[store], help="list runs",
                               description="Runs, newest first: status, dataset, denoiser, samples, steps, time.")
    runs.add_argument("--dataset", metavar="ID", help="only runs on this dataset (id or fingerprint prefix)")

    show = commands.add_parser("show", parents=[store], help="top training sources of a sample",
                               description="The training images a sample was built from (share of its pixels), "
                                           "for the final image or the denoiser output at one step.")
    show.add_argument("target", metavar="RUN/SAMPLE", help="e.g. 3/0: run 3, sample 0")
    show.add_argument("--step", type=int, metavar="N", help="D(z_t) at step N instead of the final image")
    show.add_argument("--top", type=int, default=10, metavar="N", help="how many sources (default: %(default)s)")

    sql = commands.add_parser("sql", parents=[store], help="read-only SQL",
                              description="Run one read-only statement (SELECT, WITH ... SELECT, EXPLAIN, DESCRIBE, "
                                          "SHOW) on the store. Tables and views: see README.md.")
    sql.add_argument("query", metavar="QUERY")
    sql.add_argument("--format", choices=("table", "csv", "json"), default="table", help="(default: %(default)s)")
    sql.add_argument("--max-rows", type=int, default=10000, metavar="N", help="(default: %(default)s)")

    serve = commands.add_parser(
        "serve", parents=[store], help="run the report service",
        description="Serve sample reports (HTML) and the JSON API (/api, docs at /api/docs) over the store. With "
                    "no API key in the store it runs in local single-user mode (no checks); once a key exists "
                    "(`auditor keys create`), every request needs one.")
    serve.add_argument("--host", default="127.0.0.1", help="(default: %(default)s)")
    serve.add_argument("--port", type=int, default=8000, help="(default: %(default)s)")
    serve.add_argument("--require-keys", action="store_true", help="require API keys even before one exists")
    serve.add_argument("--sql-row-cap", type=int, default=1000, metavar="N", help="(default: %(default)s)")
    serve.add_argument("--sql-time-limit", type=float, default=5.0, metavar="S", help="(default: %(default)s)")
    serve.add_argument("--max-upload-mb", type=float, default=10.0, metavar="MB", help="(default: %(default)s)")
    serve.add_argument("--jobs-dir", metavar="DIR", help="job logs (default: beside the store, STORE.jobs/)")
    serve.add_argument("--max-running-jobs", type=int, default=1, metavar="N", help="(default: %(default)s)")

    quickstart = commands.add_parser(
        "quickstart", parents=[store], help="the Quick start: ingest, record a small run, serve its report",
        description="Bring the store to the README's Quick start state (schema upgraded, Fashion-MNIST ingested "
                    "with x-flips, a complete PSPC-Square run recorded unless one with these settings exists), "
                    "then serve the report service and print the URL of the first sample's report.")
    quickstart.add_argument("--data", default="fashion-mnist", metavar="SPEC", help="(default: %(default)s)")
    quickstart.add_argument("--num", type=int, default=8, help="samples to record (default: %(default)s)")
    quickstart.add_argument("--steps", type=int, default=18, help="(default: %(default)s)")
    quickstart.add_argument("--host", default="127.0.0.1", help="(default: %(default)s)")
    quickstart.add_argument("--port", type=int, default=8000, help="(default: %(default)s)")
    quickstart.add_argument("--no-serve", action="store_true", help="prepare the store and print the URL only")

    keys = commands.add_parser("keys", parents=[store], help="API keys of the report service",
                               description="Keys are shown once, at creation; the store keeps only their sha256. "
                                           "Scopes: read (every GET), submit (POST /api/jobs; implies read).")
    key_commands = keys.add_subparsers(dest="keys_command", required=True, metavar="ACTION")
    create = key_commands.add_parser("create", parents=[store], help="create a key and print it (once)")
    create.add_argument("name", help="who or what uses the key")
    create.add_argument("--scope", choices=("read", "submit"), default="read", help="(default: %(default)s)")
    key_commands.add_parser("list", parents=[store], help="keys (never their secrets)")
    revoke = key_commands.add_parser("revoke", parents=[store], help="revoke a key (the service notices within 1 s)")
    revoke.add_argument("key_id", type=int, metavar="ID")

    train = commands.add_parser(
        "train-network", parents=[data], help="train the project's small EDM U-Net (CPU is enough)",
        description="Train the EDM-preconditioned U-Net (pspc.networks.unet) with the EDM loss, Adam and an EMA of the "
                    "weights. Writes --out (EMA weights), NAME.json (the training record: command, data "
                    "fingerprint, wall time, final loss, versions), NAME.png (samples, Heun, 18 steps) and "
                    "NAME.state.pt (resume state), at every checkpoint and at the end. Every draw of iteration k "
                    "is seeded by (seed, k): --resume continues exactly where the run stopped.")
    train.add_argument("--out", type=Path, metavar="PATH.pt", help="checkpoint (default: checkpoints/DATA-unet.pt)")
    train.add_argument("--iterations", type=int, default=3000, help="total iterations (default: %(default)s)")
    train.add_argument("--batch", type=int, default=32, help="(default: %(default)s)")
    train.add_argument("--lr", type=float, default=1e-3, help="Adam learning rate (default: %(default)s)")
    train.add_argument("--seed", type=int, default=0, help="(default: %(default)s)")
    train.add_argument("--channels", type=int, metavar="C", help="model width: C, 2C, 2C per level (default: 16)")
    train.add_argument("--blocks", type=int, metavar="N", help="residual blocks per level (default: 1)")
    train.add_argument("--no-xflip", action="store_true", help="no random horizontal flips")
    train.add_argument("--half", action="store_true", help="store the EMA weights as float16 (half the file size)")
    train.add_argument("--checkpoint-minutes", type=float, default=5.0, metavar="M",
                       help="save every M minutes of training (default: %(default)s)")
    train.add_argument("--preview", type=int, default=36, metavar="N",
                       help="samples in the preview grid at each checkpoint, 0 for none (default: %(default)s)")
    train.add_argument("--resume", action="store_true", help="continue from --out's state file up to --iterations")
    train.add_argument("--device", default="cpu", help="cpu or cuda[:N] (default: %(default)s)")
    train.add_argument("--threads", type=int, metavar="N",
                       help="CPU threads for torch (default: torch's choice; 1 is far faster on a busy machine)")
    _comparison_parsers(commands, store, data)
    _fidelity_parsers(commands, store)
    return parser


def _fidelity_parsers(commands, store) -> None:
    """`auditor fidelity run|import|list|show` (auditor.workflows.fidelity; the options of bench/fidelity.py)."""
    from auditor.workflows.fidelity import add_study_options

    fidelity = commands.add_parser(
        "fidelity", parents=[store], help="how closely training-free denoisers reproduce a network (stored studies)",
        description="Fidelity studies (paper Figs. 2-4, 7, 9, Appendix B): MSE against a network per noise level and "
                    "denoiser on the forward and reverse processes, the gradient-concentration table, the samples' "
                    "similarity to the network's and tuned schedules, stored in the provenance store and shown at "
                    "/fidelity by `auditor serve`.")
    actions = fidelity.add_subparsers(dest="fidelity_command", required=True, metavar="ACTION")
    run = actions.add_parser(
        "run", parents=[store], help="run a study and store it (the options of bench/fidelity.py)",
        description="Run the study of bench/fidelity.py (same options; defaults in brackets are the full "
                    "configuration, --quick the quick one) and store it. Prints the tables as they are computed.")
    add_study_options(run)
    run.add_argument("--name", help="the study's label (default: network and training set)")
    load = actions.add_parser("import", parents=[store], help="store a fidelity.json written by bench/fidelity.py")
    load.add_argument("file", type=Path, metavar="FILE.json")
    load.add_argument("--name", help="the study's label (default: the name of the file's --out folder)")
    actions.add_parser("list", parents=[store], help="stored studies, newest first")
    show = actions.add_parser("show", parents=[store], help="a stored study's tables and findings")
    show.add_argument("study_id", type=int, metavar="ID")


def _comparison_parsers(commands, store, data) -> None:
    """`auditor compare` and `auditor audit IMAGE` (auditor.workflows.comparison, auditor.workflows.audit)."""
    shared = argparse.ArgumentParser(add_help=False)
    shared.add_argument("--no-xflip", action="store_true", help="without the mirrored training images")
    shared.add_argument("--steps", type=int, default=18, help="sampling steps (default: %(default)s)")
    shared.add_argument("--seed", type=int, default=0, help="(default: %(default)s)")
    shared.add_argument("--top-k", type=int, default=16, metavar="K",
                        help="kept weights per sample and patch (default: %(default)s)")
    shared.add_argument("--mass", type=float, default=0.99, metavar="M",
                        help="stop keeping weights once they hold mass M, in (0, 1] (default: %(default)s)")
    shared.add_argument("--explainer", choices=RECORDABLE_KINDS, default="pspc-square",
                        help="the PSPC denoiser whose posterior weights attribute the network's states "
                             "(default: %(default)s)")
    shared.add_argument("--patch-size", type=int, metavar="S",
                        help="pspc-square: fixed s x s patches (default: the paper's s(t) schedule)")
    shared.add_argument("--schedule", type=Path, metavar="FILE",
                        help="a tuned schedule file (bench/fidelity.py --tune): s(t) for pspc-square, lambda(t) for "
                             "pspc-flex (default: the paper's schedules)")
    shared.add_argument("--sensitivity-draws", type=int, default=4, metavar="N",
                        help="pspc-flex with a network: forward-process draws per noise level for the network's "
                             "gradient sensitivity (Eq. 8) its masks come from (default: %(default)s)")
    shared.add_argument("--descriptor", metavar="SPEC",
                        help="copy-detection descriptor: sscd, sscd:PATH, an official SSCD name, pixel-correlation[:N] "
                             "(default: $PSPC_SSCD_CHECKPOINT when set, else pixel-correlation, which is not SSCD)")
    shared.add_argument("--thresholds", default="0.5,0.6", metavar="T1,T2",
                        help="copy thresholds on the descriptor similarity (default: %(default)s)")
    shared.add_argument("--copy-k", type=int, default=5, metavar="K",
                        help="nearest training images stored per image, 0 to skip copy detection "
                             "(default: %(default)s)")
    shared.add_argument("--device", default="cpu", help="cpu or cuda[:N] (default: %(default)s)")
    shared.add_argument("--threads", type=int, metavar="N",
                        help="CPU threads of torch and of the PSPC kernels (default: all cores; 1 is far faster on a "
                             "busy machine)")

    compare = commands.add_parser(
        "compare", parents=[store, data, shared], help="network vs PSPC from shared noise, network samples explained",
        description="Sample with a network and with PSPC (and --denoisers) from the same initial noise. At every "
                    "network step PSPC's posterior on the network's own z_t is recorded as the network sample's "
                    "attribution, with the network-vs-PSPC MSE at that step as its confidence. Then the "
                    "descriptor similarity of every pair of samples from the same noise and the nearest training "
                    "images of every sample are stored. Prints the run ids and the per-step agreement table.")
    compare.add_argument("--network", type=Path, default=Path(DEFAULT_NETWORK), metavar="PATH",
                         help="project checkpoint, TorchScript net(z, sigma) or EDM .pkl (default: %(default)s)")
    compare.add_argument("--num", type=int, default=16, metavar="N", help="samples (default: %(default)s)")
    compare.add_argument("--sampler", choices=("euler", "heun"), default="euler", help="(default: %(default)s)")
    compare.add_argument("--denoisers", default="pspc-square", metavar="KINDS",
                         help="comma-separated denoisers sampled from the same noise: pspc-square, pspc-flex, "
                              "empirical (recorded with attribution), gaussian, cfdm (final images only) "
                              "(default: %(default)s)")

    audit = commands.add_parser(
        "audit", parents=[store, data, shared], help="attribute an external image to training images",
        description="With a network: invert the image along the network's deterministic PF-ODE (t_min up to "
                    "t_max), replay it forward and record PSPC's attribution at every step, with the "
                    "network-vs-PSPC agreement and the reconstruction error. With --no-network: PSPC's "
                    "attribution of x + t eps at --noise-levels. The image must have the training set's size and "
                    "channels. The nearest training images by descriptor are stored too.")
    audit.add_argument("image", type=Path, metavar="IMAGE", help="a PNG/JPEG/BMP/WebP image or a .npy array")
    way = audit.add_mutually_exclusive_group()
    way.add_argument("--network", type=Path, default=Path(DEFAULT_NETWORK), metavar="PATH",
                     help="invert and replay with this network (default: %(default)s)")
    way.add_argument("--no-network", action="store_true",
                     help="attribute the image's patches directly at --noise-levels, without a network")
    audit.add_argument("--sampler", choices=("euler", "heun"), default="heun",
                       help="inversion and replay integrator (default: %(default)s, second order)")
    audit.add_argument("--noise-levels", default="3,1,0.3,0.05", metavar="T1,T2,...",
                       help="--no-network: noise levels t of x + t eps (default: %(default)s)")
    audit.add_argument("--draws", type=int, default=1, metavar="N",
                       help="--no-network: noise draws per level, one sample each (default: %(default)s)")


# ---------------------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------------------
def _positive(value, option: str) -> None:
    if value is not None and not (math.isfinite(value) and value > 0):
        raise CLIError(f"{option} must be > 0, got {value}")


def _db(args):
    return database.resolve_db_path(args.db)


def _load(spec: str, limit: int | None):
    from pspc.data.loaders import load_training_set

    _positive(limit, "--limit")
    return load_training_set(spec, limit=limit)


def _print_table(headers: list[str], rows: list[list]) -> None:
    from auditor.store.query import format_table

    sys.stdout.write(format_table(headers, [tuple(r) for r in rows], null=""))


def _parse_target(text: str) -> tuple[int, int]:
    parts = text.split("/")
    if len(parts) != 2 or not all(p.strip().isdigit() for p in parts):
        raise CLIError(f"expected RUN/SAMPLE (two numbers, e.g. 3/0), got {text!r}")
    return int(parts[0]), int(parts[1])


# ---------------------------------------------------------------------------------------
# Commands
# ---------------------------------------------------------------------------------------
def cmd_db(args) -> int:
    path = _db(args)
    if args.db_command == "upgrade":
        before, after = database.upgrade(path, timeout=args.lock_timeout)
        if before == after:
            print(f"{path}: schema revision {after} (up to date)")
        else:
            print(f"{path}: upgraded schema {before or 'empty'} -> {after}")
        return 0
    revision = database.current_revision(path, timeout=args.lock_timeout) if path.exists() else None
    head = database.head_revision()
    if not path.exists():
        raise StoreError(f"{path}: no provenance store here; create it with `auditor db upgrade`")
    if revision is not None and revision not in database.known_revisions():
        database.require_current(path, timeout=args.lock_timeout)  # raises the "newer version" SchemaError
    state = "current" if revision == head else f"needs `auditor db upgrade` to {head}"
    print(f"store     {path.resolve()} ({path.stat().st_size / 2**20:.1f} MiB)")
    print(f"revision  {revision or 'none'} ({state})")
    with database.connect(path, read_only=True, timeout=args.lock_timeout) as conn:
        tables = [r[0] for r in conn.execute(
            "SELECT table_name FROM duckdb_tables() WHERE schema_name = 'main' AND database_name = current_database() "
            "AND table_name != 'alembic_version' ORDER BY table_name").fetchall()]
        counts = [(t, conn.execute(f'SELECT count(*) FROM "{t}"').fetchone()[0]) for t in tables]
        views = [r[0] for r in conn.execute(
            "SELECT view_name FROM duckdb_views() WHERE NOT internal AND schema_name = 'main' "
            "AND database_name = current_database() ORDER BY view_name").fetchall()]
    _print_table(["table", "rows"], [[t, n] for t, n in counts])
    if views:
        print(f"views: {', '.join(views)}")
    return 0


def cmd_ingest(args) -> int:
    from auditor.store.datasets import ingest

    path = _db(args)
    database.require_current(path, timeout=args.lock_timeout)
    data = _load(args.spec, args.limit)
    dataset_id, created = ingest(path, data, timeout=args.lock_timeout)
    print(f"dataset {dataset_id}: {'created' if created else 'already present'} "
          f"({data.name}, {len(data)} images {'x'.join(map(str, data.image_shape))})")
    print(f"fingerprint {data.fingerprint}")
    return 0


def _resume_total(path, run_id: int, timeout: float) -> int | None:
    """Steps left to compute in a run (for the progress bar), or None if unknown."""
    with database.connect(path, read_only=True, timeout=timeout) as conn:
        row = conn.execute("SELECT CAST(json_extract(sampler, '$.num_steps') AS INTEGER), num_samples "
                           "FROM runs WHERE id = ?", [run_id]).fetchone()
        if row is None:
            return None
        counts = dict(conn.execute("SELECT step, count(*) FROM steps WHERE run_id = ? GROUP BY step",
                                   [run_id]).fetchall())
    num_steps, num_samples = row
    done = 0
    while counts.get(done) == num_samples:
        done += 1
    return max(0, (num_steps or 0) - done) if num_steps else None


def cmd_sample(args, argv: list[str]) -> int:
    from pspc.cli import _device
    from tqdm import tqdm

    from auditor.workflows import sampling as runs

    path = _db(args)
    database.require_current(path, timeout=args.lock_timeout)
    device = _device(args.device)
    given = [f"--{k.replace('_', '-')}" for k in SAMPLE_DEFAULTS if getattr(args, k) is not None]
    if args.resume is not None:
        if given:
            raise CLIError(f"--resume continues run {args.resume} with its stored configuration; "
                           f"drop {', '.join(given)}")
        if args.no_xflip:
            raise CLIError("--resume takes the x-flip setting from the run; drop --no-xflip")
    for key, value in SAMPLE_DEFAULTS.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    for option in ("num", "steps", "top_k", "patch_size"):
        _positive(getattr(args, option), f"--{option.replace('_', '-')}")
    if not 0 < args.mass <= 1:
        raise CLIError(f"--mass must be in (0, 1], got {args.mass}")
    if args.patch_size is not None and args.denoiser != "pspc-square":
        raise CLIError(f"--patch-size applies to --denoiser pspc-square, not {args.denoiser}")
    if args.dataset is not None:
        from auditor.store.datasets import stored_training_set

        if args.data != "fashion-mnist" or args.limit is not None:
            raise CLIError("--dataset takes the training images from the store; drop --data and --limit")
        data = stored_training_set(path, args.dataset, timeout=args.lock_timeout)
    else:
        data = _load(args.data, args.limit)

    if args.resume is not None:
        total = _resume_total(path, args.resume, args.lock_timeout)
        with tqdm(total=total, desc=f"resuming run {args.resume}", unit="step", file=sys.stderr,
                  disable=None) as bar:
            run_id = runs.resume_run(path, args.resume, data, progress=bar.update, device=device,
                                     timeout=args.lock_timeout)
    else:
        with tqdm(total=args.steps, desc="sampling", unit="step", file=sys.stderr, disable=None) as bar:
            run_id = runs.record_sampling_run(
                path, data.with_xflip(not args.no_xflip), denoiser_kind=args.denoiser, patch_size=args.patch_size,
                num_samples=args.num, steps=args.steps, sampler=args.sampler, seed=args.seed, top_k=args.top_k,
                mass=args.mass, command=[PROG, *argv], progress=bar.update, device=device,
                timeout=args.lock_timeout)
    summary = next((r for r in runs.run_summaries(path, timeout=args.lock_timeout) if r["id"] == run_id), None)
    status = summary["status"] if summary else "recorded"
    print(f"run {run_id}: {status}" + (f", {summary['samples']} samples x {summary['steps']} steps" if summary else "")
          + f" in {path}")
    print(f"see its sources with `auditor show {run_id}/0`")
    return 0


def _when(value) -> str:
    return value.strftime("%Y-%m-%d %H:%M:%S") if value is not None else ""


def cmd_runs(args) -> int:
    from auditor.workflows import sampling as runs
    from auditor.store.datasets import find_dataset

    path = _db(args)
    dataset_id = None
    if args.dataset is not None:
        dataset_id = find_dataset(path, args.dataset, timeout=args.lock_timeout)["id"]
    rows = runs.run_summaries(path, dataset_id, timeout=args.lock_timeout)
    if not rows:
        print("no runs" + (f" on dataset {dataset_id}" if dataset_id is not None else "")
              + "; record one with `auditor sample`")
        return 0
    table = []
    for r in rows:
        steps = f"{r['steps']}/{r.get('planned_steps') or '?'}"
        seconds = r.get("seconds")
        table.append([r["id"], r["status"], f"{r['dataset_id']} {r.get('dataset') or ''}".strip(),
                      r.get("denoiser") or "", r["samples"], steps, _when(r.get("created_at")),
                      "" if seconds is None else f"{seconds:.1f}"])
    _print_table(["run", "status", "dataset", "denoiser", "samples", "steps", "started (UTC)", "seconds"], table)
    failed = [r for r in rows if r.get("error")]
    for r in failed[:3]:
        print(f"run {r['id']} error: {r['error'].strip().splitlines()[-1] if r['error'].strip() else ''}")
    return 0


def _share(value) -> str:
    return f"{100 * value:.1f}%" if value is not None else ""


def cmd_show(args) -> int:
    from auditor.store.attribution import sample_sources

    path = _db(args)
    run_id, sample_index = _parse_target(args.target)
    _positive(args.top, "--top")
    if args.step is not None and args.step < 0:
        raise CLIError(f"--step must be >= 0, got {args.step}")
    database.require_current(path, timeout=args.lock_timeout)
    rows = sample_sources(path, run_id, sample_index, step=args.step, top=args.top, timeout=args.lock_timeout)
    what = f"D(z_t) at step {args.step}" if args.step is not None else "final image"
    print(f"run {run_id}, sample {sample_index}, {what}: top {len(rows)} training sources (share of the pixels)")
    table = []
    for rank, r in enumerate(rows, 1):
        patches = r.get("patches") or []
        best = ""
        if patches:
            p = patches[0]
            best = (f"step {p[0]} @({p[2]},{p[3]}) {p[4]}x{p[5]} w={p[6]:.3f}" if isinstance(p, (tuple, list))
                    and len(p) >= 7 else str(p))
        table.append([rank, _share(r.get("share")), _share(r.get("flip_share")), r.get("image_index"),
                      r.get("image_id"), r.get("label_name") or r.get("label"), r.get("owner"), r.get("license"),
                      r.get("source_uri"), best])
    _print_table(["#", "share", "mirrored", "index", "image id", "label", "owner", "license", "source", "largest patch"],
                 table)
    return 0


def cmd_sql(args) -> int:
    from auditor.store.query import format_result, run_query

    if args.max_rows is not None and args.max_rows < 0:
        raise CLIError(f"--max-rows must be >= 0, got {args.max_rows}")
    result = run_query(_db(args), args.query, max_rows=args.max_rows, timeout=args.lock_timeout)
    sys.stdout.write(format_result(result, args.format))
    if result.truncated and args.format != "table":
        print(f"{PROG}: output truncated to {args.max_rows} rows (raise --max-rows)", file=sys.stderr)
    return 0


def cmd_serve(args) -> int:
    import uvicorn

    from auditor.service.app import ServiceSettings, create_app, startup_message

    if not 0 < args.port < 65536:
        raise CLIError(f"--port must be in 1..65535, got {args.port}")
    if not args.max_upload_mb > 0:
        raise CLIError(f"--max-upload-mb must be > 0, got {args.max_upload_mb}")
    settings = ServiceSettings(db_path=_db(args), lock_timeout=args.lock_timeout, sql_row_cap=args.sql_row_cap,
                               sql_time_limit_s=args.sql_time_limit, max_upload_bytes=int(args.max_upload_mb * 2**20),
                               jobs_dir=args.jobs_dir, keys_required=True if args.require_keys else None,
                               max_running_jobs=args.max_running_jobs)
    app = create_app(settings)
    host = f"[{args.host}]" if ":" in args.host else args.host
    print(startup_message(settings, f"http://{host}:{args.port}/"), flush=True)
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning")
    return 0


def cmd_quickstart(args) -> int:
    from tqdm import tqdm

    from auditor.workflows.quickstart import prepare

    for option in ("num", "steps"):
        _positive(getattr(args, option), f"--{option}")
    if not 0 < args.port < 65536:
        raise CLIError(f"--port must be in 1..65535, got {args.port}")
    path = _db(args)
    with tqdm(total=args.steps, desc="sampling", unit="step", file=sys.stderr, disable=None) as bar:
        run = prepare(path, data=args.data, num_samples=args.num, steps=args.steps, progress=bar.update,
                      timeout=args.lock_timeout)
    host = f"[{args.host}]" if ":" in args.host else args.host
    print(f"sample report: http://{host}:{args.port}{run.report_path(0)}", flush=True)
    if run.studies:
        print(f"network fidelity: http://{host}:{args.port}/fidelity/{run.studies[-1]}", flush=True)
    if args.no_serve:
        return 0
    for name, value in (("require_keys", False), ("sql_row_cap", 1000), ("sql_time_limit", 5.0),
                        ("max_upload_mb", 10.0), ("jobs_dir", None), ("max_running_jobs", 1)):
        setattr(args, name, value)
    return cmd_serve(args)


def cmd_keys(args) -> int:
    from auditor.service import auth as access

    path = _db(args)
    if args.keys_command == "create":
        key, token = access.create_key(path, args.name, [args.scope], timeout=args.lock_timeout)
        print(f"key {key.id} ({key.name}), scope {','.join(key.scopes)}:")
        print(token)
        print("store it now: it is not shown again (the store keeps only its sha256)", file=sys.stderr)
        return 0
    if args.keys_command == "list":
        rows = access.list_keys(path, timeout=args.lock_timeout)
        if not rows:
            print("no API keys: the service runs in local single-user mode; create one with `auditor keys create NAME`")
            return 0
        _print_table(["id", "name", "scopes", "created (UTC)", "last used (UTC)", "revoked (UTC)"],
                     [[k.id, k.name, ",".join(k.scopes), _when(k.created_at), _when(k.last_used_at),
                       _when(k.revoked_at)] for k in rows])
        return 0
    key = access.revoke_key(path, args.key_id, timeout=args.lock_timeout)
    print(f"key {key.id} ({key.name}) revoked at {_when(key.revoked_at)} UTC")
    return 0


def cmd_train_network(args, argv: list[str]) -> int:
    from pspc.cli import _device
    from pspc.networks.unet import NetworkConfig
    from pspc.networks.training import TrainingConfig, train
    from tqdm import tqdm

    for option in ("iterations", "batch", "lr", "channels", "blocks", "threads"):
        _positive(getattr(args, option), f"--{option}")
    if args.checkpoint_minutes < 0 or args.preview < 0:
        raise CLIError("--checkpoint-minutes and --preview must be >= 0")
    device = _device(args.device)
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    data = _load(args.data, args.limit)
    out = args.out or Path("checkpoints") / f"{data.name}-unet.pt"
    network = None
    if not args.resume or args.channels or args.blocks:
        network = NetworkConfig(image_channels=data.channels, resolution=data.resolution,
                                model_channels=args.channels or 16, num_blocks=args.blocks or 1)
    config = TrainingConfig(iterations=args.iterations, batch_size=args.batch, lr=args.lr, seed=args.seed,
                            xflip=not args.no_xflip, checkpoint_seconds=60 * args.checkpoint_minutes,
                            preview_samples=args.preview)
    with tqdm(total=args.iterations, desc="training", unit="it", file=sys.stderr, disable=None) as bar:
        def progress(done: int, total: int, loss: float) -> None:
            bar.n = done
            bar.set_postfix(loss=f"{loss:.4f}", refresh=False)
            bar.update(0)
            if bar.disable and done % 100 == 0:  # not a terminal (a log file): one line per 100 iterations
                print(f"iteration {done}/{total} loss {loss:.4f}", file=sys.stderr, flush=True)

        try:
            record = train(data, out, network, config, resume=args.resume, device=device, half=args.half,
                           command=[PROG, *argv], progress=progress, log=bar.write)
        except KeyboardInterrupt:
            bar.write(f"interrupted: the last checkpoint is kept; continue with `{PROG} train-network --resume "
                      f"--out {out} ...` (same options)")
            raise
    print(f"trained {record['iterations']} iterations ({record['epochs']} epochs) in {record['wall_seconds']:.0f} s: "
          f"final loss {record['final_loss']}, eval loss {record['eval_loss']}")
    for path in (out, out.with_suffix(".json"), out.with_suffix(".png"), Path(record["checkpoint"]["state"])):
        if path.exists():
            print(f"  {path}")
    return 0


def _numbers(text: str, option: str) -> list[float]:
    try:
        values = [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise CLIError(f"{option} takes comma-separated numbers, got {text!r}") from None
    if not values:
        raise CLIError(f"{option} needs at least one number")
    return values


def _comparison_setup(args, network_path: Path | None, what: str, check_data=None):
    """Shared checks and loading of compare / audit, cheapest first: (store path, training set, device,
    network, descriptor, thresholds). check_data(training set) runs before the network is loaded."""
    import warnings

    from pspc.cli import _device

    from auditor.similarity.descriptors import FallbackDescriptorWarning, load_descriptor

    for option in ("steps", "top_k", "patch_size", "threads"):
        _positive(getattr(args, option), f"--{option.replace('_', '-')}")
    if args.threads:
        import numba
        import torch

        # both: numba's OpenMP kernels reset the OpenMP thread count that torch reads
        torch.set_num_threads(args.threads)
        numba.set_num_threads(min(args.threads, numba.config.NUMBA_NUM_THREADS))
    if not 0 < args.mass <= 1:
        raise CLIError(f"--mass must be in (0, 1], got {args.mass}")
    if args.copy_k < 0:
        raise CLIError(f"--copy-k must be >= 0, got {args.copy_k}")
    if args.patch_size is not None and args.explainer != "pspc-square":
        raise CLIError(f"--patch-size applies to --explainer pspc-square, not {args.explainer}")
    if args.sensitivity_draws < 1:
        raise CLIError(f"--sensitivity-draws must be >= 1, got {args.sensitivity_draws}")
    thresholds = _numbers(args.thresholds, "--thresholds")
    path = _db(args)
    database.require_current(path, timeout=args.lock_timeout)
    device = _device(args.device)
    if network_path is not None and not network_path.is_file():
        hint = " or --no-network to attribute the image directly" if what == "audit" else ""
        raise CLIError(f"{network_path}: no network file; train one with `auditor train-network`, or pass "
                       f"--network PATH{hint}")
    data = _load(args.data, args.limit).with_xflip(not args.no_xflip)
    if check_data is not None:
        check_data(data)
    network = None
    if network_path is not None:
        from pspc.networks.unet import load_network

        network = load_network(network_path, data, device=device)
    descriptor = None
    if args.copy_k or what == "compare":
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", FallbackDescriptorWarning)
            descriptor = load_descriptor(args.descriptor, device=device)
        for warning in caught:
            print(f"{PROG}: note: {warning.message}", file=sys.stderr)
    return path, data, device, network, descriptor, thresholds


def _print_agreement(rows: list[dict]) -> None:
    _print_table(["step", "t", "MSE net vs PSPC", "max MSE", "max |error|", "captured mass"],
                 [[r["step"], f"{r['t']:.4g}", f"{r['mse']:.5f}", f"{r['max_mse']:.5f}", f"{r['max_abs_error']:.4f}",
                   "" if r["mass"] is None else f"{r['mass']:.3f}"] for r in rows])


def _print_copies(path, run_ids: dict, timeout: float) -> None:
    """The nearest training image of every stored image, by descriptor."""
    with database.connect(path, read_only=True, timeout=timeout) as conn:
        rows = conn.execute(f"""
            SELECT m.run_id, m.sample_index, i.image_id, m.flip, m.score, m.flag, m.descriptor
            FROM copy_matches m JOIN runs r ON r.id = m.run_id
            JOIN training_images i ON i.dataset_id = r.dataset_id AND i.image_index = m.image_index
            WHERE m.rank = 0 AND m.run_id IN ({", ".join("?" * len(run_ids))})
            ORDER BY m.run_id, m.sample_index""", list(run_ids.values())).fetchall()
    if not rows:
        return
    role = {v: k for k, v in run_ids.items()}
    print(f"nearest training image by descriptor {rows[0][6]}:")
    _print_table(["run", "role", "sample", "training image", "mirrored", "score", "flag"],
                 [[r, role[r], s, image, "yes" if flip else "", f"{score:.4f}", f">= {flag:g}" if flag else ""]
                  for r, s, image, flip, score, flag, _ in rows])


def cmd_compare(args, argv: list[str]) -> int:
    from tqdm import tqdm

    from auditor.workflows import comparison

    _positive(args.num, "--num")
    kinds = [k.strip() for k in args.denoisers.split(",") if k.strip()]
    if not kinds:
        raise CLIError("--denoisers needs at least one denoiser")
    path, data, device, network, descriptor, thresholds = _comparison_setup(args, args.network, "compare")
    total = args.steps * (1 + len(kinds))
    with tqdm(total=total, desc="comparing", unit="step", file=sys.stderr, disable=None) as bar:
        result = comparison.record_comparison(
            path, data, network, num_samples=args.num, steps=args.steps, seed=args.seed, sampler=args.sampler,
            top_k=args.top_k, mass=args.mass, denoisers=kinds, explainer=args.explainer, patch_size=args.patch_size,
            schedule=args.schedule, sensitivity_draws=args.sensitivity_draws,
            descriptor=descriptor, thresholds=thresholds, copy_k=args.copy_k, command=[PROG, *argv],
            progress=bar.update, device=device, timeout=args.lock_timeout)
    print(f"comparison {result.comparison_id}: network {network.name} (network {result.network_id}) vs "
          f"{', '.join(kinds)}; {args.num} samples x {args.steps} {args.sampler} steps from shared noise "
          f"(seed {args.seed}) in {path}")
    kinds_of = {comparison.NETWORK_ROLE: "network-explained", **{k: "pspc" for k in RECORDABLE_KINDS}}
    _print_table(["role", "run", "kind"], [[role, run_id, kinds_of.get(role, "samples-only")]
                                           for role, run_id in result.run_ids.items()])
    print(f"per-step agreement of run {result.network_run_id}: PSPC ({args.explainer}) on the network's z_t vs the "
          f"network's D(z_t), mean over samples:")
    _print_agreement(result.agreement)
    matrix = result.similarity
    print(f"similarity of samples from the same noise (descriptor {matrix.descriptor['name']}, preprocessing "
          f"{matrix.descriptor['preprocessing']['name']}; thresholds "
          f"{', '.join(f'{t:g}' for t in matrix.thresholds)}):")
    names = matrix.names
    _print_table(["pair", "mean", "std", *[f">= {t:g}" for t in matrix.thresholds]],
                 [[f"{names[i]} vs {names[j]}", f"{matrix.mean[i, j]:.4f}", f"{matrix.std[i, j]:.4f}",
                   *[f"{matrix.fraction_above(t)[i, j]:.0%}" for t in matrix.thresholds]]
                  for i in range(len(names)) for j in range(i + 1, len(names))])
    _print_copies(path, result.run_ids, args.lock_timeout)
    print(f"see the network sample's sources with `auditor show {result.network_run_id}/0`")
    return 0


def cmd_audit(args, argv: list[str]) -> int:
    from tqdm import tqdm

    from auditor.workflows import audit
    from auditor.store.attribution import sample_sources

    levels = _numbers(args.noise_levels, "--noise-levels")
    _positive(args.draws, "--draws")
    network_path = None if args.no_network else args.network
    if network_path is not None and args.steps < 2:
        raise CLIError(f"--steps must be >= 2 to invert the PF-ODE, got {args.steps}")
    if not args.image.exists():
        raise CLIError(f"{args.image}: no such file")
    path, data, device, network, descriptor, thresholds = _comparison_setup(
        args, network_path, "audit", check_data=lambda data: audit.load_audit_image(args.image, data.image_shape))
    total = (2 * args.steps - 1) if network is not None else len(levels)
    with tqdm(total=total, desc="auditing", unit="step", file=sys.stderr, disable=None) as bar:
        result = audit.record_audit(
            path, data, args.image, network=network, steps=args.steps, sampler=args.sampler, seed=args.seed,
            noise_levels=levels, draws=args.draws, top_k=args.top_k, mass=args.mass, explainer=args.explainer,
            patch_size=args.patch_size, schedule=args.schedule, sensitivity_draws=args.sensitivity_draws,
            descriptor=descriptor, copy_k=args.copy_k, thresholds=thresholds,
            command=[PROG, *argv], progress=bar.update, device=device, timeout=args.lock_timeout)
    details = result.details
    print(f"run {result.run_id}: audit of {args.image} (sha256 {details['input'].get('sha256', '')[:12]}) in {path}")
    if result.method == "inversion":
        inv, rec = details["inversion"], details["reconstruction"]
        print(f"method: inversion with network {network.name}: PF-ODE inverted from t = {inv['from_t']:g} to "
              f"{inv['to_t']:g} ({inv['steps']} {inv['sampler']} steps; inverted noise std {inv['latent_std']:.3f} "
              f"x t_max), replayed with attribution")
        print(f"reconstruction: MSE {rec['mse']:.3g}, max |error| {rec['max_abs_error']:.3g} (replay end point vs "
              f"the image)")
        _print_agreement(result.agreement)
    else:
        print(f"method: direct (no network): PSPC attribution of x + t eps at t = "
              f"{', '.join(f'{t:g}' for t in details['noise_levels'])} ({details['draws']} draw(s), seed {args.seed})")
    rows = sample_sources(path, result.run_id, 0, top=5, timeout=args.lock_timeout)
    print("top training sources (last step, sample 0):")
    _print_table(["share", "mirrored", "index", "image id", "label", "owner", "license"],
                 [[_share(r.get("share")), _share(r.get("flip_share")), r.get("image_index"), r.get("image_id"),
                   r.get("label_name") or r.get("label"), r.get("owner"), r.get("license")] for r in rows])
    _print_copies(path, {"audited image": result.run_id}, args.lock_timeout)
    print(f"see every step with `auditor show {result.run_id}/0 --step N`")
    return 0


def _print_study(study: dict) -> None:
    """A stored study's tables (auditor.workflows.fidelity.load_study) and findings."""
    for process, curve in study["curves"].items():
        names = curve["names"]
        print(f"{process} process: MSE against the network (mean over {curve['states'] or '?'} states)")
        _print_table(["t", *names, "closest"],
                     [[f"{t:.4g}", *(f"{curve['mse'][d][k]:.3e}" for d in range(len(names))),
                       min(names, key=lambda n: curve["mse"][names.index(n)][k])]
                      for k, t in enumerate(curve["times"])])
    concentration = study["concentration"]
    print("gradient concentration: side of the centred square holding a fraction of G (mean over output pixels)")
    _print_table(["t", *(f"{round(100 * f)}%" for f in concentration["fractions"])],
                 [[f"{t:.4g}", *(f"{v:.1f}" for v in concentration["mean_side"][k])]
                  for k, t in enumerate(concentration["times"])])
    if study["similarity_to_network"]:
        print(f"mean similarity to the network's samples (descriptor {study['descriptor']}):")
        _print_table(["denoiser", "similarity"], [[n, f"{v:.3f}"] for n, v in study["similarity_to_network"].items()])
    if study["tuned_schedule"]:
        print("tuned schedule (Appendix B):")
        _print_table(["step", "t", "s", "lambda"], [[k, f"{row['t']:.4g}", row.get("patch_size"), row.get("lambda")]
                                                   for k, row in enumerate(study["tuned_schedule"])])
    print("\n".join(study["findings"]))


def cmd_fidelity(args, argv: list[str]) -> int:
    import json

    from auditor.workflows import fidelity

    path = _db(args)
    if args.fidelity_command == "list":
        rows = fidelity.list_studies(path, timeout=args.lock_timeout)
        if not rows:
            print("no fidelity studies; run one with `auditor fidelity run` or import one with `auditor fidelity import`")
            return 0
        _print_table(["id", "name", "created (UTC)", "network", "sha256", "training set", "fingerprint", "denoisers",
                      "tuned"],
                     [[r["id"], r["name"], _when(r["created_at"]), r["network_name"], (r["network_sha256"] or "")[:12],
                       r["training_set"], r["training_fingerprint"][:12], ", ".join(r["denoisers"]),
                       "yes" if r["tuned"] else ""] for r in rows])
        return 0
    if args.fidelity_command == "show":
        _print_study(fidelity.load_study(path, args.study_id, timeout=args.lock_timeout))
        return 0
    database.require_current(path, timeout=args.lock_timeout)
    if args.fidelity_command == "import":
        if not args.file.is_file():
            raise CLIError(f"{args.file}: no such file")
        try:
            result = json.loads(args.file.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise CLIError(f"{args.file}: not a fidelity.json (invalid JSON: {exc})") from None
        study_id = fidelity.store_study(path, result, name=args.name, source=str(args.file),
                                        timeout=args.lock_timeout)
        print(f"fidelity study {study_id}: imported {args.file} into {path}")
    else:
        fidelity.resolve_options(args)

        def log(message: str) -> None:
            print(f"{PROG}: {message}", file=sys.stderr, flush=True)

        study = fidelity.run_study(args, command=[PROG, *argv], log=log, show=lambda text: print(text, flush=True))
        print("\n".join(study.findings))
        study_id = fidelity.store_study(path, study.result, name=args.name, source="auditor fidelity run",
                                        timeout=args.lock_timeout)
        print(f"fidelity study {study_id} stored in {path}")
    print(f"see it with `auditor fidelity show {study_id}` or at /fidelity/{study_id} (`auditor serve`)")
    return 0


# ---------------------------------------------------------------------------------------
# Entry point
# ---------------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    """Console entry point; returns the exit status (0 ok, 2 bad input or usage, 130 interrupted)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as exc:  # argparse has printed usage / help
        return exc.code if isinstance(exc.code, int) else EXIT_USAGE
    try:
        if not (math.isfinite(args.lock_timeout) and args.lock_timeout >= 0):
            raise CLIError(f"--lock-timeout must be >= 0 seconds, got {args.lock_timeout}")
        if args.command == "db":
            return cmd_db(args)
        if args.command == "ingest":
            return cmd_ingest(args)
        if args.command == "sample":
            return cmd_sample(args, argv)
        if args.command == "runs":
            return cmd_runs(args)
        if args.command == "show":
            return cmd_show(args)
        if args.command == "serve":
            return cmd_serve(args)
        if args.command == "keys":
            return cmd_keys(args)
        if args.command == "quickstart":
            return cmd_quickstart(args)
        if args.command == "train-network":
            return cmd_train_network(args, argv)
        if args.command == "compare":
            return cmd_compare(args, argv)
        if args.command == "audit":
            return cmd_audit(args, argv)
        if args.command == "fidelity":
            return cmd_fidelity(args, argv)
        return cmd_sql(args)
    except (ValueError, OSError) as exc:  # StoreError, TrainingSetError, CLIError, ... are ValueErrors
        if os.environ.get("AUDITOR_DEBUG"):
            raise
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        if os.environ.get("AUDITOR_DEBUG"):
            raise
        hint = ("; the run is marked failed: see `auditor runs`, continue with `auditor sample --resume RUN_ID`"
                if args.command == "sample" else "")
        print(f"{PROG}: interrupted{hint}", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
