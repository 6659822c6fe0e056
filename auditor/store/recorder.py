"""Recording PSPC sampling into the provenance store, one step per short transaction.

`ProvenanceRecorder` is the sampler callback (`pspc.samplers.sample(..., callback=recorder,
request=WeightRequest(top_k, mass))`). At every step it turns what the engine computed into
Arrow tables with vectorised numpy code (no Python loop over rows):

  steps          one row per sample: t, t_next, patch set, z_t and D(z_t) (float32 bytes)
  patch_weights  one row per kept posterior weight (entry >= 0): position, rank, training
                 image index, flip flag, source box corner in the ORIGINAL image, weight
  patch_stats    one row per (sample, position): captured mass, entropy, ESS
  step_shares    one row per (sample, training image): the share of D(z_t) built from it
                 (pspc.posterior.attribution: sum over patches of weight x patch share)

and writes them in ONE transaction (`auditor.store.database.connect`: open, insert, commit, close),
so readers in other processes get the file between steps. A patch set is stored once per
database (by fingerprint) in the transaction of the first step that uses it. The last
step's transaction also writes the final images and marks the run complete, so a run is
complete exactly when all its data is there. A step whose transaction cannot get the lock
within the timeout raises LockedError naming the step ("the writer lost the store lock at
step N of run R"), which the workflow records as the run's error (auditor.store.runs.mark_failed).

`ExplainedRecorder` records a network's trajectory the same way, with the network's own
D(z_t) and its distance to PSPC's in step_agreement (auditor.workflows.comparison, audit).
"""

from __future__ import annotations

import hashlib
import json
import time
from contextlib import contextmanager
from datetime import datetime, timezone
from typing import Callable

import numpy as np
import pyarrow as pa
import torch

from pspc.posterior.attribution import contributions, patch_shares, share_totals
from pspc.posterior.patch_sets import PatchSet
from pspc.posterior.weights import PosteriorWeights

from auditor.errors import InternalError, LockedError, StoreError, UserError
from auditor.store import database

__all__ = ["ExplainedRecorder", "ProvenanceRecorder", "blobs", "from_blob", "insert_table", "patch_set_fingerprint",
           "to_blob", "utcnow", "write_final_images"]


def utcnow() -> datetime:
    """Timestamps in the store: naive UTC."""
    return datetime.now(timezone.utc).replace(tzinfo=None)


def to_blob(image: torch.Tensor) -> bytes:
    """One image [C, H, W] as raw little-endian float32 bytes (the store's image format)."""
    return image.detach().cpu().to(torch.float32).contiguous().numpy().astype("<f4", copy=False).tobytes()


def from_blob(blob: bytes, shape) -> torch.Tensor:
    """Inverse of to_blob: a float32 tensor of `shape` [C, H, W]; a blob of another size is a
    damaged store, named as such (not numpy's "buffer size must be a multiple of ...")."""
    expected = 4 * int(np.prod(tuple(shape)))
    if blob is None or len(blob) != expected:
        raise StoreError(f"a stored image array holds {0 if blob is None else len(blob)} bytes, not the {expected} "
                         f"of float32 {list(shape)}: the store is damaged (restore it from a backup)")
    return torch.from_numpy(np.frombuffer(blob, dtype="<f4").astype(np.float32).reshape(tuple(shape)).copy())


def blobs(batch: torch.Tensor) -> pa.Array:
    """A batch [B, C, H, W] as one to_blob per row (an Arrow binary column)."""
    flat = batch.detach().cpu().to(torch.float32).contiguous().numpy().astype("<f4", copy=False)
    flat = flat.reshape(flat.shape[0], -1)
    return pa.array([row.tobytes() for row in flat], type=pa.binary())


