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

import functools
import importlib.resources
import json
import os
import random
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator, TypeVar

import duckdb
from alembic.ddl.impl import DefaultImpl

from auditor.errors import LockedError, NotFoundError, SchemaError, StoreError

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
    "keep_open",
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
MIGRATIONS_DIR = Path(str(importlib.resources.files("migrations")))  # packaged: works installed or from source

T = TypeVar("T")


class AlembicDuckDBImpl(DefaultImpl):
    """Alembic's migration implementation for duckdb-engine's dialect (transactional DDL)."""

    __dialect__ = "duckdb"
    transactional_ddl = True


# ---------------------------------------------------------------------------------------
# Paths and opening
# ---------------------------------------------------------------------------------------
def json_value(value):
    """A JSON column's value: raw duckdb connections return the text, SQLAlchemy the parsed value."""
    return json.loads(value) if isinstance(value, str) else value


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


WRITER_WAITING_FRESH = 1.0  # seconds: a writer's marker not refreshed for longer is stale (writer gone)


def writer_marker(path: Path) -> Path:
    """The file a writer waiting for the lock keeps touching (`<store>.writer-waiting`), so
    that a busy reading process (the report service) lets go of the file between its
    connections instead of starving the writer (see _ConfigGate)."""
    return path.with_name(path.name + ".writer-waiting")


def writer_waiting(path: Path) -> bool:
    """Whether another process's writer is waiting for the file's lock right now."""
    try:
        return time.time() - writer_marker(path).stat().st_mtime < WRITER_WAITING_FRESH
    except OSError:
        return False


def _with_retry(open_fn: Callable[[], T], path: Path, timeout: float, announce: bool = False) -> T:
    """Call open_fn, retrying on DuckDB's lock error with backoff until `timeout` seconds.

    announce=True (read-write opens): while waiting, keep the writer-waiting marker fresh
    and poll faster (readers that see the marker let go of the file for a moment).
    """
    deadline = time.monotonic() + max(0.0, timeout)
    delay, announced = 0.005 if announce else 0.01, False
    try:
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
            if announce:
                try:
                    writer_marker(path).write_text(str(os.getpid()))
                    announced = True
                except OSError:  # a read-only folder: no announcement, plain retry
                    pass
            time.sleep(min(delay * (1 + random.random()), max(0.0, deadline - time.monotonic())) + 1e-3)
            delay = min(delay * 2, 0.02 if announce else 0.05)
    finally:
        if announced:
            writer_marker(path).unlink(missing_ok=True)


def _check_openable(path: Path, read_only: bool) -> None:
    if read_only and not path.exists():
        raise StoreError(f"{path}: no provenance store here; create it with `auditor db upgrade`")
    if path.exists() and path.is_dir():
        raise StoreError(f"{path}: is a directory, not a DuckDB file")


# duckdb errors that mean the file itself is damaged (read past its end, bad checksums, bad metadata)
_CORRUPT_ERRORS = (duckdb.InternalException, duckdb.SerializationException)


def _corrupt_error(path: Path, exc: BaseException) -> StoreError:
    return StoreError(f"{path}: not a valid provenance store (truncated or corrupt: {exc})")


def _is_corrupt(exc: BaseException) -> bool:
    if isinstance(exc, _CORRUPT_ERRORS):
        return True
    return isinstance(exc, duckdb.IOException) and ("Could not read" in str(exc) or "checksum" in str(exc).lower())


def _check_intact(path: Path, conn: duckdb.DuckDBPyConnection) -> None:
    """A cheap check that the file can hold every block in use (a truncated copy cannot), and that
    its catalog reads: nothing is written. Skipped while a WAL file exists (its replay may add
    blocks not yet in the file)."""
    if Path(str(path) + ".wal").exists():
        return
    stat = path.stat()
    stamp = (stat.st_ino, stat.st_size, stat.st_mtime_ns)
    name = str(path.resolve())
    if _INTACT.get(name) == stamp:  # checked already, unchanged since
        return
    try:
        row = conn.execute("PRAGMA database_size").fetchone()
        conn.execute("SELECT count(*) FROM duckdb_tables()").fetchone()  # reads the catalog
    except duckdb.Error as exc:
        raise _corrupt_error(path, exc) from None
    block_size, used_blocks = int(row[2] or 0), int(row[4] or 0)
    if stat.st_size < block_size * used_blocks:  # the blocks in use cannot all be in the file
        raise _corrupt_error(path, f"the file has {stat.st_size} bytes, but {used_blocks} blocks of {block_size} "
                                   "bytes are in use")
    _INTACT[name] = stamp


_INTACT: dict[str, tuple] = {}  # file -> (inode, size, mtime) when _check_intact last passed


