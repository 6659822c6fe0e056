"""Calibrating the copy verdict on a store's training set, and giving stored images their verdict.

`calibrate_store` (``auditor calibrate``) builds labelled cases from the training set and a
set of novel images (auditor.similarity.cases), splits them, chooses every evidence
source's threshold on the calibration half (auditor.similarity.calibration; by default
jointly, bounding the novel images called copy or partial copy by any source), measures
TPR and FPR at it on the held-out half too (and the union's), and stores the thresholds
in copy_calibrations. `record_verdicts` gives stored images (an audit's image, a run's
samples) their verdict (auditor.similarity.verdict) from the newest calibration of exactly
these evidence parameters on this training set, and stores it in copy_verdicts. Jointly
chosen thresholds are used together or not at all (`usable_calibrations`): one of them
alone, or mixed with another calibration's, would not keep the union's bound. Without a
complete calibration of its own, a store of the very training set and evidence parameters
the benchmark calibrated gets the shipped thresholds (auditor.similarity.shipped), stored
once in copy_calibrations as their own joint group; any later `auditor calibrate` wins.
"""

from __future__ import annotations

import os
import time
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import torch

from pspc.data.training_set import TrainingSet, to_uint8

from auditor.errors import UserError
from auditor.similarity.budget import union_calls
from auditor.similarity.calibration import (
    DEFAULT_CONFIDENCE, DEFAULT_RULE, DEFAULT_TARGET_FPR, RULES, CopyEvidence, calibrate
)
from auditor.similarity.cases import build_cases, split_rows
from auditor.similarity.metrics import binomial_upper_bound, rate_at
from auditor.similarity.shipped import SHIPPED_NAME, SHIPPED_PATH, SOURCE, file_sha256, load_shipped, shipped_rows
from auditor.similarity.verdict import Verdict, decide_scored
from auditor.store import calibrations, datasets

__all__ = ["CalibrationOptions", "CalibrationResult", "calibrate_store", "judge", "record_verdicts",
           "shipped_calibrations", "shipped_provenance", "usable_calibrations"]


@dataclass(frozen=True)
class CalibrationOptions:
    """Cases per copy family and novel images (both splits together); the target FPR, read by `rule`
    (joint: the upper bound at `confidence` of the novel images called by any source; per-source: each
    source's own point estimate); the seed; the verdict's descriptor (calibration.verdict_descriptor
    spec: "configured" reads $PSPC_COPY_DESCRIPTOR)."""

    per_family: int = 60
    novel_count: int = 4000  # 2000 per half: the joint rule may then call 12 (0.6 %) and bound the rate at 1 %
    target_fpr: float = DEFAULT_TARGET_FPR
    seed: int = 0
    rule: str = DEFAULT_RULE
    confidence: float = DEFAULT_CONFIDENCE
    verdict_descriptor: str = "configured"


@dataclass
class CalibrationResult:
    dataset_id: int
    ids: list[int]
    thresholds: list[dict]  # Threshold.to_dict() with the held-out test split's tpr / fpr added
    record: dict


def _novel_images(training_set: TrainingSet, novel: TrainingSet) -> torch.Tensor:
    """The novel set's images that are not pixel-identical to a training entry."""
    if tuple(novel.image_shape) != tuple(training_set.image_shape):
        raise UserError(f"the novel images are {tuple(novel.image_shape)}, the training images "
                        f"{tuple(training_set.image_shape)}: calibrate with novel images of the same size and channels")
    from auditor.similarity.hashing import ExactHashes

    exact = ExactHashes(training_set.images, xflip=True)
    keep = [i for i, image in enumerate(novel.images) if not exact.entries(image)]
    return novel.images[torch.tensor(keep, dtype=torch.long)]


