"""Network comparisons and external audits: run kinds, networks, per-step agreement, similarity scores.

- runs gains `kind` ('pspc', the default and every earlier run; 'network-explained';
  'samples-only'; 'external-audit'), `network_id` (networks.id) and `details` (JSON: the
  comparison, or the audit's method and input). Nullable with a default: DuckDB cannot add a
  NOT NULL column (or a foreign key) to a table that others reference.
- networks (id, fingerprint unique, sha256, name, kind, source, channels, height, width,
  config, created_at): fingerprint = sha256 of (sha256 of the file or the module's tensors,
  image shape, conversion), so a VP model loaded as epsilon-prediction is another network.
- comparisons (id, dataset_id, network_id, status, seed, num_samples, sampler, config,
  versions, command, created_at, finished_at, error) and comparison_runs (comparison_id,
  role, run_id): role 'network' is the network-explained run, the others are named after
  their denoiser ('pspc-square', 'gaussian', ...). All runs of a comparison start sample i
  from the same noise (seed + i).
- step_agreement (run_id, sample_index, step, t, network_denoised, mse, max_abs_error):
  the network's D(z_t) (float32 [C, H, W] bytes) at each step of a network-explained run or
  an audit replay, and its distance to PSPC's D(z_t) on the same z_t (steps.denoised).
- descriptors (fingerprint primary key, name, kind, dimension, preprocessing, record,
  created_at): what scored similarities and copy matches.
- similarity_scores (run_a, run_b, sample_index, descriptor_fingerprint, comparison_id,
  descriptor, preprocessing, score, thresholds, flag, flagged) and copy_matches (run_id,
  sample_index, descriptor_fingerprint, rank, image_index, flip, score, descriptor,
  preprocessing, thresholds, flag, flagged, search): every score with its descriptor name,
  preprocessing and thresholds (flag: the highest threshold reached, NULL if none).

Downgrade drops the new tables and sequences; the three columns of runs stay (DuckDB
cannot drop a column of a referenced table either): 0005 code ignores them, and upgrading
again reuses them (ADD COLUMN IF NOT EXISTS).

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-27
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

SEQUENCES = ("network_ids", "comparison_ids")
TABLES = ("copy_matches", "similarity_scores", "descriptors", "step_agreement", "comparison_runs", "comparisons",
          "networks")


def _id(sequence: str) -> sa.Column:
    return sa.Column("id", sa.BigInteger, primary_key=True, nullable=False,
                     server_default=sa.text(f"nextval('{sequence}')"))


def _score_columns() -> list[sa.Column]:
    return [sa.Column("descriptor", sa.String, nullable=False),
            sa.Column("preprocessing", sa.JSON, nullable=False),
            sa.Column("score", sa.Double, nullable=False),
            sa.Column("thresholds", sa.JSON, nullable=False),
            sa.Column("flag", sa.Double),
            sa.Column("flagged", sa.Boolean, nullable=False)]


def upgrade() -> None:
    op.execute("ALTER TABLE runs ADD COLUMN IF NOT EXISTS kind VARCHAR DEFAULT 'pspc'")
    op.execute("ALTER TABLE runs ADD COLUMN IF NOT EXISTS network_id BIGINT")
    op.execute("ALTER TABLE runs ADD COLUMN IF NOT EXISTS details JSON")
    op.execute("UPDATE runs SET kind = 'pspc' WHERE kind IS NULL")
    for name in SEQUENCES:
        op.execute(sa.schema.CreateSequence(sa.Sequence(name)))
    op.create_table(
        "networks",
        _id("network_ids"),
        sa.Column("fingerprint", sa.String(64), nullable=False),
        sa.Column("sha256", sa.String(64), nullable=False),
        sa.Column("name", sa.String, nullable=False),
        sa.Column("kind", sa.String, nullable=False),
        sa.Column("source", sa.String),
        sa.Column("channels", sa.SmallInteger, nullable=False),
        sa.Column("height", sa.Integer, nullable=False),
        sa.Column("width", sa.Integer, nullable=False),
        sa.Column("config", sa.JSON, nullable=False),
        sa.Column("created_at", sa.DateTime, nullable=False),
        sa.UniqueConstraint("fingerprint"),
    )
    op.create_table(
        "comparisons",
        _id("comparison_ids"),
        sa.Column("dataset_id", sa.BigInteger, sa.ForeignKey("datasets.id"), nullable=False),
        sa.Column("network_id", sa.BigInteger, sa.ForeignKey("networks.id"), nullable=False),
        sa.Column("status", sa.String, nullable=False),
        sa.Column("seed", sa.BigInteger, nullable=False),
        sa.Column("num_samples", sa.Integer, nullable=False),
        sa.Column("sampler", sa.JSON, nullable=False),
        sa.Column("config", sa.JSON, nullable=False),
        sa.Column("versions", sa.JSON, nullable=False),
        sa.Column("command", sa.JSON),
        sa.Column("created_at", sa.DateTime, nullable=False),
        sa.Column("finished_at", sa.DateTime),
        sa.Column("error", sa.Text),
    )
    op.create_table(
        "comparison_runs",
        sa.Column("comparison_id", sa.BigInteger, sa.ForeignKey("comparisons.id"), primary_key=True, nullable=False),
        sa.Column("role", sa.String, primary_key=True, nullable=False),
        sa.Column("run_id", sa.BigInteger, sa.ForeignKey("runs.id"), nullable=False),
    )
    op.create_table(
        "step_agreement",
        sa.Column("run_id", sa.BigInteger, sa.ForeignKey("runs.id"), primary_key=True, nullable=False),
        sa.Column("sample_index", sa.Integer, primary_key=True, nullable=False),
        sa.Column("step", sa.SmallInteger, primary_key=True, nullable=False),
        sa.Column("t", sa.Double, nullable=False),
        sa.Column("network_denoised", sa.LargeBinary, nullable=False),
        sa.Column("mse", sa.Double, nullable=False),
        sa.Column("max_abs_error", sa.Double, nullable=False),
    )
    op.create_table(
        "descriptors",
        sa.Column("fingerprint", sa.String(64), primary_key=True, nullable=False),
        sa.Column("name", sa.String, nullable=False),
        sa.Column("kind", sa.String, nullable=False),
        sa.Column("dimension", sa.Integer, nullable=False),
        sa.Column("preprocessing", sa.JSON, nullable=False),
        sa.Column("record", sa.JSON, nullable=False),
        sa.Column("created_at", sa.DateTime, nullable=False),
    )
    op.create_table(
        "similarity_scores",
        sa.Column("run_a", sa.BigInteger, sa.ForeignKey("runs.id"), primary_key=True, nullable=False),
        sa.Column("run_b", sa.BigInteger, sa.ForeignKey("runs.id"), primary_key=True, nullable=False),
        sa.Column("sample_index", sa.Integer, primary_key=True, nullable=False),
        sa.Column("descriptor_fingerprint", sa.String(64), sa.ForeignKey("descriptors.fingerprint"),
                  primary_key=True, nullable=False),
        sa.Column("comparison_id", sa.BigInteger),
        *_score_columns(),
    )
    op.create_table(
        "copy_matches",
        sa.Column("run_id", sa.BigInteger, sa.ForeignKey("runs.id"), primary_key=True, nullable=False),
        sa.Column("sample_index", sa.Integer, primary_key=True, nullable=False),
        sa.Column("descriptor_fingerprint", sa.String(64), sa.ForeignKey("descriptors.fingerprint"),
                  primary_key=True, nullable=False),
        sa.Column("rank", sa.SmallInteger, primary_key=True, nullable=False),
        sa.Column("image_index", sa.Integer, nullable=False),
        sa.Column("flip", sa.Boolean, nullable=False),
        *_score_columns(),
        sa.Column("search", sa.JSON, nullable=False),
    )


def downgrade() -> None:
    for table in TABLES:
        op.drop_table(table)
    for name in SEQUENCES:
        op.execute(sa.schema.DropSequence(sa.Sequence(name)))
