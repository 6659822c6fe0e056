"""auditor.store.query: only one read-only statement runs; the formats; errors change nothing."""

from __future__ import annotations

import csv
import io
import json
import os

import pytest

from auditor.store import database, query
from tests.support.store import fill_tiny_store


@pytest.fixture
def store(tmp_path):
    path = tmp_path / "store.duckdb"
    database.upgrade(path, "0001")
    fill_tiny_store(path)  # plain SQL rows at revision 0001; the upgrade derives step_shares from them
    database.upgrade(path)
    return path


def state(path):
    return path.read_bytes(), os.stat(path).st_mtime_ns


def test_select_and_friends(store):
    columns, rows = query.run_query(store, "SELECT image_index, image_id, owner FROM training_images ORDER BY 1")
    assert columns == ["image_index", "image_id", "owner"]
    assert rows == [(0, "img-0", "owner-0"), (1, "img-1", "owner-1"), (2, "img-2", "owner-2")]
    cols, rows = query.run_query(store, "WITH s AS (SELECT * FROM sample_sources) SELECT image_index, round(share, 4) "
                                        "FROM s ORDER BY share DESC")
    assert rows[0][0] == 1
    for sql in ("DESCRIBE runs", "SHOW TABLES", "EXPLAIN SELECT * FROM steps", "FROM datasets",
                "SUMMARIZE patch_weights", "VALUES (1, 'a')", "select 1;"):
        query.run_query(store, sql)


def test_max_rows_truncates(store):
    result = query.run_query(store, "SELECT * FROM range(50)", max_rows=7)
    assert len(result.rows) == 7 and result.truncated
    result = query.run_query(store, "SELECT * FROM range(7)", max_rows=7)
    assert len(result.rows) == 7 and not result.truncated
    assert "truncated" in query.format_result(query.run_query(store, "SELECT * FROM range(9)", max_rows=2))


@pytest.mark.parametrize("sql, kind", [
    ("INSERT INTO datasets (id) VALUES (5)", "INSERT"),
    ("DELETE FROM patch_weights", "DELETE"),
    ("UPDATE runs SET status = 'complete'", "UPDATE"),
    ("DROP TABLE runs", "DROP"),
    ("CREATE TABLE x (a INTEGER)", "CREATE"),
    ("COPY runs TO 'out.csv'", "COPY"),
    ("ATTACH 'other.duckdb'", "ATTACH"),
    ("PRAGMA table_info('runs')", "PRAGMA"),
    ("SET threads = 1", "SET"),
    ("CHECKPOINT", None),
    ("INSTALL httpfs", None),
])
def test_writes_are_refused_before_running(store, sql, kind):
    before = state(store)
    with pytest.raises(query.WriteRefused, match="auditor sql is read-only") as err:
        query.run_query(store, sql)
    if kind:
        assert f"{kind} statements are not allowed" in str(err.value)
    assert state(store) == before


@pytest.mark.parametrize("sql, words", [("", "empty query"), ("  ;  ", "empty query"), ("SELEC 1", "malformed SQL"),
                                        ("SELECT 1; SELECT 2", "one statement at a time; got 2"),
                                        ("DELETE FROM runs; SELECT 1", "one statement at a time; got 2")])
def test_the_one_read_only_check_tells_bad_input_from_writes(sql, words):
    """check_read_only parses without running: bad input is a StoreError, a write its WriteRefused subclass."""
    with pytest.raises(database.StoreError, match=words) as err:
        query.check_read_only(sql, "the SQL endpoint")
    assert not isinstance(err.value, query.WriteRefused) and str(err.value).startswith("the SQL endpoint")
    with pytest.raises(query.WriteRefused, match="^the SQL endpoint is read-only: DELETE statements"):
        query.check_read_only("DELETE FROM runs", "the SQL endpoint")
    assert query.check_read_only("WITH a AS (SELECT 1) SELECT * FROM a").type in query.ALLOWED


