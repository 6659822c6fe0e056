"""Comparison and audit jobs (auditor.service.job_kinds): POST /api/jobs/compare (JSON) and
POST /api/jobs/audit (an image upload, multipart/form-data), the same job model as sampling.

What the API takes: an upload is type-checked by its content and read as `auditor audit` reads
it, kept under the jobs folder by its sha256, refused (and not kept) when it does not fit the
dataset; the API and the command line refuse the same options (one validation: the
workflow's AuditOptions / ComparisonOptions); networks are named by file name in the service's
networks folder, never by path. The jobs' subprocesses are a stand-in script given as the
service's `python` (it receives the real `-m auditor.cli ...` arguments), except in the slow
test, which runs real `auditor compare` and `auditor audit` to completion.
"""

from __future__ import annotations

import hashlib
import io
import json
import subprocess
import sys
import time
import typing

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from auditor.service import job_kinds
from auditor.service.app import ServiceSettings, create_app
from auditor.store import database, datasets, runs
from auditor.store.recorder import utcnow
from auditor.workflows.options import KINDS, RECORDABLE_KINDS
from pspc.denoisers import DENOISER_KINDS
from pspc.networks import export_torchscript
from tests.auditor.service.test_jobs_lifecycle import stand_in
from tests.support.cli import run_cli
from tests.support.data import fashion_mnist, random_set
from tests.support.jobs import wait_for_job
from tests.support.networks import SHAPE, tiny_network
from tests.support.store import fetch

PRINTS_ITS_ARGUMENTS = """
import json, sys
print(json.dumps(sys.argv[1:]), flush=True)
"""
SLEEPS = """
import time
print("importing torch", flush=True)
time.sleep(60)
"""


@pytest.fixture
def store(empty_db):
    """A store holding the random 8x8 grey set as dataset 1."""
    datasets.ingest(empty_db, random_set())
    return empty_db


@pytest.fixture
def networks(tmp_path):
    folder = tmp_path / "networks"
    folder.mkdir()
    export_torchscript(tiny_network(), folder / "tiny.pt", SHAPE)
    return folder


def png(pixels: np.ndarray, mode: str | None = None) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels, mode).save(buffer, format="PNG")
    return buffer.getvalue()


def client_for(store, networks, tmp_path, script: str = PRINTS_ITS_ARGUMENTS, **settings) -> TestClient:
    return TestClient(create_app(ServiceSettings(db_path=store, networks_dir=networks,
                                                 python=stand_in(tmp_path, script), **settings)))


def logged_argv(client: TestClient, job_id: int) -> list[str]:
    """The stand-in's arguments, from the job's log file on the server (the API's copy cuts paths)."""
    wait_for_job(client, job_id, timeout=60)
    folder = client.app.state.settings.jobs_dir
    return json.loads((folder / f"job-{job_id}.log").read_text().splitlines()[1])


def uploads(store) -> list[str]:
    folder = store.parent / f"{store.name}.jobs" / "uploads"
    return sorted(p.name for p in folder.iterdir()) if folder.is_dir() else []


# ---------------------------------------------------------------------------------------
# Submitting: what the subprocess runs, what the job keeps
# ---------------------------------------------------------------------------------------
def test_an_audit_upload_is_kept_by_sha256_and_audited_by_the_cli(store, networks, tmp_path):
    client = client_for(store, networks, tmp_path)
    image = png(random_set().images[2, 0].numpy())
    sha256 = hashlib.sha256(image).hexdigest()
    answer = client.post("/api/jobs/audit", files={"image": ("../../secret/mine.png", image, "text/plain")},
                         data={"dataset_id": "1", "method": "direct", "noise_levels": ["1", "0.3"], "draws": "2",
                               "seed": "7", "copy_k": "0", "xflip": "false"})
    assert answer.status_code == 202, answer.text
    job = answer.json()
    assert job["kind"] == "audit" and answer.headers["location"].endswith(f"/api/jobs/{job['id']}")
    assert job["request"]["image"] == {"sha256": sha256, "format": "png", "bytes": len(image), "name": "mine.png",
                                       "width": 8, "height": 8}  # the type from the content, not the name
    assert job["progress"]["steps_planned"] == 2  # one step per noise level
    assert uploads(store) == [f"{sha256}.png"]
    kept = store.parent / f"{store.name}.jobs" / "uploads" / f"{sha256}.png"
    assert kept.read_bytes() == image and kept.stat().st_mode & 0o777 == 0o600
    argv = logged_argv(client, job["id"])
    assert argv[:7] == ["-m", "auditor.cli", "--db", str(store.resolve()), "--lock-timeout", "120", "audit"]
    assert argv[7] == str(kept.resolve())
    assert " ".join(argv[8:]) == ("--dataset 1 --no-xflip --no-network --noise-levels 1.0,0.3 --draws 2 --explainer "
                                  "pspc-square --sensitivity-draws 4 --seed 7 --top-k 16 --mass 0.99 --descriptor "
                                  "auto --thresholds 0.5,0.6 --copy-k 0")
    again = client.post("/api/jobs/audit", files={"image": ("again.png", image)},
                        data={"dataset_id": "1", "network": "tiny.pt", "steps": "4", "patch_size": "3"}).json()
    assert uploads(store) == [f"{sha256}.png"]  # the same bytes are kept once
    argv = " ".join(logged_argv(client, again["id"]))
    assert f"--network {(networks / 'tiny.pt').resolve()} --steps 4 --sampler heun" in argv
    assert "--patch-size 3" in argv and "--no-network" not in argv


