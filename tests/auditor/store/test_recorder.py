"""The recorder: stored steps are what the engine computed, and recompose to D(z_t)."""

import numpy as np
import pytest
import torch

from auditor.store import attribution, database
from auditor.store.recorder import from_blob, patch_set_fingerprint
from pspc.denoisers import build_denoiser
from pspc.samplers import SamplerConfig, initial_noise, sample

from tests.support.data import random_set
from tests.support.store import RANDOM_OPTIONS, record


def _fetch(db, sql, params=()):
    with database.connect(db, read_only=True) as conn:
        return conn.execute(sql, list(params)).fetchall()


def test_full_weights_recompose_stored_denoised(recorded_random):
    rec = recorded_random
    for step in range(RANDOM_OPTIONS["steps"]):
        for sample_index in range(RANDOM_OPTIONS["num_samples"]):
            recomposed, stored, bound = attribution.recompose_step(rec.db, rec.run_id, sample_index, step,
                                                                   rec.training_set)
            assert (recomposed - stored).abs().max() < 1e-5
            assert bound.max() < 1e-5  # full weights: nothing dropped


@pytest.mark.slow
def test_top_k_recompose_within_dropped_mass(tmp_path):
    rec = record(tmp_path / "topk.duckdb", random_set(), num_samples=2, steps=3, patch_size=3, top_k=2, mass=0.9,
                 seed=1)
    worst = 0.0
    for step in range(3):
        for sample_index in range(2):
            recomposed, stored, bound = attribution.recompose_step(rec.db, rec.run_id, sample_index, step,
                                                                   rec.training_set)
            assert ((recomposed - stored).abs() <= bound + 1e-5).all()
            worst = max(worst, float(bound.max()))
    assert worst > 1e-3  # the test drops mass somewhere


def test_stored_step_is_what_the_engine_computed(recorded_fashion):
    rec = recorded_fashion
    denoiser = build_denoiser("pspc-square", rec.training_set)
    rows = _fetch(rec.db, "SELECT step, sample_index, t, t_next, z, denoised FROM steps WHERE run_id = ? "
                          "ORDER BY step, sample_index", [rec.run_id])
    assert len(rows) == 18 * 2
    shape = rec.training_set.image_shape
    for step in (0, 9, 17):
        t, z, d, _ = rec.steps[step]
        stored = [r for r in rows if r[0] == step]
        z_stored = torch.stack([from_blob(r[4], shape) for r in stored])
        d_stored = torch.stack([from_blob(r[5], shape) for r in stored])
        assert torch.equal(z_stored, z) and torch.equal(d_stored, d)  # exact bytes
        assert stored[0][2] == t
        # calling the denoiser again on the stored z gives the stored D(z_t)
        assert torch.allclose(denoiser(z_stored, t), d_stored, atol=1e-6)
    assert rows[-1][3] == 0.0


