"""Recording into a shared Parquet folder: the same rows as a store, from several processes at once,
with run ids that do not collide, and a run complete only once its completion marker is there."""

import json
import subprocess
import sys

import numpy as np
import pytest

from auditor.errors import ConflictError, StoreError
from auditor.store import database
from auditor.store.parquet import MANIFEST, RUN_COMPLETIONS, export_parquet, open_parquet
from auditor.store.parquet_recorder import EPOCH_MS, MAX_ID, new_run_id
from auditor.workflows.options import SamplingOptions
from auditor.workflows.sampling import record_parquet_run
from pspc.data.loaders import load_training_set

from tests.support.data import random_set
from tests.support.paths import REPO
from tests.support.rows import same_rows
from tests.support.store import Interrupt, record

SMALL = dict(num_samples=2, steps=3, patch_size=3, top_k=64, mass=1.0)
# the same rows in both, runs told apart by their seed and patch sets by their fingerprint
COMPARED = {
    "steps": "SELECT r.seed, ps.fingerprint, s.* EXCLUDE (run_id, patch_set_id) FROM steps s "
             "JOIN runs r ON r.id = s.run_id JOIN patch_sets ps ON ps.id = s.patch_set_id",
    **{table: f"SELECT r.seed, t.* EXCLUDE (run_id) FROM {table} t JOIN runs r ON r.id = t.run_id"
       for table in ("patch_weights", "patch_stats", "step_shares", "samples", "step_sources", "sample_sources",
                     "trajectory_sources", "pixel_weights")},
    "runs": "SELECT r.status, r.denoiser, r.sampler, r.seed, r.num_samples, r.top_k, r.mass_threshold, r.kind, "
            "r.error, d.fingerprint, d.count, r.finished_at IS NOT NULL, r.timings->>'steps_recorded' FROM runs r "
            "JOIN datasets d ON d.id = r.dataset_id",
    "patch_pixels": "SELECT ps.fingerprint, p.* EXCLUDE (patch_set_id) FROM patch_pixels p "
                    "JOIN patch_sets ps ON ps.id = p.patch_set_id",
    "training_images": "SELECT d.fingerprint, i.* EXCLUDE (dataset_id, pixels) FROM training_images i "
                       "JOIN datasets d ON d.id = i.dataset_id",
}


def rows(conn, sql):
    return conn.execute(f"{sql} ORDER BY ALL").fetchall()


def record_small(folder, seed=0, **kwargs):
    return record_parquet_run(folder, random_set(), options=SamplingOptions(seed=seed, **SMALL), **kwargs)


def listing(folder):
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*"))


@pytest.mark.slow
def test_two_processes_append_the_rows_a_store_records(tmp_path):
    data = tmp_path / "images.npy"
    np.save(data, random_set().images.numpy())
    folder = tmp_path / "shared"
    options = ["--num", "2", "--steps", "3", "--patch-size", "3", "--top-k", "64", "--mass", "1.0"]
    writers = [subprocess.Popen([sys.executable, "-m", "auditor.cli", "sample", "--parquet", str(folder), "--data",
                                 str(data), "--seed", str(seed), *options], cwd=REPO, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True) for seed in (1, 2)]
    outputs = [writer.communicate(timeout=300) for writer in writers]
    assert [writer.returncode for writer in writers] == [0, 0], outputs
    db = tmp_path / "provenance.duckdb"
    training_set = load_training_set(str(data)).with_xflip()
    for seed in (1, 2):
        record(db, training_set, seed=seed, **SMALL)
    with open_parquet(folder) as conn, database.connect(db, read_only=True) as store:
        ids = [r[0] for r in conn.execute("SELECT id FROM runs ORDER BY seed").fetchall()]
        assert len(set(ids)) == 2 and all(2**22 < i < MAX_ID for i in ids)
        assert [f"run {i}: complete" in out for i, (out, _) in zip(ids, outputs)] == [True, True]
        for name, sql in COMPARED.items():
            expected = rows(store, sql)
            assert expected, name
            same_rows(rows(conn, sql), expected)
        assert conn.execute("SELECT count(*) FROM datasets").fetchone() == (1,)  # both wrote the same set once


