"""The HTML pages of the report service (rendered from reports/): a thin layer over reports.context.

  /                                                  runs, datasets, search by training image id or source URI
  /runs/{run_id}                                     a run: gallery of samples, reproducibility record
  /runs/{run_id}/samples/{sample_index}              the sample report (?step= picks the maps' step)
  /runs/{run_id}/samples/{sample_index}/export.html  the report as one self-contained file (download)
  /runs/{run_id}/samples/{sample_index}/export.json  the report's data as JSON (what the page shows)
  /runs/{run_id}/samples/{sample_index}/export.csv   its attribution as CSV
  /datasets/{dataset_id}/images/{image_index}        a training image and every use of it
  /sql                                               read-only SQL with the documented example queries
  /fidelity                                          stored fidelity studies (denoisers against a network)
  /fidelity/{study_id}                               a study: MSE tables and plots, concentration, similarity

Every route needs the `read` scope (auditor.service.auth; pages also accept ?key= and the cookie).
Errors are HTML pages here (404 for unknown ids, 400 for bad parameters, 401/403 for keys,
503 when the store stays locked), where the JSON API answers JSON.
"""

from __future__ import annotations

import logging
from typing import Callable

from fastapi import APIRouter, Depends, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, PlainTextResponse, Response
from fastapi.routing import APIRoute

from reports import context, render

from auditor.service.auth import AccessDenied, get_settings, require_scope
from auditor.store.database import LockedError, NotFoundError, SchemaError, StoreError

__all__ = ["router"]

log = logging.getLogger("auditor.pages")


def _links(request: Request) -> render.Links:
    return render.Links(request.scope.get("root_path", ""))


def _error_page(request: Request, status: int, message: str, headers: dict | None = None) -> HTMLResponse:
    settings = getattr(request.app.state, "settings", None)
    if settings is not None:  # the store's path on the server is none of the reader's business
        message = message.replace(f"{settings.db_path}: ", "").replace(str(settings.db_path), "the store")
    return HTMLResponse(render.render_error(status, message, _links(request)), status_code=status, headers=headers)


class PageRoute(APIRoute):
    """Renders the library's errors (and failed key checks) as HTML error pages."""

    def get_route_handler(self) -> Callable:
        handler = super().get_route_handler()

        async def route(request: Request) -> Response:
            try:
                return await handler(request)
            except AccessDenied as exc:
                headers = {"WWW-Authenticate": 'Bearer realm="auditor"'} if exc.status == 401 else None
                message = exc.message
                if exc.status == 401:
                    message += ". In a browser, open the page once with ?key=<your key>."
                return _error_page(request, exc.status, message, headers)
            except NotFoundError as exc:
                return _error_page(request, 404, str(exc))
            except LockedError as exc:
                return _error_page(request, 503, str(exc), {"Retry-After": "1"})
            except SchemaError as exc:
                fixable = "auditor db upgrade" in str(exc) or "upgrade auditor" in str(exc)
                return _error_page(request, 409 if fixable else 500, str(exc))
            except (StoreError, ValueError) as exc:
                return _error_page(request, 400, str(exc))
            except RequestValidationError as exc:
                parts = [f"{'.'.join(str(p) for p in e.get('loc', ())[1:]) or 'request'}: {e.get('msg', 'invalid')}"
                         for e in exc.errors()]
                return _error_page(request, 400, "; ".join(parts) or "invalid request")

        return route


router = APIRouter(route_class=PageRoute, dependencies=[Depends(require_scope("read", browser=True))],
                   include_in_schema=False)

PAGE = Query(1, ge=1, le=10**6, description="page number, from 1")


def _html(body: str) -> HTMLResponse:
    return HTMLResponse(body, headers={"Cache-Control": "no-store"})


@router.get("/", response_class=HTMLResponse)
def index_page(request: Request, q: str | None = Query(None, max_length=1000), page: int = PAGE,
               per_page: int = Query(20, ge=1, le=context.MAX_PER_PAGE), settings=Depends(get_settings)):
    built = context.build_index_page(settings.db_path, q=q, page=page, per_page=per_page,
                                     timeout=settings.lock_timeout)
    return _html(render.render_page(built, _links(request)))


@router.get("/runs/{run_id}", response_class=HTMLResponse)
def run_page(request: Request, run_id: int, page: int = PAGE,
             per_page: int = Query(24, ge=1, le=context.MAX_PER_PAGE), settings=Depends(get_settings)):
    built = context.build_run_page(settings.db_path, run_id, page=page, per_page=per_page,
                                   timeout=settings.lock_timeout)
    return _html(render.render_page(built, _links(request)))


