"""Image descriptors for copy detection: SSCD (Pizzi et al., CVPR 2022) and a named fallback.

A descriptor maps images [B, C, H, W] (uint8, or float in the diffusion range [-1, 1]) to
L2-normalised float32 vectors [B, D], so that the inner product of two descriptors is their
cosine similarity. Every descriptor says exactly what it computed (`describe()`: name,
checkpoint sha256, preprocessing, versions), because a similarity score means nothing
without the model and preprocessing behind it.

- :class:`SSCDDescriptor` runs an official SSCD TorchScript checkpoint (for example
  ``sscd_disc_mixup``, 512-d), loaded from a local file or downloaded once from a URL into a
  cache and verified against a pinned sha256. Preprocessing is what the SSCD authors
  recommend: ``resize-288`` (short edge to 288, aspect kept) or ``fixed-320`` (320x320,
  skewed), bilinear with antialiasing (as PIL), ImageNet mean/std, grayscale replicated to 3
  channels.
- :class:`PixelCorrelationDescriptor` ("pixel-correlation") is the fallback used when no
  SSCD checkpoint is configured: the Pearson correlation of downscaled grayscale pixels. It
  is not learned and not SSCD, and its name says so in every record.
- The learned copy descriptor ("fmnist-copy", "learned:PATH") is a small CNN trained
  SSCD-style on one domain's training images (auditor.similarity.learned_descriptor).

Float inputs are first rounded to 8-bit pixels exactly as ``pspc.data.training_set.to_uint8``
does, so a generated sample scores the same whether passed as floats or as its saved PNG,
and the same as the uint8 training images it is compared with.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import re
import urllib.parse
import warnings
from abc import ABC, abstractmethod
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

from auditor.similarity.checkpoints import (
    CACHE_ENV, OFFICIAL_SSCD_CHECKPOINTS, DescriptorError, OfficialCheckpoint, check_sha256, default_cache_dir, download,
    is_url, split_pinned_url,
)
from auditor.similarity.learned_descriptor import CHECKPOINT_FORMAT, NetConfig, read_learned_checkpoint
from pspc.record import file_sha256

__all__ = [
    "CACHE_ENV",
    "CHECKPOINT_ENV",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "OFFICIAL_SSCD_CHECKPOINTS",
    "PREPROCESSING_ENV",
    "SHA256_ENV",
    "Descriptor",
    "DescriptorError",
    "FallbackDescriptorWarning",
    "LearnedDescriptor",
    "OfficialCheckpoint",
    "PixelCorrelationDescriptor",
    "Preprocessing",
    "SSCDDescriptor",
    "default_cache_dir",
    "file_sha256",
    "learned_preprocessing",
    "load_descriptor",
    "to_unit_range",
]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
LUMA_WEIGHTS = (0.299, 0.587, 0.114)  # ITU-R 601-2, as PIL's convert("L")

CHECKPOINT_ENV = "PSPC_SSCD_CHECKPOINT"  # the checkpoint load_descriptor() uses by default
SHA256_ENV = "PSPC_SSCD_SHA256"  # its pinned sha256 (required for URLs)
PREPROCESSING_ENV = "PSPC_SSCD_PREPROCESSING"  # resize-288 (default) or fixed-320

# Samples overshoot [-1, 1] (the Gaussian denoiser's reach +-2 on Fashion-MNIST) and are clipped
# as a saved image would be; floats beyond +-10 are refused as the wrong range (0-255 data).
FLOAT_LIMIT = 10.0


class FallbackDescriptorWarning(UserWarning):
    """No SSCD checkpoint is configured, so the non-learned pixel-correlation fallback is used."""


# -- input and preprocessing -------------------------------------------------------------

def to_unit_range(images) -> torch.Tensor:
    """Images [B, C, H, W] as float32 in [0, 1] on 8-bit levels (uint8 / 255).

    uint8 is taken as is; floats must be in [-1, 1] (the diffusion range) and are rounded to
    uint8 as ``pspc.data.training_set.to_uint8`` does (values outside are clipped, as in a saved
    image; values beyond +-10 are refused as a wrong range such as [0, 255]).
    """
    if isinstance(images, np.ndarray):
        images = torch.from_numpy(np.ascontiguousarray(images))
    if not isinstance(images, torch.Tensor):
        raise DescriptorError(f"images must be a tensor or array [B, C, H, W], got {type(images).__name__}")
    if images.ndim != 4:
        raise DescriptorError(f"images must be [B, C, H, W], got shape {tuple(images.shape)}")
    if images.shape[1] not in (1, 3):
        raise DescriptorError(f"images must have 1 or 3 channels, got {images.shape[1]} (shape {tuple(images.shape)})")
    if images.shape[2] < 1 or images.shape[3] < 1:
        raise DescriptorError(f"images have empty spatial size {images.shape[2]}x{images.shape[3]}")
    if images.dtype == torch.uint8:
        return images.float() / 255.0
    if not images.is_floating_point():
        raise DescriptorError(f"images must be uint8 or float in [-1, 1], got {images.dtype}")
    images = images.detach().float()
    if images.numel():
        finite = torch.isfinite(images)
        if not finite.all():
            bad = (~finite).flatten(1).any(1).nonzero().flatten().tolist()
            raise DescriptorError(f"images hold NaN or infinite values (batch rows {bad[:10]})")
        low, high = images.min().item(), images.max().item()
        if low < -FLOAT_LIMIT or high > FLOAT_LIMIT:
            raise DescriptorError(
                f"float images must be in [-1, 1] (the diffusion range; overshoot is clipped); got values in "
                f"[{low:.3g}, {high:.3g}]. Pass uint8 pixels for 0-255 data.")
    return ((images + 1.0) * 127.5).round().clamp(0, 255) / 255.0


_NAMED_POLICY = re.compile(r"^(resize|fixed)-(\d+)$")


@dataclass(frozen=True)
class Preprocessing:
    """How images become model input: resize policy and size, channels, normalisation.

    resize: "short-edge" (short edge to `size`, the long one to int(size * long / short), as
    torchvision's Resize(size)) or "fixed" (exactly size x size, aspect not kept).
    channels: "rgb" (grayscale replicated to 3 channels) or "luma" (RGB to one channel).
    mean/std: per-channel normalisation after scaling to [0, 1] (None: none).
    """

    name: str
    resize: str
    size: int
    channels: str = "rgb"
    mean: tuple[float, ...] | None = IMAGENET_MEAN
    std: tuple[float, ...] | None = IMAGENET_STD
    interpolation: str = "bilinear, antialiased (matches PIL to 1/255)"

    def __post_init__(self):
        if self.resize not in ("short-edge", "fixed"):
            raise DescriptorError(f"unknown resize policy {self.resize!r}; expected 'short-edge' or 'fixed'")
        if self.channels not in ("rgb", "luma"):
            raise DescriptorError(f"unknown channel handling {self.channels!r}; expected 'rgb' or 'luma'")
        if int(self.size) < 1:
            raise DescriptorError(f"preprocessing size must be positive, got {self.size}")

    @classmethod
    def named(cls, name: str) -> "Preprocessing":
        """SSCD's recommended policies: "resize-288" (short edge) and "fixed-320" (square); any
        "resize-N" / "fixed-N" is accepted, with ImageNet normalisation and RGB channels."""
        if isinstance(name, Preprocessing):
            return name
        match = _NAMED_POLICY.match(str(name).strip())
        if not match:
            raise DescriptorError(
                f"unknown preprocessing {name!r}; expected 'resize-288' (short edge to 288, aspect kept) or "
                "'fixed-320' (320x320), or resize-N / fixed-N")
        policy, size = match.group(1), int(match.group(2))
        return cls(name=f"{policy}-{size}", resize="short-edge" if policy == "resize" else "fixed", size=size)

    def output_size(self, height: int, width: int) -> tuple[int, int]:
        if self.resize == "fixed":
            return self.size, self.size
        if height <= width:  # torchvision Resize(size): the long edge is truncated, not rounded
            return self.size, int(self.size * width / height)
        return int(self.size * height / width), self.size

    def __call__(self, images) -> torch.Tensor:
        """[B, C, H, W] uint8 or float in [-1, 1] -> model input float32 [B, C', H', W']."""
        return self.from_unit(to_unit_range(images))

    def from_unit(self, unit: torch.Tensor) -> torch.Tensor:
        """Preprocess images already in [0, 1] (as `to_unit_range` gives them)."""
        if self.channels == "rgb" and unit.shape[1] == 1:
            unit = unit.expand(-1, 3, -1, -1)
        elif self.channels == "luma" and unit.shape[1] == 3:
            unit = torch.einsum("bchw,c->bhw", unit, unit.new_tensor(LUMA_WEIGHTS))[:, None]
        height, width = self.output_size(unit.shape[2], unit.shape[3])
        if (height, width) != tuple(unit.shape[2:]):
            unit = F.interpolate(unit, size=(height, width), mode="bilinear", align_corners=False, antialias=True)
        if self.mean is not None:
            mean = unit.new_tensor(self.mean)[None, :, None, None]
            std = unit.new_tensor(self.std)[None, :, None, None]
            unit = (unit - mean) / std
        return unit.contiguous()

    def describe(self) -> dict:
        record = asdict(self)
        record["mean"] = list(self.mean) if self.mean is not None else None
        record["std"] = list(self.std) if self.std is not None else None
        record["input"] = "uint8 / 255; floats in [-1, 1] first rounded to uint8 (pspc.data.training_set.to_uint8)"
        record["channel_handling"] = ("grayscale replicated to 3 channels" if self.channels == "rgb"
                                      else "RGB to luma (ITU-R 601-2); grayscale kept")
        return record


# -- the descriptor interface --------------------------------------------------------------

class Descriptor(ABC):
    """images [B, C, H, W] -> L2-normalised float32 [B, D] (on the CPU), computed in batches."""

    name: str
    kind: str
    dimension: int
    preprocessing: Preprocessing
    batch_size: int = 32
    allows_zero = False  # True: a featureless image may get the zero vector (scores 0 with anything)

    def __init__(self, device: torch.device | str = "cpu"):
        self.device = torch.device(device)

    @abstractmethod
    def _embed(self, batch: torch.Tensor) -> torch.Tensor:
        """Preprocessed batch (on self.device) -> raw descriptors [B, D]."""

    @abstractmethod
    def _identity(self) -> dict:
        """What determines the descriptors (model bytes, parameters), without versions or device."""

    def __call__(self, images, batch_size: int | None = None,
                 progress: Callable[[int, int], None] | None = None) -> torch.Tensor:
        """Descriptors [B, D] (CPU float32, unit norm) of images [B, C, H, W], batch by batch."""
        batch_size = int(batch_size or self.batch_size)
        if batch_size < 1:
            raise DescriptorError(f"batch_size must be positive, got {batch_size}")
        if isinstance(images, np.ndarray):
            images = torch.from_numpy(np.ascontiguousarray(images))
        to_unit_range(images[:0] if isinstance(images, torch.Tensor) else images)  # shape and dtype checks
        total = images.shape[0]
        out = torch.empty(total, self.dimension, dtype=torch.float32)
        with torch.inference_mode():
            for start in range(0, total, batch_size):
                chunk = images[start:start + batch_size]
                batch = self.preprocessing(chunk.to(self.device))  # resize where the model runs
                raw = self._embed(batch)
                out[start:start + len(chunk)] = self._normalise(raw, len(chunk), start)
                if progress is not None:
                    progress(min(start + batch_size, total), total)
        return out

    def _normalise(self, raw, rows: int, offset: int) -> torch.Tensor:
        if not isinstance(raw, torch.Tensor):
            raise DescriptorError(f"{self.name}: the model returned {type(raw).__name__}, expected a tensor [B, D]")
        if tuple(raw.shape) != (rows, self.dimension):
            raise DescriptorError(
                f"{self.name}: the model returned shape {tuple(raw.shape)} for {rows} images, "
                f"expected [B, D] = [{rows}, {self.dimension}]")
        raw = raw.detach().to("cpu", torch.float32)
        finite = torch.isfinite(raw).all(1)
        if not finite.all():
            bad = (offset + (~finite).nonzero().flatten()).tolist()
            raise DescriptorError(f"{self.name}: NaN or infinite descriptor for images {bad[:10]}")
        norms = raw.norm(dim=1, keepdim=True)
        if not self.allows_zero and (norms == 0).any():
            bad = (offset + (norms.flatten() == 0).nonzero().flatten()).tolist()
            raise DescriptorError(f"{self.name}: zero descriptor (cannot be L2-normalised) for images {bad[:10]}")
        return raw / norms.clamp_min(torch.finfo(torch.float32).tiny)

    def to(self, device: torch.device | str) -> "Descriptor":
        self.device = torch.device(device)
        return self

    @property
    def fingerprint(self) -> str:
        """sha256 over what determines the descriptors: the key to store scores under."""
        identity = {"name": self.name, "kind": self.kind, "dimension": self.dimension,
                    "preprocessing": self.preprocessing.describe(), **self._identity()}
        return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()

    def describe(self) -> dict:
        """Reproducibility record: name, kind, dimension, preprocessing, model identity, versions."""
        return {"name": self.name, "kind": self.kind, "dimension": self.dimension,
                "preprocessing": self.preprocessing.describe(), **self._identity(),
                "fingerprint": self.fingerprint, "device": str(self.device),
                "versions": {"python": platform.python_version(), "torch": torch.__version__, "numpy": np.__version__}}

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r}, dimension={self.dimension}, preprocessing={self.preprocessing.name!r})"


