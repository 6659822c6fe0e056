"""Single-pass CPU kernels (numba) for small windows: PSPC-Square at s = 3 in one sweep over the data.

The two-pass kernels (fused_kernels) compute every (query, entry, window) distance and its
exp twice, once for the log-normaliser and once for the weights, because they spread each
entry's weights over the pixels of all its windows at once (Eq. 11), which needs the weights
normalised first. For windows of few pixels it is cheaper to keep each window's own
numerator: for query b and window p (C ph pw values), with m_p a running maximum of the
window's logits and e_i = exp(logit_i - m_p),
  s_p = sum_i e_i,   a_p = sum_i e_i (logit_i - m_p),   q_p = sum_i e_i^2,
  n_p = sum_i e_i x_i[window p],
an online log-sum-exp: a new maximum m' > m_p rescales s_p and n_p by exp(m_p - m'), q_p by
its square and a_p to exp(m_p - m') (a_p + (m_p - m') s_p). At the end, with the
log-normaliser G_p = m_p + log s_p (after the distributed hook, when sharded) and
c_p = exp(m_p - G_p), the weights are w_i = c_p e_i: the entropy -sum w log w is
-c_p (a_p + (m_p - G_p) s_p), sum w^2 is c_p^2 q_p, and the composite's numerator is the sum
of c_p n_p placed at window p's pixels. One distance and one exp per (query, entry, window)
instead of two of each.

Layout: the windows are indexed by a grid of rows x W positions p = py W + px, where
px >= cols are padding positions (logit -inf, weight 0), so that the window at p reads the
image at p + c H W + dy W + dx and every loop over windows is one flat, branch-free loop over
contiguous float64 memory, the loop the compiler vectorises (each state field is an array of
its own: a loop that writes two rows of one array is not vectorised). A block's LANES images
are transposed to flat rows once, for all the queries; per (query, image), the squared
differences are summed along the rows (pw values) once, then per tile of TILE_ROWS grid rows
down the columns (ph row sums): a plain float64 sum of the window's values, no integral
image. The images of a block pass one after the other over a tile, whose state stays in L1.
Excluded images and the blocks' padding are skipped: weight exactly 0, never in the top-k.

Cutoff: an entry more than CUTOFF below the running maximum gets e = 0: its weight is below
e^-CUTOFF of the normaliser, which the two-pass kernels count as 0 too. One within CUTOFF
of the running maximum but not of the final normaliser keeps its e < e^-CUTOFF: a sum differs
from the two-pass kernels' by at most N e^-CUTOFF < 1e-20 relative.

Top-k: each worker keeps the k best entries per (query, window) by (logit descending, entry
ascending), the order of the weights; an entry is tested against a list only where a
vectorised pass flagged it (weight > 0, logit not below the list's last one: a bit mask per
64 positions). `list_weights` turns the lists into weights exp(logit - G_p), drops those at or
below the cutoff, and ranks each list by (weight desc, entry asc) as the other paths do.

Measured (README "Speed"): 3x faster than the two passes at s = 3, 1.1x at s = 5 (25 values a
window); at s = 7 (49 values) the numerators cost more than the second pass they save (0.65x),
so those sets stay on fused_kernels (MAX_SPAN).

Work split and determinism: as in fused_kernels: the same groups of consecutive blocks,
claimed from one atomic counter; each group sums its entries in order; `fold_groups` adds the
groups in group order; the top-k lists are ranked whatever order the entries come in. The
results are bit-identical for any thread count.
"""

from __future__ import annotations

import math

import numba
import numpy as np
from llvmlite import ir
from numba import types
from numba.extending import intrinsic

from pspc.posterior.fused_kernels import (
    CUTOFF, LANES, claim_group, exp_fma, fma, insert_ranked, num_groups, precedes
)

MAX_SPAN = 27  # windows of at most this many values (C ph pw) take the single pass: README "Speed"
TILE_ROWS = 4  # grid rows per tile: a tile's sums and numerators stay in L1 while the block's images pass
_EMPTY = -1e300  # the running max before any entry (finite: no inf - inf)


def uses_single_pass(channels: int, height: int, width: int, patch_h: int, patch_w: int) -> bool:
    """Whether a window set takes the single pass: windows of at most MAX_SPAN values that
    are not the whole image (one window: the GEMM path or fused_kernels' own case)."""
    return channels * patch_h * patch_w <= MAX_SPAN and (patch_h, patch_w) != (height, width)