def test_more_than_one_statement(store):
    before = state(store)
    with pytest.raises(database.StoreError, match="one statement at a time; got 2"):
        query.run_query(store, "SELECT 1; DELETE FROM runs")
    assert state(store) == before


def test_malformed_and_failing_sql(store):
    with pytest.raises(database.StoreError, match="syntax error"):
        query.run_query(store, "SELEC * FROM runs")
    with pytest.raises(database.StoreError, match="no_such_table"):
        query.run_query(store, "SELECT * FROM no_such_table")
    with pytest.raises(database.StoreError, match="empty query"):
        query.run_query(store, "   ")


def test_select_cannot_touch_other_files(store, tmp_path):
    (tmp_path / "secret.csv").write_text("a\n1\n")
    with pytest.raises(database.StoreError):
        query.run_query(store, f"SELECT * FROM read_csv('{tmp_path / 'secret.csv'}')")


def test_missing_and_newer_store(tmp_path):
    with pytest.raises(database.StoreError, match="auditor db upgrade"):
        query.run_query(tmp_path / "none.duckdb", "SELECT 1")
    assert not (tmp_path / "none.duckdb").exists()


def test_formats(store):
    result = query.run_query(store, "SELECT run_id, sample_index, seed, final_image, NULL AS nothing, 0.5 AS half, "
                                    "'a,\"b\"' AS text FROM samples ORDER BY sample_index")
    table = query.format_result(result, "table")
    lines = table.splitlines()
    assert lines[0].split() == ["run_id", "sample_index", "seed", "final_image", "nothing", "half", "text"]
    assert "<36 bytes>" in lines[2] and "NULL" in lines[2] and lines[-1] == "(2 rows)"
    parsed = list(csv.reader(io.StringIO(query.format_result(result, "csv"))))
    assert parsed[0][0] == "run_id" and parsed[1] == ["1", "0", "0", "<36 bytes>", "", "0.5", 'a,"b"']
    objects = json.loads(query.format_result(result, "json"))
    assert objects[1] == {"run_id": 1, "sample_index": 1, "seed": 1, "final_image": "<36 bytes>", "nothing": None,
                          "half": 0.5, "text": 'a,"b"'}
    empty = query.run_query(store, "SELECT * FROM runs WHERE false")
    assert query.format_result(empty, "table").splitlines()[-1] == "(0 rows)"
    assert json.loads(query.format_result(empty, "json")) == []
    with pytest.raises(database.StoreError, match="unknown output format"):
        query.format_result(result, "xml")


def test_non_utf8_sql_is_refused(store, capsys):
    """argv bytes that are not UTF-8 arrive as surrogate escapes: a clear error and exit 2, no traceback."""
    from auditor.cli import main

    before = state(store)
    assert main(["--db", str(store), "sql", "SELECT \udcff"]) == 2
    err = capsys.readouterr().err
    assert "SQL must be UTF-8 text" in err and "Traceback" not in err
    with pytest.raises(database.StoreError, match="SQL must be UTF-8 text"):
        query.run_query(store, "SELECT '\udcff'")
    assert state(store) == before


def test_answer_byte_cap(store):
    with pytest.raises(database.StoreError, match=r"the answer is over 100000 bytes; select fewer columns/rows or add LIMIT"):
        query.run_query(store, "SELECT repeat('x', 10000) FROM range(100)", max_bytes=100_000)
    with pytest.raises(database.StoreError, match=r"the answer is over 8 MB"):
        query.run_query(store, "SELECT repeat('x', 100000) FROM range(100)")  # the default cap
    columns, rows = query.run_query(store, "SELECT repeat('x', 10000) FROM range(5)", max_bytes=100_000)
    assert len(rows) == 5
    result = query.run_query(store, "SELECT repeat('x', 10000) FROM range(100)", max_rows=3, max_bytes=100_000)
    assert len(result.rows) == 3 and result.truncated  # rows past max_rows are not counted
