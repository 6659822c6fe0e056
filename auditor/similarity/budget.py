"""The verdict's false-positive budget, shared among its evidence sources (joint calibration).

A novel image is wrongly called a copy (or a partial copy) when ANY source reaches its
threshold, so the rate that matters is the union's. :func:`share_budget` chooses every
source's threshold together: each source may call its k highest-scoring novel images of the
calibration split (k_s per source), and among the allocations whose union of called novel
images keeps the one-sided Clopper-Pearson upper bound of the union's FPR at or below the
target, it takes the one that calls the most calibration copies (of each source's own
families), then the one with the fewest novel images called.

The bound is exact for one threshold placed at an order statistic of the negatives; the
joint choice looks at the same negatives, so treat it as close, not exact. The held-out
split is the check (auditor.workflows.verdicts, bench/copy_detection.py).
"""

from __future__ import annotations

import itertools
import math
from dataclasses import asdict, dataclass
from typing import Mapping

import numpy as np

from auditor.similarity.metrics import binomial_upper_bound

__all__ = ["DEFAULT_CONFIDENCE", "Budget", "largest_allowed", "share_budget", "union_calls"]

DEFAULT_CONFIDENCE = 0.95  # of the one-sided upper bound on the union's false-positive rate


@dataclass(frozen=True)
class Budget:
    """Thresholds chosen together, with the union's false-positive figures on the calibration split."""

    thresholds: dict[str, float]
    allowed: dict[str, int]  # novel images each source was allowed to call
    false_positives: int  # novel images called by any source
    negatives: int
    fpr: float
    fpr_upper: float  # one-sided Clopper-Pearson upper bound of the union's FPR at `confidence`
    target_fpr: float
    confidence: float
    detected: int  # calibration copies called by a source of their family
    positives: int
    bound_met: bool  # False: too few novel images to bound the FPR at the target even calling none

    def to_dict(self) -> dict:
        return asdict(self)


def largest_allowed(negatives: int, target_fpr: float, confidence: float = DEFAULT_CONFIDENCE) -> int:
    """The most false positives among `negatives` whose upper bound stays <= target_fpr (-1: not even 0)."""
    if binomial_upper_bound(0, negatives, confidence) > target_fpr:
        return -1
    low, high = 0, negatives  # upper bound rises with k: bisect for the last k that fits
    while low < high:
        middle = (low + high + 1) // 2
        low, high = (middle, high) if binomial_upper_bound(middle, negatives, confidence) <= target_fpr else \
            (low, middle - 1)
    return low


def _ladder(negatives: np.ndarray, most: int) -> list[float]:
    """Thresholds calling at most 0, 1, ..., most of these negatives: just above the (k + 1)-th highest."""
    ordered = np.sort(negatives)[::-1]
    return [float(np.nextafter(ordered[k], math.inf)) if k < len(ordered) else -math.inf for k in range(most + 1)]


def share_budget(negatives: Mapping[str, np.ndarray], positives: Mapping[str, np.ndarray], target_fpr: float,
                 confidence: float = DEFAULT_CONFIDENCE) -> Budget:
    """negatives[s]: source s's scores of the same n novel images (same order for every source);
    positives[s]: its scores of the same m copies, -inf where a copy is not of s's families."""
    names = list(negatives)
    n = len(next(iter(negatives.values())))
    m = len(next(iter(positives.values())))
    most = largest_allowed(n, target_fpr, confidence)
    ladders = {s: _ladder(np.asarray(negatives[s], float), max(most, 0)) for s in names}
    called = {s: np.array([np.asarray(negatives[s]) >= t for t in ladders[s]]) for s in names}  # [k, n]
    found = {s: np.array([np.asarray(positives[s]) >= t for t in ladders[s]]) for s in names}  # [k, m]
    best = None
    *outer, last = names
    for ks in itertools.product(*(range(len(ladders[s])) for s in outer)):
        fp_outer = np.zeros(n, bool)
        hit_outer = np.zeros(m, bool)
        for s, k in zip(outer, ks):
            fp_outer |= called[s][k]
            hit_outer |= found[s][k]
        false_positives = (called[last] | fp_outer).sum(1)
        detected = (found[last] | hit_outer).sum(1)
        for k_last in np.flatnonzero(false_positives <= max(most, 0)):
            key = (int(detected[k_last]), -int(false_positives[k_last]))
            if best is None or key > best[0]:
                best = (key, (*ks, int(k_last)))
    (detected, minus_fp), allowed = best
    false_positives = -minus_fp
    return Budget({s: ladders[s][k] for s, k in zip(names, allowed)}, dict(zip(names, allowed)), false_positives, n,
                  false_positives / n, binomial_upper_bound(false_positives, n, confidence), float(target_fpr),
                  float(confidence), detected, m, most >= 0)


def union_calls(scores: Mapping[str, np.ndarray], thresholds: Mapping[str, float]) -> np.ndarray:
    """Whether any source reaches its threshold, per row (scores[s]: one score per row, same rows)."""
    rows = len(next(iter(scores.values())))
    called = np.zeros(rows, bool)
    for name, threshold in thresholds.items():
        called |= np.asarray(scores[name], float) >= threshold
    return called
