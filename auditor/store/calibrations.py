"""Copy calibrations and verdicts in the provenance store (revision 0008).

`store_calibrations` writes the thresholds `auditor calibrate` chose on one training set (one
row per evidence source, with the TPR / FPR measured at it and the record of how);
`current_calibrations` gives the newest row per evidence source whose fingerprint matches
(a calibration of other parameters or another training set is never returned);
`store_verdicts` / `load_verdicts` write and read the verdicts of stored images;
`runs_with_verdict` lists the runs holding a given verdict.
"""

from __future__ import annotations

import json
from typing import Mapping, Sequence

from auditor.errors import UserError
from auditor.store import database
from auditor.store.database import json_value
from auditor.store.recorder import utcnow

__all__ = ["CALIBRATION_COLUMNS", "VERDICT_COLUMNS", "VERDICTS", "current_calibrations", "list_calibrations",
           "load_verdicts", "runs_with_verdict", "store_calibrations", "store_verdicts", "verdict_rows",
           "verdict_sentence"]

CALIBRATION_COLUMNS = ("id", "dataset_id", "evidence", "evidence_fingerprint", "call", "threshold", "target_fpr",
                       "tpr", "fpr", "positives", "negatives", "record", "created_at")
VERDICT_COLUMNS = ("run_id", "sample_index", "verdict", "reason", "evidence", "score", "threshold", "tpr", "fpr",
                   "calibration_id", "sources", "region", "details")
VERDICTS = ("copy", "partial copy", "no copy found", "inconclusive")
JSON_COLUMNS = ("record", "sources", "region", "details")


def _row(columns: Sequence[str], values) -> dict:
    return {c: (json_value(v) if c in JSON_COLUMNS and v is not None else v) for c, v in zip(columns, values)}


def store_calibrations(db_path, dataset_id: int, thresholds: Sequence[Mapping], record: dict, *,
                       timeout: float = database.DEFAULT_TIMEOUT) -> list[int]:
    """Insert one copy_calibrations row per threshold (Threshold.to_dict()) in one transaction; their ids."""
    created = utcnow()
    ids = []
    with database.connect(db_path, timeout=timeout) as conn:
        if not conn.execute("SELECT 1 FROM datasets WHERE id = ?", [dataset_id]).fetchone():
            raise UserError(f"no dataset {dataset_id} in {db_path}")
        for t in thresholds:
            ids.append(int(conn.execute(
                "INSERT INTO copy_calibrations (dataset_id, evidence, evidence_fingerprint, call, threshold, target_fpr, "
                "tpr, fpr, positives, negatives, record, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) "
                "RETURNING id",
                [dataset_id, t["evidence"], t["fingerprint"], t["call"], float(t["threshold"]), float(t["target_fpr"]),
                 float(t["tpr"]), float(t["fpr"]), int(t["positives"]), int(t["negatives"]),
                 json.dumps({**record, "families": list(t.get("families", ()))}, default=str), created]).fetchone()[0]))
    return ids


def list_calibrations(db_path, dataset_id: int | None = None, *,
                      timeout: float = database.DEFAULT_TIMEOUT) -> list[dict]:
    """Every calibration (of one dataset when given), newest first."""
    where, args = ("WHERE dataset_id = ?", [dataset_id]) if dataset_id is not None else ("", [])
    with database.connect(db_path, read_only=True, timeout=timeout) as conn:
        rows = conn.execute(f"SELECT {', '.join(CALIBRATION_COLUMNS)} FROM copy_calibrations {where} "
                            "ORDER BY id DESC", args).fetchall()
    return [_row(CALIBRATION_COLUMNS, r) for r in rows]


def current_calibrations(db_path, dataset_id: int, fingerprints: Mapping[str, str], *,
                         timeout: float = database.DEFAULT_TIMEOUT) -> dict[str, dict]:
    """evidence name -> its newest calibration on the dataset with exactly that fingerprint
    (names without one are absent: the verdict then says which is uncalibrated)."""
    out = {}
    for row in list_calibrations(db_path, dataset_id, timeout=timeout):
        name = row["evidence"]
        if name not in out and fingerprints.get(name) == row["evidence_fingerprint"]:
            out[name] = row
    return out


