"""`auditor fidelity run|import|list|show` (auditor.workflows.fidelity, auditor.store.studies),
and THE study options, shared with bench/fidelity.py: `add_study_options(parser)` defines them,
`study_options(args)` turns the parsed arguments into a StudyOptions."""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import fields
from pathlib import Path

from auditor.cli.common import MAX_INT, PROG, CLIError, Parents, db_path, integer, print_table, when
from auditor.store import database
from auditor.workflows.options import KINDS, StudyOptions


# ---------------------------------------------------------------------------------------
# The study's options (bench/fidelity.py and `auditor fidelity run`)
# ---------------------------------------------------------------------------------------
def add_study_options(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add the study's options to `parser`, one per StudyOptions field. Defaults in brackets
    are the full configuration's; --quick changes them to QUICK's. Unset ones stay None until
    StudyOptions.resolved()."""
    d = StudyOptions
    parser.add_argument("--network", default=d.network,
                        help="network file (pspc.networks.load_network) [%(default)s]")
    parser.add_argument("--data", default=d.data, help="training set spec [%(default)s]")
    parser.add_argument("--limit", type=integer(), help="first N training images [all]")
    parser.add_argument("--no-xflip", action="store_true", help="no mirrored training entries")
    parser.add_argument("--test-data", default=d.test_data, help="held-out images [%(default)s]")
    parser.add_argument("--test-images", type=integer(), help="forward-process images [64]")
    parser.add_argument("--samples", type=integer(), help="reverse-process trajectories and samples for similarity [64]")
    parser.add_argument("--steps", type=integer(), help="EDM sampling steps [18]")
    parser.add_argument("--ts", help="forward-process noise levels [0.01,...,30]")
    parser.add_argument("--sensitivity-samples", type=integer(), help="forward-process draws per G(t) [16]")
    parser.add_argument("--sensitivity-grid", help="levels where G is computed (and the concentration table); "
                        "other t use the nearest in log t [0.01,...,30]")
    parser.add_argument("--denoisers", default=",".join(KINDS), help="comma-separated subset of %(default)s")
    parser.add_argument("--schedule", type=Path, help="schedule file: s(t) for pspc-square, lambda(t) for pspc-flex")
    parser.add_argument("--tune", action="store_true", help="tune s(t) and lambda(t) on the network (Appendix B)")
    parser.add_argument("--tune-process", choices=("reverse", "forward", "both"), default=d.tune_process)
    parser.add_argument("--tune-states", type=integer(), help="states per step for tuning (per process) [16]")
    parser.add_argument("--tune-sizes", help="candidate patch sizes [odd sizes from 3, and the whole side]")
    parser.add_argument("--tune-lambdas", help="candidate lambdas [0.1,...,1.0]")
    parser.add_argument("--descriptor", default=d.descriptor,
                        help="auditor.similarity.descriptors.load_descriptor spec [%(default)s]")
    parser.add_argument("--no-sampling", action="store_true", help="skip the samples and their similarity")
    parser.add_argument("--seed", type=integer(high=MAX_INT), default=d.seed,
                        help="seed of every draw (tuning uses seed + 1000) [0]")
    parser.add_argument("--batch", type=integer(), default=d.batch, help="denoiser batch size [64]")
    parser.add_argument("--device", default=d.device)
    parser.add_argument("--threads", type=integer(), help="CPU threads of torch and of the PSPC kernels [all cores; 1 is "
                        "far faster on a busy machine]")
    parser.add_argument("--quick", action="store_true", help="the quick preset (minutes on 2 CPU cores)")
    return parser


def study_options(args: argparse.Namespace) -> StudyOptions:
    """The StudyOptions of parsed arguments (those of `add_study_options`; others are ignored)."""
    return StudyOptions(**{f.name: getattr(args, f.name) for f in fields(StudyOptions)})


# ---------------------------------------------------------------------------------------
# Arguments
# ---------------------------------------------------------------------------------------
def add_fidelity(commands, parents: Parents) -> None:
    store = parents.store
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
    run.set_defaults(handler=cmd_fidelity_run)
    add_study_options(run)
    run.add_argument("--name", help="the study's label (default: network and training set)")
    load = actions.add_parser("import", parents=[store], help="store a fidelity.json written by bench/fidelity.py")
    load.set_defaults(handler=cmd_fidelity_import)
    load.add_argument("file", type=Path, metavar="FILE.json")
    load.add_argument("--name", help="the study's label (default: the name of the file's --out folder)")
    actions.add_parser("list", parents=[store], help="stored studies, newest first").set_defaults(
        handler=cmd_fidelity_list)
    show = actions.add_parser("show", parents=[store], help="a stored study's tables and findings")
    show.set_defaults(handler=cmd_fidelity_show)
    show.add_argument("study_id", type=integer(high=MAX_INT), metavar="ID")


# ---------------------------------------------------------------------------------------
# Commands
# ---------------------------------------------------------------------------------------
def _print_study(study: dict) -> None:
    """A stored study's tables (auditor.store.studies.load_study) and findings."""
    for process, curve in study["curves"].items():
        names = curve["names"]
        print(f"{process} process: MSE against the network (mean over {curve['states'] or '?'} states)")
        print_table(["t", *names, "closest"],
                    [[f"{t:.4g}", *(f"{curve['mse'][d][k]:.3e}" for d in range(len(names))),
                      min(names, key=lambda n: curve["mse"][names.index(n)][k])]
                     for k, t in enumerate(curve["times"])])
    concentration = study["concentration"]
    print("gradient concentration: side of the centred square holding a fraction of G (mean over output pixels)")
    print_table(["t", *(f"{round(100 * f)}%" for f in concentration["fractions"])],
                [[f"{t:.4g}", *(f"{v:.1f}" for v in concentration["mean_side"][k])]
                 for k, t in enumerate(concentration["times"])])
    if study["similarity_to_network"]:
        print(f"mean similarity to the network's samples (descriptor {study['descriptor']}):")
        print_table(["denoiser", "similarity"], [[n, f"{v:.3f}"] for n, v in study["similarity_to_network"].items()])
    if study["tuned_schedule"]:
        print("tuned schedule (Appendix B):")
        print_table(["step", "t", "s", "lambda"], [[k, f"{row['t']:.4g}", row.get("patch_size"), row.get("lambda")]
                                                  for k, row in enumerate(study["tuned_schedule"])])
    print("\n".join(study["findings"]))


def _see(study_id: int) -> int:
    print(f"see it with `auditor fidelity show {study_id}` or at /fidelity/{study_id} (`auditor serve`)")
    return 0


def cmd_fidelity_list(args, argv=None) -> int:
    from auditor.store.studies import list_studies

    rows = list_studies(db_path(args), timeout=args.lock_timeout)
    if not rows:
        print("no fidelity studies; run one with `auditor fidelity run` or import one with `auditor fidelity import`")
        return 0
    print_table(["id", "name", "created (UTC)", "network", "sha256", "training set", "fingerprint", "denoisers",
                 "tuned"],
                [[r["id"], r["name"], when(r["created_at"]), r["network_name"], (r["network_sha256"] or "")[:12],
                  r["training_set"], r["training_fingerprint"][:12], ", ".join(r["denoisers"]),
                  "yes" if r["tuned"] else ""] for r in rows])
    return 0


def cmd_fidelity_show(args, argv=None) -> int:
    from auditor.store.studies import load_study

    _print_study(load_study(db_path(args), args.study_id, timeout=args.lock_timeout))
    return 0


def cmd_fidelity_import(args, argv=None) -> int:
    from auditor.store.studies import store_study

    path = db_path(args)
    database.require_current(path, timeout=args.lock_timeout)
    if not args.file.is_file():
        raise CLIError(f"{args.file}: no such file")
    try:
        result = json.loads(args.file.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CLIError(f"{args.file}: not a fidelity.json (invalid JSON: {exc})") from None
    study_id = store_study(path, result, name=args.name, source=str(args.file), timeout=args.lock_timeout)
    print(f"fidelity study {study_id}: imported {args.file} into {path}")
    return _see(study_id)


def cmd_fidelity_run(args, argv: list[str]) -> int:
    from auditor.store.studies import store_study
    from auditor.workflows.fidelity import run_study

    path = db_path(args)
    database.require_current(path, timeout=args.lock_timeout)
    options = study_options(args).resolved()

    def log(message: str) -> None:
        print(f"{PROG}: {message}", file=sys.stderr, flush=True)

    study = run_study(options, command=[PROG, *argv], log=log, show=lambda text: print(text, flush=True))
    print("\n".join(study.findings))
    study_id = store_study(path, study.result, name=args.name, source="auditor fidelity run",
                           timeout=args.lock_timeout)
    print(f"fidelity study {study_id} stored in {path}")
    return _see(study_id)
