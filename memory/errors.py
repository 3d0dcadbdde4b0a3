"""The store's own exceptions. Each message says what happened and what to do about it; the CLI and TUI
show them without a traceback. All derive from `StoreError`."""

from __future__ import annotations


class StoreError(Exception):
    """Base class of every error the store raises on purpose."""


class NotADatabaseError(StoreError):
    """The file is not an SQLite database, or is one that hybrid-agent did not create."""


class DatabaseUnavailableError(StoreError):
    """The database cannot be opened or reached (bad path or URL, permissions, server down)."""


class SchemaTooNewError(StoreError):
    """The database was written by a newer hybrid-agent (its schema revision is unknown here)."""


class SessionNotFoundError(StoreError):
    """No session with that id."""


class TurnNotFoundError(StoreError):
    """The session exists but has no snapshot for that turn."""


class TurnOrderError(StoreError):
    """`save_turn` was given a turn that is not after the session's latest saved turn."""


class InvalidPageError(StoreError):
    """A cache page's token range is empty, out of order, overlaps saved pages or exceeds n_tokens."""


class InvalidEventError(StoreError, ValueError):
    """An event given to `save_turn` has a kind the store does not know."""


class InvalidMetaError(StoreError, ValueError):
    """Metadata given to the store is not plain JSON."""


class FingerprintMismatchError(StoreError):
    """The snapshot was made by another model than the one it is being loaded into."""


class CorruptDataError(StoreError):
    """Stored bytes failed their sha256 check (or the database file itself is damaged)."""


class StoreBusyError(StoreError):
    """The database stayed locked by other writers for longer than the store is willing to wait."""
