"""The auditor's errors: one base class, user errors kept apart from internal ones, and ONE
table that maps each to an HTTP status and a command-line exit code.

A user error is input the user can fix (a bad option, an unknown id, a locked or outdated
store): the service answers it with a 4xx/503 and its message, the CLI prints the message
and exits 2. Anything else is a bug: the service answers 500 and logs the traceback, the
CLI prints the traceback and exits 1. UserError also subclasses ValueError, so library
callers that catch ValueError for bad input keep working; a *plain* ValueError is a bug.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from pspc.errors import InputError

EXIT_OK = 0
EXIT_INTERNAL = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130


class AuditorError(Exception):
    """Base of every error the auditor raises on purpose."""


class UserError(AuditorError, ValueError):
    """Bad input the user can fix; the message names the problem."""


class ConflictError(UserError):
    """The request is valid but clashes with the stored state (e.g. a run still being written)."""


class StoreError(UserError):
    """A problem with the provenance store (file, schema, lock, unknown ids); names the file."""


class NotFoundError(StoreError):
    """An id (dataset, run, sample, image, key, job, study) that the store does not hold."""


class SchemaError(StoreError):
    """The store's schema is not the one this version needs (`fixable`: `auditor db upgrade` helps)."""

    @property
    def fixable(self) -> bool:
        text = str(self)
        return "auditor db upgrade" in text or "upgrade auditor" in text


class LockedError(StoreError):
    """Another process holds the store's write lock past the timeout: retry later."""


class InternalError(AuditorError, RuntimeError):
    """A broken invariant inside the auditor: a bug, never the user's input."""


@dataclass(frozen=True)
class Outcome:
    """How one kind of error reaches the user."""

    status: int  # HTTP status
    exit_code: int  # CLI exit status
    user: bool  # True: show the message; False: log the traceback
    headers: tuple[tuple[str, str], ...] = ()


# THE table, most specific class first. InputError is the engine's (pspc) bad input.
ERROR_TABLE: tuple[tuple[type[BaseException], Outcome], ...] = (
    (NotFoundError, Outcome(404, EXIT_USAGE, True)),
    (ConflictError, Outcome(409, EXIT_USAGE, True)),
    (LockedError, Outcome(503, EXIT_USAGE, True, (("Retry-After", "1"),))),
    (SchemaError, Outcome(409, EXIT_USAGE, True)),  # 500 when not fixable: see outcome()
    (StoreError, Outcome(400, EXIT_USAGE, True)),
    (UserError, Outcome(400, EXIT_USAGE, True)),
    (InputError, Outcome(400, EXIT_USAGE, True)),
    (InternalError, Outcome(500, EXIT_INTERNAL, False)),
)
INTERNAL = Outcome(500, EXIT_INTERNAL, False)


def outcome(exc: BaseException) -> Outcome:
    """The table's row for `exc`; anything not in it is internal (500, exit 1)."""
    if isinstance(exc, SchemaError) and not exc.fixable:
        return Outcome(500, EXIT_USAGE, True)
    for cls, result in ERROR_TABLE:
        if isinstance(exc, cls):
            return result
    return INTERNAL


def is_user_error(exc: BaseException) -> bool:
    return outcome(exc).user


# The folders of an absolute path ("/srv/data/" of "/srv/data/provenance.duckdb"): a "/" that
# starts a token (not in "1/3", "s/step", "a/b" or a URL's "//host/path"), then name/ parts.
_FOLDERS = re.compile(r"(?<![\w/.~-])/(?!/)(?:[^\s'\"/:()<>\[\],;=]+/)+")


def without_folders(text: str | None) -> str | None:
    """`text` with every absolute path cut to its last part: how a stored error (a run's, a job's)
    is shown to clients, so that no server path (store, checkout, environment) leaves the server."""
    return None if text is None else _FOLDERS.sub("", text)
