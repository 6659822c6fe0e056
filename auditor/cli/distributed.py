"""`auditor sample`, `compare`, `audit` and `counterfactual` over many processes
(auditor.workflows.distributed): with --distributed, or whenever torchrun's environment is
set, the training set is sharded over the ranks, rank 0 records and the others only compute.

  torchrun --nproc-per-node 2 -m auditor.cli --db runs.duckdb sample --distributed --data fashion-mnist
  torchrun --nproc-per-node 2 -m auditor.cli --db runs.duckdb sample --resume 3 --data fashion-mnist
  torchrun --nproc-per-node 2 -m auditor.cli --db runs.duckdb compare --data fashion-mnist --num-samples 4
  torchrun --nproc-per-node 2 -m auditor.cli --db runs.duckdb counterfactual 3/0 --top 10

`sample` runs the same sampler on every rank; the others are led by rank 0, which runs the
one-process command with its PSPC denoisers sharded and tells the other ranks each call.
"""

from __future__ import annotations

import sys
from typing import Callable

from auditor.cli.common import PROG, CLIError, db_path, device, load_data, set_threads
from auditor.store import database

MERGE_CHOICES = ("auto", "gather", "tree")  # = pspc.posterior.distributed.MERGES (a test checks it; no torch here)


def add_distributed_options(parser) -> None:
    group = parser.add_argument_group("many processes (torchrun)")
    group.add_argument("--distributed", action="store_true",
                       help="shard the training set over torchrun's ranks: rank 0 records, the others compute "
                            "(implied under torchrun)")
    group.add_argument("--backend", choices=("gloo", "nccl"), help="(default: nccl with --device cuda, else gloo)")
    group.add_argument("--collective-timeout", type=float, metavar="S",
                       help="seconds a rank waits for the others at each step before the run fails (default: 600)")
    group.add_argument("--top-k-merge", choices=MERGE_CHOICES, default="auto",
                       help="how the ranks' top-k lists are merged: all-gathered, or by a tree of log2(R) pairwise "
                            "rounds (default: %(default)s, the tree above 8 ranks)")


def wanted(args) -> bool:
    """Whether the command runs over ranks: --distributed, or launched by torchrun."""
    from pspc.posterior.distributed import torchrun_environment

    return args.distributed or torchrun_environment() is not None


def _environment(command: str) -> dict:
    """torchrun's {rank, world_size, local_rank}; CLIError saying how to launch when it is not set."""
    from pspc.posterior.distributed import TORCHRUN_VARIABLES, torchrun_environment

    environment = torchrun_environment()
    if environment is None:
        raise CLIError(f"--distributed needs torchrun's environment ({', '.join(TORCHRUN_VARIABLES)}): launch "
                       f"`torchrun --nproc-per-node N -m auditor.cli ... {command} --distributed ...`")
    return environment


def _refuse(args, refused: dict[str, str]) -> None:
    for option, why in refused.items():
        if getattr(args, option[2:].replace("-", "_"), None) not in (None, False):
            raise CLIError(f"{option} does not run over ranks: {why}")


def _distribution(args):
    from auditor.workflows.distributed import Distribution
    from pspc.posterior.distributed import DEFAULT_TIMEOUT_S

    timeout = DEFAULT_TIMEOUT_S if args.collective_timeout is None else args.collective_timeout
    if not timeout > 0:
        raise CLIError(f"--collective-timeout must be > 0 seconds, got {timeout}")
    return Distribution(backend=args.backend, timeout_s=timeout, merge=args.top_k_merge)


def _rank_device(args, environment: dict):
    """--device, with a bare `cuda` meaning this rank's GPU (cuda:LOCAL_RANK)."""
    torch_device = device(args.device)
    if torch_device.type == "cuda" and torch_device.index is None:
        torch_device = device(f"cuda:{environment['local_rank']}")
    return torch_device


def sample_distributed(args, argv: list[str], sampling_options) -> int:
    """`auditor sample` (or `--resume RUN_ID`) on this rank; rank 0 prints the run like `auditor sample` does."""
    from tqdm import tqdm

    from auditor.store.runs import remaining_steps, run_summaries
    from auditor.workflows.distributed import record_distributed_sampling_run, resume_distributed_run
    from auditor.workflows.options import Runtime

    environment = _environment("sample")
    _refuse(args, {"--parquet": "every rank would record its own run; record into the store",
                   "--run-id": "it goes with --parquet", "--dataset": "every rank loads the training set: pass --data"})
    distribution = _distribution(args)
    rank, path = environment["rank"], db_path(args)
    if rank == 0:
        database.require_current(path, timeout=args.lock_timeout)
    torch_device = _rank_device(args, environment)
    options = sampling_options(args)  # with --resume: refuses the options the run stores
    data = load_data(args.data, args)
    world = environment["world_size"]
    if args.resume is not None:
        total = remaining_steps(path, args.resume, timeout=args.lock_timeout) if rank == 0 else 0
        with tqdm(total=total, desc=f"resuming run {args.resume} ({world} ranks)", unit="step", file=sys.stderr,
                  disable=None if rank == 0 else True) as bar:
            run_id = resume_distributed_run(path, args.resume, data, distribution=distribution,
                                            runtime=Runtime(progress=bar.update, device=torch_device,
                                                            timeout=args.lock_timeout))
    else:
        with tqdm(total=options.steps, desc=f"sampling ({world} ranks)", unit="step", file=sys.stderr,
                  disable=None if rank == 0 else True) as bar:
            run_id = record_distributed_sampling_run(
                path, data.with_xflip(not args.no_xflip), options=options, distribution=distribution,
                runtime=Runtime(command=[PROG, *argv], progress=bar.update, device=torch_device,
                                timeout=args.lock_timeout))
    if run_id is None:
        return 0
    summary = next(r for r in run_summaries(path, timeout=args.lock_timeout) if r["id"] == run_id)
    how = "resumed" if args.resume is not None else "the training set"
    print(f"run {run_id}: {summary['status']}, {summary['samples']} samples x {summary['steps']} steps, {how} "
          f"sharded over {world} ranks, in {path}")
    print(f"see its sources with `auditor show {run_id}/0`")
    return 0


def lead_ranks(args, command: str, run: Callable[[object], int], with_data: bool = True) -> int:
    """`auditor COMMAND` over torchrun's ranks: rank 0 runs run(leader), the one-process command
    with its PSPC denoisers led over the ranks (auditor.workflows.distributed.over_ranks), and
    returns its exit code; the others follow it on their shard of --data (with_data; else
    rank 0 sends them the store's pixels) and return 0."""
    from auditor.workflows.distributed import over_ranks

    environment = _environment(command)
    _refuse(args, {"--dataset": "every rank loads the training set: pass --data"} if with_data else
            {"--list": f"run `{PROG} {command} --list` in one process"})
    distribution = _distribution(args)
    torch_device = _rank_device(args, environment)
    if environment["rank"] != 0:
        set_threads(getattr(args, "threads", None))
    data = (lambda: load_data(args.data, args)) if with_data else None
    code = over_ranks(run, data, distribution=distribution, device=torch_device)
    return 0 if code is None else code
