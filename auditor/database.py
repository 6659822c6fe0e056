"""Opening the provenance store: one DuckDB file, short transactions, retry on the lock.

DuckDB lets one process at a time open a file read-write, and that process holds an
exclusive lock for as long as its connection lives; while it does, other processes cannot
open the file at all, not even read-only. So every process here (the sampling writer and
every reader) opens a connection for ONE short transaction and closes it at once, and
opening retries on the lock error with backoff until `timeout` seconds have passed, then
fails with :class:`LockedError` naming the file.

All access goes through this module: :func:`connect` (raw duckdb, for bulk Arrow inserts
and SQL), :func:`session` (SQLAlchemy ORM through duckdb-engine) and the migration helpers
:func:`upgrade`, :func:`current_revision` and :func:`require_current` (Alembic, run
programmatically from the repository's ``migrations/`` folder).
"""

from __future__ import annotations

import os
import random
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator, TypeVar

import duckdb
from alembic.ddl.impl import DefaultImpl

__all__ = [
    "AlembicDuckDBImpl",
    "DB_ENV",
    "DEFAULT_DB",
    "DEFAULT_TIMEOUT",
    "LockedError",
    "MIGRATIONS_DIR",
    "NotFoundError",
    "SchemaError",
    "StoreError",
    "connect",
    "current_revision",
    "engine",
    "head_revision",
    "known_revisions",
    "require_current",
    "resolve_db_path",
    "session",
    "upgrade",
]

DB_ENV = "AUDITOR_DB"
DEFAULT_DB = "provenance.duckdb"
DEFAULT_TIMEOUT = 10.0
MIGRATIONS_DIR = Path(__file__).resolve().parent.parent / "migrations"

T = TypeVar("T")


class StoreError(ValueError):
    """A problem with the provenance store (file, schema, lock, unknown ids); names the file."""


class SchemaError(StoreError):
    """The file's schema revision is not the one this code writes (older or newer)."""


class LockedError(StoreError):
    """Another process holds the file's lock past the timeout."""


class NotFoundError(StoreError):
    """An id (dataset, run, sample) that the store does not hold."""


class AlembicDuckDBImpl(DefaultImpl):
    """Alembic's migration implementation for duckdb-engine's dialect (transactional DDL)."""

    __dialect__ = "duckdb"
    transactional_ddl = True


# ---------------------------------------------------------------------------------------
# Paths and opening
# ---------------------------------------------------------------------------------------
def resolve_db_path(path: str | os.PathLike | None = None) -> Path:
    """The store's path: the given one (the --db flag), else $AUDITOR_DB, else ./provenance.duckdb."""
    if path is not None and os.fspath(path) != "":
        return Path(path)
    env = os.environ.get(DB_ENV)
    if env:
        return Path(env)
    return Path(DEFAULT_DB)


def _is_lock_error(exc: BaseException) -> bool:
    text = str(exc)
    return "Could not set lock" in text or "Conflicting lock" in text


def _translate(exc: BaseException, path: Path) -> StoreError:
    """A duckdb error raised while opening `path`, as a StoreError that names the file."""
    text = str(exc)
    if _is_lock_error(exc):
        return LockedError(f"{path}: the provenance store is locked by another process ({text})")
    if "not a valid DuckDB database file" in text:
        return StoreError(f"{path}: not a DuckDB database file (corrupt, truncated or another format)")
    if "different configuration" in text:
        return StoreError(f"{path}: already open in this process with other settings ({text})")
    if "Serialization" in text or "serialization" in text or "version" in text.lower():
        return StoreError(f"{path}: cannot be read by duckdb {duckdb.__version__} ({text})")
    return StoreError(f"{path}: cannot open the provenance store ({text})")