def test_a_run_without_its_completion_marker_is_not_complete(tmp_path):
    folder = tmp_path / "shared"
    run_id = record_small(folder)
    with open_parquet(folder) as conn:
        assert conn.execute("SELECT status, finished_at IS NOT NULL FROM runs").fetchall() == [("complete", True)]
    for marker in (folder / RUN_COMPLETIONS / f"run_id={run_id}").iterdir():
        marker.unlink()
    with open_parquet(folder) as conn:
        assert conn.execute("SELECT id, status, finished_at, timings FROM runs").fetchall() == [
            (run_id, "running", None, None)]
        assert conn.execute("SELECT count(DISTINCT step) FROM steps").fetchone() == (SMALL["steps"],)


def test_a_run_that_stops_on_an_error_is_marked_failed(tmp_path):
    def stop(step, *args):
        if step == 1:
            raise Interrupt("stopped at step 1")

    folder = tmp_path / "shared"
    with pytest.raises(Interrupt):
        record_small(folder, callback=stop)
    with open_parquet(folder) as conn:
        (status, error, finished), = conn.execute("SELECT status, error, finished_at FROM runs").fetchall()
        assert status == "failed" and "Interrupt: stopped at step 1" in error and finished is not None
        assert conn.execute("SELECT list(DISTINCT step ORDER BY step) FROM steps").fetchone() == ([0, 1],)
        assert conn.execute("SELECT count(*) FROM samples").fetchone() == (0,)
    assert not [p for p in folder.rglob("*") if p.name.endswith(".tmp")]


def test_a_given_run_id_is_claimed_once(tmp_path):
    folder = tmp_path / "shared"
    assert record_small(folder, run_id=7) == 7
    before = listing(folder)
    with pytest.raises(ConflictError, match="run id 7 is taken"):
        record_small(folder, run_id=7)
    assert listing(folder) == before


def test_drawn_run_ids_are_distinct_bounded_and_sort_by_time():
    import time

    ids = [new_run_id() for _ in range(2000)]
    assert len(set(ids)) == len(ids) and all(0 < i < MAX_ID for i in ids)
    millis = time.time_ns() // 1_000_000 - EPOCH_MS
    assert all(abs((i >> 22) - millis) < 60_000 for i in ids)  # the top bits are the start time
    assert new_run_id() >> 22 >= ids[0] >> 22


def test_recording_into_an_export_keeps_its_dataset_and_patch_set_ids(recorded_random, tmp_path):
    folder = tmp_path / "export"
    export_parquet(recorded_random.db, folder)
    run_id = record_small(folder, seed=9)
    with open_parquet(folder) as conn:
        assert conn.execute("SELECT id, dataset_id FROM runs ORDER BY created_at").fetchall() == [(1, 1), (run_id, 1)]
        assert conn.execute("SELECT count(*) FROM datasets").fetchone() == (1,)
        assert conn.execute("SELECT DISTINCT patch_set_id FROM steps").fetchall() == [(1,)]
        assert conn.execute("SELECT count(*) FROM patch_sets").fetchone() == (1,)
        shares = conn.execute("SELECT sample_index, sum(share) FROM sample_sources WHERE run_id = ? "
                              "GROUP BY ALL ORDER BY ALL", [run_id]).fetchall()
    assert [s for s, _ in shares] == [0, 1] and all(total == pytest.approx(1.0) for _, total in shares)


def test_recording_refuses_a_folder_it_cannot_append_to(tmp_path):
    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.txt").write_text("keep me")
    with pytest.raises(StoreError, match="not empty and not a Parquet provenance folder"):
        record_small(other)
    assert listing(other) == ["notes.txt"]
    folder = tmp_path / "shared"
    record_small(folder)
    manifest = json.loads((folder / MANIFEST).read_text())
    (folder / MANIFEST).write_text(json.dumps({**manifest, "schema_revision": "0001"}))
    before = listing(folder)
    with pytest.raises(StoreError, match="schema revision '0001'"):
        record_small(folder)
    assert listing(folder) == before
