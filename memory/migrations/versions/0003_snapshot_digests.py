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
    with op.batch_alter_table("snapshots") as batch:
        batch.drop_column("digest")
    with op.batch_alter_table("sessions") as batch:
        batch.drop_column("head_digest")
