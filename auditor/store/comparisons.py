"""Network comparisons in the provenance store: comparisons and their runs, descriptors,
similarity scores, copy matches and the per-step agreement of a network-explained run.

The workflows (auditor.workflows.comparison, audit) compute; this module writes and reads
the rows: `create_comparison` / `set_comparison_status` (its lifecycle),
`store_similarities` and `store_copy_matches` (each replaces the rows of its runs and
descriptor), and the readers `agreement_table`, `comparison_summary`, `sample_counterpart`,
`nearest_copies` and `run_final_images`.
"""

from __future__ import annotations

import json
from typing import Sequence

import torch

from auditor.errors import NotFoundError, StoreError
from auditor.store import database, schema as models
from auditor.store.database import json_value
from auditor.store.recorder import from_blob, utcnow
from auditor.store.runs import check_sample_index, read_run

__all__ = ["COPY_MATCH_COLUMNS", "NETWORK_ROLE", "SIMILARITY_COLUMNS", "agreement_table", "comparison_summary",
           "create_comparison", "nearest_copies", "register_descriptor", "run_final_images", "run_infos",
           "sample_counterpart", "set_comparison_status", "store_copy_matches", "store_similarities"]

NETWORK_ROLE = "network"  # the comparison role of the network-explained run; the others are denoiser kinds
SIMILARITY_COLUMNS = ("run_a", "run_b", "sample_index", "descriptor_fingerprint", "comparison_id", "descriptor",
                      "preprocessing", "score", "thresholds", "flag", "flagged")
COPY_MATCH_COLUMNS = ("run_id", "sample_index", "descriptor_fingerprint", "rank", "image_index", "flip", "score",
                      "descriptor", "preprocessing", "thresholds", "flag", "flagged", "search")


# ---------------------------------------------------------------------------------------
# Comparisons
# ---------------------------------------------------------------------------------------
def create_comparison(db_path, *, dataset_id: int, network_id: int, seed: int, num_samples: int, sampler: dict,
                      config: dict, versions: dict, command: list[str] | None = None,
                      timeout: float = database.DEFAULT_TIMEOUT) -> int:
    """Insert a comparison as 'running'; returns its id."""
    with database.session(db_path, timeout=timeout) as s:
        comparison = models.Comparison(dataset_id=dataset_id, network_id=network_id, status="running", seed=seed,
                                       num_samples=num_samples, sampler=sampler, config=config, versions=versions,
                                       command=list(command) if command else None, created_at=utcnow())
        s.add(comparison)
        s.flush()
        return int(comparison.id)


def set_comparison_status(db_path, comparison_id: int, status: str, error: str | None = None, *,
                          timeout: float = database.DEFAULT_TIMEOUT) -> None:
    """Finish a running comparison: 'complete', or 'failed' with the error text."""
    with database.connect(db_path, timeout=timeout) as conn:
        conn.execute("UPDATE comparisons SET status = ?, finished_at = ?, error = ? "
                     "WHERE id = ? AND status = 'running'", [status, utcnow(), error, comparison_id])


# ---------------------------------------------------------------------------------------
# Runs' images
# ---------------------------------------------------------------------------------------
def _info(conn, db_path, run_id: int) -> dict:
    run, dataset = read_run(conn, db_path, run_id)
    return {"status": run["status"], "num_samples": run["num_samples"], "seed": run["seed"],
            "dataset_id": run["dataset_id"], "fingerprint": dataset["fingerprint"], "kind": run["kind"],
            "shape": (dataset["channels"], dataset["height"], dataset["width"])}


def run_infos(db_path, run_ids: Sequence[int], *, timeout: float = database.DEFAULT_TIMEOUT) -> dict[int, dict]:
    """run id -> status, num_samples, seed, dataset_id, (dataset) fingerprint, kind and image shape."""
    with database.connect(db_path, read_only=True, timeout=timeout) as conn:
        return {run_id: _info(conn, db_path, run_id) for run_id in run_ids}


