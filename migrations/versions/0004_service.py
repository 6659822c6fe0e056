"""Report service: API keys (hashed) and submitted jobs.

- api_keys (id, name, scopes, hash, created_at, revoked_at, last_used_at): `hash` is the
  sha256 of the whole token `pspc_<id>_<secret>`; the token itself is never stored. scopes is
  a comma-separated subset of read,submit. A revoked key keeps its row (audit trail).
- jobs (id, kind, status, request, run_id, pid, log_path, created_at, started_at,
  finished_at, error): work submitted to the service (kind 'sample'), run by a subprocess
  (`python -m auditor.cli sample ...`) that writes the run; status queued -> running ->
  complete | failed. run_id is filled in once the subprocess has created its run. No
  foreign key on run_id: DuckDB updates an indexed column as delete + insert.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-26
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

SEQUENCES = ("api_key_ids", "job_ids")


def _id(sequence: str) -> sa.Column:
    return sa.Column("id", sa.BigInteger, primary_key=True, nullable=False,
                     server_default=sa.text(f"nextval('{sequence}')"))


def upgrade() -> None:
    for name in SEQUENCES:
        op.execute(sa.schema.CreateSequence(sa.Sequence(name)))
    op.create_table(
        "api_keys",
        _id("api_key_ids"),
        sa.Column("name", sa.String, nullable=False),
        sa.Column("scopes", sa.String, nullable=False),
        sa.Column("hash", sa.String(64), nullable=False),
        sa.Column("created_at", sa.DateTime, nullable=False),
        sa.Column("revoked_at", sa.DateTime),
        sa.Column("last_used_at", sa.DateTime),
    )
    op.create_table(
        "jobs",
        _id("job_ids"),
        sa.Column("kind", sa.String, nullable=False),
        sa.Column("status", sa.String, nullable=False),
        sa.Column("request", sa.JSON, nullable=False),
        sa.Column("run_id", sa.BigInteger),
        sa.Column("pid", sa.Integer),
        sa.Column("log_path", sa.String),
        sa.Column("created_at", sa.DateTime, nullable=False),
        sa.Column("started_at", sa.DateTime),
        sa.Column("finished_at", sa.DateTime),
        sa.Column("error", sa.Text),
    )


def downgrade() -> None:
    op.drop_table("jobs")
    op.drop_table("api_keys")
    for name in SEQUENCES:
        op.execute(sa.schema.DropSequence(sa.Sequence(name)))
