"""Tiny networks with the EDM interface net(z, sigma), and TorchScript stand-ins for SSCD.

`tiny_net` / `TINY`: the project's U-Net (pspc.networks.EDMPrecond), tiny, every weight random.
`tiny_network` / `TinyDenoiser` (images of `SHAPE`): EDM's preconditioning around a fixed random
smooth map, so that D(z, t) is non-trivial and costs microseconds (a convolutional U-Net, even a
tiny one, takes seconds per call on a loaded 2-core machine: its oneDNN threads spin).
`GaussianNet`: the optimal denoiser of N(0, I) data.
`TinySSCD` / `save_script`: SSCD's interface (images [B, 3, H, W] -> [B, dim]) as TorchScript.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from pspc.networks import EDMPrecond, NetworkConfig

TINY = NetworkConfig(image_channels=1, resolution=(8, 8), model_channels=8, channel_mult=(1, 2),
                     attention_levels=(1,), groups=4)
SHAPE = (1, 8, 8)


def tiny_net(config=TINY, seed=0) -> EDMPrecond:
    """A tiny network with every weight random (the zero-initialised layers too), in eval mode."""
    torch.manual_seed(seed)
    net = EDMPrecond(config)
    with torch.no_grad():
        for p in net.parameters():
            p.copy_(torch.randn_like(p) * 0.2)
    return net.eval()


def batch(shape=(3, 1, 8, 8), seed=1):
    """(z, sigma) for `tiny_net()`: seeded noise and the noise levels 0.01, 1, 50."""
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(shape, generator=generator), torch.tensor([0.01, 1.0, 50.0])[: shape[0]]


class TinyDenoiser(torch.nn.Module):
    """D(z, sigma) = c_skip z + c_out tanh(W c_in z + b + a log sigma) (EDM Table 1 preconditioning,
    sigma_data = 0.5) with fixed random W, b, a drawn from `seed`."""

    def __init__(self, image_shape=SHAPE, seed: int = 0):
        super().__init__()
        generator = torch.Generator().manual_seed(seed)
        size = int(np.prod(image_shape))
        self.image_shape = tuple(image_shape)
        self.register_buffer("weight", torch.randn(size, size, generator=generator) / size ** 0.5)
        self.register_buffer("bias", 0.3 * torch.randn(size, generator=generator))
        self.register_buffer("slope", 0.1 * torch.randn(size, generator=generator))

    def forward(self, z: torch.Tensor, sigma) -> torch.Tensor:
        sigma = torch.as_tensor(sigma, dtype=z.dtype, device=z.device).reshape(-1).expand(z.shape[0])[:, None]
        total = sigma.square() + 0.25
        flat = z.flatten(1)
        raw = torch.tanh(flat / total.sqrt() @ self.weight.T + self.bias + self.slope * sigma.log())
        return (0.25 / total * flat + sigma * 0.5 / total.sqrt() * raw).view_as(z)


def tiny_network(image_shape=SHAPE, seed: int = 0) -> TinyDenoiser:
    return TinyDenoiser(image_shape, seed)


class GaussianNet(torch.nn.Module):
    """A stand-in network with the EDM interface net(z, sigma): the optimal denoiser of N(0, I) data."""

    def forward(self, z, sigma):
        sigma = sigma.reshape(-1, 1, 1, 1).to(z.dtype)
        return z / (1 + sigma ** 2)


class TinySSCD(torch.nn.Module):
    """SSCD's interface: normalised RGB [B, 3, H, W] of any size -> L2-normalised [B, dim]."""

    def __init__(self, dim: int = 512, seed: int = 0):
        super().__init__()
        torch.manual_seed(seed)
        self.conv = torch.nn.Conv2d(3, 8, 5, stride=4)
        self.head = torch.nn.Linear(8 * 16, dim)

    def embed(self, x):
        y = F.relu(self.conv(x))
        y = F.adaptive_avg_pool2d(y, 4).flatten(1)
        return F.normalize(self.head(y), dim=1)

    def forward(self, x):
        return self.embed(x)


def save_script(module: torch.nn.Module, path: Path) -> Path:
    torch.jit.script(module.eval()).save(str(path))
    return path
