"""The report service's settings: ONE validated object (pydantic-settings), and what
`auditor serve` prints at start-up.

Every field can be given to the constructor (`ServiceSettings(db_path=..., sql_row_cap=...)`,
as `auditor serve` and the tests do) or, when not given, read from the environment:
AUDITOR_DB for the store (as everywhere in the auditor; default ./provenance.duckdb), and
AUDITOR_<FIELD NAME> for the others (AUDITOR_LOCK_TIMEOUT, AUDITOR_SQL_ROW_CAP,
AUDITOR_SQL_TIME_LIMIT_S, AUDITOR_SQL_MAX_BYTES, AUDITOR_MAX_UPLOAD_BYTES, AUDITOR_CACHE_BYTES,
AUDITOR_JOBS_DIR, AUDITOR_NETWORKS_DIR, AUDITOR_KEYS_REQUIRED, AUDITOR_MAX_RUNNING_JOBS, AUDITOR_JOB_LOCK_TIMEOUT,
AUDITOR_JOB_NICENESS, AUDITOR_PYTHON, AUDITOR_HOST, AUDITOR_TRUSTED_HOSTS as comma-separated
names). An empty variable counts as unset. A bad value is a UserError naming the field.

The service answers only requests whose Host header names it (`allowed_hosts`: localhost,
127.0.0.1, [::1], the bind host and trusted_hosts), so a web page on another site cannot reach
a local service through a DNS name it points at 127.0.0.1 (DNS rebinding).
"""

from __future__ import annotations

import ipaddress
import os
import re
from pathlib import Path

from typing import Annotated

from pydantic import Field, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from auditor.errors import UserError
from auditor.store import database

__all__ = ["ENV_PREFIX", "LOOPBACK_HOSTS", "ServiceSettings", "host_name", "local_mode_message", "startup_message"]

ENV_PREFIX = "AUDITOR_"
LOOPBACK_HOSTS = ("localhost", "127.0.0.1", "[::1]")  # always trusted: no other site's name
_WILDCARD_BINDS = ("0.0.0.0", "[::]")


class ServiceSettings(BaseSettings):
    """What the service needs to know; tests build one on a temporary store.

    keys_required: None derives it from the store at start-up (any active key -> True);
    True forces key checks even before a key exists. Once keys are required they stay
    required for the life of the process, even if every key is revoked.
    """

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, env_ignore_empty=True, populate_by_name=True,
                                      extra="forbid")

    db_path: Path = Field(Path(database.DEFAULT_DB), validation_alias=database.DB_ENV,
                          description="the provenance store (env AUDITOR_DB)")
    lock_timeout: float = Field(database.DEFAULT_TIMEOUT, gt=0,
                                description="seconds a request waits while another process holds the store")
    sql_row_cap: int = Field(1000, ge=1, description="rows the SQL endpoint returns at most")
    sql_time_limit_s: float = Field(5.0, gt=0, description="seconds a SQL query may take, its answer included")
    sql_max_bytes: int = Field(8 * 2**20, ge=1, description="largest SQL answer (text and blob bytes, estimated)")
    max_upload_bytes: int = Field(10 * 2**20, ge=1, description="largest request body")
    host: str = Field("127.0.0.1", min_length=1, description="the address `auditor serve` listens on (--host); "
                                                             "also a trusted Host name")
    trusted_hosts: Annotated[list[str], NoDecode] = Field(
        default_factory=list, description="Host names the service answers besides localhost, 127.0.0.1, [::1] and "
                                          "`host` ('*.example.org': its subdomains; '*': any)")
    cache_bytes: int = Field(256 * 2**20, ge=0, description="responses about complete runs kept in memory "
                                                            "(they never change); 0: no cache")
    jobs_dir: Path | None = Field(None, description="job logs and uploads; default: <store folder>/<store name>.jobs/")
    networks_dir: Path = Field(Path("checkpoints"), description="the network files comparison and audit jobs may use, "
                                                                "named by file name (relative: from the folder the "
                                                                "service starts in)")
    keys_required: bool | None = None
    max_running_jobs: int = Field(1, ge=1, description="sampling jobs at a time (each uses every CPU core it can)")
    job_lock_timeout: float = Field(120.0, gt=0, description="a job's writer waits this long for the lock "
                                                             "(readers may be busy)")
    job_niceness: int = Field(10, description="jobs run this much nicer than the service (serving keeps the CPU)")
    python: str | None = Field(None, description="interpreter for job subprocesses (default: this one)")
    c2pa_cert: Path | None = Field(None, description="certificate chain (PEM, signer first) that signs C2PA exports")
    c2pa_key: Path | None = Field(None, description="its private key (PEM): read to sign, never stored or logged")

    def __init__(self, **values):
        if "db_path" in values:  # as its alias, so that it overrides AUDITOR_DB in every pydantic-settings 2.x
            values[database.DB_ENV] = values.pop("db_path")
        try:
            super().__init__(**values)
        except ValidationError as exc:
            raise UserError(f"service settings: {_problems(exc)}") from None

    @field_validator("trusted_hosts", mode="before")
    @classmethod
    def _split_hosts(cls, value):
        return [part for part in value.replace(",", " ").split()] if isinstance(value, str) else value

    @field_validator("trusted_hosts")
    @classmethod
    def _check_hosts(cls, hosts: list[str]) -> list[str]:
        return [host_name(h) for h in hosts]

    @field_validator("host")
    @classmethod
    def _check_host(cls, host: str) -> str:
        host_name(host)
        return host

    @property
    def allowed_hosts(self) -> list[str]:
        """The Host names the service answers (TrustedHosts): the loopback names, the bind host, trusted_hosts."""
        names = [*LOOPBACK_HOSTS, host_name(self.host), *self.trusted_hosts]
        return list(dict.fromkeys(names))

    @model_validator(mode="after")
    def _default_jobs_dir(self) -> "ServiceSettings":
        if self.jobs_dir is None:
            self.jobs_dir = self.db_path.parent / f"{self.db_path.name}.jobs"
        return self


