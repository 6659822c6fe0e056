"""Thresholds for the copy verdict, chosen on labelled cases with their measured error rates.

:class:`CopyEvidence` bundles the verdict's evidence sources over one training set: exact
pixel hashes, aligned correlation (whole-image copies, shift tolerant), region match
(partial copies) and, where :func:`verdict_descriptor` gives a descriptor, descriptor match
(whole-image copies by the learned copy descriptor, auditor.similarity.descriptor_evidence):
none by default, since it catches more shifted, cropped and blurred copies but also more
novel images (bench/results/copy_detection.md); $PSPC_COPY_DESCRIPTOR chooses one.
:func:`calibrate` scores a calibration split (auditor.similarity.cases) and picks every
source's threshold. The default rule, "joint", bounds what a user sees: the novel images
called a copy or a partial copy by ANY source, whose one-sided 95% Clopper-Pearson upper
bound must stay at or below `target_fpr`; the sources share that budget
(auditor.similarity.budget). The rule "per-source" (the earlier one) picks each source's
smallest threshold calling at most `target_fpr` of the novel images, a point estimate per
source that adds up over sources and drifts on new images. Each threshold is recorded with
the TPR (on that source's copy families) and FPR measured at it. Thresholds belong to one
evidence fingerprint and one training set: the verdict never borrows them for another.
"""

from __future__ import annotations

import math
import os
from dataclasses import asdict, dataclass

import numpy as np
import torch

from auditor.similarity.budget import DEFAULT_CONFIDENCE, share_budget
from auditor.similarity.cases import COPY_FAMILIES, PARTIAL_FAMILIES, Cases
from auditor.similarity.checkpoints import COPY_DESCRIPTOR_ENV, DescriptorError
from auditor.similarity.descriptor_evidence import DescriptorMatch
from auditor.similarity.descriptors import Descriptor, LearnedDescriptor, load_descriptor
from pspc.data.training_set import TrainingSet
from auditor.similarity.evidence import AlignedCorrelation, RegionMatch
from auditor.similarity.hashing import ExactHashes
from auditor.similarity.metrics import binomial_upper_bound, rate_at, threshold_for_fpr

__all__ = ["CALLS", "DEFAULT_CONFIDENCE", "DEFAULT_RULE", "DEFAULT_TARGET_FPR", "RULES", "CopyEvidence", "Threshold",
           "calibrate", "verdict_descriptor"]

DEFAULT_TARGET_FPR = 0.01  # issue 17's target: novel images called copy or partial copy, all sources together
RULES = ("joint", "per-source")  # how target_fpr is read: see the module docstring
DEFAULT_RULE = "joint"
CALLS = {"aligned-correlation": ("copy", COPY_FAMILIES), "region-match": ("partial copy", PARTIAL_FAMILIES),
         "descriptor-match": ("copy", COPY_FAMILIES)}


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
    rule: str = DEFAULT_RULE
    fpr_upper: float | None = None  # one-sided upper bound of this source's own FPR at `confidence`
    confidence: float = DEFAULT_CONFIDENCE
    joint: dict | None = None  # rule "joint": the shared budget (auditor.similarity.budget.Budget.to_dict())

    def to_dict(self) -> dict:
        record = asdict(self)
        record["families"] = list(self.families)
        return record


def verdict_descriptor(training: torch.Tensor, spec: str = "configured") -> Descriptor | None:
    """The descriptor of the verdict's descriptor-match on training images uint8 [N, C, H, W], by `spec`:
    "configured": $PSPC_COPY_DESCRIPTOR's, else none; "none": none; "auto": the committed learned
    descriptor (fmnist-copy) when these are exactly the images it was trained on (its record's
    fingerprint), else none (a learned descriptor serves its own domain); anything else: that
    load_descriptor spec ("fmnist-copy", "learned:PATH", ...), on any training set."""
    if spec == "configured":
        spec = os.environ.get(COPY_DESCRIPTOR_ENV) or "none"
    spec = spec.strip()
    if spec == "none":
        return None
    if spec != "auto":
        return load_descriptor(spec)
    try:
        learned = LearnedDescriptor.load("fmnist-copy")
    except DescriptorError:  # not in this checkout: the verdict goes without it
        return None
    data = learned.record.get("data") or {}
    if [len(training), *training.shape[1:]] != [data.get("count"), *data.get("shape", ())]:
        return None
    same = TrainingSet(training, range(len(training))).fingerprint == learned.training_fingerprint
    return learned if same else None


