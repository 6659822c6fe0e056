"""Per-family metrics of an evidence source on labelled cases (bench/copy_detection.py's tables).

A source's output per case is a :class:`Scored`: its copy score and its candidate training
entries, best first (and a region mask when it gives one). Recall@k counts the true source
*image* among the first k candidates (a mirrored entry of the right image counts: the
image is identified). AUROC and TPR at FPR 1 % / 0.1 % compare each family with the novel
images of the same split; "TPR @ cal" is the share of the family at or above the threshold
calibrated on the other split, and the novel row's "TPR @ cal" is the false-positive rate
there.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from auditor.similarity.cases import PARTIAL_FAMILIES, Cases
from auditor.similarity.metrics import auroc, iou, rate_at, tpr_at_fpr

__all__ = ["COLUMNS", "Scored", "family_rows", "markdown_table", "verdict_rows"]

COLUMNS = ("family", "cases", "R@1", "R@5", "AUROC", "TPR@1%", "TPR@0.1%", "TPR @ cal", "IoU")


@dataclass
class Scored:
    score: float
    candidates: list[int]  # training entries, best first
    mask: np.ndarray | None = None


def _fmt(value) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{value:.3f}" if isinstance(value, float) else str(value)


def family_rows(scored: list[Scored], cases: Cases, num_images: int, threshold: float | None = None,
                regions: bool = False) -> list[dict]:
    """One row per family of `cases` (novel last) with the COLUMNS metrics."""
    family = np.asarray(cases.family)
    scores = np.array([s.score for s in scored], float)
    negatives = scores[family == "novel"]
    rows = []
    for name in dict.fromkeys(cases.family):
        rows_of = np.flatnonzero(family == name)
        row = {"family": name, "cases": len(rows_of)}
        if name == "novel":
            row["TPR @ cal"] = rate_at(negatives, threshold) if threshold is not None else None
            rows.append(row)
            continue
        truth = cases.source[rows_of] % num_images
        found = [[c % num_images for c in scored[i].candidates] for i in rows_of]
        row["R@1"] = float(np.mean([t in f[:1] for f, t in zip(found, truth)]))
        row["R@5"] = float(np.mean([t in f[:5] for f, t in zip(found, truth)]))
        row["AUROC"] = auroc(scores[rows_of], negatives)
        row["TPR@1%"] = tpr_at_fpr(scores[rows_of], negatives, 0.01)
        row["TPR@0.1%"] = tpr_at_fpr(scores[rows_of], negatives, 0.001)
        if threshold is not None:
            row["TPR @ cal"] = rate_at(scores[rows_of], threshold)
        if regions and name in PARTIAL_FAMILIES:
            row["IoU"] = float(np.mean([iou(scored[i].mask, cases.mask[i]) for i in rows_of]))
        rows.append(row)
    return rows


def verdict_rows(verdicts: list[dict], cases: Cases, num_images: int) -> list[dict]:
    """Per family: share called copy / partial copy / no copy found / inconclusive, and the
    share called a copy or partial copy of the true source image."""
    family = np.asarray(cases.family)
    rows = []
    for name in dict.fromkeys(cases.family):
        rows_of = np.flatnonzero(family == name)
        calls = [verdicts[i]["verdict"] for i in rows_of]
        right = [verdicts[i]["verdict"] in ("copy", "partial copy")
                 and cases.source[i] % num_images in {s["image_index"] for s in verdicts[i]["sources"]}
                 for i in rows_of]
        rows.append({"family": name, "cases": len(rows_of),
                     **{call: calls.count(call) / len(calls) for call in ("copy", "partial copy", "no copy found",
                                                                         "inconclusive")},
                     "right source": None if name == "novel" else float(np.mean(right))})
    return rows


def markdown_table(rows: list[dict], columns: tuple[str, ...] = COLUMNS) -> str:
    lines = ["| " + " | ".join(columns) + " |", "|" + "|".join("---" if c == "family" else "---:" for c in columns) + "|"]
    lines += ["| " + " | ".join(_fmt(row.get(c)) for c in columns) + " |" for row in rows]
    return "\n".join(lines)
