"""Detection metrics on labelled cases: AUROC, TPR at a false-positive rate, thresholds, IoU.

Scores are "higher = more likely a copy". Ties count half in the AUROC (the Mann-Whitney
statistic). A threshold for a target false-positive rate is the smallest score that calls
at most that fraction of the negatives a copy (a call is score >= threshold), so the
measured FPR on the data it was chosen on never exceeds the target. A rate measured on n
cases has a Clopper-Pearson upper confidence bound (`binomial_upper_bound`): what the rate
may be on new cases, given k of n here.
"""

from __future__ import annotations

import math

import numpy as np

__all__ = ["auroc", "binomial_upper_bound", "iou", "rate_at", "recall_at", "threshold_for_fpr", "tpr_at_fpr"]


def auroc(positives, negatives) -> float:
    """P(score of a random positive > that of a random negative), ties counted half; NaN if a side is empty."""
    pos, neg = np.asarray(positives, float), np.asarray(negatives, float)
    if not len(pos) or not len(neg):
        return math.nan
    ranks = np.concatenate([pos, neg]).argsort(kind="mergesort").argsort(kind="mergesort").astype(float)
    values = np.concatenate([pos, neg])
    for value in np.unique(values):  # average ranks of ties
        tied = values == value
        if tied.sum() > 1:
            ranks[tied] = ranks[tied].mean()
    return float((ranks[:len(pos)].sum() - len(pos) * (len(pos) - 1) / 2) / (len(pos) * len(neg)))


def threshold_for_fpr(negatives, fpr: float) -> float:
    """The smallest threshold t with mean(negatives >= t) <= fpr (just above the allowed negatives)."""
    neg = np.sort(np.asarray(negatives, float))[::-1]
    allowed = int(math.floor(fpr * len(neg) + 1e-9))
    if allowed >= len(neg):
        return -math.inf
    return float(np.nextafter(neg[allowed], math.inf))


def _binomial_cdf(k: int, n: int, p: float) -> float:
    """P(X <= k) for X ~ Binomial(n, p), summed in log space (n in the thousands, p small)."""
    if p <= 0:
        return 1.0
    if p >= 1:
        return 0.0 if k < n else 1.0
    log_p, log_q = math.log(p), math.log1p(-p)
    terms = [math.lgamma(n + 1) - math.lgamma(i + 1) - math.lgamma(n - i + 1) + i * log_p + (n - i) * log_q
             for i in range(k + 1)]
    top = max(terms)
    return min(1.0, math.exp(top) * sum(math.exp(t - top) for t in terms))


def binomial_upper_bound(k: int, n: int, confidence: float = 0.95) -> float:
    """The one-sided Clopper-Pearson upper bound of a rate seen k times in n trials: the p at which
    P(X <= k) = 1 - confidence (bisection). Holds exactly for a threshold placed just above the
    (k + 1)-th highest of n negative scores: the true FPR there is Beta(k + 1, n - k) distributed."""
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    k, n = int(k), int(n)
    if n < 1 or not 0 <= k <= n:
        raise ValueError(f"need 0 <= k <= n and n >= 1, got k = {k}, n = {n}")
    if k == n:
        return 1.0
    alpha, low, high = 1 - confidence, k / n, 1.0
    for _ in range(100):  # the cdf falls as p grows
        middle = (low + high) / 2
        low, high = (middle, high) if _binomial_cdf(k, n, middle) > alpha else (low, middle)
    return high


def rate_at(scores, threshold: float) -> float:
    """Fraction of scores >= threshold (NaN when empty)."""
    scores = np.asarray(scores, float)
    return float((scores >= threshold).mean()) if len(scores) else math.nan


def tpr_at_fpr(positives, negatives, fpr: float) -> float:
    """TPR at the threshold chosen on the negatives for the target FPR."""
    return rate_at(positives, threshold_for_fpr(negatives, fpr))


def recall_at(candidates: list[list[int]], truth, k: int) -> float:
    """Fraction of cases whose true entry is among their first k candidates."""
    truth = list(truth)
    if not truth:
        return math.nan
    return float(np.mean([t in list(c)[:k] for c, t in zip(candidates, truth)]))


def iou(predicted: np.ndarray | None, truth: np.ndarray) -> float:
    """Intersection over union of two boolean masks (0 when nothing was predicted)."""
    if predicted is None:
        return 0.0
    union = np.logical_or(predicted, truth).sum()
    return float(np.logical_and(predicted, truth).sum() / union) if union else 1.0
