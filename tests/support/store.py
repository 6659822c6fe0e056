"""Provenance stores for the tests: runs recorded with what the engine computed, a tiny store
filled with plain SQL and the hand-checked answers of its views, another process holding the
store's lock, a fidelity study result, and SQL fetches.

`record`: record a run (upgrading the file first), keeping every step's (t, z, D, weights) as the
engine gave them to the sampler callback. FASHION_OPTIONS / RANDOM_OPTIONS: the settings of the
`recorded_fashion` / `recorded_random` fixtures (tests/auditor/conftest.py).
`fill_tiny_store`: a small store at any revision from 0001, via plain SQL; `check_views` checks
the attribution views on it against values computed by hand.
`study_result`: a fidelity.json-shaped result from the library's own classes with random numbers
(no network: fast).
"""

from __future__ import annotations

import struct
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
import torch

from auditor.store import database
from auditor.workflows import fidelity
from auditor.workflows.options import Runtime, SamplingOptions
from auditor.workflows.sampling import record_sampling_run
from pspc.data.training_set import TrainingSet
from pspc.evaluation.fidelity import ConcentrationTable, FidelityCurves
from pspc.evaluation.tuning import TunedSchedule

FASHION_OPTIONS = dict(num_samples=2, steps=18, seed=0)
RANDOM_OPTIONS = dict(num_samples=3, steps=4, seed=5, patch_size=3, top_k=64, mass=1.0)


def fetch(db, query, params=()):
    with database.connect(db, read_only=True) as conn:
        return conn.execute(query, list(params)).fetchall()


# ---------------------------------------------------------------------------------------
# Recorded runs
# ---------------------------------------------------------------------------------------
@dataclass
class Recorded:
    db: Path
    run_id: int
    training_set: TrainingSet
    steps: dict = field(default_factory=dict)  # step -> (t, z, D, weights) from the engine
    options: dict = field(default_factory=dict)


def record(db: Path, training_set: TrainingSet, *, command=None, **options) -> Recorded:
    """Record a run (upgrading the file first), keeping what the engine passed to the callback.
    options: SamplingOptions fields; command: the command line recorded with the run."""
    database.upgrade(db)
    captured = {}

    def keep(step, t, z, denoised, weights):
        captured[step] = (t, z.clone(), denoised.clone(), weights)

    run_id = record_sampling_run(db, training_set, options=SamplingOptions(**options), runtime=Runtime(command=command),
                                 callback=keep)
    return Recorded(db, run_id, training_set, captured, options)


def engine_shares(weights, step_index_of_sample: int, num_images: int, patch_set) -> dict[int, float]:
    """share[image] of one sample from the engine's weights: sum_k,j w * (sum_{q in M_k} 1/cov(q)) / HW."""
    coverage = patch_set.coverage()
    patch_share = patch_set.patch_sums(1.0 / coverage) / coverage.numel()  # [K]
    out: dict[int, float] = {}
    for index, w in weights:
        rows = (index == step_index_of_sample).nonzero().flatten()
        if not len(rows):
            continue
        b = int(rows[0])
        entry, weight = w.entry[b], w.weight[b].to(torch.float64)
        valid = entry >= 0
        contribution = (weight * patch_share[:, None])[valid]
        images = (entry[valid] % num_images)
        totals = torch.zeros(num_images, dtype=torch.float64).index_add_(0, images, contribution)
        for i in totals.nonzero().flatten().tolist():
            out[i] = out.get(i, 0.0) + float(totals[i])
    return out


@dataclass
class Store:
    """A recorded store of the report tests (the `fashion_store` and `random_store` fixtures)."""

    db: Path
    training_set: TrainingSet
    complete_run: int
    failed_run: int | None = None


@dataclass
class ComparisonStore:
    """A store holding one network comparison (the `comparison_store` fixture)."""

    db: Path
    network_run: int
    pspc_run: int


class Interrupt(Exception):
    """Raised by a sampler callback to stop a run part-way (an interrupted writer)."""


# ---------------------------------------------------------------------------------------
# A tiny store filled with plain SQL, and its views checked by hand
# ---------------------------------------------------------------------------------------
def window_pixels(height: int, width: int, size: int) -> list[tuple[int, int, int]]:
    """(position, y, x) of every size x size window of an H x W image (positions row-major)."""
    rows = []
    position = 0
    for top in range(height - size + 1):
        for left in range(width - size + 1):
            rows += [(position, top + dy, left + dx) for dy in range(size) for dx in range(size)]
            position += 1
    return rows


def image_bytes(values) -> bytes:
    return struct.pack(f"<{len(values)}f", *values)


