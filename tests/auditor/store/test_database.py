"""auditor.store.database: path resolution, short transactions, the ORM session, and the lock held by
another process (LockedError after the timeout, success once it is released)."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from auditor.store import database
from auditor.store.schema import Dataset
from tests.support.store import LockHolder


@pytest.fixture
def store(tmp_path):
    path = tmp_path / "store.duckdb"
    database.upgrade(path)
    return path


def test_resolve_db_path(monkeypatch, tmp_path):
    monkeypatch.delenv(database.DB_ENV, raising=False)
    assert database.resolve_db_path() == Path("provenance.duckdb")
    monkeypatch.setenv(database.DB_ENV, str(tmp_path / "env.duckdb"))
    assert database.resolve_db_path() == tmp_path / "env.duckdb"
    assert database.resolve_db_path(tmp_path / "flag.duckdb") == tmp_path / "flag.duckdb"  # flag wins


def test_connect_commits_or_rolls_back(store):
    with database.connect(store) as conn:
        conn.execute("CREATE TABLE scratch (x INTEGER)")
        conn.execute("INSERT INTO scratch VALUES (1)")
    with pytest.raises(RuntimeError):
        with database.connect(store) as conn:
            conn.execute("INSERT INTO scratch VALUES (2)")
            raise RuntimeError("boom")
    with database.connect(store, read_only=True) as conn:
        assert conn.execute("SELECT list(x) FROM scratch").fetchone()[0] == [1]
        with pytest.raises(Exception, match="read-only"):
            conn.execute("INSERT INTO scratch VALUES (3)")


def test_read_only_of_missing_file(tmp_path):
    with pytest.raises(database.StoreError, match="auditor db upgrade"):
        with database.connect(tmp_path / "missing.duckdb", read_only=True):
            pass
    assert not (tmp_path / "missing.duckdb").exists()


def test_session_orm_roundtrip(store):
    from datetime import datetime

    with database.session(store) as s:
        s.add(Dataset(fingerprint="a" * 64, name="n", source="s", channels=1, height=2, width=2, count=1,
                      created_at=datetime(2025, 1, 1)))
    with pytest.raises(ValueError):
        with database.session(store) as s:
            s.add(Dataset(fingerprint="b" * 64, name="n", source="s", channels=1, height=2, width=2, count=1,
                          created_at=datetime(2025, 1, 1)))
            s.flush()
            raise ValueError("rolled back")
    with database.session(store, read_only=True) as s:
        rows = s.query(Dataset).all()
        assert [(d.id, d.fingerprint) for d in rows] == [(1, "a" * 64)]


@pytest.mark.slow
def test_locked_by_another_process(store):
    holder = LockHolder(store)
    try:
        begin = time.monotonic()
        for read_only in (False, True):
            with pytest.raises(database.LockedError, match="another process") as err:
                with database.connect(store, read_only=read_only, timeout=0.3):
                    pass
            assert str(store) in str(err.value)
        assert time.monotonic() - begin >= 0.6  # it did retry for the timeout
        with pytest.raises(database.LockedError):
            with database.session(store, timeout=0.2) as s:
                s.query(Dataset).all()
        with pytest.raises(database.LockedError):
            database.upgrade(store, timeout=0.2)
        with pytest.raises(database.LockedError):
            database.require_current(store, timeout=0.2)
    finally:
        holder.release()
    with database.connect(store, read_only=True, timeout=0.3) as conn:
        assert conn.execute("SELECT 42").fetchone()[0] == 42


def test_waits_for_the_lock_to_be_released(store):
    holder = LockHolder(store)
    timer = threading.Timer(0.5, holder.release)
    timer.start()
    try:
        begin = time.monotonic()
        with database.connect(store, timeout=20) as conn:  # retries until the holder lets go
            conn.execute("CREATE TABLE after_wait (x INTEGER)")
        assert time.monotonic() - begin >= 0.4
    finally:
        timer.join()
        holder.release()
    assert database.require_current(store) == database.head_revision()


@pytest.mark.parametrize("command", [["db", "upgrade"], ["db", "status"], ["runs"], ["show", "1/0"]])
def test_truncated_store_is_refused_and_left_unchanged(tmp_path, capsys, command):
    """The first half of a valid store: every command refuses it (exit 2, naming the file) and writes nothing."""
    from auditor.cli import main

    good = tmp_path / "good.duckdb"
    database.upgrade(good)
    data = good.read_bytes()
    half = tmp_path / "half.duckdb"
    half.write_bytes(data[: len(data) // 2])
    before = half.read_bytes()
    assert main(["--db", str(half), *command]) == 2
    err = capsys.readouterr().err
    assert f"{half}: not a valid provenance store (truncated or corrupt" in err
    assert "Traceback" not in err
    assert half.read_bytes() == before
    assert not (tmp_path / "half.duckdb.wal").exists()
    with pytest.raises(database.StoreError, match="not a valid provenance store"):
        with database.connect(half, read_only=True):
            pass
    assert half.read_bytes() == before


class _InterruptedClose:
    """A duckdb connection whose close() is hit by a Ctrl-C (after closing)."""

    def __init__(self, conn):
        self.conn = conn

    def __getattr__(self, name):
        return getattr(self.conn, name)

    def close(self):
        self.conn.close()
        raise KeyboardInterrupt


def test_a_ctrl_c_while_closing_leaves_the_file_openable_in_this_thread(store, monkeypatch):
    """A Ctrl-C (a job's cancel) that lands in close() must not leave this thread holding the
    read-write configuration: marking the run failed and reading afterwards still work."""
    real = database.open_raw
    monkeypatch.setattr(database, "open_raw", lambda *args, **kwargs: _InterruptedClose(real(*args, **kwargs)))
    with pytest.raises(KeyboardInterrupt):
        with database.connect(store) as conn:
            conn.execute("SELECT 1")
    monkeypatch.undo()
    with database.connect(store, read_only=True, timeout=0.5) as conn:
        assert conn.execute("SELECT 1").fetchone() == (1,)