def store_verdicts(db_path, run_id: int, verdicts: Mapping[int, Mapping], *,
                   timeout: float = database.DEFAULT_TIMEOUT) -> None:
    """Write the verdicts (sample index -> Verdict.to_dict()) of a run, replacing its earlier ones."""
    rows = []
    for sample_index, v in sorted(verdicts.items()):
        if v["verdict"] not in VERDICTS:
            raise UserError(f"unknown verdict {v['verdict']!r}; expected one of {', '.join(VERDICTS)}")
        rows.append([run_id, int(sample_index), v["verdict"], v["reason"], v.get("evidence"), v.get("score"),
                     v.get("threshold"), v.get("tpr"), v.get("fpr"), v.get("calibration_id"),
                     json.dumps(v.get("sources") or []), None if v.get("region") is None else json.dumps(v["region"]),
                     json.dumps(v.get("scores") or {}, default=float)])
    with database.connect(db_path, timeout=timeout) as conn:
        conn.execute("DELETE FROM copy_verdicts WHERE run_id = ?", [run_id])
        if rows:
            conn.executemany(f"INSERT INTO copy_verdicts ({', '.join(VERDICT_COLUMNS)}) "
                             f"VALUES ({', '.join('?' * len(VERDICT_COLUMNS))})", rows)


def verdict_rows(conn, run_id: int, sample_index: int | None = None) -> dict[int, dict]:
    """sample index -> the stored verdict row of run `run_id` (JSON columns parsed), on an open
    connection; only `sample_index` when given."""
    where, params = ("AND sample_index = ?", [run_id, sample_index]) if sample_index is not None else ("", [run_id])
    rows = conn.execute(f"SELECT {', '.join(VERDICT_COLUMNS)} FROM copy_verdicts WHERE run_id = ? {where} "
                        "ORDER BY sample_index", params).fetchall()
    return {int(r[1]): _row(VERDICT_COLUMNS, r) for r in rows}


def load_verdicts(db_path, run_id: int, *, timeout: float = database.DEFAULT_TIMEOUT) -> dict[int, dict]:
    """sample index -> the stored verdict of run `run_id` (empty when it has none)."""
    with database.connect(db_path, read_only=True, timeout=timeout) as conn:
        return verdict_rows(conn, run_id)


def verdict_sentence(row: Mapping) -> str:
    """A verdict (a stored row, or Verdict.to_dict()) in one sentence, for a badge or a terminal:
    the source ids, a partial copy's box, the reason and the rates measured at the threshold."""
    if row["verdict"] not in ("copy", "partial copy"):
        return f"{row['verdict']}: {row['reason']}"
    sources = ", ".join(s["image_id"] + (" (mirrored)" if s.get("flip") else "") for s in row.get("sources") or [])
    region = row.get("region")
    where = f" in box {region['box']} ({region['area']:.0%} of the image)" if region else ""
    rates = ("" if row.get("tpr") is None else
             f"; at this threshold the benchmark's calibration found {row['tpr']:.0%} of copies and called "
             f"{row['fpr']:.1%} of novel images copies")
    return f"{row['verdict']} of {sources}{where}: {row['reason']}{rates}"


def runs_with_verdict(db_path, verdict: str, *, timeout: float = database.DEFAULT_TIMEOUT) -> list[int]:
    """Ids of the runs with at least one image of that verdict."""
    if verdict not in VERDICTS:
        raise UserError(f"unknown verdict {verdict!r}; expected one of {', '.join(VERDICTS)}")
    with database.connect(db_path, read_only=True, timeout=timeout) as conn:
        rows = conn.execute("SELECT DISTINCT run_id FROM copy_verdicts WHERE verdict = ? ORDER BY run_id",
                            [verdict]).fetchall()
    return [int(r[0]) for r in rows]
