"""Sampling and serving: `sample` (record or resume a PSPC run), `serve` (the report service),
`quickstart` (the README's Quick start, then serve)."""

from __future__ import annotations

import argparse
import sys

from auditor.cli import distributed
from auditor.cli.common import (
    MAX_INT, PROG, CLIError, Parents, check_port, db_path, device, integer, load_data, positive, url_host
)
from auditor.errors import UserError
from auditor.store import database
from auditor.workflows.options import RECORDABLE_KINDS, SamplingOptions

# `auditor sample`'s options and what they become when not given (SamplingOptions' defaults)
SAMPLE_DEFAULTS = {"num": SamplingOptions.num_samples, "steps": SamplingOptions.steps,
                   "sampler": SamplingOptions.sampler, "seed": SamplingOptions.seed, "top_k": SamplingOptions.top_k,
                   "mass": SamplingOptions.mass, "denoiser": SamplingOptions.denoiser_kind,
                   "patch_size": SamplingOptions.patch_size}
OPTION_NAMES = {"num_samples": "--num", "top_k": "--top-k", "patch_size": "--patch-size", "steps": "--steps",
                "seed": "--seed", "mass": "--mass", "sampler": "--sampler", "pspc-square denoiser": "--denoiser pspc-square"}
SERVE_DEFAULTS = {"require_keys": False, "sql_row_cap": 1000, "sql_time_limit": 5.0, "max_upload_mb": 10.0,
                  "jobs_dir": None, "max_running_jobs": 1}  # what `quickstart` serves with


# ---------------------------------------------------------------------------------------
# Arguments
# ---------------------------------------------------------------------------------------
def add_sample(commands, parents: Parents) -> None:
    sample = commands.add_parser(
        "sample", parents=[parents.store, parents.data], help="PSPC sampling, recording every step",
        description="Sample with PSPC on the EDM schedule and record, per step and sample, z_t, D(z_t) and "
                    "the top-k posterior weights of every patch (sample i starts from seed + i). A run is "
                    "atomic: it is 'complete' only once its last step is stored; Ctrl-C or an error marks it "
                    "'failed', and --resume RUN_ID continues it.")
    sample.set_defaults(handler=cmd_sample)
    sample.add_argument("--no-xflip", action="store_true", help="without the mirrored training images")
    sample.add_argument("--dataset", type=integer(high=MAX_INT), metavar="ID",
                        help="sample on a dataset held in the store (its stored pixels, ids and metadata) "
                             "instead of loading --data")
    sample.add_argument("--denoiser", choices=RECORDABLE_KINDS, help="(default: pspc-square)")
    sample.add_argument("--patch-size", type=integer(), metavar="S",
                        help="pspc-square: fixed s x s patches (default: the paper's s(t) schedule)")
    sample.add_argument("--num", type=integer(), metavar="N",
                        help="number of samples (default: 16); under torchrun, whose own options take --num, "
                             "write --num-samples")
    sample.add_argument("--num-samples", dest="num", type=integer(), metavar="N", help=argparse.SUPPRESS)
    sample.add_argument("--steps", type=integer(), help="sampling steps (default: 18)")
    sample.add_argument("--sampler", choices=("euler", "heun"), help="(default: euler)")
    sample.add_argument("--seed", type=integer(high=MAX_INT), help="(default: 0)")
    sample.add_argument("--top-k", type=integer(), metavar="K", help="kept weights per sample and patch (default: 16)")
    sample.add_argument("--mass", type=float, metavar="M",
                        help="stop keeping weights once they hold mass M, in (0, 1] (default: 0.99)")
    sample.add_argument("--device", default="cpu", help="cpu or cuda[:N] (default: %(default)s)")
    sample.add_argument("--resume", type=integer(high=MAX_INT), metavar="RUN_ID",
                        help="continue an interrupted run with its stored configuration (pass the same --data)")
    sample.add_argument("--parquet", metavar="DIR", help="record into this Parquet folder, which many machines may "
                                                         "share, instead of the store (`auditor parquet sql DIR ...`)")
    sample.add_argument("--run-id", type=integer(low=1, high=MAX_INT - 1), metavar="N",
                        help="with --parquet: the run's id (default: a 62-bit id drawn for this host and process)")
    distributed.add_distributed_options(sample)


