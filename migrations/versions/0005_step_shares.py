"""Per-step source shares stored by the recorder: table step_shares; step_sources reads it.

Deriving every step's shares from patch_weights at query time costs a pass over all weight
rows (seconds on a store of 10M rows), too slow for the rights holder's question "which
samples used this image?". The recorder now writes, with each step, one row per (sample,
training image) with the share it computed from the same weights (the formula below), and
the views read that table. pixel_weights stays derived from patch_weights.

- step_shares (run_id, sample_index, step, image_index, share, flip_share, patches):
  share = sum over the image's kept weights w (position k, either flip) of
  w x patch_share_k, patch_share_k = (sum over the pixels q of patch k of 1 / cover(q)) / (H W)
  = the mean over pixels of the pixel weight; flip_share: the part from the mirrored copy;
  patches: how many patch positions kept the image.
- Upgrade backfills step_shares from the existing patch_weights with exactly that formula
  in SQL, then redefines step_sources (and, depending on it, sample_sources and
  trajectory_sources) over the table. Downgrade restores the derived views and drops it.

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-25
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


DERIVED_SHARES = """
WITH coverage AS (
    SELECT patch_set_id, y, x, count(*) AS patches
    FROM patch_pixels
    GROUP BY patch_set_id, y, x
), patch_share AS (
    SELECT p.patch_set_id, p.position, sum(1.0 / c.patches) / (ps.height * ps.width) AS share
    FROM patch_pixels AS p
    JOIN coverage AS c ON c.patch_set_id = p.patch_set_id AND c.y = p.y AND c.x = p.x
    JOIN patch_sets AS ps ON ps.id = p.patch_set_id
    GROUP BY p.patch_set_id, p.position, ps.height, ps.width
)
SELECT w.run_id, w.sample_index, w.step, w.image_index,
       sum(CAST(w.weight AS DOUBLE) * ps.share) AS share,
       coalesce(sum(CAST(w.weight AS DOUBLE) * ps.share) FILTER (WHERE w.flip), 0.0) AS flip_share,
       count(DISTINCT w.position) AS patches
FROM patch_weights AS w
JOIN steps AS s ON s.run_id = w.run_id AND s.sample_index = w.sample_index AND s.step = w.step
JOIN patch_share AS ps ON ps.patch_set_id = s.patch_set_id AND ps.position = w.position
GROUP BY w.run_id, w.sample_index, w.step, w.image_index
"""

SAMPLE_SOURCES = """
CREATE VIEW sample_sources AS
SELECT src.run_id, src.sample_index, src.step, src.image_index, src.share, src.flip_share, src.patches
FROM step_sources AS src
JOIN steps AS s ON s.run_id = src.run_id AND s.sample_index = src.sample_index AND s.step = src.step
WHERE s.t_next = 0
"""

TRAJECTORY_SOURCES = """
CREATE VIEW trajectory_sources AS
WITH coefficients AS (
    SELECT run_id, sample_index, step,
           (1.0 - t_next / t) / sum(1.0 - t_next / t) OVER (PARTITION BY run_id, sample_index) AS coefficient
    FROM steps
)
SELECT src.run_id, src.sample_index, src.image_index,
       sum(c.coefficient * src.share) AS share,
       sum(c.coefficient * src.flip_share) AS flip_share,
       count(*) AS steps
FROM step_sources AS src
JOIN coefficients AS c ON c.run_id = src.run_id AND c.sample_index = src.sample_index AND c.step = src.step
GROUP BY src.run_id, src.sample_index, src.image_index
"""


def _recreate(step_sources_sql: str) -> None:
    for view in ("trajectory_sources", "sample_sources", "step_sources"):
        op.execute(f"DROP VIEW {view}")
    op.execute(step_sources_sql)
    op.execute(SAMPLE_SOURCES)
    op.execute(TRAJECTORY_SOURCES)


def upgrade() -> None:
    op.create_table(
        "step_shares",
        sa.Column("run_id", sa.BigInteger, nullable=False),
        sa.Column("sample_index", sa.Integer, nullable=False),
        sa.Column("step", sa.SmallInteger, nullable=False),
        sa.Column("image_index", sa.Integer, nullable=False),
        sa.Column("share", sa.Double, nullable=False),
        sa.Column("flip_share", sa.Double, nullable=False),
        sa.Column("patches", sa.Integer, nullable=False),
        comment="per step, the share of D(z_t) built from each training image (written by the recorder)",
    )
    op.execute(f"INSERT INTO step_shares {DERIVED_SHARES}")
    _recreate("CREATE VIEW step_sources AS "
              "SELECT run_id, sample_index, step, image_index, share, flip_share, patches FROM step_shares")


def downgrade() -> None:
    _recreate(f"CREATE VIEW step_sources AS {DERIVED_SHARES}")
    op.drop_table("step_shares")