def _problems(exc: ValidationError) -> str:
    parts = []
    for error in exc.errors():
        where = ".".join(str(p) for p in error.get("loc", ())) or "settings"
        where = "db_path" if where == database.DB_ENV else where
        parts.append(f"{where}: {error.get('msg', 'invalid')} (got {error.get('input')!r})")
    return "; ".join(parts)


_HOST_NAME = re.compile(r"\*|(\*\.)?[a-z0-9_-]+(\.[a-z0-9_-]+)*\.?")


def host_name(host: str) -> str:
    """`host` as a Host header names it: lower case, an IPv6 address in brackets; ValueError for
    anything else (a port, a path, spaces, a '*' inside a name)."""
    name = host.strip().lower()
    if ":" in name:  # only an IPv6 address may have colons
        try:
            return f"[{ipaddress.IPv6Address(name.removeprefix('[').removesuffix(']'))}]"
        except ValueError:
            pass
    elif _HOST_NAME.fullmatch(name):
        return name
    raise ValueError(f"{host!r} is not a host name (no port or scheme; '*' or '*.domain' for wildcards)")


def local_mode_message(db_path: os.PathLike | str) -> str:
    return (f"LOCAL SINGLE-USER MODE: {db_path} holds no API key, so every request is allowed without one. "
            "Create a key with `auditor keys create NAME` to require keys.")


def startup_message(settings: ServiceSettings, url: str) -> str:
    """What `auditor serve` prints: where, which store, and whether keys are required."""
    lines = [f"auditor service on {url}  (API docs: {url.rstrip('/')}/api/docs)",
             f"store: {Path(settings.db_path).resolve()}"]
    if settings.keys_required:
        lines.append("API keys REQUIRED: send 'Authorization: Bearer <key>' (API) or open a page with ?key=<key>")
    else:
        lines.append(local_mode_message(settings.db_path))
    if host_name(settings.host) in _WILDCARD_BINDS and "*" not in settings.trusted_hosts:
        lines.append(f"listening on every interface, answering Host names {', '.join(settings.allowed_hosts)} only: "
                     "add the names clients use to AUDITOR_TRUSTED_HOSTS")
    return "\n".join(lines)
