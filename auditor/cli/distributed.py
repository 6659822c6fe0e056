"""`auditor sample` over many processes (auditor.workflows.distributed): with --distributed,
or whenever torchrun's environment is set, the training set is sharded over the ranks, rank 0
records the run and the others only compute.

  torchrun --nproc-per-node 2 -m auditor.cli --db runs.duckdb sample --distributed --data fashion-mnist
"""

from __future__ import annotations

import sys

from auditor.cli.common import PROG, CLIError, db_path, device, load_data
from auditor.store import database


def add_distributed_options(parser) -> None:
    group = parser.add_argument_group("many processes (torchrun)")
    group.add_argument("--distributed", action="store_true",
                       help="shard the training set over torchrun's ranks: rank 0 records, the others compute "
                            "(implied under torchrun)")
    group.add_argument("--backend", choices=("gloo", "nccl"), help="(default: nccl with --device cuda, else gloo)")
    group.add_argument("--collective-timeout", type=float, metavar="S",
                       help="seconds a rank waits for the others at each step before the run fails (default: 600)")


def wanted(args) -> bool:
    """Whether `auditor sample` runs over ranks: --distributed, or launched by torchrun."""
    from pspc.posterior.distributed import torchrun_environment

    return args.distributed or torchrun_environment() is not None


def sample_distributed(args, argv: list[str], sampling_options) -> int:
    """`auditor sample` on this rank; rank 0 prints the run like `auditor sample` does."""
    from tqdm import tqdm

    from auditor.store.runs import run_summaries
    from auditor.workflows.distributed import Distribution, record_distributed_sampling_run
    from auditor.workflows.options import Runtime
    from pspc.posterior.distributed import DEFAULT_TIMEOUT_S, TORCHRUN_VARIABLES, torchrun_environment

    environment = torchrun_environment()
    if environment is None:
        raise CLIError(f"--distributed needs torchrun's environment ({', '.join(TORCHRUN_VARIABLES)}): launch "
                       f"`torchrun --nproc-per-node N -m auditor.cli ... sample --distributed ...`")
    refused = {"--resume": "resume it in one process, without torchrun: `auditor sample --resume RUN_ID`",
               "--parquet": "every rank would record its own run; record into the store",
               "--run-id": "it goes with --parquet", "--dataset": "every rank loads the training set: pass --data"}
    for option, why in refused.items():
        if getattr(args, option[2:].replace("-", "_")) is not None:
            raise CLIError(f"{option} does not run over ranks: {why}")
    timeout = DEFAULT_TIMEOUT_S if args.collective_timeout is None else args.collective_timeout
    if not timeout > 0:
        raise CLIError(f"--collective-timeout must be > 0 seconds, got {timeout}")
    rank, path = environment["rank"], db_path(args)
    if rank == 0:
        database.require_current(path, timeout=args.lock_timeout)
    torch_device = device(args.device)
    if torch_device.type == "cuda" and torch_device.index is None:
        torch_device = device(f"cuda:{environment['local_rank']}")
    options = sampling_options(args)
    data = load_data(args.data, args).with_xflip(not args.no_xflip)
    with tqdm(total=options.steps, desc=f"sampling ({environment['world_size']} ranks)", unit="step",
              file=sys.stderr, disable=None if rank == 0 else True) as bar:
        run_id = record_distributed_sampling_run(
            path, data, options=options, distribution=Distribution(backend=args.backend, timeout_s=timeout),
            runtime=Runtime(command=[PROG, *argv], progress=bar.update, device=torch_device, timeout=args.lock_timeout))
    if run_id is None:
        return 0
    summary = next(r for r in run_summaries(path, timeout=args.lock_timeout) if r["id"] == run_id)
    print(f"run {run_id}: {summary['status']}, {summary['samples']} samples x {summary['steps']} steps, the training "
          f"set sharded over {environment['world_size']} ranks, in {path}")
    print(f"see its sources with `auditor show {run_id}/0`")
    return 0
