"""The HTML pages of the report service (rendered from reports/): each route reads its read model
from the store (auditor.store.read_models), builds the page (reports.pages) and renders it
(reports.render).

  /                                                  runs, datasets, search by training image id or source URI
  /runs/{run_id}                                     a run: gallery of samples, reproducibility record
  /runs/{run_id}/samples/{sample_index}              the sample report (?step= picks the maps' step)
  /runs/{run_id}/samples/{sample_index}/export.html  the report as one self-contained file (download)
  /runs/{run_id}/samples/{sample_index}/export.json  the report's data as JSON (what the page shows)
  /runs/{run_id}/samples/{sample_index}/export.csv   its attribution as CSV
  /datasets/{dataset_id}/images/{image_index}        a training image and every use of it
  /datasets/{dataset_id}/images/{image_index}/export.csv|json   every output that used it (rights holder's export)
  /sql                                               read-only SQL with the documented example queries
  /fidelity                                          stored fidelity studies (denoisers against a network)
  /fidelity/{study_id}                               a study: MSE tables and plots, concentration, similarity

The page contexts (`index_context`, `run_context`, `sample_report`, `training_image_context`,
`sql_context`, `fidelity_list_context`, `fidelity_context`) are what the routes render and
what the JSON API's report endpoint serves.

Every route needs the `read` scope (auditor.service.auth; pages also accept ?key= and the cookie).
Errors are HTML pages here (404 for unknown ids, 400 for bad parameters, 401/403 for keys,
503 when the store stays locked), where the JSON API answers JSON.
"""

from __future__ import annotations

import functools
import logging
import time
from typing import Callable

from fastapi import APIRouter, Depends, Path, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, PlainTextResponse, Response
from fastapi.routing import APIRoute

from auditor.service.limits import MAX_ID
from auditor.service.auth import AccessDenied, get_settings, require_scope
from auditor.service.errors import public_message
from auditor.service.login import return_path
from auditor.store import comparisons, datasets, query, studies
from auditor.errors import AuditorError, NotFoundError, StoreError, outcome
from auditor.store.database import DEFAULT_TIMEOUT
from auditor.store.example_queries import EXAMPLE_QUERIES
from auditor.store.read_models import index as index_data, runs as run_data, sample as sample_data
from auditor.store.read_models.counterfactual import load_sample_counterfactuals
from auditor.store.read_models import training_images as training_image_data
from auditor.store.read_models.common import integer_id
from auditor.workflows.fidelity import FINDING_RANGE
from pspc.errors import InputError
from reports import render
from reports.pages import fidelity, index, run, sample, training_image
from reports.pages import sql as sql_pages
from reports.pages.common import MAX_PER_PAGE, Pagination
from reports.pages.network import NetworkComparison, network_comparison

__all__ = ["fidelity_context", "fidelity_list_context", "index_context", "router", "run_context", "sample_report",
           "sql_context", "training_image_context"]

log = logging.getLogger("auditor.pages")


def _links(request: Request) -> render.Links:
    return render.Links(request.scope.get("root_path", ""))


def _error_page(request: Request, status: int, message: str, headers: dict | None = None,
                login_next: str | None = None) -> HTMLResponse:
    # the store's path on the server (and any traceback) is none of the reader's business
    message = public_message(message, getattr(request.app.state, "settings", None))
    return HTMLResponse(render.render_error(status, message, _links(request), login_next=login_next),
                        status_code=status, headers=headers)


class PageRoute(APIRoute):
    """Renders the library's errors (and failed key checks) as HTML error pages."""

    def get_route_handler(self) -> Callable:
        handler = super().get_route_handler()

        async def route(request: Request) -> Response:
            try:
                return await handler(request)
            except AccessDenied as exc:
                headers = {"WWW-Authenticate": 'Bearer realm="auditor"'} if exc.status == 401 else None
                if exc.status == 401:  # the page holds the sign-in form (auditor.service.login)
                    return _error_page(request, 401, exc.message + ". Sign in with your key:", headers,
                                       login_next=return_path(request))
                return _error_page(request, exc.status, exc.message, headers)
            except (AuditorError, InputError) as exc:  # the one table: user errors get their status
                result = outcome(exc)
                if not result.user:
                    raise
                return _error_page(request, result.status, str(exc), dict(result.headers) or None)
            except RequestValidationError as exc:
                parts = [f"{'.'.join(str(p) for p in e.get('loc', ())[1:]) or 'request'}: {e.get('msg', 'invalid')}"
                         for e in exc.errors()]
                return _error_page(request, 400, "; ".join(parts) or "invalid request")

        return route


