"""The project's denoiser network: a small U-Net inside the EDM preconditioning (Karras et al. 2022).

`EDMPrecond` (EDM Table 1): D(z, sigma) = c_skip z + c_out F(c_in z, c_noise) with
c_skip = sd^2 / (sigma^2 + sd^2), c_out = sigma sd / sqrt(sigma^2 + sd^2),
c_in = 1 / sqrt(sigma^2 + sd^2), c_noise = ln(sigma) / 4 and sd = sigma_data = 0.5.
z and D are in data units (x in [-1, 1] plus noise); D is not clipped, so gradients
(Eq. 8 sensitivity maps) see the network as it is. `NetworkConfig` is the architecture,
stored as JSON beside the weights (`pspc.networks.checkpoints`); every other network the
tools accept is opened by `pspc.networks.loading.load_network`.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, fields
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from pspc.errors import InputError

SIGMA_DATA = 0.5  # EDM's sigma_data for data in [-1, 1]


class NetworkError(InputError):
    """A network that cannot be loaded or does not fit the data: names the source and the problem."""


# ---------------------------------------------------------------------------------------
# Configuration
# ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class NetworkConfig:
    """Architecture of the project's U-Net; stored as JSON beside the weights.

    Levels run at resolution, resolution/2, ... (one per entry of channel_mult, width
    model_channels * mult); `num_blocks` residual blocks per level on the way down,
    num_blocks + 1 on the way up (U-Net skips); self-attention at the levels listed in
    `attention_levels` and in the middle. Sizes that do not halve evenly are padded
    (replicate) on the input and cropped on the output.
    """

    image_channels: int = 1
    resolution: tuple[int, int] = (28, 28)
    model_channels: int = 32
    channel_mult: tuple[int, ...] = (1, 2, 2)
    num_blocks: int = 1
    attention_levels: tuple[int, ...] = (2,)
    attention_heads: int = 1
    embedding_channels: int | None = None  # noise-embedding width; None: 4 * model_channels
    dropout: float = 0.0
    groups: int = 8  # group-norm groups (fewer when a width is not divisible)
    sigma_data: float = SIGMA_DATA

    def __post_init__(self):
        resolution = tuple(int(r) for r in (self.resolution if isinstance(self.resolution, Sequence)
                                             else (self.resolution, self.resolution)))
        object.__setattr__(self, "resolution", resolution)
        object.__setattr__(self, "channel_mult", tuple(int(m) for m in self.channel_mult))
        object.__setattr__(self, "attention_levels", tuple(int(a) for a in self.attention_levels))
        problems = []
        if self.image_channels < 1:
            problems.append(f"image_channels must be >= 1, got {self.image_channels}")
        if len(resolution) != 2 or min(resolution) < 1:
            problems.append(f"resolution must be (H, W) with H, W >= 1, got {self.resolution}")
        if self.model_channels < 1 or not self.channel_mult or min(self.channel_mult) < 1:
            problems.append(f"need model_channels >= 1 and channel_mult entries >= 1, got "
                            f"{self.model_channels}, {self.channel_mult}")
        if self.num_blocks < 1:
            problems.append(f"num_blocks must be >= 1, got {self.num_blocks}")
        if any(not 0 <= a < len(self.channel_mult) for a in self.attention_levels):
            problems.append(f"attention_levels {self.attention_levels} must index the {len(self.channel_mult)} levels")
        if self.attention_heads < 1 or any(self.model_channels * m % self.attention_heads
                                           for m in self.channel_mult):
            problems.append(f"attention_heads ({self.attention_heads}) must divide every level's width")
        if not 0 <= self.dropout < 1:
            problems.append(f"dropout must be in [0, 1), got {self.dropout}")
        if self.groups < 1 or not self.sigma_data > 0:
            problems.append(f"need groups >= 1 and sigma_data > 0, got {self.groups}, {self.sigma_data}")
        if problems:
            raise NetworkError("bad network config: " + "; ".join(problems))

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return (self.image_channels, *self.resolution)

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_dict(cls, values: dict) -> "NetworkConfig":
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise NetworkError(f"network config has unknown field(s) {unknown}: written by a newer version?")
        return cls(**values)


# ---------------------------------------------------------------------------------------
# The U-Net F(c_in z, c_noise)
# ---------------------------------------------------------------------------------------
def _norm(channels: int, groups: int) -> nn.GroupNorm:
    return nn.GroupNorm(math.gcd(channels, groups), channels, eps=1e-6)


class PositionalEmbedding(nn.Module):
    """Sinusoidal embedding of the scalar noise label c_noise (as in EDM's DDPM++)."""

    def __init__(self, channels: int, max_positions: int = 10000):
        super().__init__()
        half = channels // 2
        freqs = (1 / max_positions) ** (torch.arange(half, dtype=torch.float32) / max(half - 1, 1))
        self.register_buffer("freqs", freqs, persistent=False)

    def forward(self, c_noise: torch.Tensor) -> torch.Tensor:
        angles = c_noise.float()[:, None] * self.freqs[None, :]
        return torch.cat([angles.cos(), angles.sin()], dim=1)


class ResidualBlock(nn.Module):
    """GroupNorm-SiLU-conv twice, the noise embedding as a per-channel scale and shift
    (adaptive group norm), an identity or 1x1 skip, scaled by 1/sqrt(2). The last conv
    starts at zero, so every block starts as its skip path."""

    def __init__(self, in_channels: int, out_channels: int, embedding_channels: int, groups: int,
                 dropout: float, attention_heads: int = 0):
        super().__init__()
        self.norm0 = _norm(in_channels, groups)
        self.conv0 = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        self.affine = nn.Linear(embedding_channels, 2 * out_channels)
        self.norm1 = _norm(out_channels, groups)
        self.dropout = nn.Dropout(dropout)
        self.conv1 = nn.Conv2d(out_channels, out_channels, 3, padding=1)
        nn.init.zeros_(self.conv1.weight)
        nn.init.zeros_(self.conv1.bias)
        self.skip = nn.Conv2d(in_channels, out_channels, 1) if in_channels != out_channels else nn.Identity()
        self.attention = SelfAttention(out_channels, attention_heads, groups) if attention_heads else None

    def forward(self, x: torch.Tensor, embedding: torch.Tensor) -> torch.Tensor:
        h = self.conv0(F.silu(self.norm0(x)))
        scale, shift = self.affine(embedding)[:, :, None, None].chunk(2, dim=1)
        h = F.silu(torch.addcmul(shift, self.norm1(h), scale + 1))
        h = self.conv1(self.dropout(h))
        x = (h + self.skip(x)) * (1 / math.sqrt(2))
        if self.attention is not None:
            x = self.attention(x)
        return x


class SelfAttention(nn.Module):
    """Multi-head self-attention over pixels, residual, output projection starting at zero."""

    def __init__(self, channels: int, heads: int, groups: int):
        super().__init__()
        self.heads = heads
        self.norm = _norm(channels, groups)
        self.qkv = nn.Conv2d(channels, 3 * channels, 1)
        self.proj = nn.Conv2d(channels, channels, 1)
        nn.init.zeros_(self.proj.weight)
        nn.init.zeros_(self.proj.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        q, k, v = self.qkv(self.norm(x)).reshape(b, 3, self.heads, c // self.heads, h * w).unbind(1)
        out = F.scaled_dot_product_attention(q.transpose(-1, -2), k.transpose(-1, -2), v.transpose(-1, -2))
        out = out.transpose(-1, -2).reshape(b, c, h, w)
        return (x + self.proj(out)) * (1 / math.sqrt(2))


class UNet(nn.Module):
    """The raw network F(x, c_noise) of the preconditioned denoiser (any x, no range)."""

    def __init__(self, config: NetworkConfig):
        super().__init__()
        self.config = config
        ch, groups, drop = config.model_channels, config.groups, config.dropout
        emb = config.embedding_channels or 4 * ch
        heads = config.attention_heads
        widths = [ch * m for m in config.channel_mult]
        self.levels = len(widths)

        self.noise_embedding = PositionalEmbedding(ch)
        self.embedding = nn.Sequential(nn.Linear(ch, emb), nn.SiLU(), nn.Linear(emb, emb), nn.SiLU())
        self.conv_in = nn.Conv2d(config.image_channels, widths[0], 3, padding=1)

        self.down = nn.ModuleList()
        skips, width = [widths[0]], widths[0]
        for level, out in enumerate(widths):
            if level > 0:
                self.down.append(Downsample(width))
                skips.append(width)
            for _ in range(config.num_blocks):
                attn = heads if level in config.attention_levels else 0
                self.down.append(ResidualBlock(width, out, emb, groups, drop, attn))
                width = out
                skips.append(width)
        self.middle = nn.ModuleList([ResidualBlock(width, width, emb, groups, drop, heads),
                                     ResidualBlock(width, width, emb, groups, drop, 0)])
        self.up = nn.ModuleList()
        for level in reversed(range(self.levels)):
            out = widths[level]
            for _ in range(config.num_blocks + 1):
                attn = heads if level in config.attention_levels else 0
                self.up.append(ResidualBlock(width + skips.pop(), out, emb, groups, drop, attn))
                width = out
            if level > 0:
                self.up.append(Upsample(width))
        self.norm_out = _norm(width, groups)
        self.conv_out = nn.Conv2d(width, config.image_channels, 3, padding=1)
        nn.init.zeros_(self.conv_out.weight)
        nn.init.zeros_(self.conv_out.bias)

    def forward(self, x: torch.Tensor, c_noise: torch.Tensor) -> torch.Tensor:
        embedding = self.embedding(self.noise_embedding(c_noise))
        height, width = x.shape[-2:]
        multiple = 2 ** (self.levels - 1)
        pad_h, pad_w = -height % multiple, -width % multiple
        if pad_h or pad_w:
            x = F.pad(x, (0, pad_w, 0, pad_h), mode="replicate")
        h = self.conv_in(x)
        skips = [h]
        for layer in self.down:
            h = layer(h, embedding) if isinstance(layer, ResidualBlock) else layer(h)
            skips.append(h)
        for layer in self.middle:
            h = layer(h, embedding)
        for layer in self.up:
            if isinstance(layer, ResidualBlock):
                h = layer(torch.cat([h, skips.pop()], dim=1), embedding)
            else:
                h = layer(h)
        out = self.conv_out(F.silu(self.norm_out(h)))
        return out[..., :height, :width]


class Downsample(nn.Module):
    """A stride-2 3x3 conv: half the resolution, same width."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, stride=2, padding=1)

    def forward(self, x):
        return self.conv(x)


class Upsample(nn.Module):
    """Nearest-neighbour x2 after a 3x3 conv at the lower resolution (4x cheaper than after)."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x):
        return F.interpolate(self.conv(x), scale_factor=2.0, mode="nearest")


# ---------------------------------------------------------------------------------------
# EDM preconditioning (Karras et al. 2022, Table 1)
# ---------------------------------------------------------------------------------------
def edm_preconditioning(sigma: torch.Tensor, sigma_data: float = SIGMA_DATA):
    """(c_skip, c_out, c_in, c_noise) for noise levels sigma (EDM Table 1)."""
    total = sigma.square() + sigma_data**2
    c_skip = sigma_data**2 / total
    c_out = sigma * sigma_data / total.sqrt()
    c_in = 1 / total.sqrt()
    c_noise = sigma.log() / 4
    return c_skip, c_out, c_in, c_noise


def sigma_batch(sigma, z: torch.Tensor) -> torch.Tensor:
    """sigma as a float32 vector [B] on z's device: accepts a scalar, [B] or [B, 1, 1, 1]."""
    sigma = torch.as_tensor(sigma, dtype=torch.float32, device=z.device).reshape(-1)
    if sigma.numel() == 1:
        sigma = sigma.expand(z.shape[0])
    if sigma.shape != (z.shape[0],):
        raise NetworkError(f"sigma must be a scalar or one value per sample [{z.shape[0]}], got {sigma.numel()} values")
    return sigma


class EDMPrecond(nn.Module):
    """D(z, sigma) = c_skip z + c_out F(c_in z, c_noise): the project's denoiser network."""

    def __init__(self, config: NetworkConfig):
        super().__init__()
        self.config = config
        self.sigma_data = config.sigma_data
        self.model = UNet(config)

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return self.config.image_shape

    def forward(self, z: torch.Tensor, sigma) -> torch.Tensor:
        """D(z, sigma) for z [B, C, H, W] and sigma a scalar or one per sample (EDM Table 1)."""
        if z.ndim != 4 or tuple(z.shape[1:]) != self.config.image_shape:
            c, h, w = self.config.image_shape
            raise NetworkError(f"network takes [B, {c}, {h}, {w}], got {tuple(z.shape)}")
        sigma = sigma_batch(sigma, z)
        c_skip, c_out, c_in, c_noise = (c[:, None, None, None] for c in edm_preconditioning(sigma, self.sigma_data))
        F_x = self.model((c_in * z).float(), c_noise.flatten())
        return c_skip.to(z.dtype) * z + c_out.to(z.dtype) * F_x.to(z.dtype)

    def parameter_count(self) -> int:
        return sum(p.numel() for p in self.parameters())
