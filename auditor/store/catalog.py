"""Listings and lookups the report service's JSON API reads: a run's samples and steps, source
counts, stored images, and training images by index, id or search.

Each function opens one short read-only transaction. Unknown ids are NotFoundErrors naming
the store; a run and its dataset are read with auditor.store.runs.read_run. Attribution
itself (shares, pixel weights, usage) is auditor.store.attribution's.
"""

from __future__ import annotations

import os

from auditor.errors import NotFoundError, UserError
from auditor.store import database
from auditor.store.database import json_value
from auditor.store.runs import check_sample_index, read_run

__all__ = ["TRAINING_IMAGE_COLUMNS", "count_pixel_sources", "count_sources", "images_without_pixels",
           "list_samples", "list_training_images", "read_run_record", "run_status", "sample_detail",
           "sample_image_blob", "training_image", "training_image_index"]

TRAINING_IMAGE_COLUMNS = ("image_index", "image_id", "sha256", "label", "label_name", "source_uri", "owner",
                          "license", "extra")
_STEP_COLUMNS = ("step", "t", "t_next", "patch_set_id", "patch_set", "num_patches", "mean_mass", "mean_entropy",
                 "mean_ess")


def _connect(db_path, timeout: float):
    return database.connect(db_path, read_only=True, timeout=timeout)


# ---------------------------------------------------------------------------------------
# Runs and samples
# ---------------------------------------------------------------------------------------
def run_status(db_path: str | os.PathLike, run_id: int, timeout: float = database.DEFAULT_TIMEOUT) -> str | None:
    """The run's status (running, complete, failed), or None if there is no such run."""
    with _connect(db_path, timeout) as conn:
        row = conn.execute("SELECT status FROM runs WHERE id = ?", [int(run_id)]).fetchone()
    return None if row is None else row[0]


def read_run_record(db_path: str | os.PathLike, run_id: int, sample_index: int | None = None,
                    timeout: float = database.DEFAULT_TIMEOUT) -> tuple[dict, dict]:
    """(run, dataset) as read_run gives them; with `sample_index`, NotFoundError unless the run has that sample."""
    with _connect(db_path, timeout) as conn:
        run, dataset = read_run(conn, db_path, run_id)
    if sample_index is not None:
        check_sample_index(db_path, run, sample_index)
    return run, dataset


def list_samples(db_path: str | os.PathLike, run_id: int, *, limit: int, offset: int,
                 timeout: float = database.DEFAULT_TIMEOUT) -> tuple[int, list[dict]]:
    """(the run's planned sample count, one page of its samples in index order). Each sample:
    sample_index, seed, complete (final image recorded), steps_recorded."""
    with _connect(db_path, timeout) as conn:
        run, _ = read_run(conn, db_path, run_id)
        rows = conn.execute("""
            SELECT s.sample_index, s.seed, s.final_image IS NOT NULL,
                   (SELECT count(*) FROM steps st WHERE st.run_id = s.run_id AND st.sample_index = s.sample_index)
            FROM samples s WHERE s.run_id = ? ORDER BY s.sample_index LIMIT ? OFFSET ?""",
                            [run["id"], int(limit), int(offset)]).fetchall()
    return int(run["num_samples"]), [{"sample_index": i, "seed": seed, "complete": bool(done), "steps_recorded": n}
                                     for i, seed, done, n in rows]


