"""Training the learned copy descriptor contrastively, in the manner of SSCD (Pizzi et al., CVPR 2022).

Each step draws batch / group training images, each with its group - 1 look-alikes (nearest
by the correlation of 8x8 thumbnails: the hard negatives that a small batch lacks and that
separate a copy from a similar garment), and makes two views of each by chains of the
copy-detection benchmark's near-copy transforms (auditor.similarity.cases.near_copy: noise,
brightness, contrast, 1-2 px shifts, crop-and-resize, JPEG q20, blur; the first view has
up to `clean_depth` of them, the second 1 to `depth`), embeds them with
:class:`~auditor.similarity.learned_descriptor.CopyNet` and minimises SSCD's loss:

- InfoNCE (NT-Xent) over the 2B views: each view's positive is the other view of its image,
  every other view is a negative, similarities are cosines over `temperature`;
- plus `entropy_weight` times SSCD's differential-entropy (KoLeo) regulariser,
  -mean_i log(min_{j != i, j not i's positive} ||z_i - z_j||), which spreads the descriptors.

Horizontal flips are not an augmentation: mirrored copies are matched by the mirrored
entries of the index. Only training images are used. Everything is seeded (weights, image
order, transforms): the same options, data and thread count give the same weights.
Adam with a linear warm-up and a cosine decay of the learning rate.
"""

from __future__ import annotations

import json
import math
import os
import platform
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import faiss
import numpy as np
import torch
import torch.nn.functional as F

from auditor.errors import UserError
from auditor.similarity.cases import NEAR_FAMILIES, near_copy
from auditor.similarity.descriptors import learned_preprocessing
from auditor.similarity.learned_descriptor import CHECKPOINT_FORMAT, CopyNet, NetConfig, record_path
from pspc.record import file_sha256

__all__ = ["TrainingOptions", "TrainingResult", "augment", "entropy_loss", "info_nce", "look_alikes", "save_descriptor",
           "train_descriptor"]


@dataclass(frozen=True)
class TrainingOptions:
    """What a training run does (every field goes into the record)."""

    steps: int = 500
    batch: int = 256
    lr: float = 3e-3
    weight_decay: float = 1e-4
    warmup: float = 0.05  # fraction of the steps with a linear warm-up
    temperature: float = 0.05  # SSCD's
    entropy_weight: float = 0.0  # SSCD uses 30 with its 512-d descriptors
    depth: int = 2  # transforms in the second view: 1..depth
    clean_depth: int = 1  # transforms in the first view: 0..clean_depth
    group: int = 16  # a batch is batch / group look-alike groups: an image and its group - 1 nearest (hard negatives)
    families: tuple[str, ...] = NEAR_FAMILIES
    limit: int | None = None  # train on the first `limit` images only
    seed: int = 0
    log_every: int = 25
    network: NetConfig = field(default_factory=NetConfig)

    def __post_init__(self):
        if self.steps < 1 or self.batch < 2:
            raise UserError(f"training needs steps >= 1 and batch >= 2, got {self.steps} and {self.batch}")
        if not (self.lr > 0 and self.temperature > 0 and self.entropy_weight >= 0 and 0 <= self.warmup < 1):
            raise UserError("lr and temperature must be > 0, entropy_weight >= 0 and warmup in [0, 1)")
        if self.depth < 1 or self.clean_depth < 0:
            raise UserError(f"depth must be >= 1 and clean_depth >= 0, got {self.depth} and {self.clean_depth}")
        unknown = [f for f in self.families if f not in NEAR_FAMILIES]
        if unknown or not self.families:
            raise UserError(f"unknown augmentation families {unknown}; expected some of {', '.join(NEAR_FAMILIES)}")
        if not 1 <= self.group <= self.batch:
            raise UserError(f"group must be in [1, batch = {self.batch}], got {self.group}")
        if self.limit is not None and self.limit < 2:
            raise UserError(f"limit must be at least 2 images, got {self.limit}")

    def to_dict(self) -> dict:
        record = asdict(self)
        record["families"], record["network"] = list(self.families), self.network.to_dict()
        return record


