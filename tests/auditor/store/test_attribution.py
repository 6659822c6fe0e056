"""Attribution: the README queries and the library return what the engine computed."""

import re

import pytest
import torch

from auditor.store import attribution, database
from auditor.errors import NotFoundError
from auditor.store.example_queries import EXAMPLE_QUERIES, example_query

from tests.support.paths import REPO
from tests.support.store import FASHION_OPTIONS, engine_shares


# The README's example queries (run 1 / sample 0 of the recorded_fashion fixture).
TOP_SOURCES = example_query("top-sources").sql
IMAGE_USAGE = example_query("image-usage").sql
PIXEL_SOURCES = example_query("pixel-sources").sql
RUNS_BY_DATASET = example_query("runs-by-dataset").sql
TRAJECTORY = example_query("trajectory-sources").sql
README_QUERIES = [TOP_SOURCES, IMAGE_USAGE, PIXEL_SOURCES, RUNS_BY_DATASET, TRAJECTORY]
LAST = FASHION_OPTIONS["steps"] - 1


def sql(db, query):
    with database.connect(db, read_only=True) as conn:
        return conn.execute(query).fetchall()


def _engine(rec, step, sample_index=0):
    t, _, _, weights = rec.steps[step]
    return engine_shares(weights, sample_index, len(rec.training_set), weights[0][1].patch_set)


def _top(shares: dict, n=10):
    return sorted(shares.items(), key=lambda kv: (-kv[1], kv[0]))[:n]


def test_readme_shows_every_example_query():
    readme = (REPO / "README.md").read_text()
    blocks = [b.strip() for b in re.findall(r"```sql\n(.*?)```", readme, re.S)]
    assert len(EXAMPLE_QUERIES) == len(README_QUERIES)
    for query in EXAMPLE_QUERIES:
        assert query.sql.strip() in blocks, f"README.md lacks example query {query.name}"


def test_top_sources_query(recorded_fashion):
    rec = recorded_fashion
    rows = sql(rec.db, TOP_SOURCES)
    expected = _top(_engine(rec, LAST))
    assert [r[0] for r in rows] == [i for i, _ in expected]
    assert all(abs(r[5] - share) < 1e-6 for r, (_, share) in zip(rows, expected))
    assert rows[0][1] == rec.training_set.ids[expected[0][0]]
    # the library agrees with the SQL and adds the largest patches
    lib = attribution.sample_sources(rec.db, 1, 0, top=10)
    assert [(r["image_index"], pytest.approx(r["share"], abs=1e-12)) for r in lib] == [(r[0], r[5]) for r in rows]
    assert lib[0]["label_name"] == rows[0][2] and lib[0]["patches"]
    step, position, top, left, h, w, weight = lib[0]["patches"][0]
    assert step == LAST and (h, w) == (3, 3) and 0 < weight <= 1


def test_image_usage_query(recorded_fashion):
    rec = recorded_fashion
    image = rec.training_set.index_of("train-00029")
    expected = sorted(((1, b, _engine(rec, LAST, b).get(image, 0.0)) for b in range(FASHION_OPTIONS["num_samples"])),
                      key=lambda r: (-r[2], r[1]))
    expected = [r for r in expected if r[2] > 0]
    rows = sql(rec.db, IMAGE_USAGE.replace("'train-58676'", "'train-00029'"))  # an image of the fixture's slice
    assert expected and [r[:2] for r in rows] == [r[:2] for r in expected]
    assert all(abs(a[2] - b[2]) < 1e-6 for a, b in zip(rows, expected))
    lib = attribution.image_usage(rec.db, 1, "train-00029")
    assert [(r["run_id"], r["sample_index"]) for r in lib] == [r[:2] for r in rows]
    with pytest.raises(NotFoundError, match="no training image"):
        attribution.image_usage(rec.db, 1, "no-such-image")
    with pytest.raises(NotFoundError, match="no dataset"):
        attribution.image_usage(rec.db, 7, "train-00029")


def test_pixel_sources_query(recorded_fashion):
    rec = recorded_fashion
    _, _, _, weights = rec.steps[12]
    (index, w), = weights
    masks = w.patch_set.masks()
    covering = masks[:, 14, 14].nonzero().flatten()
    n = len(rec.training_set)
    totals = torch.zeros(n, dtype=torch.float64)
    entry, weight = w.entry[0, covering], w.weight[0, covering].to(torch.float64)
    valid = entry >= 0
    totals.index_add_(0, entry[valid] % n, weight[valid])
    totals /= len(covering)  # averaged over the covering patches, as PSPC composes the pixel
    expected = _top({i: float(totals[i]) for i in totals.nonzero().flatten().tolist()})
    rows = sql(rec.db, PIXEL_SOURCES)
    assert [r[0] for r in rows] == [i for i, _ in expected]
    assert all(abs(r[2] - v) < 1e-6 for r, (_, v) in zip(rows, expected))
    lib = attribution.pixel_sources(rec.db, 1, 0, 12, 14, 14)
    assert [(r["image_index"], pytest.approx(r["weight"])) for r in lib] == [(r[0], r[2]) for r in rows]
    with pytest.raises(NotFoundError, match="outside"):
        attribution.pixel_sources(rec.db, 1, 0, 12, 28, 0)


def test_runs_by_dataset_query(recorded_fashion):
    rows = sql(recorded_fashion.db, RUNS_BY_DATASET)
    assert len(rows) == 1
    dataset, name, fingerprint, run, status, kind, num_samples, steps, created, finished = rows[0]
    assert (dataset, run, status, kind, num_samples, int(steps)) == (1, 1, "complete", "pspc-square", 2, 18)
    assert fingerprint == recorded_fashion.training_set.fingerprint and finished >= created


