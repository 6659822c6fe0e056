"""Jobs: submit sampling, a network comparison or an audit of an uploaded image to run in the
background (one route per kind of auditor.service.job_kinds.JOB_KINDS: POST /api/jobs/{kind};
POST /api/jobs is sampling, as before), then poll its status, progress and log, or cancel it."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Body, Depends, Form, Path, Query, Request, Response
from fastapi.responses import PlainTextResponse
from pydantic import BaseModel, Field
from starlette.datastructures import UploadFile  # what a form field holds (fastapi.UploadFile is a subclass)

from auditor.service.api.common import MAX_ID, Page, Pagination, UtcDateTime, errors, page
from auditor.service.api.runs import RunStatus
from auditor.service.auth import require_scope
from auditor.service.job_kinds import JOB_KINDS, JobKind
from auditor.service.jobs import JOB_STATUSES, SampleJobRequest

router = APIRouter(tags=["jobs"])
read = [Depends(require_scope("read"))]
submit = [Depends(require_scope("submit"))]
JobId = Path(ge=1, le=MAX_ID, description="job id")
JobState = Literal[JOB_STATUSES]
SUBMITTED = dict(status_code=202, dependencies=submit, responses=errors(400, 404, 413, 422))  # every submit route


class JobProgress(BaseModel):
    steps_recorded: int = Field(ge=0, description="steps of the job's run stored so far (all samples of a step at "
                                                  "once; a comparison's: its network-explained run)")
    steps_planned: int | None = Field(None, ge=0)
    run_status: RunStatus | None = Field(None, description="status of the job's run, once it exists")


class JobStatus(BaseModel):
    id: int = Field(ge=1)
    kind: Literal[tuple(JOB_KINDS)]
    status: JobState
    request: dict[str, Any] = Field(description="the validated request")
    run_id: int | None = Field(None, ge=1, description="the run the job records, once created")
    pid: int | None = Field(None, ge=1)
    created_at: UtcDateTime
    started_at: UtcDateTime | None = None
    finished_at: UtcDateTime | None = None
    error: str | None = Field(None, description="why it failed or was cancelled: what happened, its run's state and "
                                                "the last lines of its log (no server paths, no tracebacks)")
    progress: JobProgress
    links: dict[str, str] = Field(default_factory=dict)


def _status(request: Request, job: dict, with_progress: bool = True) -> dict:
    runner = request.app.state.jobs
    progress = runner.progress(job) if with_progress else {"steps_recorded": 0, "steps_planned": None}
    links = {"self": str(request.url_for("get_job", job_id=job["id"])),
             "log": str(request.url_for("job_log", job_id=job["id"]))}
    if job["run_id"] is not None:
        links["run"] = str(request.url_for("get_run", run_id=job["run_id"]))
        links["page"] = f"/runs/{job['run_id']}"
        if job["status"] == "complete":
            links["first_report"] = str(request.url_for("sample_report", run_id=job["run_id"], sample_index=0))
    return {**{k: v for k, v in job.items() if k != "log_path"}, "progress": progress, "links": links}


def _submitted(request: Request, response: Response, job: dict) -> dict:
    response.headers["Location"] = str(request.url_for("get_job", job_id=job["id"]))
    return _status(request, job)


@router.post("/jobs", response_model=JobStatus, **SUBMITTED,
             summary="Submit PSPC sampling on a stored dataset (as POST /api/jobs/sample; runs in the background; "
                     "needs scope submit)")
def submit_job(request: Request, response: Response, body: SampleJobRequest = Body()):
    return _submitted(request, response, request.app.state.jobs.submit(body))


def _add_submit_route(kind: JobKind) -> None:
    """POST /api/jobs/{kind.name}: a JSON body of the kind's request, or the kind's multipart
    form when it comes with files (each UploadFile field is kept by sha256, JobRunner.submit_upload)."""

    def submit_json(request: Request, response: Response, body):
        return _submitted(request, response, request.app.state.jobs.submit(body))

    def submit_form(request: Request, response: Response, body):
        files = {name: (value.file.read(), value.filename) for name, value in body if isinstance(value, UploadFile)}
        return _submitted(request, response, request.app.state.jobs.submit_upload(kind.name, body, files))

    handler = submit_json if kind.upload is None else submit_form
    body = Annotated[kind.request, Body()] if kind.upload is None else Annotated[
        kind.upload, Form(media_type="multipart/form-data")]
    handler.__annotations__ = {"request": Request, "response": Response, "body": body}
    handler.__name__ = f"submit_{kind.name}_job"
    router.add_api_route(f"/jobs/{kind.name}", handler, methods=["POST"], response_model=JobStatus, **SUBMITTED,
                         summary=f"{kind.summary} (runs in the background; needs scope submit)",
                         description=(kind.request.__doc__ or "").strip())


for _kind in JOB_KINDS.values():
    _add_submit_route(_kind)


@router.get("/jobs", response_model=Page[JobStatus], dependencies=read, responses=errors(400, 422),
            summary="Jobs, newest first")
def list_jobs(request: Request, pagination: Pagination = Depends(),
              status: JobState | None = Query(None, description="only jobs with this status")):
    jobs, total = request.app.state.jobs.list(status=status, limit=pagination.limit, offset=pagination.offset)
    return page(request, [_status(request, j, with_progress=j["status"] == "running") for j in jobs], total,
                pagination)


@router.get("/jobs/{job_id}", response_model=JobStatus, dependencies=read, responses=errors(400, 404, 422),
            summary="A job's status and progress")
def get_job(request: Request, job_id: int = JobId):
    return _status(request, request.app.state.jobs.get(job_id))


@router.get("/jobs/{job_id}/log", response_class=Response, dependencies=read,  # errors stay JSON (common.errors)
            responses={200: {"content": {"text/plain": {"schema": {"type": "string"}}}}, **errors(400, 404, 422)},
            summary="The end of the job's log (the subprocess's output; server paths cut to their last part, "
                    "tracebacks left out)")
def job_log(request: Request, job_id: int = JobId,
            max_bytes: int = Query(4000, ge=1, le=1_000_000, description="at most this many bytes from the end")):
    return PlainTextResponse(request.app.state.jobs.log_tail(job_id, max_bytes))


@router.post("/jobs/{job_id}/cancel", response_model=JobStatus, dependencies=submit, responses=errors(400, 404, 422),
             summary="Cancel a queued job or interrupt a running one (its run is marked failed, resumable)")
def cancel_job(request: Request, job_id: int = JobId):
    return _status(request, request.app.state.jobs.cancel(job_id))
