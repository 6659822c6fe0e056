"""The project's U-Net (pspc.networks.unet): EDM preconditioning, shapes and dtypes, its NetworkConfig."""

import math

import pytest
import torch

from pspc.networks import EDMPrecond, NetworkConfig, NetworkError, edm_preconditioning
from tests.support.networks import TINY, batch, tiny_net


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
