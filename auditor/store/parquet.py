"""Provenance as Hive-partitioned Parquet: an export of the store, and a reader with the store's views.

DuckDB lets one process write a store; a folder of Parquet files has no such limit, and
DuckDB, Spark and Trino read it as it is. The layout (FORMAT_VERSION 1), under one folder:

  _pspc_parquet.json                    the manifest: format, schema revision, every table's
                                        columns with their store types and partition keys, and
                                        the SQL of the store's views
  <table>/run_id=R/step=S/*.parquet     the per-step tables (a run_id and a step column): steps,
                                        patch_weights, patch_stats, step_shares, step_agreement
  <table>/run_id=R/*.parquet            the per-run tables (a run_id column, and runs by its id):
                                        runs, samples, copy_verdicts, ...; run_completions (below)
  <table>/*.parquet                     the other tables: datasets, training_images, patch_sets, ...

The partition columns live in the folder names only (Hive's convention), so the files hold the
other columns, with the store's types. The tables are those SQL sees (query.VISIBLE_TABLES),
never the service's own records (api_keys, jobs, alembic_version); training_images.pixels is
left out unless asked for (the reader gives NULL then).

`run_completions` (run_id, status, finished_at, timings, error) holds one row per run that has
ended, written last by the recorders that append to a folder (auditor.store.parquet_recorder):
their runs row says 'running', and the reader's `runs` view takes status, finished_at, timings
and error from the completion when there is one. An export's runs rows carry their own status.

`export_parquet` writes with DuckDB's own COPY ... (FORMAT PARQUET, PARTITION_BY ...) into a
hidden folder beside the target and renames it into place once complete, so no reader ever sees
half an export. `open_parquet` gives an in-memory DuckDB connection with one view per table over
read_parquet (partition columns typed as in the store) and the store's views re-created from the
manifest's SQL (the text the migrations created, read from the store's catalog), so the README's
example queries run unchanged. `run_parquet_query` is `auditor sql` on such a folder.
"""

from __future__ import annotations

import functools
import json
import os
import re
import shutil
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import duckdb

from auditor.errors import NotFoundError, StoreError
from auditor.store import database
from auditor.store.query import DEFAULT_MAX_BYTES, VISIBLE_TABLES, QueryResult, answer, check_read_only

__all__ = ["COMPLETION_COLUMNS", "COMPRESSION", "ExportSummary", "FORMAT", "FORMAT_VERSION", "MANIFEST",
           "RUN_COMPLETIONS", "create_manifest", "export_parquet", "has_files", "head_schema", "literal",
           "open_parquet", "partition_keys", "quote", "read_manifest", "run_parquet_query", "store_schema",
           "write_manifest"]

FORMAT = "pspc-auditor-parquet"
FORMAT_VERSION = 1
MANIFEST = "_pspc_parquet.json"
RUN_COMPLETIONS = "run_completions"
COMPLETION_COLUMNS = (("run_id", "BIGINT"), ("status", "VARCHAR"), ("finished_at", "TIMESTAMP"), ("timings", "JSON"),
                      ("error", "VARCHAR"))
COMPRESSION = "zstd"  # read by DuckDB, Spark (2.4+), Trino and pyarrow
_STORED_RUNS = "_runs_as_written"  # the reader's view of the runs files, before the completions are applied


def quote(name: str) -> str:
    """A SQL identifier, double-quoted."""
    return '"' + name.replace('"', '""') + '"'


def literal(path) -> str:
    """A path as a SQL string literal (COPY ... TO and read_parquet take no parameters)."""
    return "'" + str(path).replace("'", "''") + "'"


def partition_keys(table: str, columns) -> list[str]:
    """The Hive partition columns of a table: run_id and step for the per-step tables, run_id for the
    per-run ones (runs: its id, as run_id), none for the rest."""
    names = {name for name, _ in columns}
    if {"run_id", "step"} <= names:
        return ["run_id", "step"]
    if "run_id" in names or table == "runs":
        return ["run_id"]
    return []


def _run_column(table: str) -> str:
    return "id" if table == "runs" else "run_id"


