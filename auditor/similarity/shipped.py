"""The shipped default calibration of the copy verdict, from the benchmark (issue 17).

bench/copy_detection.py calibrates the verdict's evidence on the full Fashion-MNIST training
set (with mirrored entries) by `auditor calibrate`'s rule; :func:`build_shipped` keeps the
default verdict's thresholds (hash, aligned correlation, region match; joint rule) with what
they were measured on, and ``python -m auditor.similarity.shipped`` writes them to
``shipped_calibrations.json`` beside this module. A store without its own calibration then
still gets verdicts on that training set (auditor.workflows.verdicts.judge), but only there:
:func:`shipped_rows` gives the thresholds only for exactly that training set (content
fingerprint and x-flip) and exactly these evidence parameters (every source's fingerprint),
all of them or none, so they are never borrowed for other data or other parameters.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from pathlib import Path
from typing import Mapping

from auditor.errors import UserError
from auditor.similarity.metrics import binomial_upper_bound

__all__ = ["DEFAULT_SOURCES", "DEFAULT_VERDICT", "SHIPPED_PATH", "SOURCE", "ShippedCalibrationError", "build_shipped",
           "file_sha256", "load_shipped", "main", "shipped_rows"]

SHIPPED_PATH = Path(__file__).with_name("shipped_calibrations.json")
SHIPPED_NAME = "auditor/similarity/shipped_calibrations.json"  # how the record names the packaged file
SOURCE = "bench/copy_detection.py"
DEFAULT_RESULTS = Path("bench/results/copy_detection.json")
# the benchmark's title of the verdict `auditor calibrate` gives by default (calibration_rows' "verdict" key)
DEFAULT_VERDICT = "hash, aligned-correlation, region-match (joint, union upper bound 0.01)"
DEFAULT_SOURCES = ("aligned-correlation", "region-match")
THRESHOLD_KEYS = ("evidence", "fingerprint", "call", "threshold", "target_fpr", "tpr", "fpr", "positives", "negatives",
                  "families", "rule", "fpr_upper", "confidence", "joint")
TRAINING_KEYS = ("fingerprint", "count", "shape", "xflip", "name")


class ShippedCalibrationError(UserError):
    """Benchmark results or a shipped calibration file that cannot give the shipped thresholds."""


def file_sha256(path) -> str:
    """sha256 of the file's bytes: what a stored shipped calibration names its file by."""
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def _default_rows(results: Mapping) -> list[dict]:
    """The default verdict's threshold rows of the results (one per DEFAULT_SOURCES), or ValueError."""
    rows = [r for r in results.get("calibration") or []
            if isinstance(r, Mapping) and r.get("verdict") == DEFAULT_VERDICT]
    names = [str(r.get("evidence")) for r in rows]
    if sorted(names) != sorted(DEFAULT_SOURCES):
        raise ShippedCalibrationError(
            f"the benchmark results hold no default verdict's thresholds: expected one \"calibration\" row per "
            f"{', '.join(DEFAULT_SOURCES)} with \"verdict\" {DEFAULT_VERDICT!r}, found {names or 'none'}")
    for row in rows:
        missing = [k for k in THRESHOLD_KEYS if k not in row]
        if missing:
            raise ShippedCalibrationError(f"the benchmark's {row['evidence']} threshold lacks {', '.join(missing)}")
    if any(r["joint"] != rows[0]["joint"] or r["rule"] != "joint" for r in rows):
        raise ShippedCalibrationError("the default verdict's thresholds are not one joint calibration")
    return sorted(rows, key=lambda r: DEFAULT_SOURCES.index(r["evidence"]))


def _tables_thresholds(results: Mapping) -> dict[str, float]:
    """evidence -> the threshold at which the results' "tables" were measured: the joint verdict of
    every evidence source (bench/copy_detection.py's `default`, the joint configuration with most sources)."""
    joint: dict[str, dict[str, float]] = {}
    for row in results.get("calibration") or []:
        if row.get("rule") == "joint" and "verdict" in row:
            joint.setdefault(row["verdict"], {})[row["evidence"]] = row["threshold"]
    return max(joint.values(), key=len) if joint else {}


