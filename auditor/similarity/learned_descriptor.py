"""The network of the learned copy descriptor, SSCD-style (Pizzi et al., CVPR 2022), and its checkpoints.

:class:`CopyNet` is a four-layer CNN (3x3 convolutions with batch norm and ReLU, two of
them strided), GeM pooling (p = 3, as SSCD) and a linear projection to a few dozen
dimensions; ``auditor.similarity.descriptors.LearnedDescriptor`` runs it as a descriptor
(L2-normalised vectors: the inner product of two is their cosine similarity).
``auditor train-descriptor`` (auditor.similarity.descriptor_training) trains it
contrastively on the training images only.

Checkpoints are plain tensors and their configuration (no pickled code: loaded with
``torch.load(weights_only=True)``), beside a JSON record of how they were trained. The
record holds the checkpoint's sha256, which the loader checks, and the fingerprint of the
training set it was trained on. Input must be the size it was trained at (28x28 for
Fashion-MNIST): another size is refused rather than resized, as a resized image is not what
the descriptor learned to match. Horizontal flips are not an augmentation: a mirrored copy
is found through the mirrored entries of the index, which says so (flip flag).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import nn

from auditor.similarity.checkpoints import DescriptorError
from pspc.record import SOURCE_TREE, file_sha256

__all__ = ["CHECKPOINT_FORMAT", "DEFAULT_CHECKPOINT", "NAMED_CHECKPOINTS", "SOURCE_TREE", "CopyNet", "LearnedCheckpoint",
           "NetConfig", "read_learned_checkpoint", "record_path"]

CHECKPOINT_FORMAT = "pspc-auditor copy descriptor v1"
DEFAULT_CHECKPOINT = Path("checkpoints/fmnist-copy-descriptor.pt")  # what `auditor train-descriptor` writes
# Spec names for load_descriptor: the committed Fashion-MNIST descriptor, looked up in the working
# directory first and then in the source tree's checkpoints/ folder.
NAMED_CHECKPOINTS = {"fmnist-copy": DEFAULT_CHECKPOINT}


@dataclass(frozen=True)
class NetConfig:
    """The network's shape: conv widths (layers 2 and 3 stride 2), output dimension, GeM power, image size."""

    channels: tuple[int, ...] = (16, 32, 64, 96)
    dimension: int = 64
    gem_p: float = 3.0
    image_size: tuple[int, int] = (28, 28)

    def __post_init__(self):
        if len(self.channels) != 4 or any(int(c) < 1 for c in self.channels):
            raise DescriptorError(f"the network needs four positive conv widths, got {list(self.channels)}")
        if int(self.dimension) < 2 or self.gem_p <= 0:
            raise DescriptorError(f"dimension must be >= 2 and gem_p > 0, got {self.dimension}, {self.gem_p}")

    @classmethod
    def from_dict(cls, record: dict) -> "NetConfig":
        try:
            return cls(tuple(int(c) for c in record["channels"]), int(record["dimension"]), float(record["gem_p"]),
                       tuple(int(s) for s in record["image_size"]))
        except (KeyError, TypeError, ValueError) as error:
            raise DescriptorError(f"bad network configuration {record!r}: {error!r}") from error

    def to_dict(self) -> dict:
        record = asdict(self)
        record["channels"], record["image_size"] = list(self.channels), list(self.image_size)
        return record


class CopyNet(nn.Module):
    """[B, 1, H, W] (preprocessed: (x/255 - 0.5) / 0.5) -> raw descriptors [B, D] (not normalised)."""

    def __init__(self, config: NetConfig = NetConfig()):
        super().__init__()
        self.config = config
        layers, width = [], 1
        for i, channels in enumerate(config.channels):
            stride = 2 if i in (1, 2) else 1
            layers += [nn.Conv2d(width, channels, 3, stride=stride, padding=1, bias=False), nn.BatchNorm2d(channels),
                       nn.ReLU(inplace=True)]
            width = channels
        self.trunk = nn.Sequential(*layers)
        self.projection = nn.Linear(width, config.dimension)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = self.trunk(x)
        pooled = features.clamp_min(1e-6).pow(self.config.gem_p).mean((2, 3)).pow(1.0 / self.config.gem_p)  # GeM
        return self.projection(pooled)


def record_path(checkpoint: Path) -> Path:
    """The JSON training record beside a checkpoint (NAME.pt -> NAME.json)."""
    return Path(checkpoint).with_suffix(".json")


@dataclass
class LearnedCheckpoint:
    """A loaded checkpoint: the network (eval mode), its name, the file's sha256 and location, its record."""

    net: CopyNet
    name: str
    sha256: str
    source: str
    record: dict


def _resolve(path: Path) -> Path:
    if path.is_file() or path.is_absolute():
        return path
    in_tree = SOURCE_TREE / path
    return in_tree if in_tree.is_file() else path


def read_learned_checkpoint(path) -> LearnedCheckpoint:
    """A checkpoint file (or a NAMED_CHECKPOINTS name), checked against its record's sha256 when it has one."""
    path = _resolve(NAMED_CHECKPOINTS.get(str(path), Path(path).expanduser()))
    if not path.is_file():
        raise DescriptorError(f"{path}: no such learned-descriptor checkpoint; train one with "
                              "`auditor train-descriptor --out PATH.pt`")
    sha256 = file_sha256(path)
    record, record_file = {}, record_path(path)
    if record_file.is_file():
        try:
            record = json.loads(record_file.read_text())
        except json.JSONDecodeError as error:
            raise DescriptorError(f"{record_file}: not a JSON training record ({error})") from error
        expected = (record.get("checkpoint") or {}).get("sha256")
        if expected and expected != sha256:
            raise DescriptorError(f"{path}: sha256 {sha256} differs from {expected} in its record {record_file}: "
                                  "the record describes another checkpoint")
    try:
        saved = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises RuntimeError, pickle or zip errors here
        raise DescriptorError(f"{path}: not a learned-descriptor checkpoint ({str(error).splitlines()[0]})") from error
    if not isinstance(saved, dict) or saved.get("format") != CHECKPOINT_FORMAT:
        raise DescriptorError(f"{path}: not a learned-descriptor checkpoint (expected format {CHECKPOINT_FORMAT!r})")
    net = CopyNet(NetConfig.from_dict(saved.get("config") or {}))
    try:
        net.load_state_dict(saved["state_dict"])
    except (KeyError, RuntimeError) as error:
        raise DescriptorError(f"{path}: weights do not fit the configured network: {error}") from error
    return LearnedCheckpoint(net.eval(), str(saved.get("name") or path.stem), sha256, str(path), record)