def run_final_images(db_path, run_id: int, *, timeout: float = database.DEFAULT_TIMEOUT) -> torch.Tensor:
    """The final images [B, C, H, W] (float32, [-1, 1] plus overshoot) of a complete run."""
    with database.connect(db_path, read_only=True, timeout=timeout) as conn:
        info = _info(conn, db_path, run_id)
        rows = conn.execute("SELECT sample_index, final_image FROM samples WHERE run_id = ? ORDER BY sample_index",
                            [int(run_id)]).fetchall()
    if info["status"] != "complete" or any(blob is None for _, blob in rows):
        raise StoreError(f"{db_path}: run {run_id} is {info['status']}: its final images are not all stored")
    return torch.stack([from_blob(blob, info["shape"]) for _, blob in rows])


# ---------------------------------------------------------------------------------------
# Descriptors, similarity scores, copy matches
# ---------------------------------------------------------------------------------------
def register_descriptor(conn, record: dict) -> str:
    """Insert a descriptor's record (Descriptor.describe(); if new) inside an open transaction;
    returns its fingerprint."""
    fingerprint = record["fingerprint"]
    if not conn.execute("SELECT 1 FROM descriptors WHERE fingerprint = ?", [fingerprint]).fetchone():
        conn.execute("INSERT INTO descriptors (fingerprint, name, kind, dimension, preprocessing, record, created_at) "
                     "VALUES (?, ?, ?, ?, ?, ?, ?)",
                     [fingerprint, record["name"], record["kind"], int(record["dimension"]),
                      json.dumps(record["preprocessing"], sort_keys=True), json.dumps(record, default=str), utcnow()])
    return fingerprint


def store_similarities(db_path, record: dict, rows: list[tuple], *, timeout: float = database.DEFAULT_TIMEOUT) -> None:
    """Write similarity_scores rows (tuples in SIMILARITY_COLUMNS order) of descriptor `record`,
    replacing the rows of the same pairs and descriptor, with the descriptor, in one transaction."""
    with database.connect(db_path, timeout=timeout) as conn:
        register_descriptor(conn, record)
        for run_a, run_b in {(r[0], r[1]) for r in rows}:
            conn.execute("DELETE FROM similarity_scores WHERE run_a = ? AND run_b = ? AND descriptor_fingerprint = ?",
                         [run_a, run_b, record["fingerprint"]])
        conn.executemany(f"INSERT INTO similarity_scores ({', '.join(SIMILARITY_COLUMNS)}) "
                         f"VALUES ({', '.join('?' * len(SIMILARITY_COLUMNS))})", rows)


def store_copy_matches(db_path, record: dict, run_ids: Sequence[int], rows: list[tuple], *,
                       timeout: float = database.DEFAULT_TIMEOUT) -> None:
    """Write copy_matches rows (tuples in COPY_MATCH_COLUMNS order) of descriptor `record`,
    replacing the runs' rows for that descriptor, with the descriptor, in one transaction."""
    with database.connect(db_path, timeout=timeout) as conn:
        register_descriptor(conn, record)
        for run_id in run_ids:
            conn.execute("DELETE FROM copy_matches WHERE run_id = ? AND descriptor_fingerprint = ?",
                         [run_id, record["fingerprint"]])
        if rows:
            conn.executemany(f"INSERT INTO copy_matches ({', '.join(COPY_MATCH_COLUMNS)}) "
                             f"VALUES ({', '.join('?' * len(COPY_MATCH_COLUMNS))})", rows)


def nearest_copies(db_path, run_ids: Sequence[int], *, timeout: float = database.DEFAULT_TIMEOUT) -> list[tuple]:
    """The nearest training image of every stored image of the runs (copy_matches rank 0):
    (run_id, sample_index, image_id, flip, score, flag, descriptor), by run and sample."""
    run_ids = list(run_ids)
    with database.connect(db_path, read_only=True, timeout=timeout) as conn:
        return conn.execute(f"""
            SELECT m.run_id, m.sample_index, i.image_id, m.flip, m.score, m.flag, m.descriptor
            FROM copy_matches m JOIN runs r ON r.id = m.run_id
            JOIN training_images i ON i.dataset_id = r.dataset_id AND i.image_index = m.image_index
            WHERE m.rank = 0 AND m.run_id IN ({", ".join("?" * len(run_ids))})
            ORDER BY m.run_id, m.sample_index""", run_ids).fetchall()