@dataclass
class TrainingResult:
    """The trained network, what to save (plain tensors and configuration) and the record."""

    net: CopyNet
    checkpoint: dict
    record: dict


# -- augmentations -------------------------------------------------------------------------

def augment(images: torch.Tensor, rng: np.random.Generator, low: int, high: int,
            families: tuple[str, ...] = NEAR_FAMILIES) -> torch.Tensor:
    """uint8 [B, C, H, W] -> uint8: each image through a chain of low..high random near-copy transforms."""
    x = images.float()
    lengths = rng.integers(low, high + 1, size=len(x))
    for position in range(high):
        picks = rng.integers(len(families), size=len(x))
        for k, family in enumerate(families):
            rows = np.flatnonzero((picks == k) & (lengths > position))
            if len(rows):
                chosen = torch.from_numpy(rows)
                x[chosen] = near_copy(x[chosen], family, rng).round().clamp(0, 255)
    return x.to(torch.uint8)


# -- batches of look-alikes ----------------------------------------------------------------

def look_alikes(images: torch.Tensor, k: int, size: int = 8) -> np.ndarray:
    """[N, k]: each image's k nearest other images by the correlation of their size x size thumbnails."""
    if k < 1:
        return np.zeros((len(images), 0), np.int64)
    thumbs = F.interpolate(images.float(), size=(size, size), mode="bilinear", align_corners=False, antialias=True)
    thumbs = thumbs.flatten(1)
    thumbs = F.normalize(thumbs - thumbs.mean(1, keepdim=True), dim=1).numpy()
    index = faiss.IndexFlatIP(thumbs.shape[1])
    index.add(thumbs)
    _, found = index.search(thumbs, min(k + 1, len(images)))
    rows = []
    for i, row in enumerate(found):
        others = [int(j) for j in row if j != i and j >= 0][:k]
        rows.append(others + [i] * (k - len(others)))
    return np.asarray(rows, np.int64)


# -- the loss ------------------------------------------------------------------------------

def info_nce(z: torch.Tensor, temperature: float) -> torch.Tensor:
    """NT-Xent of unit descriptors [2B, D] where rows i and i + B are the two views of an image."""
    n = len(z) // 2
    logits = (z @ z.T) / temperature
    logits = logits.masked_fill(torch.eye(len(z), dtype=torch.bool), float("-inf"))
    target = torch.cat([torch.arange(n, 2 * n), torch.arange(0, n)])
    return F.cross_entropy(logits, target)


def entropy_loss(z: torch.Tensor) -> torch.Tensor:
    """SSCD's entropy regulariser: -mean log distance to the nearest descriptor other than itself and its pair."""
    n = len(z) // 2
    distances = torch.cdist(z, z)
    pair = torch.cat([torch.arange(n, 2 * n), torch.arange(0, n)])
    excluded = torch.eye(len(z), dtype=torch.bool)
    excluded[torch.arange(len(z)), pair] = True
    nearest = distances.masked_fill(excluded, float("inf")).amin(1)
    return -torch.log(nearest + 1e-8).mean()


def _learning_rate(options: TrainingOptions, step: int) -> float:
    warm = max(1, int(options.warmup * options.steps))
    if step < warm:
        return options.lr * (step + 1) / warm
    progress = (step - warm) / max(1, options.steps - warm)
    return options.lr * 0.5 * (1 + math.cos(math.pi * progress))


# -- the loop ------------------------------------------------------------------------------

def _check_images(images: torch.Tensor, config: NetConfig) -> None:
    if not isinstance(images, torch.Tensor) or images.dtype != torch.uint8 or images.ndim != 4:
        raise UserError(f"training images must be uint8 [N, C, H, W], got {getattr(images, 'dtype', type(images))} "
                        f"{tuple(getattr(images, 'shape', ()))}")
    if images.shape[1] != 1 or tuple(images.shape[2:]) != tuple(config.image_size):
        raise UserError(f"the descriptor trains on grayscale {config.image_size[0]}x{config.image_size[1]} images; "
                        f"got {tuple(images.shape[1:])}")


