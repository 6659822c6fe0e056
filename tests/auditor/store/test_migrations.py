"""Migrations: from empty to head, from 0001 with data kept, the attribution views on a
hand-checked example, and the refusals (newer schema, corrupt file) that change nothing.

fill_tiny_store() (a small store filled with plain SQL) is shared with the other auditor tests.
"""

from __future__ import annotations

import os
import struct

import pytest
from sqlalchemy import create_engine
from sqlalchemy.pool import NullPool

from auditor.store import database


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



def file_state(path) -> tuple[bytes, int]:
    return path.read_bytes(), os.stat(path).st_mtime_ns


def columns(path) -> dict:
    with database.connect(path, read_only=True) as conn:
        rows = conn.execute("SELECT table_name, column_name, data_type, is_nullable FROM duckdb_columns() "
                            "WHERE schema_name = 'main' AND table_name != 'alembic_version' "
                            "AND table_name IN (SELECT table_name FROM duckdb_tables())").fetchall()
        constraints = conn.execute("SELECT table_name, constraint_type, constraint_column_names "
                                   "FROM duckdb_constraints() WHERE table_name != 'alembic_version' AND constraint_type IN "
                                   "('PRIMARY KEY', 'UNIQUE', 'FOREIGN KEY')").fetchall()
        sequences = conn.execute("SELECT sequence_name FROM duckdb_sequences()").fetchall()
    return {"columns": sorted(rows), "constraints": sorted((t, c, tuple(n)) for t, c, n in constraints),
            "sequences": sorted(sequences)}


# ---------------------------------------------------------------------------------------
# Upgrades
# ---------------------------------------------------------------------------------------
def test_upgrade_from_missing_file_reaches_head(tmp_path):
    path = tmp_path / "new.duckdb"
    assert database.current_revision(path) is None
    assert database.upgrade(path) == (None, database.head_revision())
    assert database.require_current(path) == database.head_revision() == "0007"
    assert database.upgrade(path) == ("0007", "0007")  # idempotent


def test_head_revision_matches_the_models(tmp_path):
    from auditor.store.schema import Base

    migrated, created = tmp_path / "migrated.duckdb", tmp_path / "created.duckdb"
    database.upgrade(migrated)
    engine = create_engine(f"duckdb:///{created}", poolclass=NullPool)
    Base.metadata.create_all(engine)
    engine.dispose()
    assert columns(migrated) == columns(created)


def test_upgrade_from_0001_keeps_data_and_views_answer(tmp_path):
    path = tmp_path / "store.duckdb"
    assert database.upgrade(path, "0001") == (None, "0001")
    info = fill_tiny_store(path)
    with database.connect(path, read_only=True) as conn:
        before = {t: conn.execute(f"SELECT * FROM {t} ORDER BY ALL").fetchall()
                  for t in ("datasets", "training_images", "runs", "samples", "steps", "patch_weights", "patch_pixels")}
    with pytest.raises(database.SchemaError, match="auditor db upgrade"):
        database.require_current(path)
    assert database.upgrade(path) == ("0001", "0007")
    with database.connect(path, read_only=True) as conn:
        after = {t: conn.execute(f"SELECT * EXCLUDE (pixels) FROM {t} ORDER BY ALL" if t == "training_images"
                                 else f"SELECT * EXCLUDE (kind, network_id, details) FROM {t} ORDER BY ALL" if t == "runs"
                                 else f"SELECT * FROM {t} ORDER BY ALL").fetchall() for t in before}
        assert conn.execute("SELECT count(*) FROM training_images WHERE pixels IS NOT NULL").fetchone()[0] == 0
    assert after == before
    check_views(path, info)
    # and back: downgrade drops the pixels column and the views, keeps the data
    assert database.upgrade(path, "0001") == ("0007", "0001")
    with database.connect(path, read_only=True) as conn:
        assert conn.execute("SELECT count(*) FROM duckdb_views() WHERE NOT internal").fetchone()[0] == 0
        assert conn.execute("SELECT count(*) FROM patch_weights").fetchone()[0] == len(before["patch_weights"])


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
# Refusals that change nothing
# ---------------------------------------------------------------------------------------
def test_newer_schema_is_refused_and_file_unchanged(tmp_path):
    path = tmp_path / "newer.duckdb"
    database.upgrade(path)
    with database.connect(path) as conn:
        conn.execute("UPDATE alembic_version SET version_num = '9999_future'")
    state = file_state(path)
    for call in (database.upgrade, database.require_current):
        with pytest.raises(database.SchemaError, match=r"newer version of auditor.*9999_future") as err:
            call(path)
        assert str(path) in str(err.value)
    assert file_state(path) == state


def test_corrupt_file_is_refused_and_unchanged(tmp_path):
    path = tmp_path / "corrupt.duckdb"
    path.write_bytes(os.urandom(20000))
    state = file_state(path)
    for call in (database.upgrade, database.require_current, database.current_revision):
        with pytest.raises(database.StoreError, match="not a DuckDB database file") as err:
            call(path)
        assert str(path) in str(err.value)
    with pytest.raises(database.StoreError, match="not a DuckDB"):
        with database.connect(path):
            pass
    assert file_state(path) == state
    assert sorted(p.name for p in tmp_path.iterdir()) == ["corrupt.duckdb"]  # no WAL left either


def test_empty_file_is_refused(tmp_path):
    path = tmp_path / "empty.duckdb"
    path.touch()
    with pytest.raises(database.StoreError, match="not a DuckDB"):
        database.upgrade(path)
    assert path.read_bytes() == b""


def test_unknown_target_revision(tmp_path):
    with pytest.raises(database.SchemaError, match="unknown schema revision"):
        database.upgrade(tmp_path / "x.duckdb", "12345")
    assert not (tmp_path / "x.duckdb").exists()


def test_failed_upgrade_leaves_the_previous_revision(tmp_path):
    path = tmp_path / "store.duckdb"
    database.upgrade(path, "0001")
    info = fill_tiny_store(path)
    with database.connect(path) as conn:  # a user object in the way of the last view of 0002
        conn.execute("CREATE TABLE trajectory_sources (x INTEGER)")
    with pytest.raises(database.StoreError, match="trajectory_sources"):
        database.upgrade(path)
    assert database.current_revision(path) == "0001"
    with database.connect(path, read_only=True) as conn:
        assert conn.execute("SELECT count(*) FROM duckdb_views() WHERE NOT internal").fetchone()[0] == 0
        assert conn.execute("SELECT count(*) FROM patch_weights").fetchone()[0] == \
            sum(len(v) for v in info["weights"].values())
    with database.connect(path) as conn:
        conn.execute("DROP TABLE trajectory_sources")
    assert database.upgrade(path) == ("0001", "0007")