def _with_retry(open_fn: Callable[[], T], path: Path, timeout: float) -> T:
    """Call open_fn, retrying on DuckDB's lock error with backoff until `timeout` seconds."""
    deadline = time.monotonic() + max(0.0, timeout)
    delay = 0.01
    while True:
        try:
            return open_fn()
        except Exception as exc:  # noqa: BLE001 - duckdb raises several classes; sorted below
            cause = getattr(exc, "orig", None) or exc  # SQLAlchemy wraps the driver's error
            if not isinstance(cause, duckdb.Error):
                raise
            if not _is_lock_error(cause) or time.monotonic() >= deadline:
                err = _translate(cause, path)
                if isinstance(err, LockedError):
                    err = LockedError(f"{path}: another process holds the provenance store's lock "
                                      f"(still locked after {timeout:g} s; DuckDB allows one writing process "
                                      f"per file). {cause}")
                raise err from None
        time.sleep(min(delay * (1 + random.random()), max(0.0, deadline - time.monotonic())) + 1e-3)
        delay = min(delay * 2, 0.25)


def _check_openable(path: Path, read_only: bool) -> None:
    if read_only and not path.exists():
        raise StoreError(f"{path}: no provenance store here; create it with `auditor db upgrade`")
    if path.exists() and path.is_dir():
        raise StoreError(f"{path}: is a directory, not a DuckDB file")


def open_raw(path: str | os.PathLike, read_only: bool = False, timeout: float = DEFAULT_TIMEOUT,
             config: dict | None = None) -> duckdb.DuckDBPyConnection:
    """A plain duckdb connection (the caller closes it); retries on the lock."""
    path = Path(path)
    _check_openable(path, read_only)
    return _with_retry(lambda: duckdb.connect(str(path), read_only=read_only, config=config or {}), path, timeout)


@contextmanager
def connect(path: str | os.PathLike, read_only: bool = False, timeout: float = DEFAULT_TIMEOUT,
            config: dict | None = None) -> Iterator[duckdb.DuckDBPyConnection]:
    """One short transaction on a raw duckdb connection: BEGIN, yield, COMMIT (ROLLBACK on error), close.

    Opening retries on the lock for up to `timeout` seconds (then LockedError). Keep the body
    short: the whole file is locked for other processes while it runs.
    """
    conn = open_raw(path, read_only, timeout, config)
    try:
        conn.execute("BEGIN TRANSACTION")
        try:
            yield conn
        except BaseException:
            try:
                conn.execute("ROLLBACK")
            except duckdb.Error:
                pass
            raise
        conn.execute("COMMIT")
    finally:
        conn.close()


def engine(path: str | os.PathLike, read_only: bool = False, timeout: float = DEFAULT_TIMEOUT):
    """A SQLAlchemy engine on the file (duckdb-engine, NullPool: nothing keeps the file open)."""
    from duckdb_engine import ConnectionWrapper
    from sqlalchemy import create_engine
    from sqlalchemy.pool import NullPool

    path = Path(path)
    _check_openable(path, read_only)
    return create_engine("duckdb:///" + str(path), poolclass=NullPool,
                         creator=lambda: ConnectionWrapper(open_raw(path, read_only, timeout)))


@contextmanager
def session(path: str | os.PathLike, read_only: bool = False, timeout: float = DEFAULT_TIMEOUT):
    """A SQLAlchemy ORM Session in one transaction: commit on success, rollback on error, close.

    The connection is opened (with the same retry) on first use and closed on exit.
    """
    from sqlalchemy import exc as sa_exc
    from sqlalchemy.orm import Session

    path = Path(path)
    eng = engine(path, read_only, timeout)
    try:
        with Session(eng) as s:
            try:
                yield s
                s.commit()
            except BaseException:
                s.rollback()
                raise
    except sa_exc.DBAPIError as exc:
        if isinstance(exc.orig, duckdb.Error) and _is_lock_error(exc.orig):
            raise _translate(exc.orig, path) from None
        raise
    finally:
        eng.dispose()


