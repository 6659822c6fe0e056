"""Counterfactual runs in the store (revision 0009): what they remove, what they read of their
parent, and what they changed.

A counterfactual run (kind 'counterfactual', auditor.workflows.counterfactual) re-runs one
sample of a parent run with some training images' weights exactly zero. It reads the
parent's recorded steps (z_t, D(z_t), t and the patch set of every step: the counterfactual
uses the very same patch sets, rebuilt from the store) and, in the transaction that
completes it, writes one `counterfactuals` row (the change against the parent) and the
removed set (`counterfactual_removed`). So a counterfactual is complete exactly when its
change is stored.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import torch

from auditor.errors import NotFoundError, StoreError, UserError
from auditor.store import database
from auditor.store.read_models.patches import PatchGeometry, patch_geometry
from auditor.store.recorder import ExplainedRecorder, from_blob, insert_table, utcnow
from auditor.store.runs import check_sample_index, read_run

__all__ = ["COLUMNS", "CounterfactualRecorder", "ParentSample", "ParentStep", "counterfactuals_of",
           "images_by_ids", "images_by_owner", "images_by_uri_prefix", "load_counterfactual", "load_parent_sample",
           "removed_sha256"]

COLUMNS = ("run_id", "parent_run_id", "parent_sample", "mode", "selector", "removed_count", "removed_sha256", "mse",
           "max_abs", "similarity", "descriptor", "diverged_step", "step_changes", "change_map", "seconds",
           "parent_seconds", "created_at")


def removed_sha256(indices) -> str:
    """sha256 of the sorted unique image indices as little-endian int64 bytes (what runs record)."""
    ordered = np.unique(np.asarray(list(indices), dtype=np.int64))
    return hashlib.sha256(ordered.astype("<i8").tobytes()).hexdigest()


# ---------------------------------------------------------------------------------------
# Choosing the removed images
# ---------------------------------------------------------------------------------------
def _column(db_path, sql: str, params: list, timeout: float) -> list:
    """The first column of a read-only query's rows."""
    with database.connect(db_path, read_only=True, timeout=timeout) as conn:
        return [r[0] for r in conn.execute(sql, params).fetchall()]


def images_by_ids(db_path, dataset_id: int, image_ids, *, timeout: float = database.DEFAULT_TIMEOUT) -> list[int]:
    """Image indices of the training image ids (in their order); NotFoundError naming the unknown ones."""
    wanted = [str(i) for i in image_ids]
    with database.connect(db_path, read_only=True, timeout=timeout) as conn:
        found = dict(conn.execute("SELECT image_id, image_index FROM training_images WHERE dataset_id = ? AND image_id "
                                  "IN (SELECT unnest(?::VARCHAR[]))", [int(dataset_id), wanted]).fetchall())
    unknown = [i for i in wanted if i not in found]
    if unknown:
        more = f" and {len(unknown) - 5} more" if len(unknown) > 5 else ""
        raise NotFoundError(f"dataset {dataset_id} has no training image {', '.join(map(repr, unknown[:5]))}{more}")
    return [int(found[i]) for i in wanted]


def images_by_owner(db_path, dataset_id: int, owner: str, *, timeout: float = database.DEFAULT_TIMEOUT) -> list[int]:
    """Image indices of the training images whose owner is exactly `owner`; NotFoundError naming
    a few owners the dataset does have when there is none."""
    found = _column(db_path, "SELECT image_index FROM training_images WHERE dataset_id = ? AND owner = ? "
                     "ORDER BY image_index", [int(dataset_id), str(owner)], timeout)
    if not found:
        owners = _column(db_path, "SELECT DISTINCT owner FROM training_images WHERE dataset_id = ? AND owner "
                                   "IS NOT NULL ORDER BY owner LIMIT 6", [int(dataset_id)], timeout)
        there = f"its owners include {', '.join(map(repr, owners))}" if owners else "no image has an owner"
        raise NotFoundError(f"dataset {dataset_id} has no training image of owner {owner!r} ({there})")
    return [int(i) for i in found]