# ---------------------------------------------------------------------------------------
# Reading a comparison back
# ---------------------------------------------------------------------------------------
def agreement_table(db_path, run_id: int, *, timeout: float = database.DEFAULT_TIMEOUT) -> list[dict]:
    """Per step of a network-explained (or audit replay) run: t, the mean and largest MSE
    between the network's and PSPC's D(z_t) over samples, the largest |error|, and the mean
    captured posterior mass of the stored weights."""
    with database.connect(db_path, read_only=True, timeout=timeout) as conn:
        read_run(conn, db_path, run_id)
        rows = conn.execute("""
            SELECT a.step, a.t, avg(a.mse), max(a.mse), max(a.max_abs_error), avg(m.mass)
            FROM step_agreement a
            LEFT JOIN (SELECT sample_index, step, avg(mass) AS mass FROM patch_stats WHERE run_id = ?
                       GROUP BY sample_index, step) m ON m.sample_index = a.sample_index AND m.step = a.step
            WHERE a.run_id = ?
            GROUP BY a.step, a.t ORDER BY a.step""", [int(run_id), int(run_id)]).fetchall()
    keys = ("step", "t", "mse", "max_mse", "max_abs_error", "mass")
    return [dict(zip(keys, r)) for r in rows]


_SUMMARY_COLUMNS = ("id", "dataset_id", "network_id", "status", "seed", "num_samples", "sampler", "config",
                    "created_at", "finished_at", "error")


def comparison_summary(db_path, comparison_id: int, *, timeout: float = database.DEFAULT_TIMEOUT) -> dict:
    """A comparison as stored: its row, network, runs by role (status, kind), mean similarity
    per pair and descriptor, and the flagged copy matches per run."""
    with database.connect(db_path, read_only=True, timeout=timeout) as conn:
        row = conn.execute(f"SELECT {', '.join(_SUMMARY_COLUMNS)} FROM comparisons WHERE id = ?",
                           [int(comparison_id)]).fetchone()
        if row is None:
            raise NotFoundError(f"{db_path}: no comparison {comparison_id}")
        summary = dict(zip(_SUMMARY_COLUMNS, row))
        summary["sampler"], summary["config"] = json_value(summary["sampler"]), json_value(summary["config"])
        net = conn.execute("SELECT id, name, kind, sha256, source FROM networks WHERE id = ?",
                           [summary["network_id"]]).fetchone()
        summary["network"] = dict(zip(("id", "name", "kind", "sha256", "source"), net))
        summary["runs"] = {role: {"run_id": run_id, "status": status, "kind": kind}
                           for role, run_id, status, kind in conn.execute(
                               "SELECT c.role, c.run_id, r.status, r.kind FROM comparison_runs c JOIN runs r "
                               "ON r.id = c.run_id WHERE c.comparison_id = ? ORDER BY c.run_id",
                               [int(comparison_id)]).fetchall()}
        summary["similarity"] = [dict(zip(("run_a", "run_b", "descriptor", "mean", "min", "max", "flagged", "count",
                                           "thresholds"), r)) for r in conn.execute("""
            SELECT run_a, run_b, descriptor, avg(score), min(score), max(score), count(*) FILTER (WHERE flagged),
                   count(*), any_value(thresholds)
            FROM similarity_scores WHERE comparison_id = ?
            GROUP BY run_a, run_b, descriptor ORDER BY run_a, run_b""", [int(comparison_id)]).fetchall()]
        summary["copies"] = _top_copies(conn, [r["run_id"] for r in summary["runs"].values()])
    for pair in summary["similarity"]:
        pair["thresholds"] = json_value(pair["thresholds"])
    return summary


def _top_copies(conn, run_ids: list[int]) -> list[dict]:
    if not run_ids:
        return []
    keys = ("run_id", "sample_index", "image_index", "image_id", "flip", "score", "flag", "descriptor")
    return [dict(zip(keys, r)) for r in conn.execute(f"""
        SELECT m.run_id, m.sample_index, m.image_index, i.image_id, m.flip, m.score, m.flag, m.descriptor
        FROM copy_matches m JOIN runs r ON r.id = m.run_id
        JOIN training_images i ON i.dataset_id = r.dataset_id AND i.image_index = m.image_index
        WHERE m.run_id IN ({", ".join("?" * len(run_ids))}) AND m.rank = 0
        ORDER BY m.run_id, m.sample_index""", run_ids).fetchall()]