def train_descriptor(images: torch.Tensor, options: TrainingOptions = TrainingOptions(), *, data: dict | None = None,
                     name: str = "copy-descriptor",
                     progress: Callable[[int, int, float], None] | None = None) -> TrainingResult:
    """Train a CopyNet on training images uint8 [N, 1, H, W]; `data` (the set's describe()) goes into the
    record, `name` into the checkpoint. progress(step, steps, mean loss of the last log interval) every
    `log_every` steps."""
    _check_images(images, options.network)
    images = images[:options.limit] if options.limit is not None else images
    if len(images) < 2:
        raise UserError(f"training needs at least 2 images, got {len(images)}")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(options.seed)
        net = CopyNet(options.network)
    preprocess = learned_preprocessing(options.network).from_unit
    optimiser = torch.optim.Adam(net.parameters(), lr=options.lr, weight_decay=options.weight_decay)
    rng = np.random.default_rng(options.seed)
    started = time.perf_counter()
    group = min(options.group, len(images))
    neighbours = look_alikes(images, group - 1)
    anchors = max(1, min(options.batch, len(images)) // group)
    order, cursor, curve, window = rng.permutation(len(images)), 0, [], []
    net.train()
    for step in range(options.steps):
        if cursor + anchors > len(order):
            order, cursor = rng.permutation(len(images)), 0
        chosen = order[cursor:cursor + anchors]
        cursor += anchors
        picked = images[torch.from_numpy(np.unique(np.concatenate([chosen[:, None], neighbours[chosen]], 1)))]
        views = torch.cat([augment(picked, rng, 0, options.clean_depth, options.families),
                           augment(picked, rng, 1, options.depth, options.families)])
        z = F.normalize(net(preprocess(views.float() / 255.0)), dim=1)
        contrastive = info_nce(z, options.temperature)
        loss = contrastive + options.entropy_weight * entropy_loss(z) if options.entropy_weight else contrastive
        for parameters in optimiser.param_groups:
            parameters["lr"] = _learning_rate(options, step)
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        optimiser.step()
        window.append((float(loss.detach()), float(contrastive.detach())))
        if (step + 1) % options.log_every == 0 or step + 1 == options.steps:
            mean = np.mean(window, axis=0)
            curve.append([step + 1, round(float(mean[0]), 6), round(float(mean[1]), 6)])
            window = []
            if progress is not None:
                progress(step + 1, options.steps, float(mean[0]))
    net.eval()
    seconds = time.perf_counter() - started
    state = {k: v.detach().clone() for k, v in net.state_dict().items()}
    checkpoint = {"format": CHECKPOINT_FORMAT, "name": name, "config": options.network.to_dict(), "state_dict": state}
    record = {"what": "learned copy descriptor (auditor.similarity.learned_descriptor.CopyNet), trained SSCD-style: "
                      "InfoNCE over two augmented views" + (" + entropy regulariser" if options.entropy_weight else ""),
              "options": options.to_dict(), "seed": options.seed,
              "data": {**(data or {}), "images_used": len(images), "limit": options.limit},
              "images_seen": options.steps * anchors * group,
              "epochs": round(options.steps * anchors * group / len(images), 3),
              "loss_curve_columns": ["step", "loss", "info_nce"], "loss_curve": curve,
              "final_loss": curve[-1][1], "wall_seconds": round(seconds, 1),
              "parameters": sum(p.numel() for p in net.parameters()),
              "versions": {"python": platform.python_version(), "torch": torch.__version__, "numpy": np.__version__},
              "threads": torch.get_num_threads()}
    return TrainingResult(net, checkpoint, record)


def save_descriptor(result: TrainingResult, path, *, command: list[str] | None = None) -> dict:
    """Write the checkpoint (PATH.pt) and then its record (PATH.json, with the checkpoint's sha256 and
    size and the command); each is written beside its target and renamed, so neither is ever truncated."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    torch.save(result.checkpoint, partial)
    os.replace(partial, path)
    record = {**result.record, "command": command,
              "checkpoint": {"file": path.name, "sha256": file_sha256(path), "bytes": path.stat().st_size,
                             "format": CHECKPOINT_FORMAT}}
    target = record_path(path)
    partial = target.with_name(target.name + ".partial")
    partial.write_text(json.dumps(record, indent=1, default=str) + "\n")
    os.replace(partial, target)
    return record
