"""The file journal's rows: each file write a tool made (before and after bytes as blobs), per turn, so a
session's changes can be shown, undone and rewound (agent/journal.py, tools/journal.py). A part of
`Store` (memory/store.py), kept apart by job."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from hybrid_agent.memory import blob_read, blobs
from hybrid_agent.memory.queries import now, session_row, utc
from hybrid_agent.memory.records import FileChange
from hybrid_agent.memory.schema import FileChangeRow
from sqlalchemy import select, update
from sqlalchemy.orm import Session


class FileJournalOps:
    """`Store`'s file-journal methods; they run in its read and write transactions."""

    _in_read: Callable[..., Any]
    _in_write: Callable[..., Any]

    def record_file_change(
        self, session_id: str, turn: int, path: str, before: bytes | None, after: bytes | None
    ) -> int:
        """Journal one file write at once (None = absent / deleted). Returns the entry's id."""
        prepared = [None if b is None else blobs.prepare_blob(bytes(b)) for b in (before, after)]

        def do(s: Session) -> int:
            session_row(s, session_id)
            blobs.write_blobs(s, [b for b in prepared if b is not None])
            row = FileChangeRow(
                session_id=session_id,
                turn=turn,
                path=path,
                before_blob=prepared[0] and prepared[0].sha256,
                after_blob=prepared[1] and prepared[1].sha256,
                created_at=now(),
                reverted=False,
            )
            s.add(row)
            s.flush()
            return row.id

        return self._in_write(do, "recording a file change")

    def file_changes(self, session_id: str, after_turn: int | None = None) -> list[FileChange]:
        """Journal entries in the order they happened; only turns > `after_turn` when given."""

        def do(s: Session) -> list[FileChange]:
            session_row(s, session_id)
            q = select(FileChangeRow).where(FileChangeRow.session_id == session_id)
            if after_turn is not None:
                q = q.where(FileChangeRow.turn > after_turn)
            out = []
            for r in s.scalars(q.order_by(FileChangeRow.id)):
                what = f"session {session_id} turn {r.turn}: file change {r.path}"
                before, after = (
                    None if sha is None else blob_read.read_blob(s, sha, what=what)
                    for sha in (r.before_blob, r.after_blob)
                )
                out.append(
                    FileChange(
                        r.id, r.session_id, r.turn, r.path, before, after, utc(r.created_at), r.reverted
                    )
                )
            return out

        return self._in_read(do, "reading the file journal")

    def mark_reverted(self, change_ids: Iterable[int]) -> None:
        ids = list(change_ids)
        self._in_write(
            lambda s: s.execute(update(FileChangeRow).where(FileChangeRow.id.in_(ids)).values(reverted=True)),
            "marking file changes reverted",
        )

    def move_file_changes(self, change_ids: Iterable[int], session_id: str) -> None:
        """Give journal entries to another session (a turn saved in a fork moves its changes along)."""
        ids = list(change_ids)

        def do(s: Session) -> None:
            session_row(s, session_id)
            s.execute(update(FileChangeRow).where(FileChangeRow.id.in_(ids)).values(session_id=session_id))

        self._in_write(do, "moving file changes")