def test_a_comparison_runs_the_cli_with_every_option(store, networks, tmp_path):
    client = client_for(store, networks, tmp_path)
    body = {"dataset_id": 1, "network": "tiny.pt", "num_samples": 2, "steps": 3, "sampler": "heun",
            "denoisers": ["pspc-square", "gaussian"], "explainer": "pspc-flex", "sensitivity_draws": 2,
            "descriptor": "pixel-correlation:8", "thresholds": [0.4], "copy_k": 1, "top_k": 8, "mass": 0.5}
    job = client.post("/api/jobs/compare", json=body).json()
    assert job["kind"] == "compare" and job["request"]["network"] == "tiny.pt"
    assert " ".join(logged_argv(client, job["id"])[6:]) == (
        f"compare --dataset 1 --network {(networks / 'tiny.pt').resolve()} --num 2 --steps 3 --sampler heun "
        "--denoisers pspc-square,gaussian --explainer pspc-flex --sensitivity-draws 2 --seed 0 --top-k 8 --mass 0.5 "
        "--descriptor pixel-correlation:8 --thresholds 0.4 --copy-k 1")
    assert client.get("/api/jobs", params={"status": "complete"}).json()["total"] == 0  # no run: failed
    assert client.get(f"/api/jobs/{job['id']}").json()["error"].startswith("exit status 0; no run was created")


def test_the_learned_descriptor_and_the_verdicts_descriptor_map_to_the_cli(store, networks, tmp_path):
    """fmnist-copy is the committed checkpoint; learned:NAME a file of the networks folder, by name; the
    verdict's descriptor is --verdict-descriptor, absent when the service's configuration decides."""
    (networks / "mine.pt").write_bytes(b"a learned descriptor")  # the job runs a stand-in: never loaded here
    client = client_for(store, networks, tmp_path)
    body = {"dataset_id": 1, "network": "tiny.pt", "copy_k": 2}
    job = client.post("/api/jobs/compare", json={**body, "descriptor": "fmnist-copy",
                                                 "verdict_descriptor": "learned:mine.pt"}).json()
    assert job["request"]["verdict_descriptor"] == "learned:mine.pt"
    argv = " ".join(logged_argv(client, job["id"]))
    assert "--descriptor fmnist-copy " in argv
    assert f"--verdict-descriptor learned:{(networks / 'mine.pt').resolve()}" in argv
    image = png(random_set().images[2, 0].numpy())
    audit = client.post("/api/jobs/audit", files={"image": ("x.png", image)},
                        data={"dataset_id": "1", "method": "direct", "descriptor": "learned:mine.pt",
                              "verdict_descriptor": "none"}).json()
    argv = " ".join(logged_argv(client, audit["id"]))
    assert f"--descriptor learned:{(networks / 'mine.pt').resolve()} " in argv and "--verdict-descriptor none" in argv
    plain = client.post("/api/jobs/compare", json=body).json()
    assert "--verdict-descriptor" not in logged_argv(client, plain["id"])  # configured: $PSPC_COPY_DESCRIPTOR


