"""The GEMM path of patch_posterior on the CPU: distances as matrix products.

For a patch set with few distinct masks M_u (the whole image: one), the squared distances
of Eq. 9 expand as
  ||M_u (z - x_i)||^2 = ||M_u z||^2 - 2 (M_u z) . x_i + ||M_u x_i||^2,
so all the (query, mask) x image cross terms are one matrix product [rows, D] @ [D, N], and
the composite (Eq. 11) is another, weights [rows, N] @ images [N, D]. BLAS does these at
several times the speed of the fused kernels' per-pair loops (`uses_gemm` says when).

Exact and deterministic: the images are uint8 pixels u (x = u / 127.5 - 1, the grid every
TrainingSet is on; other data stays on the fused kernels). Each row of the left factor is
split into two pieces of integers at a power-of-two scale of its own (`exact_product`), small
enough that every product and partial sum with the integers u is an integer below 2^53:
exact in float64, so the result has the same bits whatever the BLAS, its blocking or its
thread count. What the pieces drop is below 2^-(2 bits + 1) of the row's largest value
(bits = 53 - log2(255 K), K the inner dimension): 2^-71 for the query rows (784 pixels), far
below float64's own rounding of the distances; 2^-59 for the weights (60k images), below
1e-12 of the output. Distances are then float64 (float32's rounding of z . x, about 1e-7 of ||z|| ||x||,
moves the logits by up to 1e-4 at t = 10 and by more at small t: not exact enough for 1e-5).

The softmax statistics run in numba in a fixed order (entries ascending, halves in order):
the log-normaliser (then the distributed hook, as on the other paths), the weights with the
fused kernels' cutoff (weight 0 below e^-CUTOFF of the normaliser), entropy, sum w^2 and the
top-k ranked by (weight descending, entry ascending). Excluded images get logit -inf: weight
exactly 0, never in the top-k. x-flips: the flipped query against the images under the
mirrored masks, as on the fused path.
"""

from __future__ import annotations

import math
import weakref

import numba
import numpy as np
import torch

from pspc.posterior.fused_kernels import CUTOFF, insert_ranked, precedes
from pspc.posterior.patch_sets import MaskPatches, PatchSet, WindowPatches

GEMM_MAX_MASKS = 8  # distinct masks per half up to which the GEMM path runs (measured: README "Speed")
PIXEL_LEVELS = 255  # the images' integer pixels u are 0 .. PIXEL_LEVELS
_PIECES_BUDGET = 53  # bits of an exact float64 integer
_CHUNK_IMAGES = 8192  # images per chunk when the per-image mask norms are first computed


class _PerLayout:
    """A cache keyed by a layout object (a numpy array: unhashable, but weakly referable);
    an entry goes when its layout does."""

    def __init__(self):
        self.entries: dict[int, tuple[weakref.ref, object]] = {}

    def get(self, layout, make):
        found = self.entries.get(id(layout))
        if found is None or found[0]() is not layout:
            found = (weakref.ref(layout), make())
            self.entries[id(layout)] = found
            weakref.finalize(layout, self.entries.pop, id(layout), None)
        return found[1]


_integers = _PerLayout()  # layout -> integer images, or None (not on the grid)
_norms = _PerLayout()  # layout -> {mask key: [N, U] norms}
_structures: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()  # patch set -> {flipped: masks}


def distinct_masks(patch_set: PatchSet) -> int:
    """The number of distinct masks of the set (those of the mirrored set are as many)."""
    if isinstance(patch_set, WindowPatches):
        return patch_set.num_patches
    if isinstance(patch_set, MaskPatches):
        return patch_set.fused_structure()["num_patches"]
    return patch_set.num_patches


def uses_gemm(patch_set: PatchSet) -> bool:
    """The path-selection rule: the GEMM path for sets of at most GEMM_MAX_MASKS distinct
    masks (the whole image; windows of side >= H - 1 and W - 1 on 28x28; Flex at lambda >= 1;
    small user sets), the fused kernels for the rest. The GEMM path costs about masks x pixels
    per (query, image) pair, the fused kernels pixels + patches whatever the set: measured
    (CPU time, 28x28, README "Speed"), the GEMM path is 9x faster at 1 mask, 5.5x at 4, 2.1x at
    9 and slower from 16 on; 8 keeps a margin."""
    return distinct_masks(patch_set) <= GEMM_MAX_MASKS


