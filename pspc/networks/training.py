"""Training the project's EDM-preconditioned U-Net (Karras et al. 2022), on a CPU if need be.

EDM loss (`EDMLoss`): sigma ~ lognormal(P_mean = -1.2, P_std = 1.2), y = x (optionally
x-flipped), loss = lambda(sigma) ||D(y + sigma n, sigma) - y||^2 with
lambda(sigma) = (sigma^2 + sigma_data^2) / (sigma sigma_data)^2, averaged over pixels.
Adam with a linear learning-rate warm-up and an exponential moving average of the weights
(EDM's half-life in images, ramped up with the number of images seen); the EMA weights are
the ones saved for use.

Every random draw of iteration k (batch, flips, sigma, noise) comes from a generator seeded
by (seed, k), so training resumed from a checkpoint continues exactly as an uninterrupted
run would. `train` returns (and writes beside the checkpoint) a record with the command,
configurations, dataset fingerprint, wall time, final loss, loss curve and versions.

Planted canaries (`Canaries`, `plant_canaries`): for a memorisation study the data can be
the training set plus `repeats` duplicates of `count` of its images chosen by a seed; the
record's `canaries` names them (indices, ids, pixel sha256) and says how the data was laid out.
"""

from __future__ import annotations

import copy
import json
import math
import os
import time
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from pspc.data.images import save_grid
from pspc.data.training_set import TrainingSet
from pspc.denoisers import NetworkDenoiser
from pspc.errors import InputError
from pspc.networks.checkpoints import read_checkpoint, save_network
from pspc.networks.unet import EDMPrecond, NetworkConfig, NetworkError
from pspc.record import environment as record_environment
from pspc.samplers import SamplerConfig, initial_noise, sample

STATE_SUFFIX = ".state.pt"


class TrainingError(InputError):
    """Bad training request (parameters, data that does not fit, unusable resume state)."""


