"""What the command groups share: the program name, CLIError, the --db / --data option
parents, argument checks and table printing. Light on purpose (no torch): every command
imports its heavy modules when it runs."""

from __future__ import annotations

import argparse
import math
import sys
from dataclasses import dataclass

from auditor.errors import UserError
from auditor.store import database

PROG = "auditor"


class CLIError(UserError):
    """A problem with the user's request; printed as `auditor: error: ...`."""


@dataclass(frozen=True)
class Parents:
    """The option parents of the subcommands: --db/--lock-timeout (accepted after the
    command too) and the training data options."""

    store: argparse.ArgumentParser
    data: argparse.ArgumentParser


def store_options(suppress: bool) -> argparse.ArgumentParser:
    """--db and --lock-timeout, accepted before or after the command."""
    parent = argparse.ArgumentParser(add_help=False)
    default = argparse.SUPPRESS if suppress else None
    parent.add_argument("--db", metavar="PATH", default=default,
                        help="the store (default: $AUDITOR_DB, else ./provenance.duckdb)")
    parent.add_argument("--lock-timeout", type=float, metavar="S",
                        default=argparse.SUPPRESS if suppress else database.DEFAULT_TIMEOUT,
                        help=f"seconds to wait while another process holds the file (default: "
                             f"{database.DEFAULT_TIMEOUT:g})")
    return parent


RESIZE_POLICIES = ("error", "resize", "center-crop", "pad")  # = pspc.data.image_folder's (a test checks it)


def data_options() -> argparse.ArgumentParser:
    parent = argparse.ArgumentParser(add_help=False)
    group = parent.add_argument_group("training data")
    group.add_argument("--data", default="fashion-mnist", metavar="SPEC",
                       help="training set: fashion-mnist[:train|:test], a .npy/.npz/.zip/IDX file, a CIFAR-10 "
                            "batch directory or an image folder (default: %(default)s)")
    group.add_argument("--limit", type=integer(), metavar="N",
                       help="keep only the first N training images (default: all)")
    add_image_folder_options(group)
    return parent


def add_image_folder_options(group) -> None:
    """--resize / --size: how an image folder's images are brought to one size (the loader's
    `resize` and `size`); given for other kinds of data they are an error naming the loader."""
    group.add_argument("--resize", choices=RESIZE_POLICIES,
                       help="image folders: error on mixed sizes (the loader's default), or resize, center-crop "
                            "or pad every image to --size")
    group.add_argument("--size", metavar="H[xW]", help="image folders: the target size for --resize")


# ---------------------------------------------------------------------------------------
# Checks and loading
# ---------------------------------------------------------------------------------------
#: the bounds of integer options: ids and seeds fit the store's int64 columns with room to spare;
#: counts (samples, steps, k, threads, ...) fit a C int
MAX_INT = 2**62
MAX_COUNT = 2**31 - 1


def integer(low: int = -MAX_INT, high: int = MAX_COUNT):
    """An argparse `type=` that parses a whole number in low..high, so that a value like 1e20 or
    10**20 is `auditor: error: argument --top: ...` (exit 2), not a traceback further on."""

    def parse(text: str) -> int:
        try:
            value = int(text.strip(), 10)
        except (TypeError, ValueError):
            raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
        if value > high:
            raise argparse.ArgumentTypeError(f"must be at most {high}, got {value}")
        if value < low:
            raise argparse.ArgumentTypeError(f"must be at least {low}, got {value}")
        return value

    parse.__name__ = "integer"
    return parse


def sample_target(text: str) -> tuple[int, int]:
    """RUN/SAMPLE (e.g. 3/0) as (run id, sample index), for argparse `type=`: two whole numbers,
    each at most MAX_INT."""
    run, slash, sample = text.partition("/")
    if not slash or not (run.strip().isdigit() and sample.strip().isdigit()):
        raise argparse.ArgumentTypeError(f"expected RUN/SAMPLE (two numbers, e.g. 3/0), got {text!r}")
    ids = int(run), int(sample)
    if max(ids) > MAX_INT:
        raise argparse.ArgumentTypeError(f"RUN/SAMPLE: each number must be at most {MAX_INT}, got {text!r}")
    return ids


def positive(value, option: str) -> None:
    if value is not None and not (math.isfinite(value) and value > 0):
        raise CLIError(f"{option} must be > 0, got {value}")


def numbers(text: str, option: str) -> list[float]:
    try:
        values = [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise CLIError(f"{option} takes comma-separated numbers, got {text!r}") from None
    if not values:
        raise CLIError(f"{option} needs at least one number")
    return values


def check_port(port: int) -> None:
    if not 0 < port < 65536:
        raise CLIError(f"--port must be in 1..65535, got {port}")


def db_path(args):
    return database.resolve_db_path(args.db)


def load_data(spec: str, args):
    """The training set named by `spec`, with --limit and the image-folder options in `args`."""
    from pspc.data.loaders import folder_options, load_training_set

    positive(args.limit, "--limit")
    return load_training_set(spec, limit=args.limit, **folder_options(getattr(args, "resize", None),
                                                                      getattr(args, "size", None)))


def device(name: str):
    from pspc.cli import resolve_device

    return resolve_device(name)


def set_threads(threads: int | None) -> None:
    """torch's and numba's CPU threads (both: numba's OpenMP kernels reset the OpenMP thread
    count that torch reads)."""
    if not threads:
        return
    import numba
    import torch

    torch.set_num_threads(threads)
    numba.set_num_threads(min(threads, numba.config.NUMBA_NUM_THREADS))


# ---------------------------------------------------------------------------------------
# Output
# ---------------------------------------------------------------------------------------
def print_table(headers: list[str], rows: list[list]) -> None:
    from auditor.store.query import format_table

    sys.stdout.write(format_table(headers, [tuple(r) for r in rows], null=""))


def when(value) -> str:
    return value.strftime("%Y-%m-%d %H:%M:%S") if value is not None else ""


def share(value, digits: int = 3) -> str:
    """A fraction as a percentage to `digits` significant figures ('12.3%', '0.0412%'), so the
    small shares of early steps read as numbers, not as 0.0%; empty for None."""
    return "" if value is None else f"{100 * float(value):.{digits}g}%"


def url_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host
