"""Read-only SQL on the provenance store (`auditor sql`) and its output formats.

The statement is parsed with DuckDB's own parser before anything runs: exactly one SELECT
(including WITH ... SELECT, VALUES, FROM-first, DESCRIBE, SHOW, SUMMARIZE) or EXPLAIN
statement is accepted; anything else is refused with a clear error (check_read_only). Its
parse tree (DuckDB's json_serialize_sql) is then checked against what SQL may see
(check_visible): the provenance tables and views (VISIBLE_TABLES) and pure table functions,
not the service's own records (api keys, jobs), the catalog (information_schema,
duckdb_tables(), ...), settings, sequences or files. It runs on a read-only connection with
external access and Python replacement scans disabled, so even a statement the checks
missed could not change the store or read another file.

A query's time limit covers the statement, fetching its rows and turning them into an
answer (json_rows, format_csv, ...): QueryResult.time_limit carries the deadline.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import re
import threading
import time
from dataclasses import dataclass
from datetime import date, datetime, time as dtime, timedelta
from decimal import Decimal
from typing import Iterable, Iterator
from uuid import UUID

import duckdb

from auditor.errors import StoreError
from auditor.store import database

__all__ = ["ALLOWED", "FORMATS", "HIDDEN_TABLES", "NotVisible", "QueryResult", "Refused", "TABLE_FUNCTIONS",
           "TimeLimit", "VISIBLE_TABLES", "WriteRefused", "answer", "check_read_only", "check_visible", "format_csv",
           "format_json", "format_result", "format_table", "json_rows", "jsonable", "run_query", "timed"]

FORMATS = ("table", "csv", "json")
ALLOWED = {duckdb.StatementType.SELECT, duckdb.StatementType.EXPLAIN}

# What SQL can read: every table and view of the store is in exactly one of these two sets (a
# test checks it), so a table added by a migration stays hidden until someone puts it here.
VISIBLE_TABLES = frozenset({
    "datasets", "training_images", "runs", "samples", "steps", "patch_sets", "patch_positions", "patch_pixels",
    "patch_weights", "patch_stats", "step_shares", "networks", "comparisons", "comparison_runs", "descriptors",
    "similarity_scores", "copy_matches", "step_agreement", "fidelity_studies", "fidelity_errors",
    "fidelity_concentration", "fidelity_similarity", "fidelity_schedule", "copy_calibrations", "copy_verdicts",
    "counterfactuals", "counterfactual_removed",
    "pixel_weights", "step_sources", "sample_sources", "trajectory_sources", "nda_scores",  # the attribution views
})
HIDDEN_TABLES = frozenset({"api_keys", "jobs", "alembic_version"})  # the service's own records
TABLE_FUNCTIONS = frozenset({"range", "generate_series", "unnest", "json_each", "json_tree"})  # pure: no tables
# scalar functions that read settings or sequences; the catalog's macros that read tables are added (_reading_macros)
HIDDEN_FUNCTIONS = frozenset({"current_setting", "nextval", "currval"})
SQL_CONFIG = {"enable_external_access": False, "python_enable_replacements": False, "lock_configuration": True}


class Refused(StoreError):
    """A well-formed statement that SQL does not run (the service answers 403)."""


class WriteRefused(Refused):
    """One well-formed statement that is not read-only (INSERT, DROP, ATTACH, COPY, SET, ...)."""


class NotVisible(Refused):
    """A read of something SQL does not expose: the service's own tables (API keys, jobs), the
    catalog, settings, sequences, files, or a table function other than TABLE_FUNCTIONS."""


class QueryResult(tuple):
    """(columns, rows); `.truncated` is True when more than max_rows rows matched; `.time_limit`
    is the query's TimeLimit (turning the rows into an answer must be done within it too)."""

    def __new__(cls, columns: list[str], rows: list[tuple], truncated: bool = False,
                time_limit: "TimeLimit | None" = None):
        result = super().__new__(cls, (columns, rows))
        result.truncated = truncated
        result.time_limit = time_limit
        return result

    @property
    def columns(self) -> list[str]:
        return self[0]

    @property
    def rows(self) -> list[tuple]:
        return self[1]