def sample_detail(db_path: str | os.PathLike, run_id: int, sample_index: int,
                  timeout: float = database.DEFAULT_TIMEOUT) -> dict:
    """One sample: run, dataset (read_run), seed, complete, and its recorded steps in order, each
    with t, t_next, its patch set (id, description, size) and mean mass, entropy and ESS."""
    with _connect(db_path, timeout) as conn:
        run, dataset = read_run(conn, db_path, run_id)
        index = check_sample_index(db_path, run, sample_index)
        row = conn.execute("SELECT seed, final_image IS NOT NULL FROM samples WHERE run_id = ? AND sample_index = ?",
                           [run["id"], index]).fetchone()
        if row is None:
            raise NotFoundError(f"{db_path}: run {run['id']} has not recorded sample {index} yet")
        steps = conn.execute("""
            SELECT st.step, st.t, st.t_next, st.patch_set_id, ps.description, ps.num_patches,
                   avg(pst.mass), avg(pst.entropy), avg(pst.ess)
            FROM steps st JOIN patch_sets ps ON ps.id = st.patch_set_id
            LEFT JOIN patch_stats pst ON pst.run_id = st.run_id AND pst.sample_index = st.sample_index
                                      AND pst.step = st.step
            WHERE st.run_id = ? AND st.sample_index = ?
            GROUP BY ALL ORDER BY st.step""", [run["id"], index]).fetchall()
    items = []
    for values in steps:
        step = dict(zip(_STEP_COLUMNS, values))
        step["patch_set"] = json_value(step["patch_set"])
        items.append(step)
    return {"run": run, "dataset": dataset, "seed": row[0], "complete": bool(row[1]), "steps": items}


def count_sources(db_path: str | os.PathLike, run_id: int, sample_index: int, *, step: int | None = None,
                  trajectory: bool = False, timeout: float = database.DEFAULT_TIMEOUT) -> int:
    """How many training images the sample's final image (or D(z_t) at `step`, or its whole
    trajectory) has a share of."""
    if trajectory:
        sql, params = "FROM trajectory_sources WHERE run_id = ? AND sample_index = ?", [run_id, sample_index]
    elif step is None:
        sql, params = "FROM sample_sources WHERE run_id = ? AND sample_index = ?", [run_id, sample_index]
    else:
        sql, params = "FROM step_sources WHERE run_id = ? AND sample_index = ? AND step = ?", [run_id, sample_index,
                                                                                               step]
    with _connect(db_path, timeout) as conn:
        return int(conn.execute("SELECT count(*) " + sql, [int(p) for p in params]).fetchone()[0])


def count_pixel_sources(db_path: str | os.PathLike, run_id: int, sample_index: int, step: int, y: int, x: int,
                        timeout: float = database.DEFAULT_TIMEOUT) -> tuple[dict, int]:
    """(dataset, how many training images output pixel (y, x) of D(z_t) at `step` draws on).
    NotFoundError for an unknown run or sample, UserError for a pixel outside the image."""
    with _connect(db_path, timeout) as conn:
        run, dataset = read_run(conn, db_path, run_id)
        index = check_sample_index(db_path, run, sample_index)
        if not (0 <= y < dataset["height"] and 0 <= x < dataset["width"]):
            raise UserError(f"pixel (y={y}, x={x}) is outside the {dataset['height']}x{dataset['width']} image")
        total = conn.execute("SELECT count(DISTINCT image_index) FROM pixel_weights WHERE run_id = ? AND "
                             "sample_index = ? AND step = ? AND y = ? AND x = ?",
                             [run["id"], index, int(step), int(y), int(x)]).fetchone()[0]
    return dataset, int(total)


def sample_image_blob(db_path: str | os.PathLike, run_id: int, sample_index: int, step: int | None = None,
                      what: str = "denoised", timeout: float = database.DEFAULT_TIMEOUT) -> tuple[bytes, tuple]:
    """(stored image blob, its shape (C, H, W)): the final image, or at `step` D(z_t)
    (`what`='denoised') or z_t ('z'). NotFoundError while it is not recorded."""
    if what not in ("denoised", "z"):
        raise UserError(f"unknown image {what!r}; choose from denoised, z")
    with _connect(db_path, timeout) as conn:
        run, dataset = read_run(conn, db_path, run_id)
        index = check_sample_index(db_path, run, sample_index)
        if step is None:
            row = conn.execute("SELECT final_image FROM samples WHERE run_id = ? AND sample_index = ?",
                               [run["id"], index]).fetchone()
            if row is None or row[0] is None:
                raise NotFoundError(f"run {run['id']} ({run['status']}) has no final image for sample {index} yet")
        else:
            row = conn.execute(f"SELECT {what} FROM steps WHERE run_id = ? AND sample_index = ? AND step = ?",
                               [run["id"], index, int(step)]).fetchone()
            if row is None:
                raise NotFoundError(f"run {run['id']} sample {index} has no recorded step {step}")
    return row[0], (dataset["channels"], dataset["height"], dataset["width"])


