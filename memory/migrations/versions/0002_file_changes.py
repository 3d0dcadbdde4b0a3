"""The file-change journal: before/after bytes of every file a tool wrote, per turn (for undo/rewind).

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-26
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "file_changes",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("session_id", sa.String(36), sa.ForeignKey("sessions.id", ondelete="CASCADE"), nullable=False),
        sa.Column("turn", sa.Integer(), nullable=False),
        sa.Column("path", sa.Text(), nullable=False),
        sa.Column("before_blob", sa.String(64), sa.ForeignKey("blobs.sha256"), nullable=True),
        sa.Column("after_blob", sa.String(64), sa.ForeignKey("blobs.sha256"), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("reverted", sa.Boolean(), nullable=False),
    )
    op.create_index("ix_file_changes_session_turn", "file_changes", ["session_id", "turn"])
    op.create_index("ix_file_changes_before_blob", "file_changes", ["before_blob"])
    op.create_index("ix_file_changes_after_blob", "file_changes", ["after_blob"])


def downgrade() -> None:
    op.drop_table("file_changes")