def _counterpart_run(conn, comparison_id: int, role: str) -> tuple[str, int, int] | None:
    """(counterpart role, counterpart run, network run) of a comparison member with `role`:
    the network's sample for a denoiser run; the first PSPC run's for the network run."""
    members = conn.execute("SELECT c.role, c.run_id, r.kind FROM comparison_runs c JOIN runs r ON r.id = c.run_id "
                           "WHERE c.comparison_id = ? ORDER BY c.run_id", [comparison_id]).fetchall()
    network_run = next((r for role_, r, _ in members if role_ == NETWORK_ROLE), None)
    if role != NETWORK_ROLE:
        return NETWORK_ROLE, network_run, network_run
    others = [m for m in members if m[0] != NETWORK_ROLE]
    preferred = [m for m in others if m[2] == "pspc"] or others
    if not preferred:
        return None
    return preferred[0][0], preferred[0][1], network_run


def sample_counterpart(db_path, run_id: int, sample_index: int, *,
                       timeout: float = database.DEFAULT_TIMEOUT) -> dict | None:
    """For a sample of a run that belongs to a comparison: its counterpart from the same noise
    (the network's sample for a denoiser run; the first PSPC run's for the network run), with
    the network record, the counterpart image (float32 [C, H, W], None until stored), the
    similarity rows of the pair (one per descriptor: score, descriptor, preprocessing,
    thresholds, flag) and the network run's per-step agreement for this sample. None when the
    run is in no comparison. What a sample report's network section shows."""
    with database.connect(db_path, read_only=True, timeout=timeout) as conn:
        info = _info(conn, db_path, run_id)
        sample_index = check_sample_index(db_path, {"id": run_id, **info}, sample_index)
        link = conn.execute("SELECT comparison_id, role FROM comparison_runs WHERE run_id = ?",
                            [int(run_id)]).fetchone()
        if link is None:
            return None
        comparison_id, role = link
        found = _counterpart_run(conn, comparison_id, role)
        if found is None:
            return None
        other_role, other_run, network_run = found
        net = conn.execute("SELECT n.id, n.name, n.kind, n.sha256, n.source, n.config FROM comparisons c "
                           "JOIN networks n ON n.id = c.network_id WHERE c.id = ?", [comparison_id]).fetchone()
        image = conn.execute("SELECT final_image FROM samples WHERE run_id = ? AND sample_index = ?",
                             [other_run, sample_index]).fetchone()
        scores = conn.execute("""
            SELECT s.score, s.descriptor, s.descriptor_fingerprint, s.preprocessing, s.thresholds, s.flag, s.flagged,
                   d.record
            FROM similarity_scores s JOIN descriptors d ON d.fingerprint = s.descriptor_fingerprint
            WHERE s.run_a = ? AND s.run_b = ? AND s.sample_index = ? ORDER BY s.descriptor""",
                              [min(run_id, other_run), max(run_id, other_run), sample_index]).fetchall()
        steps = conn.execute("SELECT step, t, mse, max_abs_error FROM step_agreement WHERE run_id = ? AND "
                             "sample_index = ? ORDER BY step", [network_run, sample_index]).fetchall()
    return {
        "comparison_id": int(comparison_id), "role": role, "counterpart_run_id": int(other_run),
        "counterpart_role": other_role, "network_run_id": int(network_run),
        "network": {**dict(zip(("id", "name", "kind", "sha256", "source"), net[:5])), "record": json_value(net[5])},
        "image": from_blob(image[0], info["shape"]) if image and image[0] is not None else None,
        "similarity": [{"score": s, "descriptor": d, "descriptor_fingerprint": f, "preprocessing": json_value(p),
                        "thresholds": json_value(th), "flag": fl, "flagged": fd, "descriptor_record": json_value(rec)}
                       for s, d, f, p, th, fl, fd, rec in scores],
        "steps": [{"step": s, "t": t, "mse": m, "max_abs_error": e} for s, t, m, e in steps],
    }