# ---------------------------------------------------------------------------------------
# Migrations
# ---------------------------------------------------------------------------------------
def _alembic_config():
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    return config


def _script():
    from alembic.script import ScriptDirectory

    return ScriptDirectory.from_config(_alembic_config())


def known_revisions() -> list[str]:
    """The revisions in migrations/, oldest first."""
    return [rev.revision for rev in reversed(list(_script().walk_revisions()))]


def head_revision() -> str:
    return _script().get_current_head()


def _read_revision(conn: duckdb.DuckDBPyConnection) -> str | None:
    exists = conn.execute("SELECT count(*) FROM duckdb_tables() WHERE table_name = 'alembic_version' "
                          "AND schema_name = 'main' AND database_name = current_database()").fetchone()[0]
    if not exists:
        return None
    rows = conn.execute("SELECT version_num FROM alembic_version").fetchall()
    if len(rows) > 1:
        raise SchemaError(f"alembic_version holds {len(rows)} revisions (branched schema)")
    return rows[0][0] if rows else None


def current_revision(path: str | os.PathLike, timeout: float = DEFAULT_TIMEOUT) -> str | None:
    """The file's schema revision (None for a missing file or one never migrated)."""
    path = Path(path)
    if not path.exists():
        return None
    with connect(path, read_only=True, timeout=timeout) as conn:
        try:
            return _read_revision(conn)
        except SchemaError as exc:
            raise SchemaError(f"{path}: {exc}") from None


def _newer_error(path: Path, revision: str) -> SchemaError:
    return SchemaError(f"{path} was written by a newer version of auditor (schema revision {revision!r}, "
                       f"this version knows up to {head_revision()!r}); upgrade auditor")


def require_current(path: str | os.PathLike, timeout: float = DEFAULT_TIMEOUT) -> str:
    """Check that the file exists at the head revision; returns it. SchemaError/StoreError otherwise."""
    path = Path(path)
    if not path.exists():
        raise StoreError(f"{path}: no provenance store here; create it with `auditor db upgrade`")
    revision = current_revision(path, timeout)
    head = head_revision()
    if revision == head:
        return revision
    if revision is not None and revision not in known_revisions():
        raise _newer_error(path, revision)
    found = "no schema" if revision is None else f"schema revision {revision!r}"
    raise SchemaError(f"{path} has {found}, this version needs {head!r}: run `auditor db upgrade`")


def upgrade(path: str | os.PathLike, revision: str = "head",
            timeout: float = DEFAULT_TIMEOUT) -> tuple[str | None, str]:
    """Migrate the file to `revision` (default head), creating it if missing; returns (from, to).

    A corrupt file, or one written by a newer schema, is refused before anything is written.
    The whole upgrade runs in one transaction (DuckDB DDL is transactional).
    """
    from alembic import command

    path = Path(path)
    _check_openable(path, read_only=False)
    before = current_revision(path, timeout) if path.exists() else None  # read-only: validates the file
    if before is not None and before not in known_revisions():
        raise _newer_error(path, before)
    target = head_revision() if revision == "head" else revision
    if target not in known_revisions():
        raise SchemaError(f"unknown schema revision {revision!r}; known: {', '.join(known_revisions())}")
    if before == target:
        return before, target
    if path.parent and not path.parent.exists():
        raise StoreError(f"{path}: folder {path.parent} does not exist")
    config = _alembic_config()
    eng = engine(path, read_only=False, timeout=timeout)
    try:
        with eng.begin() as conn:
            config.attributes["connection"] = conn
            if before is not None and known_revisions().index(target) < known_revisions().index(before):
                command.downgrade(config, target)
            else:
                command.upgrade(config, target)
    except Exception as exc:  # noqa: BLE001
        cause = getattr(exc, "orig", None)
        if isinstance(cause, duckdb.Error):
            raise _translate(cause, path) from exc
        raise
    finally:
        eng.dispose()
    return before, current_revision(path, timeout)
