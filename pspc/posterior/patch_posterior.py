"""The PSPC computation (Eq. 9-11), all patch positions at once, streamed over the data.

For a batch of queries z_b with per-sample noise levels t_b and a patch set {M_k}:
  logit[b, k, i] = -||M_k (z_b - x_i)||^2 / (2 t_b^2)              (Eq. 9)
  w[b, k, :]     = softmax_i logit[b, k, :]                         (Eq. 10)
  D(z_b)[q]      = sum_k M_k[q] sum_i w[b,k,i] x_i[q] / sum_k M_k[q] (Eq. 11)
Training images are streamed in chunks: pass 1 accumulates an online log-sum-exp per
(sample, patch); pass 2 recomputes the logits, normalises them exactly and composes the
output as sum_i spread(w[b, :, i]) * x_i (O(H W) per image, whatever the patch size).
The running max is per sample and per patch, never across the batch. x-flip entries are
handled without copying the data: the flipped query is compared to the original images
under the mirrored masks.

Counterfactual removal: `excluded` [N] masks training images out of the softmax (logit
-inf, weight exactly 0, for the image and its mirrored entry) without copying the data or
renumbering the entries; chunks whose images are all excluded are skipped.

Four paths compute the same thing: on the CPU, the GEMM path (pspc.posterior.gemm: the
distances and the composite as exact matrix products) for sets with few distinct masks
(`gemm.uses_gemm`: the whole image), the single pass (window_kernels: one sweep, each
window with its own numerator) for windows of few values (`window_kernels.uses_single_pass`:
s = 3), else the two-pass fused numba kernels (fused_kernels); on other devices, and for
dense weights, the chunked torch operations below.
"""

from __future__ import annotations

import numba
import numpy as np
import torch

from pspc.errors import InputError
from pspc.posterior import fused_kernels, gemm, window_kernels
from pspc.posterior.patch_sets import PatchSet, WindowPatches
from pspc.posterior.weights import PosteriorWeights, WeightRequest

DEFAULT_CHUNK_BYTES = 256 * 2**20


class ExclusionError(InputError):
    """A bad counterfactual removal: not a per-image mask or list of image indices, out of
    range, or nothing left to compose from."""


def check_excluded(excluded, num_images: int) -> torch.Tensor | None:
    """The exclusion mask as a CPU bool tensor [num_images], or None when it excludes
    nothing (the unmasked run); ExclusionError for a mask of the wrong kind or one that
    leaves no training image."""
    if excluded is None:
        return None
    if not isinstance(excluded, torch.Tensor) or excluded.dtype != torch.bool or excluded.shape != (num_images,):
        shape = tuple(excluded.shape) if isinstance(excluded, torch.Tensor) else type(excluded).__name__
        raise ExclusionError(f"excluded must be a bool tensor [{num_images}] (one flag per training image), got {shape}")
    if bool(excluded.all()):
        raise ExclusionError(f"at least one training image must remain: all {num_images} are excluded")
    return excluded.cpu() if excluded.any() else None


