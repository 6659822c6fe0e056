"""Report service under load: 16 concurrent clients on loopback while a sampling run writes.

Builds a store (Fashion-MNIST, first --limit images, with x-flips; one recorded run to read),
starts `auditor serve` as its own process (uvicorn), starts a WRITER process that records
PSPC sampling runs into the same store for the whole window (one short transaction per
step), then runs --clients concurrent clients (asyncio + httpx, one keep-alive connection
each) for --seconds against the sample report and the sources endpoint, and prints
requests/s, p50/p99/max latency and failures per endpoint. The writer measures how long it
waited for the file's lock and how long it held it per step; both are printed too.

    PYTHONPATH=. .venv/bin/python bench/service.py                  # 16 clients, 30 s
    PYTHONPATH=. .venv/bin/python bench/service.py --seconds 10 --no-writer

Target: p99 under 200 ms for the JSON endpoints, no failed request.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

WRITER = r"""
import json, sys, time
from contextlib import contextmanager
from auditor.store import database
from auditor.store.datasets import stored_training_set
from auditor.workflows.options import Runtime, SamplingOptions
from auditor.workflows.sampling import record_sampling_run

db, seconds, out = sys.argv[1], float(sys.argv[2]), sys.argv[3]
original = database.connect
steps = []  # (seconds waiting for the lock, seconds holding it) per read-write transaction

@contextmanager
def timed(path, read_only=False, *args, **kwargs):
    started = time.perf_counter()
    with original(path, read_only, *args, **kwargs) as conn:
        opened = time.perf_counter()
        yield conn
    if not read_only:
        steps.append((opened - started, time.perf_counter() - opened))

database.connect = timed
data = stored_training_set(db, 1).with_xflip()
deadline = time.monotonic() + seconds
seed = 100
print("writing", flush=True)
while time.monotonic() < deadline:
    record_sampling_run(db, data, options=SamplingOptions(num_samples=4, steps=18, seed=seed),
                        runtime=Runtime(timeout=120))
    seed += 4
