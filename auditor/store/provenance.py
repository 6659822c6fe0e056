"""One sample's provenance, read from the store in one short transaction, as numpy arrays.

A report needs, for one sample, the shares of every step, the trajectory shares, the
per-pixel maps of a step, the patch locations of its sources and the patch_stats summaries.
Asking auditor.store.attribution for each would open the file dozens of times (about 20 ms each,
and every open competes with the sampling writer for the lock). `SampleProvenance` reads
the sample's rows once (steps, step_shares, patch_weights, patch_stats, the geometry of its
patch sets) and computes what the SQL views compute, with vectorised numpy:

- share of image i at step s: the step_shares rows the recorder wrote (what view
  step_sources reads), ordered as the views order them;
- trajectory shares: the view trajectory_sources (sum over recorded steps of c_s x
  share_s, c_s = a_s / sum a, a_s = 1 - t_{s+1} / t_s), read in the same transaction;
- pixel maps: weight of entry (i, flip) in pixel (y, x) = sum over the patches covering it
  of w / coverage(y, x)  (pixel_weights, dense, as auditor.store.attribution.pixel_attribution).

tests/reports/test_context.py checks every one against auditor.store.attribution on a recorded
store. Patch-set geometry is immutable (identified by the fingerprint of its masks), so it
is cached per process.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass, field

import numpy as np

from auditor.store import database
from auditor.store.database import NotFoundError, json_value

__all__ = ["ImageMeta", "PatchGeometry", "SampleProvenance", "Shares", "StepRow", "image_metadata",
           "patch_geometry"]

META_COLUMNS = ("image_id", "label", "label_name", "source_uri", "owner", "license")



@dataclass(frozen=True)
class ImageMeta:
    """A training image's stored metadata (and its uint8 pixels [C, H, W] when stored)."""

    image_index: int
    image_id: str
    label: int | None = None
    label_name: str | None = None
    source_uri: str | None = None
    owner: str | None = None
    license: str | None = None
    pixels: np.ndarray | None = field(default=None, repr=False, compare=False)

    def as_dict(self) -> dict:
        return {"image_index": self.image_index, **{k: getattr(self, k) for k in META_COLUMNS}}


def image_metadata(conn, dataset_id: int, indices, shape: tuple[int, int, int], pixels: bool = True) -> dict[int, ImageMeta]:
    """ImageMeta of training images `indices` of a dataset, read on an open connection."""
    indices = sorted({int(i) for i in indices})
    if not indices:
        return {}
    columns = ", ".join(META_COLUMNS) + (", pixels" if pixels else "")
    rows = conn.execute(f"SELECT image_index, {columns} FROM training_images WHERE dataset_id = ? AND image_index "
                        "IN (SELECT unnest(?::INTEGER[]))", [int(dataset_id), indices]).fetchall()
    size = int(np.prod(shape))
    out = {}
    for row in rows:
        blob = row[7] if pixels else None
        array = np.frombuffer(blob, np.uint8).reshape(shape) if blob is not None and len(blob) == size else None
        out[int(row[0])] = ImageMeta(int(row[0]), *row[1:7], pixels=array)
    return out


@dataclass(frozen=True)
class PatchGeometry:
    """A stored patch set: boxes per position, membership (position, pixel = y W + x) and
    the derived coverage [H W] and patch_share [K] (see the module docstring)."""

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
    for ps_id, fingerprint, description, height, width, num_patches in missing:
        positions = conn.execute("SELECT position, top, \"left\", height, width FROM patch_positions "
                                 "WHERE patch_set_id = ? ORDER BY position", [ps_id]).fetchnumpy()
        members = conn.execute("SELECT position, y, x FROM patch_pixels WHERE patch_set_id = ? ORDER BY position, y, x",
                               [ps_id]).fetchnumpy()
        position = members["position"].astype(np.int64)
        pixel = members["y"].astype(np.int64) * int(width) + members["x"].astype(np.int64)
        coverage = np.bincount(pixel, minlength=height * width).astype(np.float64)
        inverse = np.divide(1.0, coverage, out=np.zeros_like(coverage), where=coverage > 0)
        patch_share = np.bincount(position, weights=inverse[pixel], minlength=num_patches) / (height * width)
        top = np.zeros(num_patches, np.int64)
        left, box_h, box_w = top.copy(), top.copy(), top.copy()
        p = positions["position"].astype(np.int64)
        top[p], left[p] = positions["top"], positions["left"]
        box_h[p], box_w[p] = positions["height"], positions["width"]
        geometry = PatchGeometry(int(ps_id), fingerprint, json_value(description) or {}, int(height), int(width),
                                 int(num_patches), top, left, box_h, box_w, position, pixel, coverage, patch_share)
        out[int(ps_id)] = geometry
        with _GEOMETRY_LOCK:
            _GEOMETRY[(fingerprint, int(ps_id))] = geometry
            while len(_GEOMETRY) > _GEOMETRY_CACHE_SIZE:
                _GEOMETRY.popitem(last=False)
    return out