def test_stored_weights_match_engine(recorded_fashion):
    rec = recorded_fashion
    n = len(rec.training_set)
    for step in (0, 17):
        _, _, _, weights = rec.steps[step]
        (index, w), = weights
        got = _fetch(rec.db, "SELECT sample_index, position, rank, image_index, flip, weight, source_top, source_left "
                             "FROM patch_weights WHERE run_id = ? AND step = ? "
                             "ORDER BY sample_index, position, rank", [rec.run_id, step])
        b, k, r = (w.entry >= 0).nonzero().unbind(1)
        entry = w.entry[b, k, r]
        assert len(got) == len(entry)
        got = np.array([g[:5] for g in got], dtype=np.int64), np.array([g[5] for g in got], dtype=np.float32), got
        assert np.array_equal(got[0][:, 0], index[b].numpy())
        assert np.array_equal(got[0][:, 1], k.numpy()) and np.array_equal(got[0][:, 2], r.numpy())
        assert np.array_equal(got[0][:, 3], (entry % n).numpy()) and np.array_equal(got[0][:, 4], (entry >= n).numpy())
        assert np.array_equal(got[1], w.weight[b, k, r].numpy())
        for row in got[2][:: max(1, len(got[2]) // 50)]:  # source boxes as the engine defines them
            assert row[6:8] == w.patch_set.source_box(row[1], bool(row[4]))[:2]
        stats = _fetch(rec.db, "SELECT mass, entropy, ess FROM patch_stats WHERE run_id = ? AND step = ? "
                               "ORDER BY sample_index, position", [rec.run_id, step])
        assert np.allclose(np.array(stats)[:, 0], w.mass.flatten().numpy())
        assert np.allclose(np.array(stats)[:, 2], w.ess.flatten().numpy())


def test_patch_sets_stored_once(recorded_fashion, tmp_path):
    rec = recorded_fashion
    sets = _fetch(rec.db, "SELECT id, fingerprint, num_patches, height, width FROM patch_sets ORDER BY id")
    used = {w.patch_set for _, _, _, ws in rec.steps.values() for _, w in ws}
    assert len(sets) == len(used) == len({patch_set_fingerprint(p) for p in used})
    for ps in used:
        (ps_id, _, num_patches, h, w), = [s for s in sets if s[1] == patch_set_fingerprint(ps)]
        assert num_patches == ps.num_patches and (h, w) == (ps.height, ps.width)
        pixels, = _fetch(rec.db, "SELECT count(*) FROM patch_pixels WHERE patch_set_id = ?", [ps_id])
        assert pixels[0] == int(ps.masks().sum())
        boxes = _fetch(rec.db, 'SELECT position, "top", "left", height, width FROM patch_positions '
                               "WHERE patch_set_id = ? ORDER BY position", [ps_id])
        assert len(boxes) == ps.num_patches
        for position, *box in boxes[:: max(1, len(boxes) // 20)]:
            assert tuple(box) == ps.source_box(position)


def test_final_images_equal_unrecorded_sampling(recorded_random):
    rec = recorded_random
    o = RANDOM_OPTIONS
    denoiser = build_denoiser("pspc-square", rec.training_set, patch_size=o["patch_size"])
    expected = sample(denoiser, initial_noise(o["num_samples"], rec.training_set.image_shape, o["seed"]),
                      SamplerConfig(num_steps=o["steps"]))
    rows = _fetch(rec.db, "SELECT final_image FROM samples WHERE run_id = ? ORDER BY sample_index", [rec.run_id])
    stored = torch.stack([from_blob(r[0], rec.training_set.image_shape) for r in rows])
    assert torch.equal(stored, expected)
    status, timings = _fetch(rec.db, "SELECT status, timings FROM runs WHERE id = ?", [rec.run_id])[0]
    assert status == "complete" and '"recording"' in timings


def test_recorder_needs_weights(empty_db):
    from auditor.errors import UserError
    from auditor.workflows import sampling as runs
    from auditor.workflows.options import SamplingOptions

    with pytest.raises(UserError, match="only PSPC denoisers"):
        runs.record_sampling_run(empty_db, random_set(),
                                 options=SamplingOptions(denoiser_kind="gaussian", num_samples=1, steps=2))


def test_recorded_step_shares_equal_their_derivation_from_the_weights(recorded_fashion, recorded_random):
    """step_shares (numpy, in the recorder) == the SQL derivation from patch_weights (revision 0005's backfill)."""
    import importlib

    derived_sql = importlib.import_module("migrations.versions.0005_step_shares").DERIVED_SHARES
    for rec in (recorded_fashion, recorded_random):
        with database.connect(rec.db, read_only=True) as conn:
            stored = conn.execute("SELECT run_id, sample_index, step, image_index, share, flip_share, patches "
                                  "FROM step_shares ORDER BY ALL").fetchall()
            derived = conn.execute(f"SELECT * FROM ({derived_sql}) ORDER BY ALL").fetchall()
        assert len(stored) == len(derived) > 0
        for a, b in zip(stored, derived):
            assert a[:4] == b[:4] and a[6] == b[6]
            assert abs(a[4] - b[4]) < 1e-9 and abs(a[5] - b[5]) < 1e-9


def test_a_blob_of_the_wrong_size_is_named_a_damaged_store():
    from auditor.errors import StoreError

    good = torch.arange(12, dtype=torch.float32).reshape(1, 3, 4)
    assert torch.equal(from_blob(good.numpy().astype("<f4").tobytes(), (1, 3, 4)), good)
    for blob in (b"\0" * 7, b"\0" * 44, None):
        with pytest.raises(StoreError, match=r"not the 48 of float32 \[1, 3, 4\]: the store is damaged"):
            from_blob(blob, (1, 3, 4))
