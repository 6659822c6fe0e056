"""Network files (pspc.networks.checkpoints): checkpoints (plain tensors + JSON, half precision) and
TorchScript export."""

import pytest
import torch

from pspc.networks import NetworkError, detect_kind, export_torchscript, load_checkpoint, load_network, save_network
from tests.support.data import random_training_set
from tests.support.networks import TINY, batch, tiny_net


# ---------------------------------------------------------------------------------------
# Checkpoints and TorchScript
# ---------------------------------------------------------------------------------------
def test_checkpoint_round_trip_gives_identical_outputs(tmp_path):
    net = tiny_net()
    path = save_network(tmp_path / "net.pt", net, record={"iterations": 7})
    loaded, record = load_checkpoint(path)
    z, sigma = batch()
    with torch.no_grad():
        assert torch.equal(loaded(z, sigma), net(z, sigma))
    assert loaded.config == TINY and record == {"iterations": 7}
    assert not (tmp_path / "net.pt.partial").exists()


def test_half_precision_checkpoint_loads_as_float32_close_to_the_original(tmp_path):
    net = tiny_net()
    full = save_network(tmp_path / "full.pt", net)
    half = save_network(tmp_path / "half.pt", net, half=True)
    assert half.stat().st_size < 0.7 * full.stat().st_size
    loaded, _ = load_checkpoint(half)
    assert all(p.dtype == torch.float32 for p in loaded.parameters())
    z, sigma = batch()
    with torch.no_grad():
        assert torch.allclose(loaded(z, sigma), net(z, sigma), atol=5e-2)


def test_checkpoint_is_loaded_without_unpickling_code(tmp_path):
    """Only tensors and primitives: torch.load(weights_only=True) must accept the file."""
    path = save_network(tmp_path / "net.pt", tiny_net())
    payload = torch.load(path, weights_only=True)
    assert payload["format"] == "pspc-unet" and isinstance(payload["config"], str)


def test_torchscript_round_trip(tmp_path):
    net = tiny_net()
    path = export_torchscript(net, tmp_path / "net.ts")
    assert detect_kind(path) == "torchscript"
    denoiser = load_network(path, random_training_set(count=4, height=8, width=8))
    assert denoiser.describe()["network"]["kind"] == "torchscript"
    for shape in ((3, 1, 8, 8), (5, 1, 8, 8)):
        z = torch.randn(shape)
        sigma = torch.linspace(0.05, 20, shape[0])
        with torch.no_grad():
            assert torch.allclose(denoiser(z, sigma.double()), net(z, sigma), atol=1e-5)


def test_torchscript_needs_a_shape(tmp_path):
    path = export_torchscript(tiny_net(), tmp_path / "net.ts")
    with pytest.raises(NetworkError, match="pass the training set or image_shape"):
        load_network(path)
    assert load_network(path, image_shape=(1, 8, 8)).image_shape == (1, 8, 8)
