"""Counterfactual runs (auditor.workflows.counterfactual, auditor.store.counterfactuals, revision 0009):
exactly PSPC on the kept images, recorded as a run, with the change against the parent."""

import json

import numpy as np
import pytest
import torch

from pspc.data.training_set import TrainingSet
from pspc.denoisers import build_denoiser
from pspc.samplers import SamplerConfig, initial_noise, sample

from auditor.errors import NotFoundError, StoreError, UserError
from auditor.store import database
from auditor.store.counterfactuals import counterfactuals_of, load_counterfactual, removed_sha256
from auditor.store.recorder import from_blob
from auditor.store.scores import HEADLINE_SCORE, sample_scores
from auditor.workflows.audit import record_audit
from auditor.workflows.counterfactual import GREY_LEVEL, record_counterfactual
from auditor.workflows.options import AuditOptions, CounterfactualOptions
from tests.support.store import fetch, record

pytestmark = pytest.mark.usefixtures("one_torch_thread")

SHAPE = (1, 8, 8)
SAMPLING = dict(num_samples=2, steps=5, top_k=64, mass=1.0, seed=4)


def owned_set() -> TrainingSet:
    """12 random 8x8 images with x-flips, owners (alice: 0, 3, 6, 9) and source URIs."""
    generator = torch.Generator().manual_seed(3)
    images = torch.randint(0, 256, (12, *SHAPE), generator=generator, dtype=torch.uint8)
    metadata = [{"owner": "alice" if i % 3 == 0 else "bob", "source_uri": f"https://ex.org/{'a' if i < 4 else 'b'}/{i}"}
                for i in range(12)]
    return TrainingSet(images, [f"img-{i}" for i in range(12)], metadata, name="owned", xflip=True)


@pytest.fixture
def parent(tmp_path):
    data = owned_set()
    return record(tmp_path / "store.duckdb", data, **SAMPLING)


def no_verdict(**selector) -> CounterfactualOptions:
    return CounterfactualOptions(verdict=False, **selector)


def stored_final(db, run_id, sample_index=0) -> torch.Tensor:
    (blob,), = fetch(db, "SELECT final_image FROM samples WHERE run_id = ? AND sample_index = ?", [run_id, sample_index])
    return from_blob(blob, SHAPE)


def test_resample_equals_pspc_sampled_on_the_kept_images_alone(parent):
    db, data = parent.db, parent.training_set
    result = record_counterfactual(db, parent.run_id, 1, options=no_verdict(without=("img-2", "img-7")))
    kept = [i for i in range(12) if i not in (2, 7)]
    reference = build_denoiser("pspc-square", data.subset(kept))  # the same s(t) schedule over 10 images
    z = initial_noise(1, SHAPE, SAMPLING["seed"] + 1, SamplerConfig().t_max)
    expected = sample(reference, z, SamplerConfig(num_steps=SAMPLING["steps"]))[0]
    assert (stored_final(db, result.run_id) - expected).abs().max() < 1e-5
    # every step recorded; no weight on a removed image or its mirror; the weights sum to 1
    weights = fetch(db, "SELECT step, position, image_index, weight FROM patch_weights WHERE run_id = ?",
                    [result.run_id])
    assert {r[0] for r in weights} == set(range(SAMPLING["steps"]))
    assert not {r[2] for r in weights} & {2, 7}
    totals = {}
    for step, position, _, weight in weights:
        totals[step, position] = totals.get((step, position), 0.0) + weight
    assert min(totals.values()) == pytest.approx(1.0, abs=1e-5) and max(totals.values()) == pytest.approx(1.0, abs=1e-5)
    run, = fetch(db, "SELECT kind, status, num_samples, seed, denoiser, details FROM runs WHERE id = ?",
                    [result.run_id])
    assert run[:4] == ("counterfactual", "complete", 1, SAMPLING["seed"] + 1)
    assert json.loads(run[4])["removed"] == {"count": 2, "sha256": removed_sha256([2, 7])}
    assert json.loads(run[5])["parent_run_id"] == parent.run_id


