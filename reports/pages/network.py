"""The sample report's network section (its counterpart in a network comparison) and its copy
detection matches."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from auditor.store.read_models.sample import SampleProvenance
from reports.pages.common import MAIN_SIZE, TINY_SIZE, Picture, training_thumbnail

__all__ = ["CopyMatch", "NetworkComparison", "NetworkStep", "SimilarityScore", "copy_matches", "network_comparison"]


@dataclass(kw_only=True)
class NetworkStep:
    """Agreement of network and PSPC at one step of the network's trajectory: MSE (and
    largest absolute difference) between their denoiser outputs on the same z_t."""

    step: int
    t: float
    mse: float
    max_abs_error: float | None = None


@dataclass(kw_only=True)
class SimilarityScore:
    """A descriptor similarity between the sample and its counterpart, with what makes it
    meaningful: the descriptor's name, its preprocessing and record, the thresholds used and
    the highest one reached (`flag`, None if none)."""

    descriptor: str
    score: float
    thresholds: list[float]
    flag: float | None
    flagged: bool
    preprocessing: Any = None
    record: dict = field(default_factory=dict)

    @property
    def threshold(self) -> float | None:
        """The threshold shown next to the score: the highest reached, else the lowest."""
        return self.flag if self.flag is not None else (min(self.thresholds) if self.thresholds else None)


@dataclass(kw_only=True)
class NetworkComparison:
    """The sample's counterpart in a network comparison (auditor.workflows.comparison), sampled from the
    same initial noise: for a PSPC sample, the network's sample; for a network-explained
    sample (the network's own, attributed by PSPC on its trajectory), the PSPC sample. With
    the similarity scores of the pair and the network run's per-step agreement between the
    network's and PSPC's denoiser outputs (how far the attribution can be trusted per step)."""

    network: dict  # what the network is: id, name, kind, sha256, source, record
    image: Picture | None  # the counterpart's final image
    role: str  # this run's role in the comparison: 'network' or the denoiser kind
    counterpart_role: str
    counterpart_run_id: int | None
    comparison_id: int | None
    scores: list[SimilarityScore] = field(default_factory=list)
    steps: list[NetworkStep] = field(default_factory=list)

    @property
    def flagged(self) -> bool:
        """Some descriptor's score reaches one of its thresholds: a likely copy."""
        return any(s.flagged for s in self.scores)

    @property
    def is_network_sample(self) -> bool:
        return self.role == "network"


def network_comparison(counterpart: dict | None) -> NetworkComparison | None:
    """A NetworkComparison from auditor.store.comparisons.sample_counterpart's record (None stays None)."""
    if counterpart is None:
        return None
    image = counterpart.get("image")
    picture = Picture.of(np.asarray(image, np.float32), MAIN_SIZE, f"{counterpart.get('counterpart_role')} sample") \
        if image is not None else None
    scores = [SimilarityScore(descriptor=s["descriptor"], score=float(s["score"]),
                              thresholds=[float(t) for t in (s.get("thresholds") or [])],
                              flag=None if s.get("flag") is None else float(s["flag"]), flagged=bool(s.get("flagged")),
                              preprocessing=s.get("preprocessing"), record=s.get("descriptor_record") or {})
              for s in counterpart.get("similarity", [])]
    steps = [NetworkStep(step=int(s["step"]), t=float(s["t"]), mse=float(s["mse"]),
                         max_abs_error=None if s.get("max_abs_error") is None else float(s["max_abs_error"]))
             for s in counterpart.get("steps", [])]
    return NetworkComparison(network=counterpart.get("network") or {}, image=picture, role=str(counterpart.get("role")),
                             counterpart_role=str(counterpart.get("counterpart_role")),
                             counterpart_run_id=counterpart.get("counterpart_run_id"),
                             comparison_id=counterpart.get("comparison_id"), scores=scores, steps=steps)


@dataclass(kw_only=True)
class CopyMatch:
    """A nearest training image of the sample by descriptor (copy detection), with the
    descriptor, thresholds and the highest threshold reached."""

    rank: int
    image_index: int
    image_id: str
    flip: bool
    score: float
    descriptor: str
    thresholds: list[float]
    flag: float | None
    flagged: bool
    thumbnail: Picture | None = None


def copy_matches(data: SampleProvenance) -> list[CopyMatch]:
    """The sample's copy_matches rows, by descriptor and rank, with tiny thumbnails (mirrored for flip)."""
    out = []
    for m in data.copy_matches:
        meta = data.images.get(int(m.image_index))
        out.append(CopyMatch(
            rank=int(m.rank), image_index=int(m.image_index), image_id=meta.image_id if meta else str(m.image_index),
            flip=bool(m.flip), score=float(m.score), descriptor=m.descriptor,
            thresholds=[float(t) for t in (m.thresholds or [])], flag=None if m.flag is None else float(m.flag),
            flagged=bool(m.flagged),
            thumbnail=training_thumbnail(data.dataset["fingerprint"], meta, TINY_SIZE, bool(m.flip))))
    return out