def calibrate_store(db_path, training_set: TrainingSet, novel: TrainingSet, options: CalibrationOptions = CalibrationOptions(),
                    *, command: list[str] | None = None, timeout: float = 10.0) -> CalibrationResult:
    """Calibrate every evidence source on `training_set` (ingested if new) and store the thresholds."""
    if not 0 < options.target_fpr < 1:
        raise UserError(f"the target false-positive rate must be in (0, 1), got {options.target_fpr}")
    if options.per_family < 2 or options.novel_count < 2:
        raise UserError("calibration needs at least 2 cases per family and 2 novel images")
    if options.rule not in RULES or not 0 < options.confidence < 1:
        raise UserError(f"the calibration rule must be one of {', '.join(RULES)} and the confidence in (0, 1); got "
                        f"{options.rule!r} and {options.confidence}")
    started = time.perf_counter()
    novel_images = _novel_images(training_set, novel)
    cases = build_cases(training_set.images, novel_images, per_family=options.per_family, seed=options.seed,
                        novel_count=options.novel_count)
    cal_rows, test_rows = split_rows(cases, options.seed)
    evidence = CopyEvidence(training_set.images, xflip=training_set.xflip, descriptor=options.verdict_descriptor)
    scores = evidence.score(cases.images)
    pick = lambda rows: {k: [v[i] for i in rows] for k, v in scores.items()}  # noqa: E731
    thresholds = [t.to_dict() for t in calibrate(evidence, cases.select(cal_rows), options.target_fpr,
                                                 scores=pick(cal_rows), rule=options.rule,
                                                 confidence=options.confidence)]
    test, test_scores = cases.select(test_rows), pick(test_rows)
    family = np.asarray(test.family)
    values = {t["evidence"]: np.array([e.score for e in test_scores[t["evidence"]]]) for t in thresholds}
    for t in thresholds:
        t["test_tpr"] = rate_at(values[t["evidence"]][np.isin(family, t["families"])], t["threshold"])
        t["test_fpr"] = rate_at(values[t["evidence"]][family == "novel"], t["threshold"])
    called = union_calls(values, {t["evidence"]: t["threshold"] for t in thresholds})[family == "novel"]
    union = {"false_positives": int(called.sum()), "negatives": len(called), "fpr": float(called.mean()),
             "fpr_upper": binomial_upper_bound(int(called.sum()), len(called), options.confidence)}
    dataset_id, _ = datasets.ingest(db_path, training_set, timeout=timeout)
    joint = thresholds[0]["joint"]
    record = {"options": asdict(options), "command": command, "cases": len(cases), "calibration_cases": len(cal_rows),
              "test_cases": len(test_rows), "novel": {"name": novel.name, "source": novel.source,
                                                      "fingerprint": novel.fingerprint, "used": len(novel_images)},
              "evidence": {name: source.describe() for name, source in evidence.sources.items()},
              "test": {**{t["evidence"]: {"tpr": t["test_tpr"], "fpr": t["test_fpr"]} for t in thresholds},
                       "union": union},
              "rule": options.rule, "seconds": time.perf_counter() - started}
    if joint is not None:  # the thresholds hold the bound together: judge() uses them as one group
        record["joint"] = {**joint, "group": uuid.uuid4().hex, "sources": [t["evidence"] for t in thresholds]}
    ids = calibrations.store_calibrations(db_path, dataset_id, thresholds, record, timeout=timeout)
    return CalibrationResult(dataset_id, ids, thresholds, record)


def usable_calibrations(rows: Sequence[Mapping], fingerprints: Mapping[str, str]) -> dict[str, dict]:
    """evidence name -> the calibration the verdict uses, from the dataset's rows (newest first, as
    auditor.store.calibrations.list_calibrations gives them) for these evidence fingerprints.

    Rows chosen jointly (record "joint") count only as their whole group, and only a group that
    calibrated every source in use (with these fingerprints; a group's subset keeps the union's
    bound, a mixture would not). Other rows (rule per-source, or stored by hand) are taken per
    source, newest first. The newer complete set wins; a complete one beats an incomplete one."""
    matching = [dict(r) for r in rows if fingerprints.get(r["evidence"]) == r["evidence_fingerprint"]]
    single: dict[str, dict] = {}
    groups: dict[str, dict[str, dict]] = {}
    for row in matching:
        group = ((row.get("record") or {}).get("joint") or {}).get("group")
        if group is None:
            single.setdefault(row["evidence"], row)
        else:
            groups.setdefault(group, {}).setdefault(row["evidence"], row)
    whole = next((g for g in groups.values() if set(fingerprints) <= set(g)), None)  # dicts keep newest first
    if whole is None:  # incomplete either way: the verdict names what is missing, deciding nothing with a mixture
        newest = next(iter(groups.values()), {})
        return single if len(single) == len(fingerprints) or not newest else newest
    if len(single) == len(fingerprints) and min(r["id"] for r in single.values()) > max(r["id"] for r in whole.values()):
        return single
    return {name: whole[name] for name in fingerprints}


def _shipped_record(shipped: dict, path: Path) -> dict:
    """The copy_calibrations record of shipped thresholds: which file (by sha256), and their joint group."""
    sha256 = file_sha256(path)
    name = SHIPPED_NAME if path.resolve() == SHIPPED_PATH.resolve() else str(path)
    joint = shipped["thresholds"][0]["joint"] or {}
    record = {"shipped": {"file": name, "sha256": sha256, "source": shipped.get("source", SOURCE),
                          "command": shipped.get("command")},
              "command": shipped.get("command"), "cases": shipped.get("cases"), "training_set": shipped["training_set"],
              "rule": shipped["thresholds"][0]["rule"],
              "joint": {**joint, "group": f"shipped-{sha256[:16]}",
                        "sources": [t["evidence"] for t in shipped["thresholds"]]}}
    if "test" in shipped:
        record["test"] = shipped["test"]
    return record


