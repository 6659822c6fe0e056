"""Schemathesis against the report service: the app answers what its OpenAPI schema declares.

In process (ASGI, no socket), on a small recorded store (random 8x8 images: a run of 3 samples
x 4 steps, a fidelity study, a failed job), every operation with schema-valid (positive) and
schema-violating (negative) requests, a fixed budget per operation and mode and a fixed seed
(derandomize: the same cases every run). Checks: not_a_server_error, status_code_conformance,
content_type_conformance, response_schema_conformance.

Two services:
- local single-user mode (no keys): every operation but POST /api/jobs and POST /api/jobs/{kind}
  (every kind of the registry, auditor.service.job_kinds.JOB_KINDS), which start a subprocess for
  a valid body (it writes to the store, and what it answers depends on timing);
- keys required, with a read-scope key: every operation, the job submissions and cancel included:
  they answer 403 before anything starts.
(The job request's own validation is tested in test_openapi.py and test_jobs.py.)
"""

from __future__ import annotations

import json
import shutil
import time

import pytest
from hypothesis import HealthCheck, Phase, given, settings

from auditor.service.app import ServiceSettings, create_app
from auditor.service.auth import create_key
from auditor.service.job_kinds import JOB_KINDS
from auditor.service.jobs import SampleJobRequest
from auditor.store import jobs as job_rows
from auditor.store import studies
from tests.support.store import study_result

schemathesis = pytest.importorskip("schemathesis")
from schemathesis import GenerationMode  # noqa: E402
from schemathesis.checks import (content_type_conformance, not_a_server_error,  # noqa: E402
                                 response_schema_conformance, status_code_conformance)
from schemathesis.core.failures import FailureGroup  # noqa: E402 - what call_and_validate raises

CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]
EXAMPLES = {"local": 12, "keys": 5}  # per operation and generation mode
# the job submissions, fuzzed only where the key's scope refuses them
MUTATING = {("POST", "/api/jobs"), *(("POST", f"/api/jobs/{kind}") for kind in JOB_KINDS)}


@pytest.fixture(scope="module")
def store(recorded_random, tmp_path_factory):
    path = tmp_path_factory.mktemp("schemathesis") / "provenance.duckdb"
    shutil.copy(recorded_random.db, path)
    studies.store_study(path, study_result())
    job = job_rows.insert_job(path, "sample", json.dumps(SampleJobRequest(dataset_id=1).model_dump()))
    job_rows.finish_job(path, job, "failed", "stopped by the test")
    return path


def _fuzz(app, mode: str, headers: dict, skip: set) -> tuple[int, list[str]]:
    """(cases run, failures) of every operation of the app's schema, positive and negative."""
    schema = schemathesis.openapi.from_asgi("/api/openapi.json", app, headers=headers)
    cases, failures = 0, []
    for result in schema.get_all_operations():
        operation = result.ok()
        if (operation.method.upper(), operation.path) in skip:
            continue
        has_inputs = any(True for _ in operation.iter_parameters()) or operation.body
        for generation in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE) if has_inputs else (
                GenerationMode.POSITIVE,):

            @given(operation.as_strategy(generation))
            @settings(max_examples=EXAMPLES[mode], derandomize=True, database=None, deadline=None,
                      phases=[Phase.explicit, Phase.generate], suppress_health_check=list(HealthCheck))
            def run(case):
                nonlocal cases
                cases += 1
                case.call_and_validate(headers=headers, checks=CHECKS)

            try:
                run()
            except (Exception, FailureGroup) as exc:  # noqa: BLE001 - every operation runs; failures listed at the end
                failures.append(f"{mode} {generation.value} {operation.label}: {exc}")
    return cases, failures


@pytest.mark.slow
def test_the_service_answers_what_its_openapi_schema_declares(store, tmp_path):
    started = time.perf_counter()
    local = create_app(ServiceSettings(db_path=store, sql_time_limit_s=1.0, jobs_dir=tmp_path / "jobs"))
    local_cases, failures = _fuzz(local, "local", {}, MUTATING)

    keyed_store = tmp_path / "keys.duckdb"
    shutil.copy(store, keyed_store)
    _, token = create_key(keyed_store, "schemathesis", scopes=("read",))
    keyed = create_app(ServiceSettings(db_path=keyed_store, sql_time_limit_s=1.0, jobs_dir=tmp_path / "jobs"))
    keyed_cases, keyed_failures = _fuzz(keyed, "keys", {"Authorization": f"Bearer {token}"}, set())
    failures += keyed_failures

    print(f"\nschemathesis: {local_cases} cases without keys, {keyed_cases} with a read key, "
          f"{time.perf_counter() - started:.1f} s")
    assert not failures, "\n\n".join(failures)
    assert job_rows.list_jobs(keyed_store)[1] == job_rows.list_jobs(store)[1] == 1  # no job was started
