"""auditor.store.datasets: ingest is bulk, idempotent by fingerprint and keeps the metadata."""

from __future__ import annotations

import json

import pytest
import torch

from auditor.store import database, datasets
from pspc.data.training_set import TrainingSet
from tests.support.data import random_training_set


@pytest.fixture
def store(tmp_path):
    path = tmp_path / "store.duckdb"
    database.upgrade(path)
    return path


def with_metadata(count=5) -> TrainingSet:
    data = random_training_set(count=count, channels=3, height=4, width=5, seed=3)
    metadata = [
        {"label": 1, "label_name": "one", "source_uri": "file:///a.png", "owner": "Alice", "license": "CC-BY-4.0",
         "caption": "a cat"},
        {"label": "seven"},  # not an integer: kept in extra
        {},
        {"owner": "Bob", "tags": ["x", "y"]},
        {"label": 0},
    ][:count]
    return TrainingSet(data.images, data.ids, metadata, name="meta", source="/data/meta")


def test_ingest_writes_dataset_and_images(store):
    data = with_metadata()
    dataset_id, created = datasets.ingest(store, data)
    assert created and dataset_id == 1
    row = datasets.find_dataset(store, dataset_id)
    assert row["fingerprint"] == data.fingerprint
    assert (row["name"], row["source"], row["channels"], row["height"], row["width"], row["count"]) == \
        ("meta", "/data/meta", 3, 4, 5, 5)
    with database.connect(store, read_only=True) as conn:
        rows = conn.execute("SELECT image_index, image_id, sha256, label, label_name, source_uri, owner, license, "
                            "extra FROM training_images WHERE dataset_id = ? ORDER BY image_index",
                            [dataset_id]).fetchall()
    assert [r[0] for r in rows] == list(range(5))
    assert [r[1] for r in rows] == data.ids
    assert [r[2] for r in rows] == [data.image_sha256(i) for i in range(5)]
    assert rows[0][3:8] == (1, "one", "file:///a.png", "Alice", "CC-BY-4.0")
    assert json.loads(rows[0][8]) == {"caption": "a cat"}
    assert rows[1][3] is None and json.loads(rows[1][8]) == {"label": "seven"}
    assert rows[2][3:] == (None,) * 6
    assert rows[3][6] == "Bob" and json.loads(rows[3][8]) == {"tags": ["x", "y"]}
    assert rows[4][3] == 0
    table = datasets.dataset_rows(store, dataset_id)
    assert table.num_rows == 5 and table.column("image_id").to_pylist() == data.ids


def test_ingest_is_idempotent_by_fingerprint(store):
    data = with_metadata()
    first = datasets.ingest(store, data)
    # same pixels under another name / source / flip setting: the same dataset
    again = TrainingSet(data.images.clone(), data.ids, data.metadata, name="renamed", source="elsewhere")
    assert datasets.ingest(store, again) == (first[0], False)
    assert datasets.ingest(store, data.with_xflip()) == (first[0], False)
    other = random_training_set(count=4, seed=9)
    second = datasets.ingest(store, other)
    assert second == (first[0] + 1, True)
    with database.connect(store, read_only=True) as conn:
        assert conn.execute("SELECT count(*) FROM datasets").fetchone()[0] == 2
        assert conn.execute("SELECT dataset_id, count(*) FROM training_images GROUP BY ALL ORDER BY 1").fetchall() == \
            [(first[0], 5), (second[0], 4)]
    assert [d["id"] for d in datasets.list_datasets(store)] == [1, 2]


def test_find_dataset_by_fingerprint_and_errors(store):
    data = with_metadata()
    dataset_id, _ = datasets.ingest(store, data)
    assert datasets.find_dataset(store, data.fingerprint)["id"] == dataset_id
    assert datasets.find_dataset(store, data.fingerprint[:10])["id"] == dataset_id
    assert datasets.find_dataset(store, str(dataset_id))["id"] == dataset_id
    with pytest.raises(database.NotFoundError, match=r"no dataset '99'.*1 dataset"):
        datasets.find_dataset(store, 99)
    with pytest.raises(database.NotFoundError, match="no dataset 'ffffff"):
        datasets.find_dataset(store, "f" * 64)
    with pytest.raises(database.StoreError, match="not a dataset id or fingerprint"):
        datasets.find_dataset(store, "cat")