def images_by_uri_prefix(db_path, dataset_id: int, prefix: str, *,
                         timeout: float = database.DEFAULT_TIMEOUT) -> list[int]:
    """Image indices of the training images whose source_uri starts with `prefix`."""
    if not prefix:
        raise UserError("the source URI prefix is empty: it would match every image that has a URI")
    found = _column(db_path, "SELECT image_index FROM training_images WHERE dataset_id = ? AND "
                     "starts_with(source_uri, ?) ORDER BY image_index", [int(dataset_id), str(prefix)], timeout)
    if not found:
        raise NotFoundError(f"dataset {dataset_id} has no training image whose source URI starts with {prefix!r}")
    return [int(i) for i in found]


# ---------------------------------------------------------------------------------------
# The parent sample
# ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ParentStep:
    step: int
    t: float
    t_next: float
    patch_set_id: int
    z: torch.Tensor  # [C, H, W]
    denoised: torch.Tensor  # [C, H, W]


@dataclass(frozen=True)
class ParentSample:
    """What a counterfactual needs of the sample it re-runs: the run and dataset rows, every
    recorded step, the final image and the stored patch sets' geometry."""

    run: dict
    dataset: dict
    sample_index: int
    steps: list[ParentStep]
    final: torch.Tensor  # [C, H, W]
    geometry: dict[int, PatchGeometry]

    @property
    def shape(self) -> tuple[int, int, int]:
        return (self.dataset["channels"], self.dataset["height"], self.dataset["width"])


def load_parent_sample(db_path, run_id: int, sample_index: int, *,
                       timeout: float = database.DEFAULT_TIMEOUT) -> ParentSample:
    """The recorded sample `sample_index` of run `run_id`; NotFoundError for an unknown run or
    sample, UserError when the run is not complete or the sample has no steps or final image."""
    with database.connect(db_path, read_only=True, timeout=timeout) as conn:
        run, dataset = read_run(conn, db_path, run_id)
        sample_index = check_sample_index(db_path, run, sample_index)
        if run["status"] != "complete":
            raise UserError(f"run {run_id} is {run['status']}, not complete: a counterfactual re-runs a complete "
                            f"sample (resume or finish the run first)")
        final = conn.execute("SELECT final_image FROM samples WHERE run_id = ? AND sample_index = ?",
                             [int(run_id), sample_index]).fetchone()
        rows = conn.execute("SELECT step, t, t_next, patch_set_id, z, denoised FROM steps WHERE run_id = ? AND "
                            "sample_index = ? ORDER BY step", [int(run_id), sample_index]).fetchall()
        geometry = patch_geometry(conn, {int(r[3]) for r in rows})
    if final is None or final[0] is None:
        raise UserError(f"sample {run_id}/{sample_index} has no final image: it is not complete")
    if not rows:
        raise UserError(f"run {run_id} ({run.get('kind') or 'pspc'}) recorded no steps for sample {sample_index}: "
                        f"there is no attribution to re-run")
    shape = (dataset["channels"], dataset["height"], dataset["width"])
    steps = [ParentStep(int(s), float(t), float(tn), int(ps), from_blob(z, shape), from_blob(d, shape))
             for s, t, tn, ps, z, d in rows]
    return ParentSample(run, dataset, sample_index, steps, from_blob(final[0], shape), geometry)


