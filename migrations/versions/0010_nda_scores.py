"""The NDA-style attribution score as a view: nda_scores.

nda_scores (run_id, sample_index, image_index, score, flip_score, steps): a training image's
kept posterior weights summed over every patch position and step of a sample (NDA-style, Zhao
et al. 2025; pspc.posterior.scores.nda, which the attribution benchmark measured beside the
headline trajectory share: `trajectory_sources` and `sample_sources` are the other two scores
in SQL). flip_score: the part from the mirrored copy; steps: how many steps kept the image.

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-01
"""

from __future__ import annotations

from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None

NDA_SCORES = """
CREATE VIEW nda_scores AS
SELECT run_id, sample_index, image_index,
       sum(weight) AS score,
       sum(CASE WHEN flip THEN weight ELSE 0 END) AS flip_score,
       count(DISTINCT step) AS steps
FROM patch_weights
GROUP BY run_id, sample_index, image_index
"""


def upgrade() -> None:
    op.execute(NDA_SCORES)


def downgrade() -> None:
    op.execute("DROP VIEW nda_scores")