# ---------------------------------------------------------------------------------------
# The schema a folder records (its manifest)
# ---------------------------------------------------------------------------------------
def store_schema(conn: duckdb.DuckDBPyConnection, *, pixels: bool = False) -> dict:
    """The tables SQL sees on an open store connection, with their columns and store types and
    partition keys, run_completions, and the store's views (their SQL, as the migrations created them)."""
    tables = {}
    rows = conn.execute(
        "SELECT t.table_name, list([c.column_name, c.data_type] ORDER BY c.column_index) FROM duckdb_tables() t "
        "JOIN duckdb_columns() c ON c.table_oid = t.table_oid WHERE t.schema_name = 'main' AND NOT t.internal "
        "AND t.database_name = current_database() GROUP BY t.table_name ORDER BY t.table_name").fetchall()
    for name, columns in rows:
        if name in VISIBLE_TABLES:
            omitted = [] if pixels or name != "training_images" else ["pixels"]
            tables[name] = {"columns": [list(c) for c in columns], "partition_by": partition_keys(name, columns),
                            "omitted": omitted}
    completion = [list(c) for c in COMPLETION_COLUMNS]
    tables[RUN_COMPLETIONS] = {"columns": completion, "partition_by": ["run_id"], "omitted": []}
    views = conn.execute("SELECT view_name, sql FROM duckdb_views() WHERE schema_name = 'main' AND NOT internal "
                         "AND database_name = current_database() ORDER BY view_name").fetchall()
    revision = conn.execute("SELECT max(version_num) FROM alembic_version").fetchall()[0][0]
    return {"revision": revision, "tables": tables,
            "views": [[name, sql] for name, sql in views if name in VISIBLE_TABLES]}


@functools.lru_cache(maxsize=2)
def _head_schema(pixels: bool) -> str:
    with tempfile.TemporaryDirectory(prefix="pspc-schema-") as folder:
        path = Path(folder) / "schema.duckdb"
        database.upgrade(path)  # the migrations' own tables and views (about 0.4 s)
        with database.connect(path, read_only=True) as conn:
            return json.dumps(store_schema(conn, pixels=pixels))


def head_schema(*, pixels: bool = False) -> dict:
    """store_schema of an empty store at this version's head revision (made once per process):
    what recorders appending to a folder write when they create it."""
    return json.loads(_head_schema(bool(pixels)))


def create_manifest(schema: dict, origin: str, **extra) -> dict:
    """The manifest of a folder holding `schema` (store_schema's); origin: 'export' or 'recorders'."""
    return {"format": FORMAT, "format_version": FORMAT_VERSION, "schema_revision": schema["revision"],
            "origin": origin, "created_at": datetime.now(timezone.utc).isoformat(), "tables": schema["tables"], "views": schema["views"],
            **extra}


def write_manifest(folder: Path, manifest: dict) -> None:
    """Write the manifest atomically (temp file, then rename): a reader sees all of it or none."""
    partial = folder / f".{MANIFEST}.{uuid.uuid4().hex[:8]}.tmp"
    partial.write_text(json.dumps(manifest, indent=1, default=str))
    os.replace(partial, folder / MANIFEST)


def read_manifest(folder) -> dict:
    """The manifest of a Parquet provenance folder; StoreError naming the folder when it is missing,
    not a folder, not one of ours, or of a format version this auditor does not read."""
    root = Path(folder)
    if not root.exists():
        raise StoreError(f"{root}: no such folder (export a store with `auditor parquet export`)")
    if not root.is_dir():
        raise StoreError(f"{root}: not a folder; a Parquet provenance export is a folder")
    path = root / MANIFEST
    try:
        manifest = json.loads(path.read_text())
    except FileNotFoundError:
        raise StoreError(f"{root}: not a Parquet provenance folder (no {MANIFEST}); export one with "
                         "`auditor parquet export`") from None
    except (OSError, ValueError) as exc:
        raise StoreError(f"{path}: unreadable manifest ({exc})") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise StoreError(f"{path}: not a {FORMAT} manifest")
    if manifest.get("format_version") != FORMAT_VERSION:
        raise StoreError(f"{root}: Parquet layout version {manifest.get('format_version')!r}; this auditor reads "
                         f"version {FORMAT_VERSION} (upgrade auditor, or export the store again)")
    problem = _manifest_problem(manifest)
    if problem:
        raise StoreError(f"{path}: malformed manifest ({problem})")
    return manifest


