"""Shift-tolerant copy evidence: which training entry an image copies, how closely, and where.

PSPC and the pixel-correlation descriptor compare an image with every training image at the
same position, so a copy shifted by one pixel is missed. The two evidence sources here
tolerate small shifts, crops and blurs:

- :class:`AlignedCorrelation` ("aligned-correlation"): candidates are retrieved by the
  magnitude of the low-frequency 2-D Fourier spectrum (|F| does not change when an image is
  translated, so a shifted copy has its source's descriptor), also of the image downscaled
  (a crop resized back is its source zoomed in), and by coarse (mean-pooled) pixels of the
  image at every small shift; then re-ranked by the best Pearson correlation of the image
  with the candidate EDITED as copies are made: shifted, cropped and resized back, or
  blurred (:class:`EditedCorrelation`, every edit of :func:`edit_grid`, from a few matrix
  products). Editing the query instead does not invert a crop or a blur. Score: a ratio test
  of that correlation against the best other image.
- :class:`RegionMatch` ("region-match"): partial copies. The image's 7x7 blocks (two grids)
  are looked up among the same-position blocks of every training entry (faiss, L2); the
  entries found for most blocks, plus the aligned-correlation candidates, are compared
  pixel by pixel. The region is the largest connected set of pixels (4-neighbours) that
  agree with the candidate to within ``tolerance`` levels in a whole 3x3 neighbourhood;
  its score is its non-background area minus that of the best other training image. The
  region is returned as a mask and bounding box. Pasted regions are found at their
  original position (the benchmark's partial copies); a moved region is not.

Both take uint8 images [B, C, H, W]; colour images are compared in luma. Their
``fingerprint`` names every parameter, so a calibration is stored against it.
"""

from __future__ import annotations

import hashlib
import json
from abc import ABC, abstractmethod
from collections import Counter
from dataclasses import dataclass

import faiss
import numpy as np
import torch
import torch.nn.functional as F

from auditor.similarity.cases import blur, shift
from auditor.similarity.copy_detection import CopyDetectionError

__all__ = ["AlignedCorrelation", "BLUR_SIGMAS", "CROPS", "Edit", "EditedCorrelation", "Evidence", "EvidenceSource",
           "RETRIEVAL_SCALES", "RegionMatch", "axis_operator", "edit_grid", "gray", "largest_region"]

LUMA = (0.299, 0.587, 0.114)
BLUR_SIGMAS = tuple(round(0.6 * 1.2 ** i, 4) for i in range(6))  # 0.6 .. 1.493, 20% apart
CROPS = (0, 1, 2, 3)  # pixels cut on a side
PREFILTER_CROPS, PREFILTER_BLURS = (1, 2), (0.864, 1.2442)  # the shortlist's cheaper grid (67 edits)
RETRIEVAL_SCALES = ((26 / 28, 26 / 28), (24 / 28, 24 / 28), (26 / 28, 24 / 28), (24 / 28, 26 / 28))


def gray(images) -> torch.Tensor:
    """uint8 [B, C, H, W] -> float32 [B, H, W] in 0..255 (luma for RGB)."""
    if not isinstance(images, torch.Tensor) or images.dtype != torch.uint8 or images.ndim != 4 \
            or images.shape[1] not in (1, 3):
        raise CopyDetectionError("evidence needs uint8 images [B, C, H, W] with C = 1 or 3, got "
                                 f"{getattr(images, 'dtype', type(images).__name__)} {tuple(getattr(images, 'shape', ()))}")
    x = images.float()
    if x.shape[1] == 3:
        return torch.einsum("bchw,c->bhw", x, x.new_tensor(LUMA))
    return x[:, 0]


def _entries(training: torch.Tensor, xflip: bool) -> torch.Tensor:
    """Gray training entries [E, H, W] (mirrored images after the originals when xflip)."""
    x = gray(training)
    return torch.cat([x, x.flip(-1)]) if xflip else x