@dataclass(frozen=True)
class TimeLimit:
    """`seconds` from when a query started (None: no limit); `check` raises once they are over."""

    seconds: float | None
    ends: float | None
    interface: str = "auditor sql"

    @classmethod
    def start(cls, seconds: float | None, interface: str = "auditor sql") -> "TimeLimit":
        return cls(seconds, None if not seconds else time.monotonic() + seconds, interface)

    def exceeded(self) -> StoreError:
        return StoreError(f"{self.interface}: query interrupted after {self.seconds:g} s")

    def check(self) -> None:
        if self.ends is not None and time.monotonic() > self.ends:
            raise self.exceeded()


def timed(rows: Iterable, time_limit: TimeLimit | None) -> Iterator:
    """`rows`, one at a time, checking `time_limit` before each (for code that turns them into an answer)."""
    for row in rows:
        if time_limit is not None:
            time_limit.check()
        yield row


def check_read_only(sql: str, interface: str = "auditor sql") -> duckdb.Statement:
    """THE read-only check: the single read-only statement in `sql`, parsed by DuckDB; nothing is run.

    StoreError for an empty query, malformed SQL or more than one statement (bad input: 400 in
    the service); WriteRefused (a StoreError) for one well-formed statement of any other kind
    than SELECT / EXPLAIN (the service answers 403). `interface` names the caller in the
    messages ("auditor sql", "the SQL endpoint"). What the statement may read is check_visible's.
    """
    if not sql or not sql.strip():
        raise StoreError(f"{interface}: empty query")
    try:
        sql.encode("utf-8")
    except UnicodeEncodeError:  # argv bytes that were not UTF-8 arrive as surrogate escapes
        raise StoreError(f"{interface}: SQL must be UTF-8 text") from None
    try:
        statements = duckdb.extract_statements(sql)
    except duckdb.Error as exc:
        raise StoreError(f"{interface}: malformed SQL: {exc}") from None
    if not statements:
        raise StoreError(f"{interface}: empty query")
    if len(statements) > 1:
        raise StoreError(f"{interface} runs one statement at a time; got {len(statements)}")
    statement = statements[0]
    if statement.type not in ALLOWED:
        raise _write_refused(interface, _statement_kind(statement), statement.type == duckdb.StatementType.PRAGMA)
    return statement


def _write_refused(interface: str, kind: str, pragma: bool = False) -> WriteRefused:
    hint = " (DESCRIBE <table> shows a table's columns)" if pragma else ""
    return WriteRefused(f"{interface} is read-only: {kind} statements are not allowed; "
                        f"use SELECT, WITH ... SELECT, EXPLAIN, DESCRIBE or SHOW{hint}")


# DuckDB gives one statement type to several statements: CHECKPOINT is a CALL, INSTALL a LOAD, USE a SET
_NAMED_BY_KEYWORD = {duckdb.StatementType.CALL, duckdb.StatementType.LOAD, duckdb.StatementType.SET}


def _tokens(text: str) -> list[str]:
    """The tokens of `text` (DuckDB's tokenizer), comments left out."""
    found = duckdb.tokenize(text)
    ends = [pos for pos, _ in found[1:]] + [len(text)]
    return [text[pos:end].strip() for (pos, kind), end in zip(found, ends) if kind != duckdb.token_type.comment]


def _statement_kind(statement: duckdb.Statement) -> str:
    """What to call a refused statement: its type, or its leading keyword(s) where the type is shared."""
    kind = statement.type.name.replace("_", " ")
    if statement.type not in _NAMED_BY_KEYWORD:
        return kind
    words = _tokens(statement.query)[:2]
    if not words:
        return kind
    return " ".join(words).upper() if words[0].upper() == "FORCE" else words[0].upper()


_QUERY_STARTS = {"SELECT", "WITH", "FROM", "VALUES", "TABLE", "DESCRIBE", "SHOW", "SUMMARIZE", "PIVOT", "UNPIVOT", "("}


