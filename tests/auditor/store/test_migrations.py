"""Migrations: from empty to head, from 0001 with data kept, the attribution views on a
hand-checked example, and the refusals (newer schema, corrupt file) that change nothing.

fill_tiny_store() (a small store filled with plain SQL) and check_views() (its views against values
computed by hand) are in tests.support.store: other store tests use them too.
"""

from __future__ import annotations

import os

import pytest
from sqlalchemy import create_engine
from sqlalchemy.pool import NullPool

from auditor.store import database
from tests.support.store import check_views, fill_tiny_store


def file_state(path) -> tuple[bytes, int]:
    return path.read_bytes(), os.stat(path).st_mtime_ns


def columns(path) -> dict:
    with database.connect(path, read_only=True) as conn:
        rows = conn.execute("SELECT table_name, column_name, data_type, is_nullable FROM duckdb_columns() "
                            "WHERE schema_name = 'main' AND table_name != 'alembic_version' "
                            "AND table_name IN (SELECT table_name FROM duckdb_tables())").fetchall()
        constraints = conn.execute("SELECT table_name, constraint_type, constraint_column_names "
                                   "FROM duckdb_constraints() WHERE table_name != 'alembic_version' AND constraint_type IN "
                                   "('PRIMARY KEY', 'UNIQUE', 'FOREIGN KEY')").fetchall()
        sequences = conn.execute("SELECT sequence_name FROM duckdb_sequences()").fetchall()
    return {"columns": sorted(rows), "constraints": sorted((t, c, tuple(n)) for t, c, n in constraints),
            "sequences": sorted(sequences)}


# ---------------------------------------------------------------------------------------
# Upgrades
# ---------------------------------------------------------------------------------------
def test_upgrade_from_missing_file_reaches_head(tmp_path):
    path = tmp_path / "new.duckdb"
    assert database.current_revision(path) is None
    assert database.upgrade(path) == (None, database.head_revision())
    assert database.require_current(path) == database.head_revision() == "0010"
    assert database.upgrade(path) == ("0010", "0010")  # idempotent


def test_head_revision_matches_the_models(tmp_path):
    from auditor.store.schema import Base

    migrated, created = tmp_path / "migrated.duckdb", tmp_path / "created.duckdb"
    database.upgrade(migrated)
    engine = create_engine(f"duckdb:///{created}", poolclass=NullPool)
    Base.metadata.create_all(engine)
    engine.dispose()
    assert columns(migrated) == columns(created)


def test_upgrade_from_0001_keeps_data_and_views_answer(tmp_path):
    path = tmp_path / "store.duckdb"
    assert database.upgrade(path, "0001") == (None, "0001")
    info = fill_tiny_store(path)
    with database.connect(path, read_only=True) as conn:
        before = {t: conn.execute(f"SELECT * FROM {t} ORDER BY ALL").fetchall()
                  for t in ("datasets", "training_images", "runs", "samples", "steps", "patch_weights", "patch_pixels")}
    with pytest.raises(database.SchemaError, match="auditor db upgrade"):
        database.require_current(path)
    assert database.upgrade(path) == ("0001", "0010")
    with database.connect(path, read_only=True) as conn:
        after = {t: conn.execute(f"SELECT * EXCLUDE (pixels) FROM {t} ORDER BY ALL" if t == "training_images"
                                 else f"SELECT * EXCLUDE (kind, network_id, details) FROM {t} ORDER BY ALL" if t == "runs"
                                 else f"SELECT * FROM {t} ORDER BY ALL").fetchall() for t in before}
        assert conn.execute("SELECT count(*) FROM training_images WHERE pixels IS NOT NULL").fetchone()[0] == 0
    assert after == before
    check_views(path, info)
    # and back: downgrade drops the pixels column and the views, keeps the data
    assert database.upgrade(path, "0001") == ("0010", "0001")
    with database.connect(path, read_only=True) as conn:
        assert conn.execute("SELECT count(*) FROM duckdb_views() WHERE NOT internal").fetchone()[0] == 0
        assert conn.execute("SELECT count(*) FROM patch_weights").fetchone()[0] == len(before["patch_weights"])


# ---------------------------------------------------------------------------------------
# Refusals that change nothing
# ---------------------------------------------------------------------------------------
def test_newer_schema_is_refused_and_file_unchanged(tmp_path):
    path = tmp_path / "newer.duckdb"
    database.upgrade(path)
    with database.connect(path) as conn:
        conn.execute("UPDATE alembic_version SET version_num = '9999_future'")
    state = file_state(path)
    for call in (database.upgrade, database.require_current):
        with pytest.raises(database.SchemaError, match=r"newer version of auditor.*9999_future") as err:
            call(path)
        assert str(path) in str(err.value)
    assert file_state(path) == state


def test_corrupt_file_is_refused_and_unchanged(tmp_path):
    path = tmp_path / "corrupt.duckdb"
    path.write_bytes(os.urandom(20000))
    state = file_state(path)
    for call in (database.upgrade, database.require_current, database.current_revision):
        with pytest.raises(database.StoreError, match="not a DuckDB database file") as err:
            call(path)
        assert str(path) in str(err.value)
    with pytest.raises(database.StoreError, match="not a DuckDB"):
        with database.connect(path):
            pass
    assert file_state(path) == state
    assert sorted(p.name for p in tmp_path.iterdir()) == ["corrupt.duckdb"]  # no WAL left either


def test_empty_file_is_refused(tmp_path):
    path = tmp_path / "empty.duckdb"
    path.touch()
    with pytest.raises(database.StoreError, match="not a DuckDB"):
        database.upgrade(path)
    assert path.read_bytes() == b""


def test_unknown_target_revision(tmp_path):
    with pytest.raises(database.SchemaError, match="unknown schema revision"):
        database.upgrade(tmp_path / "x.duckdb", "12345")
    assert not (tmp_path / "x.duckdb").exists()


def test_failed_upgrade_leaves_the_previous_revision(tmp_path):
    path = tmp_path / "store.duckdb"
    database.upgrade(path, "0001")
    info = fill_tiny_store(path)
    with database.connect(path) as conn:  # a user object in the way of the last view of 0002
        conn.execute("CREATE TABLE trajectory_sources (x INTEGER)")
    with pytest.raises(database.StoreError, match="trajectory_sources"):
        database.upgrade(path)
    assert database.current_revision(path) == "0001"
    with database.connect(path, read_only=True) as conn:
        assert conn.execute("SELECT count(*) FROM duckdb_views() WHERE NOT internal").fetchone()[0] == 0
        assert conn.execute("SELECT count(*) FROM patch_weights").fetchone()[0] == \
            sum(len(v) for v in info["weights"].values())
    with database.connect(path) as conn:
        conn.execute("DROP TABLE trajectory_sources")
    assert database.upgrade(path) == ("0001", "0010")
