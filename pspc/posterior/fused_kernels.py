"""Fused CPU kernels (numba): the fast path of patch_posterior on the CPU for sets of many
distinct masks (sets of a few, such as the whole image, take the GEMM path: gemm.py).

The torch path materialises [queries, images, H, W] float64 temporaries and is bound by
memory traffic. These kernels keep one block of LANES images at a time in registers and
L1/L2 (the lane loop is what the compiler vectorises), compute the patch distances, and
fold the logits straight into the online log-sum-exp (pass 1) or into the composite
(pass 2), so nothing of size images x patches is ever stored.

Two patch structures: windows (`WINDOW`: all patch_h x patch_w windows, distances from a
float64 integral image, O(H W) per image whatever the size) and masks (`MASKS`: any set,
given as CSR lists of pixels per distinct mask, with the multiplicity of each mask).

Per (query, block) the work on the logits is one flat loop over patches x lanes with no
branch, which the compiler vectorises: a horizontal max or a test per patch costs more
than the exp it would save. Weights below exp(-CUTOFF) of the running maximum count as
at most e^-CUTOFF (pass 1) or 0 (pass 2): with CUTOFF = 60 that changes any sum by at most
N e^-60 < 1e-20 relative, below float64 rounding; a block with no logit within CUTOFF of
the maximum at any patch is skipped after one cheap counting loop.

Counterfactual removal: an exclusion mask over the images (`block_mask`) gives their lanes
logit -inf exactly as the padding lanes get, so they carry weight 0 (pass 1 counts each at
most e^-CUTOFF, like padding) while every entry keeps its number; a block whose images are
all excluded is skipped before any distance is computed.

Work split: the image blocks are cut into groups of consecutive blocks, as many as the data
size gives (`num_groups`, up to 64), whatever the thread count; each of the `parts` workers
(one per thread) claims the next unclaimed group from a shared atomic counter (`claim_group`)
until none is left. A worker that the OS deschedules delays only the group it holds: the
others take the rest, so a busy machine slows a call by the share of the CPU it takes, not
by the slowest thread's stall (a static split, thread j taking groups j, j + threads, ...,
waits for its last thread).

Determinism: each group sums its blocks in order into its own accumulators and the groups
are added in group order, so every sum (normaliser, numerator, entropy, sum w^2), hence
every weight, is bit-identical for any number of threads and any order in which the groups
are claimed. A worker's top-k list ranks entries by (weight descending, entry ascending)
whatever order it meets them in (`insert_ranked`), and the workers' lists are merged in that order
(`merge_top`), so the top-k too is the same for any thread count and any schedule.
"""

from __future__ import annotations

import math
import os

import numba
import numpy as np
from llvmlite import ir
from numba import types
from numba.extending import intrinsic

# numba's OpenMP threading layer (a libgomp of its own, loaded at the first parallel call)
# reads this then: workers that wait at the end of a kernel sleep instead of spinning, so that
# on a busy machine they leave the CPU to the workers still computing (measured: README
# "Speed"). A value the user set, and NUMBA_THREADING_LAYER, are left alone.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

LANES = 8
CUTOFF = 60.0
EQUALIZE = 16  # pass 1: blocks of a group between two equalisations of the lanes' running maxima
GROUPS = 64  # at most this many groups of consecutive blocks (see above): also the most threads used
GROUP_BLOCKS = 32  # at least this many blocks per group: folding its lanes (about one block's work) stays <= 3%
# exp() as plain arithmetic so that the compiler can vectorise it (libm's exp is a scalar
# call and dominated small-patch runs): exp(v) = 2^k p(r), k = round(v / ln 2),
# r = v - k ln 2 in [-ln2/2, ln2/2], p the degree-9 Taylor polynomial (relative error
# < 1e-11, far below what float32 outputs resolve), 2^k assembled from its IEEE-754 bits.
_ROUNDING_MAGIC = 6755399441055744.0  # 1.5 * 2^52: adding it rounds to an integer kept in the low bits
_LOG2_E = 1.4426950408889634
_LN2_HI = 0.6931471803691238  # ln 2 split in two so that k * ln 2 is exact
_LN2_LO = 1.9082149292705877e-10


