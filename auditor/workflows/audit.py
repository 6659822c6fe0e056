"""Auditing an image from outside the store: which training images is it composed of?

Two ways; the run (runs.kind 'external-audit') records which in runs.details['method']:

- 'inversion' (with a network): the image x is taken as the state of the network's
  deterministic PF-ODE at t_min and integrated backwards, the sampler's own steps in
  reverse (Euler or Heun), up to t_max: z_T is the noise the network would turn into x.
  The trajectory is then replayed forward from z_T with the network exactly as a
  network-explained run (auditor.workflows.comparison): at every step PSPC's posterior on the
  replay's z_t is recorded as attribution, with the network's D(z_t) and the MSE between
  the two (step_agreement). details['reconstruction'] compares the replay's end point with
  x: a large error means the ODE was not inverted faithfully (too few steps, Euler), and
  the attribution then describes a nearby image. Heun is the default (second order).
- 'direct' (no network): PSPC's posterior on z = x + t eps at chosen noise levels (t
  descending; eps of draw i seeded with seed + i, the same eps at every level), one
  recorded step per level. t_next is the next lower level (0 after the last), so the
  views read the levels as a trajectory: sample_sources is the attribution at the lowest
  level, trajectory_sources weights level k by 1 - t_{k+1} / t_k.

Either way every sample's final image is the audited image itself, and copy detection
(auditor.similarity.copy_detection) stores its nearest training images in copy_matches.
The image's copy verdict (auditor.workflows.verdicts: copy / partial copy / no copy found /
inconclusive, from the store's calibration) goes to copy_verdicts; a failed inversion makes
it `inconclusive: inversion failed`.

Input: a PNG / JPEG / BMP / WebP file (decoded by pspc.data.image_folder.decode_images: 8-bit
gray or RGB, alpha composited onto black) or a .npy array ([H, W], [C, H, W] or
[H, W, C]; uint8 pixels, or floats in the diffusion range [-1, 1]). It must have the
training set's size and channels: patches are compared position by position, so nothing
is resized. An RGB picture whose three channels are equal counts as grayscale.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch

from pspc.data.arrays import load_npy
from pspc.data.image_folder import IMAGE_SUFFIXES, decode_images
from pspc.data.training_set import TrainingSet, TrainingSetError
from pspc.denoisers import Denoiser, NetworkDenoiser
from pspc.posterior.weights import WeightRequest
from pspc.record import file_sha256
from pspc.samplers import SamplerConfig, denoise_step, initial_noise, invert

from auditor.errors import UserError
from auditor.similarity.copy_detection import check_thresholds
from auditor.similarity.descriptors import load_descriptor
from auditor.store import database, datasets
from auditor.store.comparisons import agreement_table
from auditor.store.networks import register_network
from auditor.store.recorder import ExplainedRecorder
from auditor.store.runs import create_run, load_run, mark_failed
from auditor.workflows.comparison import (
    build_pspc, load_comparison_network, record_copy_matches, record_explained_run, schedule_kinds
)
from auditor.workflows.options import DEFAULT_NOISE_LEVELS, AuditOptions, Runtime
from auditor.workflows.verdicts import record_verdicts

__all__ = ["DEFAULT_NOISE_LEVELS", "AuditInputError", "AuditOptions", "AuditResult", "invert", "load_audit_image",
           "record_audit"]

FLOAT_RANGE_LIMIT = 2.0  # float inputs beyond +-2 are another range (0-255), not overshoot


class AuditInputError(UserError):
    """An image that cannot be audited: names the file and the problem."""


# ---------------------------------------------------------------------------------------
# Input
# ---------------------------------------------------------------------------------------
def _read_picture(path: Path) -> tuple[torch.Tensor, dict]:
    try:
        pixels = decode_images([(path.name, str(path), lambda: open(path, "rb"))], size=None, resize="error",
                                channels=None)[0]
    except TrainingSetError as exc:
        raise AuditInputError(str(exc)) from None
    return torch.from_numpy(pixels.astype(np.float32) / 127.5 - 1.0), {"dtype": "uint8"}


def _read_array(path: Path) -> tuple[torch.Tensor, dict]:
    try:
        array = load_npy(path)
    except Exception as exc:  # noqa: BLE001 - numpy raises ValueError, OSError, EOFError, ...
        raise AuditInputError(f"{path}: not a readable .npy array ({exc})") from None
    shape = array.shape
    if array.ndim == 4 and shape[0] == 1:
        array = array[0]
    if array.ndim == 2:
        array = array[None]
    elif array.ndim == 3:
        if array.shape[0] not in (1, 3) and array.shape[-1] in (1, 3):  # [H, W, C]
            array = np.moveaxis(array, -1, 0)
        elif array.shape[0] not in (1, 3):
            raise AuditInputError(f"{path}: array of shape {shape} has no channel axis of size 1 or 3 "
                                  f"([C, H, W] or [H, W, C])")
    else:
        raise AuditInputError(f"{path}: expected one image [H, W], [C, H, W] or [H, W, C], got shape {shape}")
    if array.dtype == np.uint8:
        return torch.from_numpy(array.astype(np.float32) / 127.5 - 1.0), {"dtype": "uint8"}
    if not np.issubdtype(array.dtype, np.floating):
        raise AuditInputError(f"{path}: array dtype {array.dtype}; expected uint8 pixels (0..255) or floats in "
                              f"the diffusion range [-1, 1]")
    values = array.astype(np.float64)
    if not np.isfinite(values).all():
        raise AuditInputError(f"{path}: the array holds NaN or infinite values ({int((~np.isfinite(values)).sum())} "
                              f"of {values.size})")
    low, high = float(values.min()), float(values.max())
    if low < -FLOAT_RANGE_LIMIT or high > FLOAT_RANGE_LIMIT:
        raise AuditInputError(f"{path}: float values in [{low:.4g}, {high:.4g}]; floats must be in the diffusion "
                              f"range [-1, 1] (save 0..255 pixels as uint8)")
    return torch.from_numpy(values.astype(np.float32)), {"dtype": str(array.dtype)}


def load_audit_image(path, image_shape: Sequence[int]) -> tuple[torch.Tensor, dict]:
    """The image at `path` as float32 [C, H, W] in [-1, 1], checked against `image_shape`,
    and a record of the input (path, sha256, format, dtype, shape). AuditInputError names
    the file and the problem (missing, corrupt, wrong size or channels, NaN, wrong range)."""
    path = Path(path)
    if not path.exists():
        raise AuditInputError(f"{path}: no such file")
    if not path.is_file():
        raise AuditInputError(f"{path}: not a regular file")
    suffix = path.suffix.lower()
    if suffix == ".npy":
        image, info = _read_array(path)
    elif suffix in IMAGE_SUFFIXES:
        image, info = _read_picture(path)
    else:
        raise AuditInputError(f"{path}: unsupported file type {suffix or '(none)'!r}; give a "
                              f"{', '.join(s.lstrip('.').upper() for s in IMAGE_SUFFIXES)} image or a .npy array")
    c, h, w = (int(v) for v in image_shape)
    decoded = tuple(image.shape)
    if image.shape[0] == 3 and c == 1:
        if not (torch.equal(image[0], image[1]) and torch.equal(image[0], image[2])):
            raise AuditInputError(f"{path}: a colour image (3 channels); the training set is grayscale (1 channel). "
                                  f"Convert it to grayscale first")
        image, info["converted"] = image[:1], "RGB with equal channels taken as grayscale"
    if image.shape[0] != c:
        raise AuditInputError(f"{path}: {image.shape[0]} channel(s), the training set's images have {c}")
    if tuple(image.shape[1:]) != (h, w):
        raise AuditInputError(f"{path}: the image is {image.shape[1]}x{image.shape[2]} (HxW), the training set's "
                              f"images are {h}x{w}; resize or crop it first (patches are compared position by "
                              f"position, so nothing is resized here)")
    info.update(path=str(path.resolve()), sha256=file_sha256(path), format=suffix.lstrip("."), decoded_shape=list(decoded),
                shape=list(image.shape))
    return image.contiguous(), info


# ---------------------------------------------------------------------------------------
# The audit
# ---------------------------------------------------------------------------------------
@dataclass
class AuditResult:
    """What record_audit wrote."""

    run_id: int
    method: str  # 'inversion' or 'direct'
    network_id: int | None
    details: dict
    agreement: list[dict] = field(default_factory=list)  # per step (inversion only)
    copies: object | None = None  # copy_detection.CopyDetectionResult of the image
    verdict: object | None = None  # similarity.verdict.Verdict of the image (stored in copy_verdicts)



def _audit_input(image, training_set: TrainingSet) -> tuple[torch.Tensor, dict]:
    """The image as float32 [C, H, W] and the record of the input (a file, or a tensor)."""
    if not isinstance(image, torch.Tensor):
        return load_audit_image(image, training_set.image_shape)
    x = image.detach().to(torch.float32).cpu()
    if tuple(x.shape) != tuple(training_set.image_shape) or not torch.isfinite(x).all():
        raise AuditInputError(f"the image tensor must be finite, of shape {tuple(training_set.image_shape)}; "
                              f"got {tuple(x.shape)}")
    return x, {"path": None, "format": "tensor", "shape": list(x.shape)}


def _record_inversion(db_path, training_set: TrainingSet, x: torch.Tensor, network: NetworkDenoiser, source: dict,
                      config: SamplerConfig, options: AuditOptions, runtime: Runtime,
                      distribute: Callable[[Denoiser], Denoiser] | None = None) -> tuple[int, int]:
    """Invert x along the network's PF-ODE, replay it with attribution: (run id, network id)."""
    network_id = register_network(db_path, network, timeout=runtime.timeout)
    x_batch = x[None].to(network.device)
    z_t = invert(network, x_batch, config, runtime.progress)
    if not torch.isfinite(z_t).all():
        raise UserError("the inversion diverged (NaN or infinite values): try more steps or Heun")
    details = {"method": "inversion", "input": source, "network": {"id": network_id, "name": network.name},
               "inversion": {"sampler": options.sampler, "steps": options.steps - 1,
                             "from_t": config.time_steps()[-2].item(), "to_t": config.t_max,
                             "latent_mean": float(z_t.mean() / config.t_max),
                             "latent_std": float(z_t.std() / config.t_max)},
               "note": "latent_std near 1 means the inverted noise looks like the Gaussian the sampler starts "
                       "from; steps.denoised is PSPC's D(z_t) on the replay, the network's is in step_agreement"}

    def reconstruction(network_final: torch.Tensor) -> dict:
        diff = network_final.detach().cpu().to(torch.float64) - x_batch.cpu().to(torch.float64)
        return {"reconstruction": {"mse": float(diff.square().mean()), "max_abs_error": float(diff.abs().max()),
                                   "what": "the replay's end point (the network's D at the last step) vs the "
                                           "audited image"}}

    run_id = record_explained_run(db_path, training_set, network, z_t, network_id=network_id, config=config,
                                  options=options.explain(), kind="external-audit", details=details, final=x_batch,
                                  complete_details=reconstruction, runtime=runtime, distribute=distribute)
    return run_id, network_id


