"""Initial schema: datasets, training images, runs, samples, patch sets, steps, weights, stats.

Written out table by table (not metadata.create_all) so that this revision stays fixed when
auditor/models.py evolves; later changes are new revisions.

Revision ID: 0001
Revises:
Create Date: 2025-11-25
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

SEQUENCES = ("dataset_ids", "run_ids", "patch_set_ids")


def _id(sequence: str) -> sa.Column:
    return sa.Column("id", sa.BigInteger, primary_key=True, nullable=False,
                     server_default=sa.text(f"nextval('{sequence}')"))


def upgrade() -> None:
    for name in SEQUENCES:
        op.execute(sa.schema.CreateSequence(sa.Sequence(name)))

    op.create_table(
        "datasets",
        _id("dataset_ids"),
        sa.Column("fingerprint", sa.String(64), nullable=False),
        sa.Column("name", sa.String, nullable=False),
        sa.Column("source", sa.String, nullable=False),
        sa.Column("channels", sa.SmallInteger, nullable=False),
        sa.Column("height", sa.Integer, nullable=False),
        sa.Column("width", sa.Integer, nullable=False),
        sa.Column("count", sa.Integer, nullable=False),
        sa.Column("created_at", sa.DateTime, nullable=False),
        sa.UniqueConstraint("fingerprint"),
    )
    op.create_table(
        "training_images",
        sa.Column("dataset_id", sa.BigInteger, sa.ForeignKey("datasets.id"), primary_key=True, nullable=False),
        sa.Column("image_index", sa.Integer, primary_key=True, nullable=False),
        sa.Column("image_id", sa.String, nullable=False),
        sa.Column("sha256", sa.String(64), nullable=False),
        sa.Column("label", sa.Integer),
        sa.Column("label_name", sa.String),
        sa.Column("source_uri", sa.String),
        sa.Column("owner", sa.String),
        sa.Column("license", sa.String),
        sa.Column("extra", sa.JSON),
    )
    op.create_table(
        "runs",
        _id("run_ids"),
        sa.Column("dataset_id", sa.BigInteger, sa.ForeignKey("datasets.id"), nullable=False),
        sa.Column("status", sa.String, nullable=False),
        sa.Column("denoiser", sa.JSON, nullable=False),
        sa.Column("sampler", sa.JSON, nullable=False),
        sa.Column("seed", sa.BigInteger, nullable=False),
        sa.Column("num_samples", sa.Integer, nullable=False),
        sa.Column("top_k", sa.Integer, nullable=False),
        sa.Column("mass_threshold", sa.Double, nullable=False),
        sa.Column("versions", sa.JSON, nullable=False),
        sa.Column("command", sa.JSON),
        sa.Column("writer", sa.JSON),
        sa.Column("created_at", sa.DateTime, nullable=False),
        sa.Column("finished_at", sa.DateTime),
        sa.Column("timings", sa.JSON),
        sa.Column("error", sa.Text),
    )
    op.create_table(
        "samples",
        sa.Column("run_id", sa.BigInteger, sa.ForeignKey("runs.id"), primary_key=True, nullable=False),
        sa.Column("sample_index", sa.Integer, primary_key=True, nullable=False),
        sa.Column("seed", sa.BigInteger, nullable=False),
        sa.Column("final_image", sa.LargeBinary),
    )
    op.create_table(
        "patch_sets",
        _id("patch_set_ids"),
        sa.Column("fingerprint", sa.String(64), nullable=False),
        sa.Column("description", sa.JSON, nullable=False),
        sa.Column("height", sa.Integer, nullable=False),
        sa.Column("width", sa.Integer, nullable=False),
        sa.Column("num_patches", sa.Integer, nullable=False),
        sa.UniqueConstraint("fingerprint"),
    )
    op.create_table(
        "patch_positions",
        sa.Column("patch_set_id", sa.BigInteger, sa.ForeignKey("patch_sets.id"), primary_key=True, nullable=False),
        sa.Column("position", sa.Integer, primary_key=True, nullable=False),
        sa.Column("top", sa.SmallInteger, nullable=False),
        sa.Column("left", sa.SmallInteger, nullable=False),
        sa.Column("height", sa.SmallInteger, nullable=False),
        sa.Column("width", sa.SmallInteger, nullable=False),
    )
    op.create_table(
        "patch_pixels",
        sa.Column("patch_set_id", sa.BigInteger, sa.ForeignKey("patch_sets.id"), primary_key=True, nullable=False),
        sa.Column("position", sa.Integer, primary_key=True, nullable=False),
        sa.Column("y", sa.SmallInteger, primary_key=True, nullable=False),
        sa.Column("x", sa.SmallInteger, primary_key=True, nullable=False),
    )
    op.create_table(
        "steps",
        sa.Column("run_id", sa.BigInteger, sa.ForeignKey("runs.id"), primary_key=True, nullable=False),
        sa.Column("sample_index", sa.Integer, primary_key=True, nullable=False),
        sa.Column("step", sa.SmallInteger, primary_key=True, nullable=False),
        sa.Column("t", sa.Double, nullable=False),
        sa.Column("t_next", sa.Double, nullable=False),
        sa.Column("patch_set_id", sa.BigInteger, sa.ForeignKey("patch_sets.id"), nullable=False),
        sa.Column("z", sa.LargeBinary, nullable=False),
        sa.Column("denoised", sa.LargeBinary, nullable=False),
    )
    # No primary key on the two bulk tables (see auditor/models.py).
    op.create_table(
        "patch_weights",
        sa.Column("run_id", sa.BigInteger, nullable=False),
        sa.Column("sample_index", sa.Integer, nullable=False),
        sa.Column("step", sa.SmallInteger, nullable=False),
        sa.Column("position", sa.Integer, nullable=False),
        sa.Column("rank", sa.SmallInteger, nullable=False),
        sa.Column("image_index", sa.Integer, nullable=False),
        sa.Column("flip", sa.Boolean, nullable=False),
        sa.Column("source_top", sa.SmallInteger, nullable=False),
        sa.Column("source_left", sa.SmallInteger, nullable=False),
        sa.Column("weight", sa.Float, nullable=False),
    )
    op.create_table(
        "patch_stats",
        sa.Column("run_id", sa.BigInteger, nullable=False),
        sa.Column("sample_index", sa.Integer, nullable=False),
        sa.Column("step", sa.SmallInteger, nullable=False),
        sa.Column("position", sa.Integer, nullable=False),
        sa.Column("mass", sa.Float, nullable=False),
        sa.Column("entropy", sa.Float, nullable=False),
        sa.Column("ess", sa.Float, nullable=False),
    )
    op.execute("COMMENT ON TABLE patch_weights IS "
               "'kept posterior weights (top-k, mass threshold) per sample, step and patch position'")
    op.execute("COMMENT ON TABLE patch_stats IS 'per-position summaries of the full posterior weight vector'")


def downgrade() -> None:
    for table in ("patch_stats", "patch_weights", "steps", "patch_pixels", "patch_positions", "patch_sets",
                  "samples", "runs", "training_images", "datasets"):
        op.drop_table(table)
    for name in SEQUENCES:
        op.execute(sa.schema.DropSequence(sa.Sequence(name)))
