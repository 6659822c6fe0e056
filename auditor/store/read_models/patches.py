"""The geometry of stored patch sets: boxes, membership, coverage, cached per process.

A patch set is immutable (identified by the fingerprint of its masks), so its geometry is
read once per process: `patch_geometry(conn, ids)`.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass

import numpy as np
import torch

from auditor.errors import StoreError
from auditor.store.database import json_value
from auditor.store.recorder import patch_set_fingerprint
from pspc.posterior.attribution import member_coverage, member_patch_shares
from pspc.posterior.patch_sets import MaskPatches, PatchSet, WindowPatches

__all__ = ["PatchGeometry", "patch_geometry"]


@dataclass(frozen=True, kw_only=True)
class PatchGeometry:
    """A stored patch set: boxes per position, membership (position, pixel = y W + x) and
    the derived coverage [H W] and patch_share [K] (pspc.posterior.attribution: Eq. 11)."""

    id: int
    fingerprint: str
    description: dict
    height: int
    width: int
    num_patches: int
    top: np.ndarray
    left: np.ndarray
    box_height: np.ndarray
    box_width: np.ndarray
    member_position: np.ndarray  # sorted
    member_pixel: np.ndarray
    coverage: np.ndarray
    patch_share: np.ndarray

    @property
    def label(self) -> str:
        """Human description: '7x7 windows (484 patches)' or 'flex masks (784, mean 37.2 px)'."""
        d = self.description or {}
        if d.get("kind") == "window":
            h, w = d.get("size", [None, None])
            if [h, w] == list(d.get("image", [])):
                return "whole image (1 patch)"
            return f"{h}x{w} windows ({self.num_patches} patches)"
        mean = d.get("mean_mask_pixels")
        extra = f", mean {mean:.1f} px" if isinstance(mean, (int, float)) else ""
        return f"{d.get('kind', 'masks')} ({self.num_patches} masks{extra})"

    @property
    def patch_size(self) -> int | None:
        """s for square windows, else None."""
        d = self.description or {}
        size = d.get("size")
        if d.get("kind") == "window" and size and size[0] == size[1]:
            return int(size[0])
        return None

    def patch_set(self) -> PatchSet:
        """The engine's patch set this geometry stores: windows rebuilt as WindowPatches (the
        fused kernels' fast structure), any other set as MaskPatches of its membership; the
        result's mask fingerprint must equal the stored one (else StoreError)."""
        d = self.description or {}
        if d.get("kind") == "window" and len(d.get("size") or []) == 2:
            rebuilt = WindowPatches(self.height, self.width, int(d["size"][0]), int(d["size"][1]))
        else:
            masks = torch.zeros(self.num_patches, self.height * self.width, dtype=torch.bool)
            masks[torch.from_numpy(self.member_position), torch.from_numpy(self.member_pixel)] = True
            details = {k: v for k, v in d.items() if k not in ("kind", "num_masks", "image", "mean_mask_pixels")}
            rebuilt = MaskPatches(masks.view(self.num_patches, self.height, self.width), name=d.get("kind", "masks"),
                                  details=details)
        if patch_set_fingerprint(rebuilt) != self.fingerprint:
            raise StoreError(f"stored patch set {self.id} does not rebuild to the masks it was recorded with "
                             f"(fingerprint {self.fingerprint[:12]}...)")
        return rebuilt

    @property
    def member_starts(self) -> np.ndarray:
        """[K + 1]: the pixels of patch k are member_pixel[member_starts[k]:member_starts[k + 1]]."""
        return np.searchsorted(self.member_position, np.arange(self.num_patches + 1))


_GEOMETRY: OrderedDict = OrderedDict()
_GEOMETRY_LOCK = threading.Lock()
_GEOMETRY_CACHE_SIZE = 64


def patch_geometry(conn, patch_set_ids) -> dict[int, PatchGeometry]:
    """PatchGeometry of stored patch sets (cached by fingerprint), read on an open connection."""
    ids = sorted({int(i) for i in patch_set_ids})
    if not ids:
        return {}
    rows = conn.execute("SELECT id, fingerprint, description, height, width, num_patches FROM patch_sets "
                        "WHERE id IN (SELECT unnest(?::BIGINT[]))", [ids]).fetchall()
    out, missing = {}, []
    with _GEOMETRY_LOCK:
        for row in rows:
            key = (row[1], int(row[0]))
            if key in _GEOMETRY:
                _GEOMETRY.move_to_end(key)
                out[int(row[0])] = _GEOMETRY[key]
            else:
                missing.append(row)
    for row in missing:
        geometry = _read_geometry(conn, *row)
        out[geometry.id] = geometry
        with _GEOMETRY_LOCK:
            _GEOMETRY[(geometry.fingerprint, geometry.id)] = geometry
            while len(_GEOMETRY) > _GEOMETRY_CACHE_SIZE:
                _GEOMETRY.popitem(last=False)
    return out


def _read_geometry(conn, ps_id, fingerprint, description, height, width, num_patches) -> PatchGeometry:
    positions = conn.execute("SELECT position, top, \"left\", height, width FROM patch_positions "
                             "WHERE patch_set_id = ? ORDER BY position", [ps_id]).fetchnumpy()
    members = conn.execute("SELECT position, y, x FROM patch_pixels WHERE patch_set_id = ? ORDER BY position, y, x",
                           [ps_id]).fetchnumpy()
    position = members["position"].astype(np.int64)
    pixel = members["y"].astype(np.int64) * int(width) + members["x"].astype(np.int64)
    coverage = member_coverage(pixel, height * width)
    patch_share = member_patch_shares(position, pixel, num_patches, coverage)
    top = np.zeros(num_patches, np.int64)
    left, box_h, box_w = top.copy(), top.copy(), top.copy()
    p = positions["position"].astype(np.int64)
    top[p], left[p] = positions["top"], positions["left"]
    box_h[p], box_w[p] = positions["height"], positions["width"]
    return PatchGeometry(id=int(ps_id), fingerprint=fingerprint, description=json_value(description) or {},
                         height=int(height), width=int(width), num_patches=int(num_patches), top=top, left=left,
                         box_height=box_h, box_width=box_w, member_position=position, member_pixel=pixel,
                         coverage=coverage, patch_share=patch_share)
