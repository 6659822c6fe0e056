"""One sample's provenance, read from the store in one short transaction, as numpy arrays.

A report needs, for one sample, the shares of every step, the trajectory shares, the
per-pixel maps of a step, the patch locations of its sources and the patch_stats summaries.
Asking auditor.store.attribution for each would open the file dozens of times (about 20 ms each,
and every open competes with the sampling writer for the lock). `SampleProvenance` reads
the sample's rows once (steps, step_shares, patch_weights, patch_stats, copy_matches, the
geometry of its patch sets) and computes what the SQL views compute, with vectorised numpy:

- share of image i at step s: the step_shares rows the recorder wrote (what view
  step_sources reads), ordered as the views order them;
- trajectory shares: the view trajectory_sources (sum over recorded steps of c_s x
  share_s, c_s = a_s / sum a, a_s = 1 - t_{s+1} / t_s), read in the same transaction;
- pixel maps: weight of entry (i, flip) in pixel (y, x) = sum over the patches covering it
  of w / coverage(y, x)  (pixel_weights, dense, as auditor.store.attribution.pixel_attribution);
- per-pixel sources: each pixel's `top` training images by weight (view pixel_sources).

tests/reports/test_page_builders.py checks every one against auditor.store.attribution on a recorded
store. What is built from a COMPLETE run's sample (a report) can be kept per process with
`build_cached`, keyed by the rows that can still change.
"""

from __future__ import annotations

import os
import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Hashable, Iterable, TypeVar

import numpy as np

from auditor.errors import NotFoundError
from auditor.store import database
from auditor.store.calibrations import verdict_rows
from auditor.store.database import json_value
from auditor.store.read_models.common import ImageMeta, image_metadata
from auditor.store.read_models.patches import PatchGeometry, patch_geometry
from auditor.store.runs import check_sample_index, read_run
from pspc.posterior.attribution import member_pixel_weights, trajectory_coefficients

__all__ = ["CopyMatchRow", "PixelSources", "SampleProvenance", "Shares", "StepRow", "build_cached",
           "per_image_weights", "pixel_top_sources", "related_studies", "stored_verdict"]

T = TypeVar("T")
DENSE_BYTES = 256 * 2**20  # dense per-step maps a SampleProvenance keeps (the latest step always)
Images = Iterable[int] | Callable[["SampleProvenance"], Iterable[int]]


@dataclass(frozen=True, kw_only=True)
class StepRow:
    """One recorded step of the sample: t, t_next, its patch set, z_t and D(z_t) (float32 [C, H, W])."""

    step: int
    t: float
    t_next: float
    patch_set_id: int
    z: np.ndarray = field(repr=False)
    denoised: np.ndarray = field(repr=False)


@dataclass(frozen=True, kw_only=True)
class Shares:
    """Per training image shares, largest first (ties: smaller image index first).
    steps: for trajectory shares, in how many recorded steps the image kept weight;
    patches: for step shares, how many patch positions kept it."""

    image_index: np.ndarray
    share: np.ndarray
    flip_share: np.ndarray
    patches: np.ndarray | None = None
    steps: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.image_index)

    def as_dict(self) -> dict[int, float]:
        return dict(zip(self.image_index.tolist(), self.share.tolist()))

    def top(self, n: int) -> "Shares":
        return Shares(image_index=self.image_index[:n], share=self.share[:n], flip_share=self.flip_share[:n],
                      patches=None if self.patches is None else self.patches[:n],
                      steps=None if self.steps is None else self.steps[:n])


@dataclass(frozen=True, kw_only=True)
class CopyMatchRow:
    """A copy_matches row of the sample: a nearest training image by descriptor."""

    rank: int
    image_index: int
    flip: bool
    score: float
    descriptor: str
    thresholds: list | None
    flag: float | None
    flagged: bool


