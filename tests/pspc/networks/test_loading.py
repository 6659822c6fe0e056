"""Networks: EDM preconditioning, checkpoints, TorchScript, EDM pickles, VP conversion, loader errors."""

import importlib
import math
import pickle
import sys
import textwrap

import pytest
import torch

from pspc.denoisers import NetworkDenoiser
from pspc.networks import (
    EDMPrecond, NetworkConfig, NetworkError, VPEpsilonNetwork, detect_kind, edm_preconditioning,
    export_torchscript, load_checkpoint, load_network, save_network
)
from pspc.samplers import SamplerConfig, initial_noise, sample
from tests.conftest import random_training_set

@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny networks: one thread avoids OpenMP oversubscription on a shared CPU."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


TINY = NetworkConfig(image_channels=1, resolution=(8, 8), model_channels=8, channel_mult=(1, 2),
                     attention_levels=(1,), groups=4)


def tiny_net(config=TINY, seed=0) -> EDMPrecond:
    """A tiny network with every weight random (the zero-initialised layers too), in eval mode."""
    torch.manual_seed(seed)
    net = EDMPrecond(config)
    with torch.no_grad():
        for p in net.parameters():
            p.copy_(torch.randn_like(p) * 0.2)
    return net.eval()


def batch(shape=(3, 1, 8, 8), seed=1):
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(shape, generator=generator), torch.tensor([0.01, 1.0, 50.0])[: shape[0]]


# ---------------------------------------------------------------------------------------
# EDM preconditioning
# ---------------------------------------------------------------------------------------
def test_preconditioning_coefficients_match_edm_table_1():
    for sigma in (0.002, 0.5, 3.0, 80.0):
        c_skip, c_out, c_in, c_noise = (float(c) for c in edm_preconditioning(torch.tensor(sigma, dtype=torch.float64)))
        assert c_skip == pytest.approx(0.25 / (sigma**2 + 0.25), rel=1e-12)
        assert c_out == pytest.approx(sigma * 0.5 / math.sqrt(sigma**2 + 0.25), rel=1e-12)
        assert c_in == pytest.approx(1 / math.sqrt(sigma**2 + 0.25), rel=1e-12)
        assert c_noise == pytest.approx(math.log(sigma) / 4, rel=1e-12)


def test_network_output_is_c_skip_z_plus_c_out_F_of_c_in_z():
    net = tiny_net()
    z, sigma = batch()
    with torch.no_grad():
        out = net(z, sigma)
        for b in range(z.shape[0]):
            s = float(sigma[b])
            total = s * s + 0.25
            F = net.model(z[b : b + 1] / math.sqrt(total), torch.tensor([math.log(s) / 4]))
            by_hand = 0.25 / total * z[b] + s * 0.5 / math.sqrt(total) * F[0]
            assert torch.allclose(out[b], by_hand, atol=1e-5)


def test_fresh_network_starts_as_the_skip_path():
    """The output conv starts at zero, so an untrained network is D = c_skip z exactly."""
    torch.manual_seed(0)
    net = EDMPrecond(TINY)
    z, sigma = batch()
    with torch.no_grad():
        assert torch.allclose(net(z, sigma), 0.25 / (sigma**2 + 0.25)[:, None, None, None] * z, atol=1e-7)


def test_sigma_may_be_scalar_vector_or_broadcast_shape_and_samples_are_independent():
    net = tiny_net()
    z, _ = batch()
    with torch.no_grad():
        scalar = net(z, 0.7)
        assert torch.allclose(scalar, net(z, torch.full((3,), 0.7)), atol=1e-6)
        assert torch.allclose(scalar, net(z, torch.full((3, 1, 1, 1), 0.7)), atol=1e-6)
        mixed = net(z, torch.tensor([0.1, 2.0, 30.0]))
        for b, s in enumerate((0.1, 2.0, 30.0)):
            assert torch.allclose(mixed[b], net(z[b : b + 1], s)[0], atol=1e-5)
        with pytest.raises(ValueError, match="one value per sample"):
            net(z, torch.tensor([0.1, 0.2]))
        with pytest.raises(ValueError, match=r"takes \[B, 1, 8, 8\]"):
            net(torch.zeros(2, 3, 8, 8), 1.0)


def test_resolution_that_does_not_halve_is_padded_and_cropped():
    config = NetworkConfig(image_channels=3, resolution=(7, 9), model_channels=8, channel_mult=(1, 2, 2),
                           attention_levels=(), groups=4)
    net = tiny_net(config)
    z = torch.randn(2, 3, 7, 9)
    with torch.no_grad():
        out = net(z, torch.tensor([0.5, 5.0]))
    assert out.shape == z.shape and torch.isfinite(out).all()


def test_float64_input_keeps_its_dtype():
    net = tiny_net()
    z, sigma = batch()
    with torch.no_grad():
        out64 = net(z.double(), sigma)
        assert out64.dtype == torch.float64
        assert torch.allclose(out64.float(), net(z, sigma), atol=1e-5)


def test_bad_configs_are_refused_with_the_reason():
    with pytest.raises(NetworkError, match="num_blocks"):
        NetworkConfig(num_blocks=0)
    with pytest.raises(NetworkError, match="attention_levels"):
        NetworkConfig(channel_mult=(1, 2), attention_levels=(2,))
    with pytest.raises(NetworkError, match="unknown field"):
        NetworkConfig.from_dict({"model_channels": 8, "colour": "red"})


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


def test_moved_names_are_still_importable_from_unet():
    """TEMPORARY, removed at integration: other packages still import these from pspc.networks.unet."""
    import pspc.networks as networks
    import pspc.networks.unet as unet

    for name in ("load_network", "save_network", "read_checkpoint", "load_checkpoint", "export_torchscript",
                 "detect_kind", "check_network", "VPEpsilonNetwork", "EDMPickleNetwork", "NETWORK_KINDS",
                 "CHECKPOINT_FORMAT", "CHECKPOINT_VERSION"):
        assert getattr(unet, name) is getattr(networks, name)
    with pytest.raises(AttributeError):
        unet.no_such_name
