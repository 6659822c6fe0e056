"""The report service's jobs: waiting for one to finish through the API."""

from __future__ import annotations

import time

import pytest

from auditor.store.jobs import FINISHED


def wait_for_job(client, job_id: int, timeout: float) -> dict:
    """GET /api/jobs/{job_id} until the job has finished (complete, failed or cancelled); fails the
    test after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        job = client.get(f"/api/jobs/{job_id}").json()
        if job["status"] in FINISHED:
            return job
        if time.monotonic() > deadline:
            pytest.fail(f"job {job_id} still {job['status']} after {timeout} s: {job}")
        time.sleep(0.1)