@dataclass(frozen=True, kw_only=True)
class PixelSources:
    """Every pixel's `top` training images by weight (view pixel_sources, for all pixels at once):
    image_index int [H, W, top] (-1 pads), weight (mirrored copy included) and flip (the
    mirrored part) float [H, W, top]; mass: each pixel's captured mass [H, W]."""

    height: int
    width: int
    top: int
    image_index: np.ndarray = field(repr=False)
    weight: np.ndarray = field(repr=False)
    flip: np.ndarray = field(repr=False)
    mass: np.ndarray = field(repr=False)


def related_studies(conn, dataset: dict) -> list[dict]:
    """The fidelity studies run on the data set `dataset` (same fingerprint: same_images) or on
    other images of its source file (a subset, e.g. its first 5,000): dicts id, name,
    network_name, count (the study's training images), fingerprint, same_images; oldest first."""
    rows = conn.execute("""
        SELECT id, name, network_name, training_fingerprint, json_extract_string(record, '$.training_set.source'),
               TRY_CAST(json_extract(record, '$.training_set.count') AS BIGINT)
        FROM fidelity_studies ORDER BY id""").fetchall()
    return [{"id": int(i), "name": name, "network_name": network, "count": None if count is None else int(count),
             "fingerprint": fingerprint, "same_images": fingerprint == dataset["fingerprint"]}
            for i, name, network, fingerprint, source, count in rows
            if fingerprint == dataset["fingerprint"] or (source is not None and source == dataset.get("source"))]


def stored_verdict(conn, run_id: int, sample_index: int) -> dict | None:
    """The sample's copy_verdicts row (columns VERDICT_COLUMNS, JSON ones parsed), or None."""
    return verdict_rows(conn, run_id, sample_index).get(sample_index)


def _numpy(value) -> np.ndarray:
    if hasattr(value, "detach"):  # torch tensor
        value = value.detach().cpu().numpy()
    return np.asarray(value)


