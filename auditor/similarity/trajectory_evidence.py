"""PSPC attribution along a network's trajectory as copy evidence ("trajectory-share").

A network that has memorised a training image walks, over its last steps, through states
z_t that are that image plus shrinking noise, so PSPC's posterior on the network's own z_t
(what `auditor compare` records for a network sample) puts most of its weight on that image.
:class:`TrajectoryShare` scores a network sample by its top trajectory share: at step s,
share_s(i) = sum over patches k of w_ki s_k (Eq. 11, a mirrored entry merged into its
image), averaged over the steps with the Euler coefficients a_s / sum a
(pspc.posterior.scores.trajectory_share, the store's headline attribution score). The
evidence's entry is that image's index (mirrors are merged, so never >= N), its
candidates the next best images.

Where the steps come from:

- ``TrajectoryShare.sample(network, z)``: the network's PF-ODE from z (pspc.samplers.sample)
  with PSPC-Square's posterior on every state, as `auditor compare` explains a network sample;
- ``TrajectoryShare.invert(network, x)``: an image inverted through the network
  (pspc.samplers.invert) and replayed the same way, as `auditor audit` does;
- ``TrajectoryShare.from_steps(steps)``: recorded StepEvidence of one sample;
- :func:`stored_evidence`: the trajectory shares of a stored run's samples (a compare run's
  network-explained run, an audit's replay), with whatever explainer that run recorded.

The image-based sources are calibrated on image cases (`auditor calibrate`); this one needs a
trajectory per case, so it is calibrated on a network's own samples: bench/canaries.py does
it on the canary network (planted duplicates, pspc.networks.training.Canaries).
"""

from __future__ import annotations

import math
from typing import Mapping, Sequence

import numpy as np
import torch

from pspc.data.training_set import TrainingSet
from pspc.denoisers import Denoiser, pspc_square
from pspc.posterior.scores import EvidenceRecorder, StepEvidence, trajectory_share
from pspc.posterior.weights import WeightRequest
from pspc.samplers import SamplerConfig, denoise_step, invert, sample

from auditor.similarity.copy_detection import CopyDetectionError
from auditor.similarity.evidence import Evidence, EvidenceSource
from auditor.store import database

__all__ = ["TrajectoryShare", "from_shares", "standardised_max", "stored_evidence"]

HEUN_18 = SamplerConfig(method="heun", num_steps=18)  # how the project samples its network


def from_shares(shares, candidates: int = 16) -> Evidence:
    """The evidence of one sample from its trajectory shares float [num_images]: the top share
    is the score, its image the entry, the `candidates` best images (with their shares) follow."""
    shares = np.asarray(shares, dtype=np.float64)
    if shares.ndim != 1 or not len(shares) or not np.all(np.isfinite(shares)):
        raise CopyDetectionError(f"trajectory shares must be a finite vector with one value per training image, "
                                 f"got shape {shares.shape}")
    order = np.argsort(-shares, kind="stable")[:max(int(candidates), 1)]
    return Evidence(float(shares[order[0]]), int(order[0]), [(int(i), float(shares[i])) for i in order])


