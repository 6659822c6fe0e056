"""Training sets in the provenance store: `datasets` and `training_images`.

A training set is identified by its content fingerprint (TrainingSet.fingerprint: sha256 over
shape and bytes), so ingesting is idempotent: the same pixels give the same dataset id,
whatever the file they were loaded from. The pixels themselves are not copied into the store
(the spec and fingerprint say where they are and prove which they were); each image gets its
own sha256, id and metadata (label, label_name, source_uri, owner, license; any other keys go
to the `extra` JSON column).
"""

from __future__ import annotations

import json
import os
from datetime import datetime, timezone

import numpy as np
import pyarrow as pa

from pspc.data.training_set import TrainingSet

from auditor.store import database
from auditor.errors import NotFoundError, StoreError

__all__ = ["METADATA_COLUMNS", "dataset_rows", "find_dataset", "ingest", "list_datasets", "pixel_column",
           "stored_training_set", "training_pixels"]

METADATA_COLUMNS = ("label", "label_name", "source_uri", "owner", "license")
DATASET_COLUMNS = ("id", "fingerprint", "name", "source", "channels", "height", "width", "count", "created_at")


def _int_label(value) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if hasattr(value, "item") and isinstance(value.item(), int) and not isinstance(value.item(), bool):
        return value.item()  # numpy integer
    return None


def _json_default(value):
    if hasattr(value, "item"):
        return value.item()
    if hasattr(value, "tolist"):
        return value.tolist()
    return str(value)


def training_image_table(data: TrainingSet) -> pa.Table:
    """One row per image (without dataset_id): index, id, sha256, metadata columns and extra JSON."""
    n = len(data)
    columns: dict[str, list] = {name: [] for name in ("image_index", "image_id", "sha256", *METADATA_COLUMNS, "extra")}
    for i in range(n):
        meta = dict(data.metadata[i] or {})
        columns["image_index"].append(i)
        columns["image_id"].append(data.ids[i])
        columns["sha256"].append(data.image_sha256(i))
        label = meta.pop("label", None)
        as_int = _int_label(label)
        if label is not None and as_int is None:
            meta["label"] = label  # a non-integer label is kept verbatim in extra
        columns["label"].append(as_int)
        for name in METADATA_COLUMNS[1:]:
            value = meta.pop(name, None)
            columns[name].append(None if value is None else str(value))
        columns["extra"].append(json.dumps(meta, default=_json_default, sort_keys=True) if meta else None)
    schema = pa.schema([("image_index", pa.int32()), ("image_id", pa.string()), ("sha256", pa.string()),
                        ("label", pa.int32()), ("label_name", pa.string()), ("source_uri", pa.string()),
                        ("owner", pa.string()), ("license", pa.string()), ("extra", pa.string())])
    return pa.table(columns, schema=schema).append_column("pixels", pixel_column(data))


def pixel_column(data: TrainingSet) -> pa.Array:
    """The images as uint8 [C, H, W] bytes, one per row (no copy per image: one buffer, offsets)."""
    flat = data.images.contiguous().numpy().reshape(len(data), -1)
    size = flat.shape[1]
    offsets = pa.array(np.arange(len(data) + 1, dtype=np.int32) * size)
    return pa.BinaryArray.from_buffers(pa.binary(), len(data), [None, pa.py_buffer(offsets.buffers()[1]),
                                                                pa.py_buffer(flat.tobytes())])


def _lookup(conn, fingerprint: str) -> int | None:
    row = conn.execute("SELECT id FROM datasets WHERE fingerprint = ?", [fingerprint]).fetchone()
    return None if row is None else int(row[0])


