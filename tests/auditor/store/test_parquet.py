"""Parquet export and reader: the same rows as the store, laid out as documented, and bad input refused."""

import json
import re
import shutil

import duckdb
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest

from auditor.errors import NotFoundError, StoreError
from auditor.store import database, parquet
from auditor.store.example_queries import EXAMPLE_QUERIES
from auditor.store.parquet import MANIFEST, export_parquet, open_parquet, run_parquet_query
from auditor.store.query import HIDDEN_TABLES, VISIBLE_TABLES, NotVisible, WriteRefused, run_query

from tests.support.data import random_set
from tests.support.paths import REPO
from tests.support.rows import same_rows
from tests.support.store import RANDOM_OPTIONS, fetch, record

STEP_TABLES = ("steps", "patch_weights", "patch_stats", "step_shares")


def parquet_rows(folder, sql):
    with open_parquet(folder) as conn:
        return conn.execute(sql).fetchall()


def leftovers(parent):
    """Hidden staging or replaced folders an export left beside its target."""
    return [p.name for p in parent.iterdir() if p.name.startswith(".")]


@pytest.fixture(scope="module")
def random_export(recorded_random, tmp_path_factory):
    out = tmp_path_factory.mktemp("parquet") / "export"
    summary = export_parquet(recorded_random.db, out)
    return recorded_random, out, summary


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory):
    db = tmp_path_factory.mktemp("two") / "provenance.duckdb"
    for seed in (1, 2):
        record(db, random_set(), num_samples=2, steps=2, patch_size=3, seed=seed)
    return db


@pytest.mark.slow
def test_example_queries_return_the_stores_rows(recorded_fashion, tmp_path):
    """Every example query (auditor.store.example_queries, and every SQL block of README.md) gives
    the same rows on the export as on the DuckDB store; the rights holder's queries also with an
    image of the fixture's 200 (train-58676 is not among them)."""
    rec = recorded_fashion
    out = tmp_path / "export"
    export_parquet(rec.db, out)
    top = fetch(rec.db, "SELECT i.image_id FROM sample_sources s JOIN training_images i ON i.image_index = "
                        "s.image_index WHERE s.run_id = 1 AND s.sample_index = 0 ORDER BY s.share DESC LIMIT 1")[0][0]
    readme = re.findall(r"```sql\n(.*?)```", (REPO / "README.md").read_text(), re.S)  # with the step-level one
    queries = {query.sql.strip() for query in EXAMPLE_QUERIES} | {block.strip() for block in readme}
    assert len(queries) > len(EXAMPLE_QUERIES)
    for query in sorted(queries):
        found = 0
        for sql in {query, query.replace("'train-58676'", f"'{top}'")}:
            expected = run_query(rec.db, sql)
            got = run_parquet_query(out, sql)
            assert got.columns == expected.columns
            same_rows(got.rows, expected.rows)
            found += len(expected.rows)
        assert found, f"no rows to compare for {query}"


def test_every_table_and_view_matches_the_store(random_export):
    rec, out, summary = random_export
    with open_parquet(out) as conn, database.connect(rec.db, read_only=True) as store:
        for name in sorted(VISIBLE_TABLES):
            expected = store.execute(f"SELECT * FROM {name} ORDER BY ALL").fetchall()
            if name == "training_images":  # pixels are left out unless asked for: NULL in the reader
                expected = [row[:-1] + (None,) for row in expected]
            same_rows(conn.execute(f"SELECT * FROM {name} ORDER BY ALL").fetchall(), expected)
            columns = conn.execute(f"SELECT column_name, column_type FROM (DESCRIBE {name})").fetchall()
            assert columns == store.execute(f"SELECT column_name, column_type FROM (DESCRIBE {name})").fetchall()
    assert summary.rows["patch_weights"] == fetch(rec.db, "SELECT count(*) FROM patch_weights")[0][0] > 0


