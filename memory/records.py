"""What the store hands in and out: plain frozen values, no ORM objects (they would outlive their
database session). Tensors are always fresh CPU tensors owned by the caller. A cache page is a
`PageParts` triple (start, end, tensors): the shape of model/state.py's `Page`, which the store never
imports (memory/ stores named tensors and bytes, not the model's types; docs/design.md)."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import torch

# Attention-cache tensors for the absolute token positions [start, end): (start, end, tensors).
PageParts = tuple[int, int, dict[str, torch.Tensor]]


@dataclass(frozen=True)
class Event:
    """One thing that happened in a turn. `kind` is user/assistant/tool_call/tool_result/system.

    Given to `save_turn` with only kind/content/data; read back with turn, seq and created_at set.
    """

    kind: str
    content: str = ""
    data: dict[str, Any] | None = None
    turn: int | None = None
    seq: int | None = None
    created_at: datetime | None = None


@dataclass(frozen=True)
class FileEdit:
    """A file-journal entry given to `save_turn`: bytes before and after (None = absent)."""

    path: str
    before: bytes | None
    after: bytes | None


@dataclass(frozen=True)
class FileChange:
    """A file-journal entry read back (`Store.file_changes`)."""

    id: int
    session_id: str
    turn: int
    path: str
    before: bytes | None
    after: bytes | None
    created_at: datetime
    reverted: bool


@dataclass(frozen=True)
class SessionInfo:
    id: str
    title: str
    workspace: str
    model_fingerprint: str
    created_at: datetime
    updated_at: datetime
    parent_id: str | None
    fork_turn: int | None
    meta: dict[str, Any] = field(default_factory=dict)
    latest_turn: int | None = None  # None: nothing saved yet
    n_tokens: int = 0  # tokens in the latest snapshot


@dataclass(frozen=True)
class TurnInfo:
    """A saved snapshot without its tensors (`Store.turns`)."""

    turn: int
    n_tokens: int
    created_at: datetime
    meta: dict[str, Any]


@dataclass(frozen=True)
class Snapshot:
    session_id: str
    turn: int
    n_tokens: int
    recurrent: dict[str, torch.Tensor]
    pages: list[PageParts]  # sorted by start; with a window only those overlapping it
    meta: dict[str, Any]


@dataclass(frozen=True)
class SaveStats:
    """What one `save_turn` wrote: bytes of new blobs, and bytes that were already stored (deduplicated)."""

    turn: int
    bytes_written: int
    bytes_deduplicated: int
    pages: int


@dataclass(frozen=True)
class CompactStats:
    """What `Store.compact` did: blobs deleted, and the SQLite file's bytes (with its log) before and
    after (None for a server database)."""

    blobs_freed: int
    bytes_before: int | None
    bytes_after: int | None
