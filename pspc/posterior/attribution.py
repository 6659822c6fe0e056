"""THE attribution formulas: how PSPC's patch posterior weights become shares of an image.

PSPC composes every output pixel q from the patches covering it (Eq. 11):

  D(z)[q] = sum_k M_k[q] sum_i w_ki x_i[q] / cov(q),      cov(q) = sum_k M_k[q]

so training entry i (an image, or its mirror) gives pixel q the weight

  pixel weight   p_i(q) = sum_{k : q in M_k} w_ki / cov(q)                      (Eq. 11)

and the share of D(z) built from it is the mean of p_i over the H W pixels, which sums
per patch:

  share_i = (1 / HW) sum_q p_i(q) = sum_k w_ki s_k,    s_k = (1 / HW) sum_{q in M_k} 1 / cov(q)

s_k (`patch_shares`) is the part of the image patch k stands for (sum_k s_k = 1), and
w_ki s_k (`contributions`) what patch k's weight on entry i adds to share_i. With the kept
(top-k, mass-threshold) weights the shares sum to the captured mass, at most 1; a pixel is
then off by at most the average dropped mass of its patches (`pixel_weights` of 1 - mass).

Along a trajectory, the Euler update of the PF-ODE (EDM Algorithm 1)

  z_{i+1} = z_i + (t_{i+1} - t_i) (z_i - D_i) / t_i = (t_{i+1} / t_i) z_i + (1 - t_{i+1} / t_i) D_i

writes the fraction a_i = 1 - t_{i+1} / t_i of the next state from step i's D_i, so the
trajectory attribution weighs step i by w_i = a_i / sum_j a_j (`trajectory_coefficients`;
the last step, t_next = 0, has a = 1: its D is the sample).

Pure functions, dense (torch masks [K, H, W]) or on membership lists (numpy: the pixels of
each patch as (position, pixel = y W + x) pairs, as the store keeps them); the recorder,
the store's readers and the reports all compute the numbers here, so they agree exactly.
"""

from __future__ import annotations

from typing import Iterable

import numpy as np
import torch

__all__ = ["contributions", "coverage", "member_coverage", "member_patch_shares", "member_pixel_weights",
           "patch_shares", "pixel_weights", "share_totals", "trajectory_coefficients"]


# ---------------------------------------------------------------------------------------
# Coverage and patch shares (Eq. 11)
# ---------------------------------------------------------------------------------------
def coverage(masks: torch.Tensor) -> torch.Tensor:
    """cov(q) = sum_k M_k[q]: the number of patches covering each pixel, float64 [H, W]
    (or [H W] for flattened masks [K, H W]) from masks [K, H, W] (bool or 0/1)."""
    return masks.sum(0, dtype=torch.float64)


def patch_shares(masks: torch.Tensor) -> torch.Tensor:
    """s_k = (1 / HW) sum_{q in M_k} 1 / cov(q): the part of the image each patch stands for
    (Eq. 11), float64 [K] from dense masks [K, H, W]; sums to 1 when every pixel is covered."""
    _, height, width = masks.shape
    return (masks / coverage(masks)).sum((1, 2)) / (height * width)


def member_coverage(pixel: np.ndarray, num_pixels: int) -> np.ndarray:
    """cov(q) from membership lists: how often pixel q (= y W + x) occurs, float64 [H W]."""
    return np.bincount(pixel, minlength=num_pixels).astype(np.float64)


def member_patch_shares(position: np.ndarray, pixel: np.ndarray, num_patches: int,
                        cov: np.ndarray) -> np.ndarray:
    """s_k from membership lists (position, pixel) and cov = member_coverage(pixel, H W):
    sum over patch k's pixels of 1 / cov(q), over H W; float64 [K]. Uncovered pixels (cov 0)
    add nothing."""
    inverse = np.divide(1.0, cov, out=np.zeros_like(cov), where=cov > 0)
    return np.bincount(position, weights=inverse[pixel], minlength=num_patches) / cov.size


# ---------------------------------------------------------------------------------------
# Shares of training entries
# ---------------------------------------------------------------------------------------
def contributions(weight: np.ndarray, patch_share: np.ndarray, position: np.ndarray) -> np.ndarray:
    """w_ki s_k: what each kept weight (of patch `position`) adds to its entry's share, float64."""
    return weight.astype(np.float64) * patch_share[position]


def share_totals(key: np.ndarray, contribution: np.ndarray, flip: np.ndarray, position: np.ndarray):
    """share_i = sum_k w_ki s_k per key (e.g. sample x image): (keys, share, flip_share,
    patches), keys ascending; flip_share is the part from mirrored entries and patches the
    number of distinct patch positions that kept the key."""
    keys, inverse = np.unique(key, return_inverse=True)
    share = np.bincount(inverse, weights=contribution, minlength=len(keys))
    flip_share = np.bincount(inverse, weights=np.where(flip, contribution, 0.0), minlength=len(keys))
    distinct = np.unique(np.stack([inverse, position.astype(np.int64)]), axis=1)[0]
    patches = np.bincount(distinct, minlength=len(keys))
    return keys, share, flip_share, patches


def pixel_weights(weights: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """p(q) = sum_{k : q in M_k} weights_k / cov(q) (Eq. 11): per-patch values [..., K] (dense
    or sparse, e.g. one row per training entry) spread over the pixels of flattened float
    masks [K, H W] and divided by the coverage; [..., H W]. With the dropped mass 1 - mass_k
    as the values it is the bound on a pixel's recomposition error."""
    return (weights @ masks) / coverage(masks).to(masks.dtype)


def member_pixel_weights(row: np.ndarray, pixel: np.ndarray, weight: np.ndarray, num_rows: int,
                         cov: np.ndarray) -> np.ndarray:
    """p(q) from membership lists: each kept weight expanded over its patch's pixels as
    (row, pixel, weight) triples (row: e.g. the training entry), summed per (row, pixel) and
    divided by cov = member_coverage(...) (uncovered pixels stay 0); float64 [num_rows, H W]."""
    size = cov.size
    maps = np.bincount(row * size + pixel, weights=weight, minlength=num_rows * size).reshape(num_rows, size)
    maps /= np.where(cov > 0, cov, 1.0)
    return maps


# ---------------------------------------------------------------------------------------
# Trajectories
# ---------------------------------------------------------------------------------------
def trajectory_coefficients(steps: Iterable[tuple[int, float, float]]) -> dict[int, float]:
    """w_i = a_i / sum_j a_j with a_i = 1 - t_{i+1} / t_i (the part of the next state the
    Euler update writes from D_i) for rows (step, t, t_next); {} when nothing is written."""
    written = {step: 1.0 - t_next / t for step, t, t_next in steps}
    total = sum(written.values())
    return {step: a / total for step, a in written.items()} if total > 0 else {}