# -- SSCD ----------------------------------------------------------------------------------

class SSCDDescriptor(Descriptor):
    """An SSCD TorchScript model (Pizzi et al. 2022) with the authors' recommended preprocessing."""

    kind = "sscd"
    batch_size = 32

    def __init__(self, module: torch.jit.ScriptModule, *, name: str, source: str, sha256: str,
                 preprocessing: str | Preprocessing = "resize-288", device: torch.device | str = "cpu",
                 expected_dimension: int | None = None, official: OfficialCheckpoint | None = None):
        super().__init__(device)
        self.module = module.eval().to(self.device)
        self.name = name
        self.source = source
        self.sha256 = sha256
        self.official = official  # set only when fetched from the authors' URL
        self.preprocessing = Preprocessing.named(preprocessing)
        self.dimension = self._probe(expected_dimension)

    @classmethod
    def load(cls, path_or_url: str | os.PathLike, sha256: str | None = None, *,
             cache_dir: str | os.PathLike | None = None, preprocessing: str | Preprocessing = "resize-288",
             device: torch.device | str = "cpu",
             progress: Callable[[int, int | None], None] | None = None) -> "SSCDDescriptor":
        """Load a TorchScript checkpoint from a local file, an http(s)/file URL, or an official name.

        A URL (or official name) is downloaded once into `cache_dir` (default
        :func:`default_cache_dir`) and must be pinned by `sha256` (argument, or a
        ``#sha256=HEX`` URL fragment): the SSCD authors publish no checksums, so compute it
        once from a copy you trust (``sha256sum sscd_disc_mixup.torchscript.pt``). A download
        or cached file that does not match is removed and the load fails (a stale cached copy
        is fetched again first). A local file is verified when `sha256` is given, never removed.
        """
        spec = os.fspath(path_or_url)
        sha256 = check_sha256(sha256, spec)
        official = OFFICIAL_SSCD_CHECKPOINTS.get(spec)
        if official is None and is_url(spec):
            official = next((c for c in OFFICIAL_SSCD_CHECKPOINTS.values() if c.url == split_pinned_url(spec)[0]), None)
        if official is not None and not is_url(spec):
            url, name, expected_dimension = official.url, official.name, official.dimension
            sha256 = sha256 or official.sha256
        elif is_url(spec):
            url, pinned = split_pinned_url(spec)
            pinned = check_sha256(pinned, spec)
            if sha256 and pinned and sha256 != pinned:
                raise DescriptorError(f"{spec}: the sha256 argument {sha256} contradicts the URL's #sha256={pinned}")
            sha256 = sha256 or pinned
            name, expected_dimension = cls._name_for(url)
        else:
            path = Path(spec).expanduser()
            if not path.is_file():
                hint = f"; official names: {', '.join(OFFICIAL_SSCD_CHECKPOINTS)}" if os.sep not in spec else ""
                raise DescriptorError(f"{spec}: no such checkpoint file{hint}")
            actual = file_sha256(path)
            if sha256 and actual != sha256:
                raise DescriptorError(f"{path}: sha256 mismatch: expected {sha256}, got {actual} (file left in place)")
            name, expected_dimension = cls._name_for(path.name)
            return cls(cls._jit_load(path), name=name, source=str(path.resolve()), sha256=actual,
                       preprocessing=preprocessing, device=device, expected_dimension=expected_dimension)

        if not sha256:
            raise DescriptorError(
                f"{url}: downloading needs a pinned sha256 (sha256=... or a '#sha256=HEX' URL fragment). The SSCD "
                "authors publish no checksums: download the file once from a source you trust, run sha256sum on it, "
                "and pass that value (or load the local file directly).")
        cache = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
        basename = Path(urllib.parse.urlsplit(url).path).name or "checkpoint.pt"
        cached = cache / f"{sha256[:16]}-{basename}"
        if cached.is_file() and file_sha256(cached) != sha256:
            cached.unlink()  # corrupted or truncated copy: fetch again
        if not cached.is_file():
            download(url, cached, sha256, progress)
        return cls(cls._jit_load(cached), name=name, source=url, sha256=sha256, preprocessing=preprocessing,
                   device=device, expected_dimension=expected_dimension, official=official)

    @staticmethod
    def _name_for(location: str) -> tuple[str, int | None]:
        stem = Path(urllib.parse.urlsplit(location).path).name
        for suffix in (".pt", ".pth", ".torchscript"):
            stem = stem[: -len(suffix)] if stem.endswith(suffix) else stem
        official = OFFICIAL_SSCD_CHECKPOINTS.get(stem)
        return stem or "sscd", (official.dimension if official else None)

    @staticmethod
    def _jit_load(path: Path) -> torch.jit.ScriptModule:
        try:
            with warnings.catch_warnings():  # TorchScript is deprecated, but it is the format SSCD ships
                warnings.filterwarnings("ignore", message=".*torch.jit.load.* is deprecated", category=DeprecationWarning)
                return torch.jit.load(str(path), map_location="cpu")
        except Exception as error:  # torch raises RuntimeError, ValueError or pickle errors here
            first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
            raise DescriptorError(
                f"{path}: not a TorchScript file ({first}). SSCD needs the '.torchscript.pt' checkpoints, "
                "not the '.classy.pt' / '.torchvision.pt' weight files") from error

    def _probe(self, expected_dimension: int | None) -> int:
        """Run the model once on two images of the input size: learn D, check shape and values."""
        size = self.preprocessing.size
        probe = torch.rand(2, 3, size, size, generator=torch.Generator().manual_seed(0))
        probe = self.preprocessing.from_unit(probe).to(self.device)
        try:
            with torch.inference_mode():
                out = self.module(probe)
        except Exception as error:
            raise DescriptorError(f"{self.source}: the model fails on a {list(probe.shape)} input batch: "
                                  f"{str(error).strip().splitlines()[0] if str(error).strip() else error!r}") from error
        if not isinstance(out, torch.Tensor) or out.ndim != 2 or out.shape[0] != 2 or out.shape[1] < 1:
            shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
            raise DescriptorError(f"{self.source}: the model returned {shape} for a batch of 2, expected [2, D]")
        if not torch.isfinite(out).all():
            raise DescriptorError(f"{self.source}: the model returned NaN or infinite descriptors")
        if expected_dimension is not None and out.shape[1] != expected_dimension:
            raise DescriptorError(f"{self.source}: {self.name} should give {expected_dimension}-d descriptors, "
                                  f"the model gives {out.shape[1]}")
        return int(out.shape[1])

    def _embed(self, batch: torch.Tensor) -> torch.Tensor:
        return self.module(batch)

    def _identity(self) -> dict:
        return {"model": "SSCD (Pizzi et al., CVPR 2022), TorchScript",
                "checkpoint": {"source": self.source, "sha256": self.sha256,
                               "official_name": self.official.name if self.official else None}}

    def to(self, device: torch.device | str) -> "SSCDDescriptor":
        super().to(device)
        self.module = self.module.to(self.device)
        return self


