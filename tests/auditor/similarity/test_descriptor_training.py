"""Training the learned copy descriptor (auditor.similarity.descriptor_training) and `auditor train-descriptor`."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from auditor.cli import descriptor as descriptor_cli
from auditor.errors import UserError
from auditor.similarity.descriptor_training import (
    TrainingOptions, augment, entropy_loss, info_nce, look_alikes, save_descriptor, train_descriptor
)
from auditor.similarity.descriptors import LearnedDescriptor
from auditor.similarity.learned_descriptor import DEFAULT_CHECKPOINT, NetConfig
from tests.support.cli import run_cli
from tests.support.data import fashion_mnist

TINY = NetConfig(channels=(4, 8, 8, 8), dimension=8)
# one torch thread: the weights are the same for a fixed thread count, and one is far faster on a busy machine
pytestmark = pytest.mark.usefixtures("one_torch_thread")


def tiny_options(**changes) -> TrainingOptions:
    return TrainingOptions(**{"steps": 3, "batch": 16, "group": 4, "log_every": 1, "network": TINY, **changes})


def test_training_is_deterministic_and_recorded():
    data = fashion_mnist(48)
    first = train_descriptor(data.images, tiny_options(), data=data.describe())
    again = train_descriptor(data.images, tiny_options(), data=data.describe())
    other = train_descriptor(data.images, tiny_options(seed=1), data=data.describe())
    state, same, different = (r.checkpoint["state_dict"] for r in (first, again, other))
    assert state.keys() == same.keys()
    assert all(torch.equal(state[k], same[k]) for k in state)
    assert not all(torch.equal(state[k], different[k]) for k in state if state[k].is_floating_point())
    record = first.record
    assert record["seed"] == 0 and record["data"]["fingerprint"] == data.fingerprint
    assert record["data"]["images_used"] == 48 and record["options"]["steps"] == 3
    assert [row[0] for row in record["loss_curve"]] == [1, 2, 3]
    assert record["loss_curve"] == again.record["loss_curve"]
    assert set(record["versions"]) == {"python", "torch", "numpy"} and record["wall_seconds"] >= 0


def test_training_refuses_images_it_cannot_learn_from():
    with pytest.raises(UserError, match="grayscale 28x28"):
        train_descriptor(torch.zeros(8, 3, 28, 28, dtype=torch.uint8), tiny_options())
    with pytest.raises(UserError, match="uint8"):
        train_descriptor(torch.zeros(8, 1, 28, 28), tiny_options())
    with pytest.raises(UserError, match="unknown augmentation"):
        tiny_options(families=("rotate-90",))
    with pytest.raises(UserError, match="group"):
        tiny_options(group=32)


def test_augmentations_are_the_benchmarks_transforms_seeded():
    images = fashion_mnist(8).images
    a = augment(images, np.random.default_rng(3), 1, 2)
    b = augment(images, np.random.default_rng(3), 1, 2)
    assert a.dtype == torch.uint8 and a.shape == images.shape and torch.equal(a, b)
    assert (a != images).flatten(1).any(1).all()  # every image went through at least one transform
    assert torch.equal(augment(images, np.random.default_rng(3), 0, 0), images)


def test_look_alikes_are_other_images_and_the_loss_rewards_matching_views():
    images = fashion_mnist(40).images
    neighbours = look_alikes(images, 3)
    assert neighbours.shape == (40, 3) and (neighbours != np.arange(40)[:, None]).all()
    z = torch.nn.functional.normalize(torch.randn(8, 16, generator=torch.Generator().manual_seed(0)), dim=1)
    matched = torch.cat([z, z])
    shuffled = torch.cat([z, z.roll(1, 0)])
    assert info_nce(matched, 0.1) < info_nce(shuffled, 0.1)
    assert torch.isfinite(entropy_loss(matched))


def test_saved_checkpoint_loads_and_its_record_pins_it(tmp_path):
    data = fashion_mnist(48)
    result = train_descriptor(data.images, tiny_options(), data=data.describe(), name="tiny")
    path = tmp_path / "tiny.pt"
    record = save_descriptor(result, path, command=["auditor", "train-descriptor"])
    on_disk = json.loads(path.with_suffix(".json").read_text())
    assert on_disk["checkpoint"]["sha256"] == record["checkpoint"]["sha256"] and on_disk["command"][0] == "auditor"
    descriptor = LearnedDescriptor.load(path)
    assert descriptor.name == "tiny" and descriptor.dimension == 8
    assert descriptor.training_fingerprint == data.fingerprint
    with torch.inference_mode():
        expected = torch.nn.functional.normalize(result.net.eval()(descriptor.preprocessing(data.images[:4])), dim=1)
    assert torch.allclose(descriptor(data.images[:4]), expected, atol=1e-6)


def test_train_descriptor_command_writes_checkpoint_and_record(tmp_path, capsys):
    out = tmp_path / "cli.pt"
    code, stdout, stderr = run_cli(capsys, "train-descriptor", "--limit", 32, "--steps", 2, "--batch", 16, "--group", 4,
                                   "--dimension", 16, "--out", out, "--threads", 1)
    assert code == 0, stderr
    assert "trained 2 steps" in stdout and str(out) in stdout and "step 2/2" in stderr
    record = json.loads(out.with_suffix(".json").read_text())
    assert record["command"][:2] == ["auditor", "train-descriptor"] and record["options"]["network"]["dimension"] == 16
    assert LearnedDescriptor.load(out).dimension == 16
    code, _, stderr = run_cli(capsys, "train-descriptor", "--limit", 32, "--steps", 1, "--temperature", 0, "--out", out)
    assert code == 2 and "--temperature must be > 0" in stderr


def test_command_defaults_are_the_libraries():
    defaults = TrainingOptions()
    assert descriptor_cli.DEFAULTS == {"steps": defaults.steps, "batch": defaults.batch, "group": defaults.group,
                                       "lr": defaults.lr, "temperature": defaults.temperature,
                                       "entropy_weight": defaults.entropy_weight,
                                       "dimension": defaults.network.dimension, "seed": defaults.seed}
    assert descriptor_cli.DEFAULT_OUT == DEFAULT_CHECKPOINT
