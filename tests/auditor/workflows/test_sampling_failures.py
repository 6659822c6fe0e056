"""How a recording run ends when it cannot go on: the store's lock lost to another process between
steps, and a Ctrl-C (a job's cancel) that numba's compiled code turned into a SystemError."""

from __future__ import annotations

import threading
import time

import pytest

from auditor.errors import LockedError
from auditor.store import database
from auditor.workflows.options import Runtime, SamplingOptions
from auditor.workflows.sampling import record_sampling_run
from tests.support.data import random_set
from tests.support.store import LockHolder, fetch

OPTIONS = SamplingOptions(num_samples=2, steps=4, seed=7, patch_size=3, top_k=4, mass=0.95)


def _release_on_second_wait(holder: LockHolder, db, limit: float = 30.0) -> None:
    """Release the lock when this process's writer waits for it the second time (its marker file
    appears again): the step's write has given up, marking the run failed waits."""
    marker, waits, seen = database.writer_marker(db), 0, False
    deadline = time.monotonic() + limit
    while waits < 2 and time.monotonic() < deadline:
        now = marker.exists()
        waits += now and not seen
        seen = now
        time.sleep(0.002)
    holder.release()


@pytest.mark.slow
def test_a_writer_that_loses_the_lock_marks_its_run_failed_once_it_is_free(empty_db):
    """After step 0 another process takes the lock; step 1's write gives up after 0.3 s, and the
    run is marked failed, naming the step, as soon as the lock is free."""
    holders = []

    def take_the_lock(step, *args):
        if step == 0:
            holder = LockHolder(empty_db)
            holders.append(holder)
            threading.Thread(target=_release_on_second_wait, args=(holder, empty_db), daemon=True).start()

    try:
        with pytest.raises(LockedError, match="lost the store lock at step 1 of run 1"):
            record_sampling_run(empty_db, random_set(), options=OPTIONS, callback=take_the_lock,
                                runtime=Runtime(timeout=0.3))
    finally:
        for holder in holders:
            holder.release()
    (status, error), = fetch(empty_db, "SELECT status, error FROM runs")
    assert status == "failed"
    assert error.startswith("LockedError: the writer lost the store lock at step 1 of run 1")
    assert fetch(empty_db, "SELECT DISTINCT step FROM steps") == [(0,)]


def _numba_interrupt(step, *args):
    """Raise what a SIGINT inside numba's compiled code raises (seen when a job is cancelled)."""
    if step == 1:
        try:
            try:
                raise KeyboardInterrupt
            except KeyboardInterrupt as exc:
                raise SystemError("<function _numba_unpickle> returned a result with an exception set") from exc
        except SystemError as exc:
            raise SystemError("CPUDispatcher(<function compose>) returned a result with an exception set") from exc


def test_an_interrupt_inside_numba_is_an_interrupt(empty_db):
    with pytest.raises(KeyboardInterrupt):  # so the CLI says "interrupted" and exits 130, not a traceback
        record_sampling_run(empty_db, random_set(), options=OPTIONS, callback=_numba_interrupt)
    assert fetch(empty_db, "SELECT status, error FROM runs") == [("failed", "interrupted (KeyboardInterrupt)")]