_NAME = re.compile(r"[a-z_][a-z0-9_]*")
_TYPE = re.compile(r"[A-Z][A-Z0-9_]*(\(\d+(, ?\d+)?\))?(\[\])*")  # BIGINT, DECIMAL(18,3), VARCHAR[], ...


def _manifest_problem(manifest: dict) -> str | None:
    """What makes a manifest unsafe to turn into SQL (its names, types and views go into the
    reader's statements), or None: plain table and column names, plain type names, partition keys
    of the layout, and views that are each one CREATE VIEW statement of their own name."""
    try:
        for name, spec in manifest["tables"].items():
            if not _NAME.fullmatch(name) or not set(spec["partition_by"]) <= {"run_id", "step"}:
                return f"table {name!r}"
            for column, kind in spec["columns"]:
                if not (_NAME.fullmatch(column) and _TYPE.fullmatch(kind)):
                    return f"column {column!r} {kind!r} of {name}"
        for name, sql in manifest["views"]:
            statements = duckdb.extract_statements(sql)
            if not (_NAME.fullmatch(name) and len(statements) == 1 and statements[0].type == duckdb.StatementType.CREATE
                    and re.match(rf"CREATE VIEW {name} AS ", sql)):
                return f"view {name!r} is not one CREATE VIEW statement"
    except (KeyError, TypeError, ValueError, AttributeError, duckdb.Error) as exc:
        return f"{type(exc).__name__}: {exc}"
    return None


# ---------------------------------------------------------------------------------------
# Export
# ---------------------------------------------------------------------------------------
@dataclass
class ExportSummary:
    """What export_parquet wrote: rows per table, Parquet files and bytes in all, seconds."""

    out_dir: Path
    rows: dict = field(default_factory=dict)
    files: int = 0
    bytes: int = 0
    seconds: float = 0.0


def _check_target(target: Path, overwrite: bool) -> None:
    if not target.parent.is_dir():
        raise StoreError(f"{target}: folder {target.parent} does not exist")
    if target.exists() and not target.is_dir():
        raise StoreError(f"{target}: is a file; the export is a folder")
    if not target.exists() or not any(target.iterdir()):
        return
    if not overwrite:
        raise StoreError(f"{target}: the folder is not empty; choose a new or empty folder, or pass --overwrite to "
                         "replace the export there (it is replaced only once the new one is complete)")
    if not (target / MANIFEST).exists():
        raise StoreError(f"{target}: not a Parquet provenance folder (no {MANIFEST}); --overwrite replaces only an "
                         "earlier export, never another folder")


def _checked_runs(conn, db_path, run_ids) -> list[int] | None:
    if run_ids is None:
        return None
    ids = sorted({int(r) for r in run_ids})
    found = {row[0] for row in conn.execute("SELECT id FROM runs WHERE list_contains(?, id)", [ids]).fetchall()}
    missing = [r for r in ids if r not in found]
    if missing:
        raise NotFoundError(f"{db_path}: no run {', '.join(map(str, missing))}")
    return ids


def _copy_table(conn, name: str, spec: dict, folder: Path, run_ids: list[int] | None) -> int:
    """COPY one table of the store into folder/<name>/ (partitioned as the spec says); returns its rows."""
    written = [column for column, _ in spec["columns"] if column not in spec["omitted"]]
    select = ", ".join(quote(c) for c in written) + (", id AS run_id" if name == "runs" else "")
    where = ""
    if run_ids is not None and spec["partition_by"]:
        where = f" WHERE {quote(_run_column(name))} IN ({', '.join(map(str, run_ids))})"
    query = f"SELECT {select} FROM {quote(name)}{where}"
    keys = spec["partition_by"]
    target = folder / name
    options = f"FORMAT PARQUET, COMPRESSION {COMPRESSION}"
    if keys:
        options += f", PARTITION_BY ({', '.join(quote(k) for k in keys)}), FILENAME_PATTERN 'data_{{i}}'"
    else:
        target.mkdir()
        target = target / "data.parquet"
    return int(conn.execute(f"COPY ({query}) TO {literal(target)} ({options})").fetchall()[0][0])


