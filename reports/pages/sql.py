"""The read-only SQL page (SqlPage, template sql.html): a statement's result as display text,
or its error, and the documented example queries."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from datetime import date, datetime
from typing import Any, ClassVar, Sequence

from reports.pages.common import Context, to_jsonable

__all__ = ["ExampleItem", "SqlPage", "build_sql_page", "display_cell", "sql_text"]


@dataclass(kw_only=True)
class ExampleItem:
    name: str
    title: str
    sql: str


@dataclass(kw_only=True)
class SqlPage(Context):
    """Read-only SQL (template sql.html): the statement, its result (columns, rows as display
    text, `null` marks NULL cells), or the error; and the documented example queries."""

    documented_template: ClassVar[str] = "sql.html"

    sql: str | None
    columns: list[str]
    rows: list[list[Any]]
    truncated: bool
    error: str | None
    elapsed_ms: float | None
    max_rows: int
    time_limit_s: float
    examples: list[ExampleItem]
    refused: bool = False  # a well-formed statement that is not read-only (the service answers 403)
    title: str = "SQL"


def display_cell(value) -> Any:
    """A result cell as the page shows it (None stays None: the template marks NULL)."""
    if value is None:
        return None
    if isinstance(value, float):
        return f"{value:.6g}" if math.isfinite(value) else str(value)
    if isinstance(value, (bytes, bytearray, memoryview)):
        return f"<{len(bytes(value))} bytes>"
    if isinstance(value, (datetime, date)):
        return value.isoformat(sep=" ") if isinstance(value, datetime) else value.isoformat()
    if isinstance(value, (list, dict, tuple)):
        return json.dumps(to_jsonable(value), separators=(", ", ": "))
    return str(value)


def sql_text(sql: str | None) -> str | None:
    """The statement to run: None for none (or only white space: the page shows just the form)."""
    return sql if sql and sql.strip() else None


def build_sql_page(*, sql: str | None, examples: Sequence, max_rows: int, time_limit_s: float,
                   columns: Sequence[str] = (), rows: Sequence[Sequence] = (), truncated: bool = False,
                   error: str | None = None, elapsed_ms: float | None = None, refused: bool = False) -> SqlPage:
    """The page of statement `sql` (sql_text's; None: just the form): its result (columns, raw rows,
    truncated at max_rows) or its error message; refused: a statement of a kind the store
    refuses; examples: the documented queries (name, title, sql); time_limit_s: the query time limit."""
    return SqlPage(sql=sql, columns=list(columns), rows=[[display_cell(v) for v in row] for row in rows],
                   truncated=bool(truncated), error=error, elapsed_ms=elapsed_ms, max_rows=max_rows,
                   time_limit_s=time_limit_s,
                   examples=[ExampleItem(name=e.name, title=e.title, sql=e.sql) for e in examples], refused=refused)
