"""Fidelity studies: how closely training-free denoisers reproduce a network (auditor.workflows.fidelity).

- fidelity_studies (id, name, created_at, source, network_name, network_sha256, network,
  training_fingerprint, test_fingerprint, seed, record, findings, denoisers,
  concentration_record, similarity): one study (a run of `auditor fidelity run` or
  bench/fidelity.py, or an imported fidelity.json). `record` is the study's full record
  (command, configuration, datasets, network, sensitivity, states, versions, timings);
  `network` its network part; `denoisers` every denoiser's describe() per process;
  `concentration_record` the concentration table's `within` shares and record;
  `similarity` the descriptor similarity matrix of the samples (means, no per-sample scores).
- fidelity_errors (study_id, process, denoiser, level, position, t, mse, stderr, states):
  the MSE against the network, mean over `states` noisy states, and its standard error, per
  process ('forward', 'reverse'), denoiser (`position`: its column) and noise level (`level`:
  its index; on the reverse process, the sampling step) (paper Figs. 4, 7).
- fidelity_concentration (study_id, level, t, fraction, mean_side, median_side): the side of
  the centred square holding `fraction` of the network's gradient sensitivity G(t),
  mean and median over output pixels (Fig. 3).
- fidelity_similarity (study_id, denoiser, position, similarity, std, samples, descriptor):
  mean descriptor similarity of each denoiser's samples to the network's from the same
  initial noise (Fig. 9), with the descriptor's name.
- fidelity_schedule (study_id, step, t, patch_size, flex_lambda, candidate_errors): a
  schedule tuned on the network (Appendix B): per step, s(t) for PSPC-Square and lambda(t)
  for PSPC-Flex (`flex_lambda`: LAMBDA is a DuckDB keyword), and the MSE of every candidate.

Downgrade drops the five tables and their sequence.

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-29
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None

SEQUENCE = "fidelity_study_ids"
TABLES = ("fidelity_schedule", "fidelity_similarity", "fidelity_concentration", "fidelity_errors", "fidelity_studies")


def _study_id() -> sa.Column:
    return sa.Column("study_id", sa.BigInteger, sa.ForeignKey("fidelity_studies.id"), primary_key=True,
                     nullable=False)


def upgrade() -> None:
    op.execute(sa.schema.CreateSequence(sa.Sequence(SEQUENCE)))
    op.create_table(
        "fidelity_studies",
        sa.Column("id", sa.BigInteger, primary_key=True, nullable=False,
                  server_default=sa.text(f"nextval('{SEQUENCE}')")),
        sa.Column("name", sa.String, nullable=False),
        sa.Column("created_at", sa.DateTime, nullable=False),
        sa.Column("source", sa.String),
        sa.Column("network_name", sa.String),
        sa.Column("network_sha256", sa.String(64)),
        sa.Column("network", sa.JSON, nullable=False),
        sa.Column("training_fingerprint", sa.String(64), nullable=False),
        sa.Column("test_fingerprint", sa.String(64)),
        sa.Column("seed", sa.BigInteger),
        sa.Column("record", sa.JSON, nullable=False),
        sa.Column("findings", sa.JSON, nullable=False),
        sa.Column("denoisers", sa.JSON, nullable=False),
        sa.Column("concentration_record", sa.JSON, nullable=False),
        sa.Column("similarity", sa.JSON),
    )
    op.create_table(
        "fidelity_errors",
        _study_id(),
        sa.Column("process", sa.String, primary_key=True, nullable=False),
        sa.Column("denoiser", sa.String, primary_key=True, nullable=False),
        sa.Column("level", sa.SmallInteger, primary_key=True, nullable=False),
        sa.Column("position", sa.SmallInteger, nullable=False),
        sa.Column("t", sa.Double, nullable=False),
        sa.Column("mse", sa.Double, nullable=False),
        sa.Column("stderr", sa.Double, nullable=False),
        sa.Column("states", sa.Integer),
    )
    op.create_table(
        "fidelity_concentration",
        _study_id(),
        sa.Column("level", sa.SmallInteger, primary_key=True, nullable=False),
        sa.Column("fraction", sa.Double, primary_key=True, nullable=False),
        sa.Column("t", sa.Double, nullable=False),
        sa.Column("mean_side", sa.Double, nullable=False),
        sa.Column("median_side", sa.Double, nullable=False),
    )
    op.create_table(
        "fidelity_similarity",
        _study_id(),
        sa.Column("denoiser", sa.String, primary_key=True, nullable=False),
        sa.Column("position", sa.SmallInteger, nullable=False),
        sa.Column("similarity", sa.Double, nullable=False),
        sa.Column("std", sa.Double),
        sa.Column("samples", sa.Integer),
        sa.Column("descriptor", sa.String, nullable=False),
    )
    op.create_table(
        "fidelity_schedule",
        _study_id(),
        sa.Column("step", sa.SmallInteger, primary_key=True, nullable=False),
        sa.Column("t", sa.Double, nullable=False),
        sa.Column("patch_size", sa.SmallInteger),
        sa.Column("flex_lambda", sa.Double),
        sa.Column("candidate_errors", sa.JSON),
    )


def downgrade() -> None:
    for table in TABLES:
        op.drop_table(table)
    op.execute(sa.schema.DropSequence(sa.Sequence(SEQUENCE)))
