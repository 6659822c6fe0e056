"""Run lifecycle: atomic completion, failure, resume, listing, and a reader in another process."""

import json
import os
import socket
import subprocess
import sys
import textwrap
import time
from dataclasses import replace

import pytest
import torch

from auditor.errors import NotFoundError, StoreError
from auditor.store import database
from auditor.store.recorder import from_blob
from auditor.store.runs import run_summaries
from auditor.workflows import sampling as runs
from auditor.workflows.options import SamplingOptions

from tests.support.data import random_set
from tests.support.paths import REPO

OPTIONS = SamplingOptions(num_samples=2, steps=5, seed=7, patch_size=3, top_k=4, mass=0.95)


def _fetch(db, sql, params=()):
    with database.connect(db, read_only=True) as conn:
        return conn.execute(sql, list(params)).fetchall()


def _final_images(db, run_id, shape):
    rows = _fetch(db, "SELECT final_image FROM samples WHERE run_id = ? ORDER BY sample_index", [run_id])
    return [None if r[0] is None else from_blob(r[0], shape) for r in rows]


class Boom(RuntimeError):
    pass


def _raise_at(step_to_fail, exc):
    def callback(step, t, z, denoised, weights):
        if step == step_to_fail:
            raise exc
    return callback


@pytest.mark.parametrize("exc", [Boom("disk on fire"), KeyboardInterrupt()])
def test_exception_mid_run_marks_failed(empty_db, exc):
    with pytest.raises(type(exc)):
        runs.record_sampling_run(empty_db, random_set(), callback=_raise_at(2, exc), options=OPTIONS)
    (status, error, finished), = _fetch(empty_db, "SELECT status, error, finished_at FROM runs")
    assert status == "failed" and finished is not None
    assert ("disk on fire" in error) if isinstance(exc, Boom) else ("KeyboardInterrupt" in error)
    steps = _fetch(empty_db, "SELECT DISTINCT step FROM steps ORDER BY step")
    assert [s[0] for s in steps] == [0, 1, 2]  # the recorder wrote step 2 before the callback raised
    assert all(img is None for img in _final_images(empty_db, 1, (1, 8, 8)))
    summary, = run_summaries(empty_db)
    assert summary["status"] == "failed" and summary["steps"] == 3


def test_failing_last_step_never_complete(empty_db, monkeypatch):
    """The last step's transaction fails (after its inserts): nothing of it stays, the run is failed."""
    from auditor.store import recorder

    def broken(self, conn, final, started):
        raise Boom("cannot complete")

    monkeypatch.setattr(recorder.ProvenanceRecorder, "_complete", broken)
    with pytest.raises(Boom):
        runs.record_sampling_run(empty_db, random_set(), options=OPTIONS)
    assert _fetch(empty_db, "SELECT status FROM runs") == [("failed",)]
    assert _fetch(empty_db, "SELECT max(step) FROM steps") == [(OPTIONS.steps - 2,)]  # last step rolled back
    assert _fetch(empty_db, "SELECT max(step) FROM patch_weights") == [(OPTIONS.steps - 2,)]


@pytest.mark.slow
@pytest.mark.parametrize("sampler", ["euler", "heun"])
def test_resume_equals_uninterrupted(tmp_path, sampler):
    data = random_set()
    db = tmp_path / "p.duckdb"
    database.upgrade(db)
    whole = runs.record_sampling_run(db, data, options=replace(OPTIONS, sampler=sampler))
    with pytest.raises(Boom):
        runs.record_sampling_run(db, data, options=replace(OPTIONS, sampler=sampler), callback=_raise_at(2, Boom("x")))
    broken = whole + 1
    # a half-written step (as if a transaction had been cut) is cleaned up on resume
    with database.connect(db) as conn:
        conn.execute("INSERT INTO patch_stats SELECT run_id, sample_index, 3, position, mass, entropy, ess "
                     "FROM patch_stats WHERE run_id = ? AND step = 2 AND sample_index = 0", [broken])
    steps_seen = []
    assert runs.resume_run(db, broken, data, callback=lambda step, *a: steps_seen.append(step)) == broken
    assert steps_seen == [3, 4]
    assert _fetch(db, "SELECT status, error FROM runs WHERE id = ?", [broken]) == [("complete", None)]
    timings = json.loads(_fetch(db, "SELECT timings FROM runs WHERE id = ?", [broken])[0][0])
    assert timings["resumed_from_step"] == 3 and timings["resumed_with"] == {"world_size": 1, "backend": None}
    expected = _final_images(db, whole, data.image_shape)
    got = _final_images(db, broken, data.image_shape)
    assert all(torch.equal(a, b) for a, b in zip(expected, got))
    for table in ("steps", "patch_weights", "patch_stats"):
        counts = _fetch(db, f"SELECT run_id, count(*) FROM {table} GROUP BY run_id ORDER BY run_id")
        assert counts[0][1] == counts[1][1], table
    with pytest.raises(StoreError, match="already complete"):
        runs.resume_run(db, broken, data)


