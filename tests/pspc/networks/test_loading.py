"""Loading networks (pspc.networks.loading): load_network's shapes and errors, VP conversion
(Eq. 13), EDM pickles."""

import importlib
import math
import pickle
import sys
import textwrap

import pytest
import torch

from pspc.denoisers import NetworkDenoiser
from pspc.networks import NetworkError, VPEpsilonNetwork, detect_kind, export_torchscript, load_network, save_network
from pspc.samplers import SamplerConfig, initial_noise, sample
from tests.support.data import random_training_set
from tests.support.networks import tiny_net


# ---------------------------------------------------------------------------------------
# load_network: shapes and errors
# ---------------------------------------------------------------------------------------
def test_checkpoint_loads_as_a_network_denoiser_usable_by_the_sampler(tmp_path):
    path = save_network(tmp_path / "net.pt", tiny_net())
    denoiser = load_network(path, random_training_set(count=4, height=8, width=8))
    assert isinstance(denoiser, NetworkDenoiser) and denoiser.image_shape == (1, 8, 8)
    record = denoiser.describe()["network"]
    assert record["kind"] == "checkpoint" and len(record["sha256"]) == 64 and record["config"]["model_channels"] == 8
    out = sample(denoiser, initial_noise(2, (1, 8, 8), seed=0), SamplerConfig(method="heun", num_steps=4))
    assert out.shape == (2, 1, 8, 8) and torch.isfinite(out).all()


@pytest.mark.parametrize("channels, height, width, message", [
    (3, 8, 8, r"takes 1 channel\(s\) at 8x8, the training set has 3 channel\(s\) at 8x8"),
    (1, 10, 8, r"the training set has 1 channel\(s\) at 10x8"),
])
def test_checkpoint_against_a_training_set_of_another_shape(tmp_path, channels, height, width, message):
    path = save_network(tmp_path / "net.pt", tiny_net())
    with pytest.raises(NetworkError, match=message):
        load_network(path, random_training_set(count=3, channels=channels, height=height, width=width))


def test_torchscript_against_a_training_set_of_another_shape(tmp_path):
    path = export_torchscript(tiny_net(), tmp_path / "net.ts")
    with pytest.raises(NetworkError, match=r"fails on the training set's images \(3 channel\(s\) at 8x8\)"):
        load_network(path, random_training_set(count=3, channels=3, height=8, width=8))


def test_module_with_the_wrong_interface_is_refused():
    class Pooling(torch.nn.Module):
        def forward(self, z, sigma):
            return z.mean(1)

    class NotFinite(torch.nn.Module):
        def forward(self, z, sigma):
            return z / 0

    data = random_training_set(count=3, height=8, width=8)
    with pytest.raises(NetworkError, match=r"returned \(2, 8, 8\) for z of shape \(2, 1, 8, 8\)"):
        load_network(Pooling(), data)
    with pytest.raises(NetworkError, match="NaN or infinite"):
        load_network(NotFinite(), data)


@pytest.mark.parametrize("content, message", [
    (b"", "unrecognised network file"),
    (b"not a network at all", "unrecognised network file"),
])
def test_unrecognised_files(tmp_path, content, message):
    path = tmp_path / "bad.pt"
    path.write_bytes(content)
    with pytest.raises(NetworkError, match=message):
        load_network(path, random_training_set(count=3, height=8, width=8))