def _blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    return blur(x[:, None], sigma)[:, 0]


def _unit(rows: torch.Tensor) -> torch.Tensor:
    rows = rows - rows.mean(-1, keepdim=True)
    return rows / rows.norm(dim=-1, keepdim=True).clamp_min(1e-6)


@dataclass
class Evidence:
    """One image's best-supported training entry under an evidence source."""

    score: float
    entry: int  # -1: none
    candidates: list[tuple[int, float]]  # (entry, score), best first
    mask: np.ndarray | None = None  # bool [H, W]: the region taken from the entry (region-match)
    box: tuple[int, int, int, int] | None = None  # top, left, height, width of the region
    alignment: dict | None = None  # shift and scale found (aligned-correlation)


def _inner_product_index(vectors: np.ndarray, exact_max: int = 1_000_000) -> faiss.Index:
    """Exact inner-product search up to `exact_max` vectors, IVF (seeded, nlist 4 sqrt(N),
    nprobe nlist / 16) beyond: retrieval only proposes candidates, re-ranked exactly."""
    if len(vectors) <= exact_max:
        index = faiss.IndexFlatIP(vectors.shape[1])
    else:
        nlist = int(round(4 * np.sqrt(len(vectors))))
        index = faiss.IndexIVFFlat(faiss.IndexFlatIP(vectors.shape[1]), vectors.shape[1], nlist,
                                   faiss.METRIC_INNER_PRODUCT)
        index.cp.seed = 0
        sample = np.random.default_rng(0).choice(len(vectors), min(len(vectors), 64 * nlist), replace=False)
        index.train(vectors[np.sort(sample)])
        index.nprobe = max(8, nlist // 16)
    index.add(vectors)
    return index


class EvidenceSource(ABC):
    """An evidence source of the copy verdict: a name and parameters, fingerprinted together."""

    name: str

    @abstractmethod
    def parameters(self) -> dict:
        """The source's parameters: what its calibration is stored against (with its name)."""

    @property
    def fingerprint(self) -> str:
        """sha256 over the name and every parameter: what a calibration is stored against."""
        record = {"name": self.name, **self.parameters()}
        return hashlib.sha256(json.dumps(record, sort_keys=True).encode()).hexdigest()

    def describe(self) -> dict:
        return {"name": self.name, "kind": self.name, **self.parameters(), "fingerprint": self.fingerprint}


# -- edits of a candidate ------------------------------------------------------------------

def axis_operator(n: int, edit: tuple) -> torch.Tensor:
    """The [n, n] matrix M of a 1-D edit along one axis: M @ column is the column edited as
    auditor.similarity.cases edits images. edit: ("shift", d) (zero fill), ("crop", before,
    after) (cut, then resized back: bilinear, antialiased) or ("blur", sigma) (Gaussian,
    replicate padding). Built by applying those functions to the basis, so it is theirs exactly."""
    # basis vector j as an n x 2 image (antialiased interpolate mishandles a width of 1 in torch 2.13)
    basis = torch.eye(n).reshape(n, 1, n, 1).expand(n, 1, n, 2).contiguous()
    kind = edit[0]
    if kind == "shift":
        out = shift(basis, int(edit[1]), 0)
    elif kind == "crop":
        before, after = int(edit[1]), int(edit[2])
        if before < 0 or after < 0 or before + after >= n:
            raise ValueError(f"cannot crop {before} + {after} of {n} pixels")
        out = F.interpolate(basis[:, :, before:n - after].contiguous(), size=(n, 2), mode="bilinear",
                            align_corners=False, antialias=True)
    elif kind == "blur":
        out = blur(basis, float(edit[1]))
    else:
        raise ValueError(f"unknown edit {edit!r}; expected shift, crop or blur")
    return out[:, 0, :, 0].T.contiguous()


@dataclass(frozen=True)
class Edit:
    """A separable edit of a candidate, A c B^T: rows[row] is A (vertical), cols[col] is B."""

    transform: str  # "shift", "crop" or "blur"
    value: tuple  # (dy, dx); (top, bottom, left, right); (sigma,)
    row: int
    col: int

    def describe(self) -> dict:
        value = list(self.value) if self.transform != "blur" else round(self.value[0], 4)
        return {"transform": self.transform, self.transform: value}


def edit_grid(max_shift: int = 3, crops=CROPS, blur_sigmas=BLUR_SIGMAS) -> tuple[list, list, list[Edit]]:
    """(vertical 1-D edits, horizontal 1-D edits, 2-D edits): every zero-fill shift with
    |dy|, |dx| <= max_shift (the identity among them), every crop of `crops` pixels on each
    side (each side its own) resized back, but the identity, and every blur of `blur_sigmas`
    on both axes."""
    crops = sorted({int(c) for c in crops})
    axis = [("shift", d) for d in range(-max_shift, max_shift + 1)]
    axis += [("crop", a, b) for a in crops for b in crops]
    axis += [("blur", float(s)) for s in blur_sigmas]
    at = {edit: i for i, edit in enumerate(axis)}
    edits = [Edit("shift", (dy, dx), at[("shift", dy)], at[("shift", dx)])
             for dy in range(-max_shift, max_shift + 1) for dx in range(-max_shift, max_shift + 1)]
    edits += [Edit("crop", (t, b, left, r), at[("crop", t, b)], at[("crop", left, r)])
              for t in crops for b in crops for left in crops for r in crops if (t, b, left, r) != (0, 0, 0, 0)]
    edits += [Edit("blur", (float(s),), at[("blur", float(s))], at[("blur", float(s))]) for s in blur_sigmas]
    return axis, axis, edits


def _is_diagonal(matrices: torch.Tensor) -> torch.Tensor:
    """bool [M]: which of the matrices [M, n, n] are diagonal."""
    diagonal = torch.diag_embed(torch.diagonal(matrices, dim1=1, dim2=2))
    return (matrices - diagonal).abs().amax((1, 2)) == 0


class EditedCorrelation:
    """Pearson correlation of a query with every edit A c B^T of every candidate c (edit_grid),
    from a few small matrix products, without forming the edited candidates:
    <q, A c B^T> = <A^T q B, c>; sum(A c B^T) = (A^T 1)^T c (B^T 1);
    ||A c B^T||^2 = <A^T A, c (B^T B) c^T>, which for shifts (diagonal A^T A and B^T B) is
    a masked sum of c^2."""

    def __init__(self, height: int, width: int, max_shift: int = 3, crops=CROPS, blur_sigmas=BLUR_SIGMAS):
        crops = [c for c in crops if 2 * int(c) < min(height, width)]  # small images: the crops that fit
        rows, cols, self.edits = edit_grid(max_shift, crops, blur_sigmas)
        self.shape = (int(height), int(width))
        self.rows = torch.stack([axis_operator(height, e) for e in rows])  # [V, H, H]
        self.cols = torch.stack([axis_operator(width, e) for e in cols])  # [U, W, W]
        self.row_of = torch.tensor([e.row for e in self.edits])
        self.col_of = torch.tensor([e.col for e in self.edits])
        self.row_sums, self.col_sums = self.rows.sum(1), self.cols.sum(1)  # A^T 1 [V, H], B^T 1 [U, W]
        row_gram, col_gram = self.rows.transpose(1, 2) @ self.rows, self.cols.transpose(1, 2) @ self.cols
        row_diagonal, col_diagonal = _is_diagonal(row_gram), _is_diagonal(col_gram)
        masked = row_diagonal[self.row_of] & col_diagonal[self.col_of]
        self._masked = torch.nonzero(masked).flatten()  # edits whose squares are masked sums
        self._row_masks = torch.diagonal(row_gram, dim1=1, dim2=2)  # [V, H]
        self._col_masks = torch.diagonal(col_gram, dim1=1, dim2=2)  # [U, W]
        self._general = torch.nonzero(~masked).flatten()
        used_cols = torch.unique(self.col_of[self._general])
        used_rows = torch.unique(self.row_of[self._general])
        self._general_col = torch.searchsorted(used_cols, self.col_of[self._general])
        self._general_row = torch.searchsorted(used_rows, self.row_of[self._general])
        self._col_grams = col_gram[used_cols].permute(1, 0, 2).reshape(width, -1)  # [W, U' W]
        self._row_grams = row_gram[used_rows].flatten(1).T.contiguous()  # [H H, V']

    def __call__(self, query: torch.Tensor, candidates: torch.Tensor) -> torch.Tensor:
        """[K, P]: correlation of the query [H, W] with edit p (self.edits[p]) of candidate k ([K, H, W])."""
        (h, w), n = self.shape, query.numel()
        q, c = query.to(torch.float32), candidates.to(torch.float32)
        k = len(c)
        projected = torch.einsum("vhg,hw->vgw", self.rows, q)[self.row_of] @ self.cols[self.col_of]  # A^T q B
        dots = c.flatten(1) @ projected.flatten(1).T  # [K, P]
        sums = torch.einsum("vh,khw,uw->kvu", self.row_sums, c, self.col_sums)[:, self.row_of, self.col_of]
        squares = torch.empty_like(dots)
        if len(self._masked):
            masked = torch.einsum("vh,khw,uw->kvu", self._row_masks, c * c, self._col_masks)
            squares[:, self._masked] = masked[:, self.row_of[self._masked], self.col_of[self._masked]]
        if len(self._general):
            right = (c.reshape(k * h, w) @ self._col_grams).reshape(k, -1, w)  # c B^T B, [K, H U', W]
            grams = (right @ c.transpose(1, 2)).reshape(k, h, -1, h).permute(0, 2, 1, 3)  # c B^T B c^T [K, U', H, H]
            general = grams.reshape(k, -1, h * h) @ self._row_grams  # <A^T A, c B^T B c^T>, [K, U', V']
            squares[:, self._general] = general[:, self._general_col, self._general_row]
        covariance = dots - q.mean() * sums
        spread = (squares - sums ** 2 / n).clamp_min(1e-6).sqrt()
        return covariance / (spread * (q - q.mean()).norm().clamp_min(1e-6))


class AlignedCorrelation(EvidenceSource):
    """Copy score from the best pixel correlation with an edited candidate; Fourier retrieval.

    Candidates are retrieved by the magnitude of the low-frequency 2-D Fourier spectrum (|F|
    does not change when an image is translated, so a shifted copy has its source's
    descriptor), queried with the image itself and downscaled onto a black canvas at
    `retrieval_scales` (a crop resized back is its source zoomed in); and by the `pool` x
    `pool` mean-pooled pixels of the image at every shift (a copy shifted so that content
    leaves the frame has another spectrum; `pooled_per_shift` per shift, the best
    `candidates` kept). Of those (`retrieve` per scale and the pooled ones: about 800), a
    cheaper grid of edits (every shift, crops of 1-2 px per side, two blurs) keeps the
    `candidates` best: a crop's source is often ranked 100-200th by the spectrum, and the
    full grid costs 0.1 ms per candidate. Each kept candidate c is then
    edited as a copy is made from its source, and scored by c = the best Pearson correlation
    of the image with any edit (EditedCorrelation): zero-fill shifts up to `max_shift`
    pixels, crops of up to `max_crop` pixels per side resized back, Gaussian blurs of
    `blur_sigmas`; and, with both images blurred (sigma `blur_sigma`: noise and JPEG
    artefacts are mostly high frequencies), every shift. The score is Lowe's ratio test in log
    form, log((1 - c2) / (1 - c1)) with c1 the best candidate's correlation and c2 the best
    among other training images: a copy stands out from its source's look-alikes, a novel
    image is about as close to several of them.
    """

    name = "aligned-correlation"

    def __init__(self, training: torch.Tensor, *, xflip: bool = True, max_shift: int = 3, max_crop: int = 3,
                 blur_sigmas=BLUR_SIGMAS, frequencies: int = 7, candidates: int = 64,
                 retrieval_scales=RETRIEVAL_SCALES, blur_sigma: float = 1.0, pool: int = 4,
                 pooled_per_shift: int = 8, retrieve: int = 256):
        self.entries = _entries(training, xflip)
        self.num_images = len(training)
        self.max_shift, self.max_crop, self.frequencies, self.k = int(max_shift), int(max_crop), int(frequencies), \
            int(candidates)
        self.retrieve = max(int(retrieve), self.k)
        self.blur_sigmas = tuple(float(s) for s in blur_sigmas)
        self.retrieval_scales = [(1.0, 1.0)] + [(float(a), float(b)) for a, b in retrieval_scales if (a, b) != (1, 1)]
        self.xflip, self.blur_sigma = bool(xflip), float(blur_sigma)
        self.pool, self.pooled_per_shift = int(pool), int(pooled_per_shift)
        self.index = self._entry_index(self._spectrum)
        self.pooled_index = self._entry_index(self._pooled)
        self.edited = EditedCorrelation(*self.entries.shape[1:], self.max_shift, range(self.max_crop + 1),
                                        self.blur_sigmas)
        self.edited_blurred = EditedCorrelation(*self.entries.shape[1:], self.max_shift, (), ())  # shifts only
        self.prefilter = EditedCorrelation(*self.entries.shape[1:], self.max_shift, PREFILTER_CROPS, PREFILTER_BLURS)

    def parameters(self) -> dict:
        return {"max_shift": self.max_shift, "max_crop": self.max_crop, "blur_sigmas": list(self.blur_sigmas),
                "edits": len(self.edited.edits), "frequencies": self.frequencies, "candidates": self.k,
                "retrieval_scales": [[round(a, 6), round(b, 6)] for a, b in self.retrieval_scales],
                "xflip": self.xflip, "blur_sigma": self.blur_sigma,
                "pool": self.pool, "pooled_per_shift": self.pooled_per_shift, "retrieve": self.retrieve,
                "prefilter": {"crops": list(PREFILTER_CROPS), "blur_sigmas": list(PREFILTER_BLURS),
                              "edits": len(self.prefilter.edits)},
                "retrieval": "|FFT| low frequencies, sqrt, centred, L2 (faiss inner product); and "
                             "pool x pool mean-pooled pixels, centred, L2, of the image at every shift",
                "score": "log((1 - c2) / (1 - c1)): c = max Pearson correlation with the candidate shifted, "
                         "crop-resized or blurred (raw), or shifted (both blurred)"}

    def _entry_index(self, describe) -> faiss.Index:
        """An inner-product index of every entry's descriptor (described 20000 entries at a time)."""
        described = torch.cat([describe(self.entries[i:i + 20000]) for i in range(0, len(self.entries), 20000)])
        return _inner_product_index(np.ascontiguousarray(described.numpy()))

    def _spectrum(self, x: torch.Tensor) -> torch.Tensor:
        k, pad = self.frequencies, 32
        f = torch.fft.rfft2(x / 255.0, s=(pad, pad)).abs()
        rows = torch.cat([torch.arange(0, k + 1), torch.arange(pad - k, pad)])
        return _unit(f[:, rows][:, :, :k + 1].flatten(1).sqrt())

    def _pooled(self, x: torch.Tensor) -> torch.Tensor:
        return _unit(F.avg_pool2d(x[:, None], self.pool)[:, 0].flatten(1))

    def _pooled_candidates(self, x: torch.Tensor) -> list[np.ndarray]:
        """Per image [B, H, W]: the `candidates` entries whose pooled pixels are nearest to
        those of the image at some shift (|dy|, |dx| <= max_shift): a shifted copy's source."""
        s = self.max_shift
        shifts = [(dy, dx) for dy in range(-s, s + 1) for dx in range(-s, s + 1)]
        queries = torch.stack([shift(x, dy, dx) for dy, dx in shifts], 1).flatten(0, 1)
        similarity, found = self.pooled_index.search(np.ascontiguousarray(self._pooled(queries).numpy()),
                                                     self.pooled_per_shift)
        out = []
        for sims, entries in zip(similarity.reshape(len(x), -1), found.reshape(len(x), -1)):
            best: dict[int, float] = {}
            for sim, entry in zip(sims.tolist(), entries.tolist()):
                if entry >= 0 and sim > best.get(entry, -2.0):
                    best[entry] = sim
            out.append(np.array(sorted(best, key=best.__getitem__, reverse=True)[:self.k], dtype=np.int64))
        return out

    def _versions(self, x: torch.Tensor) -> torch.Tensor:
        """[B, V, H, W]: the query at each retrieval scale (downscaled and centred on a black canvas)."""
        h, w = x.shape[-2:]
        out = [x]
        for sy, sx in self.retrieval_scales[1:]:
            sh, sw = max(1, round(h * sy)), max(1, round(w * sx))
            small = F.interpolate(x[:, None], size=(sh, sw), mode="bilinear", align_corners=False, antialias=True)
            top, left = (h - sh) // 2, (w - sw) // 2
            out.append(F.pad(small, (left, w - sw - left, top, h - sh - top))[:, 0])
        return torch.stack(out, 1)

    def __call__(self, images) -> list[Evidence]:
        x = gray(images)
        if tuple(x.shape[1:]) != tuple(self.entries.shape[1:]):
            raise CopyDetectionError(f"images are {tuple(x.shape[1:])}, the training entries "
                                     f"{tuple(self.entries.shape[1:])}")
        versions = self._versions(x)
        b = versions.shape[0]
        _, found = self.index.search(np.ascontiguousarray(self._spectrum(versions.flatten(0, 1)).numpy()),
                                     self.retrieve)
        found = found.reshape(b, -1)
        pooled = self._pooled_candidates(x)
        return [self._score(x[i], self._shortlist(x[i], np.union1d(found[i][found[i] >= 0], pooled[i])))
                for i in range(b)]

    def _shortlist(self, query: torch.Tensor, entries: np.ndarray) -> np.ndarray:
        """The `candidates` retrieved entries that correlate best with the image [H, W] under the
        prefilter's few edits (every shift; crops of 1-2 px per side; two blurs), sorted."""
        if len(entries) <= self.k:
            return entries
        best = self.prefilter(query, self.entries[torch.from_numpy(entries)]).max(1).values
        return np.sort(entries[torch.topk(best, self.k).indices.numpy()])

    def _score(self, query: torch.Tensor, entries: np.ndarray) -> Evidence:
        """Re-rank the candidates of one image [H, W]; the view (raw or blurred) with the larger
        ratio score decides."""
        candidates = self.entries[torch.from_numpy(entries)]
        views = [("raw", query, candidates, self.edited)]
        if self.blur_sigma > 0:
            views.append(("blurred", _blur(query[None], self.blur_sigma)[0], _blur(candidates, self.blur_sigma),
                          self.edited_blurred))
        images = entries % self.num_images
        results = []
        for view, q, c, edited in views:
            best, where = edited(q, c).max(1)
            order = torch.argsort(best, descending=True)[:self.k]
            top = int(order[0])
            others = [float(best[j]) for j in order if images[j] != images[top]]
            c1, c2 = float(best[top]), (others[0] if others else 0.0)
            score = float(np.log((1 - c2 + 1e-4) / (1 - c1 + 1e-4)))
            results.append(Evidence(score, int(entries[top]), [(int(entries[j]), float(best[j])) for j in order],
                                    alignment={**edited.edits[int(where[top])].describe(), "correlation": c1,
                                               "runner_up": c2, "view": view}))
        return max(results, key=lambda e: e.score)


# -- partial copies ------------------------------------------------------------------------

def largest_region(mask: torch.Tensor) -> torch.Tensor:
    """The largest 4-connected component of each boolean mask [B, H, W] (label propagation)."""
    b, h, w = mask.shape
    labels = torch.where(mask, torch.arange(1, h * w + 1, dtype=torch.float32).view(h, w).expand(b, h, w), torch.zeros(()))
    while True:
        padded = F.pad(labels, (1, 1, 1, 1))
        grown = torch.stack([labels, padded[:, :-2, 1:-1], padded[:, 2:, 1:-1], padded[:, 1:-1, :-2],
                             padded[:, 1:-1, 2:]]).amax(0)
        grown = torch.where(mask, grown, torch.zeros(()))
        if torch.equal(grown, labels):
            break
        labels = grown
    out = torch.zeros_like(mask)
    for i in range(b):
        values, counts = torch.unique(labels[i][mask[i]], return_counts=True)
        if len(values):
            out[i] = labels[i] == values[counts.argmax()]
    return out


def _box_masks(masks: torch.Tensor, margin: int) -> torch.Tensor:
    """[B, H, W]: the bounding box of each mask, grown by `margin` pixels (empty for an empty mask)."""
    rows, cols = masks.any(2), masks.any(1)
    grow = lambda m: F.max_pool1d(m.float()[:, None], 2 * margin + 1, 1, margin)[:, 0] > 0.5  # noqa: E731
    first = lambda m: torch.cummax(m.int(), 1)[0].bool()  # noqa: E731
    inside = lambda m: first(m) & first(m.flip(1)).flip(1)  # noqa: E731
    return grow(inside(rows))[:, :, None] & grow(inside(cols))[:, None, :]


def _box(mask: np.ndarray) -> tuple[int, int, int, int] | None:
    rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
    if not len(rows):
        return None
    return int(rows[0]), int(cols[0]), int(rows[-1] - rows[0] + 1), int(cols[-1] - cols[0] + 1)


class RegionMatch(EvidenceSource):
    """Partial copies: the largest region of the image that equals a training entry's same pixels.

    Candidates: entries whose same-position 7x7 block (grid at offsets 0 and 3) is nearest to
    one of the image's non-background blocks (faiss L2, `votes` per block; the mirrored
    image is looked up as a mirrored query), plus the aligned-correlation candidates when
    given. Region: pixels within `tolerance` levels of the candidate throughout their 3x3
    neighbourhood, its largest 4-connected component grown back by one pixel (within the
    agreeing pixels), cut to the bounding box (plus one pixel) of its non-background pixels.
    Its area a is the fraction of the image's pixels in it that are not background in both
    images (> `background` levels); the score is a1 - a2, the best candidate's area minus the
    best other training image's, so look-alike garments (large agreeing areas with several
    images) score near 0 and a pasted region scores its area.
    """

    name = "region-match"

    def __init__(self, training: torch.Tensor, *, xflip: bool = True, block: int = 7, votes: int = 4,
                 keep: int = 24, regions: int = 8, tolerance: float = 3.0, background: float = 30.0):
        self.images = gray(training)
        self.num_images, (self.h, self.w) = len(training), self.images.shape[1:]
        self.xflip, self.block, self.votes, self.keep = bool(xflip), int(block), int(votes), int(keep)
        self.regions = int(regions)
        self.tolerance, self.background = float(tolerance), float(background)
        self.positions = [(y, x) for offset in (0, 3) for y in range(offset, self.h - self.block + 1, self.block)
                          for x in range(offset, self.w - self.block + 1, self.block)]
        self.indexes = []
        for y, x in self.positions:
            blocks = np.ascontiguousarray(self.images[:, y:y + self.block, x:x + self.block].flatten(1).numpy())
            index = faiss.IndexFlatL2(blocks.shape[1])
            index.add(blocks)
            self.indexes.append(index)

    def parameters(self) -> dict:
        return {"block": self.block, "grids": [0, 3], "votes": self.votes, "keep": self.keep, "regions": self.regions,
                "tolerance": self.tolerance,
                "background": self.background, "xflip": self.xflip,
                "score": "a1 - a2: fraction of the image in the largest agreeing non-background region, best "
                         "candidate minus the best other training image"}

    def _block_candidates(self, x: torch.Tensor) -> list[set[int]]:
        """The `keep` entries voted for by most non-background blocks of each image [B, H, W]."""
        found = [Counter() for _ in range(len(x))]
        queries = [(x, 0)] + ([(x.flip(-1), self.num_images)] if self.xflip else [])
        for images, offset in queries:
            for (y, left), index in zip(self.positions, self.indexes):
                blocks = images[:, y:y + self.block, left:left + self.block].flatten(1)
                rows = torch.nonzero(blocks.amax(1) > self.background).flatten()
                if not len(rows):
                    continue
                _, hits = index.search(np.ascontiguousarray(blocks[rows].numpy()), self.votes)
                for row, entries in zip(rows.tolist(), hits):
                    found[row].update(int(e) + offset for e in entries if e >= 0)
        return [{entry for entry, _ in votes.most_common(self.keep)} for votes in found]

    def _entry_images(self, entries: np.ndarray) -> torch.Tensor:
        images = self.images[torch.from_numpy(entries % self.num_images)]
        flips = torch.from_numpy(entries >= self.num_images)[:, None, None]
        return torch.where(flips, images.flip(-1), images)

    def _regions(self, query: torch.Tensor, entries: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        """(score [K], region [K, H, W]) of one image [H, W] against candidate entries."""
        candidates = self._entry_images(entries)
        agree = (candidates - query).abs() <= self.tolerance
        core = -F.max_pool2d(-(agree.float())[:, None], 3, 1, 1)[:, 0] > 0.5  # erosion: 3x3 all agree
        region = torch.zeros_like(core)
        kept = torch.argsort(core.flatten(1).sum(1), descending=True)[:self.regions]  # the rest cannot win
        region[kept] = largest_region(core[kept])
        region = (F.max_pool2d(region.float()[:, None], 3, 1, 1)[:, 0] > 0.5) & agree  # grow back by one
        informative = region & ((candidates > self.background) | (query > self.background))
        return informative.flatten(1).float().mean(1), region & _box_masks(informative, 1)

    def __call__(self, images, extra_candidates: list[list[int]] | None = None) -> list[Evidence]:
        x = gray(images)
        if tuple(x.shape[1:]) != (self.h, self.w):
            raise CopyDetectionError(f"images are {tuple(x.shape[1:])}, the training images {(self.h, self.w)}")
        found = self._block_candidates(x)
        results = []
        for i in range(len(x)):
            pool = found[i] | set(extra_candidates[i] if extra_candidates is not None else ())
            if not pool:
                results.append(Evidence(0.0, -1, []))
                continue
            entries = np.array(sorted(pool), dtype=np.int64)
            scores, regions = self._regions(x[i], entries)
            order = torch.argsort(scores, descending=True)
            top = int(order[0])
            mask = regions[top].numpy()
            images = entries % self.num_images
            others = [float(scores[j]) for j in order if images[j] != images[top]]
            margin = float(scores[top]) - (others[0] if others else 0.0)
            results.append(Evidence(margin, int(entries[top]),
                                    [(int(entries[j]), float(scores[j])) for j in order[:16]], mask=mask, box=_box(mask)))
        return results