@intrinsic
def _bits_to_float(typingctx, bits):
    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], ir.DoubleType())
    return types.float64(types.int64), codegen


@intrinsic
def _float_to_bits(typingctx, value):
    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], ir.IntType(64))
    return types.int64(types.float64), codegen


@intrinsic
def claim_group(typingctx, counter):
    """counter[0] += 1 atomically (an int64 array shared by the workers); returns the value
    before: the index of the group the calling worker now owns."""
    if not (isinstance(counter, types.Array) and counter.dtype == types.int64):
        return None

    def codegen(context, builder, signature, args):
        array = context.make_array(signature.args[0])(context, builder, args[0])
        return builder.atomic_rmw("add", array.data, ir.Constant(ir.IntType(64), 1), "monotonic")
    return types.int64(counter), codegen


@intrinsic
def fma(typingctx, a, b, c):
    """a * b + c rounded once (llvm.fma: the same bits on every machine, and vectorised)."""
    if not all(isinstance(x, types.Float) for x in (a, b, c)):
        return None

    def codegen(context, builder, signature, args):
        return builder.fma(*[context.cast(builder, x, t, types.float64) for x, t in zip(args, signature.args)])
    return types.float64(a, b, c), codegen


@numba.njit(inline="always")
def _exp(v):
    """exp(v) for v in [-CUTOFF, 0] (see above)."""
    shifted = v * _LOG2_E + _ROUNDING_MAGIC
    k = shifted - _ROUNDING_MAGIC
    r = (v - k * _LN2_HI) - k * _LN2_LO
    poly = 1.0 + r * (1.0 + r * (1 / 2 + r * (1 / 6 + r * (1 / 24 + r * (1 / 120 + r * (1 / 720 + r * (
        1 / 5040 + r * (1 / 40320 + r * (1 / 362880)))))))))
    return poly * _bits_to_float((_float_to_bits(shifted) - _float_to_bits(_ROUNDING_MAGIC) + 1023) << 52)


@numba.njit(inline="always")
def exp_fma(v):
    """_exp with the range reduction and the polynomial's Horner steps as fused multiply-adds:
    half the arithmetic, the same error bound (each step rounds once, not twice). The single
    pass (window_kernels) uses it; in the passes here it measured slower than _exp."""
    shifted = fma(v, _LOG2_E, _ROUNDING_MAGIC)
    k = shifted - _ROUNDING_MAGIC
    r = fma(-k, _LN2_LO, fma(-k, _LN2_HI, v))
    poly = fma(r, 1 / 362880, 1 / 40320)
    poly = fma(r, poly, 1 / 5040)
    poly = fma(r, poly, 1 / 720)
    poly = fma(r, poly, 1 / 120)
    poly = fma(r, poly, 1 / 24)
    poly = fma(r, poly, 1 / 6)
    poly = fma(r, poly, 1 / 2)
    poly = fma(r, poly, 1.0)
    poly = fma(r, poly, 1.0)
    return poly * _bits_to_float((_float_to_bits(shifted) - _float_to_bits(_ROUNDING_MAGIC) + 1023) << 52)


@numba.njit(inline="always", error_model="numpy")
def _integral(query, block, integral, row):
    """integral[y+1, x+1, l] = sum over [0..y] x [0..x] of sum_c (query - block image l)^2."""
    channels, height, width = query.shape
    for y in range(height):
        row[:] = 0.0
        for x in range(width):
            for c in range(channels):
                value = query[c, y, x]
                for lane in range(LANES):
                    diff = value - block[c, y, x, lane]
                    row[lane] += diff * diff
            for lane in range(LANES):
                integral[y + 1, x + 1, lane] = integral[y, x + 1, lane] + row[lane]


