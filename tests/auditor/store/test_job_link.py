"""Every run kind links itself to the service's job that its process runs (auditor.store.runs.
create_run reads AUDITOR_JOB_ID itself), so a comparison's or an audit's job knows its run
exactly: the first run the job creates (a comparison's network-explained run, made before its
PSPC runs), not whichever run happened to pass the job id along."""

from __future__ import annotations

import json

from auditor.store import datasets, runs
from auditor.store import jobs as job_rows
from tests.support.data import random_set


def test_every_run_kind_links_the_job_of_its_process(empty_db, monkeypatch):
    datasets.ingest(empty_db, random_set())
    job_id = job_rows.insert_job(empty_db, "compare", json.dumps({"dataset_id": 1}))
    monkeypatch.setenv(job_rows.JOB_ENV, str(job_id))
    made = [runs.create_run(empty_db, 1, denoiser={"kind": "pspc-square"}, sampler={"num_steps": 3}, seed=0,
                            num_samples=1, top_k=4, mass=1.0, kind=kind)
            for kind in ("network-explained", "pspc", "samples-only")]  # as a comparison makes them, no job_id given
    assert job_rows.get_job(empty_db, job_id)["run_id"] == made[0]
    monkeypatch.delenv(job_rows.JOB_ENV)
    other = job_rows.insert_job(empty_db, "audit", json.dumps({"dataset_id": 1}))
    runs.create_run(empty_db, 1, denoiser={"kind": "pspc-square"}, sampler={"num_steps": 3}, seed=0, num_samples=1,
                    top_k=4, mass=1.0, kind="external-audit")  # outside a job: links nothing
    assert job_rows.get_job(empty_db, other)["run_id"] is None