def _test_rates(results: Mapping, rows: list[dict]) -> dict[str, dict]:
    """evidence -> {"tpr", "fpr"} on the held-out test half at each row's threshold, where the results
    hold them: the rows' own test_tpr / test_fpr, else the per-family tables when they were measured at
    exactly this threshold (their novel row is the FPR; the source's families, by case count, the TPR)."""
    if all("test_tpr" in r and "test_fpr" in r for r in rows):
        return {r["evidence"]: {"tpr": r["test_tpr"], "fpr": r["test_fpr"]} for r in rows}
    measured_at, tables = _tables_thresholds(results), results.get("tables") or {}
    out = {}
    for row in rows:
        name, table = row["evidence"], tables.get(row["evidence"]) or []
        if measured_at.get(name) != row["threshold"]:
            continue
        by_family = {r["family"]: r for r in table if r.get("TPR @ cal") is not None}
        ours = [by_family[f] for f in row["families"] if f in by_family]
        if "novel" not in by_family or len(ours) != len(row["families"]):
            continue
        cases = sum(r["cases"] for r in ours)
        out[name] = {"tpr": sum(r["TPR @ cal"] * r["cases"] for r in ours) / cases,
                     "fpr": by_family["novel"]["TPR @ cal"], "positives": cases,
                     "negatives": by_family["novel"]["cases"]}
    return out


def _test_union(results: Mapping, confidence: float) -> dict | None:
    """The default verdict's novel test images called copy or partial copy (any source, hashes included)."""
    novel = next((r for r in (results.get("verdict") or {}).get(DEFAULT_VERDICT) or [] if r.get("family") == "novel"),
                 None)
    if novel is None:
        return None
    negatives = int(novel["cases"])
    called = int(round((novel["copy"] + novel["partial copy"]) * negatives))
    return {"false_positives": called, "negatives": negatives, "fpr": called / negatives,
            "fpr_upper": binomial_upper_bound(called, negatives, confidence),
            "measured": "the default verdict on the test half's novel images"}


def build_shipped(results: Mapping, training_set_description: Mapping) -> dict:
    """The shipped record from bench/copy_detection.py's results (its JSON) and the training set it
    ran on (TrainingSet.describe()): the default verdict's thresholds, with their held-out test-half
    TPR / FPR where the results have them. ValueError (ShippedCalibrationError) without those rows."""
    rows = _default_rows(results)
    missing = [k for k in TRAINING_KEYS if k not in training_set_description]
    if missing:
        raise ShippedCalibrationError(f"the training set description lacks {', '.join(missing)}")
    test = _test_rates(results, rows)
    thresholds = []
    for row in rows:
        threshold = {k: row[k] for k in THRESHOLD_KEYS}
        if row["evidence"] in test:
            threshold["test_tpr"], threshold["test_fpr"] = test[row["evidence"]]["tpr"], test[row["evidence"]]["fpr"]
        thresholds.append(threshold)
    shipped = {"source": SOURCE, "verdict": DEFAULT_VERDICT, "command": results.get("command"),
               "cases": results.get("cases"),
               "training_set": {k: training_set_description[k] for k in TRAINING_KEYS}, "thresholds": thresholds}
    union = _test_union(results, rows[0]["confidence"])
    if test or union:
        shipped["test"] = {**test, **({"union": union} if union else {})}
    for key in ("machine", "versions"):
        if key in results:
            shipped[key] = results[key]
    return shipped


def _check(shipped, path: Path) -> dict:
    """The shipped record, or ShippedCalibrationError naming the file and what is wrong with it."""
    problem = None
    if not isinstance(shipped, dict):
        problem = "not a JSON object"
    elif not isinstance(shipped.get("training_set"), dict) or any(k not in shipped["training_set"]
                                                                  for k in TRAINING_KEYS):
        problem = f"no \"training_set\" with {', '.join(TRAINING_KEYS)}"
    elif not isinstance(shipped.get("thresholds"), list) or not shipped["thresholds"]:
        problem = "no \"thresholds\" list"
    else:
        bad = [i for i, t in enumerate(shipped["thresholds"])
               if not isinstance(t, dict) or any(k not in t for k in THRESHOLD_KEYS)]
        if bad:
            problem = f"thresholds {bad} lack some of {', '.join(THRESHOLD_KEYS)}"
    if problem:
        raise ShippedCalibrationError(f"{path}: not a valid shipped copy calibration ({problem}); regenerate it with "
                                      "`python -m auditor.similarity.shipped`")
    return shipped


