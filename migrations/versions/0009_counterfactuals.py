"""Counterfactual runs: a sample re-run (or its trajectory replayed) without some training images.

- counterfactuals (run_id, parent_run_id, parent_sample, mode, selector, removed_count,
  removed_sha256, mse, max_abs, similarity, descriptor, diverged_step, step_changes,
  change_map, seconds, parent_seconds, created_at): one row per complete counterfactual run
  (kind 'counterfactual'), written in the transaction that completes it, with the change
  against the parent sample.
- counterfactual_removed (run_id, image_index): the training images removed (their mirrored
  entries with them).

Downgrade drops both tables.

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "counterfactuals",
        sa.Column("run_id", sa.BigInteger, sa.ForeignKey("runs.id"), primary_key=True, nullable=False),
        sa.Column("parent_run_id", sa.BigInteger, sa.ForeignKey("runs.id"), nullable=False),
        sa.Column("parent_sample", sa.Integer, nullable=False),
        sa.Column("mode", sa.String, nullable=False),
        sa.Column("selector", sa.JSON, nullable=False),
        sa.Column("removed_count", sa.Integer, nullable=False),
        sa.Column("removed_sha256", sa.String(64), nullable=False),
        sa.Column("mse", sa.Double, nullable=False),
        sa.Column("max_abs", sa.Double, nullable=False),
        sa.Column("similarity", sa.Double),
        sa.Column("descriptor", sa.String),
        sa.Column("diverged_step", sa.SmallInteger),
        sa.Column("step_changes", sa.JSON, nullable=False),
        sa.Column("change_map", sa.LargeBinary, nullable=False),
        sa.Column("seconds", sa.Double),
        sa.Column("parent_seconds", sa.Double),
        sa.Column("created_at", sa.DateTime, nullable=False),
    )
    op.create_table(
        "counterfactual_removed",
        sa.Column("run_id", sa.BigInteger, sa.ForeignKey("runs.id"), primary_key=True, nullable=False),
        sa.Column("image_index", sa.Integer, primary_key=True, nullable=False),
    )


def downgrade() -> None:
    op.drop_table("counterfactual_removed")
    op.drop_table("counterfactuals")