def _explained(statement: duckdb.Statement, interface: str) -> str:
    """The text of the statement an EXPLAIN [ANALYZE] [(options)] statement explains (a SELECT)."""
    text = statement.query
    found = duckdb.tokenize(text)
    positions = [pos for pos, kind in found if kind != duckdb.token_type.comment]
    words = _tokens(text)
    i = 1  # past EXPLAIN
    if i < len(words) and words[i].upper() == "ANALYZE":
        i += 1
    if i + 1 < len(words) and words[i] == "(" and words[i + 1].upper() not in _QUERY_STARTS:  # (FORMAT json, ...)
        depth = 0
        while i < len(words):
            depth += words[i].count("(") - words[i].count(")")
            i += 1
            if depth <= 0:
                break
    inner = text[positions[i]:] if i < len(words) else ""
    try:
        statements = duckdb.extract_statements(inner) if inner.strip() else []
    except duckdb.Error:
        statements = []
    if len(statements) != 1:
        raise StoreError(f"{interface}: EXPLAIN needs one statement to explain, after its options")
    if statements[0].type != duckdb.StatementType.SELECT:
        raise _write_refused(interface, f"EXPLAIN {_statement_kind(statements[0])}")
    return statements[0].query


# One round trip: the store's catalog name, the statement's parse tree, and every table and view
# name DuckDB could resolve a name to (the store's, the system catalog's, information_schema's).
_CHECK_SQL = ("SELECT current_database(), json_serialize_sql(?), (SELECT list(DISTINCT lower(name)) FROM "
              "(SELECT table_name AS name FROM duckdb_tables() UNION ALL SELECT view_name FROM duckdb_views()))")
# the kinds of table reference in a parse tree; any other kind is refused (it could not be checked)
_TABLE_REFS = {"BASE_TABLE", "JOIN", "SUBQUERY", "TABLE_FUNCTION", "EMPTY", "EXPRESSION_LIST", "PIVOT", "SHOW_REF"}
_MACROS: dict[str, frozenset] = {}  # DuckDB version -> the catalog's macros that read tables


def _reading_macros(conn: duckdb.DuckDBPyConnection) -> frozenset:
    """The catalog's scalar macros that read a table or a table function (pg_get_viewdef reads
    duckdb_views(), get_block_size pragma_database_size(), ...), and the macros that call them:
    read once per process (about 40 ms), they come with DuckDB."""
    if duckdb.__version__ not in _MACROS:
        macros = conn.execute("SELECT DISTINCT lower(function_name), lower(coalesce(macro_definition, '')) "
                              "FROM duckdb_functions() WHERE function_type = 'macro'").fetchall()
        reading = {name for name, body in macros if re.search(r"\bfrom\b", body)}
        while True:
            calls = re.compile(r"\b(" + "|".join(map(re.escape, sorted(reading))) + r")\s*\(") if reading else None
            more = {name for name, body in macros if calls and name not in reading and calls.search(body)}
            if not more:
                break
            reading |= more
        _MACROS[duckdb.__version__] = frozenset(reading)
    return _MACROS[duckdb.__version__]


def _nodes(tree) -> Iterator[dict]:
    """Every object in a parse tree (json_serialize_sql's), at any depth: the tables, functions and
    subqueries of every clause."""
    stack = [tree]
    while stack:
        node = stack.pop()
        if isinstance(node, dict):
            yield node
            stack.extend(v for v in node.values() if isinstance(v, (dict, list)))
        elif isinstance(node, list):
            stack.extend(v for v in node if isinstance(v, (dict, list)))


def _visible_list() -> str:
    return ", ".join(sorted(VISIBLE_TABLES))


@dataclass(frozen=True)
class _Names:
    """How the names of one statement resolve: the store's catalog name, every catalog object's
    name, and the statement's own CTE names."""

    database: str
    catalog: frozenset
    ctes: frozenset
    interface: str

    def check_table(self, name: str, schema: str = "", catalog: str = "") -> None:
        """Pass a visible table or view of the store, or one of the statement's CTEs; refuse anything else."""
        table, schema, catalog = name.lower(), schema.lower(), catalog.lower()
        own = (catalog in ("", self.database) and schema in ("", "main")) or (not catalog and schema == self.database)
        if table in VISIBLE_TABLES and own:
            return
        hidden = table in self.catalog or table in HIDDEN_TABLES
        if table in self.ctes and not schema and not catalog:
            if not hidden:
                return  # one of the statement's CTEs
            raise NotVisible(f"{self.interface}: a CTE cannot be named {name!r}, like a table or view SQL does not "
                             "show (outside its WITH the name would read that table); rename it")
        shown = ".".join(part for part in (catalog, schema, name) if part)
        if hidden:
            raise NotVisible(f"{self.interface}: {shown!r} is not visible to SQL; it reads the provenance tables "
                             f"and views: {_visible_list()}")
        raise StoreError(f"{self.interface}: no table or view named {shown!r}; SQL reads the provenance tables "
                         f"and views: {_visible_list()}")