# ---------------------------------------------------------------------------------------
# Training images
# ---------------------------------------------------------------------------------------
def _image(values) -> dict:
    row = dict(zip(TRAINING_IMAGE_COLUMNS, values))
    row["extra"] = json_value(row["extra"])
    return row


def _require_dataset(conn, db_path, dataset_id: int) -> int:
    """The dataset's image count; NotFoundError if there is no such dataset."""
    row = conn.execute("SELECT count FROM datasets WHERE id = ?", [int(dataset_id)]).fetchone()
    if row is None:
        raise NotFoundError(f"{db_path}: no dataset {dataset_id}")
    return int(row[0])


def list_training_images(db_path: str | os.PathLike, dataset_id: int, *, image_id: str | None = None,
                         source_uri: str | None = None, owner: str | None = None, label: int | None = None,
                         limit: int = 50, offset: int = 0,
                         timeout: float = database.DEFAULT_TIMEOUT) -> tuple[list[dict], int]:
    """One page of the dataset's training images in index order, and how many match in all:
    `image_id` exactly, `source_uri` and `owner` as case-insensitive parts, `label` exactly."""
    where, params = ["dataset_id = ?"], [int(dataset_id)]
    for value, condition in ((image_id, "image_id = ?"), (source_uri, "contains(lower(source_uri), lower(?))"),
                             (owner, "contains(lower(owner), lower(?))"), (label, "label = ?")):
        if value is not None:
            where.append(condition)
            params.append(value)
    sql = " AND ".join(where)
    with _connect(db_path, timeout) as conn:
        _require_dataset(conn, db_path, dataset_id)
        total = conn.execute(f"SELECT count(*) FROM training_images WHERE {sql}", params).fetchone()[0]
        rows = conn.execute(f"SELECT {', '.join(TRAINING_IMAGE_COLUMNS)} FROM training_images WHERE {sql} "
                            "ORDER BY image_index LIMIT ? OFFSET ?", [*params, int(limit), int(offset)]).fetchall()
    return [_image(r) for r in rows], int(total)


def training_image(db_path: str | os.PathLike, dataset_id: int, image_index: int,
                   timeout: float = database.DEFAULT_TIMEOUT) -> dict:
    """One training image's metadata (TRAINING_IMAGE_COLUMNS, `extra` decoded)."""
    with _connect(db_path, timeout) as conn:
        row = conn.execute(f"SELECT {', '.join(TRAINING_IMAGE_COLUMNS)} FROM training_images "
                           "WHERE dataset_id = ? AND image_index = ?", [int(dataset_id), int(image_index)]).fetchone()
        if row is None:
            count = _require_dataset(conn, db_path, dataset_id)
            raise NotFoundError(f"{db_path}: dataset {dataset_id} has no training image index {image_index} "
                                f"(indices 0..{count - 1})")
    return _image(row)


def training_image_index(db_path: str | os.PathLike, dataset_id: int, image_id: str,
                         timeout: float = database.DEFAULT_TIMEOUT) -> int:
    """The index of the training image with id `image_id` in the dataset."""
    with _connect(db_path, timeout) as conn:
        _require_dataset(conn, db_path, dataset_id)
        row = conn.execute("SELECT image_index FROM training_images WHERE dataset_id = ? AND image_id = ?",
                           [int(dataset_id), image_id]).fetchone()
    if row is None:
        raise NotFoundError(f"{db_path}: dataset {dataset_id} has no training image {image_id!r}")
    return int(row[0])


def images_without_pixels(db_path: str | os.PathLike, dataset_id: int,
                          timeout: float = database.DEFAULT_TIMEOUT) -> int:
    """How many of the dataset's training images have no stored pixels (ingested before revision 0003)."""
    with _connect(db_path, timeout) as conn:
        return int(conn.execute("SELECT count(*) FROM training_images WHERE dataset_id = ? AND pixels IS NULL",
                                [int(dataset_id)]).fetchone()[0])