@pytest.mark.parametrize("field, value, status, words", [
    ("descriptor", "learned:/etc/passwd", 400, "descriptor"),
    ("descriptor", "learned:../networks/tiny.pt", 400, "descriptor"),
    ("descriptor", "learned:", 400, "descriptor"),
    ("verdict_descriptor", "sscd:/etc/passwd", 400, "verdict_descriptor"),
    ("verdict_descriptor", "learned:.hidden", 400, "verdict_descriptor"),
    ("verdict_descriptor", "learned:missing.pt", 404,
     "no learned descriptor 'missing.pt' in the service's networks folder (AUDITOR_NETWORKS_DIR); it holds: tiny.pt"),
    ("descriptor", "learned:missing.pt", 404, "no learned descriptor 'missing.pt'"),
])
def test_descriptor_files_outside_the_networks_folder_are_refused(store, networks, tmp_path, field, value, status,
                                                                 words):
    client = client_for(store, networks, tmp_path)
    answer = client.post("/api/jobs/compare", json={"dataset_id": 1, "network": "tiny.pt", field: value})
    assert answer.status_code == status and words in answer.json()["message"], answer.text
    assert str(tmp_path) not in answer.text and client.get("/api/jobs").json()["total"] == 0


# ---------------------------------------------------------------------------------------
# Refused requests: nothing queued, nothing kept
# ---------------------------------------------------------------------------------------
def _npy(array) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array)
    return buffer.getvalue()


@pytest.mark.parametrize("content, status, words", [
    (b"", 400, "the uploaded image is empty"),
    (b"GIF89a\x08\x00\x08\x00", 400, "neither a PNG, JPEG, BMP or WebP image nor a .npy array"),
    (b"#!/bin/sh\nrm -rf /\n", 400, "neither a PNG, JPEG, BMP or WebP image"),
    (png(np.zeros((9, 8), np.uint8)), 400, "the uploaded image 'x.png' is 9x8 (HxW), the dataset's images are 8x8"),
    (png(np.zeros((4000, 4000), np.uint8)), 400, "is 4000x4000 (HxW)"),  # refused before it is decoded
    (png(np.dstack([np.zeros((8, 8), np.uint8), np.full((8, 8), 255, np.uint8), np.zeros((8, 8), np.uint8)])), 400,
     "the uploaded image 'x.png': a colour image (3 channels); the training set is grayscale"),
    (_npy(np.full((8, 8), np.nan, np.float32)), 400, "the uploaded image 'x.png': the array holds NaN"),
    (_npy(np.zeros((8, 8), np.int64)), 400, "array dtype int64"),
    (b"\x89PNG\r\n\x1a\n" + b"\x00" * 64, 400, "neither a PNG"),  # a truncated PNG
    (png(np.zeros((8, 8), np.uint8)) * 8000, 413, "request body over the limit of 100000 bytes"),
])
def test_bad_uploads_are_refused_and_not_kept(store, networks, tmp_path, content, status, words):
    client = client_for(store, networks, tmp_path, max_upload_bytes=100_000)
    answer = client.post("/api/jobs/audit", files={"image": ("x.png", content, "image/png")},
                         data={"dataset_id": "1", "method": "direct"})
    assert answer.status_code == status and words in answer.json()["message"], answer.text
    assert str(tmp_path) not in answer.text  # no server path
    assert client.get("/api/jobs").json()["total"] == 0 and uploads(store) == []


@pytest.mark.parametrize("url, body, status, words", [
    ("/api/jobs/compare", {"dataset_id": 1, "network": "missing.pt"}, 404,
     "no network 'missing.pt' in the service's networks folder (AUDITOR_NETWORKS_DIR); it holds: tiny.pt"),
    ("/api/jobs/compare", {"dataset_id": 1, "network": "../networks/tiny.pt"}, 400, "network"),
    ("/api/jobs/compare", {"dataset_id": 1, "network": "/etc/passwd"}, 400, "network"),
    ("/api/jobs/compare", {"dataset_id": 1, "descriptor": "sscd:/etc/passwd"}, 400, "descriptor"),
    ("/api/jobs/compare", {"dataset_id": 1, "schedule": "/tmp/s.json"}, 400, "schedule"),  # no file paths at all
    ("/api/jobs/compare", {"dataset_id": 7}, 404, "no dataset"),
    ("/api/jobs/compare", {"dataset_id": 1, "denoisers": []}, 400, "denoisers"),
    ("/api/jobs/compare", {"dataset_id": 1, "denoisers": ["magic"]}, 400, "denoisers"),
    ("/api/jobs", {"dataset_id": 1, "kind": "compare"}, 400, "kind"),  # POST /api/jobs is sampling
])
def test_bad_comparison_requests_are_refused(store, networks, tmp_path, url, body, status, words):
    client = client_for(store, networks, tmp_path)
    answer = client.post(url, json=body)
    assert answer.status_code == status and words in answer.json()["message"], answer.text
    assert str(tmp_path) not in answer.text
    assert client.get("/api/jobs").json()["total"] == 0


