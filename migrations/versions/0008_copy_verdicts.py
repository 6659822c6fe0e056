"""Copy verdicts: calibrated thresholds and the verdicts of stored images (auditor.similarity.verdict).

- copy_calibrations (id, dataset_id, evidence, evidence_fingerprint, call, threshold,
  target_fpr, tpr, fpr, positives, negatives, record, created_at): one threshold of one
  evidence source on one training set, chosen by `auditor calibrate` on a calibration
  split, with the TPR and FPR measured at it. The verdict uses the newest row per
  (dataset, evidence fingerprint) and nothing else.
- copy_verdicts (run_id, sample_index, verdict, reason, evidence, score, threshold, tpr, fpr,
  calibration_id, sources, region, details): the verdict of a stored image.

Downgrade drops both tables and the sequence.

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None

SEQUENCE = "copy_calibration_ids"


def upgrade() -> None:
    op.execute(sa.schema.CreateSequence(sa.Sequence(SEQUENCE)))
    op.create_table(
        "copy_calibrations",
        sa.Column("id", sa.BigInteger, primary_key=True, nullable=False,
                  server_default=sa.text(f"nextval('{SEQUENCE}')")),
        sa.Column("dataset_id", sa.BigInteger, sa.ForeignKey("datasets.id"), nullable=False),
        sa.Column("evidence", sa.String, nullable=False),
        sa.Column("evidence_fingerprint", sa.String(64), nullable=False),
        sa.Column("call", sa.String, nullable=False),
        sa.Column("threshold", sa.Double, nullable=False),
        sa.Column("target_fpr", sa.Double, nullable=False),
        sa.Column("tpr", sa.Double, nullable=False),
        sa.Column("fpr", sa.Double, nullable=False),
        sa.Column("positives", sa.Integer, nullable=False),
        sa.Column("negatives", sa.Integer, nullable=False),
        sa.Column("record", sa.JSON, nullable=False),
        sa.Column("created_at", sa.DateTime, nullable=False),
    )
    op.create_table(
        "copy_verdicts",
        sa.Column("run_id", sa.BigInteger, sa.ForeignKey("runs.id"), primary_key=True, nullable=False),
        sa.Column("sample_index", sa.Integer, primary_key=True, nullable=False),
        sa.Column("verdict", sa.String, nullable=False),
        sa.Column("reason", sa.Text, nullable=False),
        sa.Column("evidence", sa.String),
        sa.Column("score", sa.Double),
        sa.Column("threshold", sa.Double),
        sa.Column("tpr", sa.Double),
        sa.Column("fpr", sa.Double),
        sa.Column("calibration_id", sa.BigInteger),
        sa.Column("sources", sa.JSON, nullable=False),
        sa.Column("region", sa.JSON),
        sa.Column("details", sa.JSON, nullable=False),
    )


def downgrade() -> None:
    op.drop_table("copy_verdicts")
    op.drop_table("copy_calibrations")
    op.execute(sa.schema.DropSequence(sa.Sequence(SEQUENCE)))