def per_image_weights(attribution: dict) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(image indices [I] ascending, weights [I, H, W], mirrored part [I, H, W]) from a
    pixel_attribution dict ({"image_index" [E], "flip" [E], "weights" [E, H, W]}, numpy or
    torch): each training image's weight per pixel, its mirrored copy's weight included (and
    also given apart)."""
    image = _numpy(attribution["image_index"]).astype(np.int64)
    flip = _numpy(attribution["flip"]).astype(bool)
    weights = _numpy(attribution["weights"]).astype(np.float64)
    if weights.ndim != 3 or len(weights) != len(image) or len(flip) != len(image):
        raise ValueError(f"attribution: expected weights [E, H, W] and E image indices and flips, got "
                         f"{weights.shape}, {image.shape}, {flip.shape}")
    if not len(image):
        empty = np.zeros((0, *weights.shape[1:]), np.float64)
        return image, empty, empty.copy()
    order = np.argsort(image, kind="stable")
    image, flip, weights = image[order], flip[order], weights[order]
    starts = np.flatnonzero(np.r_[True, image[1:] != image[:-1]])
    per_image = np.add.reduceat(weights, starts, axis=0)
    mirrored = np.zeros_like(per_image)
    if flip.any():
        np.add.at(mirrored, np.searchsorted(image[starts], image[flip]), weights[flip])
    return image[starts], per_image, mirrored


def pixel_top_sources(per_image: tuple, top: int, shape: tuple[int, int]) -> PixelSources:
    """Each pixel's `top` images by weight from per_image_weights' (images, weights, mirrored)
    (ties: smaller image index first; pixels with fewer kept images padded with -1)."""
    images, weights, mirrored = per_image
    height, width = weights.shape[1:] if weights.ndim == 3 else shape
    k = min(top, len(images))
    if k:
        order = np.argsort(-weights, axis=0, kind="stable")[:k]  # [k, H, W]; ties: smaller image index first
        picked_weight = np.take_along_axis(weights, order, 0)
        picked_flip = np.take_along_axis(mirrored, order, 0)
        picked_image = np.where(picked_weight > 0, images[order], -1)
        picked_weight = np.where(picked_weight > 0, picked_weight, 0.0)
        picked_flip = np.where(picked_image >= 0, picked_flip, 0.0)
    else:
        picked_image = np.full((top, height, width), -1)
        picked_weight = picked_flip = np.zeros((top, height, width))
    if k < top:  # pad to `top` entries per pixel
        pad = top - k
        picked_image = np.concatenate([picked_image, np.full((pad, height, width), -1)])
        picked_weight = np.concatenate([picked_weight, np.zeros((pad, height, width))])
        picked_flip = np.concatenate([picked_flip, np.zeros((pad, height, width))])
    mass = weights.sum(0) if len(images) else np.zeros((height, width))
    return PixelSources(height=int(height), width=int(width), top=int(top),
                        image_index=np.moveaxis(picked_image, 0, -1).astype(np.int64),
                        weight=np.moveaxis(picked_weight, 0, -1), flip=np.moveaxis(picked_flip, 0, -1), mass=mass)


class SampleProvenance:
    """Everything the store holds about one sample (see the module docstring).

    Attributes: db_path; run (auditor.store.runs.read_run's dict: id, status, dataset_id,
    denoiser, sampler, seed, num_samples, top_k, mass_threshold, versions, command, writer,
    created_at, finished_at, timings, error, kind, details, network_id); dataset (dict: id,
    fingerprint, name, source, channels, height, width, count, created_at); sample_index;
    seed; final_image (float32 [C, H, W] or None while the run is not complete); steps (list
    of StepRow, ascending); geometry (patch_set_id -> PatchGeometry); weights and stats
    (column arrays of the sample's patch_weights and patch_stats rows); copy_matches (its
    CopyMatchRows, by descriptor and rank); studies (the fidelity studies run on this data
    set or on part of the same source file: dicts id, name, network_name, count, fingerprint,
    same_images); verdict (its copy_verdicts row as auditor.store.calibrations.load_verdicts
    gives it, or None); images (image_index -> ImageMeta for the images fetched so far). Per-step maps are kept on the instance (the dense ones up to
    DENSE_BYTES): treat what they return as read-only.
    """

    def __init__(self, *, db_path, run: dict, dataset: dict, sample_index: int, seed: int, final_image, steps,
                 geometry, weights, stats, shares, copy_matches=(), studies=(), verdict=None):
        self.db_path = db_path
        self.run, self.dataset = run, dataset
        self.sample_index, self.seed, self.final_image = sample_index, seed, final_image
        self.steps: list[StepRow] = steps
        self.geometry: dict[int, PatchGeometry] = geometry
        self.weights, self.stats, self.shares = weights, stats, shares
        self.copy_matches: list[CopyMatchRow] = list(copy_matches)
        self.studies: list[dict] = list(studies)
        self.verdict: dict | None = verdict
        self.images: dict[int, ImageMeta] = {}
        self._by_step = {row.step: row for row in steps}
        self._step_shares: dict[int, Shares] | None = None
        self._dense: OrderedDict[int, list] = OrderedDict()  # step -> [pixel_attribution, per_image_weights or None]
        self._sources: dict[tuple[int, int], PixelSources] = {}

    # -- loading -----------------------------------------------------------------------
    @property
    def shape(self) -> tuple[int, int, int]:
        return int(self.dataset["channels"]), int(self.dataset["height"]), int(self.dataset["width"])

    @classmethod
    def load(cls, db_path, run_id: int, sample_index: int, *, images: Images = (), pixels: bool = True,
             timeout: float = database.DEFAULT_TIMEOUT) -> "SampleProvenance":
        """Read the sample in one read-only transaction, plus the metadata (and pixels, unless
        pixels=False) of training images `images`: indices, or a function of the sample
        giving them (called inside the transaction, e.g. the images a report shows)."""
        with database.connect(db_path, read_only=True, timeout=timeout, check_schema=True) as conn:
            data = cls.read(conn, db_path, run_id, sample_index)
            data.fetch_images(conn, images(data) if callable(images) else images, pixels)
        return data

    @classmethod
    def read(cls, conn, db_path, run_id: int, sample_index: int) -> "SampleProvenance":
        """As `load`, on an open connection. NotFoundError for an unknown run or sample."""
        run, dataset = read_run(conn, db_path, run_id)
        run_id = int(run["id"])
        sample_index = check_sample_index(db_path, run, sample_index)
        shape = (dataset["channels"], dataset["height"], dataset["width"])
        where = "WHERE run_id = ? AND sample_index = ?"
        key = [run_id, sample_index]
        seed, final = conn.execute(f"SELECT seed, final_image FROM samples {where}",
                                   key).fetchone() or (run["seed"] + sample_index, None)
        final_image = None if final is None else np.frombuffer(final, "<f4").reshape(shape).astype(np.float32)
        steps = [StepRow(step=int(s), t=float(t), t_next=float(tn), patch_set_id=int(ps),
                         z=np.frombuffer(z, "<f4").reshape(shape).astype(np.float32),
                         denoised=np.frombuffer(d, "<f4").reshape(shape).astype(np.float32))
                 for s, t, tn, ps, z, d in conn.execute(
                     f"SELECT step, t, t_next, patch_set_id, z, denoised FROM steps {where} ORDER BY step",
                     key).fetchall()]
        weights = conn.execute("SELECT step, position, image_index, flip, source_top, source_left, weight "
                               f"FROM patch_weights {where}", key).fetchnumpy()
        stats = conn.execute(f"SELECT step, position, mass, entropy, ess FROM patch_stats {where}", key).fetchnumpy()
        shares = conn.execute(f"SELECT step, image_index, share, flip_share, patches FROM step_shares {where} "
                              "ORDER BY step, share DESC, image_index", key).fetchnumpy()
        weights = {k: np.asarray(v) for k, v in weights.items()}
        weights["weight"] = weights["weight"].astype(np.float64)  # as the views: CAST(weight AS DOUBLE)
        stats = {k: np.asarray(v) for k, v in stats.items()}
        shares = {k: np.asarray(v) for k, v in shares.items()}
        trajectory = conn.execute(f"SELECT image_index, share, flip_share, steps FROM trajectory_sources {where} "
                                  "ORDER BY share DESC, image_index", key).fetchnumpy()
        shares["trajectory"] = Shares(image_index=np.asarray(trajectory["image_index"]).astype(np.int64),
                                      share=np.asarray(trajectory["share"]).astype(np.float64),
                                      flip_share=np.asarray(trajectory["flip_share"]).astype(np.float64),
                                      steps=np.asarray(trajectory["steps"]).astype(np.int64))
        matches = [CopyMatchRow(rank=rank, image_index=image_index, flip=flip, score=score, descriptor=descriptor,
                                thresholds=json_value(thresholds), flag=flag, flagged=flagged)
                   for rank, image_index, flip, score, descriptor, thresholds, flag, flagged in conn.execute(
                       "SELECT rank, image_index, flip, score, descriptor, thresholds, flag, flagged "
                       f"FROM copy_matches {where} ORDER BY descriptor, rank", key).fetchall()]
        geometry = patch_geometry(conn, [s.patch_set_id for s in steps])
        return cls(db_path=db_path, run=run, dataset=dataset, sample_index=sample_index, seed=int(seed),
                   final_image=final_image, steps=steps, geometry=geometry, weights=weights, stats=stats,
                   shares=shares, copy_matches=matches, studies=related_studies(conn, dataset),
                   verdict=stored_verdict(conn, run_id, sample_index))

    def fetch_images(self, conn, indices, pixels: bool = True) -> dict[int, ImageMeta]:
        """Read (on an open connection) the metadata of the images not fetched yet; returns them all."""
        wanted = {int(i) for i in indices}
        missing = wanted - set(self.images)
        if missing:
            self.images.update(image_metadata(conn, self.dataset["id"], missing, self.shape, pixels))
        return {i: self.images[i] for i in wanted if i in self.images}

    # -- steps ---------------------------------------------------------------------------
    @property
    def complete(self) -> bool:
        return self.run["status"] == "complete" and self.final_image is not None

    @property
    def final_step(self) -> int | None:
        """The recorded step with t_next = 0 (its D(z_t) is the sample), if recorded."""
        for row in reversed(self.steps):
            if row.t_next == 0:
                return row.step
        return None

    def resolve_step(self, step: int | None) -> int:
        """`step`, checked; None: the last recorded step. NotFoundError if not recorded."""
        if not self.steps:
            raise NotFoundError(f"{self.db_path}: run {self.run['id']} has no recorded steps for sample "
                                f"{self.sample_index} yet")
        if step is None:
            return self.steps[-1].step
        try:
            step = int(step)
        except (TypeError, ValueError):
            raise NotFoundError(f"step must be an integer, got {step!r}") from None
        if step not in self._by_step:
            recorded = f"{self.steps[0].step}..{self.steps[-1].step}"
            raise NotFoundError(f"{self.db_path}: run {self.run['id']} sample {self.sample_index} has no recorded step "
                                f"{step} (recorded: {recorded})")
        return step

    def step_row(self, step: int) -> StepRow:
        return self._by_step[self.resolve_step(step)]

    def coefficients(self) -> dict[int, float]:
        """Trajectory weight of each recorded step (pspc.posterior.attribution.trajectory_coefficients)."""
        return trajectory_coefficients((row.step, row.t, row.t_next) for row in self.steps)

    # -- shares --------------------------------------------------------------------------
    def all_step_shares(self) -> dict[int, Shares]:
        """Shares of every recorded step (view step_sources), largest first."""
        if self._step_shares is None:
            step = self.shares["step"].astype(np.int64)
            self._step_shares = {}
            for row in self.steps:
                where = step == row.step  # rows are already ordered by share DESC, image_index
                self._step_shares[row.step] = Shares(
                    image_index=self.shares["image_index"][where].astype(np.int64),
                    share=self.shares["share"][where].astype(np.float64),
                    flip_share=self.shares["flip_share"][where].astype(np.float64),
                    patches=self.shares["patches"][where])
        return self._step_shares

    def step_shares(self, step: int | None = None) -> Shares:
        """Shares of D(z_t) at `step` (None: the last recorded step)."""
        return self.all_step_shares()[self.resolve_step(step)]

    def final_shares(self) -> Shares | None:
        """Shares of the final image (view sample_sources): the step with t_next = 0."""
        final = self.final_step
        return None if final is None else self.step_shares(final)

    def trajectory_shares(self) -> Shares:
        """Trajectory-aggregated shares (view trajectory_sources: sum over the recorded steps of
        coefficient x share), with `steps` counts."""
        return self.shares["trajectory"]

    def share_series(self, image_indices) -> dict[int, list[float]]:
        """image -> its share at every recorded step (0 where it kept no weight), steps ascending."""
        series = {int(i): [] for i in image_indices}
        for row in self.steps:
            shares = self.all_step_shares()[row.step].as_dict()
            for i in series:
                series[i].append(shares.get(i, 0.0))
        return series

    # -- patches and stats ---------------------------------------------------------------
    def top_patches(self, image_indices, steps=None, per_image: int = 5, coefficients: dict | None = None) -> dict:
        """Up to `per_image` largest kept weights (x step coefficient when given) of each image:
        dicts (step, position, top, left, height, width, flip, weight); top/left are the box
        in the ORIGINAL image (mirrored for flip). Ranked as auditor.store.attribution: weight x
        coefficient descending, then later step, then smaller position."""
        steps = [row.step for row in self.steps] if steps is None else [int(s) for s in steps]
        wanted = np.array(sorted({int(i) for i in image_indices}), np.int64)
        w = self.weights
        select = np.isin(w["image_index"].astype(np.int64), wanted) & np.isin(w["step"].astype(np.int64), steps)
        idx = np.nonzero(select)[0]
        coef = np.array([(coefficients or {}).get(int(s), 0.0) if coefficients else 1.0
                         for s in w["step"][idx]], np.float64)
        score = w["weight"][idx] * coef
        order = idx[np.lexsort((w["position"][idx], -w["step"][idx].astype(np.int64), -score))]
        out: dict[int, list[dict]] = {int(i): [] for i in wanted}
        for r in order.tolist():
            image = int(w["image_index"][r])
            if len(out[image]) >= per_image:
                continue
            step, position = int(w["step"][r]), int(w["position"][r])
            geometry = self.geometry[self._by_step[step].patch_set_id]
            out[image].append({"step": step, "position": position, "top": int(w["source_top"][r]),
                               "left": int(w["source_left"][r]), "height": int(geometry.box_height[position]),
                               "width": int(geometry.box_width[position]), "flip": bool(w["flip"][r]),
                               "weight": float(w["weight"][r])})
        return out

    def stats_summary(self) -> dict[int, dict]:
        """step -> summaries of patch_stats over its positions: mass_mean, mass_min,
        entropy_mean (nats), entropy_max, ess_mean, ess_median, kept (kept weights per patch, mean)."""
        out = {}
        step = self.stats["step"].astype(np.int64)
        kept = np.bincount(self.weights["step"].astype(np.int64), minlength=(max(step, default=0) + 1))
        for row in self.steps:
            where = step == row.step
            mass, entropy, ess = (self.stats[k][where].astype(np.float64) for k in ("mass", "entropy", "ess"))
            if not where.any():
                continue
            out[row.step] = {"mass_mean": float(mass.mean()), "mass_min": float(mass.min()),
                             "entropy_mean": float(entropy.mean()), "entropy_max": float(entropy.max()),
                             "ess_mean": float(ess.mean()), "ess_median": float(np.median(ess)),
                             "kept_mean": float(kept[row.step] / where.sum()) if row.step < len(kept) else 0.0}
        return out

    # -- pixel maps ----------------------------------------------------------------------
    def _dense_maps(self, step: int) -> list:
        """[pixel_attribution, per_image_weights or None] of `step`, kept while the kept steps'
        arrays ([E, H, W] each) take at most DENSE_BYTES (the latest step is always kept)."""
        entry = self._dense.get(step)
        if entry is None:
            entry = self._dense[step] = [self._pixel_attribution(step), None]
        self._dense.move_to_end(step)
        return entry

    def _trim_dense(self) -> None:
        def size(entry) -> int:
            return entry[0]["weights"].nbytes + (0 if entry[1] is None else entry[1][1].nbytes + entry[1][2].nbytes)

        while len(self._dense) > 1 and sum(size(e) for e in self._dense.values()) > DENSE_BYTES:
            self._dense.popitem(last=False)

    def pixel_attribution(self, step: int | None = None) -> dict:
        """Dense per-pixel attribution of D(z_t) at `step`, as auditor.store.attribution.pixel_attribution:
        {"image_index" [E], "flip" [E], "weights" [E, H, W] float64} (numpy)."""
        entry = self._dense_maps(self.resolve_step(step))
        self._trim_dense()
        return entry[0]

    def image_weights(self, step: int | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """per_image_weights of pixel_attribution(step): (images, weights [I, H, W], mirrored part)."""
        entry = self._dense_maps(self.resolve_step(step))
        if entry[1] is None:
            entry[1] = per_image_weights(entry[0])
        self._trim_dense()
        return entry[1]

    def pixel_sources(self, step: int | None, top: int) -> PixelSources:
        """Every pixel's `top` training images by weight at `step` (pixel_top_sources), kept per (step, top)."""
        key = (self.resolve_step(step), int(top))
        if key not in self._sources:
            self._sources[key] = pixel_top_sources(self.image_weights(key[0]), key[1], self.shape[1:])
        return self._sources[key]

    def _pixel_attribution(self, step: int) -> dict:
        row = self._by_step[step]
        geometry = self.geometry[row.patch_set_id]
        select = self.weights["step"].astype(np.int64) == row.step
        image = self.weights["image_index"][select].astype(np.int64)
        flip = self.weights["flip"][select].astype(bool)
        position = self.weights["position"][select].astype(np.int64)
        entries, inverse = np.unique(image * 2 + flip, return_inverse=True)
        height, width = geometry.height, geometry.width
        if not len(entries):
            return {"image_index": np.zeros(0, np.int64), "flip": np.zeros(0, bool),
                    "weights": np.zeros((0, height, width))}
        # expand each kept weight over its patch's pixels (membership sorted by position), then sum per (entry, pixel)
        starts = geometry.member_starts
        counts = np.diff(starts)[position]
        member = np.repeat(np.arange(len(position)), counts)
        offset = np.arange(len(member)) - np.repeat(np.cumsum(counts) - counts, counts)
        pixel = geometry.member_pixel[starts[position][member] + offset]
        maps = member_pixel_weights(inverse[member], pixel, self.weights["weight"][select][member], len(entries),
                                    geometry.coverage)
        return {"image_index": entries // 2, "flip": entries % 2 == 1, "weights": maps.reshape(len(entries), height,
                                                                                                width)}


