"""Training image pixels in the store: training_images.pixels (uint8 [C, H, W] bytes).

The report service shows the source patches a sample was built from, so the store must
hold the training pixels, not only their hashes. Existing rows get NULL; running
`auditor ingest` again on the same data fills them in (ingest is idempotent by
fingerprint and only adds what is missing). Downgrade drops the column.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-25
"""

from __future__ import annotations

from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute("ALTER TABLE training_images ADD COLUMN pixels BLOB")


def downgrade() -> None:
    op.execute("ALTER TABLE training_images DROP COLUMN pixels")