def test_ingest_needs_an_upgraded_store(tmp_path):
    data = random_training_set(count=2)
    with pytest.raises(database.StoreError, match="auditor db upgrade"):
        datasets.ingest(tmp_path / "missing.duckdb", data)
    assert not (tmp_path / "missing.duckdb").exists()
    old = tmp_path / "old.duckdb"
    database.upgrade(old, "0001")
    with pytest.raises(database.SchemaError, match="auditor db upgrade"):
        datasets.ingest(old, data)


def test_ingest_is_bulk_and_fast(store):
    images = torch.randint(0, 256, (20000, 1, 8, 8), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    data = TrainingSet(images, [f"i{k}" for k in range(20000)], [{"label": k % 10} for k in range(20000)])
    dataset_id, created = datasets.ingest(store, data)
    assert created
    with database.connect(store, read_only=True) as conn:
        assert conn.execute("SELECT count(*), sum(label) FROM training_images").fetchone() == (20000, 90000)


def test_failed_ingest_writes_nothing(store, monkeypatch):
    data = with_metadata()

    def broken(*args, **kwargs):
        raise RuntimeError("disk on fire")

    original = database.connect

    class Wrapped:
        def __init__(self, conn):
            self.conn = conn

        def __getattr__(self, name):
            return getattr(self.conn, name)

        def register(self, *args):
            broken()

    from contextlib import contextmanager

    @contextmanager
    def connect(*args, **kwargs):
        with original(*args, **kwargs) as conn:
            yield Wrapped(conn)

    monkeypatch.setattr(database, "connect", connect)
    with pytest.raises(RuntimeError, match="disk on fire"):
        datasets.ingest(store, data)
    monkeypatch.setattr(database, "connect", original)
    with database.connect(store, read_only=True) as conn:
        assert conn.execute("SELECT count(*) FROM datasets").fetchone()[0] == 0


def test_pixels_are_stored_exactly(store):
    data = with_metadata()
    dataset_id, _ = datasets.ingest(store, data)
    got = datasets.training_pixels(store, dataset_id, [4, 0, 2])
    assert got.dtype.name == "uint8" and got.shape == (3, 3, 4, 5)
    assert (got == data.images[[4, 0, 2]].numpy()).all()
    with pytest.raises(database.NotFoundError, match="no training image index 5"):
        datasets.training_pixels(store, dataset_id, [5])
    with pytest.raises(database.NotFoundError, match="no dataset 9"):
        datasets.training_pixels(store, 9, [0])


def test_ingest_again_fills_pixels_of_an_older_store(tmp_path):
    path = tmp_path / "old.duckdb"
    database.upgrade(path, "0002")
    data = with_metadata()
    with database.connect(path) as conn:  # what an auditor of revision 0002 wrote
        conn.execute("INSERT INTO datasets (fingerprint, name, source, channels, height, width, count, created_at) "
                     "VALUES (?, 'meta', 'x', 3, 4, 5, 5, now())", [data.fingerprint])
        conn.executemany("INSERT INTO training_images (dataset_id, image_index, image_id, sha256) VALUES (1, ?, ?, ?)",
                         [(i, data.ids[i], data.image_sha256(i)) for i in range(5)])
    assert database.upgrade(path) == ("0002", database.head_revision())
    with pytest.raises(database.StoreError, match="run `auditor ingest` on the same data again"):
        datasets.training_pixels(path, 1, [0])
    assert datasets.ingest(path, data) == (1, False)
    assert (datasets.training_pixels(path, 1, range(5)) == data.images.numpy()).all()