CLI_IMAGE = "train2.png"


@pytest.mark.parametrize("kind, api, cli, api_words, cli_words", [
    ("audit", {"method": "direct", "noise_levels": ["1e-300"]}, ["--no-network", "--noise-levels", "1e-300"],
     "noise levels must be in [1e-06, 10000], got [1e-300]", "noise levels must be in [1e-06, 10000], got [1e-300]"),
    ("audit", {"method": "direct", "noise_levels": ["1", "1"]}, ["--no-network", "--noise-levels", "1,1"],
     "noise levels repeat", "noise levels repeat"),
    ("audit", {"network": "tiny.pt", "steps": "1"}, ["--network", "NET", "--steps", "1"],
     "inversion needs steps >= 2", "--steps must be >= 2 to invert the PF-ODE"),
    ("audit", {"method": "direct", "explainer": "pspc-flex", "patch_size": "3"},
     ["--no-network", "--explainer", "pspc-flex", "--patch-size", "3"], "patch_size applies to the pspc-square",
     "--patch-size applies to --explainer pspc-square"),
    ("compare", {"denoisers": ["gaussian", "gaussian"]}, ["--denoisers", "gaussian,gaussian"], "denoisers repeat",
     "denoisers repeat"),
    ("compare", {"thresholds": [0.5, 0.5]}, ["--thresholds", "0.5,0.5"], "thresholds repeat", "thresholds repeat"),
    ("compare", {"seed": -1}, ["--seed", "-1"], "seed", "seed must be an integer >= 0"),
    ("compare", {"sensitivity_draws": 0}, ["--sensitivity-draws", "0"], "sensitivity_draws",
     "--sensitivity-draws must be >= 1"),
])
def test_the_cli_and_the_api_refuse_the_same_requests(store, networks, tmp_path, capsys, kind, api, cli, api_words,
                                                      cli_words):
    """One validation for both (AuditOptions, ComparisonOptions): the CLI's `compare --seed -1`
    used to record the network's run, then fail on the PSPC runs; the API had no such jobs."""
    client = client_for(store, networks, tmp_path)
    image = png(random_set().images[2, 0].numpy())
    if kind == "audit":
        answer = client.post("/api/jobs/audit", files={"image": ("x.png", image)},
                             data={"dataset_id": "1", "copy_k": "0", **api})
        (tmp_path / CLI_IMAGE).write_bytes(image)
        argv = ["audit", tmp_path / CLI_IMAGE, "--copy-k", "0"]
    else:
        answer = client.post("/api/jobs/compare", json={"dataset_id": 1, "network": "tiny.pt", **api})
        argv = ["compare", "--network", networks / "tiny.pt", "--copy-k", "0", "--descriptor", "pixel-correlation:8"]
    cli = [networks / "tiny.pt" if part == "NET" else part for part in cli]
    code, _, err = run_cli(capsys, "--db", store, *argv, "--dataset", "1", "--steps", "2", *cli)
    assert answer.status_code == 400 and api_words in answer.json()["message"], answer.text
    assert code == 2 and cli_words in err, err
    assert fetch(store, "SELECT count(*) FROM runs") == [(0,)]
    assert client.get("/api/jobs").json()["total"] == 0 and uploads(store) == []


def test_the_job_kinds_name_the_engines_denoisers_and_each_has_its_bounded_route(store, networks, tmp_path):
    assert typing.get_args(job_kinds.Explainer) == RECORDABLE_KINDS
    assert set(typing.get_args(job_kinds.Denoiser)) == set(KINDS) == set(DENOISER_KINDS)
    schema = client_for(store, networks, tmp_path).get("/api/openapi.json").json()
    for name, kind in job_kinds.JOB_KINDS.items():
        body = schema["paths"][f"/api/jobs/{name}"]["post"]["requestBody"]["content"]
        assert list(body) == (["multipart/form-data"] if kind.upload else ["application/json"]), name
        model = (kind.upload or kind.request).__name__
        assert next(iter(body.values()))["schema"] == {"$ref": f"#/components/schemas/{model}"}
        for field, spec in schema["components"]["schemas"][model]["properties"].items():
            for option in spec.get("anyOf", [spec]):
                if option.get("type") == "integer":  # every integer bounded: never a 500 from int64 overflow
                    assert "minimum" in option and option.get("maximum", 2**63) < 2**63, (model, field)