# ---------------------------------------------------------------------------------------
# What is built from a complete run's sample, kept per process
# ---------------------------------------------------------------------------------------
# A COMPLETE run's rows never change: the key holds the run's identity (file, id, creation and
# completion time) and the counts of the rows that can still be added for it later
# (similarity scores, copy matches, comparison membership, fidelity studies of its data, its
# counterfactual runs and, for a counterfactual, its parent's verdict).
_BUILT: "OrderedDict[tuple, object]" = OrderedDict()
_BUILT_LOCK = threading.Lock()
_BUILT_CACHE_SIZE = 32


def _state_key(conn, db_path, run_id, sample_index) -> tuple | None:
    try:
        run_id, sample_index = int(run_id), int(sample_index)
    except (TypeError, ValueError):
        return None
    row = conn.execute("""
        SELECT r.status, r.created_at, r.finished_at,
               (SELECT count(*) FROM similarity_scores s WHERE s.run_a = r.id OR s.run_b = r.id),
               (SELECT count(*) FROM copy_matches c WHERE c.run_id = r.id),
               (SELECT count(*) FROM comparison_runs m WHERE m.run_id = r.id),
               (SELECT count(*) FROM fidelity_studies),
               (SELECT string_agg(v.sample_index || v.verdict || v.reason, '|' ORDER BY v.sample_index)
                FROM copy_verdicts v WHERE v.run_id = r.id),
               -- its counterfactual runs and their status; a counterfactual's parent's verdict
               (SELECT string_agg(c.id || c.status, '|' ORDER BY c.id) FROM runs c WHERE c.kind = 'counterfactual'
                AND TRY_CAST(json_extract_string(c.details, '$.parent_run_id') AS BIGINT) = r.id),
               (SELECT string_agg(v.verdict || v.reason, '|') FROM counterfactuals c JOIN copy_verdicts v
                ON v.run_id = c.parent_run_id AND v.sample_index = c.parent_sample WHERE c.run_id = r.id)
        FROM runs r WHERE r.id = ?""", [run_id]).fetchone()
    if row is None or row[0] != "complete":
        return None
    return (str(Path(os.fspath(db_path)).resolve()), run_id, sample_index, *row[1:])


