"""PSPC attribution of an image itself as copy evidence (the benchmark's "pspc-share").

The image x is noised, z = x + t eps (one seeded draw), and PSPC-Square's posterior at t
says which training image each patch is composed of. The share of image i is
sum over patches k of weight_k(i) x patch_share_k (Eq. 11, the store's `step_sources`);
the score is the top share. PSPC compares each patch only with the same position in every
training image, so a shifted copy gets no concentrated share: that limit is what the
benchmark measures against the shift-tolerant sources.
"""

from __future__ import annotations

import hashlib
import json

import numpy as np
import torch

from pspc.data.training_set import TrainingSet, to_model_range
from pspc.denoisers import pspc_square
from pspc.posterior.attribution import patch_shares
from pspc.posterior.weights import WeightRequest

from auditor.similarity.evidence import Evidence

__all__ = ["PSPCShare"]


class PSPCShare:
    """Top share of PSPC-Square's posterior on x + t eps (patch size s, default the schedule's s(t))."""

    name = "pspc-share"

    def __init__(self, training_set: TrainingSet, *, t: float = 0.3, patch_size: int | None = None, seed: int = 0,
                 top_k: int = 8):
        self.training_set, self.t, self.seed, self.top_k = training_set, float(t), int(seed), int(top_k)
        self.patch_size = patch_size
        self.denoiser = pspc_square(training_set, patch_size)

    def describe(self) -> dict:
        record = {"name": self.name, "t": self.t, "patch_size": self.patch_size, "seed": self.seed, "top_k": self.top_k,
                  "training_set": self.training_set.fingerprint}
        return {**record, "fingerprint": hashlib.sha256(json.dumps(record, sort_keys=True).encode()).hexdigest()}

    def __call__(self, images: torch.Tensor) -> list[Evidence]:
        x = to_model_range(images)
        eps = torch.randn(x.shape, generator=torch.Generator().manual_seed(self.seed))
        t = torch.full((len(x),), self.t)
        _, groups = self.denoiser.posterior(x + self.t * eps, t, WeightRequest(top_k=self.top_k, mass=0.999))
        n = len(self.training_set)
        results: list[Evidence | None] = [None] * len(x)
        for members, weights in groups:
            share = patch_shares(weights.patch_set.masks()).to(torch.float64)  # [K]
            for row, b in enumerate(members.tolist()):
                entry = weights.entry[row]
                valid = entry >= 0
                totals = np.zeros(n)
                np.add.at(totals, (entry[valid] % n).numpy(),
                          (weights.weight[row].double() * share[:, None])[valid].numpy())
                order = np.argsort(-totals)[:16]
                results[b] = Evidence(float(totals[order[0]]), int(order[0]),
                                      [(int(i), float(totals[i])) for i in order])
        return results