def load_shipped(path=SHIPPED_PATH) -> dict | None:
    """The shipped calibration record in `path`; None when there is no such file (the verdict then
    needs `auditor calibrate`); ShippedCalibrationError naming the file when it is corrupt."""
    path = Path(path)
    if not path.is_file():
        return None
    try:
        shipped = json.loads(path.read_bytes())
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ShippedCalibrationError(f"{path}: not a valid shipped copy calibration (unreadable JSON: {exc}); "
                                      "regenerate it with `python -m auditor.similarity.shipped`") from None
    return _check(shipped, path)


def shipped_rows(shipped: Mapping | None, training_fingerprint: str, xflip: bool,
                 fingerprints: Mapping[str, str]) -> list[dict]:
    """The shipped thresholds (one per name in `fingerprints`, in its order) when they were chosen on
    exactly this training set (content fingerprint and x-flip) for exactly these evidence parameters
    (name -> EvidenceSource.fingerprint, as judge() computes them); else [], never a partial set."""
    if not shipped or not fingerprints:
        return []
    training = shipped["training_set"]
    if training["fingerprint"] != training_fingerprint or bool(training["xflip"]) != bool(xflip):
        return []
    by_name = {t["evidence"]: t for t in shipped["thresholds"]}
    if any(by_name.get(name, {}).get("fingerprint") != fingerprint for name, fingerprint in fingerprints.items()):
        return []
    return [dict(by_name[name]) for name in fingerprints]


def _current_fingerprints(training) -> dict[str, str]:
    """The current code's fingerprints of the default verdict's sources (they depend on the parameters
    and x-flip only, so a few of the training images give them)."""
    from auditor.similarity.calibration import CopyEvidence

    evidence = CopyEvidence(training.images[:16], xflip=training.xflip, descriptor="none")
    return {name: evidence.sources[name].fingerprint for name in DEFAULT_SOURCES}


def main(argv: list[str] | None = None) -> int:
    """Write the shipped calibration file from the benchmark's results (refused when they are stale)."""
    from pspc.data.loaders import load_fashion_mnist
    from pspc.errors import InputError

    parser = argparse.ArgumentParser(prog="python -m auditor.similarity.shipped", description=__doc__.splitlines()[0])
    parser.add_argument("--results", type=Path, default=DEFAULT_RESULTS,
                        help=f"bench/copy_detection.py's JSON (default {DEFAULT_RESULTS})")
    parser.add_argument("--out", type=Path, default=SHIPPED_PATH, help=f"the shipped file (default {SHIPPED_NAME})")
    args = parser.parse_args(argv)
    try:
        results = json.loads(args.results.read_text())
        default = {r["evidence"]: r for r in _default_rows(results)}
        train = load_fashion_mnist("train").with_xflip()  # what bench/copy_detection.py calibrates on
        stale = {name: (default[name]["fingerprint"], fingerprint)
                 for name, fingerprint in _current_fingerprints(train).items()
                 if default[name]["fingerprint"] != fingerprint}
        if stale:
            raise ShippedCalibrationError(
                f"{args.results} is stale: " + "; ".join(f"its {n} fingerprint {old[:12]}... is not the current code's "
                                                         f"{new[:12]}..." for n, (old, new) in stale.items())
                + f"; re-run `PYTHONPATH=. .venv/bin/python {SOURCE}` first")
        shipped = build_shipped(results, train.describe())
    except (OSError, json.JSONDecodeError, UserError, InputError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    args.out.write_text(json.dumps(shipped, indent=1, default=float) + "\n")
    summary = ", ".join(f"{t['evidence']} {t['threshold']:.4f}" for t in shipped["thresholds"])
    print(f"wrote {args.out} (sha256 {file_sha256(args.out)[:16]}...): {summary} on {train.name} "
          f"({len(train)} images, xflip)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