def integer_images(data: torch.Tensor, layout) -> torch.Tensor | None:
    """data [N, C, H, W] as float64 integers u [N, C*H*W] with data == u / 127.5 - 1 exactly
    (in data's dtype), or None when data is not on that grid. Cached per `layout` (the
    denoiser's fused layout, an object that lives as long as the data)."""
    return _integers.get(layout, lambda: _on_grid(data))


def _on_grid(data: torch.Tensor) -> torch.Tensor | None:
    flat = data.detach().cpu().flatten(1)
    ints = torch.round((flat.to(torch.float64) + 1) * (PIXEL_LEVELS / 2))
    on_grid = bool(((ints >= 0) & (ints <= PIXEL_LEVELS)).all()) and torch.equal(
        ints.to(flat.dtype) / (PIXEL_LEVELS / 2) - 1.0, flat)
    return ints if on_grid else None


def exact_product(left: torch.Tensor, right: torch.Tensor) -> torch.Tensor:
    """left [R, K] (float64) @ right [K, M] (float64 integers in 0 .. PIXEL_LEVELS) with the
    same bits for any BLAS, blocking or thread count. Each row of left is rounded to two
    pieces, integers times unit and times unit 2^-bits (unit = 2^(e - bits), 2^e >= the row's
    largest |value|, bits = 53 - ceil(log2(PIXEL_LEVELS K)): 35 for K = 784), so that every
    partial sum of a piece's product is an integer below 2^53, exact; what is dropped is below
    2^-(2 bits + 1) of 2^e."""
    bits = _PIECES_BUDGET - math.ceil(math.log2(PIXEL_LEVELS * left.shape[1]))
    largest = left.abs().amax(1, keepdim=True)
    _, exponent = torch.frexp(torch.where(largest > 0, largest, 1.0))  # largest <= 2^exponent
    unit = torch.ldexp(torch.ones_like(largest), exponent - bits)
    scaled = left / unit  # exact: a power of two
    pieces = torch.empty((2 * len(left), left.shape[1]), dtype=torch.float64)
    high, low = pieces[: len(left)], pieces[len(left):]
    torch.round(scaled, out=high)
    torch.sub(scaled, high, out=low).mul_(2.0**bits).round_()  # scaled - high is exact, |.| <= 1/2
    products = pieces @ right
    return (products[: len(left)] + products[len(left):] * 2.0**-bits) * unit


