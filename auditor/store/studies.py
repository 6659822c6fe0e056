"""Fidelity studies in the provenance store (revision 0007): checked, stored, read back.

`store_study(db, result)` checks a result (a run's, auditor.workflows.fidelity.run_study, or
an imported fidelity.json: a missing key, NaN or a wrong type is refused naming the field)
and writes it in one transaction as plain rows (fidelity_studies, fidelity_errors,
fidelity_concentration, fidelity_similarity, fidelity_schedule). `load_study(db, id)` reads
it back in the same shape, less what is not stored (the per-state errors and the per-sample
similarity scores); `list_studies(db)` lists the studies, newest first; `find_study` finds
one by its source.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import TYPE_CHECKING

from auditor.errors import NotFoundError, UserError
from auditor.store import database, schema as models
from auditor.store.database import json_value

if TYPE_CHECKING:
    from sqlalchemy.orm import Session

__all__ = ["RESULT_KEYS", "StudyError", "find_study", "list_studies", "load_study", "store_study"]

RESULT_KEYS = ("record", "curves", "concentration", "similarity", "similarity_to_network", "tuned_schedule",
               "findings")


class StudyError(UserError):
    """Bad study options, or a study result that cannot be stored; names the option or field."""


# ---------------------------------------------------------------------------------------
# Checking a result before it is stored
# ---------------------------------------------------------------------------------------
def _fail(field: str, problem: str):
    raise StudyError(f"fidelity result: {field} {problem}")


def _kind(value) -> str:
    return "null" if value is None else type(value).__name__


def _object(value, field: str) -> dict:
    if not isinstance(value, dict):
        _fail(field, f"must be an object, got {_kind(value)}")
    return value


def _key(mapping: dict, key: str, field: str):
    if key not in mapping:
        _fail(f"{field}.{key}" if field else key, "is missing")
    return mapping[key]


def _text(value, field: str) -> str:
    if not isinstance(value, str) or not value:
        _fail(field, f"must be a non-empty string, got {_kind(value)}")
    return value


def _number(value, field: str, low: float | None = None, above: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        _fail(field, f"must be a number, got {_kind(value)}")
    value = float(value)
    if math.isnan(value):
        _fail(field, "is NaN")
    if math.isinf(value):
        _fail(field, "is infinite")
    if low is not None and (value <= low if above else value < low):
        _fail(field, f"must be {'>' if above else '>='} {low:g}, got {value:g}")
    return value


def _integer(value, field: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        _fail(field, f"must be an integer, got {_kind(value)}")
    return value


def _list(value, field: str, length: int | None = None) -> list:
    if not isinstance(value, list):
        _fail(field, f"must be a list, got {_kind(value)}")
    if length is not None and len(value) != length:
        _fail(field, f"must have {length} entries, got {len(value)}")
    return value


def _times(value, field: str) -> list[float]:
    times = [_number(t, f"{field}[{k}]", 0.0, above=True) for k, t in enumerate(_list(value, field))]
    if not times:
        _fail(field, "is empty")
    return times


def _names(value, field: str) -> list[str]:
    names = [_text(n, f"{field}[{k}]") for k, n in enumerate(_list(value, field))]
    if not names or len(set(names)) != len(names):
        _fail(field, f"must be distinct names, got {names}")
    return names


def _table(value, field: str, rows: int, columns: int) -> list[list[float]]:
    return [[_number(v, f"{field}[{i}][{j}]", 0.0) for j, v in enumerate(_list(row, f"{field}[{i}]", columns))]
            for i, row in enumerate(_list(value, field, rows))]


def _curve_rows(process: str, curve, field: str) -> tuple[list[dict], dict]:
    curve = _object(curve, field)
    if curve.get("process", process) != process:
        _fail(f"{field}.process", f"is {curve.get('process')!r}, its key says {process!r}")
    times = _times(_key(curve, "times", field), f"{field}.times")
    names = _names(_key(curve, "names", field), f"{field}.names")
    mse = _table(_key(curve, "mse", field), f"{field}.mse", len(names), len(times))
    stderr = _table(_key(curve, "stderr", field), f"{field}.stderr", len(names), len(times))
    states = None
    if curve.get("errors") is not None:  # [D, T, B] per-state errors: only their count is stored
        errors = _list(curve["errors"], f"{field}.errors", len(names))
        first = _list(_list(errors[0], f"{field}.errors[0]", len(times))[0], f"{field}.errors[0][0]")
        states = len(first)
    elif curve.get("states") is not None:
        states = _integer(curve["states"], f"{field}.states")
    denoisers = _object(curve.get("denoisers", {}), f"{field}.denoisers")
    rows = [{"process": process, "denoiser": name, "level": k, "position": d, "t": t, "mse": mse[d][k],
             "stderr": stderr[d][k], "states": states}
            for d, name in enumerate(names) for k, t in enumerate(times)]
    return rows, denoisers




def _study_row(record) -> dict:
    """The fidelity_studies columns that come from the record (network, data, seed)."""
    record = _object(record, "record")
    training = _object(_key(record, "training_set", "record"), "record.training_set")
    network = _object(_key(record, "network", "record"), "record.network")
    loader = network.get("network") or {}
    sha256 = loader.get("sha256") if isinstance(loader, dict) else None
    if sha256 is not None:
        _text(sha256, "record.network.network.sha256")
    test = record.get("test_set")
    seed = (record.get("configuration") or {}).get("seed") if isinstance(record.get("configuration"), dict) else None
    return {"network_name": network.get("name") if isinstance(network.get("name"), str) else None,
            "network_sha256": sha256, "network": network,
            "training_fingerprint": _text(_key(training, "fingerprint", "record.training_set"),
                                          "record.training_set.fingerprint"),
            "test_fingerprint": _text(test.get("fingerprint"), "record.test_set.fingerprint")
            if isinstance(test, dict) and "fingerprint" in test else None,
            "seed": _integer(seed, "record.configuration.seed") if seed is not None else None,
            "record": record}


def _error_rows(curves) -> tuple[list[dict], dict]:
    """fidelity_errors rows of every process, and each process's denoiser records."""
    curves = _object(curves, "curves")
    if not curves:
        _fail("curves", "is empty")
    errors, denoisers = [], {}
    for process, curve in curves.items():
        rows, denoisers[process] = _curve_rows(process, curve, f"curves.{process}")
        errors += rows
    return errors, denoisers


