"""The fused kernels' dynamic work split: workers claim groups of image blocks from one atomic
counter (fused_kernels.claim_group), so a worker that starts late finds the work done rather
than a share of it waiting for it; the sums stay bit-identical (test_determinism)."""

import os
import subprocess
import sys
from pathlib import Path

import numba
import numpy as np
import pytest

from pspc.posterior import fused_kernels


@numba.njit(parallel=True)
def _claims(parts, total):
    """How many of `total` items each of `parts` workers claimed, and how often each item was handed out."""
    counter = np.zeros(1, dtype=np.int64)
    tally = np.zeros(parts, dtype=np.int64)
    work = np.zeros(parts)
    for part in numba.prange(parts):
        item = fused_kernels.claim_group(counter)
        while item < total:
            tally[part] += 1
            for step in range(200):  # some work per item, so that the workers overlap
                work[part] += np.sqrt(step + item)
            item = fused_kernels.claim_group(counter)
    return tally


def test_every_group_is_claimed_exactly_once_by_concurrent_workers():
    """2 threads racing for 100k claims: with a plain (non-atomic) counter the compiler keeps a
    copy per thread, and every worker takes every item (sum = parts x total)."""
    if numba.config.NUMBA_NUM_THREADS < 2:
        pytest.skip("needs NUMBA_NUM_THREADS >= 2")
    before = numba.get_num_threads()
    numba.set_num_threads(2)
    try:
        for parts in (2, 3, 7):
            assert _claims(parts, 100_000).sum() == 100_000
    finally:
        numba.set_num_threads(before)


def test_a_worker_that_comes_late_finds_the_work_taken():
    """On one thread the workers run one after another: the first takes every group, the rest
    none (a static split would have left each its share, waiting for it)."""
    before = numba.get_num_threads()
    numba.set_num_threads(1)
    try:
        assert _claims(4, 64).tolist() == [64, 0, 0, 0]
    finally:
        numba.set_num_threads(before)


@pytest.mark.parametrize("chosen, expected", [(None, "PASSIVE"), ("ACTIVE", "ACTIVE")])
def test_waiting_openmp_workers_sleep_unless_the_user_chose(chosen, expected):
    """Importing the kernels makes numba's OpenMP workers sleep when they wait (a spinning
    worker takes the CPU a descheduled one needs), before numba's layer is loaded."""
    environment = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    if chosen:
        environment["OMP_WAIT_POLICY"] = chosen
    found = subprocess.run([sys.executable, "-c", "import os, pspc.posterior.fused_kernels; "
                            "print(os.environ['OMP_WAIT_POLICY'])"], env=environment, capture_output=True,
                           text=True, check=True, cwd=Path(__file__).resolve().parents[3])
    assert found.stdout.strip() == expected