def patch_set_fingerprint(patch_set: PatchSet) -> str:
    """sha256 of the dense masks [K, H, W] (as bytes) and their shape."""
    masks = patch_set.masks().to(torch.bool).contiguous()
    digest = hashlib.sha256()
    digest.update(("bool:" + "x".join(map(str, masks.shape))).encode())
    digest.update(masks.numpy().tobytes())
    return digest.hexdigest()


class _PatchSetInfo:
    """What the recorder needs of a patch set: fingerprint, source box corners (plain and
    mirrored) per position, and the rows of patch_positions / patch_pixels."""

    def __init__(self, patch_set: PatchSet):
        self.patch_set = patch_set  # keeps the object alive: the cache is keyed by id()
        masks = patch_set.masks().to(torch.bool)
        self.fingerprint = patch_set_fingerprint(patch_set)
        self.num_patches, self.height, self.width = masks.shape
        self.top, self.left, self.box_h, self.box_w = self._boxes(masks)
        self.flip_top, self.flip_left, _, _ = self._boxes(masks.flip(-1))
        self.masks = masks
        self.description = patch_set.describe()
        self.patch_share = patch_shares(masks).numpy()  # each patch's share of the image (Eq. 11)

    @staticmethod
    def _boxes(masks: torch.Tensor):
        rows = masks.any(2).numpy()  # [K, H]
        cols = masks.any(1).numpy()  # [K, W]
        top = rows.argmax(1)
        left = cols.argmax(1)
        bottom = rows.shape[1] - 1 - rows[:, ::-1].argmax(1)
        right = cols.shape[1] - 1 - cols[:, ::-1].argmax(1)
        return top.astype(np.int16), left.astype(np.int16), (bottom - top + 1).astype(np.int16), (right - left + 1).astype(np.int16)

    def positions_table(self, patch_set_id: int) -> pa.Table:
        k = self.num_patches
        return pa.table({"patch_set_id": np.full(k, patch_set_id, np.int64), "position": np.arange(k, dtype=np.int32),
                         "top": self.top, "left": self.left, "height": self.box_h, "width": self.box_w})

    def pixels_table(self, patch_set_id: int) -> pa.Table:
        position, y, x = self.masks.nonzero().numpy().T
        return pa.table({"patch_set_id": np.full(len(position), patch_set_id, np.int64),
                         "position": position.astype(np.int32), "y": y.astype(np.int16), "x": x.astype(np.int16)})


def insert_table(conn, table: str, data: pa.Table) -> None:
    """INSERT the rows of an Arrow table into `table` (its columns by name), on an open connection."""
    name = f"_arrow_{table}"
    conn.register(name, data)
    try:
        columns = ", ".join(f'"{c}"' for c in data.column_names)
        conn.execute(f'INSERT INTO {table} ({columns}) SELECT {columns} FROM {name}')
    finally:
        conn.unregister(name)


def write_final_images(conn, run_id: int, final: torch.Tensor) -> None:
    """Set samples.final_image of a run's samples (batch row b = sample_index b), on an open connection."""
    images = pa.table({"sample_index": np.arange(final.shape[0], dtype=np.int32), "final_image": blobs(final)})
    conn.register("_arrow_final", images)
    try:
        conn.execute("UPDATE samples SET final_image = f.final_image FROM _arrow_final AS f "
                     "WHERE samples.run_id = ? AND samples.sample_index = f.sample_index", [int(run_id)])
    finally:
        conn.unregister("_arrow_final")