class CopyEvidence:
    """The verdict's evidence sources over training images uint8 [N, C, H, W] (with mirrored entries).
    descriptor: a verdict_descriptor spec (default "configured": $PSPC_COPY_DESCRIPTOR, else none), a
    Descriptor, a DescriptorMatch built on these images, or None; with one, descriptor-match is a source
    too, which then needs its own calibration."""

    def __init__(self, training: torch.Tensor, xflip: bool = True,
                 descriptor: Descriptor | DescriptorMatch | str | None = "configured"):
        self.training, self.xflip = training, bool(xflip)
        self.exact = ExactHashes(training, xflip)
        self.aligned = AlignedCorrelation(training, xflip=xflip)
        self.region = RegionMatch(training, xflip=xflip)
        if isinstance(descriptor, str):
            descriptor = verdict_descriptor(training, descriptor)
        if isinstance(descriptor, Descriptor):
            descriptor = DescriptorMatch(training, descriptor, xflip=xflip)
        elif descriptor is not None and (descriptor.num_images, descriptor.xflip) != (len(training), self.xflip):
            raise ValueError(f"the DescriptorMatch was built on {descriptor.num_images} images (xflip "
                             f"{descriptor.xflip}), not on these {len(training)} (xflip {self.xflip})")
        self.descriptor = descriptor

    @property
    def sources(self) -> dict:
        extra = {self.descriptor.name: self.descriptor} if self.descriptor is not None else {}
        return {self.aligned.name: self.aligned, self.region.name: self.region, **extra}

    def score(self, images: torch.Tensor, batch: int = 256) -> dict[str, list]:
        """{"exact-hash": [entries], "aligned-correlation": [Evidence], "region-match": [Evidence]} (and
        "descriptor-match": [Evidence] with a descriptor)."""
        out: dict[str, list] = {self.exact.name: [], **{name: [] for name in self.sources}}
        for start in range(0, len(images), batch):
            chunk = images[start:start + batch]
            out[self.exact.name] += [self.exact.entries(image) for image in chunk]
            aligned = self.aligned(chunk)
            out[self.aligned.name] += aligned
            out[self.region.name] += self.region(chunk, [[e for e, _ in a.candidates[:8]] for a in aligned])
            if self.descriptor is not None:
                out[self.descriptor.name] += self.descriptor(chunk)
        return out


def calibrate(evidence: CopyEvidence, cases: Cases, target_fpr: float = DEFAULT_TARGET_FPR,
              scores: dict[str, list] | None = None, *, rule: str = DEFAULT_RULE,
              confidence: float = DEFAULT_CONFIDENCE, sources=None) -> list[Threshold]:
    """One Threshold per evidence source (or per name in `sources`), chosen on `cases` (which must
    hold novel images and each source's copy families) by `rule` (see the module docstring)."""
    if not 0 < target_fpr < 1:
        raise ValueError(f"target_fpr must be in (0, 1), got {target_fpr}")
    if rule not in RULES:
        raise ValueError(f"unknown calibration rule {rule!r}; expected one of {', '.join(RULES)}")
    names = list(evidence.sources if sources is None else sources)
    unknown = [name for name in names if name not in evidence.sources]
    if unknown or not names:
        raise ValueError(f"no evidence source {unknown}; the evidence has {', '.join(evidence.sources)}")
    scores = scores if scores is not None else evidence.score(cases.images)
    family = np.asarray(cases.family)
    novel, copies = family == "novel", np.isin(family, COPY_FAMILIES + PARTIAL_FAMILIES)
    values, ours = {}, {}
    for name in names:
        families = CALLS[name][1]
        values[name], ours[name] = np.array([e.score for e in scores[name]]), np.isin(family, families)
        if not novel.any() or not ours[name].any():
            raise ValueError(f"calibrating {name} needs novel images and cases of {', '.join(families)}")
    joint = None
    if rule == "joint":
        budget = share_budget({name: values[name][novel] for name in names},
                              {name: np.where(ours[name], values[name], -np.inf)[copies] for name in names},
                              target_fpr, confidence)
        chosen, joint = budget.thresholds, budget.to_dict()
    else:
        chosen = {name: _per_source(values[name][novel], target_fpr) for name in names}
    thresholds = []
    for name in names:
        call, families = CALLS[name]
        negatives, positives = values[name][novel], values[name][ours[name]]
        threshold = chosen[name]
        thresholds.append(Threshold(
            name, evidence.sources[name].fingerprint, call, threshold, float(target_fpr), rate_at(positives, threshold),
            rate_at(negatives, threshold), len(positives), len(negatives), tuple(f for f in families if f in set(family)),
            rule, binomial_upper_bound(int((negatives >= threshold).sum()), len(negatives), confidence),
            float(confidence), joint))
    return thresholds


def _per_source(negatives: np.ndarray, target_fpr: float) -> float:
    """The earlier rule: the smallest threshold calling at most target_fpr of the negatives."""
    threshold = threshold_for_fpr(negatives, target_fpr)
    return threshold if math.isfinite(threshold) else float(negatives.max())
