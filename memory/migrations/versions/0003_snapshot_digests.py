"""The snapshot index's digest chain (memory/integrity.py): `snapshots.digest` and `sessions.head_digest`.

Rows written before this revision keep a NULL digest: memory/integrity.py accepts them unchecked when
they precede every digested row of their session, so older databases open and resume as they did.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-06
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("snapshots", sa.Column("digest", sa.String(64), nullable=True))
    op.add_column("sessions", sa.Column("head_digest", sa.String(64), nullable=True))


def downgrade() -> None:
    # Plain ALTER TABLE DROP COLUMN (SQLite >= 3.35): batch mode would rebuild `sessions`, and dropping
    # the old table with foreign keys on would cascade-delete every session's rows.
    op.drop_column("snapshots", "digest")
    op.drop_column("sessions", "head_digest")