@numba.njit(inline="always")
def _block_row_sums(query, images, lanes, pixels, patch_w, squares, row_sums):
    """row_sums[lane, i] = sum over dx < patch_w of sum_c (query - image lane)^2 at pixel
    i + dx (added in dx order), for the lanes to fold (lanes[lane] != 0); query [C H W],
    images [LANES, C H W + pad] (float64); squares [H W + pad] scratch, its tail 0."""
    channels = query.shape[0] // pixels
    for lane in range(LANES):
        if not lanes[lane]:
            continue
        image, out = images[lane], row_sums[lane]
        for i in range(pixels):
            diff = query[i] - image[i]
            squares[i] = diff * diff
        for c in range(1, channels):
            shifted, own = image[c * pixels:], query[c * pixels:]
            for i in range(pixels):
                diff = own[i] - shifted[i]
                squares[i] += diff * diff
        if patch_w == 1:
            out[:pixels] = squares[:pixels]
            continue
        right = squares[1:]
        for i in range(pixels):
            out[i] = squares[i] + right[i]
        for dx in range(2, patch_w):
            right = squares[dx:]
            for i in range(pixels):
                out[i] += right[i]


@numba.njit(inline="always")
def _tile_logits(row_sums, first, patch_h, width, scale, padding, logits):
    """logits[k] = scale * (sum over the window at grid position first + k of the squared
    differences: its rows' sums added in dy order) + padding (0, or -inf off the image)."""
    count = logits.shape[0]
    top = row_sums[first:]
    if patch_h == 1:
        for k in range(count):
            logits[k] = top[k] * scale + padding[k]
        return
    if patch_h == 2:
        logits[:] = top[:count]
    else:
        below = row_sums[first + width:]
        for k in range(count):
            logits[k] = top[k] + below[k]
        for dy in range(2, patch_h - 1):
            below = row_sums[first + dy * width:]
            for k in range(count):
                logits[k] += below[k]
    last = row_sums[first + (patch_h - 1) * width:]
    for k in range(count):
        logits[k] = (logits[k] + last[k]) * scale + padding[k]


@numba.njit(inline="always")
def _fold_entry(top, total, plogp, squared, logits, scale_old, weight_new):
    """Fold one entry's logits into one tile's running max, s, a and q (module docstring);
    leaves in scale_old, weight_new the factors of the numerator's update n <- n scale_old +
    weight_new x. Returns the number of new maxima."""
    ups = 0
    for k in range(logits.shape[0]):
        logit, old, sum_old = logits[k], top[k], total[k]
        diff = logit - old
        up = diff > 0.0
        gap = -abs(diff)  # the lower of (entry, running max) below the higher
        v = max(gap, -CUTOFF)
        e = exp_fma(v) if gap > -CUTOFF else 0.0
        a = e if up else 1.0  # the old sums' factor
        b = 1.0 if up else e  # the entry's weight relative to the new max
        plogp[k] = (plogp[k] + v * (sum_old if up else e)) * a
        total[k] = fma(sum_old, a, b)
        squared[k] = fma(squared[k] * a, a, b * b)
        top[k] = max(old, logit)
        scale_old[k] = a
        weight_new[k] = b
        ups += up
    return ups


@numba.njit(inline="always")
def _candidates(logits, weight_new, floor, bits):
    """bits[w] bit b set where position 64 w + b has weight and a logit not below its top-k
    list's floor (the entry may enter the list); returns whether any is set."""
    found = np.uint64(0)
    for word in range(bits.shape[0]):
        first = 64 * word
        mask = np.uint64(0)
        for b in range(min(64, logits.shape[0] - first)):
            hit = (weight_new[first + b] > 0.0) & (logits[first + b] >= floor[first + b])
            mask |= np.uint64(hit) << np.uint64(b)
        bits[word] = mask
        found |= mask
    return found != 0