def _record_direct(db_path, training_set: TrainingSet, dataset_id: int, x: torch.Tensor, levels: list[float],
                   source: dict, options: AuditOptions, runtime: Runtime,
                   distribute: Callable[[Denoiser], Denoiser] | None = None) -> int:
    """PSPC's posterior on x + t eps at each level (descending), one recorded step per level."""
    request = WeightRequest(top_k=options.top_k, mass=options.mass)
    draws = options.draws
    denoiser = build_pspc(options.explainer, training_set, patch_size=options.patch_size, schedule=options.schedule)
    denoiser = (denoiser if distribute is None else distribute(denoiser)).to(runtime.device)
    times = levels + [0.0]
    sampler = {"method": "direct", "noise_levels": levels, "time_steps": times, "num_steps": len(levels),
               "draws": draws}
    details = {"method": "direct", "input": source, "noise_levels": levels, "draws": draws,
               "note": "z = x + t eps at each level, eps of draw i seeded with seed + i; t_next is the next lower "
                       "level, so sample_sources is the attribution at the lowest level"}
    run_id = create_run(db_path, dataset_id, denoiser=denoiser.describe(), sampler=sampler, seed=options.seed,
                        num_samples=draws, top_k=request.top_k, mass=request.mass, command=runtime.command,
                        kind="external-audit", details=details, timeout=runtime.timeout)
    try:
        x_batch = x[None].expand(draws, -1, -1, -1).to(runtime.device)
        eps = initial_noise(draws, training_set.image_shape, options.seed, 1.0, runtime.device)
        recorder = ExplainedRecorder(db_path, run_id, len(training_set), times, timeout=runtime.timeout,
                                     final=x_batch)
        for step, t in enumerate(levels):
            z = x_batch + t * eps
            denoised, weights = denoise_step(denoiser, z, t, request)
            recorder(step, t, z, denoised, weights)
            if runtime.progress is not None:
                runtime.progress(1)
    except BaseException as exc:
        mark_failed(db_path, run_id, exc, runtime.timeout)
        raise
    return run_id


