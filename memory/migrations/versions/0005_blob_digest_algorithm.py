"""Blob digest algorithms (memory/blobs.py): `blobs.algorithm`, 'sha256' for every existing row.

New blobs are written with BLAKE3 (`b3:` addresses); rows from before this revision keep sha256 and
are verified with it, so older databases open and resume as they did.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-07
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("blobs", sa.Column("algorithm", sa.String(16), nullable=False, server_default="sha256"))
    # A database taken down to an older revision and back up may hold BLAKE3 blobs already; their
    # address says so (a sha256 address is bare hex).
    op.execute("UPDATE blobs SET algorithm = 'blake3' WHERE sha256 LIKE 'b3:%'")


def downgrade() -> None:
    # Plain ALTER TABLE DROP COLUMN (SQLite >= 3.35), as in 0003: batch mode would rebuild `blobs`.
    op.drop_column("blobs", "algorithm")
