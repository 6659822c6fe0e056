"""Training: EDM loss by hand, seeded batches, loss decrease, exact resume, records, CLI."""

import json
import math

import numpy as np
import pytest
import torch
from PIL import Image

from auditor.cli import main as auditor_main
from pspc.networks import EDMPrecond, NetworkConfig, load_checkpoint, load_network
from pspc.networks.training import (
    BatchSampler, EDMLoss, TrainingConfig, TrainingError, evaluation_loss, sample_network, save_samples,
    state_path_for, train, training_batch
)
from pspc.data.training_set import TrainingSet
from tests.support.data import random_training_set
from tests.support.networks import TINY

QUICK = dict(batch_size=8, lr=2e-3, lr_warmup=0, checkpoint_seconds=0, eval_samples=32, preview_samples=0)


def blobs(count=8) -> TrainingSet:
    """Structured 8x8 images (a bright square at a few positions): easy to learn."""
    images = torch.zeros(count, 1, 8, 8, dtype=torch.uint8)
    for i in range(count):
        y, x = (i % 3) * 2, (i // 3) % 3 * 2
        images[i, 0, y : y + 3, x : x + 3] = 255
    return TrainingSet(images, [f"blob-{i}" for i in range(count)], name="blobs")


# ---------------------------------------------------------------------------------------
# Loss and randomness
# ---------------------------------------------------------------------------------------
def test_edm_loss_weight_and_value_by_hand():
    loss = EDMLoss()
    sigma = torch.tensor([0.1, 1.0, 10.0], dtype=torch.float64)
    assert torch.allclose(loss.weight(sigma), (sigma**2 + 0.25) / (sigma * 0.5) ** 2)

    class Zero(torch.nn.Module):
        def forward(self, z, s):
            return torch.zeros_like(z)

    y = torch.rand(3, 1, 2, 2, dtype=torch.float64) * 2 - 1
    noise = torch.randn(3, 1, 2, 2, dtype=torch.float64)
    per_sample = loss(Zero(), y, sigma, noise)
    for b in range(3):
        s = float(sigma[b])
        by_hand = (s * s + 0.25) / (s * 0.5) ** 2 * float((y[b] ** 2).mean())
        assert float(per_sample[b]) == pytest.approx(by_hand, rel=1e-12)


def test_sigma_is_lognormal_with_edm_parameters():
    sigma = EDMLoss().sample_sigma(20000, torch.Generator().manual_seed(0))
    assert float(sigma.log().mean()) == pytest.approx(-1.2, abs=0.03)
    assert float(sigma.log().std()) == pytest.approx(1.2, abs=0.03)


def test_batches_walk_seeded_epochs():
    sampler = BatchSampler(10, 4, seed=3)
    first_epoch = torch.cat([sampler.indices(k) for k in range(5)])[:10]
    assert sorted(first_epoch.tolist()) == list(range(10))  # every image once per epoch
    assert torch.equal(BatchSampler(10, 4, seed=3).indices(7), sampler.indices(7))  # any order of calls
    assert not torch.equal(BatchSampler(10, 4, seed=4).indices(0), BatchSampler(10, 4, seed=3).indices(0))


def test_training_batch_is_a_function_of_seed_and_iteration():
    data = blobs()
    loss = EDMLoss()
    a = training_batch(data.images, BatchSampler(8, 4, 0), loss, 5, 0, True)
    b = training_batch(data.images, BatchSampler(8, 4, 0), loss, 5, 0, True)
    c = training_batch(data.images, BatchSampler(8, 4, 0), loss, 6, 0, True)
    assert all(torch.equal(u, v) for u, v in zip(a, b))
    assert not torch.equal(a[2], c[2])
    y = a[0]
    assert y.min() >= -1 and y.max() <= 1
    originals = data.as_float()
    assert all(any(torch.equal(img, o) or torch.equal(img, o.flip(-1)) for o in originals) for img in y)


def test_learning_rate_warmup_and_ema_rampup():
    config = TrainingConfig(lr=1e-3, lr_warmup=10, batch_size=16, ema_halflife_images=1000, ema_rampup_ratio=0.1)
    assert config.lr_at(0) == pytest.approx(1e-4) and config.lr_at(9) == pytest.approx(1e-3)
    assert config.lr_at(500) == pytest.approx(1e-3)
    assert config.ema_beta(160) == pytest.approx(0.5 ** (16 / 16))  # half-life 0.1 * 160 images
    assert config.ema_beta(10**6) == pytest.approx(0.5 ** (16 / 1000))  # capped at the half-life
    with pytest.raises(TrainingError, match="batch_size"):
        TrainingConfig(batch_size=0)


# ---------------------------------------------------------------------------------------
# Training
# ---------------------------------------------------------------------------------------
@pytest.mark.slow
def test_training_decreases_the_loss(tmp_path):
    data = blobs()
    loss = EDMLoss()
    with torch.random.fork_rng():
        torch.manual_seed(0)
        before = evaluation_loss(EDMPrecond(TINY), data, loss, count=64)
    record = train(data, tmp_path / "net.pt", TINY, TrainingConfig(iterations=60, **QUICK))
    net, _ = load_checkpoint(tmp_path / "net.pt")
    after = evaluation_loss(net, data, loss, count=64)
    assert after < 0.7 * before
    assert record["eval_loss"] == pytest.approx(evaluation_loss(net, data, loss, count=32), rel=1e-5)
    assert record["loss_curve"][-1][0] == 60 and record["final_loss"] < record["loss_curve"][0][1] * 1.5


@pytest.mark.slow
def test_resume_continues_exactly_as_an_uninterrupted_run(tmp_path):
    data = random_training_set(count=12, height=8, width=8)
    train(data, tmp_path / "straight.pt", TINY, TrainingConfig(iterations=6, **QUICK))
    train(data, tmp_path / "split.pt", TINY, TrainingConfig(iterations=3, **QUICK))
    record = train(data, tmp_path / "split.pt", None, TrainingConfig(iterations=6, **QUICK), resume=True)
    straight, _ = load_checkpoint(tmp_path / "straight.pt")
    split, _ = load_checkpoint(tmp_path / "split.pt")
    for (name, a), (_, b) in zip(straight.state_dict().items(), split.state_dict().items()):
        assert torch.equal(a, b), name
    assert record["iterations"] == 6 and [s["from_iteration"] for s in record["segments"]] == [0, 3]


@pytest.mark.slow
def test_resume_refuses_what_would_not_continue_the_same_run(tmp_path):
    data = random_training_set(count=12, height=8, width=8)
    out = tmp_path / "net.pt"
    with pytest.raises(TrainingError, match="nothing to resume"):
        train(data, out, TINY, TrainingConfig(iterations=2, **QUICK), resume=True)
    train(data, out, TINY, TrainingConfig(iterations=2, **QUICK))
    with pytest.raises(TrainingError, match="already exists"):
        train(data, out, TINY, TrainingConfig(iterations=4, **QUICK))
    with pytest.raises(TrainingError, match="same seed"):
        train(data, out, TINY, TrainingConfig(iterations=4, **{**QUICK, "seed": 1}), resume=True)
    with pytest.raises(TrainingError, match="fingerprint"):
        train(random_training_set(count=12, height=8, width=8, seed=9), out, TINY,
              TrainingConfig(iterations=4, **QUICK), resume=True)
    with pytest.raises(TrainingError, match="already trained 2 iterations"):
        train(data, out, TINY, TrainingConfig(iterations=2, **QUICK), resume=True)
    wider = NetworkConfig(**{**TINY.__dict__, "model_channels": 16})
    with pytest.raises(TrainingError, match="saved with network"):
        train(data, out, wider, TrainingConfig(iterations=4, **QUICK), resume=True)


def test_network_that_does_not_fit_the_data_is_refused(tmp_path):
    data = random_training_set(count=4, channels=3, height=8, width=8)
    with pytest.raises(TrainingError, match=r"3 channel\(s\) at 8x8, the network config 1 at 8x8"):
        train(data, tmp_path / "net.pt", TINY, TrainingConfig(iterations=1, **QUICK))
    with pytest.raises(TrainingError, match="must end in .pt"):
        train(data, tmp_path / "net.bin", None, TrainingConfig(iterations=1, **QUICK))


def test_record_says_how_the_checkpoint_was_made(tmp_path):
    data = random_training_set(count=12, height=8, width=8)
    out = tmp_path / "net.pt"
    record = train(data, out, TINY, TrainingConfig(iterations=3, **QUICK), command=["auditor", "train-network"],
                   half=True)
    assert json.loads(out.with_suffix(".json").read_text()) == record
    assert record["command"] == ["auditor", "train-network"] and record["complete"] is True
    assert record["dataset"]["fingerprint"] == data.fingerprint and record["iterations"] == 3
    assert record["images_seen"] == 24 and record["wall_seconds"] >= 0 and math.isfinite(record["final_loss"])
    assert record["versions"]["torch"] == torch.__version__ and record["checkpoint"]["dtype"] == "float16"
    assert record["training"]["seed"] == 0 and record["network"]["model_channels"] == 8
    assert state_path_for(out).exists()
    denoiser = load_network(out, data)  # float16 file, loaded as float32
    assert denoiser.describe()["network"]["training"]["iterations"] == 3


def test_same_seed_same_network(tmp_path):
    data = random_training_set(count=12, height=8, width=8)
    train(data, tmp_path / "a.pt", TINY, TrainingConfig(iterations=2, **QUICK))
    train(data, tmp_path / "b.pt", TINY, TrainingConfig(iterations=2, **QUICK))
    train(data, tmp_path / "c.pt", TINY, TrainingConfig(iterations=2, **{**QUICK, "seed": 5}))
    a, b, c = (load_checkpoint(tmp_path / f"{n}.pt")[0].state_dict() for n in "abc")
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], c[k]) for k in a)


