"""Slow, obviously-correct PSPC written straight from Eq. 9-11 (float64 loops).

Used only by the tests: every fast path is checked against these functions.
"""

import math

import torch


def entries_of(images_uint8: torch.Tensor, xflip: bool) -> torch.Tensor:
    """All training entries in [-1, 1], float64, mirrored copies appended when xflip."""
    x = images_uint8.to(torch.float64) / 127.5 - 1
    return torch.cat([x, x.flip(-1)]) if xflip else x


def reference_weights(z: torch.Tensor, t: float, entries: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """[K, E] posterior weights of one sample z [C, H, W]: loop over masks and entries."""
    z = z.to(torch.float64)
    weights = torch.zeros(masks.shape[0], entries.shape[0], dtype=torch.float64)
    for k, mask in enumerate(masks):
        logits = []
        for x in entries:
            distance = float(((z - x) ** 2 * mask).sum())  # ||C z - C x||^2
            logits.append(-distance / (2 * t * t))
        top = max(logits)  # per sample, per patch
        exps = [math.exp(v - top) for v in logits]
        total = sum(exps)
        weights[k] = torch.tensor([e / total for e in exps], dtype=torch.float64)
    return weights


def reference_pspc(z: torch.Tensor, t, entries: torch.Tensor, masks_at) -> torch.Tensor:
    """Eq. 11 for a batch z [B, C, H, W], per-sample t; masks_at(t) -> bool [K, H, W]."""
    out = torch.zeros(z.shape, dtype=torch.float64)
    for b in range(z.shape[0]):
        t_b = float(t[b]) if hasattr(t, "__len__") else float(t)
        masks = masks_at(t_b)
        weights = reference_weights(z[b], t_b, entries, masks)
        numerator = torch.zeros(z.shape[1:], dtype=torch.float64)
        coverage = torch.zeros(z.shape[2:], dtype=torch.float64)
        for k, mask in enumerate(masks):
            estimate = sum(weights[k, i] * entries[i] for i in range(entries.shape[0]))
            numerator += estimate * mask
            coverage += mask
        out[b] = numerator / coverage
    return out