def test_the_outcome_is_the_change_of_the_final_image(parent):
    db = parent.db
    result = record_counterfactual(db, parent.run_id, 0, options=no_verdict(top=3))
    o = result.outcome
    change = stored_final(db, result.run_id).double() - stored_final(db, parent.run_id).double()
    assert torch.allclose(o["change_map"].double(), change, atol=1e-6)
    assert o["mse"] == pytest.approx(float(change.square().mean()), rel=1e-5)
    assert o["max_abs"] == pytest.approx(float(change.abs().max()), rel=1e-5)
    assert o["mode"] == "resample" and o["removed_count"] == 3 and 0 < o["similarity"] <= 1
    # per-step changes of D(z_t); divergence = the first step past one grey level
    parent_d = [from_blob(d, SHAPE) for (d,) in fetch(
        db, "SELECT denoised FROM steps WHERE run_id = ? AND sample_index = 0 ORDER BY step", [parent.run_id])]
    ours = [from_blob(d, SHAPE) for (d,) in fetch(
        db, "SELECT denoised FROM steps WHERE run_id = ? ORDER BY step", [result.run_id])]
    maxima = [float((a.double() - b.double()).abs().max()) for a, b in zip(ours, parent_d)]
    assert [c["max_abs"] for c in o["step_changes"]] == pytest.approx(maxima, abs=1e-6)
    assert o["diverged_step"] == next((i for i, m in enumerate(maxima) if m > GREY_LEVEL), None)
    # --top removed the sample's 3 largest sources by the headline score
    values = sample_scores(db, parent.run_id, 0, [HEADLINE_SCORE])[HEADLINE_SCORE]
    top = np.argsort(-values, kind="stable")[:3].tolist()
    assert o["selector"] == {"by": "top", "value": 3, "score": HEADLINE_SCORE}
    assert sorted(r["image_index"] for r in o["removed"]) == sorted(top)
    assert [r["run_id"] for r in counterfactuals_of(db, parent.run_id, 0)] == [result.run_id]
    assert counterfactuals_of(db, parent.run_id, 1) == []


def test_owner_uri_prefix_and_random_selections(parent):
    db = parent.db
    by_owner = record_counterfactual(db, parent.run_id, 0, options=no_verdict(owner="alice"))
    assert [r["image_index"] for r in by_owner.outcome["removed"]] == [0, 3, 6, 9]
    by_uri = record_counterfactual(db, parent.run_id, 0, options=no_verdict(source_uri_prefix="https://ex.org/a/"))
    assert [r["image_index"] for r in by_uri.outcome["removed"]] == [0, 1, 2, 3]
    first = record_counterfactual(db, parent.run_id, 0, options=no_verdict(random=5, seed=11))
    again = record_counterfactual(db, parent.run_id, 0, options=no_verdict(random=5, seed=11))
    chosen = sorted(np.random.default_rng(11).choice(12, 5, replace=False).tolist())
    assert [r["image_index"] for r in first.outcome["removed"]] == chosen
    assert first.outcome["removed_sha256"] == again.outcome["removed_sha256"]
    assert first.outcome["selector"] == {"by": "random", "value": 5, "seed": 11}


def test_a_replay_of_an_audit_is_pspc_on_its_states_without_the_images(tmp_path):
    data = owned_set()
    db = tmp_path / "store.duckdb"
    database.upgrade(db)
    audit = record_audit(db, data, data.as_float()[5], options=AuditOptions(
        noise_levels=(2.0, 0.5), draws=1, seed=7, top_k=64, mass=1.0, patch_size=3, copy_k=0))
    result = record_counterfactual(db, audit.run_id, 0, options=no_verdict(without=("img-5",)))
    assert result.outcome["mode"] == "replay"
    reference = build_denoiser("pspc-square", data.subset([i for i in range(12) if i != 5]), patch_size=3)
    states = fetch(db, "SELECT t, z FROM steps WHERE run_id = ? ORDER BY step", [audit.run_id])
    ours = fetch(db, "SELECT t, z, denoised FROM steps WHERE run_id = ? ORDER BY step", [result.run_id])
    assert [t for t, _ in states] == [t for t, _, _ in ours] == [2.0, 0.5]
    for (t, z), (_, z_cf, d_cf) in zip(states, ours):
        assert z == z_cf  # the parent's state, kept
        expected = reference(from_blob(z, SHAPE)[None], t)[0]
        assert (from_blob(d_cf, SHAPE) - expected).abs().max() < 1e-5
    # the replay's image is PSPC's composite at the last level, compared with the parent's
    (d_parent,), = fetch(db, "SELECT denoised FROM steps WHERE run_id = ? AND step = 1", [audit.run_id])
    assert torch.equal(stored_final(db, result.run_id), from_blob(ours[-1][2], SHAPE))
    change = from_blob(ours[-1][2], SHAPE).double() - from_blob(d_parent, SHAPE).double()
    assert result.outcome["max_abs"] == pytest.approx(float(change.abs().max()), rel=1e-5)


