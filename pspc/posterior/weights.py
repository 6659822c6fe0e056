"""Patch posterior weights: the attribution PSPC computes anyway (Eq. 9-11).

For every sample b and patch k, the softmax weights over training entries (image, flip).
We keep the top entries (at most k, stopping once a mass threshold is captured) plus
three summaries of the FULL weight vector: captured mass, entropy and effective sample
size. The full weights recompose the denoiser output exactly; the kept ones approximately,
with an error bounded by the dropped mass.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from pspc.errors import InputError
from pspc.posterior.patch_sets import PatchSet
from pspc.data.training_set import TrainingSet


@dataclass(frozen=True)
class WeightRequest:
    """What to keep of the posterior weights: at most top_k entries per (sample, patch),
    fewer once `mass` of the weight is captured; full=True also keeps the dense weights
    (small training sets only: B x K x entries)."""

    top_k: int = 16
    mass: float = 0.99
    full: bool = False

    def __post_init__(self):
        if self.top_k < 1:
            raise InputError(f"top_k must be >= 1, got {self.top_k}")
        if not 0 < self.mass <= 1:
            raise InputError(f"mass threshold must be in (0, 1], got {self.mass}")


@dataclass
class PosteriorWeights:
    """Posterior weights of one denoiser call over a batch sharing one patch set.

    entry   [B, K, k] long  training entry (index < N: image; >= N: flipped image), -1 = none
    weight  [B, K, k]       softmax weight of that entry for that patch (0 where entry = -1)
    mass    [B, K]          weight captured by the kept entries
    entropy [B, K]          entropy (nats) of the full weight vector
    ess     [B, K]          effective sample size 1 / sum w^2 of the full weight vector
    full    [B, K, E]       all weights, only when requested
    """

    patch_set: PatchSet
    t: torch.Tensor
    num_images: int
    entry: torch.Tensor
    weight: torch.Tensor
    mass: torch.Tensor
    entropy: torch.Tensor
    ess: torch.Tensor
    full: torch.Tensor | None = None

    @property
    def image_index(self) -> torch.Tensor:
        return torch.where(self.entry >= 0, self.entry % self.num_images, -1)

    @property
    def flip(self) -> torch.Tensor:
        return self.entry >= self.num_images

    def recompose(self, training_set: TrainingSet, use_full: bool = False) -> torch.Tensor:
        """Eq. 11 from the stored weights: each patch's estimate sum_i w_i C x_i, spread and
        divided by coverage. With the top-k weights (not renormalised) every patch estimate
        is off by at most its dropped mass (pixels lie in [-1, 1]), so each output pixel is
        off by at most the average dropped mass of the patches covering it.

        Sparse: per sample, Y = W X (patches x pixels, W sparse over entries), then each
        pixel sums Y over the patches that contain it."""
        x = training_set.as_float(dtype=torch.float64)
        entries = (torch.cat([x, x.flip(-1)]) if training_set.xflip else x).flatten(1)  # [E, C*H*W]
        masks = self.patch_set.masks().to(torch.float64).flatten(1)  # [K, H*W]
        batch, num_patches = self.mass.shape
        if use_full:
            if self.full is None:
                raise InputError("full weights were not requested (WeightRequest(full=True))")
            dense = self.full.to(torch.float64).cpu()
        out = torch.empty(batch, *training_set.image_shape, dtype=torch.float64)
        for b in range(batch):
            if use_full:
                weights = dense[b]
            else:
                valid = self.entry[b] >= 0
                patch = torch.arange(num_patches)[:, None].expand_as(valid)[valid]
                weights = torch.sparse_coo_tensor(torch.stack([patch, self.entry[b][valid]]),
                                                  self.weight[b][valid].to(torch.float64),
                                                  (num_patches, entries.shape[0]), check_invariants=True)
            per_patch = (weights @ entries).view(num_patches, training_set.channels, -1)  # [K, C, H*W]
            numerator = (per_patch * masks[:, None]).sum(0)  # sum_k M_k[q] estimate_k[q]
            out[b] = (numerator / masks.sum(0)).view(training_set.image_shape)
        return out

    def error_bound(self) -> torch.Tensor:
        """[B, 1, H, W] per-pixel bound on |recompose(top-k) - D(z, t)|."""
        dropped = (1 - self.mass).clamp(min=0).to(torch.float64).cpu()
        spread = self.patch_set.spread(dropped)
        return (spread / self.patch_set.coverage()).unsqueeze(1)

    def sources(self, training_set: TrainingSet, sample: int, patch: int) -> list[dict]:
        """Readable list of the kept entries of one (sample, patch): id, flip, source box, weight."""
        rows = []
        for entry, weight in zip(self.entry[sample, patch].tolist(), self.weight[sample, patch].tolist()):
            if entry < 0:
                continue
            e = training_set.entry(entry)
            rows.append({"image_id": e.image_id, "index": e.index, "flip": e.flip,
                         "source_box": self.patch_set.source_box(patch, e.flip), "weight": weight})
        return rows