def ingest(db_path: str | os.PathLike, training_set: TrainingSet, *,
           timeout: float = database.DEFAULT_TIMEOUT) -> tuple[int, bool]:
    """Record a training set and its images; returns (dataset_id, created).

    Idempotent by fingerprint: a set already present returns its id with created=False and
    writes nothing, except the pixels of rows that lack them (stores ingested before schema
    revision 0003). Otherwise the dataset row and all training_images rows, pixels included,
    are written in one short transaction (bulk: an Arrow table, one INSERT ... SELECT).
    """
    if not isinstance(training_set, TrainingSet):
        raise TypeError(f"expected a TrainingSet, got {type(training_set).__name__}")
    database.require_current(db_path, timeout)
    fingerprint = training_set.fingerprint
    with database.connect(db_path, read_only=True, timeout=timeout) as conn:
        existing = _lookup(conn, fingerprint)
        missing = existing is not None and conn.execute(
            "SELECT count(*) FROM training_images WHERE dataset_id = ? AND pixels IS NULL", [existing]).fetchone()[0]
    if existing is not None:
        if missing:
            _backfill_pixels(db_path, existing, training_set, timeout)
        return existing, False

    images = training_image_table(training_set)  # hashing happens outside the transaction
    c, h, w = training_set.image_shape
    created_at = datetime.now(timezone.utc).replace(tzinfo=None)
    with database.connect(db_path, timeout=timeout) as conn:
        existing = _lookup(conn, fingerprint)  # another process may have ingested it meanwhile
        if existing is not None:
            return existing, False
        dataset_id = conn.execute(
            "INSERT INTO datasets (fingerprint, name, source, channels, height, width, count, created_at) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?) RETURNING id",
            [fingerprint, training_set.name, training_set.source, c, h, w, len(training_set), created_at],
        ).fetchone()[0]
        conn.register("_ingest_images", images)
        try:
            conn.execute(
                "INSERT INTO training_images (dataset_id, image_index, image_id, sha256, label, label_name, "
                "source_uri, owner, license, extra, pixels) "
                "SELECT ?, image_index, image_id, sha256, label, label_name, source_uri, owner, license, "
                "CAST(extra AS JSON), pixels FROM _ingest_images", [dataset_id])
        finally:
            conn.unregister("_ingest_images")
    return int(dataset_id), True


def _backfill_pixels(db_path, dataset_id: int, training_set: TrainingSet, timeout: float) -> None:
    """Fill training_images.pixels where NULL (the same fingerprint guarantees the same pixels)."""
    table = pa.table({"image_index": pa.array(np.arange(len(training_set), dtype=np.int32)),
                      "pixels": pixel_column(training_set)})
    with database.connect(db_path, timeout=timeout) as conn:
        conn.register("_ingest_pixels", table)
        try:
            conn.execute("UPDATE training_images SET pixels = p.pixels FROM _ingest_pixels AS p "
                         "WHERE training_images.dataset_id = ? AND training_images.image_index = p.image_index "
                         "AND training_images.pixels IS NULL", [int(dataset_id)])
        finally:
            conn.unregister("_ingest_pixels")


def training_pixels(db_path: str | os.PathLike, dataset_id: int, indices, *,
                    timeout: float = database.DEFAULT_TIMEOUT) -> np.ndarray:
    """The stored pixels of training images `indices` of a dataset, uint8 [len, C, H, W].

    NotFoundError for an unknown dataset or index; StoreError when the store lacks the pixels
    (ingested before schema revision 0003: run `auditor ingest` on the same data again).
    """
    indices = [int(i) for i in indices]
    with database.connect(db_path, read_only=True, timeout=timeout) as conn:
        shape = conn.execute("SELECT channels, height, width, count FROM datasets WHERE id = ?",
                             [int(dataset_id)]).fetchone()
        if shape is None:
            raise NotFoundError(f"{db_path}: no dataset {dataset_id}")
        c, h, w, count = shape
        bad = [i for i in indices if not 0 <= i < count]
        if bad:
            raise NotFoundError(f"{db_path}: dataset {dataset_id} has no training image index {bad[0]} "
                                f"(indices 0..{count - 1})")
        rows = dict(conn.execute(
            "SELECT image_index, pixels FROM training_images WHERE dataset_id = ? AND image_index IN "
            "(SELECT unnest(?::INTEGER[]))", [int(dataset_id), indices]).fetchall()) if indices else {}
    out = np.empty((len(indices), c, h, w), np.uint8)
    for k, i in enumerate(indices):
        blob = rows.get(i)
        if blob is None:
            raise StoreError(f"{db_path}: dataset {dataset_id} has no pixels for image {i} (ingested before schema "
                             f"revision 0003); run `auditor ingest` on the same data again to add them")
        out[k] = np.frombuffer(blob, np.uint8).reshape(c, h, w)
    return out


def _row(columns, values) -> dict:
    return dict(zip(columns, values))