@dataclass(frozen=True)
class StepRow:
    """One recorded step of the sample: t, t_next, its patch set, z_t and D(z_t) (float32 [C, H, W])."""

    step: int
    t: float
    t_next: float
    patch_set_id: int
    z: np.ndarray = field(repr=False)
    denoised: np.ndarray = field(repr=False)


@dataclass(frozen=True)
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
        return Shares(self.image_index[:n], self.share[:n], self.flip_share[:n],
                      None if self.patches is None else self.patches[:n], None if self.steps is None else self.steps[:n])


class SampleProvenance:
    """Everything the store holds about one sample (see the module docstring).

    Attributes: db_path; run (dict: id, status, dataset_id, denoiser, sampler, seed,
    num_samples, top_k, mass_threshold, versions, command, writer, created_at,
    finished_at, timings, error, kind, details); dataset (dict: id, fingerprint, name, source, channels,
    height, width, count, created_at); sample_index; seed; final_image (float32 [C, H, W]
    or None while the run is not complete); steps (list of StepRow, ascending);
    geometry (patch_set_id -> PatchGeometry); weights and stats (column arrays of the
    sample's patch_weights and patch_stats rows); images (image_index -> ImageMeta for the
    images fetched so far).
    """

    _RUN = ("id", "status", "dataset_id", "denoiser", "sampler", "seed", "num_samples", "top_k", "mass_threshold",
            "versions", "command", "writer", "created_at", "finished_at", "timings", "error", "kind", "details")
    _DATASET = ("id", "fingerprint", "name", "source", "channels", "height", "width", "count", "created_at")

    def __init__(self, db_path, run: dict, dataset: dict, sample_index: int, seed: int, final_image, steps,
                 geometry, weights, stats, shares):
        self.db_path = db_path
        self.run, self.dataset = run, dataset
        self.sample_index, self.seed, self.final_image = sample_index, seed, final_image
        self.steps: list[StepRow] = steps
        self.geometry: dict[int, PatchGeometry] = geometry
        self.weights, self.stats, self.shares = weights, stats, shares
        self.images: dict[int, ImageMeta] = {}
        self._by_step = {row.step: row for row in steps}
        self._step_shares: dict[int, Shares] | None = None

    # -- loading -----------------------------------------------------------------------
    @property
    def shape(self) -> tuple[int, int, int]:
        return int(self.dataset["channels"]), int(self.dataset["height"]), int(self.dataset["width"])

    @classmethod
    def load(cls, db_path, run_id: int, sample_index: int, *, images=(),
             timeout: float = database.DEFAULT_TIMEOUT) -> "SampleProvenance":
        """Read the sample in one read-only transaction (plus the metadata of `images`)."""
        with database.connect(db_path, read_only=True, timeout=timeout, check_schema=True) as conn:
            data = cls.read(conn, db_path, run_id, sample_index)
            data.fetch_images(conn, images)
        return data

    @classmethod
    def read(cls, conn, db_path, run_id: int, sample_index: int) -> "SampleProvenance":
        """As `load`, on an open connection. NotFoundError for an unknown run or sample."""
        try:
            run_id, sample_index = int(run_id), int(sample_index)
        except (TypeError, ValueError):
            raise NotFoundError(f"{db_path}: run and sample must be integers, got {run_id!r} / {sample_index!r}") from None
        row = conn.execute(f"SELECT {', '.join('r.' + c for c in cls._RUN)}, "
                           f"{', '.join('d.' + c for c in cls._DATASET)} "
                           "FROM runs r JOIN datasets d ON d.id = r.dataset_id WHERE r.id = ?", [run_id]).fetchone()
        if row is None:
            raise NotFoundError(f"{db_path}: no run {run_id}")
        run = dict(zip(cls._RUN, row[:len(cls._RUN)]))
        for key in ("denoiser", "sampler", "versions", "command", "writer", "timings", "details"):
            run[key] = json_value(run[key])
        dataset = dict(zip(cls._DATASET, row[len(cls._RUN):]))
        if not 0 <= sample_index < run["num_samples"]:
            raise NotFoundError(f"{db_path}: run {run_id} has no sample {sample_index} "
                                f"(samples 0..{run['num_samples'] - 1})")
        shape = (dataset["channels"], dataset["height"], dataset["width"])
        seed, final = conn.execute("SELECT seed, final_image FROM samples WHERE run_id = ? AND sample_index = ?",
                                   [run_id, sample_index]).fetchone() or (run["seed"] + sample_index, None)
        final_image = None if final is None else np.frombuffer(final, "<f4").reshape(shape).astype(np.float32)
        steps = [StepRow(int(s), float(t), float(tn), int(ps), np.frombuffer(z, "<f4").reshape(shape).astype(np.float32),
                         np.frombuffer(d, "<f4").reshape(shape).astype(np.float32))
                 for s, t, tn, ps, z, d in conn.execute(
                     "SELECT step, t, t_next, patch_set_id, z, denoised FROM steps WHERE run_id = ? AND sample_index = ? "
                     "ORDER BY step", [run_id, sample_index]).fetchall()]
        weights = conn.execute("SELECT step, position, image_index, flip, source_top, source_left, weight "
                               "FROM patch_weights WHERE run_id = ? AND sample_index = ?",
                               [run_id, sample_index]).fetchnumpy()
        stats = conn.execute("SELECT step, position, mass, entropy, ess FROM patch_stats "
                             "WHERE run_id = ? AND sample_index = ?", [run_id, sample_index]).fetchnumpy()
        shares = conn.execute("SELECT step, image_index, share, flip_share, patches FROM step_shares "
                              "WHERE run_id = ? AND sample_index = ? ORDER BY step, share DESC, image_index",
                              [run_id, sample_index]).fetchnumpy()
        weights = {k: np.asarray(v) for k, v in weights.items()}
        weights["weight"] = weights["weight"].astype(np.float64)  # as the views: CAST(weight AS DOUBLE)
        stats = {k: np.asarray(v) for k, v in stats.items()}
        shares = {k: np.asarray(v) for k, v in shares.items()}
        trajectory = conn.execute("SELECT image_index, share, flip_share, steps FROM trajectory_sources "
                                  "WHERE run_id = ? AND sample_index = ? ORDER BY share DESC, image_index",
                                  [run_id, sample_index]).fetchnumpy()
        shares["trajectory"] = Shares(np.asarray(trajectory["image_index"]).astype(np.int64),
                                      np.asarray(trajectory["share"]).astype(np.float64),
                                      np.asarray(trajectory["flip_share"]).astype(np.float64),
                                      steps=np.asarray(trajectory["steps"]).astype(np.int64))
        geometry = patch_geometry(conn, [s.patch_set_id for s in steps])
        return cls(db_path, run, dataset, sample_index, int(seed), final_image, steps, geometry, weights, stats,
                   shares)

    def fetch_images(self, conn, indices, pixels: bool = True) -> dict[int, ImageMeta]:
        """Read (on an open connection) the metadata of the images not fetched yet; returns them all."""
        wanted = {int(i) for i in indices}
        missing = wanted - set(self.images)
        if missing:
            self.images.update(image_metadata(conn, self.dataset["id"], missing, self.shape, pixels))
        return {i: self.images[i] for i in wanted if i in self.images}

    def image_ids(self, indices, db_path=None, timeout: float = database.DEFAULT_TIMEOUT) -> dict[int, str]:
        """Image ids of training images (read from the store if not fetched yet)."""
        indices = [int(i) for i in indices]
        if any(i not in self.images for i in indices):
            with database.connect(db_path or self.db_path, read_only=True, timeout=timeout) as conn:
                self.fetch_images(conn, indices, pixels=False)
        return {i: self.images[i].image_id for i in indices if i in self.images}

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
        """Trajectory weight of each recorded step (auditor.store.attribution.step_coefficients)."""
        written = {row.step: 1.0 - row.t_next / row.t for row in self.steps}
        total = sum(written.values())
        return {step: a / total for step, a in written.items()} if total > 0 else {}

    # -- shares --------------------------------------------------------------------------
    def all_step_shares(self) -> dict[int, Shares]:
        """Shares of every recorded step (view step_sources), largest first."""
        if self._step_shares is None:
            step = self.shares["step"].astype(np.int64)
            self._step_shares = {}
            for row in self.steps:
                where = step == row.step  # rows are already ordered by share DESC, image_index
                self._step_shares[row.step] = Shares(
                    self.shares["image_index"][where].astype(np.int64), self.shares["share"][where].astype(np.float64),
                    self.shares["flip_share"][where].astype(np.float64), patches=self.shares["patches"][where])
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
    def pixel_attribution(self, step: int | None = None) -> dict:
        """Dense per-pixel attribution of D(z_t) at `step`, as auditor.store.attribution.pixel_attribution:
        {"image_index" [E], "flip" [E], "weights" [E, H, W] float64} (numpy)."""
        row = self.step_row(step)
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
        row = np.repeat(np.arange(len(position)), counts)
        offset = np.arange(len(row)) - np.repeat(np.cumsum(counts) - counts, counts)
        pixel = geometry.member_pixel[starts[position][row] + offset]
        size = height * width
        maps = np.bincount(inverse[row] * size + pixel, weights=self.weights["weight"][select][row],
                           minlength=len(entries) * size).reshape(len(entries), size)
        maps /= np.where(geometry.coverage > 0, geometry.coverage, 1.0)
        return {"image_index": entries // 2, "flip": entries % 2 == 1, "weights": maps.reshape(len(entries), height,
                                                                                                width)}
