"""Copy evidence from a descriptor: the nearest training entry by descriptor similarity, scored against look-alikes.

:class:`DescriptorMatch` ("descriptor-match") describes every training entry (mirrored
images included) with a :class:`~auditor.similarity.descriptors.Descriptor` (the learned
copy descriptor, auditor.similarity.learned_descriptor), indexes them exactly (faiss inner
product) and scores an image by its nearest entry's cosine similarity s1 minus
`look_alike_weight` times s2, the similarity of the nearest *other* training image (SSCD's
score normalisation, with the training set itself as the background set): a copy stands
out from its source's look-alikes, a novel garment is about as close to several of them.
The entries' descriptors come from the disk cache when it holds them
(auditor.similarity.descriptor_cache).

Like the other evidence sources its `fingerprint` names the descriptor and every
parameter, so a calibration is stored against exactly this scoring.
"""

from __future__ import annotations

import faiss
import numpy as np
import torch

from auditor.similarity.copy_detection import CopyDetectionError
from auditor.similarity.descriptor_cache import entry_descriptors
from auditor.similarity.descriptors import Descriptor
from auditor.similarity.evidence import Evidence, EvidenceSource

__all__ = ["DescriptorMatch"]


class DescriptorMatch(EvidenceSource):
    """Whole-image copies by descriptor similarity over the training entries (see the module docstring)."""

    name = "descriptor-match"

    def __init__(self, training: torch.Tensor, descriptor: Descriptor, *, xflip: bool = True, candidates: int = 16,
                 look_alike_weight: float = 0.5):
        if not isinstance(training, torch.Tensor) or training.dtype != torch.uint8 or training.ndim != 4:
            raise CopyDetectionError(f"descriptor-match needs uint8 training images [N, C, H, W], got "
                                     f"{getattr(training, 'dtype', type(training).__name__)} "
                                     f"{tuple(getattr(training, 'shape', ()))}")
        self.descriptor, self.xflip = descriptor, bool(xflip)
        self.num_images, self.image_shape = len(training), tuple(training.shape[1:])
        self.k, self.look_alike_weight = int(candidates), float(look_alike_weight)
        described = entry_descriptors(descriptor, training, xflip=self.xflip)  # cached on disk (learned, SSCD)
        self.index = faiss.IndexFlatIP(descriptor.dimension)
        self.index.add(np.ascontiguousarray(described.numpy()))

    def parameters(self) -> dict:
        return {"descriptor": self.descriptor.name, "descriptor_fingerprint": self.descriptor.fingerprint,
                "xflip": self.xflip, "candidates": self.k, "look_alike_weight": self.look_alike_weight,
                "score": "s1 - w s2: cosine of the nearest entry minus w times that of the nearest other image"}

    def __call__(self, images) -> list[Evidence]:
        if tuple(getattr(images, "shape", ())[1:]) != self.image_shape:
            raise CopyDetectionError(f"images are {tuple(getattr(images, 'shape', ())[1:])}, the training images "
                                     f"{self.image_shape}")
        similarities, entries = self.index.search(np.ascontiguousarray(self.descriptor(images).numpy()),
                                                  min(self.k, self.index.ntotal))
        results = []
        for row, found in zip(similarities, entries):
            keep = found >= 0
            row, found = row[keep], found[keep]
            images_of = found % self.num_images
            others = row[images_of != images_of[0]]
            runner_up = float(others[0]) if len(others) else 0.0
            score = float(row[0]) - self.look_alike_weight * runner_up
            results.append(Evidence(score, int(found[0]), [(int(e), float(s)) for e, s in zip(found, row)],
                                    alignment={"similarity": float(row[0]), "runner_up": runner_up}))
        return results