class TrajectoryShare(EvidenceSource):
    """Top trajectory share of PSPC-Square's posterior on a network's states (see the module docstring).

    training_set: the network's training images (with mirrored entries when it trained with
    flips); patch_size: fixed s, or None for the paper's s(t); top_k / mass: the kept weights
    per patch (auditor compare's defaults)."""

    name = "trajectory-share"

    def __init__(self, training_set: TrainingSet, *, patch_size: int | None = None, top_k: int = 16,
                 mass: float = 0.99, candidates: int = 16):
        self.training_set, self.patch_size, self.candidates = training_set, patch_size, int(candidates)
        self.request = WeightRequest(top_k=int(top_k), mass=float(mass))
        self.explainer = pspc_square(training_set, patch_size)

    def parameters(self) -> dict:
        return {"explainer": "pspc-square", "patch_size": self.patch_size, "top_k": self.request.top_k,
                "mass": self.request.mass, "candidates": self.candidates, "xflip": self.training_set.xflip,
                "training_set": self.training_set.fingerprint,
                "score": "max_i sum_s w_s share_s(i): PSPC's share of training image i at step s of the network's "
                         "trajectory, w_s the Euler coefficients (pspc.posterior.scores.trajectory_share)"}

    def from_steps(self, steps: Sequence[StepEvidence]) -> Evidence:
        """The evidence of one sample from its steps (in step order)."""
        if steps and steps[0].num_images != len(self.training_set):
            raise CopyDetectionError(f"the steps attribute to {steps[0].num_images} training images, this source's "
                                     f"training set has {len(self.training_set)}")
        return from_shares(trajectory_share(steps), self.candidates)

    def sample(self, network: Denoiser, z: torch.Tensor,
               config: SamplerConfig = HEUN_18) -> tuple[torch.Tensor, list[Evidence]]:
        """(the network's samples from the states z at t_max, their evidence): the PF-ODE of
        `config`, with PSPC's posterior on the network's z_t at every step."""
        if tuple(z.shape[1:]) != tuple(self.training_set.image_shape):
            raise CopyDetectionError(f"states are {tuple(z.shape[1:])}, the training images "
                                     f"{tuple(self.training_set.image_shape)}")
        recorder = EvidenceRecorder(config.time_steps(), self.training_set.num_entries)
        explainer = self.explainer.to(network.device)

        def explain(step, t, z_t, _network_denoised, _weights):
            recorder(step, t, z_t, *denoise_step(explainer, z_t, t, self.request))

        final = sample(network, z, config, callback=explain)
        return final, [self.from_steps(recorder.evidence(b)) for b in range(len(z))]

    def invert(self, network: Denoiser, images: torch.Tensor,
               config: SamplerConfig = HEUN_18) -> tuple[torch.Tensor, list[Evidence]]:
        """(the replays' end points, their evidence) of images [B, C, H, W] in [-1, 1]: each is
        inverted through the network's PF-ODE to t_max (pspc.samplers.invert), then replayed
        with `sample`. A replay that does not end near its image explains another image."""
        return self.sample(network, invert(network, images, config), config)


def stored_evidence(db_path, run_id: int, samples: Sequence[int], *, candidates: int = 16,
                    timeout: float = database.DEFAULT_TIMEOUT) -> list[Evidence]:
    """The trajectory-share evidence of samples of a stored run (a compare run's network-explained
    run, an audit's replay), from the shares its recorded steps give (auditor.store.scores)."""
    from auditor.store.scores import sample_scores

    return [from_shares(sample_scores(db_path, run_id, int(i), ["trajectory-share"],
                                      timeout=timeout)["trajectory-share"], candidates) for i in samples]


def standardised_max(named: Mapping[str, Evidence], reference: Mapping[str, Sequence[float]]) -> Evidence:
    """Several sources' evidence of one image as one: each score standardised by the mean and
    standard deviation of that source's scores on reference negatives (novel images), the
    largest kept; its entry, candidates and the source it came from (``alignment["source"]``)
    are that source's. So a copy found by either source is found, and no source's scale
    dominates."""
    if not named or set(named) - set(reference):
        raise CopyDetectionError(f"every source needs reference negatives: got evidence of {sorted(named)}, "
                                 f"references of {sorted(reference)}")
    best = None
    for name, evidence in named.items():
        negatives = np.asarray(reference[name], dtype=np.float64)
        if len(negatives) < 2:
            raise CopyDetectionError(f"{name}: at least 2 reference negatives are needed, got {len(negatives)}")
        spread = float(negatives.std()) or 1.0
        z = (evidence.score - float(negatives.mean())) / spread
        if best is None or z > best[0]:
            best = (z, name, evidence)
    z, name, evidence = best
    return Evidence(z if math.isfinite(z) else -math.inf, evidence.entry, evidence.candidates,
                    alignment={"source": name, "score": evidence.score})
