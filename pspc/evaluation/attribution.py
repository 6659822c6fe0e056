"""Measuring attribution scores against exact counterfactuals (the two protocols of the literature).

- LDS (linear datamodeling score, Park et al. 2023 as used by D-TRAK): for M random subsets
  S_m of the training set and one query, the Spearman correlation over m between the
  predicted sum_{i in S_m} score_i and the model output f(S_m) of the query under S_m;
  averaged over queries (`lds`, `summarise`).
- Removal curves: remove the top-k images by a score and measure how much the query's
  output changes (`top_k`; the change itself is measured by the caller).

With PSPC the output under S_m is exact (the complement masked out of the posterior), so
this LDS measures self-consistency against PSPC, not against retrained networks.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from pspc.errors import InputError

__all__ = ["Summary", "lds", "random_subsets", "rank_average", "spearman", "summarise", "top_k"]


def rank_average(values: np.ndarray) -> np.ndarray:
    """Ranks 1..n of a 1-d array, ties given the average of their ranks (float64)."""
    values = np.asarray(values)
    order = np.argsort(values, kind="stable")
    ranks = np.empty(len(values))
    ranks[order] = np.arange(1, len(values) + 1)
    unique, inverse = np.unique(values, return_inverse=True)
    if len(unique) < len(values):  # average the ranks of each group of ties
        ranks = (np.bincount(inverse, weights=ranks) / np.bincount(inverse))[inverse]
    return ranks


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman's rank correlation (Pearson correlation of the average ranks); 0 when either is constant."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.shape != b.shape or a.ndim != 1 or len(a) < 2:
        raise InputError(f"spearman needs two 1-d arrays of the same length >= 2, got {a.shape} and {b.shape}")
    ra, rb = rank_average(a) - (len(a) + 1) / 2, rank_average(b) - (len(b) + 1) / 2
    norm = float(np.sqrt((ra**2).sum() * (rb**2).sum()))
    return float((ra * rb).sum() / norm) if norm > 0 else 0.0


def random_subsets(num_images: int, num_subsets: int, fraction: float = 0.5, seed: int = 0) -> np.ndarray:
    """bool [M, N]: M subsets, each exactly round(fraction N) images drawn without replacement."""
    if not 0 < fraction < 1 or num_subsets < 2:
        raise InputError(f"need 0 < fraction < 1 and at least 2 subsets, got {fraction} and {num_subsets}")
    rng = np.random.default_rng(seed)
    size = int(round(fraction * num_images))
    subsets = np.zeros((num_subsets, num_images), dtype=bool)
    for row in subsets:
        row[rng.choice(num_images, size, replace=False)] = True
    return subsets


def lds(scores: np.ndarray, subsets: np.ndarray, outputs: np.ndarray) -> float:
    """Spearman over the M subsets between sum of the members' scores and the output [M]."""
    return spearman(subsets.astype(np.float64) @ np.asarray(scores, dtype=np.float64), outputs)


@dataclass(frozen=True)
class Summary:
    """Mean, standard error and a percentile bootstrap CI of per-query values."""

    mean: float
    se: float
    low: float
    high: float
    count: int

    def to_dict(self) -> dict:
        return {"mean": self.mean, "se": self.se, "ci95": [self.low, self.high], "queries": self.count}

    def text(self, scale: float = 1.0, digits: int = 3) -> str:
        return (f"{self.mean * scale:.{digits}f} ± {self.se * scale:.{digits}f} "
                f"[{self.low * scale:.{digits}f}, {self.high * scale:.{digits}f}]")


def summarise(values, draws: int = 10_000, seed: int = 0, level: float = 0.95) -> Summary:
    """Summary of per-query values: mean, s.e. (sample std / sqrt n), bootstrap CI over queries."""
    values = np.asarray(values, dtype=np.float64)
    if values.ndim != 1 or len(values) < 2:
        raise InputError(f"need at least 2 per-query values, got shape {values.shape}")
    rng = np.random.default_rng(seed)
    means = values[rng.integers(0, len(values), (draws, len(values)))].mean(1)
    tail = (1 - level) / 2
    return Summary(float(values.mean()), float(values.std(ddof=1) / np.sqrt(len(values))),
                   float(np.quantile(means, tail)), float(np.quantile(means, 1 - tail)), len(values))


def top_k(scores: np.ndarray, k: int) -> np.ndarray:
    """The k images with the highest scores (ties: the lowest index), int64, highest first."""
    scores = np.asarray(scores)
    if not 1 <= k <= len(scores):
        raise InputError(f"k must be in [1, {len(scores)}], got {k}")
    return np.argsort(-scores, kind="stable")[:k].astype(np.int64)
