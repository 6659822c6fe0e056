"""Attribution scores from the store (auditor.store.scores): the engine's scores of the live run,
computed again from the stored rows, and the trajectory share equal to the store's own view."""

import numpy as np
import pytest

from pspc.posterior.scores import SCORES, EvidenceRecorder, compute_scores
from pspc.samplers import SamplerConfig

from auditor.errors import NotFoundError
from auditor.store import database
from auditor.store.attribution import trajectory_sources
from auditor.store.scores import HEADLINE_SCORE, sample_evidence, sample_scores, score_sources
from auditor.workflows.options import Runtime, SamplingOptions
from auditor.workflows.sampling import record_sampling_run
from tests.support.data import random_set


@pytest.fixture
def live(tmp_path):
    """A recorded run (2 samples, 4 steps, every weight kept) and the engine's evidence of it."""
    data = random_set()
    db = tmp_path / "store.duckdb"
    database.upgrade(db)
    recorder = EvidenceRecorder(SamplerConfig(num_steps=4).time_steps(), data.num_entries)
    run_id = record_sampling_run(db, data, options=SamplingOptions(num_samples=2, steps=4, top_k=64, mass=1.0),
                                 runtime=Runtime(), callback=recorder)
    return db, run_id, recorder


def test_stored_scores_equal_the_live_runs(live):
    db, run_id, recorder = live
    for sample in (0, 1):
        stored = sample_scores(db, run_id, sample)
        expected = compute_scores(recorder.evidence(sample))
        assert set(stored) == set(SCORES)
        for name in SCORES:  # the store keeps float32 weights and states
            assert np.allclose(stored[name], expected[name], rtol=1e-4, atol=1e-6), name


def test_the_stored_trajectory_share_is_the_views(live):
    db, run_id, _ = live
    view = {r["image_index"]: r["share"] for r in trajectory_sources(db, run_id, 1, top=100, patches=0)}
    scores = sample_scores(db, run_id, 1, ["trajectory-share"])["trajectory-share"]
    assert {i: pytest.approx(v, rel=1e-5) for i, v in view.items()} == {
        i: float(scores[i]) for i in np.flatnonzero(scores > 0)}


def test_score_sources_rank_by_the_score_with_metadata(live):
    db, run_id, _ = live
    rows = score_sources(db, run_id, 0, top=3)
    values = sample_scores(db, run_id, 0, [HEADLINE_SCORE])[HEADLINE_SCORE]
    assert [r["image_index"] for r in rows] == list(np.argsort(-values, kind="stable")[:3])
    assert rows[0]["image_id"] == f"img-{rows[0]['image_index']}" and rows[0]["score"] == pytest.approx(values.max())
    evidence = sample_evidence(db, run_id, 0)
    assert [e.step for e in evidence] == [0, 1, 2, 3] and evidence[-1].t_next == 0


def test_unknown_samples_and_scores_are_refused(live):
    db, run_id, _ = live
    with pytest.raises(NotFoundError, match="sample 7"):
        sample_scores(db, run_id, 7)
    with pytest.raises(ValueError, match="unknown score 'best'"):
        sample_scores(db, run_id, 0, ["best"])


def test_the_nda_view_is_the_engines_nda_score(live):
    db, run_id, _ = live
    from tests.support.store import fetch

    rows = dict(fetch(db, "SELECT image_index, score FROM nda_scores WHERE run_id = ? AND sample_index = 1", [run_id]))
    values = sample_scores(db, run_id, 1, ["nda"])["nda"]
    assert {i: pytest.approx(v, rel=1e-5) for i, v in rows.items()} == {
        i: float(values[i]) for i in np.flatnonzero(values > 0)}
