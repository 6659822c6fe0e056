"""Read-only SQL over the store: one SELECT (or WITH/EXPLAIN/DESCRIBE/SHOW) statement, a row
cap and a time limit; the documented example queries are listed for one-click use.

The statement is checked by auditor.store.query.check_read_only (THE read-only check):
empty, malformed or several statements are 400, any other kind than a read is 403."""

from __future__ import annotations

import time
from typing import Any

from fastapi import APIRouter, Body, Depends, Query
from fastapi.responses import PlainTextResponse
from pydantic import BaseModel, ConfigDict, Field

from auditor.service.auth import get_settings
from auditor.service.errors import error_response
from auditor.store import query as store_query
from auditor.store.example_queries import EXAMPLE_QUERIES

router = APIRouter(tags=["sql"])

MAX_SQL_CHARS = 100_000


class SqlRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    sql: str = Field(max_length=MAX_SQL_CHARS, description="one read-only statement")
    max_rows: int | None = Field(None, ge=0, description="at most this many rows (capped by the service's row cap)")


class SqlResult(BaseModel):
    columns: list[str]
    rows: list[list[Any]] = Field(description="rows as lists; blobs as '<N bytes>', times ISO 8601, NaN as null")
    row_count: int
    truncated: bool = Field(description="more rows matched than returned")
    row_cap: int
    time_limit_s: float
    elapsed_ms: float


class ExampleQuery(BaseModel):
    name: str
    title: str
    sql: str


INTERFACE = "the SQL endpoint"  # how the store's messages name this endpoint


def _run(sql: str, max_rows: int | None, fmt: str, settings):
    cap = settings.sql_row_cap if max_rows is None else min(max_rows, settings.sql_row_cap)
    started = time.perf_counter()
    try:
        result = store_query.run_query(settings.db_path, sql, max_rows=cap, timeout=settings.lock_timeout,
                                       query_timeout=settings.sql_time_limit_s, interface=INTERFACE)
    except store_query.WriteRefused as exc:
        return error_response(403, str(exc))
    elapsed = 1000 * (time.perf_counter() - started)
    if fmt == "csv":
        return PlainTextResponse(store_query.format_csv(result.columns, result.rows), media_type="text/csv",
                                 headers={"X-Truncated": str(result.truncated).lower()})
    rows = [[store_query.jsonable(v) for v in row] for row in result.rows]
    return {"columns": result.columns, "rows": rows, "row_count": len(rows), "truncated": result.truncated,
            "row_cap": settings.sql_row_cap, "time_limit_s": settings.sql_time_limit_s, "elapsed_ms": elapsed}


_RESPONSES = {200: {"content": {"text/csv": {}}}, 403: {"description": "not a read-only statement"}}


@router.get("/sql", response_model=SqlResult, responses=_RESPONSES, summary="Run one read-only SQL statement")
def sql_get(sql: str = Query(max_length=MAX_SQL_CHARS, description="one read-only statement"),
            max_rows: int | None = Query(None, ge=0), format: str = Query("json", pattern="^(json|csv)$"),
            settings=Depends(get_settings)):
    return _run(sql, max_rows, format, settings)


@router.post("/sql", response_model=SqlResult, responses=_RESPONSES, summary="Run one read-only SQL statement")
def sql_post(body: SqlRequest = Body(), format: str = Query("json", pattern="^(json|csv)$"),
             settings=Depends(get_settings)):
    return _run(body.sql, body.max_rows, format, settings)


@router.get("/sql/examples", response_model=list[ExampleQuery], summary="The documented example queries")
def sql_examples():
    return [{"name": q.name, "title": q.title, "sql": q.sql} for q in EXAMPLE_QUERIES]