def add_serve(commands, parents: Parents) -> None:
    serve = commands.add_parser(
        "serve", parents=[parents.store], help="run the report service",
        description="Serve sample reports (HTML) and the JSON API (/api, docs at /api/docs) over the store. With "
                    "no API key in the store it runs in local single-user mode (no checks); once a key exists "
                    "(`auditor keys create`), every request needs one.")
    serve.set_defaults(handler=cmd_serve)
    serve.add_argument("--host", default="127.0.0.1", help="(default: %(default)s)")
    serve.add_argument("--port", type=integer(), default=8000, help="(default: %(default)s)")
    serve.add_argument("--require-keys", action="store_true", help="require API keys even before one exists")
    serve.add_argument("--sql-row-cap", type=integer(), metavar="N", help="(default: $AUDITOR_SQL_ROW_CAP, else 1000)")
    serve.add_argument("--sql-time-limit", type=float, metavar="S",
                       help="(default: $AUDITOR_SQL_TIME_LIMIT_S, else 5.0)")
    serve.add_argument("--max-upload-mb", type=float, metavar="MB",
                       help="(default: $AUDITOR_MAX_UPLOAD_BYTES / 2^20, else 10.0)")
    serve.add_argument("--jobs-dir", metavar="DIR",
                       help="job logs (default: $AUDITOR_JOBS_DIR, else beside the store, STORE.jobs/)")
    serve.add_argument("--max-running-jobs", type=integer(), metavar="N",
                       help="(default: $AUDITOR_MAX_RUNNING_JOBS, else 1)")


def add_quickstart(commands, parents: Parents) -> None:
    quickstart = commands.add_parser(
        "quickstart", parents=[parents.store], help="the Quick start: ingest, record a small run, serve its report",
        description="Bring the store to the README's Quick start state (schema upgraded, Fashion-MNIST ingested "
                    "with x-flips, a complete PSPC-Square run recorded unless one with these settings exists), "
                    "then serve the report service and print the URL of the first sample's report.")
    quickstart.set_defaults(handler=cmd_quickstart)
    quickstart.add_argument("--data", default="fashion-mnist", metavar="SPEC", help="(default: %(default)s)")
    quickstart.add_argument("--num", type=integer(), default=8, help="samples to record (default: %(default)s)")
    quickstart.add_argument("--steps", type=integer(), default=18, help="(default: %(default)s)")
    quickstart.add_argument("--host", default="127.0.0.1", help="(default: %(default)s)")
    quickstart.add_argument("--port", type=integer(), default=8000, help="(default: %(default)s)")
    quickstart.add_argument("--no-serve", action="store_true", help="prepare the store and print the URL only")


# ---------------------------------------------------------------------------------------
# Commands
# ---------------------------------------------------------------------------------------
def _sampling_options(args) -> SamplingOptions:
    """The run's options from `auditor sample`'s arguments, checked (a resumed run takes its own)."""
    given = [f"--{k.replace('_', '-')}" for k in SAMPLE_DEFAULTS if getattr(args, k) is not None]
    if args.resume is not None:
        if given:
            raise CLIError(f"--resume continues run {args.resume} with its stored configuration; "
                           f"drop {', '.join(given)}")
        if args.no_xflip:
            raise CLIError("--resume takes the x-flip setting from the run; drop --no-xflip")
    values = {key: default if getattr(args, key) is None else getattr(args, key)
              for key, default in SAMPLE_DEFAULTS.items()}
    try:  # SamplingOptions is THE validation (the API's jobs build one too); messages name the options
        return SamplingOptions(denoiser_kind=values["denoiser"], patch_size=values["patch_size"],
                               num_samples=values["num"], steps=values["steps"], sampler=values["sampler"],
                               seed=values["seed"], top_k=values["top_k"], mass=values["mass"])
    except UserError as error:
        message = str(error)
        for field, option in OPTION_NAMES.items():
            message = message.replace(field, option)
        raise CLIError(message) from None


def _training_data(args, path):
    if args.dataset is None:
        return load_data(args.data, args)
    from auditor.store.datasets import stored_training_set

    if args.data != "fashion-mnist" or args.limit is not None:
        raise CLIError("--dataset takes the training images from the store; drop --data and --limit")
    return stored_training_set(path, args.dataset, timeout=args.lock_timeout)