@numba.njit(inline="always")
def _logits(integral, patch_h, patch_w, rows, cols, scale, logits):
    """logits[p, l] = scale * (window sum of patch p for lane l)."""
    for py in range(rows):
        for px in range(cols):
            p = py * cols + px
            for lane in range(LANES):
                box = (integral[py + patch_h, px + patch_w, lane] - integral[py, px + patch_w, lane]
                       - integral[py + patch_h, px, lane] + integral[py, px, lane])
                logits[p, lane] = scale * box


WINDOW, MASKS = 0, 1


@numba.njit(inline="always")
def _mask_logits(query, block, squares, indptr, indices, scale, logits):
    """logits[u, l] = scale * sum over the pixels of mask u of sum_c (query - image l)^2."""
    channels, height, width = query.shape
    squares[:] = 0.0
    for c in range(channels):
        for y in range(height):
            for x in range(width):
                value = query[c, y, x]
                pixel = y * width + x
                for lane in range(LANES):
                    diff = value - block[c, y, x, lane]
                    squares[pixel, lane] += diff * diff
    for u in range(indptr.shape[0] - 1):
        for lane in range(LANES):
            logits[u, lane] = 0.0
        for j in range(indptr[u], indptr[u + 1]):
            pixel = indices[j]
            for lane in range(LANES):
                logits[u, lane] += squares[pixel, lane]
        for lane in range(LANES):
            logits[u, lane] *= scale


@numba.njit(inline="always")
def _block_logits(query, block, structure, patch_h, patch_w, indptr, indices, integral, row, squares,
                  scale, valid, excluded, logits):
    """Logits of one query against one block of images; padding lanes (>= valid) and the
    lanes of excluded images (excluded[lane] != 0, the block's slice of the mask) get -inf."""
    channels, height, width = query.shape
    if structure == WINDOW and patch_h == height and patch_w == width:  # one patch: the whole image
        for lane in range(LANES):
            row[lane] = 0.0
        for c in range(channels):
            for y in range(height):
                for x in range(width):
                    value = query[c, y, x]
                    for lane in range(LANES):
                        diff = value - block[c, y, x, lane]
                        row[lane] += diff * diff
        for lane in range(LANES):
            logits[0, lane] = scale * row[lane]
    elif structure == WINDOW:
        _integral(query, block, integral, row)
        _logits(integral, patch_h, patch_w, height - patch_h + 1, width - patch_w + 1, scale, logits)
    else:
        _mask_logits(query, block, squares, indptr, indices, scale, logits)
    for lane in range(LANES):
        if lane >= valid or excluded[lane]:
            logits[:, lane] = -np.inf


@numba.njit(inline="always")
def _all_excluded(excluded, valid):
    """Whether every image of a block (its first `valid` lanes) is excluded: then the block is skipped."""
    for lane in range(valid):
        if not excluded[lane]:
            return False
    return True


@numba.njit(inline="always")
def _lane_max(logits, p):
    top = logits[p, 0]
    for lane in range(1, LANES):
        top = max(top, logits[p, lane])
    return top


