"""memory/ — the session database: sessions, events, per-turn state snapshots with append-only
attention-cache pages, forks, and the file-change journal (see docs/design.md, Storage).

Speaks `dict[str, torch.Tensor]`, bytes and metadata, and imports nothing of `model/`: a cache page is a
`(start, end, tensors)` triple (`PageParts`), the shape of the model's `Page`.
"""

from hybrid_agent.memory.errors import (
    CorruptDataError,
    DatabaseUnavailableError,
    FingerprintMismatchError,
    InvalidEventError,
    InvalidMetaError,
    InvalidPageError,
    NotADatabaseError,
    SchemaTooNewError,
    SessionNotFoundError,
    StoreBusyError,
    StoreError,
    TurnNotFoundError,
    TurnOrderError,
)
from hybrid_agent.memory.maintenance import CheckReport
from hybrid_agent.memory.records import (
    CompactStats,
    Event,
    FileChange,
    FileEdit,
    SaveStats,
    SessionInfo,
    Snapshot,
    TurnInfo,
)
from hybrid_agent.memory.store import Store

__all__ = [
    "CheckReport",
    "CompactStats",
    "CorruptDataError",
    "DatabaseUnavailableError",
    "Event",
    "FileChange",
    "FileEdit",
    "FingerprintMismatchError",
    "InvalidEventError",
    "InvalidMetaError",
    "InvalidPageError",
    "NotADatabaseError",
    "SaveStats",
    "SchemaTooNewError",
    "SessionInfo",
    "SessionNotFoundError",
    "Snapshot",
    "Store",
    "StoreBusyError",
    "StoreError",
    "TurnInfo",
    "TurnNotFoundError",
    "TurnOrderError",
]