def cmd_sample(args, argv: list[str]) -> int:
    from tqdm import tqdm

    from auditor.store.runs import remaining_steps, run_summaries
    from auditor.workflows.options import Runtime
    from auditor.workflows.sampling import record_sampling_run, resume_run

    if distributed.wanted(args):  # over torchrun's ranks: auditor.cli.distributed
        return distributed.sample_distributed(args, argv, _sampling_options)
    if args.parquet is not None or args.run_id is not None:  # into a Parquet folder, not the store
        from auditor.cli.parquet import sample_into_parquet

        return sample_into_parquet(args, argv, _sampling_options)
    path = db_path(args)
    database.require_current(path, timeout=args.lock_timeout)
    torch_device = device(args.device)
    options = _sampling_options(args)
    data = _training_data(args, path)
    if args.resume is not None:
        total = remaining_steps(path, args.resume, timeout=args.lock_timeout)
        with tqdm(total=total, desc=f"resuming run {args.resume}", unit="step", file=sys.stderr,
                  disable=None) as bar:
            run_id = resume_run(path, args.resume, data, runtime=Runtime(progress=bar.update, device=torch_device,
                                                                         timeout=args.lock_timeout))
    else:
        with tqdm(total=options.steps, desc="sampling", unit="step", file=sys.stderr, disable=None) as bar:
            run_id = record_sampling_run(path, data.with_xflip(not args.no_xflip), options=options,
                                         runtime=Runtime(command=[PROG, *argv], progress=bar.update,
                                                         device=torch_device, timeout=args.lock_timeout))
    summary = next((r for r in run_summaries(path, timeout=args.lock_timeout) if r["id"] == run_id), None)
    status = summary["status"] if summary else "recorded"
    print(f"run {run_id}: {status}" + (f", {summary['samples']} samples x {summary['steps']} steps" if summary else "")
          + f" in {path}")
    print(f"see its sources with `auditor show {run_id}/0`")
    return 0


def serve_settings(args):
    """The service's settings from `auditor serve`'s options; an option not given leaves the
    field to its AUDITOR_* environment variable, else its default."""
    from auditor.service.settings import ServiceSettings

    if args.max_upload_mb is not None and not args.max_upload_mb > 0:
        raise CLIError(f"--max-upload-mb must be > 0, got {args.max_upload_mb}")
    given = {"sql_row_cap": args.sql_row_cap, "sql_time_limit_s": args.sql_time_limit,
             "max_upload_bytes": None if args.max_upload_mb is None else int(args.max_upload_mb * 2**20),
             "jobs_dir": args.jobs_dir, "keys_required": True if args.require_keys else None,
             "max_running_jobs": args.max_running_jobs,
             "host": args.host}  # options not given: the environment, else the default; host: a trusted Host name
    return ServiceSettings(db_path=db_path(args), lock_timeout=args.lock_timeout,  # UserError names a bad field
                           **{name: value for name, value in given.items() if value is not None})


def cmd_serve(args, argv=None) -> int:
    import uvicorn

    from auditor.service.app import create_app
    from auditor.service.limits import MAX_REQUEST_HEAD_BYTES
    from auditor.service.settings import startup_message

    check_port(args.port)
    settings = serve_settings(args)
    app = create_app(settings)
    print(startup_message(settings, f"http://{url_host(args.host)}:{args.port}/"), flush=True)
    # h11 (when httptools is absent) buffers 16 KiB of request head by default: raise it to the URLs
    # httptools takes (auditor.service.limits), so both hand the app the same long GETs
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning",
                h11_max_incomplete_event_size=MAX_REQUEST_HEAD_BYTES)
    return 0


def cmd_quickstart(args, argv=None) -> int:
    from tqdm import tqdm

    from auditor.workflows.quickstart import prepare, step_lines

    for option in ("num", "steps"):
        positive(getattr(args, option), f"--{option}")
    check_port(args.port)
    path = db_path(args)
    with tqdm(total=args.steps, desc="sampling", unit="step", file=sys.stderr, disable=None) as bar:
        progress = step_lines(args.steps) if bar.disable else bar.update  # no terminal: a plain line per step
        run = prepare(path, data=args.data, num_samples=args.num, steps=args.steps, progress=progress,
                      timeout=args.lock_timeout)
    host = url_host(args.host)
    print(f"sample report: http://{host}:{args.port}{run.report_path(0)}", flush=True)
    if run.studies:
        print(f"network fidelity: http://{host}:{args.port}/fidelity/{run.studies[-1]}", flush=True)
    if args.no_serve:
        return 0
    for name, value in SERVE_DEFAULTS.items():
        setattr(args, name, value)
    return cmd_serve(args)
