"""The stored copy verdict of an image (copy_verdicts, issue 17) as the pages show it: a badge
(VerdictBadge) with its sentence and whether it is an alarm. The sample report shows the
sample's; the counterfactual panel shows the counterfactual's beside its parent's."""

from __future__ import annotations

from dataclasses import dataclass, field

from auditor.store.calibrations import verdict_sentence

__all__ = ["NO_VERDICT", "VerdictBadge", "verdict_badge"]


NO_VERDICT = "no verdict recorded for this sample"


@dataclass(kw_only=True)
class VerdictBadge:
    """The stored copy verdict of the sample (copy_verdicts, issue 17) as the page shows it.

    sentence: the verdict in one sentence (Verdict.sentence: reason, score vs threshold,
    measured TPR/FPR, source image ids, a partial copy's box); alarm: whether the badge is red,
    only for copy / partial copy from a calibrated threshold or identical pixels (an
    inconclusive verdict, or a call without calibration, is never red); region: a partial
    copy's box [top, left, height, width] and area (the mask stays in the store)."""

    verdict: str
    reason: str
    sentence: str
    alarm: bool
    evidence: str | None = None
    score: float | None = None
    threshold: float | None = None
    tpr: float | None = None
    fpr: float | None = None
    calibration_id: int | None = None
    sources: list[dict] = field(default_factory=list)
    region: dict | None = None


def verdict_badge(row: dict | None) -> VerdictBadge | None:
    """The badge of a stored verdict row (SampleProvenance.verdict, calibrations.load_verdicts);
    None when there is none."""
    if row is None:
        return None
    region = row.get("region")
    calibrated = row.get("calibration_id") is not None or row.get("evidence") == "exact-hash"
    return VerdictBadge(verdict=row["verdict"], reason=row["reason"], sentence=verdict_sentence(row),
                        alarm=row["verdict"] in ("copy", "partial copy") and calibrated,
                        evidence=row.get("evidence"), score=row.get("score"), threshold=row.get("threshold"),
                        tpr=row.get("tpr"), fpr=row.get("fpr"), calibration_id=row.get("calibration_id"),
                        sources=list(row.get("sources") or []),
                        region=None if region is None else {"box": region.get("box"), "area": region.get("area")})
