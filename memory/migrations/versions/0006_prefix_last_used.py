"""`prefix_states.last_used_at`: when a saved prefix state was last saved, found or restored, for the
retention policy of `hybrid-agent serve` (memory/prefix_retention.py). Existing rows start from their
`created_at`.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-07
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("prefix_states", sa.Column("last_used_at", sa.DateTime(timezone=True), nullable=True))
    op.execute("UPDATE prefix_states SET last_used_at = created_at")
    op.create_index("ix_prefix_states_last_used_at", "prefix_states", ["last_used_at"])


def downgrade() -> None:
    op.drop_index("ix_prefix_states_last_used_at", table_name="prefix_states")
    # Plain ALTER TABLE DROP COLUMN (SQLite >= 3.35), as in 0003 and 0005.
    op.drop_column("prefix_states", "last_used_at")