# ---------------------------------------------------------------------------------------
# Writing and reading the outcome
# ---------------------------------------------------------------------------------------
class CounterfactualRecorder(ExplainedRecorder):
    """An ExplainedRecorder whose completing transaction also writes the counterfactual's
    outcome (its `counterfactuals` row and removed set), staged with `stage_outcome` before the
    last step is recorded."""

    def __init__(self, *args, removed: np.ndarray, **kwargs):
        super().__init__(*args, **kwargs)
        self.removed = np.unique(np.asarray(removed, dtype=np.int64))
        self._outcome: dict | None = None

    def stage_outcome(self, row: dict) -> None:
        self._outcome = dict(row)

    def _write_extras(self, conn, step: int) -> None:
        super()._write_extras(conn, step)
        if step != len(self.time_steps) - 2:
            return
        if self._outcome is None:
            raise StoreError(f"counterfactual run {self.run_id}: its outcome was not staged before the last step")
        row = {**self._outcome, "run_id": self.run_id, "removed_count": len(self.removed),
               "removed_sha256": removed_sha256(self.removed), "created_at": utcnow()}
        names = [c for c in COLUMNS if c in row]
        values = [json.dumps(row[c]) if c in ("selector", "step_changes") else row[c] for c in names]
        conn.execute(f"INSERT INTO counterfactuals ({', '.join(names)}) VALUES ({', '.join('?' * len(names))})",
                     values)
        insert_table(conn, "counterfactual_removed", pa.table({
            "run_id": np.full(len(self.removed), self.run_id, np.int64),
            "image_index": self.removed.astype(np.int32)}))


def _outcome(columns, values, shape) -> dict:
    row = dict(zip(columns, values))
    for name in ("selector", "step_changes"):
        row[name] = database.json_value(row[name])
    row["change_map"] = from_blob(row["change_map"], shape)
    return row


_SELECT = (f"SELECT {', '.join('c.' + c for c in COLUMNS)}, d.channels, d.height, d.width FROM counterfactuals AS c "
           f"JOIN runs AS r ON r.id = c.run_id JOIN datasets AS d ON d.id = r.dataset_id")


def load_counterfactual(db_path, run_id: int, *, removed_ids: int = 50,
                        timeout: float = database.DEFAULT_TIMEOUT) -> dict:
    """The outcome of counterfactual run `run_id` with the first `removed_ids` removed images'
    ids; NotFoundError when the run is not a complete counterfactual."""
    with database.connect(db_path, read_only=True, timeout=timeout) as conn:
        found = conn.execute(f"{_SELECT} WHERE c.run_id = ?", [int(run_id)]).fetchone()
        if found is None:
            kind = conn.execute("SELECT kind, status FROM runs WHERE id = ?", [int(run_id)]).fetchone()
            what = "no run" if kind is None else f"a {kind[1]} run of kind {kind[0] or 'pspc'}"
            raise NotFoundError(f"{db_path}: run {run_id} is not a complete counterfactual ({what})")
        removed = conn.execute("SELECT r.image_index, i.image_id FROM counterfactual_removed AS r JOIN runs AS u ON "
                               "u.id = r.run_id JOIN training_images AS i ON i.dataset_id = u.dataset_id AND "
                               "i.image_index = r.image_index WHERE r.run_id = ? ORDER BY r.image_index LIMIT ?",
                               [int(run_id), int(removed_ids)]).fetchall()
    row = _outcome(COLUMNS, found[:len(COLUMNS)], found[len(COLUMNS):])
    row["removed"] = [{"image_index": int(i), "image_id": image_id} for i, image_id in removed]
    return row


def counterfactuals_of(db_path, run_id: int, sample_index: int | None = None, *,
                       timeout: float = database.DEFAULT_TIMEOUT) -> list[dict]:
    """The complete counterfactuals of a parent run (of one of its samples), oldest first."""
    sql, params = f"{_SELECT} WHERE c.parent_run_id = ?", [int(run_id)]
    if sample_index is not None:
        sql, params = sql + " AND c.parent_sample = ?", params + [int(sample_index)]
    with database.connect(db_path, read_only=True, timeout=timeout) as conn:
        rows = conn.execute(sql + " ORDER BY c.run_id", params).fetchall()
    return [_outcome(COLUMNS, r[:len(COLUMNS)], r[len(COLUMNS):]) for r in rows]