# ---------------------------------------------------------------------------------------
# Samples
# ---------------------------------------------------------------------------------------
def test_samples_are_seeded_and_saved_as_a_grid(tmp_path):
    torch.manual_seed(0)
    net = EDMPrecond(TINY).eval()
    first = sample_network(net, num=3, seed=4, steps=4)
    assert first.shape == (3, 1, 8, 8) and first.abs().max() <= 1
    assert torch.equal(first[1:], sample_network(net, num=2, seed=5, steps=4))  # sample i uses seed + i
    path = save_samples(net, tmp_path / "grid.png", num=4, steps=3)
    loaded = load_network(net, random_training_set(count=2, height=8, width=8))  # a NetworkDenoiser
    assert torch.allclose(sample_network(loaded, num=3, seed=4, steps=4), first, atol=1e-6)
    assert Image.open(path).size == (2 * 8 * 4 + 3, 2 * 8 * 4 + 3)


# ---------------------------------------------------------------------------------------
# auditor train-network
# ---------------------------------------------------------------------------------------
def test_cli_trains_resumes_and_reports_bad_input(tmp_path, capsys):
    images = np.random.default_rng(0).integers(0, 256, (16, 8, 8), dtype=np.uint8)
    np.save(tmp_path / "data.npy", images)
    out = tmp_path / "ckpt" / "net.pt"
    common = ["train-network", "--data", str(tmp_path / "data.npy"), "--out", str(out), "--batch", "4",
              "--channels", "8", "--preview", "0", "--threads", "1"]
    assert auditor_main(common + ["--iterations", "2"]) == 0
    assert "trained 2 iterations" in capsys.readouterr().out
    record = json.loads(out.with_suffix(".json").read_text())
    assert record["command"][:2] == ["auditor", "train-network"] and record["network"]["model_channels"] == 8
    assert auditor_main(common + ["--iterations", "2"]) == 2
    assert "already exists" in capsys.readouterr().err
    assert auditor_main(common + ["--iterations", "3", "--resume"]) == 0
    assert json.loads(out.with_suffix(".json").read_text())["iterations"] == 3
    assert auditor_main(common + ["--iterations", "0"]) == 2
    assert "--iterations must be > 0" in capsys.readouterr().err
    assert auditor_main(["train-network", "--data", str(tmp_path / "missing.npy"), "--out", str(out)]) == 2
    assert "auditor: error:" in capsys.readouterr().err