# -- the fallback --------------------------------------------------------------------------

class PixelCorrelationDescriptor(Descriptor):
    """NOT SSCD: Pearson correlation of downscaled grayscale pixels (the fallback).

    Each image is resized to size x size (antialiased bilinear), turned to luma, centred on
    its mean and L2-normalised, so the inner product of two descriptors is the correlation
    of the two pictures. Not learned: it finds near-exact copies, and misses shifted,
    cropped, flipped or recoloured ones. The 0.5 / 0.6 thresholds are SSCD's convention,
    not calibrated for it. A constant image has no pattern: its descriptor is zero.
    """

    kind = "pixel-correlation"
    batch_size = 256
    allows_zero = True

    def __init__(self, size: int = 32, device: torch.device | str = "cpu"):
        super().__init__(device)
        size = int(size)
        if size < 2:
            raise DescriptorError(f"pixel-correlation size must be at least 2, got {size}")
        self.size = size
        self.name = f"pixel-correlation-{size}x{size} (not SSCD)"
        self.dimension = size * size
        self.preprocessing = Preprocessing(name=f"fixed-{size}-luma", resize="fixed", size=size,
                                           channels="luma", mean=None, std=None)

    def _embed(self, batch: torch.Tensor) -> torch.Tensor:
        flat = batch.flatten(1)
        centred = flat - flat.mean(dim=1, keepdim=True)
        # A constant image leaves only float rounding (~1e-8); one 8-bit level in one pixel
        # leaves a norm of ~4e-3. Below 1e-5 the image has no pattern: zero, not noise.
        return centred * (centred.norm(dim=1, keepdim=True) >= 1e-5)

    def _identity(self) -> dict:
        return {"model": "none (non-learned fallback): per-image centred, L2-normalised grayscale pixels",
                "note": "fallback used when no SSCD checkpoint is configured; not SSCD; "
                        "thresholds 0.5/0.6 are SSCD's convention, not calibrated for this descriptor"}


