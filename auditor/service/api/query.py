"""Read-only SQL over the store: one SELECT (or WITH/EXPLAIN/DESCRIBE/SHOW) statement, a row
cap, a byte cap and a time limit (the answer's encoding included); the documented example
queries are listed for one-click use.

The statement is checked by auditor.store.query.check_read_only (THE read-only check) and
check_visible (only the provenance tables and views): empty, malformed or several statements
and unknown tables are 400; any other kind than a read, and reads of the service's own
records (keys, jobs), the catalog, settings or files are 403."""

from __future__ import annotations

import json
import time
from typing import Any, Literal

from fastapi import APIRouter, Body, Depends, Query
from fastapi.responses import PlainTextResponse, Response
from pydantic import BaseModel, ConfigDict, Field

from auditor.service.api.common import MAX_ID, ErrorBody, errors, limit_query_string
from auditor.service.auth import get_settings
from auditor.service.errors import error_response, public_message
from auditor.service.limits import MAX_QUERY_STRING_BYTES
from auditor.store import query as store_query
from auditor.store.example_queries import EXAMPLE_QUERIES

router = APIRouter(tags=["sql"])

MAX_SQL_CHARS = 100_000


class SqlRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    sql: str = Field(min_length=1, max_length=MAX_SQL_CHARS, description="one read-only statement")
    max_rows: int | None = Field(None, ge=0, le=MAX_ID,
                                 description="at most this many rows (capped by the service's row cap)")


class SqlResult(BaseModel):
    columns: list[str]
    rows: list[list[Any]] = Field(description="rows as lists; blobs as '<N bytes>', times ISO 8601, NaN as null")
    row_count: int = Field(ge=0)
    truncated: bool = Field(description="more rows matched than returned")
    row_cap: int = Field(ge=1)
    time_limit_s: float = Field(gt=0)
    elapsed_ms: float = Field(ge=0)


class ExampleQuery(BaseModel):
    name: str
    title: str
    sql: str


INTERFACE = "the SQL endpoint"  # how the store's messages name this endpoint


def _run(sql: str, max_rows: int | None, fmt: str, settings):
    """The answer, query and encoding both within the SQL time limit (the result's time_limit) and
    the byte cap; a refused statement is 403."""
    cap = settings.sql_row_cap if max_rows is None else min(max_rows, settings.sql_row_cap)
    started = time.perf_counter()
    try:
        result = store_query.run_query(settings.db_path, sql, max_rows=cap, timeout=settings.lock_timeout,
                                       query_timeout=settings.sql_time_limit_s, interface=INTERFACE,
                                       max_bytes=settings.sql_max_bytes)
    except store_query.Refused as exc:
        return error_response(403, public_message(str(exc), settings))
    if fmt == "csv":
        text = store_query.format_csv(result.columns, result.rows, time_limit=result.time_limit)
        result.time_limit.check()
        return PlainTextResponse(text, media_type="text/csv", headers={"X-Truncated": str(result.truncated).lower()})
    rows = store_query.json_rows(result)
    body = json.dumps({"columns": result.columns, "rows": rows, "row_count": len(rows), "truncated": result.truncated,
                       "row_cap": settings.sql_row_cap, "time_limit_s": settings.sql_time_limit_s,
                       "elapsed_ms": 1000 * (time.perf_counter() - started)}, separators=(",", ":"))
    result.time_limit.check()
    return Response(body, media_type="application/json")  # SqlResult's shape, not validated again: no more time


Format = Literal["json", "csv"]
_RESPONSES = {200: {"content": {"text/csv": {"schema": {"type": "string"}}}},
              403: {"model": ErrorBody, "description": "not a read-only statement, or the API key lacks the scope"},
              **errors(400, 422)}
GET_DESCRIPTION = f"""The statement in the query string, which may be at most {MAX_QUERY_STRING_BYTES:,} bytes
(percent-encoded, as sent): a longer one answers 414. Send longer statements (up to
{MAX_SQL_CHARS:,} characters) as JSON to POST /api/sql. A proxy in front of the service may
allow shorter URLs still."""


@router.get("/sql", response_model=SqlResult, responses={**_RESPONSES, **errors(414)},
            dependencies=[Depends(limit_query_string(MAX_QUERY_STRING_BYTES, "POST /api/sql"))],
            summary="Run one read-only SQL statement", description=GET_DESCRIPTION)
def sql_get(sql: str = Query(min_length=1, max_length=MAX_QUERY_STRING_BYTES, description="one read-only statement"),
            max_rows: int | None = Query(None, ge=0, le=MAX_ID), format: Format = Query("json"),
            settings=Depends(get_settings)):
    return _run(sql, max_rows, format, settings)


@router.post("/sql", response_model=SqlResult, responses={**_RESPONSES, **errors(413)},
             summary="Run one read-only SQL statement")
def sql_post(body: SqlRequest = Body(), format: Format = Query("json"), settings=Depends(get_settings)):
    return _run(body.sql, body.max_rows, format, settings)


@router.get("/sql/examples", response_model=list[ExampleQuery], summary="The documented example queries")
def sql_examples():
    return [{"name": q.name, "title": q.title, "sql": q.sql} for q in EXAMPLE_QUERIES]