def test_truncated_and_foreign_checkpoints(tmp_path):
    data = random_training_set(count=3, height=8, width=8)
    good = save_network(tmp_path / "net.pt", tiny_net()).read_bytes()
    (tmp_path / "cut.pt").write_bytes(good[: len(good) // 2])
    with pytest.raises(NetworkError, match="cut.pt"):
        load_network(tmp_path / "cut.pt", data)
    torch.save(tiny_net().state_dict(), tmp_path / "state_dict.pt")
    with pytest.raises(NetworkError, match="not a pspc-unet checkpoint"):
        load_network(tmp_path / "state_dict.pt", data)
    with pytest.raises(NetworkError, match="no such network file"):
        load_network(tmp_path / "missing.pt", data)


def test_checkpoint_whose_weights_do_not_match_its_config(tmp_path):
    payload = torch.load(save_network(tmp_path / "net.pt", tiny_net()), weights_only=True)
    payload["config"] = payload["config"].replace('"model_channels": 8', '"model_channels": 16')
    torch.save(payload, tmp_path / "mismatch.pt")
    with pytest.raises(NetworkError, match="does not match its config"):
        load_network(tmp_path / "mismatch.pt")


# ---------------------------------------------------------------------------------------
# VP epsilon-prediction models (paper Eq. 13)
# ---------------------------------------------------------------------------------------
class PointMassEpsilon(torch.nn.Module):
    """The exact epsilon-predictor of a VP model whose data is the single image x0:
    eps(x_s, s) = (x_s - sqrt(a_s) x0) / sqrt(1 - a_s)."""

    def __init__(self, x0, alphas):
        super().__init__()
        self.x0, self.alphas = x0, torch.as_tensor(alphas, dtype=torch.float64)

    def forward(self, x_s, step):
        a = self.alphas[step.long()].float()[:, None, None, None]
        return (x_s - a.sqrt() * self.x0) / (1 - a).sqrt()


def test_vp_conversion_recovers_the_data_from_an_exact_epsilon_model():
    alphas = VPEpsilonNetwork.linear_schedule(steps=1000)
    x0 = torch.rand(1, 1, 8, 8) * 2 - 1
    net = VPEpsilonNetwork(PointMassEpsilon(x0, alphas), alphas)
    steps = torch.tensor([3, 100, 500, 999])
    sigma = ((1 - alphas[steps]) / alphas[steps]).sqrt().float()  # noise levels on the model's grid
    z = x0 + sigma[:, None, None, None] * torch.randn(4, 1, 8, 8)
    assert torch.equal(net.steps(sigma), steps)
    assert torch.allclose(net(z, sigma), x0.expand(4, -1, -1, -1), atol=1e-3)


def test_vp_conversion_matches_a_hand_written_reference():
    alphas = VPEpsilonNetwork.linear_schedule(steps=50)
    log_sigmas = ((1 - alphas) / alphas).sqrt().log()

    class Model(torch.nn.Module):
        def forward(self, x_s, step):
            return torch.tanh(x_s) * (1 + step.float()[:, None, None, None] / 7)

    z = torch.randn(3, 1, 4, 4) * 3
    sigma = torch.tensor([0.05, 0.9, 6.0])
    for mode in ("nearest", "interpolate"):
        out = VPEpsilonNetwork(Model(), alphas, timestep=mode)(z, sigma)
        for b in range(3):
            s = float(sigma[b])
            log_s = math.log(s)
            if mode == "nearest":
                step = min(range(50), key=lambda j: abs(log_sigmas[j] - log_s))
            elif log_s >= log_sigmas[-1]:  # beyond the schedule (sigma = 6 here): its last step
                step = 49
            else:
                j = next(j for j in range(1, 50) if log_sigmas[j] >= log_s)
                step = j - 1 + (log_s - log_sigmas[j - 1]) / (log_sigmas[j] - log_sigmas[j - 1])
            x_s = z[b] / math.sqrt(1 + s * s)
            by_hand = z[b] - s * torch.tanh(x_s) * (1 + float(step) / 7)
            assert torch.allclose(out[b], by_hand, atol=1e-4), (mode, b)


def test_vp_loader_wraps_torchscript_and_needs_a_schedule(tmp_path):
    class Model(torch.nn.Module):
        def forward(self, x_s, step):
            return 0.5 * x_s + 0 * step[:, None, None, None]

    path = tmp_path / "eps.ts"
    torch.jit.script(Model()).save(str(path))
    data = random_training_set(count=3, height=8, width=8)
    with pytest.raises(NetworkError, match="needs the model's alphas_cumprod"):
        load_network(path, data, kind="vp-epsilon")
    alphas = VPEpsilonNetwork.linear_schedule()
    denoiser = load_network(path, data, kind="vp-epsilon", alphas_cumprod=alphas)
    z = torch.randn(2, 1, 8, 8)
    t = torch.tensor([0.5, 4.0], dtype=torch.float64)
    expected = z - t.float()[:, None, None, None] * 0.5 * z / (1 + t.float() ** 2).sqrt()[:, None, None, None]
    assert torch.allclose(denoiser(z, t), expected, atol=1e-5)
    assert "Eq. 13" in denoiser.describe()["network"]["conversion"]
    with pytest.raises(NetworkError, match="decrease"):
        VPEpsilonNetwork(Model(), alphas.flip(0))


# ---------------------------------------------------------------------------------------
# EDM pickles
# ---------------------------------------------------------------------------------------
FAKE_EDM_NETWORK = '''
import torch


class Precond(torch.nn.Module):
    """Stands in for EDM's EDMPrecond: img_resolution, img_channels, label_dim, forward(x, sigma)."""

    def __init__(self, resolution=8, channels=1, label_dim=0):
        super().__init__()
        self.img_resolution, self.img_channels, self.label_dim = resolution, channels, label_dim
        self.scale = torch.nn.Parameter(torch.tensor(0.5))

    def forward(self, x, sigma, class_labels=None):
        return (x * self.scale / (1 + sigma.reshape(-1, 1, 1, 1) ** 2)).to(torch.float32)
'''


@pytest.fixture
def fake_edm_source(tmp_path, monkeypatch):
    """dnnlib and torch_utils packages on sys.path (as with the EDM source on PYTHONPATH)."""
    root = tmp_path / "edm"
    (root / "dnnlib").mkdir(parents=True)
    (root / "dnnlib" / "__init__.py").write_text("")
    (root / "torch_utils").mkdir()
    (root / "torch_utils" / "__init__.py").write_text("")
    (root / "torch_utils" / "fake_networks.py").write_text(textwrap.dedent(FAKE_EDM_NETWORK))
    monkeypatch.syspath_prepend(str(root))
    importlib.invalidate_caches()
    yield importlib.import_module("torch_utils.fake_networks")
    for name in [m for m in sys.modules if m.split(".")[0] in ("dnnlib", "torch_utils")]:
        del sys.modules[name]


def write_snapshot(path, snapshot):
    with open(path, "wb") as f:
        pickle.dump(snapshot, f, protocol=4)
    return path


def test_edm_pickle_needs_the_edm_source(tmp_path):
    path = write_snapshot(tmp_path / "network-snapshot.pkl", {"ema": None})
    assert detect_kind(path) == "edm-pickle"
    with pytest.raises(NetworkError, match="dnnlib and torch_utils packages\\) on PYTHONPATH"):
        load_network(path, random_training_set(count=3, height=8, width=8))


def test_edm_pickle_loads_its_ema_network(tmp_path, fake_edm_source):
    path = write_snapshot(tmp_path / "snapshot.pkl", {"ema": fake_edm_source.Precond(), "augment_pipe": None})
    denoiser = load_network(path, random_training_set(count=3, height=8, width=8))
    z = torch.randn(2, 1, 8, 8)
    t = torch.tensor([0.5, 2.0], dtype=torch.float64)
    assert torch.allclose(denoiser(z, t), 0.5 * z / (1 + t.float() ** 2)[:, None, None, None])
    assert denoiser.describe()["network"]["class"] == "torch_utils.fake_networks.Precond"


def test_edm_pickle_errors(tmp_path, fake_edm_source):
    data = random_training_set(count=3, height=8, width=8)
    path = write_snapshot(tmp_path / "a.pkl", {"ema": fake_edm_source.Precond(resolution=32, channels=3)})
    with pytest.raises(NetworkError, match=r"takes 3 channel\(s\) at 32x32, the training set has 1 channel\(s\) at 8x8"):
        load_network(path, data)
    path = write_snapshot(tmp_path / "b.pkl", {"ema": fake_edm_source.Precond(label_dim=10)})
    with pytest.raises(NetworkError, match="class-conditional"):
        load_network(path, data)
    path = write_snapshot(tmp_path / "c.pkl", {"net": 1})
    with pytest.raises(NetworkError, match="'ema' network"):
        load_network(path, data)
