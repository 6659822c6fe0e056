"""Thresholds for the copy verdict, chosen on labelled cases with their measured error rates.

:class:`CopyEvidence` bundles the verdict's evidence sources over one training set: exact
pixel hashes, aligned correlation (whole-image copies, shift tolerant) and region match
(partial copies). :func:`calibrate` scores a calibration split (auditor.similarity.cases)
and, per source, picks the smallest threshold that calls at most `target_fpr` of the novel
images a copy; it records the threshold with the TPR (on that source's copy families) and
FPR measured at it. Thresholds belong to one evidence fingerprint and one training set:
the verdict never borrows them for another.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np
import torch

from auditor.similarity.cases import COPY_FAMILIES, PARTIAL_FAMILIES, Cases
from auditor.similarity.evidence import AlignedCorrelation, RegionMatch
from auditor.similarity.hashing import ExactHashes
from auditor.similarity.metrics import rate_at, threshold_for_fpr

__all__ = ["CALLS", "DEFAULT_TARGET_FPR", "CopyEvidence", "Threshold", "calibrate"]

DEFAULT_TARGET_FPR = 0.005  # per source: two sources keep novel images called copies near 1 %
CALLS = {"aligned-correlation": ("copy", COPY_FAMILIES), "region-match": ("partial copy", PARTIAL_FAMILIES)}


@dataclass(frozen=True)
class Threshold:
    """A calibrated threshold: call `call` when the evidence's score >= threshold."""

    evidence: str
    fingerprint: str
    call: str  # "copy" or "partial copy"
    threshold: float
    target_fpr: float
    tpr: float  # fraction of the calibration copies (of this call's families) at or above it
    fpr: float  # fraction of the calibration novel images at or above it
    positives: int
    negatives: int
    families: tuple[str, ...]

    def to_dict(self) -> dict:
        record = asdict(self)
        record["families"] = list(self.families)
        return record


class CopyEvidence:
    """The verdict's evidence sources over training images uint8 [N, C, H, W] (with mirrored entries)."""

    def __init__(self, training: torch.Tensor, xflip: bool = True):
        self.training, self.xflip = training, bool(xflip)
        self.exact = ExactHashes(training, xflip)
        self.aligned = AlignedCorrelation(training, xflip=xflip)
        self.region = RegionMatch(training, xflip=xflip)

    @property
    def sources(self) -> dict:
        return {self.aligned.name: self.aligned, self.region.name: self.region}

    def score(self, images: torch.Tensor, batch: int = 256) -> dict[str, list]:
        """{"exact-hash": [entries], "aligned-correlation": [Evidence], "region-match": [Evidence]}."""
        out: dict[str, list] = {self.exact.name: [], self.aligned.name: [], self.region.name: []}
        for start in range(0, len(images), batch):
            chunk = images[start:start + batch]
            out[self.exact.name] += [self.exact.entries(image) for image in chunk]
            aligned = self.aligned(chunk)
            out[self.aligned.name] += aligned
            out[self.region.name] += self.region(chunk, [[e for e, _ in a.candidates[:8]] for a in aligned])
        return out


def calibrate(evidence: CopyEvidence, cases: Cases, target_fpr: float = DEFAULT_TARGET_FPR,
              scores: dict[str, list] | None = None) -> list[Threshold]:
    """One Threshold per evidence source, chosen on `cases` (which must hold novel images and
    that source's copy families)."""
    if not 0 < target_fpr < 1:
        raise ValueError(f"target_fpr must be in (0, 1), got {target_fpr}")
    scores = scores if scores is not None else evidence.score(cases.images)
    family = np.asarray(cases.family)
    thresholds = []
    for name, source in evidence.sources.items():
        call, families = CALLS[name]
        values = np.array([e.score for e in scores[name]])
        negatives, positives = values[family == "novel"], values[np.isin(family, families)]
        if not len(negatives) or not len(positives):
            raise ValueError(f"calibrating {name} needs novel images and cases of {', '.join(families)}")
        threshold = threshold_for_fpr(negatives, target_fpr)
        if not math.isfinite(threshold):
            threshold = float(negatives.max())
        thresholds.append(Threshold(name, source.fingerprint, call, threshold, float(target_fpr),
                                    rate_at(positives, threshold), rate_at(negatives, threshold), len(positives),
                                    len(negatives), tuple(f for f in families if f in set(family))))
    return thresholds