def _masks_of(patch_set: PatchSet, flipped: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """(distinct masks (mirrored if flipped) as float64 [U, H*W], the index of each of the K
    patches' mask), cached per patch set."""
    found = _structures.setdefault(patch_set, {})
    if flipped not in found:
        masks = patch_set.masks()
        flat = (masks.flip(-1) if flipped else masks).flatten(1)
        distinct, unique_of = torch.unique(flat, dim=0, return_inverse=True)
        found[flipped] = distinct.to(torch.float64), unique_of
    return found[flipped]


def _mask_norms(layout, ints: torch.Tensor, masks: torch.Tensor, channels: int) -> torch.Tensor:
    """||M_u x_i||^2 [N, U] for x = u / 127.5 - 1: (sum_q M (u^2 - 255 u)) / 127.5^2 + |M_u| C,
    an exact integer product; cached per layout and masks."""
    key = masks.numpy().tobytes()
    cache = _norms.get(layout, dict)
    if key not in cache:
        expanded = masks.repeat(1, channels).T  # [C*H*W, U]
        half = PIXEL_LEVELS / 2
        sums = [(chunk * (chunk - PIXEL_LEVELS)) @ expanded for chunk in ints.split(_CHUNK_IMAGES)]
        cache[key] = torch.cat(sums) / half**2 + expanded.sum(0) * 1.0
    return cache[key]


@numba.njit(parallel=True, cache=True)
def row_sums(rows):
    """(sum of squares, sum) of each row of rows [R, D], in order."""
    squares = np.zeros(rows.shape[0])
    sums = np.zeros(rows.shape[0])
    for r in numba.prange(rows.shape[0]):
        for d in range(rows.shape[1]):
            squares[r] += rows[r, d] * rows[r, d]
            sums[r] += rows[r, d]
    return squares, sums


@numba.njit(parallel=True, cache=True)
def pair_log_normaliser(logits, rows_of):
    """log sum_entries exp(logit) [B, J] for each query b and mask pair j, whose entries are
    the rows rows_of[b, j, h] of logits [R, N] (half h), taken in that order (-inf when no
    entry is finite)."""
    batch, pairs, halves = rows_of.shape
    out = np.empty((batch, pairs))
    for flat in numba.prange(batch * pairs):
        b, j = flat // pairs, flat % pairs
        top = -np.inf
        for h in range(halves):
            row = logits[rows_of[b, j, h]]
            for i in range(row.shape[0]):
                top = max(top, row[i])
        total = 0.0
        if top > -np.inf:
            for h in range(halves):
                row = logits[rows_of[b, j, h]]
                for i in range(row.shape[0]):
                    total += math.exp(row[i] - top)
        out[b, j] = top + math.log(total) if total > 0 else -np.inf
    return out


@numba.njit(parallel=True, cache=True)
def pair_weights(logits, rows_of, pair_counts, log_norm, top_k, weights):
    """Pass 2 over the logits: w = exp(logit - log_norm[b, j]) (0 below e^-CUTOFF), added,
    times pair_counts[j] (the patches that share the pair), into weights [R, N] (zeros on
    entry) at the logits' own rows; entropy, sum w^2 [B, J] and the top_k (weight desc, then
    entry asc; entry = h N + i) [B, J, max(top_k, 1)]. Each query's rows are its own."""
    batch, pairs, halves = rows_of.shape
    num_images = logits.shape[1]
    kept = max(top_k, 1)
    entropy = np.zeros((batch, pairs))
    sum_sq = np.zeros((batch, pairs))
    top_w = np.zeros((batch, pairs, kept))
    top_i = np.full((batch, pairs, kept), -1, dtype=np.int64)
    for b in numba.prange(batch):
        for j in range(pairs):
            norm = log_norm[b, j]
            for h in range(halves):
                row = rows_of[b, j, h]
                for i in range(num_images):
                    v = logits[row, i] - norm
                    if not v > -CUTOFF:  # also skips excluded entries (-inf) and rows with no entry (nan)
                        continue
                    w = math.exp(v)
                    weights[row, i] += pair_counts[j] * w
                    entropy[b, j] -= w * v
                    sum_sq[b, j] += w * w
                    entry = h * num_images + i
                    if top_k > 0 and precedes(w, entry, top_w[b, j, kept - 1], top_i[b, j, kept - 1]):
                        insert_ranked(top_w[b, j], top_i[b, j], w, entry)
    return entropy, sum_sq, top_w, top_i


class _Layout:
    """Where the rows of one sub-batch of b queries lie: half h, query q, mask u is row
    offsets[h] + q U_h + u; rows_of[q, j, h] for each mask pair j."""

    def __init__(self, batch: int, halves: list[tuple[torch.Tensor, torch.Tensor]], pairs: torch.Tensor):
        sizes = [len(masks) for masks, _ in halves]
        self.offsets = [batch * sum(sizes[:h]) for h in range(len(sizes))]
        self.num_rows = batch * sum(sizes)
        queries = torch.arange(batch)[:, None, None]
        rows = [self.offsets[h] + queries * sizes[h] + pairs[None, :, h, None] for h in range(len(sizes))]
        self.rows_of = torch.cat(rows, 2).contiguous().numpy()  # [b, J, halves]


class GemmPosterior:
    """One patch_posterior call on the GEMM path, for z [B, C, H, W] at t [B] over the
    integer images `ints` [N, D] (integer_images). run() gives the numerator before the
    coverage, entropy, sum w^2 [B, K] and the top-k [B, K, top_k] (entries h N + i)."""

    def __init__(self, z, t, ints, layout, patch_set: PatchSet, xflip: bool, top_k: int, excluded, chunk_bytes: int):
        self.z, self.ints, self.top_k = z.to(torch.float64), ints, top_k
        self.scale = -0.5 / t.to(torch.float64).cpu().square()
        self.channels = z.shape[1]
        self.halves = [_masks_of(patch_set, flipped) for flipped in ([False, True] if xflip else [False])]
        self.norms = [_mask_norms(layout, ints, masks, self.channels) for masks, _ in self.halves]
        combos = torch.stack([unique_of for _, unique_of in self.halves], 1)  # [K, halves]
        self.pairs, self.pair_of, counts = torch.unique(combos, dim=0, return_inverse=True, return_counts=True)
        self.counts = counts.to(torch.float64).numpy()
        self.first_of_pair = torch.full((len(self.pairs),), len(self.pair_of)).scatter_reduce_(
            0, self.pair_of, torch.arange(len(self.pair_of)), "amin")  # the first patch k of each pair
        self.excluded = excluded
        rows_per_query = sum(len(masks) for masks, _ in self.halves)
        per_query = 32 * rows_per_query * len(ints)  # logits, weights, their pieces: 4 x 8 bytes a row entry
        self.sub_batch = max(1, chunk_bytes // per_query)
        self.keep_logits = 8 * rows_per_query * len(ints) * len(z) <= chunk_bytes

    def _logits(self, start: int, stop: int) -> tuple[_Layout, torch.Tensor]:
        """The [rows, N] float64 logits of queries start .. stop - 1 (excluded images: -inf)."""
        batch = stop - start
        layout = _Layout(batch, self.halves, self.pairs)
        queries = self.z[start:stop]
        rows, scales = [], []
        for h, (masks, _) in enumerate(self.halves):
            flat = (queries.flip(-1) if h else queries).flatten(1)
            expanded = masks.repeat(1, self.channels)  # [U, C*H*W]
            rows.append((flat[:, None] * expanded[None]).flatten(0, 1))
            scales.append(self.scale[start:stop].repeat_interleave(len(masks)))
        rows = torch.cat(rows)
        squares, sums = (torch.from_numpy(a) for a in row_sums(rows.numpy()))
        logits = exact_product(rows, self.ints.T)  # [R, N]: sum_q (M z)_q u_iq
        # ||M(z - x_i)||^2 = ||Mz||^2 - 2 (Mz).x_i + ||M x_i||^2, (Mz).x_i = (Mz).u_i / 127.5 - sum(Mz)
        logits.mul_(-2 / (PIXEL_LEVELS / 2)).add_((squares + 2 * sums)[:, None])
        for h, norms in enumerate(self.norms):
            stop_row = layout.offsets[h + 1] if h + 1 < len(self.halves) else layout.num_rows
            logits[layout.offsets[h]:stop_row].view(batch, norms.shape[1], -1).add_(norms.T[None])
        logits.mul_(torch.cat(scales)[:, None])
        if self.excluded is not None:
            logits.masked_fill_(self.excluded[None], -torch.inf)
        return layout, logits

    def run(self, reduce_log_normaliser=None):
        batch = len(self.z)
        spans = [(start, min(batch, start + self.sub_batch)) for start in range(0, batch, self.sub_batch)]
        stored, log_norm = [], []
        for start, stop in spans:  # pass 1: the log-normaliser of every (query, mask pair)
            layout, logits = self._logits(start, stop)
            log_norm.append(torch.from_numpy(pair_log_normaliser(logits.numpy(), layout.rows_of)))
            stored.append((layout, logits) if self.keep_logits else None)
        log_norm = torch.cat(log_norm)[:, self.pair_of]  # [B, K]
        if reduce_log_normaliser is not None:
            log_norm = reduce_log_normaliser(log_norm)
        pair_norm = log_norm[:, self.first_of_pair].contiguous().numpy()
        numerator = torch.zeros(self.z.shape, dtype=torch.float64)
        results = []
        for (start, stop), kept in zip(spans, stored):  # pass 2: weights, statistics, composite
            layout, logits = kept or self._logits(start, stop)
            weights = torch.zeros_like(logits)
            results.append(pair_weights(logits.numpy(), layout.rows_of, self.counts,
                                        pair_norm[start:stop], self.top_k, weights.numpy()))
            numerator[start:stop] = self._compose(layout, weights, stop - start)
        entropy, sum_sq, top_w, top_i = (torch.cat([torch.from_numpy(r[n]) for r in results]) for n in range(4))
        return (numerator, entropy[:, self.pair_of], sum_sq[:, self.pair_of], top_w[:, self.pair_of],
                top_i[:, self.pair_of])

    def _compose(self, layout: _Layout, weights: torch.Tensor, batch: int) -> torch.Tensor:
        """sum_k M_k sum_i w_ik x_i [b, C, H, W] from the weights [R, N] (per row: mask, query)."""
        _, totals = row_sums(weights.numpy())
        rows = exact_product(weights, self.ints) / (PIXEL_LEVELS / 2) - torch.from_numpy(totals)[:, None]  # sum_i w x_i
        numerator = torch.zeros(batch, self.z[0].numel(), dtype=torch.float64)
        for h, (masks, _) in enumerate(self.halves):
            own = rows[layout.offsets[h]:layout.offsets[h] + batch * len(masks)].view(batch, len(masks), -1)
            half = torch.zeros_like(numerator)
            for u, mask in enumerate(masks.repeat(1, self.channels)):  # in mask order
                half += own[:, u] * mask
            numerator += half.view(self.z[:batch].shape).flip(-1).flatten(1) if h else half
        return numerator.view(self.z[:batch].shape)
