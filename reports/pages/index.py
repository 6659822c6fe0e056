"""The start page (IndexPage, template index.html): runs, datasets, and the search for a
training image by id or source URI."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

from auditor.errors import UserError
from auditor.store.read_models.index import ImageSearch
from auditor.store.run_kinds import kind_choices
from reports.pages.common import Context, Pagination

__all__ = ["IndexPage", "SearchHit", "build_index_page", "search_text"]

MAX_SEARCH = 1000


@dataclass(kw_only=True)
class SearchHit:
    """A training image matching the search (exact id or source URI first, then containing it)."""

    dataset_id: int
    dataset: str
    image_index: int
    image_id: str
    label_name: str | None
    source_uri: str | None
    owner: str | None
    license: str | None
    exact: bool


@dataclass(kw_only=True)
class IndexPage(Context):
    """The start page (template index.html): runs (paginated, newest first; all of them, or
    those of one kind), datasets, and the search for a training image by id or source URI
    (paginated)."""

    documented_template: ClassVar[str] = "index.html"

    runs: list[dict]
    runs_pagination: Pagination
    datasets: list[dict]
    q: str | None
    hits: list[SearchHit]
    hits_pagination: Pagination | None
    kind: str | None = None  # the runs shown: only this public kind (sample, network-explained, audit), None: all
    kinds: list[tuple[str, str]] = field(default_factory=kind_choices)  # the filter's choices: (kind, plural)
    title: str = "Provenance store"

    @property
    def kind_plural(self) -> str | None:
        """The filtered kind as the page names it ('audits'), None without a filter."""
        return dict(self.kinds).get(self.kind)


def search_text(q: str | None) -> str | None:
    """The search text as the page searches it: stripped, None when empty; ValueError when too long."""
    q = (q or "").strip() or None
    if q is not None and len(q) > MAX_SEARCH:
        raise UserError(f"search text is too long (at most {MAX_SEARCH} characters)")
    return q


def build_index_page(*, runs: list[dict], datasets: list[dict], q: str | None, search: ImageSearch | None,
                     pagination: Pagination, kind: str | None = None) -> IndexPage:
    """Runs page `pagination.page` (or, when q is given, search hits page `pagination.page`, read
    for that Pagination.window) of `pagination.per_page`. runs: every run summary of the
    chosen `kind` (None: all), newest first (auditor.store.runs.run_summaries); datasets: every
    dataset row; q: search_text's."""
    runs_pagination = Pagination(page=1 if q else pagination.page, per_page=pagination.per_page, total=len(runs))
    hits, hits_pagination = [], None
    if q is not None:
        hits_pagination = pagination.of(search.total)
        hits = [SearchHit(**hit) for hit in search.hits]
    return IndexPage(runs=runs_pagination.slice(runs), runs_pagination=runs_pagination, datasets=datasets, q=q,
                     hits=hits, hits_pagination=hits_pagination, kind=kind)