# ---------------------------------------------------------------------------------------
# Page contexts: read model from the store -> page (reports.pages)
# ---------------------------------------------------------------------------------------
def index_context(db_path, *, q: str | None = None, page: int = 1, per_page: int = 20, kind: str | None = None,
                  timeout: float = DEFAULT_TIMEOUT) -> index.IndexPage:
    """Runs page `page` (or search hits page `page` when q is given) of `per_page`; kind: only runs
    of this kind (auditor.store.run_kinds: sample, network-explained, audit)."""
    window = Pagination.window(page, per_page)
    q = index.search_text(q)
    data = index_data.load_index(db_path, q=q, limit=window.per_page, offset=window.offset, kind=kind,
                                 timeout=timeout)
    return index.build_index_page(runs=data.runs, datasets=data.datasets, q=q, search=data.search, pagination=window,
                                  kind=kind)


def run_context(db_path, run_id: int, *, page: int = 1, per_page: int = 24,
                timeout: float = DEFAULT_TIMEOUT) -> run.RunPage:
    """Run `run_id` with samples page `page` of `per_page`. NotFoundError for an unknown run."""
    window = Pagination.window(page, per_page)
    data = run_data.load_run_page(db_path, run_id, limit=window.per_page, offset=window.offset, timeout=timeout)
    return run.build_run_page(data, pagination=window)


def sample_report(db_path, run_id: int, sample_index: int, *, step: int | None = None, top: int = 10,
                  step_top: int = 3, patches: int = 12, drilldown_top: int = 5, all_steps: bool = False,
                  concentration: str = "top1", network: NetworkComparison | None | str = "auto",
                  timeout: float = DEFAULT_TIMEOUT) -> sample.SampleReport:
    """The report on sample `sample_index` of run `run_id` (options: reports.pages.sample.build_sample_report).

    network: 'auto' reads the sample's network comparison (auditor.store.comparisons.sample_counterpart),
    None leaves the section out, or pass a NetworkComparison. The counterfactual panel (of a
    counterfactual run) or list (of any other sample) is read the same way
    (auditor.store.read_models.counterfactual). The store is read in one short
    read-only transaction; the report of a complete run is kept per process
    (auditor.store.read_models.sample.build_cached) and shared: treat it as read-only.
    NotFoundError for an unknown run, sample or step; UserError for bad options."""
    started = time.perf_counter()
    options = dict(step=step, top=top, step_top=step_top, patches=patches, drilldown_top=drilldown_top,
                   all_steps=all_steps, concentration=concentration)
    sample.check_report_options(**options)
    if isinstance(network, str) and network != "auto":
        raise ValueError(f"network must be 'auto', None or a NetworkComparison, got {network!r}")

    def build(data) -> sample.SampleReport:
        shown = network
        if isinstance(network, str):  # 'auto'
            shown = network_comparison(comparisons.sample_counterpart(
                db_path, data.run["id"], data.sample_index, timeout=timeout))
        found = load_sample_counterfactuals(db_path, data.run, data.dataset, data.sample_index, timeout=timeout)
        return sample.build_sample_report(data, network=shown, counterfactuals=found, started=started, **options)

    cacheable = network is None or isinstance(network, str)
    return sample_data.build_cached(db_path, run_id, sample_index, build,
                                    options=("sample-report", *options.values(), network) if cacheable else None,
                                    images=lambda data: sample.report_images(data, **options), timeout=timeout)


def training_image_context(db_path, dataset_id: int, image_index: int, *, page: int = 1, per_page: int = 20,
                           locations: int = 8, include_audits: bool = False,
                           timeout: float = DEFAULT_TIMEOUT) -> training_image.TrainingImagePage:
    """Training image `image_index` of dataset `dataset_id` and every use of it by an output (and
    by an audit with include_audits), samples page `page` of `per_page` by largest final share.
    NotFoundError for unknown ids."""
    window = Pagination.window(page, per_page)
    data = training_image_data.load_training_image(db_path, dataset_id, image_index, limit=window.per_page,
                                                   offset=window.offset, include_audits=include_audits,
                                                   timeout=timeout)
    return training_image.build_training_image_page(data, pagination=window, locations=locations)


