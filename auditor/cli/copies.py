"""The copy verdict's commands: `calibrate` (thresholds per evidence source on a training set,
auditor.workflows.verdicts) and `hash IMAGE` (the store's pixel sha256 of a file,
auditor.similarity.hashing)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from auditor.cli.common import MAX_INT, PROG, CLIError, Parents, db_path, integer, load_data, print_table
from auditor.store import database


# CalibrationOptions' defaults (auditor.workflows.verdicts; a test checks they agree), kept here so that
# building the parser imports no torch or faiss
DEFAULT_PER_FAMILY, DEFAULT_NOVEL_COUNT, DEFAULT_TARGET_FPR = 60, 4000, 0.01
DEFAULT_RULE, DEFAULT_CONFIDENCE, RULES = "joint", 0.95, ("joint", "per-source")
VERDICT_DESCRIPTOR_HELP = ("the copy verdict's descriptor-match descriptor: none, auto (the committed fmnist-copy on "
                           "the training set it was trained on only), fmnist-copy, learned:PATH or any --descriptor "
                           "spec (default: $PSPC_COPY_DESCRIPTOR, else none)")


def add_calibrate(commands, parents: Parents) -> None:
    calibrate = commands.add_parser(
        "calibrate", parents=[parents.store, parents.data],
        help="calibrate the copy verdict's thresholds on a training set (stored with their TPR/FPR)",
        description="Build labelled cases from the training set (exact, mirrored and near copies, partial copies) "
                    "and from --novel images that are not in it, split them into calibration and test halves, "
                    "choose the evidence sources' thresholds on the calibration half together, so that the novel "
                    "images called copy or partial copy by any of them stay under --target-fpr at --confidence "
                    "(--rule joint), measure TPR and FPR at them on both halves (and the union's) and store the "
                    "thresholds in the store (copy_calibrations). "
                    "Audits and comparisons of this training set then give calibrated verdicts; without a "
                    "calibration their verdict is 'inconclusive'. --list shows the stored calibrations.")
    calibrate.set_defaults(handler=cmd_calibrate)
    calibrate.add_argument("--novel", default="fashion-mnist:test", metavar="SPEC",
                           help="images not in the training set, of its size (default: %(default)s)")
    calibrate.add_argument("--per-family", type=integer(low=2), default=DEFAULT_PER_FAMILY, metavar="N",
                           help="cases per copy family, both halves (default: %(default)s)")
    calibrate.add_argument("--novel-count", type=integer(low=2), default=DEFAULT_NOVEL_COUNT, metavar="N",
                           help="novel images used, both halves (default: %(default)s)")
    calibrate.add_argument("--target-fpr", type=float, default=DEFAULT_TARGET_FPR, metavar="F",
                           help="false-positive rate allowed: with --rule joint, the share of novel images called "
                                "copy or partial copy by any evidence source, as an upper confidence bound; with "
                                "per-source, each source's own rate on the calibration half (default: %(default)s)")
    calibrate.add_argument("--rule", choices=RULES, default=DEFAULT_RULE,
                           help="joint: the sources share --target-fpr, bounded at --confidence (one-sided "
                                "Clopper-Pearson); per-source: the earlier point estimate per source "
                                "(default: %(default)s)")
    calibrate.add_argument("--confidence", type=float, default=DEFAULT_CONFIDENCE, metavar="C",
                           help="confidence of the joint rule's upper bound (default: %(default)s)")
    calibrate.add_argument("--verdict-descriptor", metavar="SPEC", help=VERDICT_DESCRIPTOR_HELP)
    calibrate.add_argument("--seed", type=integer(high=MAX_INT), default=0, help="(default: %(default)s)")
    calibrate.add_argument("--no-xflip", action="store_true", help="without the mirrored training images")
    calibrate.add_argument("--list", action="store_true", help="list the stored calibrations and exit")


def add_hash(commands, parents: Parents) -> None:
    hashing = commands.add_parser(
        "hash", help="the pixel sha256 of an image file, as the store's training_images.sha256",
        description="Print the file's byte sha256 and its pixel sha256: sha256 of the text 'uint8:CxHxW' followed "
                    "by the uint8 pixels in [C, H, W] order, as training_images.sha256 stores it. Match it with "
                    "`auditor sql \"SELECT image_id FROM training_images WHERE sha256 = '...'\"`.")
    hashing.set_defaults(handler=cmd_hash)
    hashing.add_argument("images", type=Path, nargs="+", metavar="IMAGE", help="PNG/JPEG/BMP/WebP image or .npy array")
    hashing.add_argument("--gray", action="store_true",
                         help="hash an RGB file whose channels are equal as grayscale (as `auditor audit` reads it)")
    hashing.add_argument("--json", action="store_true", help="one JSON object per file")


def cmd_hash(args, argv: list[str]) -> int:
    from auditor.similarity.hashing import file_hashes

    for path in args.images:
        record = file_hashes(path, channels=1 if args.gray else None)
        if args.json:
            print(json.dumps(record))
        else:
            print(f"{record['pixel_sha256']}  pixels {'x'.join(map(str, record['shape']))}  {path}")
            print(f"{record['file_sha256']}  file bytes  {path}")
    return 0


def _list(path, timeout: float) -> int:
    from auditor.store.calibrations import list_calibrations

    rows = list_calibrations(path, timeout=timeout)
    if not rows:
        print(f"no calibrations in {path}: run `{PROG} calibrate --data SPEC`")
        return 0
    print_table(["id", "dataset", "evidence", "call", "threshold", "target FPR", "TPR", "FPR", "held-out TPR",
                 "held-out FPR", "created"],
                [[r["id"], r["dataset_id"], r["evidence"], r["call"], f"{r['threshold']:.4f}", f"{r['target_fpr']:g}",
                  f"{r['tpr']:.3f}", f"{r['fpr']:.4f}", _test(r, "tpr"), _test(r, "fpr"), r["created_at"]]
                 for r in rows])
    return 0


def _test(row: dict, key: str) -> str:
    value = (row["record"].get("test") or {}).get(row["evidence"], {}).get(key)
    return "" if value is None else f"{value:.4f}"


def cmd_calibrate(args, argv: list[str]) -> int:
    from pspc.data.loaders import load_training_set

    from auditor.workflows.verdicts import CalibrationOptions, calibrate_store

    path = db_path(args)
    database.require_current(path, timeout=args.lock_timeout)
    if args.list:
        return _list(path, args.lock_timeout)
    for option in ("target_fpr", "confidence"):
        if not 0 < getattr(args, option) < 1:
            raise CLIError(f"--{option.replace('_', '-')} must be in (0, 1), got {getattr(args, option)}")
    options = CalibrationOptions(per_family=args.per_family, novel_count=args.novel_count,
                                 target_fpr=args.target_fpr, seed=args.seed, rule=args.rule,
                                 confidence=args.confidence, verdict_descriptor=args.verdict_descriptor or "configured")
    data = load_data(args.data, args).with_xflip(not args.no_xflip)
    novel = load_training_set(args.novel)
    print(f"calibrating on {data.name} ({len(data)} images) with {args.novel} as novel images ...", file=sys.stderr)
    result = calibrate_store(path, data, novel, options, command=[PROG, *argv], timeout=args.lock_timeout)
    print(f"dataset {result.dataset_id}: {result.record['cases']} cases ({result.record['calibration_cases']} "
          f"calibration, {result.record['test_cases']} held out) in {result.record['seconds']:.0f} s; stored "
          f"calibrations {', '.join(map(str, result.ids))} in {path}")
    print_table(["evidence", "call", "threshold", "TPR (cal)", "FPR (cal)", "TPR (held out)", "FPR (held out)"],
                [[t["evidence"], t["call"], f"{t['threshold']:.4f}", f"{t['tpr']:.3f}", f"{t['fpr']:.4f}",
                  f"{t['test_tpr']:.3f}", f"{t['test_fpr']:.4f}"] for t in result.thresholds])
    _print_union(result.record, args.confidence)
    return 0


def _print_union(record: dict, confidence: float) -> None:
    """The novel images called copy or partial copy by any source, on both halves, with their bounds."""
    held_out, joint = record["test"]["union"], record.get("joint")
    if joint is not None:
        print(f"novel images called copy or partial copy (any source): calibration {joint['false_positives']}/"
              f"{joint['negatives']} = {joint['fpr']:.4f} (upper bound {joint['fpr_upper']:.4f} at {confidence:g}, "
              f"target {joint['target_fpr']:g})", end="; ")
    print(f"held out {held_out['false_positives']}/{held_out['negatives']} = {held_out['fpr']:.4f} (upper bound "
          f"{held_out['fpr_upper']:.4f})")
    if joint is not None and not joint["bound_met"]:
        print(f"{PROG}: warning: {joint['negatives']} calibration novel images cannot bound the false-positive rate "
              f"at {joint['target_fpr']:g} even calling none of them: use a larger --novel-count", file=sys.stderr)