def open_raw(path: str | os.PathLike, read_only: bool = False, timeout: float = DEFAULT_TIMEOUT,
             config: dict | None = None) -> duckdb.DuckDBPyConnection:
    """A plain duckdb connection (the caller closes it); retries on the lock. A truncated or corrupt
    file is refused (StoreError) before anything could be written to it."""
    path = Path(path)
    _check_openable(path, read_only)
    existed = path.exists() and path.stat().st_size > 0
    conn = _with_retry(lambda: duckdb.connect(str(path), read_only=read_only, config=config or {}), path, timeout,
                       announce=not read_only)
    if existed:
        try:
            _check_intact(path, conn)
        except BaseException:
            conn.close()
            raise
    return conn


class _ConfigGate:
    """Within one process, DuckDB refuses a connection to a file that is open with another
    configuration (read-only vs read-write, other settings). Threads of one process (the
    report service) therefore take turns by configuration: connections with the same one
    share the file, a different one waits (first come, first served) until they are closed,
    for up to the lock timeout. A thread that already holds another configuration fails at
    once, as DuckDB would, rather than wait for itself."""

    def __init__(self):
        self._cond = threading.Condition()
        self._open: dict[str, list] = {}  # file -> [configuration, count, {thread: count}]
        self._queue: dict[str, list] = {}  # file -> waiting tickets (configuration, object())
        self._kept: dict[str, dict] = {}  # file -> {"path", "idle", "conn", "last"} (keep_open)
        self._monitor: threading.Thread | None = None
        self._stopping = False

    def enter(self, path: Path, key, timeout: float):
        name, me = str(path.resolve()), threading.get_ident()
        ticket = (key, object())
        deadline = time.monotonic() + max(0.0, timeout)
        yield_until = time.monotonic() + WRITER_WAITING_FRESH  # never yield to writers longer than this
        with self._cond:
            held = self._open.get(name)
            if held is not None and me in held[2] and held[0] != key:
                raise StoreError(f"{path}: already open in this thread with other settings")
            queue = self._queue.setdefault(name, [])
            queue.append(ticket)
            while True:
                held = self._open.get(name)
                mine = held is not None and me in held[2]
                # Another process's writer waits for the lock: open nothing new until it got it.
                yielding = not mine and time.monotonic() < yield_until and writer_waiting(path)
                if mine or (not yielding and queue[0] is ticket and (held is None or held[0] == key)):
                    break
                left = deadline - time.monotonic()
                if left <= 0:
                    queue.remove(ticket)
                    self._cond.notify_all()
                    raise LockedError(f"{path}: in use by this process with other settings for more than "
                                      f"{timeout:g} s")
                self._cond.wait(min(left, 0.005) if yielding else left)
            queue.remove(ticket)
            if not queue:
                del self._queue[name]
            held = self._open.setdefault(name, [key, 0, {}])
            held[1] += 1
            held[2][me] = held[2].get(me, 0) + 1
            self._cond.notify_all()  # the next waiter with the same configuration may enter too
        return name, me

    def leave(self, entered) -> None:
        name, me = entered
        with self._cond:
            held = self._open[name]
            held[1] -= 1
            held[2][me] -= 1
            if not held[2][me]:
                del held[2][me]
            if not held[1]:
                del self._open[name]
            self._cond.notify_all()


    # -- keep_open: an idle read-only connection that keeps DuckDB's instance (and its caches)
    def keep_open(self, path: Path, idle: float) -> None:
        name = str(path.resolve())
        with self._cond:
            self._kept.setdefault(name, {"path": path, "idle": idle, "conn": None, "last": 0.0})["idle"] = idle
            if self._monitor is None:
                import atexit

                self._stopping = False
                self._monitor = threading.Thread(target=self._watch, name="duckdb-keep-open", daemon=True)
                self._monitor.start()
                atexit.register(self._stop)

    def _stop(self) -> None:
        """At exit: close the kept connections and end the monitor while the interpreter still
        runs (a daemon thread stopped inside DuckDB at shutdown aborts the process)."""
        with self._cond:
            self._stopping = True
            for name, kept in self._kept.items():
                if kept["conn"] is not None:
                    self._release(name, kept)
        if self._monitor is not None:
            self._monitor.join(timeout=2)

    def anchor(self, path: Path, key) -> None:
        """After a plain read-only connection opened: keep one more open while the file is kept."""
        name = str(path.resolve())
        kept = self._kept.get(name)
        if kept is None or key != _READ_ONLY or self._stopping:
            return
        kept["last"] = time.monotonic()
        if kept["conn"] is not None:
            return
        with self._cond:
            held = self._open.get(name)
            if kept["conn"] is None and held is not None and held[0] == key and not writer_waiting(path):
                try:
                    kept["conn"] = duckdb.connect(str(path), read_only=True)  # the instance is open: cheap
                except duckdb.Error:
                    return
                held[1] += 1

    def _release(self, name: str, kept: dict) -> None:
        """Close the kept connection (under the condition's lock, so no other configuration opens first)."""
        conn, kept["conn"] = kept["conn"], None
        try:
            conn.close()
        finally:
            held = self._open[name]
            held[1] -= 1
            if not held[1]:
                del self._open[name]
            self._cond.notify_all()

    def _watch(self) -> None:
        while not self._stopping:
            time.sleep(0.005)
            with self._cond:
                for name, kept in self._kept.items():
                    if kept["conn"] is None:
                        continue
                    queue = self._queue.get(name) or []
                    if (writer_waiting(kept["path"]) or any(t[0] != _READ_ONLY for t in queue)
                            or time.monotonic() - kept["last"] > kept["idle"]):
                        self._release(name, kept)