def sql_context(db_path, sql_text: str | None = None, *, max_rows: int = 1000, query_timeout: float = 5.0,
                max_bytes: int = query.DEFAULT_MAX_BYTES, timeout: float = DEFAULT_TIMEOUT) -> sql_pages.SqlPage:
    """Run `sql_text` (one read-only statement, auditor.store.query.run_query; none: just the form)
    with at most `max_rows` rows and `max_bytes` bytes, query and display cells within
    `query_timeout` seconds. A refused or failing statement gives the page with `error` set (the
    store's message), never an exception."""
    statement = sql_pages.sql_text(sql_text)
    built = functools.partial(sql_pages.build_sql_page, sql=statement, examples=EXAMPLE_QUERIES, max_rows=max_rows,
                              time_limit_s=query_timeout)
    if statement is None:
        return built()
    started = time.perf_counter()
    try:
        result = query.run_query(db_path, statement, max_rows=max_rows, timeout=timeout, query_timeout=query_timeout,
                                 max_bytes=max_bytes)
        elapsed_ms = round((time.perf_counter() - started) * 1000, 1)
        return built(columns=result.columns, rows=query.timed(result.rows, result.time_limit),  # cells within the limit
                     truncated=result.truncated, elapsed_ms=elapsed_ms)
    except NotFoundError:
        raise
    except StoreError as exc:
        return built(error=str(exc), refused=isinstance(exc, query.Refused),
                     elapsed_ms=round((time.perf_counter() - started) * 1000, 1))


def fidelity_list_context(db_path, *, page: int = 1, per_page: int = 20,
                          timeout: float = DEFAULT_TIMEOUT) -> fidelity.FidelityListPage:
    """Page `page` of the stored fidelity studies (auditor.store.studies.list_studies), newest first."""
    window = Pagination.window(page, per_page)
    return fidelity.build_fidelity_list_page(studies.list_studies(db_path, timeout=timeout), pagination=window)


def fidelity_context(db_path, study_id: int, *, timeout: float = DEFAULT_TIMEOUT) -> fidelity.FidelityPage:
    """Study `study_id` (auditor.store.studies.load_study). NotFoundError for an unknown id."""
    study = studies.load_study(db_path, integer_id(study_id, "fidelity study id"), timeout=timeout)
    return fidelity.build_fidelity_page(study, finding_range=FINDING_RANGE,
                                        datasets=datasets.list_datasets(db_path, timeout=timeout))


# ---------------------------------------------------------------------------------------
# Routes
# ---------------------------------------------------------------------------------------
router = APIRouter(route_class=PageRoute, dependencies=[Depends(require_scope("read", browser=True))],
                   include_in_schema=False)

PAGE = Query(1, ge=1, le=10**6, description="page number, from 1")
# ids and indices in the path: bounded so that a number beyond the store's int64 columns is a 400
RUN_ID = Path(le=MAX_ID, description="run id")
SAMPLE_INDEX = Path(le=MAX_ID, description="sample index within the run")
DATASET_ID = Path(le=MAX_ID, description="dataset id")
IMAGE_INDEX = Path(le=MAX_ID, description="training image index")
STUDY_ID = Path(le=MAX_ID, description="fidelity study id")
INCLUDE_AUDITS = Query(False, description="count audits of outside images too (default: outputs only)")


def _html(body: str) -> HTMLResponse:
    return HTMLResponse(body, headers={"Cache-Control": "no-store"})


@router.get("/", response_class=HTMLResponse)
def index_page(request: Request, q: str | None = Query(None, max_length=1000), page: int = PAGE,
               per_page: int = Query(20, ge=1, le=MAX_PER_PAGE), kind: str | None = Query(None, max_length=100),
               settings=Depends(get_settings)):
    built = index_context(settings.db_path, q=q, page=page, per_page=per_page, kind=kind,
                          timeout=settings.lock_timeout)
    return _html(render.render_page(built, _links(request)))


@router.get("/runs/{run_id}", response_class=HTMLResponse)
def run_page(request: Request, run_id: int = RUN_ID, page: int = PAGE,
             per_page: int = Query(24, ge=1, le=MAX_PER_PAGE), settings=Depends(get_settings)):
    built = run_context(settings.db_path, run_id, page=page, per_page=per_page, timeout=settings.lock_timeout)
    return _html(render.render_page(built, _links(request)))


def _report(settings, run_id: int, sample_index: int, step: int | None, concentration: str,
            all_steps: bool = False) -> sample.SampleReport:
    return sample_report(settings.db_path, run_id, sample_index, step=step, concentration=concentration,
                         all_steps=all_steps, timeout=settings.lock_timeout)


STEP = Query(None, ge=0, le=10**6, description="the step whose attribution maps are shown (default: the final step)")
CONCENTRATION = Query("top1", pattern="^(top1|entropy)$", description="concentration map: top1 or entropy")


@router.get("/runs/{run_id}/samples/{sample_index}", response_class=HTMLResponse)
def sample_page(request: Request, run_id: int = RUN_ID, sample_index: int = SAMPLE_INDEX, step: int | None = STEP,
                concentration: str = CONCENTRATION, settings=Depends(get_settings)):
    report = _report(settings, run_id, sample_index, step, concentration)
    return _html(render.render_sample(report, _links(request)))