@numba.njit(inline="always")
def _fold_numerator(numerator, image, first, count, patch_h, patch_w, width, pixels, ups, scale_old, weight_new):
    """numerator[j, first + k] <- numerator scale_old[k] + weight_new[k] x (k < count) for
    every value j = (channel, dy, dx) of the windows; image [C H W + pad]."""
    j = 0
    for c in range(numerator.shape[0] // (patch_h * patch_w)):
        for dy in range(patch_h):
            for dx in range(patch_w):
                row = numerator[j, first:first + count]
                x = image[c * pixels + dy * width + dx + first:]
                if ups == 0:  # the usual case: no new maximum, n += e x
                    for k in range(count):
                        row[k] = fma(weight_new[k], x[k], row[k])
                else:
                    for k in range(count):
                        row[k] = fma(weight_new[k], x[k], row[k] * scale_old[k])
                j += 1


@intrinsic
def _lowest_bit(typingctx, value):
    """The index of the lowest set bit of a uint64 (llvm.cttz)."""
    if value != types.uint64:
        return None

    def codegen(context, builder, signature, args):
        return builder.cttz(args[0], ir.Constant(ir.IntType(1), 0))
    return types.uint64(types.uint64), codegen


@numba.njit(inline="always")
def _insert_candidates(bits, logits, entry, top_l, top_i, floor_l, floor_i):
    """Insert the entry into the top-k list of every position of the tile flagged in bits
    (_candidates) where it ranks before the list's last element (floor_l, floor_i)."""
    kept = top_l.shape[1]
    for word in range(bits.shape[0]):
        mask = bits[word]
        while mask != 0:
            k = 64 * word + np.int64(_lowest_bit(mask))
            mask &= mask - np.uint64(1)
            if precedes(logits[k], entry, floor_l[k], floor_i[k]):
                insert_ranked(top_l[k], top_i[k], logits[k], entry)
                floor_l[k] = top_l[k, kept - 1]
                floor_i[k] = top_i[k, kept - 1]


@numba.njit(inline="always")
def _lanes_to_fold(excluded, valid, lanes):
    """lanes[lane] = 1 for the block's images that are neither padding nor excluded; returns their count."""
    count = 0
    for lane in range(LANES):
        lanes[lane] = lane < valid and not excluded[lane]
        count += lanes[lane]
    return count


@numba.njit(inline="always")
def _load_block(images_t, block, images):
    """images[lane] = the block's image lane as a flat [C H W] float64 row."""
    channels, height, width = images_t.shape[1:4]
    for c in range(channels):
        for y in range(height):
            for x in range(width):
                for lane in range(LANES):
                    images[lane, (c * height + y) * width + x] = images_t[block, c, y, x, lane]


@numba.njit(inline="always")
def _fold_block(query, scale, images, lanes, first_entry, shape, padding, state, lists, scratch):
    """Fold the block's images (lanes[lane] != 0; entry first_entry + lane) into one query's
    state = (running max, s, a, q [grid], numerators [span, grid]) and, when lists = (top_l,
    top_i [grid, k], floor_l, floor_i [grid]) is not empty, its top-k lists; tile by tile,
    so that a tile's state stays in L1 while the LANES images pass. shape = (patch_h,
    patch_w, W, H W)."""
    patch_h, patch_w, width, pixels = shape
    top, total, plogp, squared, numerator = state
    squares, row_sums, logits, scale_old, weight_new, bits = scratch
    grid, tile = top.shape[0], logits.shape[0]
    _block_row_sums(query, images, lanes, pixels, patch_w, squares, row_sums)
    for first in range(0, grid, tile):
        last = min(grid, first + tile)
        count = last - first
        for lane in range(LANES):
            if not lanes[lane]:
                continue
            own_logits, own_scale, own_weight = logits[:count], scale_old[:count], weight_new[:count]
            _tile_logits(row_sums[lane], first, patch_h, width, scale, padding[first:last], own_logits)
            ups = _fold_entry(top[first:last], total[first:last], plogp[first:last], squared[first:last],
                              own_logits, own_scale, own_weight)
            _fold_numerator(numerator, images[lane], first, count, patch_h, patch_w, width, pixels, ups, own_scale,
                            own_weight)
            if lists[0].shape[0] > 0:
                top_l, top_i, floor_l, floor_i = lists
                if _candidates(own_logits, own_weight, floor_l[first:last], bits):
                    _insert_candidates(bits, own_logits, first_entry + lane, top_l[first:last], top_i[first:last],
                                       floor_l[first:last], floor_i[first:last])


@numba.njit(parallel=True, cache=True)
def window_posterior(queries, images_t, patch_h, patch_w, scales, parts, top_k, padded_from, excluded):
    """One sweep over the data for windows (module docstring). queries [Q, C H W] float64;
    images_t [N_padded / LANES, C, H, W, LANES] float32 (fused_kernels.block_images; entries
    >= padded_from are padding); excluded [N_padded] uint8 (fused_kernels.block_mask).

    Returns each group's running max, s, a, q [4, groups, Q, rows W] and numerators [groups,
    Q, C ph pw, rows W] (fold_groups adds them), and each worker's top-k by logit, top_l,
    top_i [Q, parts, rows W, max(top_k, 1)] (empty slots: -inf, -1)."""
    num_queries = queries.shape[0]
    blocks, channels, height, width = images_t.shape[:4]
    grid = (height - patch_h + 1) * width
    span = channels * patch_h * patch_w
    tile = TILE_ROWS * width
    groups = num_groups(blocks)
    parts = min(parts, groups)
    kept = max(top_k, 1)
    padding = np.zeros(grid)
    for i in range(grid):
        if i % width > width - patch_w:
            padding[i] = -np.inf
    sums = np.empty((4, groups, num_queries, grid))  # running max, s, a, q per group
    numerators = np.empty((groups, num_queries, span, grid))
    top_l = np.full((num_queries, parts, grid, kept), -np.inf)
    top_i = np.full((num_queries, parts, grid, kept), -1, dtype=np.int64)
    claimed = np.zeros(1, dtype=np.int64)  # groups handed out so far (fused_kernels.claim_group)
    for part in numba.prange(parts):
        pad = width + patch_w  # zeros after each row: the last windows read past the image
        images = np.zeros((LANES, channels * height * width + pad))
        lanes = np.zeros(LANES, dtype=np.uint8)
        scratch = (np.zeros(height * width + pad), np.zeros((LANES, height * width + pad)), np.empty(tile),
                   np.empty(tile), np.empty(tile), np.zeros(-(-tile // 64), dtype=np.uint64))
        top = np.empty((num_queries, grid))  # separate arrays: the vectorised loops write several
        total = np.empty((num_queries, grid))
        plogp = np.empty((num_queries, grid))
        squared = np.empty((num_queries, grid))
        numerator = np.empty((num_queries, span, grid))
        floor_l = np.full((num_queries, grid), -np.inf)  # each list's last element
        floor_i = np.full((num_queries, grid), -1, dtype=np.int64)
        group = claim_group(claimed)
        while group < groups:
            top[:] = _EMPTY
            total[:] = 0.0
            plogp[:] = 0.0
            squared[:] = 0.0
            numerator[:] = 0.0
            for block in range(group * blocks // groups, (group + 1) * blocks // groups):
                start = block * LANES
                if _lanes_to_fold(excluded[start:start + LANES], min(LANES, padded_from - start), lanes) == 0:
                    continue
                _load_block(images_t, block, images)
                for q in range(num_queries):
                    lists = ((top_l[q, part], top_i[q, part], floor_l[q], floor_i[q]) if top_k > 0 else
                             (top_l[q, part, :0], top_i[q, part, :0], floor_l[q, :0], floor_i[q, :0]))
                    _fold_block(queries[q], scales[q], images, lanes, start, (patch_h, patch_w, width, height * width),
                                padding, (top[q], total[q], plogp[q], squared[q], numerator[q]), lists, scratch)
            sums[0, group] = top
            sums[1, group] = total
            sums[2, group] = plogp
            sums[3, group] = squared
            numerators[group] = numerator
            group = claim_group(claimed)
    return sums, numerators, top_l, top_i


@numba.njit(parallel=True, cache=True)
def fold_groups(sums, numerators):
    """The groups' running max, s, a, q [4, groups, Q, grid] and numerators [groups, Q, span,
    grid] as one [4, Q, grid] and [Q, span, grid], added in group order, each group rescaled
    to the largest running max (module docstring)."""
    groups, num_queries, span, grid = numerators.shape
    out = np.empty((4, num_queries, grid))
    out_numerator = np.empty((num_queries, span, grid))
    for q in numba.prange(num_queries):
        factor = np.empty(groups)
        for i in range(grid):
            top = _EMPTY
            for g in range(groups):
                top = max(top, sums[0, g, q, i])
            total, plogp, squared = 0.0, 0.0, 0.0
            for g in range(groups):
                f = math.exp(sums[0, g, q, i] - top)
                factor[g] = f
                total += f * sums[1, g, q, i]
                plogp += f * (sums[2, g, q, i] + (sums[0, g, q, i] - top) * sums[1, g, q, i])
                squared += f * f * sums[3, g, q, i]
            out[0, q, i] = top
            out[1, q, i] = total
            out[2, q, i] = plogp
            out[3, q, i] = squared
            for j in range(span):
                acc = 0.0
                for g in range(groups):
                    acc += factor[g] * numerators[g, q, j, i]
                out_numerator[q, j, i] = acc
    return out, out_numerator


@numba.njit(parallel=True, cache=True)
def list_weights(top_l, top_i, log_norm, k):
    """Each list of logits top_l, top_i [Q, L, P, kept] (by logit desc, entry asc) as the k
    best weights exp(logit - log_norm[q, p]) above e^-CUTOFF (others: weight 0, entry -1),
    ranked by (weight desc, entry asc). Returns [Q, L, P, k] weights and entries."""
    num_queries, lists, num_patches, kept = top_l.shape
    out_w = np.zeros((num_queries, lists, num_patches, k))
    out_i = np.full((num_queries, lists, num_patches, k), -1, dtype=np.int64)
    for q in numba.prange(num_queries):
        for part in range(lists):
            for p in range(num_patches):
                for j in range(min(k, kept)):
                    v = top_l[q, part, p, j] - log_norm[q, p]
                    if top_i[q, part, p, j] >= 0 and v > -CUTOFF:
                        insert_ranked(out_w[q, part, p], out_i[q, part, p], math.exp(v), top_i[q, part, p, j])
    return out_w, out_i
