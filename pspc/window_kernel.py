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


@numba.njit(inline="always", fastmath=False)
def _integral(query, images_t, start, integral, row):
    """integral[y+1, x+1, l] = sum over [0..y] x [0..x] of sum_c (query - image start+l)^2."""
    channels, height, width = query.shape
    for y in range(height):
        row[:] = 0.0
        for x in range(width):
            for lane in range(LANES):
                total = 0.0
                for c in range(channels):
                    diff = query[c, y, x] - images_t[c, y, x, start + lane]
                    total += diff * diff
                row[lane] += total
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


@numba.njit(parallel=True)
def log_normaliser(queries, images_t, patch_h, patch_w, scales, parts, padded_from):
    """Pass 1: per (query, patch) log sum_i exp(logit), over all images.

    queries [Q, C, H, W] float64; images_t [C, H, W, N_padded] float32 (N_padded a
    multiple of LANES; entries >= padded_from are padding). Returns [Q, P] float64."""
    num_queries, _, height, width = queries.shape
    count = images_t.shape[3]
    rows, cols = height - patch_h + 1, width - patch_w + 1
    num_patches = rows * cols
    run_max = np.full((num_queries, parts, num_patches), -np.inf)
    run_sum = np.zeros((num_queries, parts, num_patches))
    blocks = count // LANES
    for job in numba.prange(num_queries * parts):
        q, part = job // parts, job % parts
        integral = np.zeros((height + 1, width + 1, LANES))
        logits = np.empty((num_patches, LANES))
        row = np.zeros(LANES)
        for block in range(part, blocks, parts):
            start = block * LANES
            _integral(queries[q], images_t, start, integral, row)
            _logits(integral, patch_h, patch_w, rows, cols, scales[q], logits)
            for lane in range(LANES):
                if start + lane >= padded_from:
                    for p in range(num_patches):
                        logits[p, lane] = -np.inf
            for p in range(num_patches):
                top = logits[p, 0]
                for lane in range(1, LANES):
                    top = max(top, logits[p, lane])
                current = run_max[q, part, p]
                if top > current:
                    run_sum[q, part, p] *= math.exp(current - top)
                    run_max[q, part, p] = top
                    current = top
                for lane in range(LANES):
                    v = logits[p, lane] - current
                    if v > -CUTOFF:
                        run_sum[q, part, p] += math.exp(v)
    out = np.empty((num_queries, num_patches))
    for q in range(num_queries):
        for p in range(num_patches):
            top = -np.inf
            for part in range(parts):
                top = max(top, run_max[q, part, p])
            total = 0.0
            for part in range(parts):
                if run_max[q, part, p] > -np.inf:
                    total += run_sum[q, part, p] * math.exp(run_max[q, part, p] - top)
            out[q, p] = top + math.log(total)
    return out


@numba.njit(parallel=True)
def compose(queries, images_t, patch_h, patch_w, scales, log_norm, parts, top_k, padded_from):
    """Pass 2: exact weights w = exp(logit - log_norm), the composite numerator
    sum_i spread(w_i) * x_i, entropy and sum w^2 per (query, patch), and the top_k entries
    per (query, patch) (top_k = 0 skips them). Entries >= padded_from are padding.

    Returns numerator [Q, C, H, W], entropy [Q, P], sum_sq [Q, P], top_w, top_i [Q, parts, P, k]."""
    num_queries, channels, height, width = queries.shape
    count = images_t.shape[3]
    rows, cols = height - patch_h + 1, width - patch_w + 1
    num_patches = rows * cols
    numerator = np.zeros((num_queries, parts, channels, height, width))
    entropy = np.zeros((num_queries, parts, num_patches))
    sum_sq = np.zeros((num_queries, parts, num_patches))
    kept = max(top_k, 1)
    top_w = np.zeros((num_queries, parts, num_patches, kept))
    top_i = np.full((num_queries, parts, num_patches, kept), -1, dtype=np.int64)
    blocks = count // LANES
    for job in numba.prange(num_queries * parts):
        q, part = job // parts, job % parts
        integral = np.zeros((height + 1, width + 1, LANES))
        logits = np.empty((num_patches, LANES))
        grid = np.zeros((rows + 1, cols + 1, LANES))  # integral image of the weights
        floor = np.zeros(num_patches)  # smallest kept top-k weight per patch (0 until full)
        row = np.zeros(LANES)
        for block in range(part, blocks, parts):
            start = block * LANES
            _integral(queries[q], images_t, start, integral, row)
            _logits(integral, patch_h, patch_w, rows, cols, scales[q], logits)
            for py in range(rows):
                row[:] = 0.0
                for px in range(cols):
                    p = py * cols + px
                    for lane in range(LANES):
                        v = logits[p, lane] - log_norm[q, p]
                        w = 0.0
                        if v > -CUTOFF and start + lane < padded_from:
                            w = math.exp(v)
                            entropy[q, part, p] -= w * v
                            sum_sq[q, part, p] += w * w
                        row[lane] += w
                        grid[py + 1, px + 1, lane] = grid[py, px + 1, lane] + row[lane]
                        if top_k > 0 and w > floor[p]:
                            _insert(top_w[q, part, p], top_i[q, part, p], w, start + lane)
                            floor[p] = top_w[q, part, p, kept - 1]
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
                            acc += spread * images_t[c, y, x, start + lane]
                        numerator[q, part, c, y, x] += acc
    return (numerator.sum(axis=1), entropy.sum(axis=1), sum_sq.sum(axis=1), top_w, top_i)


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


def transpose_images(data: np.ndarray) -> np.ndarray:
    """[N, C, H, W] -> [C, H, W, N_padded] float32, N padded with zeros to a multiple of LANES."""
    count = data.shape[0]
    padded = -(-count // LANES) * LANES
    out = np.zeros(data.shape[1:] + (padded,), dtype=np.float32)
    out[..., :count] = np.moveaxis(data, 0, -1)
    return out