def _download(name: str) -> dict:
    return {"Content-Disposition": f'attachment; filename="{name}"', "Cache-Control": "no-store"}


@router.get("/runs/{run_id}/samples/{sample_index}/export.html", response_class=HTMLResponse)
def export_html(run_id: int = RUN_ID, sample_index: int = SAMPLE_INDEX, step: int | None = STEP, concentration: str = CONCENTRATION,
                settings=Depends(get_settings)):
    report = _report(settings, run_id, sample_index, step, concentration, all_steps=True)
    return HTMLResponse(render.export_html(report),
                        headers=_download(f"pspc-report-run{run_id}-sample{sample_index}.html"))


@router.get("/runs/{run_id}/samples/{sample_index}/export.json")
def export_json(run_id: int = RUN_ID, sample_index: int = SAMPLE_INDEX, step: int | None = STEP, concentration: str = CONCENTRATION,
                images: str = Query("data-uri", pattern="^(data-uri|none)$",
                                    description="data-uri: images inline as PNG data: URIs; none: left out"),
                settings=Depends(get_settings)):
    report = _report(settings, run_id, sample_index, step, concentration)
    return Response(render.report_json(report, images), media_type="application/json",
                    headers=_download(f"pspc-report-run{run_id}-sample{sample_index}.json"))


@router.get("/runs/{run_id}/samples/{sample_index}/export.csv")
def export_csv(run_id: int = RUN_ID, sample_index: int = SAMPLE_INDEX, settings=Depends(get_settings)):
    report = _report(settings, run_id, sample_index, None, "top1")
    return PlainTextResponse(render.report_csv(report), media_type="text/csv; charset=utf-8",
                             headers=_download(f"pspc-report-run{run_id}-sample{sample_index}.csv"))


@router.get("/datasets/{dataset_id}/images/{image_index}", response_class=HTMLResponse)
def training_image_page(request: Request, dataset_id: int = DATASET_ID, image_index: int = IMAGE_INDEX, page: int = PAGE,
                        per_page: int = Query(20, ge=1, le=MAX_PER_PAGE), include_audits: bool = INCLUDE_AUDITS,
                        settings=Depends(get_settings)):
    built = training_image_context(settings.db_path, dataset_id, image_index, page=page, per_page=per_page,
                                   include_audits=include_audits, timeout=settings.lock_timeout)
    return _html(render.render_page(built, _links(request)))


@router.get("/datasets/{dataset_id}/images/{image_index}/export.{fmt}")
def training_image_export(dataset_id: int = DATASET_ID, image_index: int = IMAGE_INDEX,
                          fmt: str = Path(pattern="^(csv|json)$", description="csv or json"),
                          include_audits: bool = INCLUDE_AUDITS, settings=Depends(get_settings)):
    """The rights holder's export: every output that used the image, with its scores."""
    data = training_image_data.load_training_image(settings.db_path, dataset_id, image_index, limit=0, offset=0,
                                                   include_audits=include_audits, timeout=settings.lock_timeout)
    export = training_image.build_training_image_export(data)
    headers = _download(f"pspc-uses-dataset{dataset_id}-image{image_index}.{fmt}")
    if fmt == "csv":
        return PlainTextResponse(render.training_image_csv(export), media_type="text/csv; charset=utf-8",
                                 headers=headers)
    return Response(render.report_json(export, "none"), media_type="application/json", headers=headers)


@router.get("/fidelity", response_class=HTMLResponse)
def fidelity_list_page(request: Request, page: int = PAGE,
                       per_page: int = Query(20, ge=1, le=MAX_PER_PAGE), settings=Depends(get_settings)):
    built = fidelity_list_context(settings.db_path, page=page, per_page=per_page, timeout=settings.lock_timeout)
    return _html(render.render_page(built, _links(request)))


@router.get("/fidelity/{study_id}", response_class=HTMLResponse)
def fidelity_page(request: Request, study_id: int = STUDY_ID, settings=Depends(get_settings)):
    built = fidelity_context(settings.db_path, study_id, timeout=settings.lock_timeout)
    return _html(render.render_fidelity(built, _links(request)))


@router.get("/sql", response_class=HTMLResponse)
def sql_page(request: Request, sql: str | None = Query(None, max_length=100_000), settings=Depends(get_settings)):
    built = sql_context(settings.db_path, sql, max_rows=settings.sql_row_cap, query_timeout=settings.sql_time_limit_s,
                        max_bytes=settings.sql_max_bytes, timeout=settings.lock_timeout)
    if built.error:
        built.error = public_message(built.error, settings)
    status = (403 if built.refused else 400) if built.error else 200
    return HTMLResponse(render.render_page(built, _links(request)), status_code=status,
                        headers={"Cache-Control": "no-store"})
