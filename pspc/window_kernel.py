"""Fused CPU kernels (numba) for PSPC with window patch sets: the fast path of patch_posterior.

The torch path materialises [queries, images, H, W] float64 temporaries and is bound by
memory traffic. These kernels keep one block of LANES images at a time in registers and
L1/L2 (the lane loop is what the compiler vectorises), build the float64 integral image of
the squared differences, and fold the logits straight into the online log-sum-exp
(pass 1) or into the composite (pass 2), so nothing of size images x positions is stored.

Weights below exp(-CUTOFF) of the running maximum are skipped (taken as 0): with
CUTOFF = 60 that changes any sum by at most N e^-60 < 1e-20 relative, below float64
rounding, and it saves most exp() calls at small t where the posterior is peaked.
"""

from __future__ import annotations

import math

import numba
import numpy as np

LANES = 8
CUTOFF = 60.0
_EXP_STEPS = 32  # exp table resolution: exp(-k / 32) for k up to CUTOFF * 32
_EXP_TABLE = np.exp(-np.arange(int(CUTOFF + 2) * _EXP_STEPS) / _EXP_STEPS)


@numba.njit(inline="always", fastmath=True)
def _exp(v):
    """exp(v) for v in (-CUTOFF, 0], to float64 rounding: a table value exp(-k/32) times a
    degree-7 Taylor polynomial on the remainder r in (-1/32, 0] (error < r^8/8! < 1e-17).
    About twice as fast as libm's exp here, which dominates small-patch runs."""
    k = int(-v * _EXP_STEPS)
    r = v + k * (1.0 / _EXP_STEPS)
    poly = 1.0 + r * (1.0 + r * (1 / 2 + r * (1 / 6 + r * (1 / 24 + r * (1 / 120 + r * (1 / 720 + r * (1 / 5040)))))))
    return _EXP_TABLE[k] * poly


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


@numba.njit(inline="always")
def _masked_logits(query, block, integral, row, patch_h, patch_w, rows, cols, scale, valid, logits):
    """Logits of one query against one block; padding lanes (>= valid) get -inf."""
    _integral(query, block, integral, row)
    _logits(integral, patch_h, patch_w, rows, cols, scale, logits)
    for lane in range(valid, LANES):
        logits[:, lane] = -np.inf


@numba.njit(inline="always")
def _lane_max(logits, p):
    top = logits[p, 0]
    for lane in range(1, LANES):
        top = max(top, logits[p, lane])
    return top


@numba.njit(parallel=True, cache=True)
def log_normaliser(queries, images_t, patch_h, patch_w, scales, parts, padded_from):
    """Pass 1: per (query, patch) log sum_i exp(logit), over all images.

    queries [Q, C, H, W] float64; images_t [N_padded / LANES, C, H, W, LANES] float32
    (see block_images; entries >= padded_from are padding). Returns [Q, P] float64.
    Threads split the image blocks; each block, once in cache, meets every query."""
    num_queries, _, height, width = queries.shape
    rows, cols = height - patch_h + 1, width - patch_w + 1
    num_patches = rows * cols
    run_max = np.full((parts, num_queries, num_patches), -np.inf)
    run_sum = np.zeros((parts, num_queries, num_patches))
    blocks = images_t.shape[0]
    for part in numba.prange(parts):
        integral = np.zeros((height + 1, width + 1, LANES))
        logits = np.empty((num_patches, LANES))
        row = np.zeros(LANES)
        for block in range(part, blocks, parts):
            valid = min(LANES, padded_from - block * LANES)
            for q in range(num_queries):
                _masked_logits(queries[q], images_t[block], integral, row, patch_h, patch_w,
                               rows, cols, scales[q], valid, logits)
                for p in range(num_patches):
                    top = _lane_max(logits, p)
                    current = run_max[part, q, p]
                    if top < current - CUTOFF:
                        continue
                    if top > current:
                        run_sum[part, q, p] *= math.exp(current - top)
                        run_max[part, q, p] = top
                        current = top
                    for lane in range(LANES):
                        v = logits[p, lane] - current
                        if v > -CUTOFF:
                            run_sum[part, q, p] += _exp(v)
    out = np.empty((num_queries, num_patches))
    for q in range(num_queries):
        for p in range(num_patches):
            top = -np.inf
            for part in range(parts):
                top = max(top, run_max[part, q, p])
            total = 0.0
            for part in range(parts):
                if run_max[part, q, p] > -np.inf:
                    total += run_sum[part, q, p] * math.exp(run_max[part, q, p] - top)
            out[q, p] = top + math.log(total)
    return out


