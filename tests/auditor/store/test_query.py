"""auditor.store.query: only one read-only statement runs; the formats; errors change nothing."""

from __future__ import annotations

import csv
import io
import json
import os
import time

import duckdb
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
    for sql in ("DESCRIBE runs", "SHOW runs", "EXPLAIN SELECT * FROM steps", "FROM datasets",
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


# ---------------------------------------------------------------------------------------
# What SQL can see: the provenance tables and views only
# ---------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def shared_store(tmp_path_factory):
    """One store for the read-only checks below (named store.duckdb: its catalog is `store`)."""
    path = tmp_path_factory.mktemp("visible") / "store.duckdb"
    database.upgrade(path, "0001")
    fill_tiny_store(path)
    database.upgrade(path)
    with database.connect(path) as conn:  # a key and a job, so that a leak would show rows
        conn.execute("INSERT INTO api_keys (id, name, hash, scopes, created_at) "
                     "VALUES (1, 'alice', 'secret-hash', '[\"read\"]', now())")
    return path


HIDDEN_READS = [
    "SELECT * FROM api_keys", "SELECT name, scopes, hash FROM API_KEYS", 'SELECT * FROM "api_keys"',
    "SELECT * FROM main.api_keys", "SELECT * FROM store.main.api_keys", "SELECT * FROM store.api_keys",
    "SELECT * FROM jobs", "SELECT * FROM alembic_version", "FROM api_keys", "SELECT id FROM api_keys AS runs",
    "WITH k AS (SELECT * FROM api_keys) SELECT * FROM k",
    "SELECT * FROM runs WHERE id IN (SELECT id FROM api_keys)", "SELECT (SELECT max(hash) FROM api_keys)",
    "SELECT * FROM runs r JOIN jobs AS j ON true", "SELECT * FROM runs UNION ALL BY NAME SELECT * FROM jobs",
    "SELECT * FROM (VALUES (1)) t(x), LATERAL (SELECT hash FROM api_keys)", "UNPIVOT api_keys ON name",
    # a CTE named like a hidden table, read outside its WITH
    "SELECT * FROM (WITH api_keys AS (SELECT 1) SELECT * FROM api_keys) a, api_keys b",
    "WITH tables AS (SELECT 1) SELECT * FROM tables",
    # the catalog, however it is reached
    "SELECT * FROM information_schema.tables", "SELECT * FROM information_schema.columns WHERE table_name = 'api_keys'",
    "SELECT * FROM duckdb_tables()", "SELECT * FROM duckdb_tables", "SELECT * FROM system.main.duckdb_tables",
    "SELECT path FROM duckdb_databases()", "SELECT * FROM pragma_database_list", "SELECT * FROM sqlite_master",
    "SELECT * FROM pragma_table_info('api_keys')", "SELECT * FROM pg_catalog.pg_class", "SELECT * FROM pg_class",
    "SELECT * FROM duckdb_settings()", "SELECT * FROM duckdb_sequences()", "SELECT * FROM runs, duckdb_columns()",
    "SHOW TABLES", "SHOW ALL TABLES", "SHOW DATABASES", "DESCRIBE", "DESCRIBE api_keys", "SUMMARIZE jobs",
    "SHOW api_keys", "EXPLAIN SELECT * FROM api_keys", "EXPLAIN ANALYZE SELECT hash FROM api_keys",
    "/* x */ EXPLAIN (FORMAT json) SELECT * FROM jobs", "EXPLAIN ANALYZE ((SELECT hash FROM api_keys))",
    "EXPLAIN (FORMAT json) (SELECT hash FROM api_keys) UNION SELECT '1'",
    # table functions that take a table's name or read files, and functions that read settings or the catalog
    "SELECT * FROM query_table('api_keys')", "SELECT * FROM query('SELECT * FROM api_keys')",
    "SELECT * FROM json_execute_serialized_sql(json_serialize_sql('SELECT * FROM api_keys'))",
    "SELECT * FROM read_parquet('x.parquet')", "SELECT * FROM read_csv('x.csv')", "SELECT * FROM glob('*')",
    "SELECT current_setting('temp_directory')", "SELECT pg_get_viewdef(1)", "SELECT get_block_size('store')",
    "SELECT nextval('job_ids')", "SELECT currval('api_key_ids')",
]


@pytest.mark.parametrize("sql", HIDDEN_READS)
def test_sql_sees_only_the_provenance_tables(shared_store, sql):
    """Keys, jobs, the catalog (which shows the store's path), settings and files: refused before
    anything runs, through aliases, CTEs, subqueries, qualified names, DESCRIBE and EXPLAIN."""
    before = state(shared_store)
    with pytest.raises(query.NotVisible, match=r"^auditor sql: .*(not visible to SQL|not available in SQL|SHOW "
                                               r"TABLES|CTE cannot be named)") as err:
        query.run_query(shared_store, sql)
    assert isinstance(err.value, query.Refused) and "secret-hash" not in str(err.value)
    assert str(shared_store.parent) not in str(err.value)
    assert state(shared_store) == before


@pytest.mark.parametrize("sql", [
    "WITH runs AS (SELECT 1 AS id) SELECT * FROM runs", "WITH t AS (SELECT * FROM runs) SELECT * FROM t",
    "WITH RECURSIVE t(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM t WHERE n < 3) SELECT * FROM t",
    "WITH a AS (SELECT 1 AS x), b AS (SELECT * FROM a) SELECT * FROM b",
    "SELECT * FROM store.main.runs", "SELECT * FROM main.runs", "SELECT * FROM store.runs",
    "SELECT id FROM runs AS api_keys", "SELECT 'api_keys' AS name", "SELECT * FROM pixel_weights LIMIT 1",
    "DESCRIBE runs", "DESCRIBE SELECT * FROM runs", "SUMMARIZE patch_weights", "SHOW runs",
    "EXPLAIN SELECT * FROM sample_sources", "EXPLAIN ANALYZE SELECT 1", "EXPLAIN (FORMAT json) SELECT 1",
    "EXPLAIN ANALYZE (SELECT 1) UNION SELECT 2", "EXPLAIN (ANALYZE, FORMAT json) (SELECT * FROM runs)",
    "SELECT x FROM unnest([1, 2]) t(x)", "SELECT * FROM generate_series(1, 3)", "SELECT * FROM json_each('{\"a\": 1}')",
    "SELECT * FROM runs PIVOT (count(*) FOR status IN ('complete'))", "UNPIVOT runs ON seed",
])
def test_sql_still_reads_the_provenance_tables_every_way(shared_store, sql):
    assert query.run_query(shared_store, sql).columns


def test_an_unknown_table_is_bad_input_not_a_hint(shared_store):
    """No "did you mean api_keys?": the name is refused with the tables SQL reads."""
    for sql in ("SELECT * FROM api_key", "SELECT * FROM no_such_table", "FROM 'x.csv'"):
        with pytest.raises(database.StoreError, match="no table or view named .*SQL reads the provenance") as err:
            query.run_query(shared_store, sql)
        assert not isinstance(err.value, query.Refused) and "api_keys" not in str(err.value)


def test_a_deeply_nested_statement_is_bad_input_not_a_crash(shared_store):
    """The parse tree of 600 nested calls is deeper than Python's JSON decoder goes (it was a RecursionError)."""
    with pytest.raises(database.StoreError, match="nested too deeply to check"):
        query.run_query(shared_store, "SELECT " + "abs(" * 600 + "1" + ")" * 600)
    assert query.run_query(shared_store, "SELECT " + "abs(" * 100 + "-1" + ")" * 100).rows == [(1,)]


def test_every_table_and_view_is_either_visible_or_hidden(shared_store):
    """A migration that adds a table must say whether SQL shows it (unlisted tables stay hidden);
    the visible views read visible tables only."""
    with database.connect(shared_store, read_only=True) as conn:
        tables = {r[0] for r in conn.execute("SELECT table_name FROM duckdb_tables() WHERE NOT internal").fetchall()}
        views = dict(conn.execute("SELECT view_name, sql FROM duckdb_views() WHERE NOT internal").fetchall())
        assert tables | set(views) == query.VISIBLE_TABLES | query.HIDDEN_TABLES
        assert not query.VISIBLE_TABLES & query.HIDDEN_TABLES
        for name, definition in views.items():
            body = definition[definition.upper().index(" AS ") + 4:]
            query.check_visible(conn, duckdb.extract_statements(body)[0])


@pytest.mark.parametrize("sql, kind", [("CHECKPOINT", "CHECKPOINT"), ("FORCE CHECKPOINT", "FORCE CHECKPOINT"),
                                       ("INSTALL httpfs", "INSTALL"), ("LOAD json", "LOAD"), ("USE memory", "USE"),
                                       ("RESET threads", "RESET"), ("CALL pragma_version()", "CALL"),
                                       ("/* c */ checkpoint", "CHECKPOINT"), ("EXPLAIN ANALYZE DELETE FROM runs",
                                                                             "EXPLAIN DELETE")])
def test_a_refused_statement_is_called_by_its_name(sql, kind, shared_store):
    """CHECKPOINT was called a CALL statement and INSTALL a LOAD (DuckDB's shared statement types)."""
    with pytest.raises(query.WriteRefused, match=rf"^auditor sql is read-only: {kind} statements are not allowed"):
        query.run_query(shared_store, sql)


def test_the_time_limit_covers_turning_rows_into_an_answer(shared_store, monkeypatch):
    """The statement, fetching and formatting share one time limit (formatting was unbounded:
    here 5 s for 500 rows)."""
    result = query.run_query(shared_store, "SELECT * FROM range(500)", query_timeout=30)
    assert result.time_limit.seconds == 30 and len(query.json_rows(result)) == 500
    real = query.jsonable

    def slow(value):
        time.sleep(0.01)
        return real(value)

    monkeypatch.setattr(query, "jsonable", slow)
    for answer in (query.json_rows, lambda r: query.format_result(r, "json")):
        started = time.monotonic()
        with pytest.raises(database.StoreError, match="query interrupted after 0.3 s"):
            answer(query.run_query(shared_store, "SELECT * FROM range(500)", query_timeout=0.3))
        assert time.monotonic() - started < 3.0
    monkeypatch.setattr(query, "_text", lambda value: time.sleep(0.01) or str(value))
    with pytest.raises(database.StoreError, match="query interrupted"):
        query.format_result(query.run_query(shared_store, "SELECT * FROM range(500)", query_timeout=0.3), "csv")
    assert len(query.format_result(query.run_query(shared_store, "SELECT * FROM range(20)"), "csv").split()) == 21