def find_dataset(db_path: str | os.PathLike, fingerprint_or_id: str | int, *,
                 timeout: float = database.DEFAULT_TIMEOUT) -> dict:
    """The dataset row (as a dict) by numeric id, full fingerprint or a unique fingerprint prefix (>= 6 chars).

    NotFoundError (naming the store) when nothing or more than one dataset matches.
    """
    database.require_current(db_path, timeout)
    key = str(fingerprint_or_id).strip()
    select = f"SELECT {', '.join(DATASET_COLUMNS)} FROM datasets"
    with database.connect(db_path, read_only=True, timeout=timeout) as conn:
        if isinstance(fingerprint_or_id, int) or key.isdigit() and len(key) < 19:
            rows = conn.execute(f"{select} WHERE id = ?", [int(key)]).fetchall()
        elif len(key) >= 6 and all(ch in "0123456789abcdef" for ch in key.lower()):
            rows = conn.execute(f"{select} WHERE starts_with(fingerprint, ?) ORDER BY id", [key.lower()]).fetchall()
        else:
            raise StoreError(f"{key!r} is not a dataset id or fingerprint (a number, or at least 6 hex digits)")
        count = conn.execute("SELECT count(*) FROM datasets").fetchone()[0]
    if not rows:
        raise NotFoundError(f"{db_path}: no dataset {key!r} (the store holds {count} dataset(s); "
                            f"add one with `auditor ingest SPEC`)")
    if len(rows) > 1:
        ids = ", ".join(str(r[0]) for r in rows)
        raise NotFoundError(f"{db_path}: fingerprint prefix {key!r} matches datasets {ids}; give more digits")
    return _row(DATASET_COLUMNS, rows[0])


def list_datasets(db_path: str | os.PathLike, *, timeout: float = database.DEFAULT_TIMEOUT) -> list[dict]:
    """All dataset rows, oldest first."""
    database.require_current(db_path, timeout)
    with database.connect(db_path, read_only=True, timeout=timeout) as conn:
        rows = conn.execute(f"SELECT {', '.join(DATASET_COLUMNS)} FROM datasets ORDER BY id").fetchall()
    return [_row(DATASET_COLUMNS, r) for r in rows]


def dataset_rows(db_path: str | os.PathLike, dataset_id: int, *,
                 timeout: float = database.DEFAULT_TIMEOUT) -> pa.Table:
    """The training_images rows of one dataset as an Arrow table (image_index order)."""
    find_dataset(db_path, int(dataset_id), timeout=timeout)
    with database.connect(db_path, read_only=True, timeout=timeout) as conn:
        return conn.sql("SELECT * FROM training_images WHERE dataset_id = ? ORDER BY image_index",
                        params=[int(dataset_id)]).to_arrow_table()


def stored_training_set(db_path: str | os.PathLike, dataset_id: int, *,
                        timeout: float = database.DEFAULT_TIMEOUT) -> TrainingSet:
    """The training set of a stored dataset, rebuilt from the store alone (pixels, ids, metadata).

    Same fingerprint as the set that was ingested, so sampling on it records the same
    dataset id; no file outside the store is read (the report service's jobs use this).
    NotFoundError for an unknown id; StoreError when the store lacks the pixels.
    """
    dataset = find_dataset(db_path, int(dataset_id), timeout=timeout)
    c, h, w, count = dataset["channels"], dataset["height"], dataset["width"], dataset["count"]
    with database.connect(db_path, read_only=True, timeout=timeout) as conn:
        table = conn.sql("SELECT image_id, label, label_name, source_uri, owner, license, extra, pixels "
                         "FROM training_images WHERE dataset_id = ? ORDER BY image_index",
                         params=[int(dataset_id)]).to_arrow_table()
    if table.num_rows != count or table.column("pixels").null_count:
        raise StoreError(f"{db_path}: dataset {dataset_id} has no pixels for some of its {count} images (ingested "
                         f"before schema revision 0003); run `auditor ingest` on the same data again to add them")
    blobs = table.column("pixels").to_pylist()
    if any(len(b) != c * h * w for b in blobs):
        raise StoreError(f"{db_path}: dataset {dataset_id} has pixel rows of the wrong size (expected {c * h * w} bytes)")
    images = np.frombuffer(b"".join(blobs), np.uint8).reshape(count, c, h, w).copy()
    metadata = []
    for row in table.drop_columns(["pixels", "image_id"]).to_pylist():
        extra = row.pop("extra")
        meta = {k: v for k, v in row.items() if v is not None}
        meta.update(json.loads(extra) if isinstance(extra, str) else (extra or {}))
        metadata.append(meta)
    data = TrainingSet(images, table.column("image_id").to_pylist(), metadata, dataset["name"], dataset["source"])
    if data.fingerprint != dataset["fingerprint"]:
        raise StoreError(f"{db_path}: the stored pixels of dataset {dataset_id} do not match its fingerprint")
    return data
