"""Calibrating the copy verdict on a store's training set, and giving stored images their verdict.

`calibrate_store` (``auditor calibrate``) builds labelled cases from the training set and a
set of novel images (auditor.similarity.cases), splits them, chooses every evidence
source's threshold on the calibration half (auditor.similarity.calibration), measures TPR
and FPR at it on the held-out half too, and stores the thresholds in copy_calibrations.
`record_verdicts` gives stored images (an audit's image, a run's samples) their verdict
(auditor.similarity.verdict) from the newest calibration of exactly these evidence
parameters on this training set, and stores it in copy_verdicts.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass

import numpy as np
import torch

from pspc.data.training_set import TrainingSet, to_uint8

from auditor.errors import UserError
from auditor.similarity.calibration import DEFAULT_TARGET_FPR, CopyEvidence, calibrate
from auditor.similarity.cases import build_cases, split_rows
from auditor.similarity.metrics import rate_at
from auditor.similarity.verdict import Verdict, decide_scored
from auditor.store import calibrations, datasets

__all__ = ["CalibrationOptions", "CalibrationResult", "calibrate_store", "judge", "record_verdicts"]


@dataclass(frozen=True)
class CalibrationOptions:
    """Cases per copy family and novel images (both splits together), the target FPR per source, the seed."""

    per_family: int = 60
    novel_count: int = 2000
    target_fpr: float = DEFAULT_TARGET_FPR
    seed: int = 0


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
    started = time.perf_counter()
    novel_images = _novel_images(training_set, novel)
    cases = build_cases(training_set.images, novel_images, per_family=options.per_family, seed=options.seed,
                        novel_count=options.novel_count)
    cal_rows, test_rows = split_rows(cases, options.seed)
    evidence = CopyEvidence(training_set.images, xflip=training_set.xflip)
    scores = evidence.score(cases.images)
    pick = lambda rows: {k: [v[i] for i in rows] for k, v in scores.items()}  # noqa: E731
    thresholds = [t.to_dict() for t in calibrate(evidence, cases.select(cal_rows), options.target_fpr,
                                                 scores=pick(cal_rows))]
    test, test_scores = cases.select(test_rows), pick(test_rows)
    family = np.asarray(test.family)
    for t in thresholds:
        values = np.array([e.score for e in test_scores[t["evidence"]]])
        t["test_tpr"] = rate_at(values[np.isin(family, t["families"])], t["threshold"])
        t["test_fpr"] = rate_at(values[family == "novel"], t["threshold"])
    dataset_id, _ = datasets.ingest(db_path, training_set, timeout=timeout)
    record = {"options": asdict(options), "command": command, "cases": len(cases), "calibration_cases": len(cal_rows),
              "test_cases": len(test_rows), "novel": {"name": novel.name, "source": novel.source,
                                                      "fingerprint": novel.fingerprint, "used": len(novel_images)},
              "evidence": {name: source.describe() for name, source in evidence.sources.items()},
              "test": {t["evidence"]: {"tpr": t["test_tpr"], "fpr": t["test_fpr"]} for t in thresholds},
              "seconds": time.perf_counter() - started}
    ids = calibrations.store_calibrations(db_path, dataset_id, thresholds, record, timeout=timeout)
    return CalibrationResult(dataset_id, ids, thresholds, record)


def judge(db_path, training_set: TrainingSet, dataset_id: int, images: torch.Tensor, *,
          reconstruction: dict | None = None, evidence: CopyEvidence | None = None,
          timeout: float = 10.0) -> list[Verdict]:
    """The verdict of each image (float [B, C, H, W] in [-1, 1], or uint8) from the store's newest
    calibration of exactly these evidence parameters on the dataset, without storing it."""
    pixels = images if images.dtype == torch.uint8 else to_uint8(images.detach().cpu())
    evidence = evidence or CopyEvidence(training_set.images, xflip=training_set.xflip)
    fingerprints = {name: source.fingerprint for name, source in evidence.sources.items()}
    current = calibrations.current_calibrations(db_path, dataset_id, fingerprints, timeout=timeout)
    scored = evidence.score(pixels)
    return [decide_scored(scored, i, current, training_set.ids, reconstruction=reconstruction)
            for i in range(len(pixels))]


def record_verdicts(db_path, training_set: TrainingSet, dataset_id: int, run_id: int, images: torch.Tensor, *,
                    reconstruction: dict | None = None, evidence: CopyEvidence | None = None, repeat: int = 1,
                    timeout: float = 10.0) -> dict[int, Verdict]:
    """The verdict of each image (float [B, C, H, W] in [-1, 1], or uint8) of run `run_id`, stored
    as sample i's; repeat > 1 (one image): the same verdict for samples 0..repeat-1 (an audit's draws)."""
    verdicts = dict(enumerate(judge(db_path, training_set, dataset_id, images, reconstruction=reconstruction,
                                    evidence=evidence, timeout=timeout)))
    if repeat > 1 and len(verdicts) == 1:
        verdicts = {i: verdicts[0] for i in range(repeat)}
    calibrations.store_verdicts(db_path, run_id, {i: v.to_dict() for i, v in verdicts.items()}, timeout=timeout)
    return verdicts
