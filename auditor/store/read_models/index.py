"""The start page: every run (summaries) and dataset, and the search for training images by
exact id or source URI, then containing the text."""

from __future__ import annotations

from dataclasses import dataclass

from auditor.store import database, datasets, runs

__all__ = ["ImageSearch", "IndexData", "load_index", "search_training_images"]

HIT_COLUMNS = ("dataset_id", "dataset", "image_index", "image_id", "label_name", "source_uri", "owner", "license")


@dataclass(frozen=True, kw_only=True)
class ImageSearch:
    """total: the images matching; hits: the requested slice, exact matches first, then by
    dataset and index: dicts (dataset_id, dataset (name), image_index, image_id, label_name,
    source_uri, owner, license, exact)."""

    total: int
    hits: list[dict]


def search_training_images(db_path, q: str, *, limit: int, offset: int,
                           timeout: float = database.DEFAULT_TIMEOUT) -> ImageSearch:
    """Training images whose id or source URI is `q`, or contains it (case-insensitive)."""
    needle = q.lower()
    where = ("(i.image_id = ? OR i.source_uri = ? OR contains(lower(i.image_id), ?) "
             "OR contains(lower(coalesce(i.source_uri, '')), ?))")
    params = [q, q, needle, needle]
    with database.connect(db_path, read_only=True, timeout=timeout, check_schema=True) as conn:
        total = int(conn.execute(f"SELECT count(*) FROM training_images i WHERE {where}", params).fetchone()[0])
        rows = conn.execute(f"""
            SELECT i.dataset_id, d.name, i.image_index, i.image_id, i.label_name, i.source_uri, i.owner, i.license,
                   (i.image_id = ? OR i.source_uri = ?) AS exact
            FROM training_images i JOIN datasets d ON d.id = i.dataset_id
            WHERE {where}
            ORDER BY exact DESC, i.dataset_id, i.image_index
            LIMIT ? OFFSET ?""", [q, q, *params, int(limit), int(offset)]).fetchall()
    return ImageSearch(total=total, hits=[{**dict(zip(HIT_COLUMNS, row[:8])), "exact": bool(row[8])} for row in rows])


@dataclass(frozen=True, kw_only=True)
class IndexData:
    """runs: every run summary (of the kind asked for), newest first
    (auditor.store.runs.run_summaries); datasets: every dataset row, oldest first; search: the
    search's slice (None without search text)."""

    runs: list[dict]
    datasets: list[dict]
    search: ImageSearch | None


def load_index(db_path, *, q: str | None = None, limit: int, offset: int, kind: str | None = None,
               timeout: float = database.DEFAULT_TIMEOUT) -> IndexData:
    """The start page's data; with search text `q`, its hits [offset, offset + limit); kind: only
    runs of this public kind (auditor.store.run_kinds; UserError for an unknown one)."""
    summaries = runs.run_summaries(db_path, kind=kind, timeout=timeout)
    rows = datasets.list_datasets(db_path, timeout=timeout)
    search = None if q is None else search_training_images(db_path, q, limit=limit, offset=offset, timeout=timeout)
    return IndexData(runs=summaries, datasets=rows, search=search)