def _publish(staging: Path, target: Path, overwrite: bool) -> None:
    """Move the complete export into place: a rename (over an empty folder too), or, replacing an
    earlier export, two renames with the old one removed after."""
    try:
        os.rename(staging, target)
        return
    except OSError:
        if not (overwrite and (target / MANIFEST).exists()):
            raise StoreError(f"{target}: files appeared in the folder during the export; nothing was written "
                             "there") from None
    old = target.with_name(f".{target.name}.replaced-{uuid.uuid4().hex[:8]}")
    os.rename(target, old)
    try:
        os.rename(staging, target)
    except BaseException:
        os.rename(old, target)
        raise
    shutil.rmtree(old, ignore_errors=True)


def has_files(folder: Path) -> bool:
    """Whether a table's folder holds a Parquet file (writers' partial files are hidden: *.tmp)."""
    return folder.is_dir() and next(folder.rglob("*.parquet"), None) is not None


def export_parquet(db_path, out_dir, *, run_ids=None, pixels: bool = False, overwrite: bool = False,
                   timeout: float = database.DEFAULT_TIMEOUT) -> ExportSummary:
    """Export the store's provenance tables to `out_dir` as Hive-partitioned Parquet (module doc).

    run_ids: only these runs in the runs table and the tables with a run_id column (the others
    are exported whole); pixels: training_images.pixels too. `out_dir` must be new or empty;
    overwrite=True replaces an earlier export there, and nothing else. The store is read in ONE
    read-only transaction (a consistent snapshot; a recorder waits for it like for any reader),
    written to a hidden folder beside `out_dir` and renamed into place when complete; on any
    error nothing is left behind. NotFoundError for an unknown run id.
    """
    started = time.perf_counter()
    target = Path(out_dir)
    _check_target(target, overwrite)
    database.require_current(db_path, timeout)
    staging = target.with_name(f".{target.name}.export-{uuid.uuid4().hex[:8]}")
    staging.mkdir()
    try:
        summary = ExportSummary(target)
        with database.connect(db_path, read_only=True, timeout=timeout) as conn:
            schema = store_schema(conn, pixels=pixels)
            ids = _checked_runs(conn, db_path, run_ids)
            for name, spec in schema["tables"].items():
                if name != RUN_COMPLETIONS:  # the store keeps a run's status in its row
                    summary.rows[name] = _copy_table(conn, name, spec, staging, ids)
        write_manifest(staging, create_manifest(schema, "export", source={"store": str(db_path), "runs": ids},
                                                rows=summary.rows))
        files = list(staging.rglob("*.parquet"))
        summary.files, summary.bytes = len(files), sum(f.stat().st_size for f in files)
        _publish(staging, target, overwrite)
    except duckdb.Error as exc:  # a full disk, say: the user's to fix
        shutil.rmtree(staging, ignore_errors=True)
        raise StoreError(f"{target}: the export failed, nothing was written there ({exc})") from None
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    summary.seconds = time.perf_counter() - started
    return summary


# ---------------------------------------------------------------------------------------
# Reading
# ---------------------------------------------------------------------------------------
def _table_source(root: Path, name: str, spec: dict) -> str:
    """SELECT of one table's rows with the store's columns in the store's order: read_parquet over
    its files, or no rows of the right types while it has none."""
    columns = spec["columns"]
    if not has_files(root / name):
        return "SELECT " + ", ".join(f"CAST(NULL AS {kind}) AS {quote(c)}" for c, kind in columns) + " WHERE false"
    keys = spec["partition_by"]
    types = dict(columns)
    options = "hive_partitioning = false"
    if keys:
        hive = ", ".join(f"'{k}': '{types.get(k, 'BIGINT')}'" for k in keys)
        options = f"hive_partitioning = true, hive_types = {{{hive}}}"
    select = ", ".join(f"CAST(NULL AS {kind}) AS {quote(c)}" if c in spec["omitted"] else quote(c)
                       for c, kind in columns)
    glob = root / name / ("**/*.parquet" if keys else "*.parquet")
    return f"SELECT {select} FROM read_parquet({literal(glob)}, {options})"