json.dump(steps, open(out, "w"))
"""


def _cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process (Linux /proc), 0 elsewhere."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return 0.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def prepare(db: Path, limit: int) -> None:
    from auditor.store import database, datasets
    from auditor.workflows.options import SamplingOptions
    from auditor.workflows.sampling import record_sampling_run
    from pspc.data.loaders import load_fashion_mnist

    database.upgrade(db)
    data = load_fashion_mnist("train", limit=limit)
    datasets.ingest(db, data)
    record_sampling_run(db, data.with_xflip(), options=SamplingOptions(num_samples=2, steps=18, seed=0))


async def load(base: str, paths: dict[str, str], clients: int, seconds: float, warmup: float) -> dict:
    import httpx

    results: dict[str, list] = {name: [] for name in paths}
    failures: dict[str, list] = {name: [] for name in paths}
    names = list(paths)
    start = time.perf_counter()
    measure_from = start + warmup
    stop = measure_from + seconds

    async def client(k: int) -> None:
        async with httpx.AsyncClient(base_url=base, timeout=30.0) as http:
            i = k
            while True:
                now = time.perf_counter()
                if now >= stop:
                    return
                name = names[i % len(names)]
                i += 1
                began = time.perf_counter()
                try:
                    response = await http.get(paths[name])
                    await response.aread()
                    ok = response.status_code == 200
                    why = None if ok else f"{response.status_code} {response.text[:200]}"
                except Exception as exc:  # noqa: BLE001 - a failed request is a result
                    ok, why = False, f"{type(exc).__name__}: {exc}"
                ended = time.perf_counter()
                if began >= measure_from:
                    (results[name] if ok else failures[name]).append(ended - began if ok else why)

    await asyncio.gather(*(client(k) for k in range(clients)))
    return {"latencies": results, "failures": failures}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--warmup", type=float, default=3.0, help="seconds of requests not counted")
    parser.add_argument("--limit", type=int, default=10000, help="training images (default: %(default)s)")
    parser.add_argument("--no-writer", action="store_true", help="without the sampling run writing")
    parser.add_argument("--report-images", choices=("data-uri", "none"), default="data-uri",
                        help="the report's images inline (the endpoint's default) or left out")
    parser.add_argument("--writer-same-priority", action="store_true",
                        help="run the writer at the service's priority (default: nicer, as the service runs jobs)")
    parser.add_argument("--keep", metavar="DIR", help="build the store in DIR and keep it (reused if present)")
    args = parser.parse_args()

    folder = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="bench-service-"))
    folder.mkdir(parents=True, exist_ok=True)
    db = folder / "provenance.duckdb"
    if not db.exists():
        print(f"preparing {db} (Fashion-MNIST, {args.limit} images with x-flips, one run of 2 samples x 18 steps)",
              flush=True)
        started = time.perf_counter()
        prepare(db, args.limit)
        print(f"  prepared in {time.perf_counter() - started:.0f} s", flush=True)

    env = {**os.environ, "PYTHONPATH": str(REPO)}
    port = free_port()
    server = subprocess.Popen([sys.executable, "-m", "auditor.cli", "--db", str(db), "serve", "--port", str(port)],
                              env=env, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    base = f"http://127.0.0.1:{port}"
    writer = None
    steps_file = folder / "writer-steps.json"
    try:
        import httpx

        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(base + "/api/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if server.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"the server did not start:\n{server.stdout.read() if server.stdout else ''}")
            time.sleep(0.2)
        if not args.no_writer:
            writer = subprocess.Popen([sys.executable, "-c", WRITER, str(db), str(args.warmup + args.seconds + 2),
                                       str(steps_file)], env=env, cwd=REPO, stdout=subprocess.PIPE, text=True)
            if not args.writer_same_priority:  # as the service runs its jobs (ServiceSettings.job_niceness)
                from auditor.service.app import ServiceSettings
                from auditor.service.jobs import lower_priority

                lower_priority(writer.pid, ServiceSettings.model_fields["job_niceness"].default)
            if writer.stdout.readline().strip() != "writing":
                raise SystemExit("the writer did not start")
        report = "/api/runs/1/samples/0/report" + ("?images=none" if args.report_images == "none" else "")
        paths = {f"sample report (JSON, images {args.report_images})": report,
                 "sources (JSON, top 10)": "/api/runs/1/samples/0/sources?top=10"}
        print(f"{args.clients} clients for {args.seconds:g} s (after {args.warmup:g} s of warm-up) on {base}"
              f"{'' if args.no_writer else ', a sampling run writing to the store'}", flush=True)
        server_cpu = _cpu_seconds(server.pid)
        client_cpu = time.process_time()
        result = asyncio.run(load(base, paths, args.clients, args.seconds, args.warmup))
        server_cpu = _cpu_seconds(server.pid) - server_cpu
        client_cpu = time.process_time() - client_cpu
        if writer is not None:
            writer.wait(timeout=600)
    finally:
        for proc in (writer, server):
            if proc is not None and proc.poll() is None:
                proc.send_signal(signal.SIGINT)
                try:
                    proc.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    proc.kill()

    print()
    print("| endpoint | requests | req/s | p50 ms | p99 ms | max ms | failed |")
    print("|---|---|---|---|---|---|---|")
    everything = []
    for name, latencies in result["latencies"].items():
        failed = result["failures"][name]
        everything += latencies
        ms = np.array(latencies) * 1000 if latencies else np.array([np.nan])
        print(f"| {name} | {len(latencies)} | {len(latencies) / args.seconds:.1f} | {np.percentile(ms, 50):.0f} | "
              f"{np.percentile(ms, 99):.0f} | {ms.max():.0f} | {len(failed)} |")
    ms = np.array(everything) * 1000
    total_failed = sum(len(f) for f in result["failures"].values())
    print(f"| all | {len(everything)} | {len(everything) / args.seconds:.1f} | {np.percentile(ms, 50):.0f} | "
          f"{np.percentile(ms, 99):.0f} | {ms.max():.0f} | {total_failed} |")
    for name, failed in result["failures"].items():
        for why in failed[:3]:
            print(f"failed: {name}: {why}")
    requests_made = max(1, len(everything) + total_failed)
    print(f"\nCPU per request (warm-up included): service {1000 * server_cpu / requests_made:.1f} ms, "
          f"benchmark clients {1000 * client_cpu / requests_made:.1f} ms; load average during the run "
          f"{os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
    if writer is not None and steps_file.exists():
        steps = np.array(json.loads(steps_file.read_text())) * 1000
        if len(steps):
            wait, hold = steps[:, 0], steps[:, 1]
            print(f"\nwriter: {len(steps)} read-write transactions (one per sampling step, plus run inserts); "
                  f"lock held p50 {np.percentile(hold, 50):.0f} ms, p99 {np.percentile(hold, 99):.0f} ms, "
                  f"max {hold.max():.0f} ms; waited for the lock p50 {np.percentile(wait, 50):.0f} ms, "
                  f"max {wait.max():.0f} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