_READ_ONLY = (True, ())
_GATE = _ConfigGate()


def keep_open(path: str | os.PathLike, idle: float = 5.0) -> None:
    """In a process that reads the file often (the report service): keep one read-only
    connection open between its short transactions, so that opening the next one costs
    under a millisecond instead of tens. It is closed as soon as another process's writer
    waits for the lock (the writer's marker file), another configuration is wanted in this
    process, or after `idle` seconds without a read."""
    _GATE.keep_open(Path(path), idle)


@contextmanager
def connect(path: str | os.PathLike, read_only: bool = False, timeout: float = DEFAULT_TIMEOUT,
            config: dict | None = None, check_schema: bool = False) -> Iterator[duckdb.DuckDBPyConnection]:
    """One short transaction on a raw duckdb connection: BEGIN, yield, COMMIT (ROLLBACK on error), close.

    Opening retries on the lock for up to `timeout` seconds (then LockedError). Keep the body
    short: the whole file is locked for other processes while it runs. check_schema=True
    first checks, on the same connection, that the file is at this version's head revision
    (SchemaError otherwise): what `require_current` does, without opening the file twice
    (opening costs about 20 ms).
    """
    path = Path(path)
    if check_schema and not path.exists():
        raise StoreError(f"{path}: no provenance store here; create it with `auditor db upgrade`")
    key = (bool(read_only), tuple(sorted((config or {}).items())))
    entered = _GATE.enter(path, key, timeout)
    try:
        conn = open_raw(path, read_only, timeout, config)
        _GATE.anchor(path, key)
    except BaseException:
        _GATE.leave(entered)
        raise
    try:
        if check_schema:
            _check_revision(path, conn)
        conn.execute("BEGIN TRANSACTION")
        try:
            yield conn
        except BaseException as exc:
            try:
                conn.execute("ROLLBACK")
            except duckdb.Error:
                pass
            if _is_corrupt(exc):
                raise _corrupt_error(path, exc) from None
            raise
        conn.execute("COMMIT")
    finally:
        try:
            conn.close()
        finally:  # even when a Ctrl-C lands in close(): a gate left entered would refuse this thread's next open
            _GATE.leave(entered)


def engine(path: str | os.PathLike, read_only: bool = False, timeout: float = DEFAULT_TIMEOUT):
    """A SQLAlchemy engine on the file (duckdb-engine, NullPool: nothing keeps the file open)."""
    from duckdb_engine import ConnectionWrapper
    from sqlalchemy import create_engine
    from sqlalchemy.pool import NullPool

    class GatedConnection(ConnectionWrapper):
        """Leaves the configuration gate (see _ConfigGate) when SQLAlchemy closes it."""

        def __init__(self, conn, entered):
            super().__init__(conn)
            self.entered = entered

        def close(self) -> None:
            try:
                super().close()
            finally:
                if self.entered is not None:
                    _GATE.leave(self.entered)
                    self.entered = None

    def creator():
        entered = _GATE.enter(path, (bool(read_only), ()), timeout)
        try:
            return GatedConnection(open_raw(path, read_only, timeout), entered)
        except BaseException:
            _GATE.leave(entered)
            raise

    path = Path(path)
    _check_openable(path, read_only)
    return create_engine("duckdb:///" + str(path), poolclass=NullPool, creator=creator)


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
        if _is_corrupt(exc.orig):
            raise _corrupt_error(path, exc.orig) from None
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


@functools.lru_cache(maxsize=1)
def _script():
    """The migrations folder, read once per process (it ships with the code)."""
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


def _check_revision(path: Path, conn: duckdb.DuckDBPyConnection) -> str:
    try:
        revision = _read_revision(conn)
    except SchemaError as exc:
        raise SchemaError(f"{path}: {exc}") from None
    head = head_revision()
    if revision == head:
        return revision
    if revision is not None and revision not in known_revisions():
        raise _newer_error(path, revision)
    found = "no schema" if revision is None else f"schema revision {revision!r}"
    raise SchemaError(f"{path} has {found}, this version needs {head!r}: run `auditor db upgrade`")


def require_current(path: str | os.PathLike, timeout: float = DEFAULT_TIMEOUT) -> str:
    """Check that the file exists at the head revision; returns it. SchemaError/StoreError otherwise."""
    path = Path(path)
    if not path.exists():
        raise StoreError(f"{path}: no provenance store here; create it with `auditor db upgrade`")
    with connect(path, read_only=True, timeout=timeout) as conn:
        return _check_revision(path, conn)


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