def build_cached(db_path, run_id: int, sample_index: int, build: Callable[[SampleProvenance], T], *,
                 options: Hashable | None, images: Images = (), timeout: float = database.DEFAULT_TIMEOUT) -> T:
    """build(the sample read with `images`, as SampleProvenance.load), kept per process while
    the run is complete and its rows that can still arrive are unchanged. `options` names
    what `build` makes (everything its result depends on besides the rows: a kind and the
    options); None: never cached. A cached result is shared: treat it as read-only.

    The key is checked and the sample read in ONE read-only transaction; `build` runs after it."""
    with database.connect(db_path, read_only=True, timeout=timeout, check_schema=True) as conn:
        key = None
        if options is not None:
            state = _state_key(conn, db_path, run_id, sample_index)
            key = None if state is None else (*state, options)
        if key is not None:
            with _BUILT_LOCK:
                if key in _BUILT:
                    _BUILT.move_to_end(key)
                    return _BUILT[key]
        data = SampleProvenance.read(conn, db_path, run_id, sample_index)
        data.fetch_images(conn, images(data) if callable(images) else images)
    built = build(data)
    if key is not None:
        with _BUILT_LOCK:
            _BUILT[key] = built
            while len(_BUILT) > _BUILT_CACHE_SIZE:
                _BUILT.popitem(last=False)
    return built