def fill_tiny_store(path, height=3, width=3, size=2) -> dict:
    """A dataset of 3 images, a run with 2 samples, 3x3 window patches of 2x2, via plain SQL.

    Sample 0: steps 0 (t 2 -> 1) and 1 (t 1 -> 0, the final one); sample 1: steps 0 (t 4 -> 2)
    and 1 (t 2 -> 1), unfinished. Returns the weights inserted: {(sample, step): [(position,
    image_index, flip, weight), ...]}.
    """
    weights = {
        (0, 0): [(0, 0, False, 0.6), (0, 1, False, 0.4), (1, 1, False, 1.0), (2, 2, True, 0.5), (2, 0, False, 0.5),
                 (3, 0, False, 1.0)],
        (0, 1): [(0, 1, False, 1.0), (1, 1, False, 1.0), (2, 1, False, 0.75), (2, 2, False, 0.25), (3, 2, True, 1.0)],
        (1, 0): [(0, 0, False, 1.0), (1, 0, False, 1.0), (2, 0, False, 1.0), (3, 0, False, 1.0)],
        (1, 1): [(0, 2, False, 1.0), (1, 2, False, 1.0), (2, 2, False, 1.0), (3, 0, False, 1.0)],
    }
    times = {(0, 0): (2.0, 1.0), (0, 1): (1.0, 0.0), (1, 0): (4.0, 2.0), (1, 1): (2.0, 1.0)}
    pixels = window_pixels(height, width, size)
    positions = sorted({p for p, _, _ in pixels})
    blank = image_bytes([0.0] * (height * width))
    with database.connect(path) as conn:
        conn.execute("INSERT INTO datasets (fingerprint, name, source, channels, height, width, count, created_at) "
                     "VALUES ('f' || repeat('0', 63), 'tiny', 'test', 1, ?, ?, 3, now())", [height, width])
        dataset_id = conn.execute("SELECT id FROM datasets").fetchone()[0]
        conn.executemany("INSERT INTO training_images (dataset_id, image_index, image_id, sha256, label, owner) "
                         "VALUES (?, ?, ?, ?, ?, ?)",
                         [(dataset_id, i, f"img-{i}", "0" * 64, i % 2, f"owner-{i}") for i in range(3)])
        conn.execute("INSERT INTO runs (dataset_id, status, denoiser, sampler, seed, num_samples, top_k, mass_threshold, "
                     "versions, created_at) VALUES (?, 'complete', '{}', '{}', 0, 2, 16, 0.99, '{}', now())",
                     [dataset_id])
        run_id = conn.execute("SELECT id FROM runs").fetchone()[0]
        conn.executemany("INSERT INTO samples VALUES (?, ?, ?, ?)", [(run_id, s, s, blank) for s in range(2)])
        conn.execute("INSERT INTO patch_sets (fingerprint, description, height, width, num_patches) "
                     "VALUES ('p' || repeat('0', 63), '{}', ?, ?, ?)", [height, width, len(positions)])
        patch_set_id = conn.execute("SELECT id FROM patch_sets").fetchone()[0]
        conn.executemany("INSERT INTO patch_pixels VALUES (?, ?, ?, ?)",
                         [(patch_set_id, p, y, x) for p, y, x in pixels])
        conn.executemany("INSERT INTO patch_positions VALUES (?, ?, ?, ?, ?, ?)",
                         [(patch_set_id, p, p // (width - size + 1), p % (width - size + 1), size, size)
                          for p in positions])
        for (sample, step), (t, t_next) in times.items():
            conn.execute("INSERT INTO steps VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                         [run_id, sample, step, t, t_next, patch_set_id, blank, blank])
        rows = []
        for (sample, step), entries in weights.items():
            for rank, (position, image, flip, weight) in enumerate(entries):
                rows.append((run_id, sample, step, position, rank, image, flip, 0, 0, weight))
        conn.executemany("INSERT INTO patch_weights VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", rows)
    return {"run_id": run_id, "dataset_id": dataset_id, "weights": weights, "times": times, "pixels": pixels,
            "height": height, "width": width}


def expected_pixel_weights(info, sample, step) -> dict:
    """Eq. 11 by hand: pixel weight = sum over covering patches of weight / number covering."""
    cover = {}
    for position, y, x in info["pixels"]:
        cover.setdefault((y, x), []).append(position)
    out = {}
    for (y, x), positions in cover.items():
        for position, image, flip, weight in info["weights"][(sample, step)]:
            if position in positions:
                key = (y, x, image, flip)
                out[key] = out.get(key, 0.0) + weight / len(positions)
    return out


def check_views(path, info):
    run = info["run_id"]
    with database.connect(path, read_only=True) as conn:
        rows = conn.execute("SELECT sample_index, step, y, x, image_index, flip, weight FROM pixel_weights "
                            "WHERE run_id = ?", [run]).fetchall()
        steps = conn.execute("SELECT sample_index, step, image_index, share, flip_share, patches FROM step_sources "
                             "WHERE run_id = ?", [run]).fetchall()
        final = conn.execute("SELECT sample_index, step, image_index, share FROM sample_sources "
                             "WHERE run_id = ? ORDER BY ALL", [run]).fetchall()
        trajectory = conn.execute("SELECT sample_index, image_index, share, steps FROM trajectory_sources "
                                  "WHERE run_id = ? ORDER BY ALL", [run]).fetchall()

    # Hand-computed values (3x3 image, 2x2 windows: corners covered once, edges twice, centre 4x).
    got = {(s, k, y, x, i, f): w for s, k, y, x, i, f, w in rows}
    assert got[(0, 0, 0, 0, 0, False)] == pytest.approx(0.6)  # corner: only patch 0
    assert got[(0, 0, 0, 1, 1, False)] == pytest.approx((0.4 + 1.0) / 2)  # edge: patches 0 and 1
    assert got[(0, 0, 1, 1, 0, False)] == pytest.approx((0.6 + 0.5 + 1.0) / 4)  # centre: all four
    assert got[(0, 0, 1, 1, 2, True)] == pytest.approx(0.5 / 4)
    assert (0, 0, 2, 2, 1, False) not in got  # image 1 has no weight in patch 3
    for (sample, step) in info["weights"]:
        expected = expected_pixel_weights(info, sample, step)
        mine = {(y, x, i, f): w for s, k, y, x, i, f, w in rows if (s, k) == (sample, step)}
        assert mine.keys() == expected.keys()
        for key, value in expected.items():
            assert mine[key] == pytest.approx(value, abs=1e-6)
        # every pixel's weights sum to 1 (full weights here)
        per_pixel = {}
        for (y, x, _, _), w in mine.items():
            per_pixel[(y, x)] = per_pixel.get((y, x), 0.0) + w
        assert all(v == pytest.approx(1.0, abs=1e-6) for v in per_pixel.values())
        assert len(per_pixel) == info["height"] * info["width"]

    # step_sources = mean over the 9 pixels of the pixel weights (flips included in share)
    shares = {}
    for sample, step, image, share, flip_share, patches in steps:
        shares[(sample, step, image)] = share
        expected = expected_pixel_weights(info, sample, step)
        total = sum(w for (y, x, i, f), w in expected.items() if i == image) / 9
        flipped = sum(w for (y, x, i, f), w in expected.items() if i == image and f) / 9
        assert share == pytest.approx(total, abs=1e-6)
        assert flip_share == pytest.approx(flipped, abs=1e-6)
        assert patches == len({p for p, i, f, w in info["weights"][(sample, step)] if i == image})
    # by pixel, row by row: 0.6, 0.6/2, 0 | 1.1/2, 2.1/4, 1/2 | 0.5, 1.5/2, 1.0; and by patch: each 2x2
    # window holds 1 + 1/2 + 1/2 + 1/4 = 2.25 pixels' worth, i.e. 1/4 of the image
    assert shares[(0, 0, 0)] == pytest.approx((0.6 + 0.3 + 0 + 0.55 + 0.525 + 0.5 + 0.5 + 0.75 + 1.0) / 9)
    assert shares[(0, 0, 0)] == pytest.approx((0.6 + 0.5 + 1.0) / 4)
    for sample, step in info["weights"]:
        assert sum(v for (s, k, _), v in shares.items() if (s, k) == (sample, step)) == pytest.approx(1.0)

    # sample_sources: only sample 0 reached t_next = 0 (its step 1)
    assert [(s, k, i) for s, k, i, _ in final] == [(0, 1, 1), (0, 1, 2)]
    for s, k, i, share in final:
        assert share == pytest.approx(shares[(s, k, i)])

    # trajectory: w_i = a_i / sum a, a_i = 1 - t_{i+1}/t_i. Sample 0 (t 2 -> 1 -> 0): a = 0.5, 1;
    # unfinished sample 1 (t 4 -> 2 -> 1): a = 0.5, 0.5.
    got = {(s, i): (share, n) for s, i, share, n in trajectory}
    coefficients = {0: {0: 1 / 3, 1: 2 / 3}, 1: {0: 0.5, 1: 0.5}}
    for (s, i), (share, n) in got.items():
        expected = sum(c * shares.get((s, k, i), 0.0) for k, c in coefficients[s].items())
        assert share == pytest.approx(expected, abs=1e-9)
        assert n == sum((s, k, i) in shares for k in coefficients[s])
    assert got[(1, 0)][0] == pytest.approx(0.5 * 1.0 + 0.5 * 0.25)  # image 0: all of step 0, patch 3 at step 1


# ---------------------------------------------------------------------------------------
# Another process holding the lock
# ---------------------------------------------------------------------------------------
HOLDER = """
import sys, duckdb
conn = duckdb.connect(sys.argv[1])  # read-write: exclusive lock on the file
conn.execute("SELECT 1")
print("locked", flush=True)
sys.stdin.read()  # hold it until the test closes our stdin
conn.close()
"""


class LockHolder:
    """Another PROCESS holding a read-write duckdb connection on `path`."""

    def __init__(self, path: Path):
        self.proc = subprocess.Popen([sys.executable, "-c", HOLDER, str(path)], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, text=True)
        assert self.proc.stdout.readline().strip() == "locked"

    def release(self):
        if self.proc.poll() is None:
            self.proc.stdin.close()
            self.proc.wait(timeout=30)


# ---------------------------------------------------------------------------------------
# Fidelity studies
# ---------------------------------------------------------------------------------------
NAMES = ["empirical", "gaussian", "pspc-square", "pspc-flex"]


def study_result(seed: int = 0) -> dict:
    """A result as run_study gives it (and bench/fidelity.py writes as fidelity.json)."""
    rng = np.random.default_rng(seed)
    records = {name: {"kind": name, "dataset": {"fingerprint": "d" * 64}} for name in NAMES}
    curves = {"forward": FidelityCurves("forward", [0.1, 0.5, 2.0, 10.0], NAMES, rng.uniform(0.01, 0.2, (4, 4, 3)),
                                        records),
              "reverse": FidelityCurves("reverse", [80.0, 2.5, 0.6, 0.002], NAMES,
                                        rng.uniform(0.01, 0.2, (4, 4, 2)), records)}
    concentration = ConcentrationTable([0.3, 1.0, 3.0], [0.5, 0.75, 0.95], rng.uniform(1, 5, (3, 3)).cumsum(1),
                                       rng.integers(1, 15, (3, 3)).astype(float), {15: [0.9, 0.7, 0.5]},
                                       {"sensitivity": {"kind": "network-eq8", "num_samples": 1}})
    sets = ["network", *NAMES]
    mean = rng.uniform(0.3, 0.9, (5, 5))
    np.fill_diagonal(mean, 1.0)
    similarity = {"names": sets, "count": 2, "mean": mean.tolist(), "std": rng.uniform(0, 0.1, (5, 5)).tolist(),
                  "fraction_above": {"0.5": mean.tolist()}, "thresholds": [0.5, 0.6],
                  "descriptor": {"name": "pixel-correlation-32x32 (not SSCD)", "kind": "pixel-correlation",
                                 "fingerprint": "e" * 64, "dimension": 1024, "preprocessing": {"name": "fixed-32-luma"}},
                  "scores": rng.uniform(0, 1, (5, 5, 2)).tolist()}
    to_network = {name: float(mean[0, j]) for j, name in enumerate(sets) if j > 0}
    tuned = TunedSchedule([80.0, 2.5, 0.6, 0.002], (28, 28), [28, 9, 5, 3],
                          [{3: 0.5, 28: 0.4}, {3: 0.3, 9: 0.2}, {3: 0.2, 5: 0.1}, {3: 0.05}],
                          [1.0, 0.6, 0.4, 0.2], [{0.5: 0.3, 1.0: 0.2}] * 4, name="tuned-test")
    record = {"command": ["bench/fidelity.py", "--quick", "--out", "out/fidelity-test"],
              "configuration": {"network": "checkpoints/tiny.pt", "seed": 7, "test_images": 3, "samples": 2,
                                "steps": 5, "out": "out/fidelity-test", "times": [0.1, 0.5, 2.0, 10.0],
                                "grid": [0.3, 1.0, 3.0]},
              "training_set": {"name": "fashion-mnist-train", "fingerprint": "a" * 64, "count": 200,
                               "shape": [1, 28, 28], "xflip": True},
              "test_set": {"name": "fashion-mnist-test", "fingerprint": "b" * 64, "count": 10000},
              "network": {"kind": "network", "name": "tiny", "image_shape": [1, 28, 28],
                          "network": {"path": "/x/tiny.pt", "sha256": "c" * 64, "file": "checkpoint"}},
              "sensitivity": {"kind": "network-eq8"}, "states": {"forward": {"seed": 7}, "reverse": {"seed": 7}},
              "schedule_file": None, "versions": {"python": "3.11", "torch": torch.__version__},
              "timings_s": {"total": 1.5}}
    return {"record": record, "curves": {p: c.to_dict() for p, c in curves.items()},
            "concentration": concentration.to_dict(), "similarity": similarity, "similarity_to_network": to_network,
            "tuned_schedule": tuned.rows(), "findings": fidelity.verdict(curves, to_network)}