def _report(settings, run_id: int, sample_index: int, step: int | None, concentration: str,
            all_steps: bool = False) -> context.SampleReport:
    return context.build_sample_report(settings.db_path, run_id, sample_index, step=step, concentration=concentration,
                                       all_steps=all_steps, timeout=settings.lock_timeout)


STEP = Query(None, ge=0, le=10**6, description="the step whose attribution maps are shown (default: the final step)")
CONCENTRATION = Query("top1", pattern="^(top1|entropy)$", description="concentration map: top1 or entropy")


@router.get("/runs/{run_id}/samples/{sample_index}", response_class=HTMLResponse)
def sample_page(request: Request, run_id: int, sample_index: int, step: int | None = STEP,
                concentration: str = CONCENTRATION, settings=Depends(get_settings)):
    report = _report(settings, run_id, sample_index, step, concentration)
    return _html(render.render_sample(report, _links(request)))


def _download(name: str) -> dict:
    return {"Content-Disposition": f'attachment; filename="{name}"', "Cache-Control": "no-store"}


@router.get("/runs/{run_id}/samples/{sample_index}/export.html", response_class=HTMLResponse)
def export_html(run_id: int, sample_index: int, step: int | None = STEP, concentration: str = CONCENTRATION,
                settings=Depends(get_settings)):
    report = _report(settings, run_id, sample_index, step, concentration, all_steps=True)
    return HTMLResponse(render.export_html(report),
                        headers=_download(f"pspc-report-run{run_id}-sample{sample_index}.html"))


@router.get("/runs/{run_id}/samples/{sample_index}/export.json")
def export_json(run_id: int, sample_index: int, step: int | None = STEP, concentration: str = CONCENTRATION,
                images: str = Query("data-uri", pattern="^(data-uri|none)$",
                                    description="data-uri: images inline as PNG data: URIs; none: left out"),
                settings=Depends(get_settings)):
    report = _report(settings, run_id, sample_index, step, concentration)
    return Response(render.report_json(report, images), media_type="application/json",
                    headers=_download(f"pspc-report-run{run_id}-sample{sample_index}.json"))


@router.get("/runs/{run_id}/samples/{sample_index}/export.csv")
def export_csv(run_id: int, sample_index: int, settings=Depends(get_settings)):
    report = _report(settings, run_id, sample_index, None, "top1")
    return PlainTextResponse(render.report_csv(report), media_type="text/csv; charset=utf-8",
                             headers=_download(f"pspc-report-run{run_id}-sample{sample_index}.csv"))


@router.get("/datasets/{dataset_id}/images/{image_index}", response_class=HTMLResponse)
def training_image_page(request: Request, dataset_id: int, image_index: int, page: int = PAGE,
                        per_page: int = Query(20, ge=1, le=context.MAX_PER_PAGE), settings=Depends(get_settings)):
    built = context.build_training_image_page(settings.db_path, dataset_id, image_index, page=page, per_page=per_page,
                                              timeout=settings.lock_timeout)
    return _html(render.render_page(built, _links(request)))


@router.get("/fidelity", response_class=HTMLResponse)
def fidelity_list_page(request: Request, page: int = PAGE,
                       per_page: int = Query(20, ge=1, le=context.MAX_PER_PAGE), settings=Depends(get_settings)):
    built = context.build_fidelity_list_page(settings.db_path, page=page, per_page=per_page,
                                             timeout=settings.lock_timeout)
    return _html(render.render_page(built, _links(request)))


@router.get("/fidelity/{study_id}", response_class=HTMLResponse)
def fidelity_page(request: Request, study_id: int, settings=Depends(get_settings)):
    built = context.build_fidelity_page(settings.db_path, study_id, timeout=settings.lock_timeout)
    return _html(render.render_fidelity(built, _links(request)))


@router.get("/sql", response_class=HTMLResponse)
def sql_page(request: Request, sql: str | None = Query(None, max_length=100_000), settings=Depends(get_settings)):
    built = context.build_sql_page(settings.db_path, sql, max_rows=settings.sql_row_cap,
                                   query_timeout=settings.sql_time_limit_s, timeout=settings.lock_timeout)
    status = (403 if built.refused else 400) if built.error else 200
    return HTMLResponse(render.render_page(built, _links(request)), status_code=status,
                        headers={"Cache-Control": "no-store"})
