"""A sample's provenance records for third parties (auditor.workflows.export): the PNG with a
signed C2PA manifest, the unsigned manifest archive, and the W3C PROV document (PROV-JSON,
PROV-N). The service signs with the settings' c2pa_cert and c2pa_key (AUDITOR_C2PA_CERT,
AUDITOR_C2PA_KEY); the PROV agent is the API key's name (never the key), or the local
single-user mode. Answers are built per request (a PROV document names who asked)."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Path, Query, Request
from fastapi.responses import Response
from starlette.concurrency import run_in_threadpool

from auditor.errors import ConflictError
from auditor.service.api.common import MAX_ID, errors
from auditor.service.auth import get_settings
from auditor.workflows.export import Export, ExportOptions, build_export

router = APIRouter(tags=["provenance"])

RunId = Path(ge=1, le=MAX_ID, description="run id")
SampleIndex = Path(ge=0, le=MAX_ID, description="sample index within the run (0-based)")
FOUND = errors(400, 404, 422)
LOCAL_USER = "anonymous (local single-user mode)"


def _body(media_type: str, description: str) -> dict:
    return {200: {"description": description,
                  "content": {media_type: {"schema": {"type": "string", "format": "binary"}}}}}


def _requester(request: Request):
    from auditor.exports.prov_document import Requester

    key = getattr(request.state, "api_key", None)
    return Requester(LOCAL_USER) if key is None else Requester(key.name, "api-key", key.id)


async def _answer(settings, run_id: int, sample_index: int, options: ExportOptions) -> Response:
    export: Export = await run_in_threadpool(build_export, settings.db_path, run_id, sample_index, options)
    return Response(export.data, media_type=export.media_type,
                    headers={"Content-Disposition": f'attachment; filename="{export.filename}"',
                             "Cache-Control": "no-store"})


@router.get("/runs/{run_id}/samples/{sample_index}/provenance.c2pa.png", response_class=Response,
            responses={**_body("image/png", "the sample as PNG with its signed C2PA manifest embedded"), **FOUND},
            summary="The sample with signed C2PA content credentials (409 when the service has no certificate)")
async def c2pa_png(run_id: int = RunId, sample_index: int = SampleIndex,
                   top: int = Query(10, ge=1, le=100, description="top sources in the attribution assertion"),
                   settings=Depends(get_settings)):
    from auditor.exports.signing import load_credentials

    if settings.c2pa_cert is None or settings.c2pa_key is None:
        raise ConflictError("this service signs no C2PA manifests: start it with AUDITOR_C2PA_CERT and "
                            "AUDITOR_C2PA_KEY (e.g. signer.pem and signer.key of `auditor c2pa init-ca`); the "
                            f"unsigned manifest archive is at /api/runs/{run_id}/samples/{sample_index}/"
                            "provenance.unsigned.c2pa")
    credentials = await run_in_threadpool(load_credentials, settings.c2pa_cert, settings.c2pa_key)
    return await _answer(settings, run_id, sample_index, ExportOptions(format="c2pa", top=top, credentials=credentials,
                                                                       timeout=settings.lock_timeout))


@router.get("/runs/{run_id}/samples/{sample_index}/provenance.unsigned.c2pa", response_class=Response,
            responses={**_body("application/c2pa", "an UNSIGNED C2PA manifest archive"), **FOUND},
            summary="The sample's C2PA manifest as an unsigned manifest archive")
async def c2pa_unsigned(run_id: int = RunId, sample_index: int = SampleIndex,
                        top: int = Query(10, ge=1, le=100, description="top sources in the attribution assertion"),
                        settings=Depends(get_settings)):
    return await _answer(settings, run_id, sample_index, ExportOptions(format="c2pa", top=top,
                                                                       timeout=settings.lock_timeout))


def _prov_options(request: Request, fmt: str, top: int | None, step_top: int, settings) -> ExportOptions:
    return ExportOptions(format=fmt, top=top, step_top=step_top, requester=_requester(request),
                         timeout=settings.lock_timeout)


TOP = Query(None, ge=1, le=MAX_ID, description="sources of the final image listed (default: all)")
STEP_TOP = Query(5, ge=0, le=100, description="each step's top sources")


@router.get("/runs/{run_id}/samples/{sample_index}/provenance.prov.json", response_class=Response,
            responses={200: {"description": "a W3C PROV document (PROV-JSON)",
                             "content": {"application/json": {"schema": {"type": "object"}}}}, **FOUND},
            summary="The sample's W3C PROV document, PROV-JSON")
async def prov_json(request: Request, run_id: int = RunId, sample_index: int = SampleIndex, top: int | None = TOP,
                    step_top: int = STEP_TOP, settings=Depends(get_settings)):
    return await _answer(settings, run_id, sample_index, _prov_options(request, "prov-json", top, step_top, settings))


@router.get("/runs/{run_id}/samples/{sample_index}/provenance.provn", response_class=Response,
            responses={**_body("text/provenance-notation", "a W3C PROV document (PROV-N)"), **FOUND},
            summary="The sample's W3C PROV document, PROV-N")
async def prov_n(request: Request, run_id: int = RunId, sample_index: int = SampleIndex, top: int | None = TOP,
                 step_top: int = STEP_TOP, settings=Depends(get_settings)):
    return await _answer(settings, run_id, sample_index, _prov_options(request, "prov-n", top, step_top, settings))