def test_partitions_are_laid_out_as_documented(random_export):
    rec, out, _ = random_export
    run = rec.run_id
    for table in STEP_TABLES:
        folders = sorted(p.relative_to(out / table).as_posix() for p in (out / table).glob("*/*") if p.is_dir())
        assert folders == [f"run_id={run}/step={s}" for s in range(RANDOM_OPTIONS["steps"])]
        for file in (out / table).rglob("*.parquet"):  # the keys are in the folder names only
            names = pq.read_schema(file).names
            assert "run_id" not in names and "step" not in names
    for table in ("runs", "samples"):
        assert [p.name for p in (out / table).iterdir()] == [f"run_id={run}"]
    assert "run_id" not in pq.read_schema(next((out / "samples").rglob("*.parquet"))).names
    assert "id" in pq.read_schema(next((out / "runs").rglob("*.parquet"))).names
    for table in ("datasets", "training_images", "patch_sets", "patch_positions", "patch_pixels"):
        assert [p.name for p in (out / table).iterdir()] == ["data.parquet"]
    assert "pixels" not in pq.read_schema(out / "training_images" / "data.parquet").names
    assert not any((out / name).exists() for name in HIDDEN_TABLES)
    manifest = json.loads((out / MANIFEST).read_text())
    assert manifest["schema_revision"] == database.head_revision() and manifest["origin"] == "export"
    assert manifest["tables"]["patch_weights"]["partition_by"] == ["run_id", "step"]
    # what any Hive-aware reader sees, without this reader's views
    conn = duckdb.connect()
    count, runs = conn.execute(f"SELECT count(*), list(DISTINCT run_id) FROM read_parquet("
                               f"'{out}/patch_weights/**/*.parquet', hive_partitioning = true)").fetchone()
    assert count == fetch(rec.db, "SELECT count(*) FROM patch_weights")[0][0] and runs == [run]
    table = ds.dataset(out / "steps", format="parquet", partitioning="hive").to_table()  # pyarrow, as Spark reads it
    assert table.num_rows == RANDOM_OPTIONS["steps"] * RANDOM_OPTIONS["num_samples"]
    assert set(table.column("run_id").to_pylist()) == {run} and {"step", "z", "denoised"} <= set(table.column_names)


def test_pixels_on_request(recorded_random, tmp_path):
    export_parquet(recorded_random.db, tmp_path / "out", pixels=True)
    assert "pixels" in pq.read_schema(tmp_path / "out" / "training_images" / "data.parquet").names
    same_rows(parquet_rows(tmp_path / "out", "SELECT * FROM training_images ORDER BY ALL"),
              fetch(recorded_random.db, "SELECT * FROM training_images ORDER BY ALL"))


def test_run_filter_exports_only_those_runs(two_runs, tmp_path):
    export_parquet(two_runs, tmp_path / "out", run_ids=[2])
    assert [p.name for p in (tmp_path / "out" / "steps").iterdir()] == ["run_id=2"]
    assert parquet_rows(tmp_path / "out", "SELECT id FROM runs") == [(2,)]
    same_rows(parquet_rows(tmp_path / "out", "SELECT * FROM sample_sources ORDER BY ALL"),
              fetch(two_runs, "SELECT * FROM sample_sources WHERE run_id = 2 ORDER BY ALL"))
    with pytest.raises(NotFoundError, match="no run 7"):
        export_parquet(two_runs, tmp_path / "other", run_ids=[1, 7])
    assert not (tmp_path / "other").exists() and leftovers(tmp_path) == []


def test_a_non_empty_target_is_refused_and_kept(recorded_random, tmp_path):
    target = tmp_path / "mine"
    target.mkdir()
    (target / "notes.txt").write_text("keep me")
    with pytest.raises(StoreError, match="not empty.*--overwrite"):
        export_parquet(recorded_random.db, target)
    with pytest.raises(StoreError, match="not a Parquet provenance folder.*replaces only an earlier export"):
        export_parquet(recorded_random.db, target, overwrite=True)
    assert [p.name for p in target.iterdir()] == ["notes.txt"] and leftovers(tmp_path) == []
    with pytest.raises(StoreError, match="is a file"):
        export_parquet(recorded_random.db, target / "notes.txt")
    with pytest.raises(StoreError, match="does not exist"):
        export_parquet(recorded_random.db, tmp_path / "no" / "such")


def test_an_empty_folder_or_an_earlier_export_is_replaced_whole(two_runs, tmp_path):
    target = tmp_path / "out"
    target.mkdir()
    export_parquet(two_runs, target, run_ids=[1])
    export_parquet(two_runs, target, run_ids=[2], overwrite=True)
    assert parquet_rows(target, "SELECT id FROM runs") == [(2,)]
    assert [p.name for p in (target / "steps").iterdir()] == ["run_id=2"] and leftovers(tmp_path) == []


def test_an_interrupted_export_leaves_nothing(recorded_random, tmp_path, monkeypatch):
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    earlier = tmp_path / "out"
    export_parquet(recorded_random.db, earlier)
    before = sorted(p.relative_to(earlier) for p in earlier.rglob("*"))
    monkeypatch.setattr(parquet, "write_manifest", interrupted)  # after every table was copied
    with pytest.raises(KeyboardInterrupt):
        export_parquet(recorded_random.db, tmp_path / "new")
    with pytest.raises(KeyboardInterrupt):
        export_parquet(recorded_random.db, earlier, overwrite=True)
    assert not (tmp_path / "new").exists() and leftovers(tmp_path) == []
    assert sorted(p.relative_to(earlier) for p in earlier.rglob("*")) == before