def check_visible(conn: duckdb.DuckDBPyConnection, statement: duckdb.Statement,
                  interface: str = "auditor sql") -> None:
    """THE visibility check: every table, view, table function and function `statement` (one
    that check_read_only accepted) names, at any depth (subqueries, CTEs, DESCRIBE, EXPLAIN), is
    one that SQL may read; nothing is run. `conn` is the store's connection (for its catalog).

    NotVisible (a Refused: the service answers 403) for a hidden table or catalog view
    (api_keys, jobs, information_schema, duckdb_tables, sqlite_master, ...) however it is
    qualified, SHOW TABLES / SHOW DATABASES, a table function other than TABLE_FUNCTIONS
    (duckdb_databases(), query_table(), read_parquet(), pragma_...()) and functions that read
    settings, sequences or the catalog; StoreError for a name that is no table at all.
    """
    text = _explained(statement, interface) if statement.type == duckdb.StatementType.EXPLAIN else statement.query
    database_name, serialized, names = conn.execute(_CHECK_SQL, [text]).fetchone()
    try:
        tree = json.loads(serialized)
    except RecursionError:
        raise StoreError(f"{interface}: the statement is nested too deeply to check; flatten it "
                         "(WITH ... AS (...) parts instead of nested subqueries)") from None
    if tree.get("error"):
        raise Refused(f"{interface}: this statement cannot be checked ({tree.get('error_message')}); "
                      "write it as a plain SELECT")
    nodes = list(_nodes(tree.get("statements", [])))
    ctes = {str(entry.get("key", "")).lower() for node in nodes for entry in (node.get("cte_map") or {}).get("map", ())}
    ctes |= {str(node["cte_name"]).lower() for node in nodes if node.get("cte_name")}
    resolve = _Names(database_name.lower(), frozenset(names or ()), frozenset(ctes), interface)
    hidden_functions = HIDDEN_FUNCTIONS | _reading_macros(conn)
    for node in nodes:
        kind = node.get("type")
        if "sample" in node and "modifiers" not in node and "class" not in node and kind not in _TABLE_REFS:
            raise Refused(f"{interface}: this statement cannot be checked (a {kind} reference); "
                          "write it as a plain SELECT")
        if kind == "BASE_TABLE":
            resolve.check_table(node.get("table_name", ""), node.get("schema_name", ""), node.get("catalog_name", ""))
        elif kind == "SHOW_REF" and node.get("show_type") == "SHOW_SPECIAL":
            raise NotVisible(f"{interface}: SHOW TABLES and SHOW DATABASES list the store's own records too; SQL "
                             f"reads the provenance tables and views: {_visible_list()} (DESCRIBE <table> shows "
                             "a table's columns)")
        elif kind == "SHOW_REF" and node.get("table_name"):
            resolve.check_table(node["table_name"], node.get("schema_name", ""), node.get("catalog_name", ""))
        elif kind == "TABLE_FUNCTION":
            name = (node.get("function") or {}).get("function_name", "?")
            if name.lower() not in TABLE_FUNCTIONS:
                raise NotVisible(f"{interface}: {name}() is not available in SQL; the table functions are "
                                 f"{', '.join(sorted(TABLE_FUNCTIONS))}")
        elif node.get("class") == "FUNCTION" and str(node.get("function_name", "")).lower() in hidden_functions:
            raise NotVisible(f"{interface}: {node['function_name']}() is not available in SQL (it reads settings, "
                             "sequences or the catalog)")


DEFAULT_MAX_BYTES = 8 * 2**20  # an answer's estimated size at most (run_query's max_bytes)
_CELL_OVERHEAD = 8  # bytes counted per cell on top of its text/blob length
_FETCH_BATCH = 1024