def _concentration_rows(concentration) -> tuple[list[dict], dict]:
    """fidelity_concentration rows, and the table's `within` and `record` (kept as JSON)."""
    field = "concentration"
    concentration = _object(concentration, field)
    times = _times(_key(concentration, "times", field), f"{field}.times")
    fractions = [_number(f, f"{field}.fractions[{j}]", 0.0, above=True)
                 for j, f in enumerate(_list(_key(concentration, "fractions", field), f"{field}.fractions"))]
    if len(set(fractions)) != len(fractions):
        _fail(f"{field}.fractions", f"repeat: {fractions}")
    mean_side = _table(_key(concentration, "mean_side", field), f"{field}.mean_side", len(times), len(fractions))
    median_side = _table(_key(concentration, "median_side", field), f"{field}.median_side", len(times), len(fractions))
    within = _object(concentration.get("within", {}), f"{field}.within")
    for side, shares in within.items():
        [_number(v, f"{field}.within.{side}[{k}]") for k, v in enumerate(_list(shares, f"{field}.within.{side}",
                                                                               len(times)))]
    kept = {"within": within, "record": _object(concentration.get("record", {}), f"{field}.record")}
    rows = [{"level": k, "fraction": f, "t": t, "mean_side": mean_side[k][j], "median_side": median_side[k][j]}
            for k, t in enumerate(times) for j, f in enumerate(fractions)]
    return rows, kept


def _similarity_rows(similarity, to_network) -> list[dict]:
    """fidelity_similarity rows: each denoiser's mean similarity to the network's samples."""
    if to_network is None:
        return []
    to_network = _object(to_network, "similarity_to_network")
    if similarity is None:
        _fail("similarity", "is null, but similarity_to_network needs its descriptor")
    descriptor = _text(_object(_key(similarity, "descriptor", "similarity"), "similarity.descriptor").get("name"),
                       "similarity.descriptor.name")
    names = similarity.get("names") if isinstance(similarity.get("names"), list) else []
    std = similarity.get("std")
    rows = []
    for position, (name, value) in enumerate(to_network.items()):
        column = names.index(name) if name in names else None
        spread = None
        if column is not None and isinstance(std, list) and std and isinstance(std[0], list) \
                and column < len(std[0]):
            spread = _number(std[0][column], f"similarity.std[0][{column}]")
        rows.append({"denoiser": name, "position": position,
                     "similarity": _number(value, f"similarity_to_network.{name}"),
                     "std": spread, "samples": _integer(similarity["count"], "similarity.count")
                     if similarity.get("count") is not None else None,
                     "descriptor": descriptor})
    return rows


def _schedule_rows(tuned) -> list[dict]:
    """fidelity_schedule rows: the tuned s(t) and lambda(t) per step, with the candidates' errors."""
    if tuned is None:
        return []
    rows = []
    for step, row in enumerate(_list(tuned, "tuned_schedule")):
        where = f"tuned_schedule[{step}]"
        row = _object(row, where)
        size = row.get("patch_size")
        lam = row.get("lambda")
        rows.append({
            "step": step, "t": _number(_key(row, "t", where), f"{where}.t", 0.0, above=True),
            "patch_size": _integer(size, f"{where}.patch_size") if size is not None else None,
            "flex_lambda": _number(lam, f"{where}.lambda", 0.0, above=True) if lam is not None else None,
            "candidate_errors": _object(row["errors"], f"{where}.errors") if row.get("errors") is not None
            else None})
    return rows