def test_reader_names_a_folder_that_is_not_an_export(tmp_path):
    with pytest.raises(StoreError, match="no such folder"):
        open_parquet(tmp_path / "missing")
    (tmp_path / "file").write_text("x")
    with pytest.raises(StoreError, match="not a folder"):
        open_parquet(tmp_path / "file")
    with pytest.raises(StoreError, match=f"not a Parquet provenance folder \\(no {MANIFEST}\\)"):
        run_parquet_query(tmp_path, "SELECT 1")
    (tmp_path / MANIFEST).write_text("{not json")
    with pytest.raises(StoreError, match="unreadable manifest"):
        open_parquet(tmp_path)
    (tmp_path / MANIFEST).write_text(json.dumps({"format": "other"}))
    with pytest.raises(StoreError, match="not a pspc-auditor-parquet manifest"):
        open_parquet(tmp_path)
    (tmp_path / MANIFEST).write_text(json.dumps({"format": parquet.FORMAT, "format_version": 99}))
    with pytest.raises(StoreError, match="layout version 99"):
        open_parquet(tmp_path)


def test_sql_is_read_only_and_sees_what_the_store_shows(random_export):
    _, out, _ = random_export
    with pytest.raises(StoreError, match="malformed SQL"):
        run_parquet_query(out, "SELEC * FROM runs")
    with pytest.raises(WriteRefused, match="DELETE statements are not allowed"):
        run_parquet_query(out, "DELETE FROM runs")
    with pytest.raises(WriteRefused, match="COPY"):
        run_parquet_query(out, f"COPY runs TO '{out}/x.csv'")
    for hidden in ("api_keys", "run_completions", "duckdb_tables()", "read_parquet('/etc/passwd')"):
        with pytest.raises(NotVisible):
            run_parquet_query(out, f"SELECT * FROM {hidden}")
    result = run_parquet_query(out, "SELECT * FROM patch_weights", max_rows=5)
    assert len(result.rows) == 5 and result.truncated
    assert not (out / "x.csv").exists()


def test_sql_connection_reads_only_the_folder(random_export, tmp_path):
    """Even a statement the checks missed could read no other file, nor change the settings."""
    _, out, _ = random_export
    (tmp_path / "secret.csv").write_text("a\n1\n")
    with open_parquet(out, sql_only=True) as conn:
        assert conn.execute("SELECT count(*) FROM runs").fetchone() == (1,)
        with pytest.raises(duckdb.PermissionException):
            conn.execute(f"SELECT * FROM read_csv('{tmp_path / 'secret.csv'}')")
        with pytest.raises(duckdb.Error, match="locked"):
            conn.execute("SET enable_external_access = true")


def test_partial_files_of_writers_are_not_read(random_export, tmp_path):
    _, out, _ = random_export
    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    step = next((copy / "patch_weights").glob("run_id=*/step=0"))
    (step / ".part-x.parquet.1234.tmp").write_bytes(b"half a file")
    assert parquet_rows(copy, "SELECT count(*) FROM patch_weights") == parquet_rows(out, "SELECT count(*) FROM "
                                                                                          "patch_weights")


def test_a_manifest_that_would_inject_sql_is_refused(random_export, tmp_path):
    _, out, _ = random_export
    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    manifest = json.loads((copy / MANIFEST).read_text())
    escape = f"COPY (SELECT 1) TO '{tmp_path / 'written.csv'}'"
    views = [[name, sql] for name, sql in manifest["views"]]
    tables = manifest["tables"]
    crafted = [
        {**manifest, "views": views + [["sneaky", f"CREATE VIEW sneaky AS SELECT 1; {escape}"]]},
        {**manifest, "views": views + [["sneaky", escape]]},
        {**manifest, "tables": {**tables, "runs": {**tables["runs"], "columns": [["id", f"BIGINT); {escape}; --"]]}}},
        {**manifest, "tables": {**tables, "../../elsewhere": tables["runs"]}},
    ]
    for bad in crafted:
        (copy / MANIFEST).write_text(json.dumps(bad))
        with pytest.raises(StoreError, match="malformed manifest"):
            run_parquet_query(copy, "SELECT 1")
    assert not (tmp_path / "written.csv").exists()