@numba.njit(parallel=True, cache=True)
def compose(queries, images_t, patch_h, patch_w, scales, log_norm, parts, top_k, padded_from):
    """Pass 2: exact weights w = exp(logit - log_norm), the composite numerator
    sum_i spread(w_i) * x_i, entropy and sum w^2 per (query, patch), and the top_k entries
    per (query, patch) (top_k = 0 skips them). Entries >= padded_from are padding.

    Returns numerator [Q, C, H, W], entropy [Q, P], sum_sq [Q, P], top_w, top_i [Q, parts, P, k]."""
    num_queries, channels, height, width = queries.shape
    rows, cols = height - patch_h + 1, width - patch_w + 1
    num_patches = rows * cols
    numerator = np.zeros((parts, num_queries, channels, height, width))
    entropy = np.zeros((parts, num_queries, num_patches))
    sum_sq = np.zeros((parts, num_queries, num_patches))
    kept = max(top_k, 1)
    top_w = np.zeros((num_queries, parts, num_patches, kept))
    top_i = np.full((num_queries, parts, num_patches, kept), -1, dtype=np.int64)
    floor = np.zeros((parts, num_queries, num_patches))  # smallest kept top-k weight (0 until full)
    blocks = images_t.shape[0]
    for part in numba.prange(parts):
        integral = np.zeros((height + 1, width + 1, LANES))
        logits = np.empty((num_patches, LANES))
        grid = np.zeros((rows + 1, cols + 1, LANES))  # integral image of the weights
        row = np.zeros(LANES)
        for block in range(part, blocks, parts):
            start = block * LANES
            valid = min(LANES, padded_from - start)
            images = images_t[block]
            for q in range(num_queries):
                _masked_logits(queries[q], images, integral, row, patch_h, patch_w,
                               rows, cols, scales[q], valid, logits)
                # weights in place of the logits; most blocks carry no weight at small t
                has_weight = False
                for p in range(num_patches):
                    if _lane_max(logits, p) - log_norm[q, p] <= -CUTOFF:
                        logits[p, :] = 0.0
                        continue
                    has_weight = True
                    for lane in range(LANES):
                        v = logits[p, lane] - log_norm[q, p]
                        w = 0.0
                        if v > -CUTOFF:
                            w = _exp(v)
                            entropy[part, q, p] -= w * v
                            sum_sq[part, q, p] += w * w
                            if top_k > 0 and w > floor[part, q, p]:
                                _insert(top_w[q, part, p], top_i[q, part, p], w, start + lane)
                                floor[part, q, p] = top_w[q, part, p, kept - 1]
                        logits[p, lane] = w
                if not has_weight:
                    continue
                for py in range(rows):
                    row[:] = 0.0
                    for px in range(cols):
                        p = py * cols + px
                        for lane in range(LANES):
                            row[lane] += logits[p, lane]
                            grid[py + 1, px + 1, lane] = grid[py, px + 1, lane] + row[lane]
                # spread: pixel (y, x) gets the weights of every window covering it.
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
                            numerator[part, q, c, y, x] += acc
    return (numerator.sum(axis=0), entropy.sum(axis=0), sum_sq.sum(axis=0), top_w, top_i)


@numba.njit(inline="always")
def _insert(weights, indices, w, index):
    """Insert (w, index) into the descending list `weights`, dropping its last element."""
    position = weights.shape[0] - 1
    while position > 0 and weights[position - 1] < w:
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