# -- learned -------------------------------------------------------------------------------

def learned_preprocessing(config: NetConfig) -> Preprocessing:
    """The learned descriptor's input (trained and run alike): luma at the trained size, scaled to [-1, 1]."""
    height, width = config.image_size
    if height != width:
        raise DescriptorError(f"the learned descriptor supports square images, got {height}x{width}")
    return Preprocessing(name=f"fixed-{height}-luma-pm1", resize="fixed", size=height, channels="luma",
                         mean=(0.5,), std=(0.5,), interpolation="none (input must be the trained size)")


class LearnedDescriptor(Descriptor):
    """A learned copy descriptor (auditor.similarity.learned_descriptor.CopyNet) from its checkpoint.

    Images must be the trained size (another size is refused, not resized: a resized image
    is not what it learned to match). Its identity is the checkpoint's sha256 and network,
    not the file's location, so a calibration holds wherever the file lies.
    """

    kind = "learned"
    batch_size = 256

    def __init__(self, net, *, name: str, sha256: str, source: str = "", record: dict | None = None,
                 device: torch.device | str = "cpu"):
        super().__init__(device)
        self.net = net.eval().to(self.device)
        self.name, self.sha256, self.source, self.record = name, sha256, source, dict(record or {})
        self.dimension = net.config.dimension
        self.preprocessing = learned_preprocessing(net.config)

    @classmethod
    def load(cls, path, device: torch.device | str = "cpu") -> "LearnedDescriptor":
        """From a checkpoint file or a name ("fmnist-copy"), checked against its record's sha256."""
        checkpoint = read_learned_checkpoint(path)
        return cls(checkpoint.net, name=checkpoint.name, sha256=checkpoint.sha256, source=checkpoint.source,
                   record=checkpoint.record, device=device)

    @property
    def training_fingerprint(self) -> str | None:
        """The fingerprint of the training set it was trained on (its record's), if known."""
        return (self.record.get("data") or {}).get("fingerprint")

    def __call__(self, images, batch_size: int | None = None, progress=None) -> torch.Tensor:
        shape = tuple(getattr(images, "shape", ()))
        if len(shape) == 4 and shape[2:] != tuple(self.net.config.image_size):
            height, width = self.net.config.image_size
            raise DescriptorError(f"{self.name} was trained on {height}x{width} images; got {shape[2]}x{shape[3]} "
                                  f"(shape {shape}). It does not resize: pass images of its training set's size")
        return super().__call__(images, batch_size, progress)

    def _embed(self, batch: torch.Tensor) -> torch.Tensor:
        return self.net(batch)

    def _identity(self) -> dict:
        return {"model": "learned copy descriptor (CopyNet: 4 conv layers, GeM, linear), trained SSCD-style",
                "checkpoint": {"sha256": self.sha256, "format": CHECKPOINT_FORMAT},
                "network": self.net.config.to_dict()}

    def describe(self) -> dict:
        record = super().describe()
        record["checkpoint"] = {**record["checkpoint"], "source": self.source}
        record["training"] = {k: self.record[k] for k in ("data", "options", "seed", "wall_seconds")
                              if k in self.record}
        return record

    def to(self, device: torch.device | str) -> "LearnedDescriptor":
        super().to(device)
        self.net = self.net.to(self.device)
        return self