# ---------------------------------------------------------------------------------------
# Loss (EDM, Sec. 5 / Table 1)
# ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class EDMLoss:
    """lambda(sigma) ||D(y + sigma n, sigma) - y||^2 with ln(sigma) ~ N(P_mean, P_std^2)."""

    P_mean: float = -1.2
    P_std: float = 1.2
    sigma_data: float = 0.5

    def weight(self, sigma: torch.Tensor) -> torch.Tensor:
        """lambda(sigma) = (sigma^2 + sigma_data^2) / (sigma sigma_data)^2 (EDM Table 1)."""
        return (sigma.square() + self.sigma_data**2) / (sigma * self.sigma_data).square()

    def sample_sigma(self, count: int, generator: torch.Generator) -> torch.Tensor:
        """`count` noise levels with ln(sigma) ~ N(P_mean, P_std^2) (EDM Table 1)."""
        return (torch.randn(count, generator=generator) * self.P_std + self.P_mean).exp()

    def __call__(self, net, y: torch.Tensor, sigma: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """Per-sample loss [B] (mean over pixels) for clean y, noise levels sigma and unit noise."""
        D_yn = net(y + sigma[:, None, None, None] * noise, sigma)
        return (self.weight(sigma)[:, None, None, None] * (D_yn - y).square()).flatten(1).mean(1)


# ---------------------------------------------------------------------------------------
# Configuration
# ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class TrainingConfig:
    """Optimisation settings; the defaults are the ones the committed Fashion-MNIST checkpoint used."""

    iterations: int = 3000
    batch_size: int = 32
    lr: float = 1e-3
    lr_warmup: int = 200  # iterations of linear warm-up
    beta1: float = 0.9
    beta2: float = 0.999
    ema_halflife_images: float = 500_000  # EDM's ema_halflife_kimg = 500
    ema_rampup_ratio: float | None = 0.1  # half-life <= ratio * images seen (EDM: 0.05)
    xflip: bool = True  # train on mirrored images too, as PSPC's data set with x-flips
    seed: int = 0
    P_mean: float = -1.2
    P_std: float = 1.2
    checkpoint_every: int = 0  # iterations between checkpoints (0: only at the end and by time)
    checkpoint_seconds: float = 300.0  # also checkpoint after this many seconds (0: off)
    eval_samples: int = 256  # fixed (image, sigma, noise) draws for the evaluation loss
    preview_samples: int = 36  # samples drawn for the preview grid at each checkpoint (0: none)

    def __post_init__(self):
        problems = []
        for name in ("iterations", "batch_size"):
            if getattr(self, name) < 1:
                problems.append(f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ("lr", "ema_halflife_images"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value > 0):
                problems.append(f"{name} must be > 0, got {value}")
        if not (0 <= self.beta1 < 1 and 0 <= self.beta2 < 1):
            problems.append(f"Adam betas must be in [0, 1), got {self.beta1}, {self.beta2}")
        if self.ema_rampup_ratio is not None and not self.ema_rampup_ratio > 0:
            problems.append(f"ema_rampup_ratio must be > 0 or None, got {self.ema_rampup_ratio}")
        if not self.P_std > 0:
            problems.append(f"P_std must be > 0, got {self.P_std}")
        for name in ("lr_warmup", "checkpoint_every", "checkpoint_seconds", "eval_samples", "preview_samples"):
            if getattr(self, name) < 0:
                problems.append(f"{name} must be >= 0, got {getattr(self, name)}")
        if problems:
            raise TrainingError("bad training config: " + "; ".join(problems))

    def lr_at(self, iteration: int) -> float:
        """The learning rate at an iteration: linear warm-up over lr_warmup iterations."""
        return self.lr * min(1.0, (iteration + 1) / self.lr_warmup) if self.lr_warmup else self.lr

    def ema_beta(self, images_seen: int) -> float:
        """EDM's EMA decay per iteration: half-life in images, ramped up with images seen."""
        halflife = self.ema_halflife_images
        if self.ema_rampup_ratio is not None:
            halflife = min(halflife, images_seen * self.ema_rampup_ratio)
        return 0.5 ** (self.batch_size / max(halflife, 1e-8))


# ---------------------------------------------------------------------------------------
# Seeded randomness: iteration k draws only from generators seeded by (seed, stream, k)
# ---------------------------------------------------------------------------------------
def _generator(seed: int, stream: int, index: int) -> torch.Generator:
    state = np.random.SeedSequence([seed, stream, index]).generate_state(1, np.uint64)[0]
    return torch.Generator().manual_seed(int(state) & (2**63 - 1))


class BatchSampler:
    """Epochs over the training set in seeded random order; batch k = positions [kB, (k+1)B)."""

    def __init__(self, count: int, batch_size: int, seed: int):
        self.count, self.batch_size, self.seed = count, batch_size, seed
        self._epoch, self._order = -1, None

    def _permutation(self, epoch: int) -> torch.Tensor:
        if epoch != self._epoch:
            self._epoch, self._order = epoch, torch.randperm(self.count, generator=_generator(self.seed, 0, epoch))
        return self._order

    def indices(self, iteration: int) -> torch.Tensor:
        start = iteration * self.batch_size
        out = []
        for position in range(start, start + self.batch_size):
            epoch, offset = divmod(position, self.count)
            out.append(int(self._permutation(epoch)[offset]))
        return torch.tensor(out)


def training_batch(images: torch.Tensor, sampler: BatchSampler, loss: EDMLoss, iteration: int, seed: int,
                   xflip: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(y, sigma, noise) of iteration `iteration`: clean images in [-1, 1] (mirrored at random
    when xflip), noise levels and unit noise, all from seeded generators."""
    generator = _generator(seed, 1, iteration)
    y = images[sampler.indices(iteration)].float() / 127.5 - 1
    if xflip:
        flip = torch.rand(y.shape[0], generator=generator) < 0.5
        y = torch.where(flip[:, None, None, None], y.flip(-1), y)
    sigma = loss.sample_sigma(y.shape[0], generator)
    noise = torch.randn(y.shape, generator=generator)
    return y, sigma, noise


# ---------------------------------------------------------------------------------------
# Evaluation and samples
# ---------------------------------------------------------------------------------------
@torch.no_grad()
def evaluation_loss(net, training_set: TrainingSet, loss: EDMLoss, count: int = 256, seed: int = 12345,
                    batch_size: int = 128) -> float:
    """The EDM loss on `count` fixed draws (image, sigma, noise) from the training set: the same
    draws every time, so checkpoints (and runs) are comparable without training-batch noise."""
    generator = torch.Generator().manual_seed(seed)
    picks = torch.randint(len(training_set), (count,), generator=generator)
    sigma = loss.sample_sigma(count, generator)
    noise = torch.randn((count, *training_set.image_shape), generator=generator)
    device = next(net.parameters()).device
    total = 0.0
    for start in range(0, count, batch_size):
        part = slice(start, start + batch_size)
        y = training_set.images[picks[part]].float() / 127.5 - 1
        total += float(loss(net, y.to(device), sigma[part].to(device), noise[part].to(device)).sum())
    return total / count


@torch.no_grad()
def sample_network(net, num: int = 64, seed: int = 0, steps: int = 18, method: str = "heun",
                   image_shape=None) -> torch.Tensor:
    """num samples [num, C, H, W] (clipped to [-1, 1]) from the network with the PF-ODE sampler
    on the EDM schedule; sample i starts from the noise seeded with seed + i (as `pspc sample`)."""
    if isinstance(net, NetworkDenoiser):  # e.g. from pspc.networks.load_network
        denoiser = net
    else:
        denoiser = NetworkDenoiser(net, tuple(image_shape or net.config.image_shape))
    shape = denoiser.image_shape
    was_training = denoiser.net.training
    denoiser.net.eval()
    try:
        z = initial_noise(num, shape, seed, device=denoiser.device)
        out = sample(denoiser, z, SamplerConfig(method=method, num_steps=steps))
    finally:
        denoiser.net.train(was_training)
    return out.clamp(-1, 1).cpu()


def save_samples(net, path, num: int = 64, seed: int = 0, steps: int = 18, method: str = "heun") -> str:
    """Sample with `sample_network` and write the PNG grid (`pspc.data.images.save_grid`)."""
    return save_grid(sample_network(net, num, seed, steps, method), path)


# ---------------------------------------------------------------------------------------
# Records
# ---------------------------------------------------------------------------------------
def environment(device: torch.device) -> dict:
    """Where a result was computed: device, threads, platform and package versions."""
    return record_environment(device, processor=True, with_commit=True)


def state_path_for(checkpoint: str | os.PathLike) -> Path:
    """Where the resume state of a checkpoint lives: NAME.pt -> NAME.state.pt."""
    checkpoint = Path(checkpoint)
    return checkpoint.with_name(checkpoint.stem + STATE_SUFFIX)


def record_path_for(checkpoint: str | os.PathLike) -> Path:
    """Where the JSON record of a checkpoint lives: NAME.pt -> NAME.json."""
    return Path(checkpoint).with_suffix(".json")


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


# ---------------------------------------------------------------------------------------
# Planted canaries: training images duplicated on purpose, so that the network memorises them
# ---------------------------------------------------------------------------------------
CANARY_COPY = "#copy"  # the id of canary i's r-th duplicate: ids[i] + "#copy" + str(r)


@dataclass(frozen=True)
class Canaries:
    """`count` training images chosen by `seed`, each appended `repeats` more times to the data:
    a memorisation study's positives, whose source is known (Carlini et al. 2023 plant such
    duplicates; a network trained on them replicates them)."""

    count: int
    repeats: int
    seed: int = 0

    def __post_init__(self):
        if self.count < 1 or self.repeats < 1:
            raise TrainingError(f"canaries need count >= 1 and repeats >= 1, got {self.count} and {self.repeats}")

    def choose(self, num_images: int) -> list[int]:
        """The canaries' indices in a set of num_images: numpy's default_rng(seed).choice(num_images,
        count, replace=False), sorted."""
        if self.count > num_images:
            raise TrainingError(f"{self.count} canaries asked of a training set of {num_images} images")
        return sorted(int(i) for i in np.random.default_rng(self.seed).choice(num_images, self.count, replace=False))


def _label(metadata: dict) -> str | None:
    label = metadata.get("label_name", metadata.get("label"))
    return None if label is None else str(label)


def plant_canaries(training_set: TrainingSet, canaries: Canaries) -> tuple[TrainingSet, dict]:
    """(the data a canary network trains on, the record of how it was made): the training set's
    images in order, then `repeats` rounds of the canaries in index order (round r's ids are
    the canary's id + "#copy" + r, metadata copied), so each canary is in it 1 + repeats times."""
    indices = canaries.choose(len(training_set))
    rounds = range(1, canaries.repeats + 1)
    planted = TrainingSet(
        torch.cat([training_set.images, training_set.images[indices].repeat(canaries.repeats, 1, 1, 1)]),
        training_set.ids + [f"{training_set.ids[i]}{CANARY_COPY}{r}" for r in rounds for i in indices],
        [dict(m) for m in training_set.metadata] + [dict(training_set.metadata[i]) for _ in rounds for i in indices],
        f"{training_set.name}+canaries", training_set.source, training_set.xflip)
    record = {"count": canaries.count, "repeats": canaries.repeats, "seed": canaries.seed, "indices": indices,
              "ids": [training_set.ids[i] for i in indices],
              "sha256": [training_set.image_sha256(i) for i in indices],
              "labels": [_label(training_set.metadata[i]) for i in indices], "base": training_set.describe(),
              "chosen_by": "sorted(numpy.random.default_rng(seed).choice(base count, count, replace=False)): "
                           "indices into the base set",
              "layout": f"the base set's {len(training_set)} images in order, then {canaries.repeats} rounds of the "
                        f"canaries in index order (ids ID{CANARY_COPY}1 .. ID{CANARY_COPY}{canaries.repeats}): "
                        f"{len(planted)} images, each canary {1 + canaries.repeats} times",
              "sha256_definition": "sha256 of 'uint8:CxHxW' followed by the image's uint8 pixels "
                                   "(TrainingSet.image_sha256)"}
    return planted, record


# ---------------------------------------------------------------------------------------
# The training loop
# ---------------------------------------------------------------------------------------
ProgressCallback = Callable[[int, int, float], None]
LOSS_WINDOW = 100  # iterations per loss-curve point, and behind final_loss


def _check_data(training_set: TrainingSet, network: NetworkConfig) -> None:
    if tuple(training_set.image_shape) != network.image_shape:
        c, h, w = training_set.image_shape
        raise TrainingError(f"the training set has {c} channel(s) at {h}x{w}, the network config "
                            f"{network.image_channels} at {network.resolution[0]}x{network.resolution[1]}")


def train(training_set: TrainingSet, out: str | os.PathLike, network: NetworkConfig | None = None,
          config: TrainingConfig = TrainingConfig(), *, resume: bool = False, device="cpu",
          command: list[str] | None = None, half: bool = False, progress: ProgressCallback | None = None,
          log: Callable[[str], None] | None = None, canaries: Canaries | None = None) -> dict:
    """Train the EDM-preconditioned U-Net on `training_set` and save it to `out`.

    Writes `out` (EMA weights + config + record; float16 weights with half=True),
    `out`.json (the record), `NAME.state.pt` (weights, EMA, optimizer and progress, for
    resume=True) and, when config.preview_samples > 0, `NAME.png` (a sample grid) at every
    checkpoint and at the end. resume=True continues from the state file to
    config.iterations; the network config, data and seeds must match the saved run.
    canaries: train on `plant_canaries(training_set, canaries)` instead (the record's
    `canaries` says which images were duplicated and how often).
    progress(iteration, total, loss) is called after every iteration. Returns the record.
    """
    out = Path(out)
    if out.suffix != ".pt":
        raise TrainingError(f"the checkpoint path must end in .pt, got {out}")
    state_path = state_path_for(out)
    canary_record = None
    if canaries is not None:
        training_set, canary_record = plant_canaries(training_set, canaries)
    if network is None and resume and state_path.exists():
        network = saved_network_config(state_path)
    network = network or NetworkConfig(image_channels=training_set.channels, resolution=training_set.resolution)
    _check_data(training_set, network)
    run = _TrainingRun(training_set, network, config, torch.device(device), out, command, half,
                       log or (lambda message: None), canary_record)
    if resume:
        run.restore()
    elif state_path.exists() or out.exists():
        raise TrainingError(f"{out} (or its state {state_path.name}) already exists: pass resume to continue it, "
                            f"or choose another output path")
    return _optimize(run, progress)


def _optimize(run: "_TrainingRun", progress: ProgressCallback | None) -> dict:
    """Iterations run.start .. config.iterations - 1, checkpointing when due and at the end."""
    config = run.config
    sampler = BatchSampler(len(run.training_set), config.batch_size, config.seed)
    run.begin_segment()
    last_save, last_save_iteration = run.began, run.start
    for iteration in range(run.start, config.iterations):
        y, sigma, noise = training_batch(run.training_set.images, sampler, run.loss_fn, iteration, config.seed,
                                         config.xflip)
        value = run.step(iteration, y, sigma, noise)
        done = run.log_loss(iteration, value)
        if progress is not None:
            progress(done, config.iterations, value)
        due = (config.checkpoint_every and done - last_save_iteration >= config.checkpoint_every) or \
              (config.checkpoint_seconds and time.perf_counter() - last_save >= config.checkpoint_seconds)
        if due and done < config.iterations:
            run.checkpoint(done, final=False)
            last_save, last_save_iteration = time.perf_counter(), done
    if run.window:
        run.history.append([config.iterations, round(sum(run.window) / len(run.window), 6)])
    return run.checkpoint(config.iterations, final=True)


class _TrainingRun:
    """One call of `train`: the network, its EMA copy and the optimizer, the loss
    bookkeeping (curve, recent losses, time segments) and the checkpoint writer."""

    def __init__(self, training_set: TrainingSet, network: NetworkConfig, config: TrainingConfig,
                 device: torch.device, out: Path, command: list[str] | None, half: bool,
                 say: Callable[[str], None], canaries: dict | None = None):
        self.training_set, self.network, self.config, self.device = training_set, network, config, device
        self.canaries = canaries
        self.out, self.state_path, self.command, self.half, self.say = out, state_path_for(out), command, half, say
        self.loss_fn = EDMLoss(config.P_mean, config.P_std, network.sigma_data)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(config.seed)  # the initial weights follow the seed too
            self.net = EDMPrecond(network).to(device).train()
        self.ema = copy.deepcopy(self.net).eval().requires_grad_(False)
        self.optimizer = torch.optim.Adam(self.net.parameters(), lr=config.lr, betas=(config.beta1, config.beta2),
                                          eps=1e-8)
        self.start, self.history, self.recent, self.segments, self.wall_before = 0, [], [], [], 0.0
        self.window: list[float] = []  # losses since the last loss-curve point

    def restore(self) -> None:
        """Continue from the state file (weights, EMA, optimizer, progress)."""
        (self.start, self.history, self.recent, self.segments,
         self.wall_before) = _restore(self.state_path, self.net, self.ema, self.optimizer, self.training_set,
                                      self.network, self.config, self.device)
        self.say(f"resuming {self.state_path} at iteration {self.start}")
        if self.start >= self.config.iterations:
            raise TrainingError(f"{self.state_path}: already trained {self.start} iterations; raise iterations "
                                f"above that to continue")

    def begin_segment(self) -> None:
        """Start timing this call's stretch of iterations (one entry of the record's segments)."""
        self.segment = {"started_at": _now(), "from_iteration": self.start}
        self.began = time.perf_counter()

    def _backward(self, y: torch.Tensor, sigma: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        loss = self.loss_fn(self.net, y.to(self.device), sigma.to(self.device), noise.to(self.device)).mean()
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        return loss

    def step(self, iteration: int, y: torch.Tensor, sigma: torch.Tensor, noise: torch.Tensor) -> float:
        """One Adam step on the EDM loss of iteration's batch, then the EMA update; the loss."""
        for group in self.optimizer.param_groups:
            group["lr"] = self.config.lr_at(iteration)
        if self.network.dropout > 0:  # dropout draws from the global generator: seed it by (seed, k) too
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(int(_generator(self.config.seed, 2, iteration).initial_seed()))
                loss = self._backward(y, sigma, noise)
        else:
            loss = self._backward(y, sigma, noise)
        for p in self.net.parameters():
            if p.grad is not None:
                torch.nan_to_num(p.grad, nan=0, posinf=1e5, neginf=-1e5, out=p.grad)
        self.optimizer.step()
        beta = self.config.ema_beta((iteration + 1) * self.config.batch_size)
        with torch.no_grad():
            for p_ema, p_net in zip(self.ema.parameters(), self.net.parameters()):
                p_ema.lerp_(p_net.detach(), 1 - beta)
        value = float(loss.detach())
        if not math.isfinite(value):
            raise TrainingError(f"loss became {value} at iteration {iteration}; lower the learning rate "
                                f"(lr={self.config.lr})")
        return value

    def log_loss(self, iteration: int, value: float) -> int:
        """Book iteration's loss: recent losses, and a loss-curve point (the window's mean)
        every LOSS_WINDOW iterations and at the last one. Returns the iterations done."""
        self.window.append(value)
        self.recent = (self.recent + [value])[-LOSS_WINDOW:]
        done = iteration + 1
        if len(self.window) == min(LOSS_WINDOW, self.config.iterations) or done == self.config.iterations:
            self.history.append([done, round(sum(self.window) / len(self.window), 6)])
            self.window = []
        return done

    def checkpoint(self, iteration: int, final: bool) -> dict:
        """Write the resume state, the EMA checkpoint, its JSON record and the preview grid."""
        config, ema = self.config, self.ema
        self.segment.update(to_iteration=iteration, wall_seconds=round(time.perf_counter() - self.began, 1))
        segments = self.segments + [self.segment]
        eval_loss = evaluation_loss(ema, self.training_set, self.loss_fn, config.eval_samples) \
            if config.eval_samples else None
        record = _record(self.training_set, self.network, config, self.net, self.history, self.recent, segments,
                         self.wall_before, iteration, eval_loss, self.command, self.device, self.out, self.half,
                         final, self.canaries)
        save_network(self.state_path, self.net, record=record, extra={
            "ema": {k: v.detach().cpu().clone() for k, v in ema.state_dict().items()},
            "optimizer": self.optimizer.state_dict(),
            "progress": json.dumps({"iteration": iteration, "history": self.history, "recent": self.recent,
                                    "segments": segments, "wall_before": self.wall_before,
                                    "training": asdict(config), "dataset": self.training_set.fingerprint})})
        save_network(self.out, ema, half=self.half, record=record)
        record_path_for(self.out).write_text(json.dumps(record, indent=2) + "\n")
        if config.preview_samples:
            save_samples(ema, self.out.with_suffix(".png"), num=config.preview_samples if not final else 64)
        self.say(f"checkpoint at iteration {iteration}: train loss {record['final_loss']}, eval loss {eval_loss}")
        return record


def _record(training_set, network, config, net, history, recent, segments, wall_before, iteration, eval_loss,
             command, device, out, half, final, canaries=None) -> dict:
    return {
        "what": "pspc EDM-preconditioned U-Net (pspc.networks.unet.EDMPrecond), EMA weights",
        "command": command,
        "complete": final,
        "iterations": iteration,
        "images_seen": iteration * config.batch_size,
        "epochs": round(iteration * config.batch_size / len(training_set), 3),
        "final_loss": round(sum(recent) / len(recent), 6) if recent else None,
        "final_loss_definition": "mean EDM-weighted training loss per pixel over the last <= 100 iterations",
        "eval_loss": None if eval_loss is None else round(eval_loss, 6),
        "eval_loss_definition": f"EDM loss of the EMA weights on {config.eval_samples} fixed (image, sigma, noise) "
                                f"draws from the training set (seed 12345)",
        "loss_curve": history,
        "wall_seconds": round(wall_before + sum(s.get("wall_seconds", 0) for s in segments[-1:]), 1),
        "segments": segments,
        "network": json.loads(network.to_json()),
        "parameters": sum(p.numel() for p in net.parameters()),
        "training": asdict(config),
        "loss": {"kind": "EDM", "P_mean": config.P_mean, "P_std": config.P_std, "sigma_data": network.sigma_data},
        "dataset": training_set.describe(),
        **({"canaries": canaries} if canaries is not None else {}),
        "checkpoint": {"path": str(out), "weights": "ema", "dtype": "float16" if half else "float32",
                       "state": str(state_path_for(out))},
        "preview": None if not config.preview_samples else {
            "path": str(out.with_suffix(".png")), "samples": 64 if final else config.preview_samples,
            "sampler": "heun", "steps": 18, "schedule": "EDM (t_max 80, t_min 0.002, rho 7)",
            "seeds": f"0..{(64 if final else config.preview_samples) - 1} (pspc.samplers.initial_noise)"},
        **environment(device),
        "written_at": _now(),
    }


def saved_network_config(state_path: str | os.PathLike) -> NetworkConfig:
    """The network config stored in a checkpoint or training state."""
    try:
        return NetworkConfig.from_dict(json.loads(read_checkpoint(state_path)["config"]))
    except (KeyError, ValueError) as exc:
        raise TrainingError(f"{state_path}: unreadable network config ({exc})") from None


def _restore(state_path: Path, net, ema, optimizer, training_set, network, config, device):
    if not state_path.exists():
        raise TrainingError(f"nothing to resume: {state_path} does not exist")
    try:
        payload = read_checkpoint(state_path)
        progress = json.loads(payload["progress"])
        saved_network = NetworkConfig.from_dict(json.loads(payload["config"]))
    except (NetworkError, KeyError, ValueError) as exc:
        raise TrainingError(f"{state_path}: not a usable training state ({exc})") from None
    if saved_network != network:
        raise TrainingError(f"{state_path}: saved with network {saved_network}, asked for {network}")
    if progress.get("dataset") != training_set.fingerprint:
        raise TrainingError(f"{state_path}: trained on data with fingerprint {progress.get('dataset')}, "
                            f"given {training_set.fingerprint} (pass the same data, limit and canaries)")
    saved = progress.get("training", {})
    changed = [k for k in ("batch_size", "seed", "xflip", "P_mean", "P_std", "lr", "lr_warmup", "ema_halflife_images",
                           "ema_rampup_ratio", "beta1", "beta2") if k in saved and saved[k] != getattr(config, k)]
    if changed:
        raise TrainingError(f"{state_path}: resuming needs the same {', '.join(changed)} as the saved run "
                            f"({', '.join(f'{k}={saved[k]}' for k in changed)})")
    net.load_state_dict(payload["weights"])
    ema.load_state_dict(payload["ema"])
    optimizer.load_state_dict(payload["optimizer"])
    net.to(device)
    ema.to(device)
    return (int(progress["iteration"]), progress["history"], progress.get("recent", []), progress["segments"],
            float(progress["wall_before"]) + float(progress["segments"][-1].get("wall_seconds", 0)))