def record_audit(db_path, training_set: TrainingSet, image, *, network=None, options: AuditOptions = AuditOptions(),
                 runtime: Runtime = Runtime(), distribute: Callable[[Denoiser], Denoiser] | None = None) -> AuditResult:
    """Audit `image` (a file path, or a float tensor [C, H, W] in [-1, 1]) against the
    training set; see the module docstring. network given (NetworkDenoiser, module or file):
    inversion with `options.steps` / `options.sampler`, then the replay recorded; network
    None: direct attribution at `options.noise_levels` with `options.draws` noise draws.
    copy_k = 0 skips copy detection. schedule / sensitivity_draws: see
    auditor.workflows.comparison.build_pspc (with a network, pspc-flex takes its masks from
    it). Everything is checked before anything is written. distribute: applied to the PSPC
    denoiser (auditor.workflows.distributed: its shard over ranks, rank 0 leading)."""
    thresholds = check_thresholds(options.thresholds)  # the options validated themselves when built
    x, source = _audit_input(image, training_set)
    if network is not None:
        options.check_inversion()
        config = SamplerConfig(method=options.sampler, num_steps=options.steps)
        network = load_comparison_network(network, training_set, runtime.device)
    else:
        levels = sorted((float(t) for t in options.noise_levels), reverse=True)
    if options.schedule is not None and options.explainer not in schedule_kinds(options.schedule, training_set):
        raise AuditInputError(f"{options.schedule}: the schedule file has no schedule for the explainer "
                              f"{options.explainer}")
    database.require_current(db_path, runtime.timeout)
    descriptor = load_descriptor(options.descriptor, device=runtime.device) if options.copy_k else None
    dataset_id, _ = datasets.ingest(db_path, training_set, timeout=runtime.timeout)
    network_id, agreement = None, []
    if network is not None:
        run_id, network_id = _record_inversion(db_path, training_set, x, network, source, config, options, runtime,
                                               distribute)
        agreement = agreement_table(db_path, run_id, timeout=runtime.timeout)
    else:
        run_id = _record_direct(db_path, training_set, dataset_id, x, levels, source, options, runtime, distribute)
    details = load_run(db_path, run_id, timeout=runtime.timeout)[0]["details"]
    copies = None
    if options.copy_k:
        copies = record_copy_matches(db_path, [run_id], training_set, descriptor, k=options.copy_k,
                                     thresholds=thresholds, timeout=runtime.timeout)[run_id]
    verdict = record_verdicts(db_path, training_set, dataset_id, run_id, x[None],
                              reconstruction=details.get("reconstruction"),
                              repeat=1 if network is not None else options.draws,
                              descriptor=options.verdict_descriptor, timeout=runtime.timeout)[0]
    return AuditResult(run_id, details["method"], network_id, details, agreement, copies, verdict)
