"""Per-family metrics of an evidence source on labelled cases (bench/copy_detection.py's tables).

A source's output per case is a :class:`Scored`: its copy score and its candidate training
entries, best first (and a region mask when it gives one). Recall@k counts the true source
*image* among the first k candidates (a mirrored entry of the right image counts: the
image is identified). AUROC and TPR at FPR 1 % / 0.1 % compare each family with the novel
images of the same split; "TPR @ cal" is the share of the family at or above the threshold
calibrated on the other split, and the novel row's "TPR @ cal" is the false-positive rate
there. :func:`target_summary` condenses a verdict's rows into issue 17's targets.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass

import numpy as np

from auditor.similarity.cases import PARTIAL_FAMILIES, Cases
from auditor.similarity.metrics import auroc, binomial_upper_bound, iou, rate_at, tpr_at_fpr

__all__ = ["COLUMNS", "TARGET_COLUMNS", "Scored", "family_rows", "markdown_table", "target_summary", "verdict_rows",
           "write_results"]

COLUMNS = ("family", "cases", "R@1", "R@5", "AUROC", "TPR@1%", "TPR@0.1%", "TPR @ cal", "IoU")
# issue 17's targets: exact and near copies called copies (>= 0.95) of the right image (>= 0.9), 50 % partial
# copies found (>= 0.95), novel images called copy or partial copy <= 1 %; the hard families are shown as they are
NEAR = ("exact", "exact-mirrored", "noise-4", "noise-8", "noise-16", "brightness", "contrast", "jpeg-20")
HARD = ("shift-1", "shift-2", "crop-resize", "blur")
HALF = ("partial-50-rect", "partial-50-ellipse", "partial-50-half")
QUARTER = ("partial-25-rect", "partial-25-ellipse")
TARGET_COLUMNS = ("verdict", "exact & near: min called (>= 0.95)", "min right source (>= 0.9)",
                  "shift-1 / shift-2 / crop / blur", "partial 50%: min (>= 0.95)", "partial 25% rect / ellipse",
                  "novel called (<= 0.01)", "upper bound")


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


def target_summary(name: str, rows: list[dict], confidence: float = 0.95) -> dict:
    """One verdict's test-split figures against issue 17's targets (TARGET_COLUMNS), from verdict_rows."""
    by = {r["family"]: r for r in rows}
    called = lambda f: by[f]["copy"] + by[f]["partial copy"]  # noqa: E731
    novel = by["novel"]
    wrong = int(round(called("novel") * novel["cases"]))
    return {"verdict": name, TARGET_COLUMNS[1]: min(by[f]["copy"] for f in NEAR if f in by),
            TARGET_COLUMNS[2]: min(by[f]["right source"] for f in NEAR if f in by),
            TARGET_COLUMNS[3]: " / ".join(f"{by[f]['copy']:.3f}" for f in HARD if f in by),
            TARGET_COLUMNS[4]: min(by[f]["partial copy"] for f in HALF if f in by),
            TARGET_COLUMNS[5]: " / ".join(f"{by[f]['partial copy']:.3f}" for f in QUARTER if f in by),
            TARGET_COLUMNS[6]: f"{called('novel'):.4f} ({wrong}/{novel['cases']})",
            TARGET_COLUMNS[7]: f"{binomial_upper_bound(wrong, novel['cases'], confidence):.4f}"}


def markdown_table(rows: list[dict], columns: tuple[str, ...] = COLUMNS) -> str:
    lines = ["| " + " | ".join(columns) + " |", "|" + "|".join("---" if c == "family" else "---:" for c in columns) + "|"]
    lines += ["| " + " | ".join(_fmt(row.get(c)) for c in columns) + " |" for row in rows]
    return "\n".join(lines)


def write_results(out, result: dict, text: str) -> None:
    """Print a benchmark's report and write it as OUT.md, with every number as OUT.json."""
    print(text)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".md").write_text(text)
    out.with_suffix(".json").write_text(json.dumps(result, indent=1, default=float))
