"""`auditor counterfactual RUN/SAMPLE`: the sample without some training images, exactly
(auditor.workflows.counterfactual), and what that changed."""

from __future__ import annotations

import json
import sys

from auditor.cli.common import MAX_INT, PROG, CLIError, Parents, db_path, device, integer, sample_target
from auditor.store import database

MAX_REMOVED_IDS = 100_000  # = auditor.workflows.options.MAX_REMOVED_IDS (a test checks it; no torch here)


def add_counterfactual(commands, parents: Parents) -> None:
    counterfactual = commands.add_parser(
        "counterfactual", parents=[parents.store],
        help="re-run a recorded sample without some training images (exact) and report the change",
        description="Re-run sample RUN/SAMPLE with the chosen training images (and their mirrored entries) removed: "
                    "their posterior weights are exactly zero, everything else is the parent's (initial noise, "
                    "denoiser, patch sets, sampler; for a network's sample or an audit, the recorded trajectory "
                    "is replayed). Records a run of kind 'counterfactual' with every step's weights, and reports "
                    "the per-pixel change, MSE, max |change|, descriptor similarity, the step where the "
                    "trajectories diverge and whether the copy verdict changes. The training pixels come from "
                    "the store.")
    counterfactual.set_defaults(handler=cmd_counterfactual)
    counterfactual.add_argument("target", type=sample_target, metavar="RUN/SAMPLE", help="e.g. 3/0")
    choose = counterfactual.add_mutually_exclusive_group()
    choose.add_argument("--without", metavar="ID[,ID...]", help="training image ids to remove (comma-separated)")
    choose.add_argument("--owner", metavar="NAME", help="remove every training image of this owner")
    choose.add_argument("--source-uri-prefix", metavar="P", help="remove the images whose source URI starts with P")
    choose.add_argument("--top", type=integer(low=1), metavar="K",
                        help="remove the K largest sources of the sample by its headline score")
    choose.add_argument("--random", type=integer(low=1), metavar="K", help="remove K random images (the control)")
    counterfactual.add_argument("--seed", type=integer(low=0, high=MAX_INT), default=0,
                                help="seed of --random (default: %(default)s)")
    counterfactual.add_argument("--descriptor", default="pixel-correlation", metavar="SPEC",
                                help="descriptor for the similarity of the two images (default: %(default)s)")
    counterfactual.add_argument("--no-verdict", action="store_true", help="skip the copy verdicts (faster)")
    counterfactual.add_argument("--device", default="cpu", help="torch device (default: %(default)s)")
    counterfactual.add_argument("--dataset", type=integer(low=1), metavar="ID",
                                help="the stored dataset the run must be on (checked; the pixels come from the store)")
    counterfactual.add_argument("--list", action="store_true",
                                help="list the stored counterfactuals of RUN/SAMPLE instead of running one")
    counterfactual.add_argument("--json", action="store_true", help="print the outcome as JSON")
    from auditor.cli import distributed  # over torchrun's ranks

    distributed.add_distributed_options(counterfactual)


def _options(args):
    from auditor.workflows.options import CounterfactualOptions

    ids = tuple(i for i in (args.without or "").split(",") if i.strip())
    if args.without is not None and not ids:
        raise CLIError("--without needs at least one training image id")
    if len(ids) > MAX_REMOVED_IDS:
        raise CLIError(f"--without takes at most {MAX_REMOVED_IDS} ids; use --owner or --source-uri-prefix")
    return CounterfactualOptions(without=ids, owner=args.owner, source_uri_prefix=args.source_uri_prefix,
                                 top=args.top, random=args.random, seed=args.seed, verdict=not args.no_verdict,
                                 descriptor=args.descriptor)