# -- factory -------------------------------------------------------------------------------

def load_descriptor(spec: str | Descriptor | None = None, *, sha256: str | None = None,
                    preprocessing: str | None = None, cache_dir: str | os.PathLike | None = None,
                    device: torch.device | str = "cpu") -> Descriptor:
    """A descriptor from a spec string.

    None / "auto": the SSCD checkpoint in $PSPC_SSCD_CHECKPOINT (with $PSPC_SSCD_SHA256 and
    $PSPC_SSCD_PREPROCESSING) when set, otherwise the pixel-correlation fallback (with a
    FallbackDescriptorWarning). "sscd": the configured checkpoint, an error when none is.
    "sscd:PATH_OR_URL_OR_NAME", an official name ("sscd_disc_mixup"), a path or a URL: that
    SSCD checkpoint. "pixel-correlation[:SIZE]": the fallback (default size 32). "fmnist-copy"
    (the committed Fashion-MNIST copy descriptor) or "learned:PATH": a learned copy descriptor
    (auditor.similarity.learned_descriptor; its preprocessing is fixed).
    """
    if isinstance(spec, Descriptor):
        return spec
    text = "auto" if spec is None else str(spec).strip()
    sscd_options = dict(cache_dir=cache_dir, device=device,
                        preprocessing=preprocessing or os.environ.get(PREPROCESSING_ENV) or "resize-288")

    if text in ("auto", "sscd"):
        configured = os.environ.get(CHECKPOINT_ENV)
        if configured:
            return SSCDDescriptor.load(configured, sha256 or os.environ.get(SHA256_ENV) or None, **sscd_options)
        if text == "sscd":
            raise DescriptorError(f"no SSCD checkpoint configured: set ${CHECKPOINT_ENV} (a TorchScript file, a URL "
                                  f"with ${SHA256_ENV}, or an official name such as sscd_disc_mixup) or pass "
                                  "'sscd:PATH'")
        warnings.warn(f"no SSCD checkpoint configured (${CHECKPOINT_ENV}); using the non-learned "
                      "'pixel-correlation' descriptor, which is NOT SSCD", FallbackDescriptorWarning, stacklevel=2)
        return PixelCorrelationDescriptor(device=device)
    match = re.fullmatch(r"pixel-correlation(?:[:-](\d+))?", text)
    if match:
        if preprocessing is not None:
            raise DescriptorError("pixel-correlation has fixed preprocessing; choose its size as pixel-correlation:SIZE")
        return PixelCorrelationDescriptor(int(match.group(1) or 32), device=device)
    if text == "fmnist-copy" or text.startswith("learned:"):
        if preprocessing is not None:
            raise DescriptorError("a learned descriptor has the preprocessing it was trained with; drop preprocessing")
        return LearnedDescriptor.load(text.removeprefix("learned:"), device=device)
    if text.startswith("sscd:"):
        text = text[len("sscd:"):]
    if not text:
        raise DescriptorError("empty descriptor spec")
    if text in OFFICIAL_SSCD_CHECKPOINTS or is_url(text) or Path(text).expanduser().exists():
        return SSCDDescriptor.load(text, sha256, **sscd_options)
    raise DescriptorError(f"unknown descriptor {spec!r}: expected 'auto', 'sscd', 'sscd:PATH_OR_URL', a TorchScript "
                          f"file, an official SSCD name ({', '.join(OFFICIAL_SSCD_CHECKPOINTS)}), "
                          "'pixel-correlation[:SIZE]', 'fmnist-copy' or 'learned:PATH'")