class ProvenanceRecorder:
    """Sampler callback that writes every step of a run to the store.

    db_path: the DuckDB file; run_id: a run inserted as 'running' with its samples rows;
    num_images: N of the training set (entries >= N are the mirrored copies); time_steps:
    the sampler's t_0 > ... > t_S = 0 (S = number of steps). Batch row b is sample_index
    b. The last step (t_next = 0) also stores the final images (computed exactly as the
    sampler does) and completes the run in the same transaction.

    Per-step timings go to `step_seconds` (conversion + transaction) and the rows written
    to `rows_written`; `sampling_started` is the wall clock of the run's start (for the
    timings stored with the run).
    """

    def __init__(self, db_path, run_id: int, num_images: int, time_steps, *, timeout: float = database.DEFAULT_TIMEOUT,
                 sampling_started: float | None = None, extra_timings: dict | None = None):
        self.db_path = db_path
        self.run_id = int(run_id)
        self.num_images = int(num_images)
        self.time_steps = [float(t) for t in time_steps]
        self.timeout = timeout
        self.sampling_started = time.perf_counter() if sampling_started is None else sampling_started
        self.extra_timings = dict(extra_timings or {})
        self.step_seconds: list[float] = []
        self.rows_written = 0
        self.steps_written: list[int] = []
        self._patch_sets: dict[int, tuple[_PatchSetInfo, int]] = {}  # id(PatchSet) -> (info, db id)
        self._info: dict[int, _PatchSetInfo] = {}

    # -- conversion ----------------------------------------------------------------------
    def _info_of(self, patch_set: PatchSet) -> _PatchSetInfo:
        key = id(patch_set)
        if key not in self._info:
            self._info[key] = _PatchSetInfo(patch_set)
        return self._info[key]

    def _weight_tables(self, step: int, index: torch.Tensor, weights: PosteriorWeights, info: _PatchSetInfo):
        entry = weights.entry.cpu().numpy()
        valid = entry >= 0
        b, position, rank = np.nonzero(valid)
        kept = entry[valid]
        flip = kept >= self.num_images
        samples = index.cpu().numpy().astype(np.int32)
        n = len(kept)
        rows = pa.table({
            "run_id": np.full(n, self.run_id, np.int64),
            "sample_index": samples[b],
            "step": np.full(n, step, np.int16),
            "position": position.astype(np.int32),
            "rank": rank.astype(np.int16),
            "image_index": (kept % self.num_images).astype(np.int32),
            "flip": flip,
            "source_top": np.where(flip, info.flip_top[position], info.top[position]),
            "source_left": np.where(flip, info.flip_left[position], info.left[position]),
            "weight": weights.weight.cpu().numpy()[valid].astype(np.float32),
        })
        shares = self._share_table(step, samples[b], position, rows.column("image_index").to_numpy(), flip,
                                   contributions(rows.column("weight").to_numpy(), info.patch_share, position))
        batch, num_patches = weights.mass.shape
        stats = pa.table({
            "run_id": np.full(batch * num_patches, self.run_id, np.int64),
            "sample_index": np.repeat(samples, num_patches),
            "step": np.full(batch * num_patches, step, np.int16),
            "position": np.tile(np.arange(num_patches, dtype=np.int32), batch),
            "mass": weights.mass.cpu().numpy().astype(np.float32).ravel(),
            "entropy": weights.entropy.cpu().numpy().astype(np.float32).ravel(),
            "ess": weights.ess.cpu().numpy().astype(np.float32).ravel(),
        })
        return rows, stats, shares

    def _share_table(self, step: int, sample, position, image, flip, contribution) -> pa.Table:
        """step_shares rows: per (sample, image), the sum of weight x patch share (flip part
        apart) and the number of distinct patch positions that kept the image."""
        keys, share, flip_share, patches = share_totals(sample.astype(np.int64) * self.num_images + image,
                                                        contribution, flip, position)
        return pa.table({
            "run_id": np.full(len(keys), self.run_id, np.int64),
            "sample_index": (keys // self.num_images).astype(np.int32),
            "step": np.full(len(keys), step, np.int16),
            "image_index": (keys % self.num_images).astype(np.int32),
            "share": share,
            "flip_share": flip_share,
            "patches": patches.astype(np.int32),
        })

    # -- the callback ----------------------------------------------------------------------
    def __call__(self, step: int, t: float, z: torch.Tensor, denoised: torch.Tensor, weights: list | None) -> None:
        started = time.perf_counter()
        if not weights:
            raise UserError("the provenance recorder needs posterior weights: sample a PSPC denoiser "
                            "with request=WeightRequest(...)")
        step = int(step)
        t_next = self.time_steps[step + 1]
        batch = z.shape[0]
        patch_set_of = np.full(batch, -1, np.int64)
        groups = []
        for index, group in weights:
            info = self._info_of(group.patch_set)
            groups.append((index, group, info))
        weight_tables, stat_tables, share_tables = [], [], []
        for index, group, info in groups:
            w, s, shares = self._weight_tables(step, index, group, info)
            weight_tables.append(w)
            stat_tables.append(s)
            share_tables.append(shares)
        weight_rows, stat_rows, share_rows = (pa.concat_tables(tables) for tables in
                                              (weight_tables, stat_tables, share_tables))
        last = t_next == 0 or step == len(self.time_steps) - 2
        if last:  # exactly the sampler's last update (t_next = 0: no Heun correction)
            final = z + (t_next - t) * ((z - denoised) / t)
        new_ids: dict[int, tuple[_PatchSetInfo, int]] = {}
        with self._transaction(step) as conn:
            for index, group, info in groups:
                key = id(group.patch_set)
                if key in self._patch_sets:
                    ps_id = self._patch_sets[key][1]
                elif key in new_ids:
                    ps_id = new_ids[key][1]
                else:
                    ps_id = self._register(conn, info)
                    new_ids[key] = (info, ps_id)
                patch_set_of[index.cpu().numpy()] = ps_id
            if (patch_set_of < 0).any():
                raise InternalError(f"step {step}: the posterior weights do not cover every sample of the batch")
            steps = pa.table({
                "run_id": np.full(batch, self.run_id, np.int64),
                "sample_index": np.arange(batch, dtype=np.int32),
                "step": np.full(batch, step, np.int16),
                "t": np.full(batch, float(t)),
                "t_next": np.full(batch, float(t_next)),
                "patch_set_id": patch_set_of,
                "z": blobs(z),
                "denoised": blobs(denoised),
            })
            for table, rows in (("steps", steps), ("patch_weights", weight_rows), ("patch_stats", stat_rows),
                                ("step_shares", share_rows)):
                self._insert(conn, table, rows)
            self._write_extras(conn, step)
            if last:
                self._complete(conn, final, started)
        self._patch_sets.update(new_ids)  # only once committed
        self.rows_written += steps.num_rows + weight_rows.num_rows + stat_rows.num_rows + share_rows.num_rows
        self.steps_written.append(step)
        self.step_seconds.append(time.perf_counter() - started)

    @contextmanager
    def _transaction(self, step: int):
        """The step's one transaction. When the lock cannot be had within the timeout the
        LockedError names the step and run (what the run's error then says)."""
        try:
            with database.connect(self.db_path, timeout=self.timeout) as conn:
                yield conn
        except LockedError as exc:
            raise LockedError(f"the writer lost the store lock at step {step} of run {self.run_id} (nothing of "
                              f"that step was written): {exc}") from None

    def _insert(self, conn, table: str, rows: pa.Table) -> None:
        """Write one table's rows of the step (subclasses: another sink, auditor.store.parquet_recorder)."""
        insert_table(conn, table, rows)

    def _write_extras(self, conn, step: int) -> None:
        """Rows that belong in this step's transaction besides the attribution (subclasses:
        the network's output at the step: ExplainedRecorder)."""

    def _register(self, conn, info: _PatchSetInfo) -> int:
        """The patch set's id in the store, inserting it (with positions and pixels) if new."""
        found = conn.execute("SELECT id FROM patch_sets WHERE fingerprint = ?", [info.fingerprint]).fetchall()
        if found:
            return int(found[0][0])
        ps_id = conn.execute(
            "INSERT INTO patch_sets (fingerprint, description, height, width, num_patches) VALUES (?, ?, ?, ?, ?) "
            "RETURNING id", [info.fingerprint, json.dumps(info.description), info.height, info.width,
                             info.num_patches]).fetchall()[0][0]
        insert_table(conn, "patch_positions", info.positions_table(ps_id))
        insert_table(conn, "patch_pixels", info.pixels_table(ps_id))
        return int(ps_id)

    def _timings(self, started: float) -> dict:
        """runs.timings of the run completed by the step that started at `started` (perf_counter)."""
        recording = sum(self.step_seconds) + (time.perf_counter() - started)
        total = time.perf_counter() - self.sampling_started
        return {**self.extra_timings, "total": total, "recording": recording, "sampling": total - recording,
                "steps_recorded": len(self.steps_written) + 1}

    def _complete(self, conn, final: torch.Tensor, started: float) -> None:
        write_final_images(conn, self.run_id, final)
        timings = self._timings(started)
        # (no RETURNING: DuckDB treats UPDATE ... RETURNING on a referenced table as delete + insert)
        status = conn.execute("SELECT status FROM runs WHERE id = ?", [self.run_id]).fetchall()
        if not status or status[0][0] != "running":
            raise StoreError(f"{self.db_path}: run {self.run_id} is no longer 'running'; not completing it")
        conn.execute("UPDATE runs SET status = 'complete', finished_at = ?, timings = ?, error = NULL WHERE id = ?",
                     [utcnow(), json.dumps(timings), self.run_id])


class ExplainedRecorder(ProvenanceRecorder):
    """A ProvenanceRecorder for a network's trajectory explained by PSPC (a network-explained
    run, or an audit's replay): it also writes, in each step's transaction, the network's
    D(z_t) and its distance to PSPC's (step_agreement), staged with `stage` before the step
    is recorded. The final images are `final` when given (an audit: the audited image),
    else the network's output at the last step (the network's sample); `complete_details`
    (network final images -> dict) updates runs.details in the completing transaction."""

    def __init__(self, *args, final: torch.Tensor | None = None,
                 complete_details: Callable[[torch.Tensor], dict] | None = None, details: dict | None = None,
                 **kwargs):
        super().__init__(*args, **kwargs)
        self.final = final
        self.complete_details = complete_details
        self.details = dict(details or {})
        self._staged: tuple[int, pa.Table] | None = None
        self._network_last: torch.Tensor | None = None

    def stage(self, step: int, t: float, network_denoised: torch.Tensor, pspc_denoised: torch.Tensor) -> None:
        """The step's agreement rows: mse and max |error| over pixels, computed in float64."""
        diff = network_denoised.detach().cpu().to(torch.float64) - pspc_denoised.detach().cpu().to(torch.float64)
        batch = diff.shape[0]
        self._staged = (int(step), pa.table({
            "run_id": np.full(batch, self.run_id, np.int64),
            "sample_index": np.arange(batch, dtype=np.int32),
            "step": np.full(batch, step, np.int16),
            "t": np.full(batch, float(t)),
            "network_denoised": blobs(network_denoised),
            "mse": diff.square().flatten(1).mean(1).numpy(),
            "max_abs_error": diff.abs().flatten(1).amax(1).numpy(),
        }))
        self._network_last = network_denoised.detach()

    def _write_extras(self, conn, step: int) -> None:
        if self._staged is None:
            return
        staged_step, rows = self._staged
        if staged_step != step:
            raise InternalError(f"agreement staged for step {staged_step}, recording step {step}")
        insert_table(conn, "step_agreement", rows)
        self._staged = None

    def _complete(self, conn, final: torch.Tensor, started: float) -> None:
        if self.final is not None:
            final = self.final
        elif self._network_last is not None:
            final = self._network_last
        if self.complete_details is not None:
            self.details.update(self.complete_details(self._network_last))
            conn.execute("UPDATE runs SET details = ? WHERE id = ?", [json.dumps(self.details), self.run_id])
        super()._complete(conn, final, started)