def _chunk_size(num_queries: int, height: int, width: int, num_patches: int, channels: int, chunk_bytes: int) -> int:
    """Training images per chunk so that the largest temporaries stay under chunk_bytes."""
    per_image = num_queries * 8 * (3 * height * width + 3 * num_patches + channels * height * width)
    return max(1, chunk_bytes // per_image)


def _logits(queries: torch.Tensor, images: torch.Tensor, patch_sums, scale: torch.Tensor) -> torch.Tensor:
    """[Q, n, K] float64 logits of every query against every image in the chunk."""
    squared = (queries[:, None] - images[None]).square().sum(2)  # [Q, n, H, W]
    return patch_sums(squared) * scale[:, None, None]


def patch_posterior(
    z: torch.Tensor,
    t: torch.Tensor,
    data: torch.Tensor,
    patch_set: PatchSet,
    xflip: bool = False,
    request: WeightRequest | None = None,
    chunk_bytes: int = DEFAULT_CHUNK_BYTES,
    images_t=None,
    excluded: torch.Tensor | None = None,
    reduction=None,
) -> tuple[torch.Tensor, PosteriorWeights | None]:
    """PSPC denoiser output for z [B, C, H, W] at per-sample t [B] (> 0), over training
    images data [N, C, H, W] in [-1, 1] (same device). Returns (x_hat, weights or None).

    images_t (fused_kernels.block_images(data), CPU only) enables the CPU paths: the GEMM
    path (pspc.posterior.gemm) for sets with few distinct masks (gemm.uses_gemm: the whole
    image) over uint8-grid data, the single pass (window_kernels) for small windows, else the
    fused kernels; without it, on other devices, or when dense weights are requested, the
    torch path runs.
    excluded (bool [N]): images given weight 0, with their mirrored entries; entry ids stay
    those of the whole set (image i, flip N + i).
    reduction (pspc.posterior.distributed): data is one shard of the set; the log-normaliser,
    numerator, entropy, sum w^2 and top-k are merged across the shards (None: one process)."""
    num_images = data.shape[0]
    excluded = check_excluded(excluded, num_images) if reduction is None else reduction.shard_excluded(excluded)
    if images_t is not None and z.device.type == "cpu" and not (request and request.full):
        if gemm.uses_gemm(patch_set) and (ints := gemm.integer_images(data, images_t)) is not None:
            return _gemm_posterior_cpu(z, t, ints, images_t, patch_set, xflip, request, excluded, reduction, chunk_bytes)
        if isinstance(patch_set, WindowPatches) and window_kernels.uses_single_pass(
                z.shape[1], patch_set.height, patch_set.width, patch_set.patch_h, patch_set.patch_w):
            return _window_posterior_cpu(z, t, num_images, images_t, patch_set, xflip, request, excluded, reduction)
        return _fused_posterior_cpu(z, t, num_images, images_t, patch_set, xflip, request, excluded, reduction)
    batch, channels, height, width = z.shape
    patch_set = patch_set.to(z.device)
    halves = [(z, patch_set.patch_sums, patch_set.spread)]
    if xflip:
        halves.append((z.flip(-1), patch_set.flipped_patch_sums, patch_set.flipped_spread))
    scale = -0.5 / t.to(torch.float64).square()  # [B]
    num_patches = patch_set.num_patches
    chunk = _chunk_size(batch * (2 if request else 1), height, width, num_patches, channels, chunk_bytes)
    chunks = _chunks(num_images, chunk, excluded, z.device)

    # Pass 1: online log-sum-exp over all entries, per (sample, patch). Every chunk has a
    # kept image, so each (sample, patch) gets a finite max (no -inf - -inf).
    run_max = torch.full((batch, num_patches), -torch.inf, dtype=torch.float64, device=z.device)
    run_sum = torch.zeros_like(run_max)
    for queries, sums, _ in halves:
        for start, removed in chunks:
            logits = _masked(_logits(queries, data[start : start + chunk], sums, scale), removed)
            new_max = torch.maximum(run_max, logits.amax(1))
            run_sum = run_sum * torch.exp(run_max - new_max) + torch.exp(logits - new_max[:, None]).sum(1)
            run_max = new_max
    log_normaliser = run_max + run_sum.log()  # [B, K]
    if reduction is not None:
        log_normaliser = reduction.log_normaliser(log_normaliser)

    # Pass 2: exact weights, composition, and (optionally) what the attribution keeps.
    numerators = []
    tracker = _WeightTracker(request, batch, num_patches, num_images * len(halves), z.device) if request else None
    for half, (queries, sums, spread) in enumerate(halves):
        numerator = torch.zeros(batch, channels, height, width, dtype=torch.float64, device=z.device)
        for start, removed in chunks:
            images = data[start : start + chunk]
            log_w = _masked(_logits(queries, images, sums, scale), removed) - log_normaliser[:, None]  # [B, n, K]
            weights = log_w.exp()
            numerator += torch.einsum("bnhw,nchw->bchw", spread(weights), images.to(torch.float64))
            if tracker:
                tracker.add(weights, log_w, offset=half * num_images + start)
        numerators.append(numerator)
    numerator = numerators[0] + (numerators[1].flip(-1) if xflip else 0)
    if reduction is not None:
        numerator = reduction.numerator(numerator)
    x_hat = (numerator / patch_set.coverage(z.device)).to(z.dtype)
    return x_hat, (tracker.result(patch_set, t, num_images, reduction) if tracker else None)


def _chunks(num_images: int, chunk: int, excluded: torch.Tensor | None, device) -> list[tuple[int, torch.Tensor | None]]:
    """(start, the chunk's excluded flags on `device`, or None if it has none) for every
    chunk that keeps at least one image."""
    if excluded is None:
        return [(start, None) for start in range(0, num_images, chunk)]
    chunks = []
    for start in range(0, num_images, chunk):
        removed = excluded[start : start + chunk]
        if not removed.all():
            chunks.append((start, removed.to(device) if removed.any() else None))
    return chunks


def _masked(logits: torch.Tensor, removed: torch.Tensor | None) -> torch.Tensor:
    """logits [Q, n, K] (fresh, so changed in place) with the excluded images' set to -inf (weight exactly 0)."""
    return logits if removed is None else logits.masked_fill_(removed[None, :, None], -torch.inf)


class _WeightTracker:
    """Accumulates entropy, ESS, the running top-k and (optionally) the dense weights."""

    def __init__(self, request: WeightRequest, batch: int, num_patches: int, num_entries: int, device):
        self.request = request
        self.k = min(request.top_k, num_entries)
        self.entropy = torch.zeros(batch, num_patches, dtype=torch.float64, device=device)
        self.sum_sq = torch.zeros_like(self.entropy)
        self.top_w = torch.zeros(batch, num_patches, 0, dtype=torch.float64, device=device)
        self.top_i = torch.zeros(batch, num_patches, 0, dtype=torch.long, device=device)
        self.full = torch.zeros(batch, num_patches, num_entries, dtype=torch.float64, device=device) if request.full else None

    def add(self, weights: torch.Tensor, log_w: torch.Tensor, offset: int):
        """weights, log_w: [B, n, K] for entries offset .. offset + n - 1."""
        self.entropy -= torch.where(weights > 0, weights * log_w, 0).sum(1)
        self.sum_sq += weights.square().sum(1)
        w = weights.transpose(1, 2)  # [B, K, n]
        if self.full is not None:
            self.full[:, :, offset : offset + w.shape[2]] = w
        # candidates in entry order where weights tie: the kept ones (lower entries, already in
        # (weight, entry) order), then this chunk's
        candidates = torch.cat([self.top_w, w], 2)
        self.top_w, positions = top_k_in_order(candidates, min(self.k, candidates.shape[2]))
        chunk_i = torch.arange(offset, offset + w.shape[2], device=w.device).expand_as(w)
        self.top_i = torch.cat([self.top_i, chunk_i], 2).gather(2, positions)

    def result(self, patch_set: PatchSet, t: torch.Tensor, num_images: int, reduction=None) -> PosteriorWeights:
        return _finish(self.request, patch_set, t, num_images, self.top_w, self.top_i,
                       self.entropy, self.sum_sq, self.full, reduction)


def top_k_in_order(weights: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(values, positions) of the k (<= size) largest weights along the last dimension, by
    weight descending, then position ascending: of equal weights the first wins, which
    torch.topk does not promise. One topk; rows where more entries reach the k-th value
    than fit are redone exactly (a running count of the ties)."""
    values, positions = weights.topk(k, dim=-1)  # the right values; at the k-th, maybe the wrong entries
    threshold = values[..., -1:]
    short = (weights >= threshold).sum(-1) > k
    if short.any():
        row, bar = weights[short], threshold[short]
        above, tied = row > bar, row == bar
        room = k - above.sum(-1, keepdim=True)
        chosen = above | (tied & (tied.cumsum(-1) <= room))  # exactly k per row, in position order
        positions[short] = chosen.nonzero()[:, -1].view(-1, k)
    positions = positions.sort(dim=-1).values
    values, order = weights.gather(-1, positions).sort(dim=-1, descending=True, stable=True)
    return values, positions.gather(-1, order)


def _finish(request, patch_set, t, num_images, top_w, top_i, entropy, sum_sq, full=None,
            reduction=None) -> PosteriorWeights:
    """Apply the mass threshold to the exact top-k (descending) and package the result.
    Entries are kept until `mass` is captured; the entry that crosses it stays."""
    if reduction is not None:
        top_w, top_i, entropy, sum_sq, num_images = reduction.weights(request.top_k, num_images, top_w, top_i,
                                                                      entropy, sum_sq)
    before = top_w.cumsum(2) - top_w
    keep = (before < request.mass) & (top_w > 0) & (top_i >= 0)
    weight = torch.where(keep, top_w, 0)
    return PosteriorWeights(
        patch_set=patch_set,
        t=t.detach().cpu(),
        num_images=num_images,
        entry=torch.where(keep, top_i, -1).cpu(),
        weight=weight.float().cpu(),
        mass=weight.sum(2).float().cpu(),
        entropy=entropy.float().cpu(),
        ess=(1 / sum_sq).float().cpu(),
        full=full.cpu() if full is not None else None,
    )


_NO_INDEX = np.zeros(1, dtype=np.int64)
_NO_COUNT = np.zeros(1, dtype=np.float64)


def _fused_halves(patch_set: PatchSet, xflip: bool) -> list[dict]:
    """Kernel arguments per half (original queries, then flipped ones), and `to_global`:
    index into the half's own patch list for each of the set's K patches.

    Windows: flipped queries use the same windows, whose mirror is window mirror(k).
    Masks: each half uses its own (mirrored) distinct masks; identical masks are computed once."""
    halves = []
    for flipped in ([False, True] if xflip else [False]):
        if isinstance(patch_set, WindowPatches):
            structure = {"structure": fused_kernels.WINDOW, "patch_h": patch_set.patch_h, "patch_w": patch_set.patch_w,
                         "indptr": _NO_INDEX, "indices": _NO_INDEX, "num_patches": patch_set.num_patches,
                         "pixel_indptr": _NO_INDEX, "pixel_masks": _NO_INDEX, "pixel_counts": _NO_COUNT}
            to_global = patch_set._mirror if flipped else torch.arange(patch_set.num_patches)
        else:
            csr = patch_set.fused_structure(flipped)
            structure = {"structure": fused_kernels.MASKS, "patch_h": 1, "patch_w": 1,
                         **{k: v for k, v in csr.items() if k != "unique_of"}}
            to_global = csr["unique_of"]
        halves.append({"flipped": flipped, "kernel": structure, "to_global": to_global})
    return halves


def _fused_posterior_cpu(z, t, num_images, images_t, patch_set: PatchSet, xflip, request, excluded, reduction=None):
    """The fused-kernel path (fused_kernels): same result as the torch path, CPU only.

    Each half runs in its own frame (flipped queries against mirrored masks); per-patch
    quantities are mapped to the set's K patches with `to_global`."""
    batch = z.shape[0]
    scales = (-0.5 / t.to(torch.float64).square()).cpu().numpy()
    parts = numba.get_num_threads()
    mask = fused_kernels.block_mask(None if excluded is None else excluded.numpy(), num_images)
    halves = _fused_halves(patch_set, xflip)
    for half in halves:
        queries = z.flip(-1) if half["flipped"] else z
        half["args"] = (queries.to(torch.float64).contiguous().numpy(), images_t)
        k = half["kernel"]
        own = fused_kernels.log_normaliser(*half["args"], k["structure"], k["patch_h"], k["patch_w"], k["indptr"],
                                           k["indices"], k["num_patches"], scales, parts, num_images, mask)
        half["log_norm"] = torch.from_numpy(own)[:, half["to_global"]]
    log_norm = halves[0]["log_norm"]
    for half in halves[1:]:
        log_norm = torch.logaddexp(log_norm, half["log_norm"])
    if reduction is not None:
        log_norm = reduction.log_normaliser(log_norm)

    top_k = request.top_k if request else 0
    x_hat = torch.zeros(z.shape, dtype=torch.float64)
    entropy = torch.zeros(batch, patch_set.num_patches, dtype=torch.float64)
    sum_sq, top_w, top_i = torch.zeros_like(entropy), [], []
    for offset, half in enumerate(halves):
        k = half["kernel"]
        own_log_norm = torch.empty(batch, k["num_patches"], dtype=torch.float64)
        own_log_norm[:, half["to_global"]] = log_norm  # every own patch is some global one
        numerator, half_entropy, half_sum_sq, half_top_w, half_top_i = (torch.from_numpy(a) for a in fused_kernels.compose(
            *half["args"], k["structure"], k["patch_h"], k["patch_w"], k["indptr"], k["indices"], k["num_patches"],
            k["pixel_indptr"], k["pixel_masks"], k["pixel_counts"], scales, own_log_norm.numpy(), parts, top_k,
            num_images, mask))
        x_hat += numerator.flip(-1) if half["flipped"] else numerator
        entropy += half_entropy[:, half["to_global"]]
        sum_sq += half_sum_sq[:, half["to_global"]]
        _add_lists(top_w, top_i, half_top_w, half_top_i, half["to_global"], offset * num_images)
    return _fused_result(z, t, num_images, patch_set, request, reduction, x_hat, entropy, sum_sq, top_w, top_i)


def _add_lists(top_w: list, top_i: list, half_w: torch.Tensor, half_i: torch.Tensor, to_global, offset: int):
    """Append one half's top-k lists [Q, parts, P_own, k] as [Q, K, parts, k] with the set's
    entry ids (flipped entries are numbered N..2N-1: offset N)."""
    index = half_i[:, :, to_global].permute(0, 2, 1, 3)
    top_w.append(half_w[:, :, to_global].permute(0, 2, 1, 3))
    top_i.append(torch.where(index >= 0, index + offset, -1))


def _fused_result(z, t, num_images, patch_set, request, reduction, numerator, entropy, sum_sq, top_w, top_i):
    """(x_hat, weights or None) from the CPU kernels' numerator (before the coverage), entropy,
    sum w^2 [B, K] and the lists of _add_lists, merged across the shards when sharded."""
    if reduction is not None:
        numerator = reduction.numerator(numerator)
    x_hat = (numerator / patch_set.coverage()).to(z.dtype)
    if request is None:
        return x_hat, None
    top_w, top_i = (torch.from_numpy(a) for a in fused_kernels.merge_top(
        torch.cat(top_w, 2).contiguous().numpy(), torch.cat(top_i, 2).contiguous().numpy(), request.top_k))
    return x_hat, _finish(request, patch_set, t, num_images, top_w, top_i, entropy, sum_sq, reduction=reduction)


def _window_posterior_cpu(z, t, num_images, images_t, patch_set: WindowPatches, xflip, request, excluded,
                          reduction=None):
    """The single-pass path for small windows (window_kernels): the fused kernels' result, in
    one sweep over the data. Each half (flipped queries: window k is the mirror of window
    mirror(k)) gets its per-window running max, sums and numerators; the log-normaliser
    combines the halves (and the shards, through the hook); each half's sums are then
    scaled to it (window_kernels' docstring)."""
    batch, channels, _, width = z.shape
    rows, cols, num_patches = patch_set.rows, patch_set.cols, patch_set.num_patches
    scales = (-0.5 / t.to(torch.float64).square()).cpu().numpy()
    mask = fused_kernels.block_mask(None if excluded is None else excluded.numpy(), num_images)
    top_k = request.top_k if request else 0
    positions = (torch.arange(rows)[:, None] * width + torch.arange(cols)).flatten()  # each window's grid index
    halves, log_norm = [], None
    for flipped in ([False, True] if xflip else [False]):
        queries = (z.flip(-1) if flipped else z).to(torch.float64).reshape(batch, -1).contiguous().numpy()
        sums, numerators, top_l, top_i = window_kernels.window_posterior(
            queries, images_t, patch_set.patch_h, patch_set.patch_w, scales, numba.get_num_threads(), top_k,
            num_images, mask)
        sums, numerators = (torch.from_numpy(a)[..., positions] for a in window_kernels.fold_groups(sums, numerators))
        to_global = patch_set._mirror if flipped else torch.arange(num_patches)
        halves.append((flipped, to_global, sums, numerators, top_l[:, :, positions.numpy()],
                       top_i[:, :, positions.numpy()]))
        own = (sums[0] + sums[1].log())[:, to_global]
        log_norm = own if log_norm is None else torch.logaddexp(log_norm, own)
    if reduction is not None:
        log_norm = reduction.log_normaliser(log_norm)
    numerator = torch.zeros(z.shape, dtype=torch.float64)
    entropy = torch.zeros(batch, num_patches, dtype=torch.float64)
    sum_sq, top_w, top_i = torch.zeros_like(entropy), [], []
    for offset, (flipped, to_global, sums, numerators, half_l, half_i) in enumerate(halves):
        own_norm = torch.empty(batch, num_patches, dtype=torch.float64)
        own_norm[:, to_global] = log_norm
        top, total, plogp, squared = sums
        live = total > 0  # the half has an entry of weight > 0 there
        scale = torch.where(live, torch.exp(top - own_norm), 0.0)  # w = scale * e
        entropy += torch.where(live, -scale * (plogp + (top - own_norm) * total), 0.0)[:, to_global]
        sum_sq += (scale.square() * squared)[:, to_global]
        placed = place_windows(scale[:, None] * numerators, patch_set, channels)
        numerator += placed.flip(-1) if flipped else placed
        if request is not None:
            half_w, half_entries = (torch.from_numpy(a) for a in window_kernels.list_weights(
                np.ascontiguousarray(half_l), np.ascontiguousarray(half_i), own_norm.numpy(), top_k))
            _add_lists(top_w, top_i, half_w, half_entries, to_global, offset * num_images)
    return _fused_result(z, t, num_images, patch_set, request, reduction, numerator, entropy, sum_sq, top_w, top_i)


def place_windows(values: torch.Tensor, patch_set: WindowPatches, channels: int) -> torch.Tensor:
    """values [B, C ph pw, P] (window p's value at each of its pixels) summed into images
    [B, C, H, W]: sum over windows p of values[:, :, p] at p's pixels."""
    ph, pw, rows, cols = patch_set.patch_h, patch_set.patch_w, patch_set.rows, patch_set.cols
    grid = values.reshape(len(values), channels, ph, pw, rows, cols)
    out = torch.zeros(len(values), channels, patch_set.height, patch_set.width, dtype=values.dtype)
    for dy in range(ph):
        for dx in range(pw):
            out[:, :, dy:dy + rows, dx:dx + cols] += grid[:, :, dy, dx]
    return out


def _gemm_posterior_cpu(z, t, ints, layout, patch_set: PatchSet, xflip, request, excluded, reduction, chunk_bytes):
    """The GEMM path (pspc.posterior.gemm): the fused kernels' result, from matrix products."""
    posterior = gemm.GemmPosterior(z, t, ints, layout, patch_set, xflip, request.top_k if request else 0, excluded,
                                   chunk_bytes)
    numerator, entropy, sum_sq, top_w, top_i = posterior.run(None if reduction is None else reduction.log_normaliser)
    if reduction is not None:
        numerator = reduction.numerator(numerator)
    x_hat = (numerator / patch_set.coverage()).to(z.dtype)
    if request is None:
        return x_hat, None
    return x_hat, _finish(request, patch_set, t, len(ints), top_w, top_i, entropy, sum_sq, reduction=reduction)