def cmd_counterfactual(args, argv: list[str], distribute=None) -> int:
    from auditor.cli import distributed

    if distribute is None and distributed.wanted(args):  # over torchrun's ranks, rank 0 sending the store's pixels
        return distributed.lead_ranks(args, "counterfactual", lambda leader: cmd_counterfactual(args, argv, leader),
                                      with_data=False)
    path = db_path(args)
    database.require_current(path, timeout=args.lock_timeout)
    run_id, sample_index = args.target
    if args.list:
        return _list(path, run_id, sample_index, args)
    if not any((args.without, args.owner, args.source_uri_prefix, args.top, args.random)):
        raise CLIError("choose the removed images: --without IDS, --owner NAME, --source-uri-prefix P, --top K or "
                       "--random K")
    from tqdm import tqdm

    from auditor.workflows.counterfactual import record_counterfactual
    from auditor.workflows.options import Runtime

    options = _options(args)
    if args.dataset is not None:
        from auditor.store.runs import load_run

        recorded = load_run(path, run_id, timeout=args.lock_timeout)[0]["dataset_id"]
        if recorded != args.dataset:
            raise CLIError(f"run {run_id} was recorded on dataset {recorded}, not on dataset {args.dataset}")
    with tqdm(desc="counterfactual", unit="step", file=sys.stderr, disable=None) as bar:
        result = record_counterfactual(path, run_id, sample_index, options=options, distribute=distribute,
                                       runtime=Runtime(command=[PROG, *argv], progress=bar.update,
                                                       device=device(args.device), timeout=args.lock_timeout))
    if args.json:
        print(json.dumps(_jsonable(result.outcome, result.verdict_before, result.verdict_after)))
        return 0
    _print(result.run_id, result.outcome, result.verdict_before, result.verdict_after)
    return 0


def _num(value) -> str:
    """A change figure to three significant figures ('-' when not measured)."""
    return "-" if value is None else f"{value:.3g}"


def _jsonable(outcome: dict, before: dict | None, after: dict | None) -> dict:
    out = {k: v for k, v in outcome.items() if k != "change_map"}
    out["created_at"] = str(out["created_at"])
    return {**out, "verdict_before": before and before.get("verdict"), "verdict_after": after and after.get("verdict")}


def _print(run_id: int, o: dict, before: dict | None, after: dict | None) -> None:
    from auditor.store.read_models.counterfactual import selector_text

    how = ("re-sampled from the same initial noise, denoiser, patch sets and sampler" if o["mode"] == "resample" else
           "the parent's recorded trajectory replayed (its states kept, PSPC's composite recomputed)")
    print(f"counterfactual run {run_id} of sample {o['parent_run_id']}/{o['parent_sample']}: {how}")
    ids = ", ".join(r["image_id"] for r in o["removed"][:10])
    more = f" and {o['removed_count'] - 10} more" if o["removed_count"] > 10 else ""
    print(f"removed {o['removed_count']} training image(s) ({selector_text(o['selector'])}): {ids}{more}")
    print(f"change of the image: MSE {_num(o['mse'])}, max |change| {_num(o['max_abs'])} (pixels in [-1, 1]); "
          f"similarity {_num(o['similarity'])} by {o['descriptor']}")
    if o["diverged_step"] is None:
        print("no step's D(z_t) changed by more than one grey level")
    else:
        t = next(c["t"] for c in o["step_changes"] if c["step"] == o["diverged_step"])
        print(f"diverges at step {o['diverged_step']} (t = {t:.3g}): the first step whose D(z_t) changed by more than "
              f"one grey level")
    if before is not None and after is not None:
        change = "unchanged" if before["verdict"] == after["verdict"] else "CHANGED"
        print(f"copy verdict: {before['verdict']} -> {after['verdict']} ({change})")
    if o["seconds"] is not None and o["parent_seconds"]:
        print(f"cost: {o['seconds']:.2f} s of compute; the parent took {o['parent_seconds']:.2f} s per sample "
              f"({o['seconds'] / o['parent_seconds']:.2f}x)")
    print(f"see it with `{PROG} show {run_id}/0`")


def _list(path, run_id: int, sample_index: int, args) -> int:
    from auditor.cli.common import print_table
    from auditor.store.counterfactuals import counterfactuals_of
    from auditor.store.read_models.counterfactual import selector_text

    rows = counterfactuals_of(path, run_id, sample_index, timeout=args.lock_timeout)
    if args.json:
        print(json.dumps([_jsonable(r, None, None) for r in rows]))
        return 0
    if not rows:
        print(f"no counterfactuals of sample {run_id}/{sample_index}: run `{PROG} counterfactual {run_id}/"
              f"{sample_index} --top 10`")
        return 0
    print_table(["run", "mode", "removed", "how", "MSE", "max |change|", "similarity", "diverges at"],
                [[r["run_id"], r["mode"], r["removed_count"], selector_text(r["selector"]), _num(r["mse"]),
                  _num(r["max_abs"]), _num(r["similarity"]),
                  "-" if r["diverged_step"] is None else r["diverged_step"]] for r in rows])
    return 0