def test_trajectory_query(recorded_fashion):
    rec = recorded_fashion
    times = [(s, rec.steps[s][0], rec.steps[s + 1][0] if s < LAST else 0.0) for s in range(LAST + 1)]
    coefficients = attribution.step_coefficients(times)
    assert abs(sum(coefficients.values()) - 1) < 1e-12
    shares: dict[int, float] = {}
    for step, c in coefficients.items():
        for image, share in _engine(rec, step).items():
            shares[image] = shares.get(image, 0.0) + c * share
    expected = _top(shares)
    rows = sql(rec.db, TRAJECTORY)
    assert [r[0] for r in rows] == [i for i, _ in expected]
    assert all(abs(r[2] - v) < 1e-6 for r, (_, v) in zip(rows, expected))
    lib = attribution.trajectory_sources(rec.db, 1, 0)
    assert [r["image_index"] for r in lib] == [r[0] for r in rows]


def test_step_sources_and_dense_maps(recorded_fashion):
    rec = recorded_fashion
    lib = attribution.sample_sources(rec.db, 1, 1, step=5, top=3)
    expected = _top(_engine(rec, 5, sample_index=1), 3)
    assert [(r["image_index"], pytest.approx(r["share"], abs=1e-6)) for r in lib] == expected
    dense = attribution.pixel_attribution(rec.db, 1, 1, 5)
    maps = dense["weights"]
    per_image = torch.zeros(len(rec.training_set), dtype=torch.float64).index_add_(
        0, dense["image_index"], maps.mean((1, 2)))
    assert [(i, pytest.approx(float(per_image[i]), abs=1e-6)) for i, _ in expected] == expected
    # per pixel the maps add up to the average captured mass of the covering patches (<= 1)
    _, _, bound = attribution.recompose_step(rec.db, 1, 1, 5, rec.training_set)
    assert torch.allclose(maps.sum(0), 1 - bound, atol=1e-6) and maps.sum(0).max() <= 1 + 1e-6


def test_unknown_ids(recorded_fashion):
    db = recorded_fashion.db
    with pytest.raises(NotFoundError, match="no run 9"):
        attribution.sample_sources(db, 9, 0)
    with pytest.raises(NotFoundError, match="no sample 5"):
        attribution.sample_sources(db, 1, 5)
    with pytest.raises(NotFoundError, match="no recorded step 40"):
        attribution.pixel_attribution(db, 1, 0, 40)


def test_attribution_formulas_agree_with_the_engine_in_every_form():
    """pspc.posterior.attribution: patch shares and coverage, dense and from membership lists,
    equal the engine's patch-set arithmetic (coverage(), patch_sums of 1 / coverage); shares
    of full weights sum to 1; pixel weights spread per-patch values over their pixels / coverage."""
    import numpy as np

    from pspc.posterior import attribution as formulas
    from pspc.posterior.patch_sets import WindowPatches

    patch_set = WindowPatches(8, 8, 3, 3)
    masks = patch_set.masks()
    coverage = patch_set.coverage()
    assert torch.equal(formulas.coverage(masks), coverage)
    shares = formulas.patch_shares(masks)
    assert torch.allclose(shares, patch_set.patch_sums(1.0 / coverage) / 64, rtol=0, atol=1e-15)
    assert float(shares.sum()) == pytest.approx(1.0, abs=1e-12)
    position, y, x = masks.nonzero().numpy().T
    pixel = y * 8 + x
    member_cov = formulas.member_coverage(pixel, 64)
    assert np.array_equal(member_cov, coverage.flatten().numpy())
    assert np.allclose(formulas.member_patch_shares(position, pixel, patch_set.num_patches, member_cov),
                       shares.numpy(), rtol=0, atol=1e-15)
    # one weight per (entry, patch) row: share = sum_k w_k s_k equals the mean over pixels of its pixel weights
    weights = torch.rand(3, patch_set.num_patches, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    maps = formulas.pixel_weights(weights, masks.flatten(1).to(torch.float64))
    assert torch.allclose(maps.mean(1), weights @ shares)
    row = np.repeat(np.arange(3), len(position))  # every (entry, patch) weight over the patch's pixels
    member = np.tile(np.arange(len(position)), 3)
    sparse = formulas.member_pixel_weights(row, pixel[member], weights.numpy()[row, position[member]], 3, member_cov)
    assert np.allclose(sparse, maps.numpy(), rtol=0, atol=1e-15)
    key, contribution = np.repeat(np.arange(3), patch_set.num_patches), formulas.contributions(
        weights.numpy().ravel(), shares.numpy(), np.tile(np.arange(patch_set.num_patches), 3))
    keys, totals, flip_totals, patches = formulas.share_totals(key, contribution, np.zeros(len(key), bool),
                                                               np.tile(np.arange(patch_set.num_patches), 3))
    assert keys.tolist() == [0, 1, 2] and np.allclose(totals, (weights @ shares).numpy())
    assert not flip_totals.any() and patches.tolist() == [patch_set.num_patches] * 3
    # trajectory weights: the Euler update's share of D_i in z_{i+1}, normalised; the last step (t_next = 0) has a = 1
    coefficients = formulas.trajectory_coefficients([(0, 4.0, 2.0), (1, 2.0, 1.0), (2, 1.0, 0.0)])
    assert coefficients == pytest.approx({0: 0.25, 1: 0.25, 2: 0.5})
    assert formulas.trajectory_coefficients([]) == {}