def shipped_calibrations(db_path, training_set: TrainingSet, dataset_id: int, fingerprints: Mapping[str, str], *,
                         path=SHIPPED_PATH, store: bool = True, timeout: float = 10.0) -> dict[str, dict]:
    """evidence name -> the shipped calibration (auditor.similarity.shipped) when it was chosen on exactly
    this training set for exactly these evidence fingerprints, else {}. Stored in copy_calibrations once
    (found again by the file's sha256), so verdicts name its row ids; store=False, or a store file this
    process cannot write: used without storing (calibration_id None)."""
    shipped = load_shipped(path)
    rows = shipped_rows(shipped, training_set.fingerprint, training_set.xflip, fingerprints)
    if not rows:
        return {}
    path = Path(path)
    record = _shipped_record(shipped, path)
    if not store or not os.access(db_path, os.W_OK):
        return {t["evidence"]: {**t, "id": None, "evidence_fingerprint": t["fingerprint"], "dataset_id": dataset_id,
                                "record": {**record, "families": list(t["families"])}} for t in rows}

    def stored() -> dict[str, dict]:
        found = [r for r in calibrations.list_calibrations(db_path, dataset_id, timeout=timeout)
                 if ((r.get("record") or {}).get("shipped") or {}).get("sha256") == record["shipped"]["sha256"]]
        used = usable_calibrations(found, fingerprints)
        return used if set(fingerprints) <= set(used) else {}

    current = stored()
    if not current:
        calibrations.store_calibrations(db_path, dataset_id, rows, record, timeout=timeout)
        current = stored()
    return current


def shipped_provenance(calibration: Mapping | None) -> dict | None:
    """The shipped file a stored calibration came from ({"file", "sha256", "source", "command"}), or None."""
    return ((calibration or {}).get("record") or {}).get("shipped")


def _with_provenance(verdict: Verdict, current: Mapping[str, dict]) -> Verdict:
    """The verdict, saying so in its reason and details when its threshold is the shipped benchmark's."""
    shipped = shipped_provenance(current.get(verdict.evidence)) if verdict.threshold is not None else None
    if shipped is None:
        return verdict
    verdict.reason += (f" (shipped calibration ({shipped['source']}) of this training set, {shipped['file']} "
                       f"sha256 {shipped['sha256'][:12]}...)")
    verdict.scores = {**verdict.scores, "calibration": {"shipped": dict(shipped)}}
    return verdict


def judge(db_path, training_set: TrainingSet, dataset_id: int, images: torch.Tensor, *,
          reconstruction: dict | None = None, evidence: CopyEvidence | None = None, descriptor: str = "configured",
          timeout: float = 10.0, shipped_path=SHIPPED_PATH, store_shipped: bool = True) -> list[Verdict]:
    """The verdict of each image (float [B, C, H, W] in [-1, 1], or uint8) from the store's newest
    calibration of exactly these evidence parameters on the dataset (usable_calibrations), without
    storing the verdicts. descriptor: the verdict's descriptor (calibration.verdict_descriptor spec)
    when no `evidence` is given. Without a complete calibration, the shipped one where it applies
    (shipped_calibrations, from `shipped_path`; None: never), stored unless store_shipped is False
    (a caller that cannot write the store: its verdicts then have no calibration_id)."""
    pixels = images if images.dtype == torch.uint8 else to_uint8(images.detach().cpu())
    evidence = evidence or CopyEvidence(training_set.images, xflip=training_set.xflip, descriptor=descriptor)
    fingerprints = {name: source.fingerprint for name, source in evidence.sources.items()}
    current = usable_calibrations(calibrations.list_calibrations(db_path, dataset_id, timeout=timeout), fingerprints)
    if not set(fingerprints) <= set(current) and shipped_path is not None:
        current = shipped_calibrations(db_path, training_set, dataset_id, fingerprints, path=shipped_path,
                                       store=store_shipped, timeout=timeout) or current
    scored = evidence.score(pixels)
    verdicts = [decide_scored(scored, i, current, training_set.ids, reconstruction=reconstruction)
                for i in range(len(pixels))]
    return [_with_provenance(v, current) for v in verdicts]


def record_verdicts(db_path, training_set: TrainingSet, dataset_id: int, run_id: int, images: torch.Tensor, *,
                    reconstruction: dict | None = None, evidence: CopyEvidence | None = None,
                    descriptor: str = "configured", repeat: int = 1, timeout: float = 10.0,
                    shipped_path=SHIPPED_PATH) -> dict[int, Verdict]:
    """The verdict of each image (float [B, C, H, W] in [-1, 1], or uint8) of run `run_id`, stored
    as sample i's; repeat > 1 (one image): the same verdict for samples 0..repeat-1 (an audit's draws).
    descriptor, shipped_path: as judge's."""
    verdicts = dict(enumerate(judge(db_path, training_set, dataset_id, images, reconstruction=reconstruction,
                                    evidence=evidence, descriptor=descriptor, timeout=timeout,
                                    shipped_path=shipped_path)))
    if repeat > 1 and len(verdicts) == 1:
        verdicts = {i: verdicts[0] for i in range(repeat)}
    calibrations.store_verdicts(db_path, run_id, {i: v.to_dict() for i, v in verdicts.items()}, timeout=timeout)
    return verdicts
