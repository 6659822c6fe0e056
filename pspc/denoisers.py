"""Denoisers D(z, t) ~ E[x | z, t], one interface for all of them.

z is a batch [B, C, H, W] in data units (x + t eps, x in [-1, 1]) and t a per-sample noise
level [B] (a scalar is broadcast), so a batch may mix noise levels. PSPC denoisers can also
return their patch posterior weights (`posterior`), which are the attribution.
"""

from __future__ import annotations

import copy
import functools
import hashlib
import numbers
from abc import ABC, abstractmethod
from typing import Callable

import numpy as np
import torch

from pspc.errors import InputError
from pspc.posterior import fused_kernels
from pspc.posterior.patch_posterior import DEFAULT_CHUNK_BYTES, ExclusionError, check_excluded, patch_posterior
from pspc.posterior.patch_sets import PatchSet, WindowPatches, flex_patches, square_patches
from pspc.posterior.weights import PosteriorWeights, WeightRequest
from pspc.schedules import T_VALID_MAX, T_VALID_MIN, Schedule, default_flex_schedule, default_patch_schedule
from pspc.data.training_set import TrainingSet


class DenoiserInputError(InputError):
    """Bad denoiser input: wrong shape, channel count, resolution, NaN, t or |z| out of range."""


# Largest |z| accepted: noisy images x + t eps at t <= T_VALID_MAX stay far below it (about
# 7e4 at 1e4, 500 at t_max = 80), while the squared distances the kernels sum (float32 on
# the torch path) overflow once |z| reaches ~1e17.
Z_MAX = 1e6


def _check_output(out: torch.Tensor) -> torch.Tensor:
    if not torch.isfinite(out).all():
        bad = int((~torch.isfinite(out)).sum())
        raise DenoiserInputError(f"the denoiser gave non-finite values ({bad} of {out.numel()}) for this input")
    return out


