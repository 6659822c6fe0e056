"""What the report pages show of counterfactuals (auditor.store.counterfactuals, revision 0009).

- A counterfactual run's sample page: where it comes from (runs.details: parent, mode, how the
  images were chosen, how many; recorded from the start, so a running or failed counterfactual
  has it too) and, once complete, its stored outcome with the first removed images (metadata
  and pixels), the parent's image it was compared with and the parent's stored copy verdict.
- A parent sample's page: its counterfactual runs, complete or not, with the outcome of the
  complete ones.

Both are read in one short read-only transaction, from the tables auditor.store.counterfactuals
writes (that module reads the parent's patch sets through read_models.patches, so this package
cannot import it: the sibling modules stay acyclic). `selector_text` says in words how a removed set was chosen (what `auditor counterfactual
--list` prints).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from auditor.store import database
from auditor.store.read_models.common import ImageMeta, float_image, image_metadata
from auditor.store.read_models.sample import stored_verdict

__all__ = ["REMOVED_SHOWN", "CounterfactualChild", "CounterfactualOrigin", "CounterfactualOutcome",
           "SampleCounterfactuals", "counterfactual_origin", "load_sample_counterfactuals", "selector_text"]

REMOVED_SHOWN = 20  # removed images a counterfactual's page lists (with thumbnails); the rest are counted


@dataclass(frozen=True, kw_only=True)
class CounterfactualOrigin:
    """What a counterfactual run records when it starts (runs.details): the parent sample, the
    mode ('resample' or 'replay'), the selector ({by, value[, seed]}) and the removed count."""

    parent_run_id: int
    parent_sample: int
    mode: str
    selector: dict
    removed_count: int | None

    @property
    def how(self) -> str:
        return selector_text(self.selector)


def counterfactual_origin(run: dict) -> CounterfactualOrigin | None:
    """The origin of a counterfactual run (read_run's dict); None for any other kind, or a
    counterfactual whose details do not name its parent."""
    details = run.get("details") or {}
    if (run.get("kind") or "pspc") != "counterfactual" or not isinstance(details, dict) or \
            details.get("parent_run_id") is None or details.get("parent_sample") is None:
        return None
    count = details.get("removed_count")
    return CounterfactualOrigin(parent_run_id=int(details["parent_run_id"]),
                                parent_sample=int(details["parent_sample"]), mode=str(details.get("mode") or "?"),
                                selector=dict(details.get("selector") or {}),
                                removed_count=None if count is None else int(count))


def selector_text(selector: dict) -> str:
    """How the removed images were chosen, in words: 'by id', 'owner 'alice'', 'source URI
    starting 'https://...'', 'the top 10 by headline score', '10 at random, seed 1'."""
    by, value = selector.get("by"), selector.get("value")
    if by == "without":
        return "by id"
    if by == "random":
        return f"{value} at random, seed {selector.get('seed')}"
    known = {"owner": f"owner {value!r}", "source_uri_prefix": f"source URI starting {value!r}",
             "top": f"the top {value} by {selector.get('score') or 'headline score'}"}
    return known.get(by, f"{by} {value!r}")


@dataclass(frozen=True, kw_only=True)
class CounterfactualOutcome:
    """A complete counterfactual: `row` is its counterfactuals row (run_id, removed_count, mse,
    max_abs, similarity, descriptor, diverged_step, step_changes, change_map float32 [C, H, W]
    = counterfactual - parent, seconds, parent_seconds); removed: the
    first REMOVED_SHOWN removed images, by index, with pixels; parent_image: the image it was
    compared with (float32 [C, H, W]: the parent's final image for 'resample', its last step's
    PSPC composite for 'replay'); parent_verdict: the parent sample's stored copy verdict row."""

    row: dict = field(repr=False)
    removed: list[ImageMeta] = field(repr=False)
    parent_image: np.ndarray | None = field(repr=False)
    parent_verdict: dict | None = None


@dataclass(frozen=True, kw_only=True)
class CounterfactualChild:
    """A counterfactual run of a parent sample: its id, status and origin, and its stored
    outcome row (as CounterfactualOutcome.row) once complete."""

    run_id: int
    status: str
    origin: CounterfactualOrigin
    row: dict | None = field(default=None, repr=False)


@dataclass(frozen=True, kw_only=True)
class SampleCounterfactuals:
    """The counterfactuals around one sample: `origin` and `outcome` when the sample is a
    counterfactual's (outcome None until it completes), `children` its own counterfactual runs."""

    origin: CounterfactualOrigin | None = None
    outcome: CounterfactualOutcome | None = None
    children: list[CounterfactualChild] = field(default_factory=list)


_OUTCOME = ("run_id", "removed_count", "mse", "max_abs", "similarity", "descriptor", "diverged_step", "step_changes",
            "change_map", "seconds", "parent_seconds")
_CHILDREN = """
    SELECT id, status, details FROM runs
    WHERE kind = 'counterfactual' AND TRY_CAST(json_extract_string(details, '$.parent_run_id') AS BIGINT) = ?
      AND TRY_CAST(json_extract_string(details, '$.parent_sample') AS BIGINT) = ?
    ORDER BY id"""


def _outcomes(conn, where: str, params: list, shape) -> dict[int, dict]:
    """run_id -> its counterfactuals row (the _OUTCOME columns; step_changes parsed, change_map
    float32 [C, H, W]), for the rows `where` selects."""
    rows = conn.execute(f"SELECT {', '.join(_OUTCOME)} FROM counterfactuals WHERE {where} ORDER BY run_id",
                        params).fetchall()
    out = {}
    for values in rows:
        row = dict(zip(_OUTCOME, values))
        row["step_changes"] = database.json_value(row["step_changes"]) or []
        row["change_map"] = float_image(row["change_map"], shape)
        out[int(row["run_id"])] = row
    return out


def _parent_image(conn, origin: CounterfactualOrigin, shape) -> np.ndarray | None:
    """The parent's image the outcome compares with (see CounterfactualOutcome.parent_image)."""
    key = [origin.parent_run_id, origin.parent_sample]
    if origin.mode == "replay":
        found = conn.execute("SELECT denoised FROM steps WHERE run_id = ? AND sample_index = ? ORDER BY step DESC "
                             "LIMIT 1", key).fetchone()
    else:
        found = conn.execute("SELECT final_image FROM samples WHERE run_id = ? AND sample_index = ?", key).fetchone()
    return None if found is None else float_image(found[0], shape)


def _outcome(conn, run_id: int, dataset: dict, origin: CounterfactualOrigin, removed: int,
             shape) -> CounterfactualOutcome | None:
    row = _outcomes(conn, "run_id = ?", [run_id], shape).get(run_id)
    if row is None:  # complete exactly when its outcome is stored: not (yet) there
        return None
    indices = [int(i) for (i,) in conn.execute("SELECT image_index FROM counterfactual_removed WHERE run_id = ? "
                                               "ORDER BY image_index LIMIT ?", [run_id, int(removed)]).fetchall()]
    metas = image_metadata(conn, dataset["id"], indices, shape)
    return CounterfactualOutcome(row=row, removed=[metas.get(i) or ImageMeta(image_index=i, image_id=str(i))
                                                   for i in indices],
                                 parent_image=_parent_image(conn, origin, shape),
                                 parent_verdict=stored_verdict(conn, origin.parent_run_id, origin.parent_sample))


def _children(conn, run_id: int, sample_index: int, shape) -> list[CounterfactualChild]:
    found = []
    for child_id, status, details in conn.execute(_CHILDREN, [run_id, sample_index]).fetchall():
        origin = counterfactual_origin({"kind": "counterfactual", "details": database.json_value(details)})
        if origin is not None:
            found.append(CounterfactualChild(run_id=int(child_id), status=status, origin=origin))
    if any(c.status == "complete" for c in found):
        outcomes = _outcomes(conn, "parent_run_id = ? AND parent_sample = ?", [run_id, sample_index], shape)
        found = [CounterfactualChild(run_id=c.run_id, status=c.status, origin=c.origin, row=outcomes.get(c.run_id))
                 for c in found]
    return found


def load_sample_counterfactuals(db_path, run: dict, dataset: dict, sample_index: int, *,
                                removed: int = REMOVED_SHOWN,
                                timeout: float = database.DEFAULT_TIMEOUT) -> SampleCounterfactuals:
    """The counterfactuals around sample `sample_index` of `run` (read_run's run and dataset
    dicts), in one read-only transaction: for a counterfactual run its origin and, when
    complete, its outcome with the first `removed` removed images; for any other run the
    counterfactual runs of that sample (tests/reports/test_counterfactual_panel.py checks the
    rows against auditor.store.counterfactuals, which this layer cannot import: it reads ours)."""
    origin = counterfactual_origin(run)
    shape = (int(dataset["channels"]), int(dataset["height"]), int(dataset["width"]))
    with database.connect(db_path, read_only=True, timeout=timeout) as conn:
        if (run.get("kind") or "pspc") == "counterfactual":
            outcome = None
            if origin is not None and run["status"] == "complete":
                outcome = _outcome(conn, int(run["id"]), dataset, origin, removed, shape)
            return SampleCounterfactuals(origin=origin, outcome=outcome)
        return SampleCounterfactuals(children=_children(conn, int(run["id"]), int(sample_index), shape))
