"""PSPC attribution along a network's trajectory as copy evidence (auditor.similarity.trajectory_evidence).

A "memorising" network here is one whose D(z, t) is a training image whatever z: its PF-ODE
states are that image plus t eps, so PSPC's posterior along them must find it. Data: 12 random
8x8 images with x-flips (tests.support.data.random_set).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from auditor.similarity.copy_detection import CopyDetectionError
from auditor.similarity.evidence import Evidence
from auditor.similarity.trajectory_evidence import TrajectoryShare, from_shares, standardised_max, stored_evidence
from auditor.store import database
from auditor.store.networks import register_network
from auditor.workflows.comparison import record_explained_run
from auditor.workflows.options import ExplainOptions
from pspc.denoisers import NetworkDenoiser
from pspc.samplers import SamplerConfig, initial_noise
from tests.support.data import random_set
from tests.support.networks import SHAPE, tiny_network

pytestmark = pytest.mark.usefixtures("one_torch_thread")

EULER_6 = SamplerConfig(method="euler", num_steps=6)


class Replicator(torch.nn.Module):
    """net(z, sigma) = one fixed image in [-1, 1], whatever the input: a network that memorised it."""

    def __init__(self, image: torch.Tensor):
        super().__init__()
        self.register_buffer("image", image.float())

    def forward(self, z, sigma):
        return self.image.expand_as(z).to(z.dtype)


def replicating(image: torch.Tensor) -> NetworkDenoiser:
    return NetworkDenoiser(Replicator(image), SHAPE, name="replicator")


def test_evidence_from_shares_is_the_top_share_and_its_image():
    evidence = from_shares([0.1, 0.6, 0.05, 0.25], candidates=3)
    assert (evidence.score, evidence.entry) == (0.6, 1)
    assert evidence.candidates == [(1, 0.6), (3, 0.25), (0, 0.1)]
    for bad in ([], [[0.1, 0.2]], [0.1, float("nan")]):
        with pytest.raises(CopyDetectionError, match="finite vector"):
            from_shares(bad)


def test_a_memorised_image_is_found_along_the_trajectory_and_a_novel_one_is_not():
    data = random_set()
    source = TrajectoryShare(data)
    z = initial_noise(2, SHAPE, seed=3)
    copy = data.as_float()[5]
    final, found = source.sample(replicating(copy), z, EULER_6)
    assert torch.allclose(final, copy.expand_as(final))  # the network's samples: the memorised image
    assert [e.entry for e in found] == [5, 5] and min(e.score for e in found) > 0.35
    mirrored = source.sample(replicating(copy.flip(-1)), z[:1], EULER_6)[1][0]
    assert mirrored.entry == 5 and mirrored.score > 0.35  # the mirrored entry is merged into its image
    novel = torch.rand(SHAPE, generator=torch.Generator().manual_seed(11)) * 2 - 1
    spread = source.sample(replicating(novel), z, EULER_6)[1]
    assert max(e.score for e in spread) < 0.5 * min(e.score for e in found)


def test_an_image_inverted_through_the_network_is_explained_by_its_replay():
    data = random_set()
    copy = data.as_float()[7]
    replay, found = TrajectoryShare(data).invert(replicating(copy), copy[None], EULER_6)
    assert torch.allclose(replay[0], copy, atol=1e-5) and found[0].entry == 7 and found[0].score > 0.35


def test_states_of_another_size_and_steps_of_another_set_are_refused():
    data = random_set()
    source = TrajectoryShare(data)
    with pytest.raises(CopyDetectionError, match=r"states are \(1, 6, 6\)"):
        source.sample(replicating(torch.zeros(1, 6, 6)), torch.zeros(1, 1, 6, 6), EULER_6)
    with pytest.raises(CopyDetectionError, match="12 training images, this source's training set has 6"):
        TrajectoryShare(data.subset(range(6))).from_steps(_steps(source, data))


def _steps(source, data):
    """One sample's StepEvidence over `data` (12 images), from a live run's recorder."""
    from pspc.posterior.scores import EvidenceRecorder
    from pspc.samplers import denoise_step

    recorder = EvidenceRecorder(EULER_6.time_steps(), data.num_entries)
    z = initial_noise(1, SHAPE, seed=1)
    for step, t in enumerate(EULER_6.time_steps().tolist()[:2]):
        recorder(step, t, z, *denoise_step(source.explainer, z, t, source.request))
    return recorder.evidence(0)


def test_the_fingerprint_names_the_explainer_and_the_training_set():
    data = random_set()
    base = TrajectoryShare(data)
    assert base.fingerprint == TrajectoryShare(data).fingerprint
    assert base.fingerprint != TrajectoryShare(data, patch_size=3).fingerprint
    assert base.fingerprint != TrajectoryShare(data, top_k=4).fingerprint
    assert base.fingerprint != TrajectoryShare(data.subset(range(11)).with_xflip()).fingerprint
    assert base.describe()["name"] == "trajectory-share"


@pytest.mark.slow
def test_stored_network_samples_give_the_live_evidence(tmp_path):
    """What a compare run records (its network-explained run) gives the evidence the live source computes."""
    db = tmp_path / "provenance.duckdb"
    database.upgrade(db)
    data = random_set()
    network = NetworkDenoiser(tiny_network(), SHAPE)
    z = initial_noise(2, SHAPE, seed=5)
    options = ExplainOptions(patch_size=3, top_k=64, mass=1.0)
    run_id = record_explained_run(db, data, network, z, network_id=register_network(db, network), config=EULER_6,
                                  options=options)
    stored = stored_evidence(db, run_id, [0, 1])
    _, live = TrajectoryShare(data, patch_size=3, top_k=64, mass=1.0).sample(network, z, EULER_6)
    for s, e in zip(stored, live):
        assert s.entry == e.entry and s.score == pytest.approx(e.score, rel=1e-4)
        assert [c for c, _ in s.candidates[:5]] == [c for c, _ in e.candidates[:5]]


def test_the_standardised_maximum_keeps_the_source_that_stands_out_most():
    reference = {"a": [0.4, 0.5, 0.6], "b": [0.45, 0.5, 0.55]}
    named = {"a": Evidence(0.9, 3, [(3, 0.9)]), "b": Evidence(0.6, 4, [(4, 0.6)])}
    combined = standardised_max(named, reference)
    expected = (0.9 - 0.5) / np.std([0.4, 0.5, 0.6])
    assert combined.entry == 3 and combined.alignment == {"source": "a", "score": 0.9}
    assert combined.score == pytest.approx(expected)
    named["b"] = Evidence(0.8, 4, [(4, 0.8)])  # (0.8 - 0.5) / 0.041 beats (0.9 - 0.5) / 0.082
    assert standardised_max(named, reference).entry == 4
    with pytest.raises(CopyDetectionError, match="reference negatives"):
        standardised_max(named, {"a": reference["a"]})
    with pytest.raises(CopyDetectionError, match="at least 2"):
        standardised_max({"a": named["a"]}, {"a": [0.5]})
