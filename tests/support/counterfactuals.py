"""A small store of counterfactual runs for the page tests, on the hostile set (HTML in its ids,
owners and labels; 8x8 RGB).

Run 1: two PSPC samples (3 steps of 3x3 patches), sample 0 with a stored copy verdict. Run 2: a
counterfactual of 1/0 without images 0 and 1 (ids with HTML), with its own verdict. Run 3: one
of 1/0 without owner 'Owner <script>x</script>' (images 0, 1, 2), no verdict. Run 4: one of 1/0
that failed after its first step. Sample 1/1 has none.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from auditor.store import calibrations
from auditor.store.recorder import from_blob
from auditor.workflows.counterfactual import record_counterfactual
from auditor.workflows.options import CounterfactualOptions, Runtime
from auditor.workflows.verdicts import judge
from pspc.data.training_set import TrainingSet
from tests.support.data import HOSTILE_ID, hostile_set
from tests.support.store import fetch, record

HOSTILE_OWNER = "Owner <script>x</script>"
FAILURE = "stopped <b>after</b> one step"


@dataclass
class CounterfactualStore:
    db: Path
    training_set: TrainingSet
    parent: int = 1
    removed_by_id: int = 2  # without images 0 and 1, with verdicts
    removed_by_owner: int = 3  # without images 0, 1, 2
    failed: int = 4


def _stop_after_one_step(steps: int) -> None:
    raise RuntimeError(FAILURE)


def store_parent_verdicts(store: CounterfactualStore, samples) -> dict[int, dict]:
    """Judge the parent's `samples` (their final images) and store those copy verdicts (replacing
    the parent's earlier ones, as calibrations.store_verdicts does)."""
    verdicts = {}
    for sample_index in samples:
        (blob,), = fetch(store.db, "SELECT final_image FROM samples WHERE run_id = ? AND sample_index = ?",
                         [store.parent, sample_index])
        image = from_blob(blob, store.training_set.image_shape)[None]
        verdicts[sample_index] = judge(store.db, store.training_set, 1, image)[0].to_dict()
    calibrations.store_verdicts(store.db, store.parent, verdicts)
    return verdicts


def counterfactual_store(db: Path) -> CounterfactualStore:
    """Record the store described in the module docstring at `db`."""
    data = hostile_set()
    parent = record(db, data, num_samples=2, steps=3, seed=5, patch_size=3, top_k=64, mass=1.0)
    store = CounterfactualStore(db, data, parent=parent.run_id)
    store_parent_verdicts(store, [0])
    by_id = record_counterfactual(db, store.parent, 0, options=CounterfactualOptions(without=(HOSTILE_ID, "img-1&<b>")))
    by_owner = record_counterfactual(db, store.parent, 0,
                                     options=CounterfactualOptions(owner=HOSTILE_OWNER, verdict=False))
    assert (by_id.run_id, by_owner.run_id) == (store.removed_by_id, store.removed_by_owner)
    try:
        record_counterfactual(db, store.parent, 0, options=CounterfactualOptions(top=2, verdict=False),
                              runtime=Runtime(progress=_stop_after_one_step))
    except RuntimeError as exc:
        assert str(exc) == FAILURE
    else:
        raise AssertionError("the counterfactual meant to fail completed")
    return store
