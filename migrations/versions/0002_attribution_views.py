"""Attribution views: pixel_weights, step_sources, sample_sources, trajectory_sources.

SQL only (no data is moved); downgrade drops them.

- pixel_weights (run_id, sample_index, step, y, x, image_index, flip, weight): the weight of
  training entry (image_index, flip) in output pixel (y, x) of D(z_t) at that step =
  sum over the patches covering (y, x) of their kept posterior weight / the number of
  patches of the set covering (y, x) -- exactly how PSPC composes the pixel (Eq. 11).
  Coverage counts ALL patches of the step's patch set, not only those with kept weights.
- step_sources (run_id, sample_index, step, image_index, share, flip_share, patches): share =
  mean over the H x W pixels of the pixel weight = the fraction of D(z_t) built from that
  training image (flip_share: the part from its mirrored copy; patches: how many patch
  positions kept it). Computed per patch (weight x sum over its pixels of 1/coverage / HW),
  which equals the mean of pixel_weights without expanding to pixels.
- sample_sources (run_id, sample_index, step, image_index, share, flip_share, patches): the
  final image's attribution = step_sources at the last step (t_next = 0), whose output
  D(z, t_last) IS the sample (the last Euler step returns it exactly).
- trajectory_sources (run_id, sample_index, image_index, share, flip_share, steps): sum over the
  recorded steps of w_i x share_i with w_i = a_i / sum_j a_j, a_i = 1 - t_{i+1}/t_i: the
  fraction of the state that step i rewrites with its composite under Euler (z_{i+1} =
  (1 - a_i) z_i + a_i D_i). It measures which training images built the sample along the
  way, including material later overwritten. (The exact coefficient of D_i in the final
  state, a_i prod_{j>i} (1 - a_j), is 0 for every step but the last, because the schedule
  ends at t = 0: that is the final attribution, sample_sources.)

Revision ID: 0002
Revises: 0001
Create Date: 2025-11-25
"""

from __future__ import annotations

from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

PIXEL_WEIGHTS = """
CREATE VIEW pixel_weights AS
WITH coverage AS (
    SELECT patch_set_id, y, x, count(*) AS patches
    FROM patch_pixels
    GROUP BY patch_set_id, y, x
)
SELECT w.run_id, w.sample_index, w.step, p.y, p.x, w.image_index, w.flip,
       sum(CAST(w.weight AS DOUBLE) / c.patches) AS weight
FROM patch_weights AS w
JOIN steps AS s ON s.run_id = w.run_id AND s.sample_index = w.sample_index AND s.step = w.step
JOIN patch_pixels AS p ON p.patch_set_id = s.patch_set_id AND p.position = w.position
JOIN coverage AS c ON c.patch_set_id = p.patch_set_id AND c.y = p.y AND c.x = p.x
GROUP BY w.run_id, w.sample_index, w.step, p.y, p.x, w.image_index, w.flip
"""

STEP_SOURCES = """
CREATE VIEW step_sources AS
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

VIEWS = ("trajectory_sources", "sample_sources", "step_sources", "pixel_weights")


def upgrade() -> None:
    for sql in (PIXEL_WEIGHTS, STEP_SOURCES, SAMPLE_SOURCES, TRAJECTORY_SOURCES):
        op.execute(sql)


def downgrade() -> None:
    for view in VIEWS:
        op.execute(f"DROP VIEW {view}")
