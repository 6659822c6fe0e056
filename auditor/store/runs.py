"""Run rows: THE reader of a run joined with its dataset, shared by every layer.

Workflows add the run lifecycle here (create, mark failed, complete); readers call
`read_run` instead of writing their own `runs JOIN datasets` query.
"""

from __future__ import annotations

from auditor.errors import NotFoundError
from auditor.store.database import json_value

RUN_COLUMNS = ("id", "status", "dataset_id", "denoiser", "sampler", "seed", "num_samples", "top_k", "mass_threshold",
               "versions", "command", "writer", "created_at", "finished_at", "timings", "error", "kind", "details",
               "network_id")
JSON_COLUMNS = ("denoiser", "sampler", "versions", "command", "writer", "timings", "details")
DATASET_COLUMNS = ("id", "fingerprint", "name", "source", "channels", "height", "width", "count", "created_at")

_SELECT = (f"SELECT {', '.join('r.' + c for c in RUN_COLUMNS)}, {', '.join('d.' + c for c in DATASET_COLUMNS)} "
           "FROM runs r JOIN datasets d ON d.id = r.dataset_id WHERE r.id = ?")


def read_run(conn, db_path, run_id: int) -> tuple[dict, dict]:
    """(run, dataset) for `run_id` on an open connection: every column of both rows, JSON
    columns decoded, `kind` defaulted to 'pspc'. NotFoundError names the store and the id."""
    try:
        run_id = int(run_id)
    except (TypeError, ValueError):
        raise NotFoundError(f"{db_path}: run ids are integers, got {run_id!r}") from None
    row = conn.execute(_SELECT, [run_id]).fetchone()
    if row is None:
        raise NotFoundError(f"{db_path}: no run {run_id}")
    run = dict(zip(RUN_COLUMNS, row[:len(RUN_COLUMNS)]))
    for key in JSON_COLUMNS:
        run[key] = json_value(run[key])
    run["kind"] = run["kind"] or "pspc"
    return run, dict(zip(DATASET_COLUMNS, row[len(RUN_COLUMNS):]))


def check_sample_index(db_path, run: dict, sample_index: int) -> int:
    """sample_index as an int if the run has that sample, else NotFoundError."""
    try:
        index = int(sample_index)
    except (TypeError, ValueError):
        raise NotFoundError(f"{db_path}: sample indices are integers, got {sample_index!r}") from None
    if not 0 <= index < run["num_samples"]:
        raise NotFoundError(f"{db_path}: run {run['id']} has no sample {index} (samples 0..{run['num_samples'] - 1})")
    return index
