"""Local multi-process runs for the distributed tests: gloo over loopback, one thread per rank."""

from __future__ import annotations

import os
import socket
import subprocess
import sys

from tests.support.paths import REPO

ONE_THREAD = {"OMP_NUM_THREADS": "1", "NUMBA_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def rank_environment(rank: int, world_size: int, port: int, **extra: str) -> dict:
    """What torchrun sets for a rank on one machine (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_*)."""
    return {**os.environ, **ONE_THREAD, "RANK": str(rank), "WORLD_SIZE": str(world_size), "LOCAL_RANK": str(rank),
            "LOCAL_WORLD_SIZE": str(world_size), "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), **extra}


def launch_ranks(argv: list[str], world_size: int = 2, timeout: float = 120, extra: dict | None = None):
    """Run `python ARGV...` as ranks 0..world_size-1 of one job (as torchrun would, without its
    agent: a rank that exits leaves the others running); returns their CompletedProcess-like
    (returncode, stdout, stderr) in rank order."""
    port = free_port()
    processes = [subprocess.Popen([sys.executable, *argv], cwd=REPO, text=True, stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, env=rank_environment(rank, world_size, port, **(extra or {})))
                 for rank in range(world_size)]
    results = []
    try:
        for process in processes:
            out, err = process.communicate(timeout=timeout)
            results.append((process.returncode, out, err))
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
                process.communicate()
    return results


def torchrun(argv: list[str], world_size: int = 2, timeout: float = 180, extra: dict | None = None):
    """`torchrun --nproc-per-node world_size ARGV...` on a free loopback port: (returncode, stdout, stderr)."""
    command = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "1", "--nproc-per-node", str(world_size),
               "--master-addr", "127.0.0.1", "--master-port", str(free_port()), *argv]
    done = subprocess.run(command, cwd=REPO, text=True, capture_output=True, timeout=timeout,
                          env={**os.environ, **ONE_THREAD, **(extra or {})})
    return done.returncode, done.stdout, done.stderr
