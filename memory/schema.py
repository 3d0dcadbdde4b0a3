"""The database schema: one typed source of truth (SQLAlchemy 2.0 declarative, `Mapped[...]`).

Alembic migrations in `memory/migrations/versions/` build exactly this; a test compares the migrated
database with this metadata so the two cannot drift.

Design choices:
- Blobs are content-addressed (`Blob.sha256`) and stored as `BlobChunk` rows of a few MiB, each with
  its own sha256: one multi-hundred-MB BLOB row is slow in SQLite and awkward in PostgreSQL.
- Rows that use bytes (snapshots, pages, file changes) reference blobs by hash. A fork copies those
  small rows, never the bytes; a blob lives while any row references it (garbage collected on delete).
- `StatePageRow.turn` is the turn that created the page, so "the pages of turn N" is a range query and a
  fork at turn N copies exactly the pages with `turn <= N`.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

EVENT_KINDS = ("user", "assistant", "tool_call", "tool_result", "system")


class Base(DeclarativeBase):
    pass


class SessionRow(Base):
    __tablename__ = "sessions"

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    title: Mapped[str] = mapped_column(Text)
    workspace: Mapped[str] = mapped_column(Text)
    model_fingerprint: Mapped[str] = mapped_column(String(128))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    # A fork remembers where it came from; it keeps working when the parent is deleted (SET NULL).
    parent_id: Mapped[str | None] = mapped_column(
        String(36), ForeignKey("sessions.id", ondelete="SET NULL"), nullable=True
    )
    fork_turn: Mapped[int | None] = mapped_column(Integer, nullable=True)
    meta: Mapped[dict[str, Any]] = mapped_column(JSON)
    # The digest of the newest snapshot row (memory/integrity.py); NULL until a turn is saved.
    head_digest: Mapped[str | None] = mapped_column(String(64), nullable=True)


class EventRow(Base):
    __tablename__ = "events"
    __table_args__ = (UniqueConstraint("session_id", "turn", "seq", name="uq_events_session_turn_seq"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    session_id: Mapped[str] = mapped_column(String(36), ForeignKey("sessions.id", ondelete="CASCADE"))
    turn: Mapped[int] = mapped_column(Integer)
    seq: Mapped[int] = mapped_column(Integer)
    kind: Mapped[str] = mapped_column(String(16))  # one of EVENT_KINDS
    content: Mapped[str] = mapped_column(Text)
    data: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class Blob(Base):
    __tablename__ = "blobs"

    # The address: a digest over (chunk size, total size, the chunks' digests), see memory/blobs.py;
    # a bare sha256 hex or `b3:` + BLAKE3 hex. The column keeps its first name.
    sha256: Mapped[str] = mapped_column(String(64), primary_key=True)
    size: Mapped[int] = mapped_column(BigInteger)
    chunk_size: Mapped[int] = mapped_column(Integer)
    n_chunks: Mapped[int] = mapped_column(Integer)
    # The digest algorithm of the address and of every chunk: 'sha256' (all rows before schema
    # revision 0005) or 'blake3'.
    algorithm: Mapped[str] = mapped_column(String(16), server_default="sha256")
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class BlobChunk(Base):
    __tablename__ = "blob_chunks"

    blob_sha256: Mapped[str] = mapped_column(
        String(64), ForeignKey("blobs.sha256", ondelete="CASCADE"), primary_key=True
    )
    idx: Mapped[int] = mapped_column(Integer, primary_key=True)
    sha256: Mapped[str] = mapped_column(String(64))
    data: Mapped[bytes] = mapped_column(LargeBinary)


class SnapshotRow(Base):
    __tablename__ = "snapshots"
    __table_args__ = (UniqueConstraint("session_id", "turn", name="uq_snapshots_session_turn"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    session_id: Mapped[str] = mapped_column(String(36), ForeignKey("sessions.id", ondelete="CASCADE"))
    turn: Mapped[int] = mapped_column(Integer)
    n_tokens: Mapped[int] = mapped_column(BigInteger)
    recurrent_blob: Mapped[str] = mapped_column(String(64), ForeignKey("blobs.sha256"), index=True)
    meta: Mapped[dict[str, Any]] = mapped_column(JSON)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    # The chain digest over this row, its page list and the previous row (memory/integrity.py);
    # NULL on rows written before schema revision 0003.
    digest: Mapped[str | None] = mapped_column(String(64), nullable=True)


class StatePageRow(Base):
    """Where one saved cache page's tensors are (its blob). Private to memory/: callers save and load
    (start, end, tensors) triples (memory/records.py `PageParts`)."""

    __tablename__ = "state_pages"
    __table_args__ = (
        UniqueConstraint("session_id", "token_start", name="uq_state_pages_session_start"),
        Index("ix_state_pages_session_turn", "session_id", "turn"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    session_id: Mapped[str] = mapped_column(String(36), ForeignKey("sessions.id", ondelete="CASCADE"))
    turn: Mapped[int] = mapped_column(Integer)
    token_start: Mapped[int] = mapped_column(BigInteger)
    token_end: Mapped[int] = mapped_column(BigInteger)
    blob_sha256: Mapped[str] = mapped_column(String(64), ForeignKey("blobs.sha256"), index=True)


class FileChangeRow(Base):
    __tablename__ = "file_changes"
    __table_args__ = (Index("ix_file_changes_session_turn", "session_id", "turn"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    session_id: Mapped[str] = mapped_column(String(36), ForeignKey("sessions.id", ondelete="CASCADE"))
    turn: Mapped[int] = mapped_column(Integer)
    path: Mapped[str] = mapped_column(Text)
    # None = the file did not exist (before) / was deleted (after).
    before_blob: Mapped[str | None] = mapped_column(
        String(64), ForeignKey("blobs.sha256"), nullable=True, index=True
    )
    after_blob: Mapped[str | None] = mapped_column(
        String(64), ForeignKey("blobs.sha256"), nullable=True, index=True
    )
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    reverted: Mapped[bool] = mapped_column(Boolean, default=False)


class PrefixRow(Base):
    """A saved state keyed by the digest of the token prefix it holds (`hybrid-agent serve`,
    memory/prefixes.py): the snapshot is turn `turn` of session `session_id`, `n_tokens` long."""

    __tablename__ = "prefix_states"

    digest: Mapped[str] = mapped_column(String(64), primary_key=True)
    session_id: Mapped[str] = mapped_column(
        String(36), ForeignKey("sessions.id", ondelete="CASCADE"), index=True
    )
    turn: Mapped[int] = mapped_column(Integer)
    n_tokens: Mapped[int] = mapped_column(BigInteger)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    # When a server last saved, found or restored it (memory/prefix_retention.py evicts the least
    # recently used first); NULL on rows from before schema revision 0006 (their created_at counts).
    last_used_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True, index=True)
