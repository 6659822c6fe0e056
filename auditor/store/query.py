"""Read-only SQL on the provenance store (`auditor sql`) and its output formats.

The statement is parsed with DuckDB's own parser before anything runs: exactly one SELECT
(including WITH ... SELECT, VALUES, FROM-first, DESCRIBE, SHOW, SUMMARIZE) or EXPLAIN
statement is accepted; anything else is refused with a clear error. It then runs on a
read-only connection with external access disabled (no reading or writing other files), so
even a statement the check missed could not change the store.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import threading
from datetime import date, datetime, time as dtime, timedelta
from decimal import Decimal
from uuid import UUID

import duckdb

from auditor.errors import StoreError
from auditor.store import database

__all__ = ["ALLOWED", "FORMATS", "QueryResult", "WriteRefused", "check_read_only", "format_csv", "format_json",
           "format_result", "format_table", "jsonable", "run_query"]

FORMATS = ("table", "csv", "json")
ALLOWED = {duckdb.StatementType.SELECT, duckdb.StatementType.EXPLAIN}


class WriteRefused(StoreError):
    """One well-formed statement that is not read-only (INSERT, DROP, ATTACH, COPY, SET, ...)."""


class QueryResult(tuple):
    """(columns, rows); `.truncated` is True when more than max_rows rows matched."""

    def __new__(cls, columns: list[str], rows: list[tuple], truncated: bool = False):
        result = super().__new__(cls, (columns, rows))
        result.truncated = truncated
        return result

    @property
    def columns(self) -> list[str]:
        return self[0]

    @property
    def rows(self) -> list[tuple]:
        return self[1]


def check_read_only(sql: str, interface: str = "auditor sql") -> duckdb.Statement:
    """THE read-only check: the single read-only statement in `sql`, parsed by DuckDB; nothing is run.

    StoreError for an empty query, malformed SQL or more than one statement (bad input: 400 in
    the service); WriteRefused (a StoreError) for one well-formed statement of any other kind
    than SELECT / EXPLAIN (the service answers 403). `interface` names the caller in the
    messages ("auditor sql", "the SQL endpoint").
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
        kind = statement.type.name.replace("_", " ")
        hint = " (use SELECT * FROM pragma_...() instead)" if statement.type == duckdb.StatementType.PRAGMA else ""
        raise WriteRefused(f"{interface} is read-only: {kind} statements are not allowed; "
                           f"use SELECT, WITH ... SELECT, EXPLAIN, DESCRIBE or SHOW{hint}")
    return statement


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
    """Run one read-only statement (check_read_only first); returns (columns, rows) with at most
    max_rows rows. An answer whose estimated size (text and blob lengths plus a few bytes per
    cell) goes over `max_bytes` is refused with a StoreError (None: no byte cap); fetching stops
    as soon as it does.

    `timeout`: seconds to wait for another process's lock on the file; `query_timeout`:
    interrupt the query after that many seconds (None: no limit). Errors are StoreErrors
    carrying DuckDB's message (WriteRefused for a statement that is not read-only).
    """
    if max_rows is not None and max_rows < 0:
        raise StoreError(f"max_rows must be >= 0, got {max_rows}")
    if max_bytes is not None and max_bytes < 1:
        raise StoreError(f"max_bytes must be >= 1, got {max_bytes}")
    check_read_only(sql, interface)
    with database.connect(db_path, read_only=True, timeout=timeout, config={"enable_external_access": False},
                          check_schema=True) as conn:
        timer = threading.Timer(query_timeout, conn.interrupt) if query_timeout else None
        if timer is not None:
            timer.start()
        try:
            cursor = conn.execute(sql)
            columns = [d[0] for d in (cursor.description or [])]
            limit = None if max_rows is None else max_rows + 1
            rows, size = [], 0
            while limit is None or len(rows) < limit:
                batch = cursor.fetchmany(_FETCH_BATCH if limit is None else min(_FETCH_BATCH, limit - len(rows)))
                if not batch:
                    break
                for row in batch:
                    if max_bytes is not None and (max_rows is None or len(rows) < max_rows):
                        size += sum(_cell_size(v) for v in row)
                        if size > max_bytes:
                            raise _too_big(interface, max_bytes)
                    rows.append(row)
            truncated = max_rows is not None and len(rows) > max_rows
            rows = rows if max_rows is None else rows[:max_rows]
        except duckdb.InterruptException:
            raise StoreError(f"{interface}: query interrupted after {query_timeout:g} s") from None
        except duckdb.Error as exc:
            raise StoreError(f"{interface}: {exc}") from None
        finally:
            if timer is not None:
                timer.cancel()
    return QueryResult(columns, [tuple(r) for r in rows], truncated)


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


def format_table(columns: list[str], rows: list[tuple], *, truncated: bool = False, null: str = "NULL") -> str:
    """An aligned text table with a header rule and a row count (numbers right-aligned)."""
    cells = [[null if v is None else _table_cell(v) for v in row] for row in rows]
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


def format_csv(columns: list[str], rows: list[tuple]) -> str:
    """RFC 4180 CSV with a header row (NULL as an empty field, blobs as <N bytes>)."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(columns)
    for row in rows:
        writer.writerow([_text(v) for v in row])
    return buffer.getvalue()


def format_json(columns: list[str], rows: list[tuple]) -> str:
    """A JSON list of objects, one per row (blobs as "<N bytes>", NaN as null, times ISO 8601)."""
    return json.dumps([{c: jsonable(v) for c, v in zip(columns, row)} for row in rows], indent=2) + "\n"


def format_result(result: QueryResult | tuple, fmt: str = "table") -> str:
    columns, rows = result
    if fmt == "table":
        return format_table(columns, rows, truncated=getattr(result, "truncated", False))
    if fmt == "csv":
        return format_csv(columns, rows)
    if fmt == "json":
        return format_json(columns, rows)
    raise StoreError(f"unknown output format {fmt!r}; choose from {', '.join(FORMATS)}")