# ---------------------------------------------------------------------------------------
# Cancel and restart, for every kind
# ---------------------------------------------------------------------------------------
def test_a_running_comparison_is_cancelled(store, networks, tmp_path):
    client = client_for(store, networks, tmp_path, script=SLEEPS)
    job_id = client.post("/api/jobs/compare", json={"dataset_id": 1, "network": "tiny.pt"}).json()["id"]
    deadline = time.monotonic() + 30
    while "importing torch" not in client.get(f"/api/jobs/{job_id}/log").text:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    client.post(f"/api/jobs/{job_id}/cancel")  # a `compare` process: signalled
    job = wait_for_job(client, job_id, timeout=30)
    assert job["status"] == "cancelled" and job["error"] == "cancelled before its run was created"


def test_an_adopted_audit_job_whose_run_completed_is_complete(store, networks, tmp_path):
    """After a restart the service adopts a running `auditor.cli audit` process by its pid."""
    request = job_kinds.AuditJobFields(dataset_id=1, method="direct").model_dump()
    request["image"] = {"sha256": "0" * 64, "format": "png", "bytes": 1}
    proc = subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.read()", "auditor.cli", "audit"],
                            stdin=subprocess.PIPE)  # runs until its stdin closes, however slow the machine
    try:
        run_id = runs.create_run(store, 1, denoiser={"kind": "pspc-square"}, sampler={"num_steps": 2}, seed=0,
                                 num_samples=1, top_k=1, mass=1.0, kind="external-audit")
        with database.connect(store) as conn:
            conn.execute("UPDATE runs SET status = 'complete' WHERE id = ?", [run_id])
            job_id = conn.execute("INSERT INTO jobs (kind, status, request, run_id, pid, created_at, started_at) "
                                  "VALUES ('audit', 'running', ?, ?, ?, ?, ?) RETURNING id",
                                  [json.dumps(request), run_id, proc.pid, utcnow(), utcnow()]).fetchone()[0]
        client = TestClient(create_app(ServiceSettings(db_path=store, networks_dir=networks)))
        assert client.get(f"/api/jobs/{job_id}").json()["status"] == "running"  # adopted: its process is an audit
        proc.stdin.close()
        job = wait_for_job(client, job_id, timeout=30)
    finally:
        proc.wait()
    assert job["status"] == "complete" and job["error"] is None


# ---------------------------------------------------------------------------------------
# Real runs
# ---------------------------------------------------------------------------------------
@pytest.mark.slow
def test_comparison_and_audit_jobs_record_their_runs(store, networks):
    """Real `auditor compare` and `auditor audit` subprocesses: each job knows its run exactly (a
    comparison's: the network-explained one), and the audit's run records the upload's sha256."""
    client = TestClient(create_app(ServiceSettings(db_path=store, networks_dir=networks, max_running_jobs=2)))
    compare = client.post("/api/jobs/compare", json={
        "dataset_id": 1, "network": "tiny.pt", "num_samples": 1, "steps": 3, "patch_size": 3,
        "denoisers": ["pspc-square", "gaussian"], "descriptor": "pixel-correlation:8", "copy_k": 1}).json()
    image = png(random_set().images[2, 0].numpy())
    audit = client.post("/api/jobs/audit", files={"image": ("mine.png", image)}, data={
        "dataset_id": "1", "network": "tiny.pt", "steps": "4", "patch_size": "3", "copy_k": "0"}).json()
    compare, audit = (wait_for_job(client, job["id"], timeout=300) for job in (compare, audit))
    assert compare["status"] == audit["status"] == "complete", (compare, audit)
    assert compare["progress"] == {"steps_recorded": 3, "steps_planned": 3, "run_status": "complete"}
    assert audit["progress"] == {"steps_recorded": 4, "steps_planned": 4, "run_status": "complete"}
    (kind, details), = fetch(store, "SELECT kind, details FROM runs WHERE id = ?", [compare["run_id"]])
    assert kind == "network-explained" and json.loads(details)["role"] == "network"
    (kind, details, command), = fetch(store, "SELECT kind, details, command FROM runs WHERE id = ?",
                                      [audit["run_id"]])
    assert kind == "external-audit" and json.loads(details)["input"]["sha256"] == hashlib.sha256(image).hexdigest()
    command = json.loads(command)
    assert command[5] == "audit" and command[6].endswith(f"/uploads/{hashlib.sha256(image).hexdigest()}.png")
    assert audit["links"]["first_report"].endswith(f"/api/runs/{audit['run_id']}/samples/0/report")
    assert client.get(audit["links"]["first_report"]).status_code == 200
    assert "audit of" in client.get(f"/api/jobs/{audit['id']}/log").text


