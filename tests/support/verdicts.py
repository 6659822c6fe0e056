"""A tiny store holding stored copy verdicts (issue 17), for the tests of how they are shown.

`verdict_store(path)`: fill_tiny_store's run (samples 0 and 1) with sample 0 judged a
calibrated partial copy of img-1 (sample 1 has no verdict), plus a second run, a copy of
the first (its samples and steps), whose sample 0 is inconclusive. Returns {"run_id", "other_run", "partial", "inconclusive"}.
"""

from __future__ import annotations

from auditor.store import calibrations, database
from tests.support.store import fill_tiny_store

PARTIAL = {"verdict": "partial copy", "reason": "region-match score 0.910 >= calibrated threshold 0.800",
           "evidence": "region-match", "score": 0.91, "threshold": 0.8, "tpr": 0.9, "fpr": 0.01, "calibration_id": 7,
           "sources": [{"entry": 1, "image_index": 1, "image_id": "img-1", "flip": False}],
           "region": {"box": [0, 1, 2, 2], "area": 0.44, "mask": ["011", "011", "000"]}}
INCONCLUSIVE = {"verdict": "inconclusive", "reason": "no calibration for descriptor region-match on this training "
                                                     "set: run auditor calibrate"}


def verdict_store(path) -> dict:
    database.upgrade(path, "0001")
    info = fill_tiny_store(path)
    database.upgrade(path)
    run_id = info["run_id"]
    with database.connect(path) as conn:
        columns = [c[0] for c in conn.execute("DESCRIBE runs").fetchall() if c[0] != "id"]
        other = conn.execute(f"INSERT INTO runs ({', '.join(columns)}) SELECT {', '.join(columns)} FROM runs "
                             "WHERE id = ? RETURNING id", [run_id]).fetchone()[0]
        for table in ("samples", "steps", "patch_weights", "step_shares"):
            names = [c[0] for c in conn.execute(f"DESCRIBE {table}").fetchall()]
            picked = ", ".join("?" if c == "run_id" else c for c in names)
            conn.execute(f"INSERT INTO {table} ({', '.join(names)}) SELECT {picked} FROM {table} WHERE run_id = ?",
                         [other, run_id])
    calibrations.store_verdicts(path, run_id, {0: PARTIAL})
    calibrations.store_verdicts(path, other, {0: INCONCLUSIVE})
    return {"run_id": run_id, "other_run": other, "partial": PARTIAL, "inconclusive": INCONCLUSIVE}