def test_resume_errors(empty_db):
    data = random_set()
    with pytest.raises(Boom):
        runs.record_sampling_run(empty_db, data, callback=_raise_at(0, Boom("x")), options=OPTIONS)
    with pytest.raises(NotFoundError, match="no run 99"):
        runs.resume_run(empty_db, 99, data)
    other = random_set().subset(range(6))
    with pytest.raises(StoreError, match="fingerprint"):
        runs.resume_run(empty_db, 1, other)
    assert _fetch(empty_db, "SELECT status FROM runs") == [("failed",)]  # refused: nothing changed
    with pytest.raises(NotFoundError):
        run_summaries(empty_db, dataset_id=42)


@pytest.mark.slow
def test_running_run_with_dead_writer(empty_db):
    data = random_set()
    run_id = runs.record_sampling_run(empty_db, data, options=OPTIONS)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    with database.connect(empty_db) as conn:
        writer = json.dumps({"host": socket.gethostname(), "pid": dead.pid})
        conn.execute("INSERT INTO runs (dataset_id, status, denoiser, sampler, seed, num_samples, top_k, "
                     "mass_threshold, versions, writer, created_at) SELECT dataset_id, 'running', denoiser, sampler, "
                     "seed, num_samples, top_k, mass_threshold, versions, ?, created_at FROM runs WHERE id = ?",
                     [writer, run_id])
    summaries = run_summaries(empty_db)
    assert [s["status"] for s in summaries] == [f"running (writer pid {dead.pid} gone)", "complete"]
    assert summaries[1]["steps"] == OPTIONS.steps and summaries[1]["samples"] == 2
    assert run_summaries(empty_db, dataset_id=1)[0]["dataset"] == "random"
    # a run whose writer is alive is refused; one whose writer is gone resumes (from the noise: no steps)
    with database.connect(empty_db) as conn:
        conn.execute("INSERT INTO runs (dataset_id, status, denoiser, sampler, seed, num_samples, top_k, "
                     "mass_threshold, versions, writer, created_at) SELECT dataset_id, 'running', denoiser, sampler, "
                     "seed, num_samples, top_k, mass_threshold, versions, ?, created_at FROM runs WHERE id = ?",
                     [json.dumps({"host": socket.gethostname(), "pid": os.getpid()}), run_id])
    with pytest.raises(StoreError, match="still being written by process"):
        runs.resume_run(empty_db, 3, data)
    orphan = summaries[0]["id"]
    with database.connect(empty_db) as conn:
        conn.executemany("INSERT INTO samples (run_id, sample_index, seed) VALUES (?, ?, ?)",
                         [(orphan, i, OPTIONS.seed + i) for i in range(2)])
    runs.resume_run(empty_db, orphan, data)
    assert _fetch(empty_db, f"SELECT status FROM runs WHERE id = {orphan}") == [("complete",)]
    assert _fetch(empty_db, f"SELECT list(final_image ORDER BY sample_index) = (SELECT list(final_image ORDER BY "
                            f"sample_index) FROM samples WHERE run_id = {run_id}) FROM samples "
                            f"WHERE run_id = {orphan}") == [(True,)]


WRITER = textwrap.dedent("""
    import sys
    from auditor.workflows.options import SamplingOptions
    from auditor.workflows.sampling import record_sampling_run
    from tests.support.data import random_training_set
    data = random_training_set(count=200, channels=1, height=16, width=16, seed=1, xflip=True)
    options = SamplingOptions(num_samples=4, steps=8, seed=3, top_k=8, mass=0.99)
    print(record_sampling_run(sys.argv[1], data, options=options), flush=True)
""")


@pytest.mark.slow
def test_reader_process_while_writer_process_records(empty_db):
    """Two processes: the writer records a run; this process reads read-only meanwhile."""
    writer = subprocess.Popen([sys.executable, "-c", WRITER, str(empty_db)], cwd=REPO, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True)
    observed = []
    try:
        deadline = time.monotonic() + 120
        while writer.poll() is None and time.monotonic() < deadline:
            with database.connect(empty_db, read_only=True, timeout=30) as conn:
                run = conn.execute("SELECT id, status, num_samples FROM runs").fetchall()
                steps = conn.execute("SELECT step, count(*) FROM steps GROUP BY step ORDER BY step").fetchall()
                weight_steps = conn.execute("SELECT DISTINCT step FROM patch_weights ORDER BY step").fetchall()
                finals = conn.execute("SELECT count(final_image) FROM samples").fetchone()[0]
            observed.append((run, steps, weight_steps, finals))
            time.sleep(0.05)
        out, err = writer.communicate(timeout=120)
    finally:
        if writer.poll() is None:
            writer.kill()
    assert writer.returncode == 0, err
    assert observed
    for run, steps, weight_steps, finals in observed:
        if not run:
            assert not steps
            continue
        (_, status, num_samples), = run
        # a consistent prefix: whole steps 0..s, weights for exactly those steps
        assert [s for s, _ in steps] == list(range(len(steps)))
        assert all(count == num_samples for _, count in steps)
        assert [s for s, in weight_steps] == [s for s, _ in steps]
        assert (status == "complete") == (len(steps) == 8) == (finals == num_samples)
        assert status in ("running", "complete")
    assert len({len(o[1]) for o in observed}) >= 2, observed  # saw the run grow
    (status,), = _fetch(empty_db, "SELECT status FROM runs")
    assert status == "complete" and int(out.strip()) == 1