def _runs_view(spec: dict) -> str:
    """runs with each ended run's status, finish time, timings and error from its completion row."""
    ended = {c for c, _ in COMPLETION_COLUMNS} - {"run_id"}
    select = ", ".join(f"CASE WHEN c.run_id IS NULL THEN r.{quote(c)} ELSE c.{quote(c)} END AS {quote(c)}"
                       if c in ended else f"r.{quote(c)}" for c, _ in spec["columns"])
    return (f"SELECT {select} FROM {_STORED_RUNS} AS r LEFT JOIN (SELECT * FROM {RUN_COMPLETIONS} QUALIFY "
            f"row_number() OVER (PARTITION BY run_id ORDER BY finished_at) = 1) AS c ON c.run_id = r.id")


def _create_views(conn, views) -> None:
    """Run the views' CREATE VIEW statements, each once the views it reads exist (the catalog does
    not record their order); a view that cannot be made raises DuckDB's error."""
    pending = [sql for _, sql in views]
    while pending:
        waiting = []
        for sql in pending:
            try:
                conn.execute(sql)
            except duckdb.CatalogException:
                waiting.append(sql)
        if len(waiting) == len(pending):
            conn.execute(waiting[0])  # no progress: the first one's own error
        pending = waiting


def open_parquet(out_dir, *, sql_only: bool = False) -> duckdb.DuckDBPyConnection:
    """An in-memory DuckDB connection over a Parquet provenance folder: one view per table, and the
    store's views (pixel_weights, step_sources, sample_sources, trajectory_sources) from the
    manifest's SQL. The caller closes it (`with open_parquet(d) as conn:`). sql_only=True (what
    `auditor parquet sql` runs on): file access is limited to the folder, Python replacement scans
    are off and the settings are locked. StoreError for a folder that is not an export."""
    root = Path(out_dir).resolve()
    manifest = read_manifest(root)
    conn = duckdb.connect(config={"python_enable_replacements": False} if sql_only else {})
    try:
        if sql_only:
            conn.execute(f"SET allowed_directories = [{literal(str(root) + os.sep)}]")
            conn.execute("SET enable_external_access = false")
        tables = manifest["tables"]
        for name, spec in tables.items():
            view = _STORED_RUNS if name == "runs" else name
            conn.execute(f"CREATE VIEW {quote(view)} AS {_table_source(root, name, spec)}")
        if "runs" in tables:
            conn.execute(f"CREATE VIEW runs AS {_runs_view(tables['runs'])}")
        _create_views(conn, manifest["views"])
        if sql_only:
            conn.execute("SET lock_configuration = true")
    except duckdb.Error as exc:
        conn.close()
        raise StoreError(f"{root}: cannot read the Parquet provenance folder ({exc})") from None
    except BaseException:
        conn.close()
        raise
    return conn


def run_parquet_query(out_dir, sql: str, *, max_rows: int = 10000, query_timeout: float | None = None,
                      interface: str = "auditor parquet sql", max_bytes: int | None = DEFAULT_MAX_BYTES) -> QueryResult:
    """`auditor sql` on a Parquet provenance folder: the same read-only and visibility checks and
    limits (auditor.store.query.answer), over open_parquet's views."""
    if max_rows is not None and max_rows < 0:
        raise StoreError(f"max_rows must be >= 0, got {max_rows}")
    statement = check_read_only(sql, interface)
    with open_parquet(out_dir, sql_only=True) as conn:
        result = answer(conn, sql, statement, max_rows=max_rows, query_timeout=query_timeout, interface=interface,
                        max_bytes=max_bytes)
    result.time_limit.check()
    return result