def _checked(result) -> dict:
    """The rows and columns of a result dict (fidelity.json); StudyError naming the first bad field."""
    result = _object(result, "the result")
    for key in RESULT_KEYS:
        _key(result, key, "")
    try:  # plain JSON values, as in the file (numpy scalars from a fresh run become floats)
        result = json.loads(json.dumps({key: result[key] for key in RESULT_KEYS}, default=float))
    except (TypeError, ValueError) as exc:
        raise StudyError(f"fidelity result: not JSON data ({exc})") from None
    study = _study_row(result["record"])
    errors, study["denoisers"] = _error_rows(result["curves"])
    concentration, study["concentration_record"] = _concentration_rows(result["concentration"])
    similarity = result["similarity"]
    if similarity is not None:
        similarity = {k: v for k, v in _object(similarity, "similarity").items() if k != "scores"}
    study["similarity"] = similarity
    similarity_rows = _similarity_rows(similarity, result["similarity_to_network"])
    schedule = _schedule_rows(result["tuned_schedule"])
    findings = _list(result["findings"], "findings")
    for k, line in enumerate(findings):
        if not isinstance(line, str):
            _fail(f"findings[{k}]", f"must be a string, got {_kind(line)}")
    study["findings"] = findings
    return {"study": study, "errors": errors, "concentration": concentration, "similarity": similarity_rows,
            "schedule": schedule}


# ---------------------------------------------------------------------------------------
# The store
# ---------------------------------------------------------------------------------------
def _default_name(study: dict) -> str:
    out = (study["record"].get("configuration") or {}).get("out")
    if isinstance(out, str) and out:
        return Path(out).name
    training = study["record"]["training_set"].get("name") or "training set"
    return f"{study['network_name'] or 'network'} on {training}"


def _insert(session: Session, checked: dict, name: str | None, source: str | None) -> int:
    from auditor.store.recorder import utcnow  # (torch: only when a study is stored)

    study = models.FidelityStudy(**checked["study"], name=name or _default_name(checked["study"]),
                                 source=source, created_at=utcnow())
    session.add(study)
    session.flush()
    study_id = int(study.id)
    for model, key in ((models.FidelityCurvePoint, "errors"), (models.FidelityConcentration, "concentration"),
                       (models.FidelitySimilarity, "similarity"), (models.FidelityScheduleStep, "schedule")):
        session.add_all([model(study_id=study_id, **row) for row in checked[key]])
    session.flush()
    return study_id


def store_study(target, result: dict, *, name: str | None = None, source: str | None = None,
                timeout: float = database.DEFAULT_TIMEOUT) -> int:
    """Store a study result (`Study.result`, or a fidelity.json read back); returns its id.

    target: the store's path (one transaction of its own) or an open SQLAlchemy Session (the
    caller's transaction). The result is checked first: a missing key, NaN, infinity or a
    value of the wrong type raises StudyError naming the field, and nothing is written.
    name: the study's label (default: the output folder's name, else network and data)."""
    from sqlalchemy.orm import Session

    checked = _checked(result)
    if isinstance(target, Session):
        return _insert(target, checked, name, source)
    database.require_current(target, timeout)
    with database.session(target, timeout=timeout) as session:
        return _insert(session, checked, name, source)


def find_study(db_path, source: str, *, timeout: float = database.DEFAULT_TIMEOUT) -> int | None:
    """The id of a stored study from `source` (fidelity_studies.source), if any."""
    with database.connect(db_path, read_only=True, timeout=timeout, check_schema=True) as conn:
        found = conn.execute("SELECT id FROM fidelity_studies WHERE source = ?", [source]).fetchone()
    return None if found is None else int(found[0])


_STUDY_COLUMNS = ("id", "name", "created_at", "source", "network_name", "network_sha256", "training_fingerprint",
                  "test_fingerprint", "seed")