@pytest.mark.slow
def test_an_audit_job_with_the_learned_descriptor_records_what_the_cli_records(empty_db, networks, capsys):
    """The committed fmnist-copy as the copy-detection descriptor and as the verdict's descriptor-match,
    calibrated with it: the job's run and the same command run by the CLI store the same matches and verdict."""
    data = fashion_mnist(200)
    datasets.ingest(empty_db, data)
    code, _, err = run_cli(capsys, "--db", empty_db, "calibrate", "--data", "fashion-mnist", "--limit", "200",
                           "--per-family", "2", "--novel-count", "40", "--target-fpr", "0.05",
                           "--verdict-descriptor", "fmnist-copy")
    assert code == 0 and "20 calibration novel images cannot bound the false-positive rate at 0.05" in err, err
    assert fetch(empty_db, "SELECT count(*) FROM copy_calibrations WHERE evidence = 'descriptor-match'") == [(1,)]
    shifted = np.roll(data.images[7, 0].numpy(), 1, axis=1)  # not pixel-identical: the calibrated sources decide
    client = TestClient(create_app(ServiceSettings(db_path=empty_db, networks_dir=networks)))
    job = client.post("/api/jobs/audit", files={"image": ("mine.png", png(shifted))}, data={
        "dataset_id": "1", "method": "direct", "noise_levels": ["1"], "patch_size": "3", "copy_k": "3",
        "descriptor": "fmnist-copy", "verdict_descriptor": "fmnist-copy"}).json()
    job = wait_for_job(client, job["id"], timeout=300)
    assert job["status"] == "complete", job
    (command,), = fetch(empty_db, "SELECT command FROM runs WHERE id = ?", [job["run_id"]])
    command = json.loads(command)
    assert command[command.index("--verdict-descriptor") + 1] == "fmnist-copy"
    code, _, err = run_cli(capsys, *command[1:])  # the same command, from the command line
    assert code == 0, err
    cli_run = fetch(empty_db, "SELECT max(id) FROM runs")[0][0]
    assert cli_run != job["run_id"]
    matches = "SELECT d.name, m.rank, m.image_index, m.flip, m.score FROM copy_matches m JOIN descriptors d ON " \
              "d.fingerprint = m.descriptor_fingerprint WHERE m.run_id = ? ORDER BY m.rank"
    verdict = "SELECT verdict, evidence, score, threshold, calibration_id, details FROM copy_verdicts WHERE run_id = ?"
    job_matches, cli_matches = (fetch(empty_db, matches, [run]) for run in (job["run_id"], cli_run))
    assert len(job_matches) == 3 and job_matches[0][0] == "fmnist-copy-descriptor"
    assert [m[:4] for m in job_matches] == [m[:4] for m in cli_matches]
    assert [m[4] for m in job_matches] == pytest.approx([m[4] for m in cli_matches], abs=1e-5)  # torch threads
    (*job_verdict, job_scores), = fetch(empty_db, verdict, [job["run_id"]])
    (*cli_verdict, cli_scores), = fetch(empty_db, verdict, [cli_run])
    assert job_verdict[:2] == cli_verdict[:2] and job_verdict[3:] == cli_verdict[3:]
    assert job_verdict[2] == pytest.approx(cli_verdict[2], abs=1e-5) and job_verdict[0] != "inconclusive"
    assert json.loads(job_scores).keys() == json.loads(cli_scores).keys() == {
        "aligned-correlation", "descriptor-match", "region-match"}  # the verdict used descriptor-match, calibrated
    assert json.loads(job_scores)["descriptor-match"]["threshold"] is not None
