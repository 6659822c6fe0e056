"""Jobs: submit PSPC sampling to run in the background, then poll its status and progress."""

from __future__ import annotations

from typing import Any, Literal

from fastapi import APIRouter, Body, Depends, Path, Query, Request, Response
from fastapi.responses import PlainTextResponse
from pydantic import BaseModel, Field

from auditor.service.api.common import MAX_ID, Page, Pagination, UtcDateTime, errors, page
from auditor.service.api.runs import RunStatus
from auditor.service.auth import require_scope
from auditor.service.jobs import JOB_STATUSES, SampleJobRequest

router = APIRouter(tags=["jobs"])
read = [Depends(require_scope("read"))]
submit = [Depends(require_scope("submit"))]
JobId = Path(ge=1, le=MAX_ID, description="job id")
JobState = Literal[JOB_STATUSES]


class JobProgress(BaseModel):
    steps_recorded: int = Field(ge=0, description="sampling steps stored so far (all samples of a step at once)")
    steps_planned: int | None = Field(None, ge=0)
    run_status: RunStatus | None = Field(None, description="status of the job's run, once it exists")


class JobStatus(BaseModel):
    id: int = Field(ge=1)
    kind: Literal["sample"]
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


@router.post("/jobs", response_model=JobStatus, status_code=202, dependencies=submit,
             responses=errors(400, 404, 413, 422),
             summary="Submit PSPC sampling on a stored dataset (runs in the background; needs scope submit)")
def submit_job(request: Request, response: Response, body: SampleJobRequest = Body()):
    job = request.app.state.jobs.submit(body)
    response.headers["Location"] = str(request.url_for("get_job", job_id=job["id"]))
    return _status(request, job)


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