def _cell_size(value) -> int:
    if isinstance(value, (str, bytes, bytearray)):
        return len(value) + _CELL_OVERHEAD
    if isinstance(value, memoryview):
        return value.nbytes + _CELL_OVERHEAD
    if isinstance(value, (list, tuple)):
        return sum(_cell_size(v) for v in value) + _CELL_OVERHEAD
    if isinstance(value, dict):
        return sum(_cell_size(k) + _cell_size(v) for k, v in value.items()) + _CELL_OVERHEAD
    return _CELL_OVERHEAD + 8


def _too_big(interface: str, max_bytes: int) -> StoreError:
    size = f"{max_bytes / 2**20:g} MB" if max_bytes >= 2**20 else f"{max_bytes} bytes"
    return StoreError(f"{interface}: the answer is over {size}; select fewer columns/rows or add LIMIT")


def run_query(db_path: str | os.PathLike, sql: str, *, max_rows: int = 10000,
              timeout: float = database.DEFAULT_TIMEOUT, query_timeout: float | None = None,
              interface: str = "auditor sql", max_bytes: int | None = DEFAULT_MAX_BYTES) -> QueryResult:
    """Run one read-only statement (check_read_only, then check_visible on the store's catalog);
    returns (columns, rows) with at most max_rows rows. An answer whose estimated size (text and
    blob lengths plus a few bytes per cell) goes over `max_bytes` is refused with a StoreError
    (None: no byte cap); fetching stops as soon as it does.

    `timeout`: seconds to wait for another process's lock on the file; `query_timeout`: seconds
    from when the store is open until the answer must be done (None: no limit): the statement
    is interrupted then, and the result's `time_limit` bounds turning its rows into an answer
    (json_rows, format_csv, ...). Errors are StoreErrors carrying DuckDB's message (a Refused
    for a statement that is not read-only or reads what SQL does not show).
    """
    if max_rows is not None and max_rows < 0:
        raise StoreError(f"max_rows must be >= 0, got {max_rows}")
    if max_bytes is not None and max_bytes < 1:
        raise StoreError(f"max_bytes must be >= 1, got {max_bytes}")
    statement = check_read_only(sql, interface)
    with database.connect(db_path, read_only=True, timeout=timeout, config=SQL_CONFIG, check_schema=True) as conn:
        result = answer(conn, sql, statement, max_rows=max_rows, query_timeout=query_timeout, interface=interface,
                        max_bytes=max_bytes)
    result.time_limit.check()
    return result


def answer(conn: duckdb.DuckDBPyConnection, sql: str, statement: duckdb.Statement, *, max_rows: int | None,
           query_timeout: float | None, interface: str, max_bytes: int | None) -> QueryResult:
    """Run `sql`, whose `statement` check_read_only accepted, on an open connection within run_query's limits:
    check_visible on the connection's catalog, then the statement and its rows (at most max_rows,
    within max_bytes), interrupted after query_timeout seconds. Shared by run_query and the Parquet
    reader (auditor.store.parquet); the caller checks the result's time_limit once it closed `conn`."""
    time_limit = TimeLimit.start(query_timeout, interface)  # waiting for the lock is the lock timeout's
    timer = threading.Timer(query_timeout, conn.interrupt) if query_timeout else None
    if timer is not None:
        timer.start()
    try:
        check_visible(conn, statement, interface)
        cursor = conn.execute(sql)
        columns = [d[0] for d in (cursor.description or [])]
        rows, truncated = _fetch(cursor, max_rows, max_bytes, time_limit)
    except duckdb.InterruptException:
        raise time_limit.exceeded() from None
    except duckdb.Error as exc:
        raise StoreError(f"{interface}: {exc}") from None
    finally:
        if timer is not None:
            timer.cancel()
    return QueryResult(columns, rows, truncated, time_limit)


def _fetch(cursor, max_rows: int | None, max_bytes: int | None, time_limit: TimeLimit) -> tuple[list[tuple], bool]:
    """(at most max_rows rows, whether more matched), in batches, within the byte cap and the time limit."""
    limit = None if max_rows is None else max_rows + 1
    rows, size = [], 0
    while limit is None or len(rows) < limit:
        time_limit.check()
        batch = cursor.fetchmany(_FETCH_BATCH if limit is None else min(_FETCH_BATCH, limit - len(rows)))
        if not batch:
            break
        for row in batch:
            if max_bytes is not None and (max_rows is None or len(rows) < max_rows):
                size += sum(_cell_size(v) for v in row)
                if size > max_bytes:
                    raise _too_big(time_limit.interface, max_bytes)
            rows.append(tuple(row))
    truncated = max_rows is not None and len(rows) > max_rows
    return (rows if max_rows is None else rows[:max_rows]), truncated