def test_the_copy_verdict_of_the_counterfactual_is_stored_beside_the_parents(parent):
    result = record_counterfactual(parent.db, parent.run_id, 0, options=CounterfactualOptions(top=2))
    assert result.verdict_before is not None and result.verdict_after is not None
    (verdict,), = fetch(parent.db, "SELECT verdict FROM copy_verdicts WHERE run_id = ?", [result.run_id])
    assert verdict == result.verdict_after["verdict"]  # uncalibrated store: inconclusive, never borrowed thresholds
    assert verdict == "inconclusive" and result.verdict_changed is False


def runs_and_rows(db):
    return fetch(db, "SELECT count(*) FROM runs")[0][0], fetch(db, "SELECT count(*) FROM counterfactuals")[0][0]


@pytest.mark.parametrize("options, error, message", [
    (dict(without=("img-1", "nope")), NotFoundError, "no training image 'nope'"),
    (dict(owner="carol"), NotFoundError, "owner 'carol' (its owners include 'alice', 'bob')"),
    (dict(source_uri_prefix="s3://"), NotFoundError, "starts with 's3://'"),
    (dict(random=12), UserError, "at least one must remain"),
    (dict(without=tuple(f"img-{i}" for i in range(12))), UserError, "removes all 12 training images"),
])
def test_bad_selections_record_nothing(parent, options, error, message):
    before = runs_and_rows(parent.db)
    with pytest.raises(error, match=message.replace("(", r"\(").replace(")", r"\)")):
        record_counterfactual(parent.db, parent.run_id, 0, options=no_verdict(**options))
    assert runs_and_rows(parent.db) == before


def test_options_take_exactly_one_selection():
    with pytest.raises(UserError, match="exactly one way"):
        CounterfactualOptions()
    with pytest.raises(UserError, match="got owner, top"):
        CounterfactualOptions(owner="a", top=3)
    with pytest.raises(UserError, match="top must be an integer >= 1"):
        CounterfactualOptions(top=0)


def test_unknown_or_incomplete_samples_and_missing_pixels_are_refused(parent):
    db = parent.db
    with pytest.raises(NotFoundError, match="no run 99"):
        record_counterfactual(db, 99, 0, options=no_verdict(top=1))
    with pytest.raises(NotFoundError, match="sample 5"):
        record_counterfactual(db, parent.run_id, 5, options=no_verdict(top=1))
    done = record_counterfactual(db, parent.run_id, 0, options=no_verdict(top=1))
    with pytest.raises(UserError, match="counterfactual .* run: re-run its parent"):
        record_counterfactual(db, done.run_id, 0, options=no_verdict(top=1))
    with database.connect(db) as conn:
        conn.execute("UPDATE runs SET status = 'failed' WHERE id = ?", [parent.run_id])
    before = runs_and_rows(db)
    with pytest.raises(UserError, match="is failed, not complete"):
        record_counterfactual(db, parent.run_id, 0, options=no_verdict(top=1))
    with database.connect(db) as conn:
        conn.execute("UPDATE runs SET status = 'complete' WHERE id = ?", [parent.run_id])
        conn.execute("UPDATE training_images SET pixels = NULL WHERE image_index = 4")
    with pytest.raises(StoreError, match="has no pixels"):
        record_counterfactual(db, parent.run_id, 0, options=no_verdict(top=1))
    assert runs_and_rows(db) == before
    # the same training set given from outside still works
    given = record_counterfactual(db, parent.run_id, 0, options=no_verdict(top=1), training_set=parent.training_set)
    assert load_counterfactual(db, given.run_id)["removed_count"] == 1


def test_migration_0009_creates_the_tables_and_downgrade_drops_them(tmp_path):
    path = tmp_path / "m.duckdb"
    database.upgrade(path, "0008")
    assert database.upgrade(path, "0009") == ("0008", "0009")
    names = {"counterfactuals", "counterfactual_removed"}
    assert names <= {r[0] for r in fetch(path, "SELECT table_name FROM duckdb_tables()")}
    assert database.upgrade(path, "0008") == ("0009", "0008")
    assert not names & {r[0] for r in fetch(path, "SELECT table_name FROM duckdb_tables()")}