def load_study(db_path, study_id: int, *, timeout: float = database.DEFAULT_TIMEOUT) -> dict:
    """A stored study in the shape of fidelity.json (record, curves, concentration, similarity,
    similarity_to_network, tuned_schedule, findings) plus its id, name, created_at, source,
    network_sha256, training_fingerprint and the similarity descriptor's name. Curves carry
    `states` (their count) instead of the per-state `errors`; similarity has no per-sample
    `scores`. NotFoundError for an unknown id."""
    study_id = int(study_id)
    with database.connect(db_path, read_only=True, timeout=timeout, check_schema=True) as conn:
        row = conn.execute(f"SELECT {', '.join(_STUDY_COLUMNS)}, record, findings, denoisers, concentration_record, "
                           "similarity FROM fidelity_studies WHERE id = ?", [study_id]).fetchone()
        if row is None:
            raise NotFoundError(f"{db_path}: no fidelity study {study_id}")
        errors = conn.execute("SELECT process, denoiser, position, level, t, mse, stderr, states FROM fidelity_errors "
                              "WHERE study_id = ? ORDER BY process, position, level", [study_id]).fetchall()
        concentration = conn.execute("SELECT level, t, fraction, mean_side, median_side FROM fidelity_concentration "
                                     "WHERE study_id = ? ORDER BY level, fraction", [study_id]).fetchall()
        similarity = conn.execute("SELECT denoiser, similarity, descriptor FROM fidelity_similarity "
                                  "WHERE study_id = ? ORDER BY position", [study_id]).fetchall()
        schedule = conn.execute("SELECT t, patch_size, flex_lambda, candidate_errors FROM fidelity_schedule "
                                "WHERE study_id = ? ORDER BY step", [study_id]).fetchall()
    study = dict(zip(_STUDY_COLUMNS, row[:len(_STUDY_COLUMNS)]))
    record, findings, denoisers, concentration_record, matrix = (json_value(v) for v in row[len(_STUDY_COLUMNS):])

    curves = {}
    for process in denoisers:  # the stored order of the processes
        points = [e for e in errors if e[0] == process]
        names = list(dict.fromkeys(e[1] for e in points))
        times = [e[4] for e in points if e[1] == names[0]]
        table = {(e[1], e[3]): e for e in points}
        curves[process] = {"process": process, "times": times, "names": names,
                           "mse": [[table[(n, k)][5] for k in range(len(times))] for n in names],
                           "stderr": [[table[(n, k)][6] for k in range(len(times))] for n in names],
                           "denoisers": denoisers[process], "states": points[0][7] if points else None}
    times = list(dict.fromkeys((level, t) for level, t, *_ in concentration))
    fractions = sorted({fraction for _, _, fraction, _, _ in concentration})
    cells = {(level, fraction): (mean, median) for level, _, fraction, mean, median in concentration}
    tuned = None
    if schedule:
        tuned = []
        for t, size, lam, candidates in schedule:
            step = {"t": t}
            if size is not None:
                step["patch_size"] = int(size)
            if lam is not None:
                step["lambda"] = lam
            step["errors"] = json_value(candidates) if candidates is not None else {}
            tuned.append(step)
    return {**study, "record": record, "curves": curves,
            "concentration": {"times": [t for _, t in times], "fractions": fractions,
                              "mean_side": [[cells[(level, f)][0] for f in fractions] for level, _ in times],
                              "median_side": [[cells[(level, f)][1] for f in fractions] for level, _ in times],
                              **concentration_record},
            "similarity": matrix,
            "similarity_to_network": {name: value for name, value, _ in similarity} if similarity else None,
            "descriptor": similarity[0][2] if similarity else None,
            "tuned_schedule": tuned, "findings": findings}


def list_studies(db_path, *, timeout: float = database.DEFAULT_TIMEOUT) -> list[dict]:
    """Every stored study, newest first: id, name, created_at, source, network name and sha256,
    training set name and fingerprint, processes, denoisers, descriptor, tuned (bool)."""
    with database.connect(db_path, read_only=True, timeout=timeout, check_schema=True) as conn:
        rows = conn.execute(f"SELECT {', '.join(_STUDY_COLUMNS)}, "
                            "json_extract_string(record, '$.training_set.name') FROM fidelity_studies "
                            "ORDER BY created_at DESC, id DESC").fetchall()
        points = conn.execute("SELECT study_id, process, denoiser, min(position) AS position FROM fidelity_errors "
                              "GROUP BY ALL ORDER BY study_id, process, position").fetchall()
        descriptors = dict(conn.execute("SELECT study_id, any_value(descriptor) FROM fidelity_similarity "
                                        "GROUP BY study_id").fetchall())
        tuned = {r[0] for r in conn.execute("SELECT DISTINCT study_id FROM fidelity_schedule").fetchall()}
    studies = []
    for row in rows:
        study = {**dict(zip(_STUDY_COLUMNS, row)), "training_set": row[len(_STUDY_COLUMNS)]}
        mine = [p for p in points if p[0] == study["id"]]
        study.update(processes=list(dict.fromkeys(p[1] for p in mine)),
                     denoisers=list(dict.fromkeys(p[2] for p in sorted(mine, key=lambda p: p[3]))),
                     descriptor=descriptors.get(study["id"]), tuned=study["id"] in tuned)
        studies.append(study)
    return studies