@numba.njit(parallel=True, cache=True)
def log_normaliser(queries, images_t, structure, patch_h, patch_w, indptr, indices, num_patches,
                   scales, parts, padded_from, excluded):
    """Pass 1: per (query, patch) log sum_i exp(logit), over all images.

    queries [Q, C, H, W] float64; images_t [N_padded / LANES, C, H, W, LANES] float32
    (see block_images; entries >= padded_from are padding); excluded [N_padded] uint8
    (block_mask): images that get weight 0, like the padding. Returns [Q, P] float64.
    The workers claim groups of image blocks (claim_group); each block, once in cache, meets every query.
    Each (query, patch, lane) keeps its own online log-sum-exp (running max m, sum s of
    exp(logit - m)), so that the update is one branch-free loop over patches x lanes with
    one exp per logit; every EQUALIZE blocks the lanes of a patch are brought to a common
    max so that blocks with nothing within CUTOFF of it are recognised and skipped.
    Each group's lanes are folded into one (m, s) per (query, patch), then the groups in
    group order: the result depends neither on `parts` (the thread count) nor on the schedule."""
    num_queries, _, height, width = queries.shape
    blocks = images_t.shape[0]
    groups = num_groups(blocks)
    parts = min(parts, groups)
    run_max = np.empty((parts, num_queries, num_patches, LANES))
    run_sum = np.empty((parts, num_queries, num_patches, LANES))
    group_max = np.empty((groups, num_queries, num_patches))
    group_sum = np.empty((groups, num_queries, num_patches))
    size = num_patches * LANES
    claimed = np.zeros(1, dtype=np.int64)  # groups handed out so far (see claim_group)
    for part in numba.prange(parts):
        integral = np.zeros((height + 1, width + 1, LANES))
        squares = np.zeros((height * width, LANES))
        logits = np.empty((num_patches, LANES))
        row = np.zeros(LANES)
        flat = logits.reshape(size)
        folded = np.empty(size)
        group = claim_group(claimed)
        while group < groups:
            run_max[part] = -1e300
            run_sum[part] = 0.0
            first = group * blocks // groups
            for block in range(first, (group + 1) * blocks // groups):
                valid = min(LANES, padded_from - block * LANES)
                lanes_excluded = excluded[block * LANES:(block + 1) * LANES]
                if _all_excluded(lanes_excluded, valid):
                    continue
                for q in range(num_queries):
                    _block_logits(queries[q], images_t[block], structure, patch_h, patch_w, indptr, indices,
                                  integral, row, squares, scales[q], valid, lanes_excluded, logits)
                    if (block - first) % EQUALIZE == 0:
                        _equalize(logits, run_max[part, q], run_sum[part, q])
                    m = run_max[part, q].reshape(size)
                    s = run_sum[part, q].reshape(size)
                    active = 0
                    for i in range(size):
                        active += flat[i] > m[i] - CUTOFF
                    if active == 0:
                        continue
                    for i in range(size):  # s <- s e^(m - l) + 1 if the logit l is a new max, else s + e^(l - m)
                        v = max(-abs(flat[i] - m[i]), -CUTOFF)
                        e = _exp(v)
                        up = flat[i] > m[i]
                        s[i] = s[i] * e + 1.0 if up else s[i] + e
                        m[i] = flat[i] if up else m[i]
            for q in range(num_queries):
                _fold_lanes(run_max[part, q], run_sum[part, q], folded, group_max[group, q], group_sum[group, q])
            group = claim_group(claimed)
    out = np.empty((num_queries, num_patches))
    for q in numba.prange(num_queries):  # each (q, p) adds its groups in group order
        for p in range(num_patches):
            top = -np.inf
            for group in range(groups):
                top = max(top, group_max[group, q, p])
            total = 0.0
            for group in range(groups):
                total += group_sum[group, q, p] * math.exp(group_max[group, q, p] - top)
            out[q, p] = top + math.log(total)
    return out


@numba.njit(inline="always")
def _fold_lanes(run_max, run_sum, folded, top, total):
    """Per patch p, the lanes' log-sum-exps (run_max[p, l], run_sum[p, l]) as one: top[p] =
    max_l, total[p] = sum_l run_sum e^(run_max - top), added in lane order; like the
    updates, lanes more than CUTOFF below count as at most e^-CUTOFF (a lane that met no
    entry, run_sum 0, adds nothing). The exps run in one flat loop (vectorised); folded is
    scratch of P x LANES."""
    num_patches = run_max.shape[0]
    for p in range(num_patches):
        top[p] = _lane_max(run_max, p)
        for lane in range(LANES):
            folded[p * LANES + lane] = top[p]
    m = run_max.reshape(folded.shape[0])
    s = run_sum.reshape(folded.shape[0])
    for i in range(folded.shape[0]):
        folded[i] = s[i] * _exp(max(m[i] - folded[i], -CUTOFF))
    for p in range(num_patches):
        acc = 0.0
        for lane in range(LANES):
            acc += folded[p * LANES + lane]
        total[p] = acc


@numba.njit(cache=True)
def num_groups(blocks: int) -> int:
    """Groups the kernels cut `blocks` image blocks into: the largest power of two <= GROUPS
    leaving each group at least GROUP_BLOCKS blocks (1 for small sets), a function of the
    data size only. Powers of two split evenly over 2, 4, 8, ... threads."""
    groups = 1
    while groups * 2 <= GROUPS and groups * 2 * GROUP_BLOCKS <= blocks:
        groups *= 2
    return groups


@numba.njit(inline="always")
def _equalize(logits, run_max, run_sum):
    """Bring the lanes of every patch to one running max: the lanes' and this block's."""
    for p in range(run_max.shape[0]):
        top = _lane_max(logits, p)
        for lane in range(LANES):
            top = max(top, run_max[p, lane])
        for lane in range(LANES):
            if run_sum[p, lane] > 0.0:
                run_sum[p, lane] *= math.exp(run_max[p, lane] - top)
            run_max[p, lane] = top


@numba.njit(parallel=True, cache=True)
def compose(queries, images_t, structure, patch_h, patch_w, indptr, indices, num_patches,
            pixel_indptr, pixel_masks, pixel_counts, scales, log_norm, parts, top_k, padded_from, excluded):
    """Pass 2: exact weights w = exp(logit - log_norm), the composite numerator
    sum_i spread(w_i) * x_i, entropy and sum w^2 per (query, patch), and the top_k entries
    per (query, patch) (top_k = 0 skips them). Entries >= padded_from are padding; excluded
    ones (excluded [N_padded] uint8, block_mask) get weight 0 and never enter the top-k.
    For masks, spread uses the transposed CSR: the masks covering each pixel, with counts.
    Sums are per group of blocks, added in group order (independent of `parts` and of which
    worker claims which group); each worker's top-k list ranks by (weight, entry) (`insert_ranked`).

    Returns numerator [Q, C, H, W], entropy [Q, P], sum_sq [Q, P], top_w, top_i [Q, parts, P, k]."""
    num_queries, channels, height, width = queries.shape
    rows, cols = height - patch_h + 1, width - patch_w + 1
    blocks = images_t.shape[0]
    groups = num_groups(blocks)
    parts = min(parts, groups)
    numerator = np.zeros((groups, num_queries, channels, height, width))
    size = num_patches * LANES
    norms = np.empty((num_queries, size))  # log_norm repeated per lane
    for q in range(num_queries):
        for p in range(num_patches):
            norms[q, p * LANES:(p + 1) * LANES] = log_norm[q, p]
    entropy_lanes = np.empty((parts, num_queries, size))  # -sum w log w and sum w^2 per (patch, lane)
    sum_sq_lanes = np.empty((parts, num_queries, size))
    group_entropy = np.empty((groups, num_queries, num_patches))
    group_sum_sq = np.empty((groups, num_queries, num_patches))
    kept = max(top_k, 1)
    top_w = np.zeros((num_queries, parts, num_patches, kept))
    top_i = np.full((num_queries, parts, num_patches, kept), -1, dtype=np.int64)
    floor_w = np.zeros((parts, num_queries, num_patches))  # the last kept top-k entry (0, -1 until full)
    floor_i = np.full((parts, num_queries, num_patches), -1, dtype=np.int64)
    claimed = np.zeros(1, dtype=np.int64)  # groups handed out so far (see claim_group)
    for part in numba.prange(parts):
        integral = np.zeros((height + 1, width + 1, LANES))
        squares = np.zeros((height * width, LANES))
        logits = np.empty((num_patches, LANES))
        flat = logits.reshape(size)
        grid = np.zeros((rows + 1, cols + 1, LANES))  # integral image of the weights
        row = np.zeros(LANES)
        group = claim_group(claimed)
        while group < groups:
            entropy_lanes[part] = 0.0
            sum_sq_lanes[part] = 0.0
            for block in range(group * blocks // groups, (group + 1) * blocks // groups):
                start = block * LANES
                valid = min(LANES, padded_from - start)
                lanes_excluded = excluded[start:start + LANES]
                if _all_excluded(lanes_excluded, valid):
                    continue
                images = images_t[block]
                for q in range(num_queries):
                    _block_logits(queries[q], images, structure, patch_h, patch_w, indptr, indices,
                                  integral, row, squares, scales[q], valid, lanes_excluded, logits)
                    norm, plogp, squared = norms[q], entropy_lanes[part, q], sum_sq_lanes[part, q]
                    # weights in place of the logits, in one branch-free loop over patches x lanes;
                    # most blocks carry no weight at small t
                    active = 0
                    for i in range(size):
                        active += flat[i] - norm[i] > -CUTOFF
                    if active == 0:
                        continue
                    for i in range(size):
                        v = max(flat[i] - norm[i], -CUTOFF)
                        w = _exp(v) if v > -CUTOFF else 0.0
                        flat[i] = w
                        plogp[i] -= w * v
                        squared[i] += w * w
                    if top_k > 0:
                        for p in range(num_patches):
                            for lane in range(LANES):
                                w = logits[p, lane]
                                if precedes(w, start + lane, floor_w[part, q, p], floor_i[part, q, p]):
                                    insert_ranked(top_w[q, part, p], top_i[q, part, p], w, start + lane)
                                    floor_w[part, q, p] = top_w[q, part, p, kept - 1]
                                    floor_i[part, q, p] = top_i[q, part, p, kept - 1]
                    if structure == WINDOW:
                        _spread_windows(logits, grid, row, images, patch_h, patch_w, rows, cols, numerator[group, q])
                    else:
                        _spread_masks(logits, images, pixel_indptr, pixel_masks, pixel_counts, row, numerator[group, q])
            for q in range(num_queries):
                for p in range(num_patches):
                    group_entropy[group, q, p] = entropy_lanes[part, q, p * LANES:(p + 1) * LANES].sum()
                    group_sum_sq[group, q, p] = sum_sq_lanes[part, q, p * LANES:(p + 1) * LANES].sum()
            group = claim_group(claimed)
    return (_sum_in_order(numerator), _sum_in_order(group_entropy), _sum_in_order(group_sum_sq),
            top_w, top_i)


@numba.njit
def _sum_in_order(per_group):
    """per_group[0] + per_group[1] + ... in that order (elementwise)."""
    total = per_group[0].copy()
    for group in range(1, per_group.shape[0]):
        total += per_group[group]
    return total


@numba.njit(inline="always")
def _spread_windows(weights, grid, row, images, patch_h, patch_w, rows, cols, numerator):
    """numerator[c, y, x] += sum_l x_l[c, y, x] * (sum of the weights of the windows covering (y, x))."""
    channels, height, width = numerator.shape
    if rows == 1 and cols == 1:  # one patch covering every pixel: no spreading needed
        for c in range(channels):
            for y in range(height):
                for x in range(width):
                    acc = 0.0
                    for lane in range(LANES):
                        acc += weights[0, lane] * images[c, y, x, lane]
                    numerator[c, y, x] += acc
        return
    for py in range(rows):
        row[:] = 0.0
        for px in range(cols):
            p = py * cols + px
            for lane in range(LANES):
                row[lane] += weights[p, lane]
                grid[py + 1, px + 1, lane] = grid[py, px + 1, lane] + row[lane]
    for y in range(height):
        top = max(0, y - patch_h + 1)
        bottom = min(rows - 1, y) + 1
        for x in range(width):
            left = max(0, x - patch_w + 1)
            right = min(cols - 1, x) + 1
            for c in range(channels):
                acc = 0.0
                for lane in range(LANES):
                    spread = (grid[bottom, right, lane] - grid[top, right, lane]
                              - grid[bottom, left, lane] + grid[top, left, lane])
                    acc += spread * images[c, y, x, lane]
                numerator[c, y, x] += acc


@numba.njit(inline="always")
def _spread_masks(weights, images, pixel_indptr, pixel_masks, pixel_counts, spread, numerator):
    """numerator[c, pixel] += sum_l x_l[c, pixel] * sum over masks u covering the pixel of count_u w_u."""
    channels, height, width = numerator.shape
    for y in range(height):
        for x in range(width):
            pixel = y * width + x
            spread[:] = 0.0
            for j in range(pixel_indptr[pixel], pixel_indptr[pixel + 1]):
                u = pixel_masks[j]
                for lane in range(LANES):
                    spread[lane] += pixel_counts[j] * weights[u, lane]
            for c in range(channels):
                acc = 0.0
                for lane in range(LANES):
                    acc += spread[lane] * images[c, y, x, lane]
                numerator[c, y, x] += acc


@numba.njit(parallel=True, cache=True)
def merge_top(top_w, top_i, k):
    """The k best of L lists per (query, patch): top_w, top_i [Q, P, L, kept], each list by
    weight descending, then entry ascending (empty slots: weight 0, index -1, last). Returns
    [Q, P, k] in that order, whatever the order of the lists (k-way merge)."""
    num_queries, num_patches, lists, kept = top_w.shape
    out_w = np.zeros((num_queries, num_patches, k))
    out_i = np.full((num_queries, num_patches, k), -1, dtype=np.int64)
    for q in numba.prange(num_queries):
        heads = np.zeros(lists, dtype=np.int64)
        for p in range(num_patches):
            heads[:] = 0
            for j in range(k):
                best = -1
                for candidate in range(lists):
                    h = heads[candidate]
                    if h == kept or top_i[q, p, candidate, h] < 0:
                        continue
                    w, i = top_w[q, p, candidate, h], top_i[q, p, candidate, h]
                    if best < 0 or w > out_w[q, p, j] or (w == out_w[q, p, j] and i < out_i[q, p, j]):
                        best, out_w[q, p, j], out_i[q, p, j] = candidate, w, i
                if best < 0:
                    break
                heads[best] += 1
    return out_w, out_i


@numba.njit(inline="always")
def precedes(w, index, other_w, other_index):
    """Whether entry (w, index) ranks before (other_w, other_index) in a top-k list: a larger
    weight, or an equal one and a lower entry. An empty slot (0, -1) follows every entry of
    positive weight and precedes those of weight 0, which therefore never enter a list."""
    return w > other_w or (w == other_w and index < other_index)


@numba.njit(inline="always")
def insert_ranked(weights, indices, w, index):
    """Insert (w, index) into the list (weights, indices), ranked by `precedes`, dropping its
    last element: whatever order the entries come in, the list holds the best of them."""
    position = weights.shape[0] - 1
    while position > 0 and precedes(w, index, weights[position - 1], indices[position - 1]):
        weights[position] = weights[position - 1]
        indices[position] = indices[position - 1]
        position -= 1
    weights[position] = w
    indices[position] = index


def block_images(data: np.ndarray) -> np.ndarray:
    """[N, C, H, W] -> [ceil(N / LANES), C, H, W, LANES] float32, zero-padded: each block of
    LANES images is contiguous, with the image index innermost (the vectorised loop)."""
    count = data.shape[0]
    blocks = -(-count // LANES)
    padded = np.zeros((blocks * LANES,) + data.shape[1:], dtype=np.float32)
    padded[:count] = data
    return np.ascontiguousarray(padded.reshape((blocks, LANES) + data.shape[1:]).transpose(0, 2, 3, 4, 1))


def block_mask(excluded: np.ndarray | None, count: int) -> np.ndarray:
    """The per-image exclusion mask (bool [count], or None: none excluded) as the kernels'
    uint8 [ceil(count / LANES) * LANES], zero-padded like block_images."""
    padded = np.zeros(-(-count // LANES) * LANES, dtype=np.uint8)
    if excluded is not None:
        padded[:count] = excluded
    return padded
