"""Denoiser networks with the EDM interface net(z, sigma) -> D(z, sigma) (Karras et al. 2022).

Two things live here:

- The project's own small U-Net (`UNet`) inside the EDM preconditioning (`EDMPrecond`,
  EDM Table 1): D(z, sigma) = c_skip z + c_out F(c_in z, c_noise) with
  c_skip = sd^2 / (sigma^2 + sd^2), c_out = sigma sd / sqrt(sigma^2 + sd^2),
  c_in = 1 / sqrt(sigma^2 + sd^2), c_noise = ln(sigma) / 4 and sd = sigma_data = 0.5.
  z and D are in data units (x in [-1, 1] plus noise); D is not clipped, so gradients
  (Eq. 8 sensitivity maps) see the network as it is. Checkpoints hold plain tensors and a
  JSON config (`torch.load(weights_only=True)`: no code is unpickled).
- `load_network`: one entry point for every network the comparison accepts (a project
  checkpoint, a TorchScript module with net(z, sigma), an EDM pickle, an epsilon-prediction
  variance-preserving model converted to x-prediction, or an in-memory module), checked
  against the training set's channels and resolution, returned as a `NetworkDenoiser`.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import math
import os
import pickle
import warnings
import zipfile
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from pspc.denoisers import NetworkDenoiser
from pspc.data.training_set import TrainingSet

CHECKPOINT_FORMAT = "pspc-unet"
CHECKPOINT_VERSION = 1
SIGMA_DATA = 0.5  # EDM's sigma_data for data in [-1, 1]


class NetworkError(ValueError):
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
        raise ValueError(f"sigma must be a scalar or one value per sample [{z.shape[0]}], got {sigma.numel()} values")
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
        if z.ndim != 4 or tuple(z.shape[1:]) != self.config.image_shape:
            c, h, w = self.config.image_shape
            raise ValueError(f"network takes [B, {c}, {h}, {w}], got {tuple(z.shape)}")
        sigma = sigma_batch(sigma, z)
        c_skip, c_out, c_in, c_noise = (c[:, None, None, None] for c in edm_preconditioning(sigma, self.sigma_data))
        F_x = self.model((c_in * z).float(), c_noise.flatten())
        return c_skip.to(z.dtype) * z + c_out.to(z.dtype) * F_x.to(z.dtype)

    def parameter_count(self) -> int:
        return sum(p.numel() for p in self.parameters())


# ---------------------------------------------------------------------------------------
# Checkpoints: plain tensors + JSON
# ---------------------------------------------------------------------------------------
def save_network(path: str | os.PathLike, net: EDMPrecond, *, half: bool = False, record: dict | None = None,
                 extra: dict | None = None) -> Path:
    """Write the network as {format, version, config (JSON), weights, record (JSON)}.

    half=True stores float16 weights (half the size; `load_checkpoint` converts back to
    float32). `extra` adds tensor/primitive entries (the trainer's resume state). The file
    is written beside the target and renamed, so an interrupted save never leaves a
    truncated checkpoint."""
    path = Path(path)
    weights = {k: (v.detach().half() if half and v.is_floating_point() else v.detach()).cpu().clone()
               for k, v in net.state_dict().items()}
    payload = {"format": CHECKPOINT_FORMAT, "version": CHECKPOINT_VERSION, "config": net.config.to_json(),
               "weights": weights, "weights_dtype": "float16" if half else "float32",
               "record": json.dumps(record or {}, default=str), **(extra or {})}
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    torch.save(payload, partial)
    os.replace(partial, path)
    return path


def read_checkpoint(path: str | os.PathLike) -> dict:
    """The raw checkpoint dict (tensors and primitives only), validated for format."""
    path = Path(path)
    if not path.is_file():
        raise NetworkError(f"{path}: no such checkpoint file")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unreadable file is reported the same way
        raise NetworkError(f"{path}: not a readable checkpoint ({type(exc).__name__}: {str(exc).splitlines()[0]})") from None
    if not isinstance(payload, dict) or payload.get("format") != CHECKPOINT_FORMAT:
        keys = sorted(payload)[:8] if isinstance(payload, dict) else type(payload).__name__
        raise NetworkError(f"{path}: a torch file but not a {CHECKPOINT_FORMAT} checkpoint (found {keys}); "
                           f"TorchScript modules load directly, state dicts need their architecture")
    if payload.get("version") != CHECKPOINT_VERSION:
        raise NetworkError(f"{path}: checkpoint version {payload.get('version')}, this code reads {CHECKPOINT_VERSION}")
    for key in ("config", "weights"):
        if key not in payload:
            raise NetworkError(f"{path}: checkpoint lacks its {key!r} entry")
    return payload


def load_checkpoint(path: str | os.PathLike) -> tuple[EDMPrecond, dict]:
    """(network in eval mode with float32 weights, training record) from a project checkpoint."""
    path = Path(path)
    payload = read_checkpoint(path)
    try:
        config = NetworkConfig.from_dict(json.loads(payload["config"]))
        net = EDMPrecond(config)
        weights = {k: v.float() if v.is_floating_point() else v for k, v in payload["weights"].items()}
        net.load_state_dict(weights)
        record = json.loads(payload.get("record") or "{}")
    except (NetworkError, ValueError, RuntimeError, TypeError) as exc:
        raise NetworkError(f"{path}: checkpoint does not match its config ({str(exc).splitlines()[0]})") from None
    return net.eval(), record


# ---------------------------------------------------------------------------------------
# Other networks: EDM pickles, VP epsilon-prediction models
# ---------------------------------------------------------------------------------------
class EDMPickleNetwork(nn.Module):
    """An EDM network (`EDMPrecond`, `VPPrecond`, ... from NVlabs/edm): unconditional use,
    float32 output."""

    def __init__(self, module: nn.Module):
        super().__init__()
        self.module = module

    def forward(self, z: torch.Tensor, sigma) -> torch.Tensor:
        sigma = sigma_batch(sigma, z)
        return self.module(z.float(), sigma).to(z.dtype)


class VPEpsilonNetwork(nn.Module):
    """An epsilon-prediction variance-preserving model as an EDM x-predictor (paper Eq. 13).

    The VP forward process x_s = sqrt(a_s) x + sqrt(1 - a_s) eps (a_s = alpha-bar at step s)
    is z = x + sigma eps scaled by sqrt(a_s), with sigma = sqrt((1 - a_s) / a_s). So for EDM
    noise level sigma the model sees x_s = z / sqrt(1 + sigma^2) at the step s(sigma), and

        D(z, sigma) = z - sigma * eps_theta(z / sqrt(1 + sigma^2), s(sigma)).

    `alphas_cumprod` [M] is the model's discrete schedule; s(sigma) is the step whose sigma
    is nearest in log sigma ("nearest", as EDM does for iDDPM) or the fractional step
    interpolated linearly in log sigma ("interpolate", for models with continuous time
    embeddings). The exact sigma is always used in the conversion itself.
    """

    def __init__(self, model: nn.Module, alphas_cumprod, timestep: str = "nearest"):
        super().__init__()
        alphas = torch.as_tensor(alphas_cumprod, dtype=torch.float64).flatten()
        if alphas.numel() < 2 or not ((alphas > 0) & (alphas < 1)).all():
            raise NetworkError("alphas_cumprod must hold at least 2 values in (0, 1)")
        if not (alphas[1:] < alphas[:-1]).all():
            raise NetworkError("alphas_cumprod must decrease with the step (more noise at later steps)")
        if timestep not in ("nearest", "interpolate"):
            raise NetworkError(f"timestep must be 'nearest' or 'interpolate', got {timestep!r}")
        self.model = model
        self.timestep = timestep
        self.register_buffer("log_sigmas", (((1 - alphas) / alphas).sqrt().log()).float())

    @staticmethod
    def linear_schedule(beta_start: float = 1e-4, beta_end: float = 0.02, steps: int = 1000) -> torch.Tensor:
        """alpha-bar of the DDPM linear beta schedule (Ho et al. 2020)."""
        betas = torch.linspace(beta_start, beta_end, steps, dtype=torch.float64)
        return torch.cumprod(1 - betas, 0)

    def steps(self, sigma: torch.Tensor) -> torch.Tensor:
        """s(sigma): the model's step for each noise level (float steps for 'interpolate')."""
        log_sigma = sigma.float().log()
        if self.timestep == "nearest":
            return (log_sigma[:, None] - self.log_sigmas[None, :]).abs().argmin(1)
        grid = self.log_sigmas
        right = torch.searchsorted(grid, log_sigma.contiguous()).clamp(1, grid.numel() - 1)
        left = right - 1
        frac = ((log_sigma - grid[left]) / (grid[right] - grid[left])).clamp(0, 1)
        return left.float() + frac

    def forward(self, z: torch.Tensor, sigma) -> torch.Tensor:
        sigma = sigma_batch(sigma, z)
        x_vp = z.float() / (1 + sigma.square()).sqrt()[:, None, None, None]
        eps = self.model(x_vp, self.steps(sigma))
        return (z - sigma.to(z.dtype)[:, None, None, None] * eps.to(z.dtype))


# ---------------------------------------------------------------------------------------
# One loader for all of them
# ---------------------------------------------------------------------------------------
NETWORK_KINDS = ("auto", "checkpoint", "torchscript", "edm-pickle", "module", "vp-epsilon")


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def detect_kind(path: Path) -> str:
    """'checkpoint' (torch.save zip), 'torchscript' (zip with code/) or 'edm-pickle' (plain pickle)."""
    if not path.is_file():
        raise NetworkError(f"{path}: no such network file")
    if zipfile.is_zipfile(path):
        try:
            with zipfile.ZipFile(path) as archive:
                names = archive.namelist()
        except (zipfile.BadZipFile, OSError) as exc:
            raise NetworkError(f"{path}: damaged archive ({exc})") from None
        if any("/code/" in n for n in names) or any(n.endswith("constants.pkl") for n in names):
            return "torchscript"
        if any(n.endswith("data.pkl") for n in names):
            return "checkpoint"
        raise NetworkError(f"{path}: a zip archive but neither a torch checkpoint nor a TorchScript module")
    with open(path, "rb") as f:
        head = f.read(2)
    if len(head) == 2 and head[0] == 0x80 and 2 <= head[1] <= 5:
        return "edm-pickle"
    raise NetworkError(f"{path}: unrecognised network file (expected a {CHECKPOINT_FORMAT} checkpoint, "
                       f"a TorchScript module or an EDM .pkl)")


def _edm_source_importable() -> bool:
    return all(importlib.util.find_spec(name) is not None for name in ("dnnlib", "torch_utils"))


def _load_edm_pickle(path: Path) -> tuple[nn.Module, tuple[int, int, int] | None, dict]:
    """The ['ema'] network of an EDM training snapshot. EDM pickles embed their source and
    unpickling runs it: load only files you trust."""
    if not _edm_source_importable():
        raise NetworkError(f"{path}: EDM pickles need the EDM source (its dnnlib and torch_utils packages) "
                           f"on PYTHONPATH, e.g. PYTHONPATH=/path/to/NVlabs/edm")
    try:
        with open(path, "rb") as f:
            snapshot = pickle.load(f)  # noqa: S301 - EDM's format; see docstring
    except Exception as exc:  # noqa: BLE001
        raise NetworkError(f"{path}: cannot unpickle the EDM snapshot ({type(exc).__name__}: {exc})") from None
    if not isinstance(snapshot, dict) or "ema" not in snapshot or not isinstance(snapshot["ema"], nn.Module):
        found = sorted(snapshot)[:8] if isinstance(snapshot, dict) else type(snapshot).__name__
        raise NetworkError(f"{path}: expected an EDM snapshot dict with an 'ema' network, found {found}")
    module = snapshot["ema"]
    if int(getattr(module, "label_dim", 0) or 0) > 0:
        raise NetworkError(f"{path}: class-conditional EDM network (label_dim={module.label_dim}); "
                           f"only unconditional networks are supported")
    shape = None
    if hasattr(module, "img_channels") and hasattr(module, "img_resolution"):
        r = module.img_resolution
        shape = (int(module.img_channels), *(tuple(r) if isinstance(r, (tuple, list)) else (int(r), int(r))))
    info = {"class": f"{type(module).__module__}.{type(module).__qualname__}"}
    return EDMPickleNetwork(module.eval().requires_grad_(False)), shape, info


def _load_torchscript(path: Path, device) -> nn.Module:
    try:
        return torch.jit.load(str(path), map_location=device)
    except Exception as exc:  # noqa: BLE001
        raise NetworkError(f"{path}: not a loadable TorchScript module ({type(exc).__name__}: "
                           f"{str(exc).splitlines()[0] if str(exc) else ''})") from None


def _shape_text(shape) -> str:
    c, h, w = shape
    return f"{c} channel(s) at {h}x{w}"


def check_network(net: nn.Module, image_shape: tuple[int, int, int], where: str) -> None:
    """Run the network once on [2, C, H, W] (two noise levels): it must accept the shape
    and return the same shape, finite."""
    device = next((p.device for p in list(net.parameters()) + list(net.buffers())), torch.device("cpu"))
    z = torch.randn((2, *image_shape), generator=torch.Generator().manual_seed(0)).to(device)
    sigma = torch.tensor([0.5, 5.0], device=device)
    try:
        with torch.no_grad():
            out = net(z, sigma)
    except Exception as exc:  # noqa: BLE001 - the network's own message says what it wanted
        message = str(exc).strip().splitlines()
        raise NetworkError(f"{where}: the network fails on the training set's images ({_shape_text(image_shape)}): "
                           f"{type(exc).__name__}: {message[-1] if message else ''}") from None
    if not isinstance(out, torch.Tensor) or tuple(out.shape) != tuple(z.shape):
        got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise NetworkError(f"{where}: net(z, sigma) returned {got} for z of shape {tuple(z.shape)}; "
                           f"expected the EDM interface (same shape as z)")
    if not torch.isfinite(out).all():
        raise NetworkError(f"{where}: the network returns NaN or infinite values")


def _open_source(source, kind: str, device) -> tuple[nn.Module, str, str, tuple | None, dict]:
    """(module, kind, where, image shape if the network records one, provenance) for a path or module."""
    if isinstance(source, nn.Module):
        where = type(source).__name__
        if isinstance(source, EDMPrecond):
            return source, "checkpoint" if kind == "auto" else kind, where, source.config.image_shape, \
                {"config": json.loads(source.config.to_json())}
        return source, "module" if kind == "auto" else kind, where, None, {}
    path = Path(source)
    detected = detect_kind(path)
    record = {"path": str(path.resolve()), "sha256": _sha256(path), "file": detected}
    if kind == "vp-epsilon":
        if detected == "checkpoint":
            raise NetworkError(f"{path}: a {CHECKPOINT_FORMAT} checkpoint is an x-predictor; drop kind='vp-epsilon'")
        model = _load_torchscript(path, device) if detected == "torchscript" else _load_edm_pickle(path)[0]
        return model, kind, str(path), None, record
    if kind not in ("auto", detected):
        raise NetworkError(f"{path}: is a {detected} file, not {kind}")
    if detected == "torchscript":
        return _load_torchscript(path, device), detected, str(path), None, record
    if detected == "edm-pickle":
        net, shape, info = _load_edm_pickle(path)
        return net, detected, str(path), shape, {**record, **info}
    net, trained = load_checkpoint(path)
    record["config"] = json.loads(net.config.to_json())
    record["training"] = {k: trained[k] for k in ("command", "iterations", "final_loss", "dataset") if k in trained}
    return net, detected, str(path), net.config.image_shape, record


def load_network(source, training_set: TrainingSet | None = None, *, image_shape=None, kind: str = "auto",
                 alphas_cumprod=None, timestep: str = "nearest", device="cpu", name: str | None = None,
                 check: bool = True) -> NetworkDenoiser:
    """A denoiser network as a `NetworkDenoiser` (D(z, t) = net(z, sigma = t)).

    source: a path (project checkpoint, TorchScript file with net(z, sigma), EDM .pkl
    snapshot whose ['ema'] is used) or an nn.Module with net(z, sigma). kind="vp-epsilon"
    wraps an epsilon-prediction VP model eps(x_s, step) (TorchScript file, EDM-style pickle
    or module) with `VPEpsilonNetwork(alphas_cumprod, timestep)`. The image shape comes from
    the network when it records one, else from the training set or `image_shape`; when
    several are known they must agree, and the network is probed once on that shape
    (check=False skips the probe). describe() of the result records the source (path,
    sha256, kind, config, how it was trained).
    """
    if kind not in NETWORK_KINDS:
        raise NetworkError(f"unknown network kind {kind!r}; choose one of {', '.join(NETWORK_KINDS)}")
    net, kind, where, net_shape, record = _open_source(source, kind, device)
    if kind == "vp-epsilon":
        if alphas_cumprod is None:
            raise NetworkError(f"{where}: kind='vp-epsilon' needs the model's alphas_cumprod schedule "
                               f"(e.g. VPEpsilonNetwork.linear_schedule())")
        net = VPEpsilonNetwork(net, alphas_cumprod, timestep)
        record.update(conversion="D = z - sigma * eps(z / sqrt(1 + sigma^2), s(sigma)) (Eq. 13)",
                      timestep=timestep, schedule_steps=int(net.log_sigmas.numel()))

    data_shape = tuple(training_set.image_shape) if training_set is not None else None
    given = tuple(int(v) for v in image_shape) if image_shape is not None else None
    if net_shape is not None:
        for other, what in ((data_shape, "the training set"), (given, "image_shape")):
            if other is not None and tuple(other) != tuple(net_shape):
                raise NetworkError(f"{where}: the network takes {_shape_text(net_shape)}, "
                                   f"{what} has {_shape_text(other)}")
    if data_shape is not None and given is not None and data_shape != given:
        raise NetworkError(f"image_shape {given} disagrees with the training set ({_shape_text(data_shape)})")
    shape = tuple(net_shape or data_shape or given or ())
    if not shape:
        raise NetworkError(f"{where}: the network does not record its image shape; pass the training set "
                           f"or image_shape")
    net = net.to(device).eval()
    if check:
        check_network(net, shape, where)
    record.update(kind=kind, image_shape=list(shape))
    return NetworkDenoiser(net, shape, name=name or Path(where).stem, record=record)


def export_torchscript(net: nn.Module, path: str | os.PathLike, image_shape=None) -> Path:
    """Trace net(z, sigma) to a TorchScript file any EDM-interface consumer can load."""
    shape = tuple(image_shape or net.config.image_shape)
    z = torch.zeros((2, *shape))
    sigma = torch.tensor([0.5, 2.0])
    was_training = net.training
    net.eval()
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore", torch.jit.TracerWarning)  # shape checks are constant at a fixed shape
        traced = torch.jit.trace(net, (z, sigma), check_trace=False)
    net.train(was_training)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    traced.save(str(path))
    return path