class Denoiser(torch.nn.Module, ABC):
    """Base class: validates (z, t) and defines the reproducibility record."""

    image_shape: tuple[int, int, int]

    def forward(self, z: torch.Tensor, t) -> torch.Tensor:
        z, t = self.check_input(z, t)
        return _check_output(self.denoise(z, t))

    @abstractmethod
    def denoise(self, z: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """D(z, t) for validated z [B, C, H, W] and t [B] > 0."""

    @abstractmethod
    def describe(self) -> dict:
        """JSON-able record of the denoiser (kind, parameters, data fingerprint)."""

    @property
    def device(self) -> torch.device:
        buffers = list(self.buffers())
        return buffers[0].device if buffers else torch.device("cpu")

    @property
    def excluded(self) -> torch.Tensor | None:
        """The training images removed by `without` (bool [N]), or None."""
        return None

    def without(self, image_indices) -> "Denoiser":
        """The counterfactual denoiser: the same one with these training images (and their
        mirrored entries) removed. Only denoisers that weigh training images can."""
        kind = self.describe().get("kind", type(self).__name__)
        raise ExclusionError(f"counterfactual removal needs a PSPC denoiser (pspc-square, pspc-flex, empirical) "
                             f"or cfdm; a {kind} denoiser has no per-image weights to remove")

    def _removal_record(self) -> dict:
        """{"removed": {count, sha256 of the sorted indices as little-endian int64}} when
        images are removed, else {} (so the unmasked record is unchanged)."""
        if self.excluded is None:
            return {}
        indices = self.excluded.nonzero()[:, 0].numpy().astype("<i8")
        return {"removed": {"count": len(indices), "sha256": hashlib.sha256(indices.tobytes()).hexdigest()}}

    def _sharing_copy(self) -> "Denoiser":
        """A shallow copy: the same tensors, submodules and caches (nothing is copied), with
        its own module registries, so that changing its attributes leaves self alone."""
        clone = copy.copy(self)
        for name, value in vars(self).items():
            if name.startswith("_") and isinstance(value, (dict, set)):
                clone.__dict__[name] = copy.copy(value)
        return clone

    def check_input(self, z: torch.Tensor, t) -> tuple[torch.Tensor, torch.Tensor]:
        """(z, t [B] float64 on z's device): z a finite float batch of the training images'
        shape, t finite and > 0 (a scalar is broadcast); else DenoiserInputError."""
        if not isinstance(z, torch.Tensor):
            raise DenoiserInputError(f"z must be a tensor, got {type(z).__name__}")
        if z.ndim != 4:
            raise DenoiserInputError(f"z must be a batch [B, C, H, W], got shape {tuple(z.shape)}")
        if tuple(z.shape[1:]) != tuple(self.image_shape):
            c, h, w = self.image_shape
            raise DenoiserInputError(
                f"z has {z.shape[1]} channels at {z.shape[2]}x{z.shape[3]}, the training set has {c} at {h}x{w}")
        if not z.is_floating_point():
            raise DenoiserInputError(f"z must be floating point, got {z.dtype}")
        if not torch.isfinite(z).all():
            raise DenoiserInputError("z contains NaN or infinite values")
        if z.numel() and (largest := float(z.abs().max())) > Z_MAX:
            raise DenoiserInputError(f"|z| must be <= {Z_MAX:g} (noisy images at t <= {T_VALID_MAX:g} are far "
                                     f"smaller), got {largest:g}")
        t = torch.as_tensor(t, dtype=torch.float64, device=z.device)
        if t.ndim == 0:
            t = t.expand(z.shape[0])
        if t.shape != (z.shape[0],):
            raise DenoiserInputError(f"t must be a scalar or one value per sample [{z.shape[0]}], got shape {tuple(t.shape)}")
        if not torch.isfinite(t).all() or (t <= 0).any():
            raise DenoiserInputError(f"t must be finite and > 0, got {t.tolist()}")
        if ((t < T_VALID_MIN) | (t > T_VALID_MAX)).any():
            bad = [v for v in t.tolist() if not T_VALID_MIN <= v <= T_VALID_MAX]
            raise DenoiserInputError(f"t must be in [{T_VALID_MIN:g}, {T_VALID_MAX:g}], got {bad[0]:g}")
        return z, t


class TrainingSetDenoiser(Denoiser):
    """A denoiser defined by a training set: holds it as a buffer so .to(device) moves it."""

    def __init__(self, training_set: TrainingSet):
        super().__init__()
        self.training_set = training_set
        self.image_shape = training_set.image_shape
        self.register_buffer("data", training_set.as_float(), persistent=False)

    def _record(self, kind: str, **params) -> dict:
        return {"kind": kind, "dataset": self.training_set.describe(), **params, **self._removal_record()}


def removal_mask(image_indices, num_images: int) -> torch.Tensor:
    """bool [num_images], True at the given training image indices (integers in
    [0, num_images), repeats allowed); ExclusionError naming the first bad one."""
    if isinstance(image_indices, (torch.Tensor, np.ndarray)):
        if image_indices.ndim > 1:
            raise ExclusionError(f"training image indices must be a flat list, got shape {tuple(image_indices.shape)}")
        image_indices = image_indices.tolist()
    if isinstance(image_indices, (str, bytes)) or not hasattr(image_indices, "__iter__"):
        raise ExclusionError(f"training image indices must be a list of integers, got {image_indices!r}")
    values = list(image_indices)
    for value in values:
        if isinstance(value, bool) or not isinstance(value, numbers.Integral):
            raise ExclusionError(f"training image indices must be integers, got {value!r}")
    for value in values:
        if not 0 <= value < num_images:
            raise ExclusionError(f"training image index {value} is out of range: the training set has "
                                 f"{num_images} images (0..{num_images - 1})")
    mask = torch.zeros(num_images, dtype=torch.bool)
    mask[torch.tensor([int(value) for value in values], dtype=torch.long)] = True
    return mask


class _BlockedImages:
    """The data laid out for the fused CPU kernels, built on first use and shared by every
    denoiser derived with `without` (one layout of the images, not one per counterfactual)."""

    def __init__(self, training_set: TrainingSet):
        self.training_set = training_set
        self.value = None

    def __call__(self):
        if self.value is None:
            self.value = fused_kernels.block_images(self.training_set.as_float().numpy())
        return self.value


class PSPCDenoiser(TrainingSetDenoiser):
    """Patch Set Posterior Composite (Eq. 11) with a patch set chosen per noise level.

    patch_set_at(t) returns the patch set for noise level t; samples of a batch that
    share a patch set are computed together.
    """

    reduction = None  # patch_posterior's, for one shard of the set (pspc.sharded); None: the whole set here

    def __init__(self, training_set: TrainingSet, patch_set_at: Callable[[float], PatchSet], kind: str,
                 schedule: dict | None = None, chunk_bytes: int = DEFAULT_CHUNK_BYTES):
        super().__init__(training_set)
        self.patch_set_at = patch_set_at
        self.kind = kind
        self.schedule = schedule or {}
        self.chunk_bytes = chunk_bytes
        self._images_t = _BlockedImages(training_set)
        self._excluded = None

    @property
    def excluded(self) -> torch.Tensor | None:
        return self._excluded

    def without(self, image_indices) -> "PSPCDenoiser":
        """The same denoiser with these training images (and their mirrors) removed, in
        addition to any removed already: it shares the training set, the data and the
        fused layout (no copy of the images), and numbers the entries as the whole set does."""
        removed = removal_mask(image_indices, len(self.training_set))
        if self._excluded is not None:
            removed |= self._excluded
        clone = self._sharing_copy()
        clone._excluded = check_excluded(removed, len(self.training_set))
        return clone

    def denoise(self, z, t):
        return self._run(z, t, None)[0]

    def posterior(self, z: torch.Tensor, t, request: WeightRequest = WeightRequest()) -> tuple[torch.Tensor, list[tuple[torch.Tensor, PosteriorWeights]]]:
        """D(z, t) and the posterior weights, as a list of (batch indices, weights), one per patch set."""
        z, t = self.check_input(z, t)
        x_hat, weights = self._run(z, t, request)
        return _check_output(x_hat), weights

    def _run(self, z, t, request):
        groups: dict[int, tuple[PatchSet, list[int]]] = {}
        for b, t_b in enumerate(t.tolist()):
            patch_set = self.patch_set_at(t_b)
            groups.setdefault(id(patch_set), (patch_set, []))[1].append(b)
        x_hat = torch.empty_like(z)
        weights = []
        for patch_set, members in groups.values():
            index = torch.tensor(members, device=z.device)
            out, w = patch_posterior(z[index], t[index], self.data.to(z.dtype), patch_set,
                                     self.training_set.xflip, request, self.chunk_bytes,
                                     self._images_t() if z.device.type == "cpu" else None, self._excluded,
                                     self.reduction)
            x_hat[index] = out
            if w is not None:
                weights.append((index.cpu(), w))
        return x_hat, weights

    def describe(self):
        return self._record(self.kind, schedule=self.schedule)


def _cached(make: Callable) -> Callable:
    """Memoise a patch-set factory on its key: sampling reuses a few patch sets at every
    step; the bound keeps a long-lived denoiser fed many distinct t from growing."""
    return functools.lru_cache(maxsize=64)(make)


def pspc_square(training_set: TrainingSet, patch_size: int | Schedule | None = None, **options) -> PSPCDenoiser:
    """PSPC-Square: all s x s windows, s fixed or s = s(t) from a schedule (default: the
    paper's, with the resolution rule of `default_patch_schedule`)."""
    _, height, width = training_set.image_shape
    if patch_size is None:
        patch_size = default_patch_schedule(height, width)
    windows = _cached(lambda s: square_patches(height, width, int(s)))
    if isinstance(patch_size, Schedule):
        return PSPCDenoiser(training_set, lambda t: windows(patch_size(t)), "pspc-square",
                            {"patch_size": patch_size.describe()}, **options)
    return PSPCDenoiser(training_set, lambda t: windows(patch_size), "pspc-square",
                        {"patch_size": int(patch_size)}, **options)


def pspc_flex(training_set: TrainingSet, sensitivity: Callable[[float], torch.Tensor],
              lambdas: Schedule | None = None, sensitivity_name: str = "custom", **options) -> PSPCDenoiser:
    """PSPC-Flex: per-pixel masks from a sensitivity map G(t) [H, W, H, W] and lambda(t) (Eq. 12).

    Masks are rebuilt for each distinct (lambda, G) and cached by noise level."""
    lambdas = lambdas or default_flex_schedule()
    masks = _cached(lambda t: flex_patches(sensitivity(t), lambdas(t)))
    return PSPCDenoiser(training_set, lambda t: masks(float(t)), "pspc-flex",
                        {"lambda": lambdas.describe(), "sensitivity": sensitivity_name}, **options)


def network_flex(training_set: TrainingSet, sensitivity: Callable[[float], torch.Tensor],
                 lambdas: Schedule | None = None, **options) -> PSPCDenoiser:
    """PSPC-Flex with masks from a network's sensitivity maps t -> G(t) (Eq. 8, e.g.
    `pspc.posterior.sensitivity.SensitivityMaps`) and lambda(t) (Eq. 12; default: the paper's
    list). Unlike `pspc_flex`, where lambda(t) >= 1 every mask is the whole image, so the
    whole-image patch set is used and G is not needed there (no Jacobians at high t); the
    record holds the source's describe()."""
    lambdas = lambdas or default_flex_schedule()
    _, height, width = training_set.image_shape
    whole = WindowPatches(height, width, height, width)

    @functools.lru_cache(maxsize=64)
    def patch_set(t: float):
        lam = float(lambdas(t))
        return whole if lam >= 1 else flex_patches(sensitivity(t), lam)

    describe = getattr(sensitivity, "describe", None)
    record = {"lambda": lambdas.describe(), "sensitivity": describe() if describe else getattr(sensitivity, "__name__", "custom")}
    return PSPCDenoiser(training_set, lambda t: patch_set(float(t)), "pspc-flex", record, **options)


class EmpiricalDenoiser(PSPCDenoiser):
    """The optimal denoiser of the empirical distribution (Eq. 6-7): one patch, the whole image."""

    def __init__(self, training_set: TrainingSet, **options):
        _, height, width = training_set.image_shape
        whole = WindowPatches(height, width, height, width)
        super().__init__(training_set, lambda t: whole, "empirical", **options)


class GaussianDenoiser(TrainingSetDenoiser):
    """Wang & Vastola: the optimal denoiser of the Gaussian fitted to the data,
    D(z) = mu + U diag(S / (S + t^2)) U^T (z - mu), optionally keeping the top `rank`
    eigenpairs. Statistics include the mirrored entries when the set has x-flips."""

    def __init__(self, training_set: TrainingSet, rank: int | None = None):
        super().__init__(training_set)
        x = training_set.entry_images(torch.float64).flatten(1)
        mean = x.mean(0)
        centered = x - mean
        covariance = centered.T @ centered / x.shape[0]
        eigenvalues, eigenvectors = torch.linalg.eigh(covariance)
        eigenvalues, eigenvectors = eigenvalues.flip(0).clamp(min=0), eigenvectors.flip(1)
        if rank is not None:
            if not 1 <= rank <= x.shape[1]:
                raise InputError(f"rank must be in [1, {x.shape[1]}], got {rank}")
            eigenvalues, eigenvectors = eigenvalues[:rank], eigenvectors[:, :rank]
        self.rank = rank
        self.register_buffer("mean", mean, persistent=False)
        self.register_buffer("eigenvalues", eigenvalues, persistent=False)
        self.register_buffer("eigenvectors", eigenvectors, persistent=False)

    def denoise(self, z, t):
        centered = z.to(torch.float64).flatten(1) - self.mean
        shrink = self.eigenvalues / (self.eigenvalues + t[:, None].square())  # [B, r]
        coefficients = centered @ self.eigenvectors * shrink
        out = self.mean + coefficients @ self.eigenvectors.T
        return out.view_as(z).to(z.dtype)

    def describe(self):
        return self._record("gaussian", rank=self.rank)


class CFDMDenoiser(Denoiser):
    """sigma-CFDM (Scarvelis, Borde, Solomon 2023) as an EDM denoiser.

    The paper works in rectified-flow time, z_rf = tau x + (1 - tau) eps with tau = 1 / (1 + t),
    so z_rf = z / (1 + t); its closed-form model k(z_rf) = tau * D_emp(z, t). Smoothing k
    over z_rf + sigma eps' is, in EDM units, evaluating D_emp at z + sigma (1 + t) eps' with
    the same t, and averaging over M draws. The draws come from a generator seeded by
    `seed`, so the denoiser is a deterministic function of (z, t)."""

    def __init__(self, training_set: TrainingSet, sigma: float = 0.1, draws: int = 8, seed: int = 0, **options):
        super().__init__()
        if sigma < 0 or draws < 1:
            raise InputError(f"need sigma >= 0 and draws >= 1, got sigma={sigma}, draws={draws}")
        self.sigma, self.draws, self.seed = sigma, draws, seed
        self.empirical = EmpiricalDenoiser(training_set, **options)  # holds the data
        self.training_set, self.image_shape = training_set, training_set.image_shape

    def denoise(self, z, t):
        generator = torch.Generator(device=z.device).manual_seed(self.seed)
        scale = (self.sigma * (1 + t)).to(z.dtype)[:, None, None, None]
        total = torch.zeros_like(z, dtype=torch.float64)
        for _ in range(self.draws):
            noise = torch.randn(z.shape, generator=generator, device=z.device, dtype=z.dtype)
            total += self.empirical.denoise(z + scale * noise, t)
        return (total / self.draws).to(z.dtype)

    @property
    def excluded(self) -> torch.Tensor | None:
        return self.empirical.excluded

    def without(self, image_indices) -> "CFDMDenoiser":
        """The same smoothing over the empirical denoiser without these training images."""
        clone = self._sharing_copy()
        clone.empirical = self.empirical.without(image_indices)
        return clone

    def describe(self):
        return {"kind": "cfdm", "dataset": self.training_set.describe(),
                "sigma": self.sigma, "draws": self.draws, "seed": self.seed, **self._removal_record()}


class NetworkDenoiser(Denoiser):
    """Any torch module with the EDM interface net(z, sigma) -> x_hat (sigma = t, shape [B])."""

    def __init__(self, net: torch.nn.Module, image_shape: tuple[int, int, int], name: str = "network",
                 record: dict | None = None):
        super().__init__()
        self.net = net
        self.image_shape = tuple(image_shape)
        self.name = name
        self.record = dict(record or {})  # provenance from pspc.networks.load_network (path, sha256, config)

    @property
    def device(self) -> torch.device:
        params = list(self.net.parameters()) + list(self.net.buffers())
        return params[0].device if params else torch.device("cpu")

    @torch.no_grad()
    def denoise(self, z, t):
        out = self.net(z, t.to(z.dtype))
        if tuple(out.shape) != tuple(z.shape):
            raise DenoiserInputError(f"network returned shape {tuple(out.shape)} for input {tuple(z.shape)}")
        return out.to(z.dtype)

    def describe(self):
        return {"kind": "network", "name": self.name, "image_shape": list(self.image_shape),
                **({"network": self.record} if self.record else {})}


DENOISER_KINDS = ("pspc-square", "pspc-flex", "empirical", "gaussian", "cfdm")


def build_denoiser(kind: str, training_set: TrainingSet, *, patch_size: int | None = None,
                   rank: int | None = None, cfdm_sigma: float = 0.1, cfdm_draws: int = 8,
                   seed: int = 0, schedule=None, **options) -> Denoiser:
    """The denoiser named `kind` over `training_set`, with the paper's defaults.

    pspc-square: patch_size fixed, or the default s(t) schedule when None.
    pspc-flex: isotropic stand-in sensitivity (see pspc.posterior.sensitivity) and the paper's lambda(t).
    schedule: a schedule file (pspc.evaluation.tuning) giving s(t) for pspc-square or lambda(t) for pspc-flex.
    """
    from pspc.posterior.sensitivity import isotropic_sensitivity

    if schedule is not None:
        if kind not in ("pspc-square", "pspc-flex"):
            raise InputError(f"a schedule file applies to pspc-square and pspc-flex, not {kind}")
        if patch_size is not None:
            raise InputError("give either a fixed patch size or a schedule file, not both")
        _, height, width = training_set.image_shape
        loaded = Schedule.load(schedule, "patch_size" if kind == "pspc-square" else "lambda", (height, width))
        if kind == "pspc-square":
            patch_size = loaded
        else:
            options["lambdas"] = loaded
    if kind == "pspc-square":
        return pspc_square(training_set, patch_size, **options)
    if kind == "pspc-flex":
        _, height, width = training_set.image_shape
        return pspc_flex(training_set, isotropic_sensitivity(height, width), sensitivity_name="isotropic-fig3", **options)
    if kind == "empirical":
        return EmpiricalDenoiser(training_set, **options)
    if kind == "gaussian":
        return GaussianDenoiser(training_set, rank)
    if kind == "cfdm":
        return CFDMDenoiser(training_set, cfdm_sigma, cfdm_draws, seed, **options)
    raise InputError(f"unknown denoiser {kind!r}; choose one of {', '.join(DENOISER_KINDS)}")
