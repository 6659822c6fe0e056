"""Patch sets: the paper's cropping matrices C, as data.

A patch set is K binary masks M_k over an H x W image. PSPC needs two linear maps of it:
  patch_sums(v)[k] = sum_q M_k[q] v[q]        (squared distances between crops, Eq. 9)
  spread(w)[q]     = sum_k w_k M_k[q]         (the adjoint: C^T, used to compose Eq. 11)
and coverage = spread(1) = diag(sum_C C^T C). Square windows get O(H W) integral-image
implementations; arbitrary masks (PSPC-Flex, user sets) use (sparse) matrix products.

Horizontal flips: an x-flipped training entry compared under mask M_k is the original
image compared under flip(M_k) with the query flipped, so each set also provides the
same two maps for its mirrored masks (`flipped_patch_sums`, `flipped_spread`).
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from functools import cached_property

import torch

from pspc.errors import InputError


class PatchSetError(InputError):
    """An invalid patch set (empty mask, uncovered pixel, wrong size, bad lambda)."""


class PatchSet(ABC):
    """K masks over an H x W image. Subclasses implement the two linear maps."""

    height: int
    width: int

    @property
    @abstractmethod
    def num_patches(self) -> int:
        """K, the number of masks."""

    @abstractmethod
    def masks(self) -> torch.Tensor:
        """Dense bool masks [K, H, W] (for references, plots and small sets)."""

    @abstractmethod
    def patch_sums(self, values: torch.Tensor) -> torch.Tensor:
        """[..., H, W] -> [..., K] (float64): the sum of values inside each mask."""

    @abstractmethod
    def spread(self, weights: torch.Tensor) -> torch.Tensor:
        """[..., K] -> [..., H, W] (float64): sum_k weights_k M_k, the adjoint of patch_sums."""

    @abstractmethod
    def flipped_patch_sums(self, values: torch.Tensor) -> torch.Tensor:
        """patch_sums under the mirrored masks flip(M_k)."""

    @abstractmethod
    def flipped_spread(self, weights: torch.Tensor) -> torch.Tensor:
        """spread under the mirrored masks flip(M_k)."""

    def source_box(self, k: int, flip: bool = False) -> tuple[int, int, int, int]:
        """(top, left, height, width) of the pixels patch k reads in the ORIGINAL training
        image; for a flipped entry these are the mirrored columns."""
        mask = self.masks()[k]
        if flip:
            mask = mask.flip(-1)
        rows = mask.any(1).nonzero().flatten()
        cols = mask.any(0).nonzero().flatten()
        top, left = int(rows[0]), int(cols[0])
        return top, left, int(rows[-1]) - top + 1, int(cols[-1]) - left + 1

    def coverage(self, device=None) -> torch.Tensor:
        """[H, W] number of patches covering each pixel (diag of sum_C C^T C)."""
        ones = torch.ones(self.num_patches, dtype=torch.float64, device=device)
        return self.spread(ones)

    @abstractmethod
    def describe(self) -> dict:
        """JSON-able record of the set (for run configurations)."""

    def to(self, device) -> "PatchSet":
        return self


def _box_sums(values: torch.Tensor, box_h: int, box_w: int) -> torch.Tensor:
    """Sums over every box_h x box_w window that fits, via a float64 integral image.

    float64 keeps the corner differences exact to ~1e-16 of the image total, so small
    patches at small t (distances ~ t^2) are not swamped by cancellation.
    """
    v = values.to(torch.float64)
    integral = torch.nn.functional.pad(v.cumsum(-2).cumsum(-1), (1, 0, 1, 0))
    return (
        integral[..., box_h:, box_w:]
        - integral[..., :-box_h, box_w:]
        - integral[..., box_h:, :-box_w]
        + integral[..., :-box_h, :-box_w]
    )


class WindowPatches(PatchSet):
    """All patch_h x patch_w windows that fit inside the image (no padding), row-major.

    PSPC-Square uses patch_h = patch_w = s; (H, W) is the whole image, i.e. the
    empirical (optimal) denoiser.
    """

    def __init__(self, height: int, width: int, patch_h: int, patch_w: int | None = None):
        patch_w = patch_h if patch_w is None else patch_w
        if not (1 <= patch_h <= height and 1 <= patch_w <= width):
            raise PatchSetError(f"a {patch_h}x{patch_w} window does not fit a {height}x{width} image")
        self.height, self.width, self.patch_h, self.patch_w = height, width, patch_h, patch_w
        self.rows, self.cols = height - patch_h + 1, width - patch_w + 1

    @property
    def num_patches(self) -> int:
        return self.rows * self.cols

    @cached_property
    def _mirror(self) -> torch.Tensor:
        """Index of the mirror image of each window: (py, px) -> (py, cols - 1 - px)."""
        return torch.arange(self.num_patches).view(self.rows, self.cols).flip(-1).flatten()

    def position(self, k: int) -> tuple[int, int]:
        return divmod(int(k), self.cols)

    def masks(self) -> torch.Tensor:
        masks = torch.zeros(self.num_patches, self.height, self.width, dtype=torch.bool)
        for k in range(self.num_patches):
            py, px = self.position(k)
            masks[k, py : py + self.patch_h, px : px + self.patch_w] = True
        return masks

    def patch_sums(self, values: torch.Tensor) -> torch.Tensor:
        return _box_sums(values, self.patch_h, self.patch_w).flatten(-2)

    def spread(self, weights: torch.Tensor) -> torch.Tensor:
        grid = weights.to(torch.float64).unflatten(-1, (self.rows, self.cols))
        padded = torch.nn.functional.pad(grid, (self.patch_w - 1, self.patch_w - 1, self.patch_h - 1, self.patch_h - 1))
        return _box_sums(padded, self.patch_h, self.patch_w)

    def flipped_patch_sums(self, values: torch.Tensor) -> torch.Tensor:
        return self.patch_sums(values)[..., self._mirror.to(values.device)]

    def flipped_spread(self, weights: torch.Tensor) -> torch.Tensor:
        return self.spread(weights[..., self._mirror.to(weights.device)])

    def source_box(self, k: int, flip: bool = False) -> tuple[int, int, int, int]:
        py, px = self.position(k)
        if flip:
            px = self.width - self.patch_w - px
        return py, px, self.patch_h, self.patch_w

    def describe(self) -> dict:
        return {"kind": "window", "size": [self.patch_h, self.patch_w], "image": [self.height, self.width]}


def square_patches(height: int, width: int, size: int) -> WindowPatches:
    """PSPC-Square: s x s windows; s is clipped to the image so that s >= side means whole-side."""
    if size < 1:
        raise PatchSetError(f"patch size must be >= 1, got {size}")
    return WindowPatches(height, width, min(size, height), min(size, width))


class MaskPatches(PatchSet):
    """Any user-supplied set of masks [K, H, W]; every pixel must be covered by some mask."""

    def __init__(self, masks: torch.Tensor, name: str = "masks", details: dict | None = None):
        masks = torch.as_tensor(masks)
        if masks.ndim != 3:
            raise PatchSetError(f"masks must be [K, H, W], got shape {tuple(masks.shape)}")
        masks = masks.to(torch.bool)
        empty = (~masks.flatten(1).any(1)).nonzero().flatten()
        if len(empty):
            raise PatchSetError(f"mask {int(empty[0])} is empty")
        uncovered = (~masks.any(0)).nonzero()
        if len(uncovered):
            y, x = uncovered[0].tolist()
            raise PatchSetError(f"pixel ({y}, {x}) is covered by no mask; PSPC cannot compose it (Eq. 11)")
        self._masks = masks
        self.height, self.width = masks.shape[1:]
        self.name, self.details = name, details or {}
        self._device = torch.device("cpu")

    @property
    def num_patches(self) -> int:
        return self._masks.shape[0]

    def masks(self) -> torch.Tensor:
        return self._masks.cpu()

    def to(self, device) -> "MaskPatches":
        device = torch.device(device)
        if device != self._device:
            self._device = device
            self.__dict__.pop("_matrices", None)
        return self

    @cached_property
    def _matrices(self) -> tuple[torch.Tensor, torch.Tensor]:
        """float64 [K, H*W] matrices of the masks and of the mirrored masks."""
        flat = self._masks.to(self._device, torch.float64).flatten(1)
        mirrored = self._masks.flip(-1).to(self._device, torch.float64).flatten(1)
        return flat, mirrored

    @staticmethod
    def _sums(matrix: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
        return values.to(torch.float64).flatten(-2) @ matrix.T

    def _spread(self, matrix: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        return (weights.to(torch.float64) @ matrix).unflatten(-1, (self.height, self.width))

    def patch_sums(self, values: torch.Tensor) -> torch.Tensor:
        return self._sums(self._matrices[0], values)

    def flipped_patch_sums(self, values: torch.Tensor) -> torch.Tensor:
        return self._sums(self._matrices[1], values)

    def spread(self, weights: torch.Tensor) -> torch.Tensor:
        return self._spread(self._matrices[0], weights)

    def flipped_spread(self, weights: torch.Tensor) -> torch.Tensor:
        return self._spread(self._matrices[1], weights)

    def fused_structure(self, flipped: bool = False) -> dict:
        """The masks (mirrored if flipped) as the fused kernels take them: distinct masks as
        CSR pixel lists, the transposed lists (masks covering each pixel, with multiplicity),
        and, for each of the K masks, the index of its distinct mask."""
        key = "_fused_flipped" if flipped else "_fused"
        if key not in self.__dict__:
            flat = (self._masks.flip(-1) if flipped else self._masks).flatten(1).cpu()
            distinct, unique_of, counts = torch.unique(flat, dim=0, return_inverse=True, return_counts=True)
            pixels = distinct.nonzero()  # (mask, pixel) pairs, row-major
            by_pixel = distinct.T.nonzero()  # (pixel, mask) pairs
            self.__dict__[key] = {
                "num_patches": distinct.shape[0],
                "indptr": torch.cat([torch.zeros(1, dtype=torch.long), distinct.sum(1).cumsum(0)]).numpy(),
                "indices": pixels[:, 1].contiguous().numpy(),
                "pixel_indptr": torch.cat([torch.zeros(1, dtype=torch.long), distinct.sum(0).cumsum(0)]).numpy(),
                "pixel_masks": by_pixel[:, 1].contiguous().numpy(),
                "pixel_counts": counts[by_pixel[:, 1]].to(torch.float64).numpy(),
                "unique_of": unique_of,
            }
        return self.__dict__[key]

    def describe(self) -> dict:
        return {"kind": self.name, "num_masks": self.num_patches, "image": [self.height, self.width],
                "mean_mask_pixels": float(self._masks.flatten(1).sum(1).float().mean()), **self.details}


def flex_masks(sensitivity: torch.Tensor, lam: float) -> torch.Tensor:
    """Eq. 12: for each output pixel, the smallest set of input pixels, taken in descending
    order of sensitivity G, whose G covers a fraction lam of the total, plus the output pixel
    itself. lam >= 1 is the whole image. sensitivity: [H, W, H, W] (output pixel, input
    pixel), non-negative. Returns bool masks [H*W, H, W], mask k for output pixel k (row-major).

    A network's G usually peaks at the output pixel, but not always (a flat background pixel
    of a trained U-Net can depend more on its neighbours); forcing the pixel into its own mask
    keeps every pixel covered, so Eq. 11 can compose all of them."""
    if sensitivity.ndim != 4 or sensitivity.shape[:2] != sensitivity.shape[2:]:
        raise PatchSetError(f"sensitivity must be [H, W, H, W], got {tuple(sensitivity.shape)}")
    if not math.isfinite(lam) or lam <= 0:
        raise PatchSetError(f"lambda must be in (0, 1], got {lam}")
    g = sensitivity.to(torch.float64).flatten(2).flatten(0, 1)
    if not torch.isfinite(g).all() or (g < 0).any():
        raise PatchSetError("sensitivity must be finite and non-negative")
    h, w = sensitivity.shape[2:]
    if lam >= 1:
        return torch.ones(h * w, h, w, dtype=torch.bool)
    order = g.argsort(dim=1, descending=True)
    sorted_g = g.gather(1, order)
    covered_before = sorted_g.cumsum(1) - sorted_g
    take = covered_before < lam * g.sum(1, keepdim=True)
    take[:, 0] = True  # at least the most sensitive pixel
    masks = torch.zeros_like(take)
    masks.scatter_(1, order, take)
    own = torch.arange(h * w)
    masks[own, own] = True
    return masks.view(h * w, h, w)


def flex_patches(sensitivity: torch.Tensor, lam: float) -> MaskPatches:
    """PSPC-Flex patch set for one noise level (masks from Eq. 12)."""
    return MaskPatches(flex_masks(sensitivity, lam), name="flex", details={"lambda": float(lam)})
