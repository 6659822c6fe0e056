"""The copy verdict of one image: copy, partial copy, no copy found, or inconclusive (with why).

Rules, in order:

1. A failed inversion (reconstruction max |error| above the bound measured on the
   benchmark, ``INVERSION_BOUND``) gives ``inconclusive: inversion failed``: the recorded
   attribution then describes another image.
2. Pixels identical to a training entry (the store's pixel sha256, mirrored entries
   included) give ``copy`` (exact), whatever the calibration.
3. An evidence source without a calibration for this training set gives ``inconclusive``
   ("no calibration for X on this training set: run auditor calibrate"): no threshold is
   ever borrowed from another descriptor or training set.
4. Aligned correlation at or above its calibrated threshold gives ``copy`` of its best
   entry; else descriptor match (the learned copy descriptor, when the evidence has one) at
   or above its threshold gives ``copy``; else region match at or above its threshold gives
   ``partial copy``, with the region (mask and bounding box); else ``no copy found``.

Every verdict carries the score, the threshold and the TPR/FPR measured at it on the
calibration split, so a reader sees how often the tool is wrong at this setting.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Mapping, Sequence

import numpy as np

from auditor.similarity.calibration import CopyEvidence
from auditor.similarity.evidence import Evidence
from auditor.store.calibrations import verdict_sentence

__all__ = ["INVERSION_BOUND", "VERDICTS", "Verdict", "decide", "decide_scored", "judge_image"]

VERDICTS = ("copy", "partial copy", "no copy found", "inconclusive")
# max |replay end point - image| on the [-1, 1] scale above which an inversion has failed. bench/copy_detection.py
# (bench/results/copy_detection.md, 18 Heun steps, checkpoints/fmnist-unet.pt): training images 0.010-0.497
# (median 0.047), novel test images 0.022-0.874 (median 0.079), uniform-noise images 0.442-1.753 (median 1.494).
INVERSION_BOUND = 1.0
CALIBRATE_HINT = "run auditor calibrate"


@dataclass
class Verdict:
    """One image's verdict, with the evidence behind it (to_dict() is its JSON)."""

    verdict: str
    reason: str
    evidence: str | None = None
    sources: list[dict] = field(default_factory=list)  # entry, image_index, image_id, flip
    score: float | None = None
    threshold: float | None = None
    tpr: float | None = None
    fpr: float | None = None
    calibration_id: int | None = None
    region: dict | None = None  # {"box": [top, left, height, width], "mask": ["0110...", ...], "area": fraction}
    scores: dict = field(default_factory=dict)  # every source's score and threshold, for the record

    def to_dict(self) -> dict:
        return asdict(self)

    @property
    def sentence(self) -> str:
        """One sentence for a badge or a terminal (auditor.store.calibrations.verdict_sentence)."""
        return verdict_sentence(self.to_dict())


def _source(entry: int, ids: Sequence[str]) -> dict:
    n = len(ids)
    index = entry % n
    return {"entry": int(entry), "image_index": int(index), "image_id": str(ids[index]), "flip": bool(entry >= n)}


def _region(mask: np.ndarray, box) -> dict:
    return {"box": list(box) if box else None, "area": float(mask.mean()),
            "mask": ["".join("1" if v else "0" for v in row) for row in mask]}


def decide(exact_entries: Sequence[int], aligned: Evidence | None, region: Evidence | None,
           calibrations: Mapping[str, dict], ids: Sequence[str], *, reconstruction: dict | None = None,
           inversion_bound: float = INVERSION_BOUND, descriptor: Evidence | None = None) -> Verdict:
    """The verdict from evidence already computed; calibrations: evidence name -> stored
    calibration (threshold, tpr, fpr, id) for this training set and evidence fingerprint.
    descriptor: the descriptor-match evidence, if the verdict uses one (it then needs a calibration too)."""
    copies = [("aligned-correlation", aligned)] + ([("descriptor-match", descriptor)] if descriptor is not None else [])
    named = copies + [("region-match", region)]
    scores = {name: {"score": None if e is None else e.score,
                     "threshold": calibrations.get(name, {}).get("threshold")}
              for name, e in named}
    if reconstruction is not None and reconstruction.get("max_abs_error", 0.0) > inversion_bound:
        return Verdict("inconclusive", f"inversion failed: the replay ends {reconstruction['max_abs_error']:.3g} "
                       f"(max |error|, [-1, 1] scale) from the image, above the bound {inversion_bound:g} measured "
                       "on the benchmark; the attribution describes another image", scores=scores)
    if exact_entries:
        return Verdict("copy", "pixel-identical to a training image (same pixel sha256)", "exact-hash",
                       [_source(e, ids) for e in exact_entries], 1.0, 1.0, 1.0, 0.0, scores=scores)
    missing = [name for name, _ in named if name not in calibrations]
    if missing:
        return Verdict("inconclusive", f"no calibration for descriptor {' and '.join(missing)} on this training set: "
                       f"{CALIBRATE_HINT}", scores=scores)
    for name, evidence, call in [(n, e, "copy") for n, e in copies] + [("region-match", region, "partial copy")]:
        cal = calibrations[name]
        if evidence is not None and evidence.entry >= 0 and evidence.score >= cal["threshold"]:
            where = _region(evidence.mask, evidence.box) if call == "partial copy" and evidence.mask is not None else None
            return Verdict(call, f"{name} score {evidence.score:.3f} >= calibrated threshold {cal['threshold']:.3f}",
                           name, [_source(evidence.entry, ids)], evidence.score, cal["threshold"], cal["tpr"],
                           cal["fpr"], cal.get("id"), where, scores)
    cal = calibrations["aligned-correlation"]
    below = ", ".join(f"{name} {scores[name]['score']:.3f} < {scores[name]['threshold']:.3f}" for name, _ in named)
    return Verdict("no copy found", f"every score is below its calibrated threshold ({below}); the "
                   f"calibration missed {1 - cal['tpr']:.0%} of whole-image copies at this threshold",
                   "aligned-correlation", [_source(aligned.entry, ids)] if aligned and aligned.entry >= 0 else [],
                   aligned.score if aligned else None, cal["threshold"], cal["tpr"], cal["fpr"], cal.get("id"),
                   scores=scores)


def decide_scored(scored: Mapping[str, list], row: int, calibrations: Mapping[str, dict], ids: Sequence[str], *,
                  reconstruction: dict | None = None) -> Verdict:
    """The verdict of row `row` of CopyEvidence.score()'s output (every source it scored takes part)."""
    descriptor = scored["descriptor-match"][row] if "descriptor-match" in scored else None
    return decide(scored["exact-hash"][row], scored["aligned-correlation"][row], scored["region-match"][row],
                  calibrations, ids, reconstruction=reconstruction, descriptor=descriptor)


def judge_image(evidence: CopyEvidence, pixels, calibrations: Mapping[str, dict], ids: Sequence[str], *,
                reconstruction: dict | None = None) -> Verdict:
    """The verdict of one uint8 image [C, H, W] against the evidence's training set."""
    return decide_scored(evidence.score(pixels[None]), 0, calibrations, ids, reconstruction=reconstruction)