# ---------------------------------------------------------------------------------------
# Output formats
# ---------------------------------------------------------------------------------------
def _text(value) -> str:
    """A cell as text (table and CSV)."""
    if value is None:
        return ""
    if isinstance(value, (bytes, bytearray, memoryview)):
        return f"<{len(bytes(value))} bytes>"
    if isinstance(value, float):
        return repr(value) if math.isfinite(value) else str(value)
    if isinstance(value, (datetime, date, dtime)):
        return value.isoformat()
    if isinstance(value, (list, dict, tuple)):
        return json.dumps(jsonable(value), separators=(",", ":"))
    return str(value)


def jsonable(value):
    """A cell as JSON: blobs as "<N bytes>", NaN and infinities as null, times ISO 8601, decimals as floats."""
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, (bytes, bytearray, memoryview)):
        return f"<{len(bytes(value))} bytes>"
    if isinstance(value, Decimal):
        return float(value)
    if isinstance(value, (datetime, date, dtime)):
        return value.isoformat()
    if isinstance(value, timedelta):
        return value.total_seconds()
    if isinstance(value, UUID):
        return str(value)
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    return str(value)


def json_rows(result: QueryResult) -> list[list]:
    """The result's rows as lists of JSON values (jsonable), within the query's time limit."""
    return [[jsonable(v) for v in row] for row in timed(result.rows, getattr(result, "time_limit", None))]


def format_table(columns: list[str], rows: list[tuple], *, truncated: bool = False, null: str = "NULL",
                 time_limit: TimeLimit | None = None) -> str:
    """An aligned text table with a header rule and a row count (numbers right-aligned)."""
    cells = [[null if v is None else _table_cell(v) for v in row] for row in timed(rows, time_limit)]
    widths = [max([len(c)] + [len(r[i]) for r in cells]) for i, c in enumerate(columns)]
    numeric = [bool(rows) and all(isinstance(r[i], (int, float, Decimal)) and not isinstance(r[i], bool)
                                  for r in rows if r[i] is not None) for i in range(len(columns))]

    def line(values):
        return "  ".join(v.rjust(w) if num else v.ljust(w) for v, w, num in zip(values, widths, numeric)).rstrip()

    out = [line(columns), "  ".join("-" * w for w in widths)]
    out += [line(r) for r in cells]
    count = f"({len(rows)} row{'s' if len(rows) != 1 else ''}"
    count += ", truncated: raise --max-rows to see more)" if truncated else ")"
    out.append(count)
    return "\n".join(out) + "\n"


def _table_cell(value) -> str:
    if isinstance(value, float) and math.isfinite(value):
        return f"{value:.6g}"
    return _text(value).replace("\n", "\\n")


def format_csv(columns: list[str], rows: list[tuple], *, time_limit: TimeLimit | None = None) -> str:
    """RFC 4180 CSV with a header row (NULL as an empty field, blobs as <N bytes>)."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(columns)
    for row in timed(rows, time_limit):
        writer.writerow([_text(v) for v in row])
    return buffer.getvalue()


def format_json(columns: list[str], rows: list[tuple], *, time_limit: TimeLimit | None = None) -> str:
    """A JSON list of objects, one per row (blobs as "<N bytes>", NaN as null, times ISO 8601)."""
    objects = [{c: jsonable(v) for c, v in zip(columns, row)} for row in timed(rows, time_limit)]
    return json.dumps(objects, indent=2) + "\n"


def format_result(result: QueryResult | tuple, fmt: str = "table") -> str:
    """`result` as `fmt` (one of FORMATS), within the query's time limit (a QueryResult's)."""
    columns, rows = result
    time_limit = getattr(result, "time_limit", None)
    if fmt == "table":
        return format_table(columns, rows, truncated=getattr(result, "truncated", False), time_limit=time_limit)
    if fmt == "csv":
        return format_csv(columns, rows, time_limit=time_limit)
    if fmt == "json":
        return format_json(columns, rows, time_limit=time_limit)
    raise StoreError(f"unknown output format {fmt!r}; choose from {', '.join(FORMATS)}")
