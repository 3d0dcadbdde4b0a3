"""Saved states keyed by the digest of the token prefix they hold (the `prefix_states` table), for
`hybrid-agent serve` (agent/serve_prefix.py).

Each prefix's snapshot is an ordinary turn of an ordinary session, so it is stored, verified, forked and
garbage-collected as every other snapshot is. A conversation that grows one exchange at a time grows one
session one turn at a time (each turn adds only the cache pages of the new tokens); a conversation that
branches off an earlier prefix forks that session at the prefix's turn (rows copied, bytes shared).

Several server processes may share one database: the session row is locked while a turn is appended,
so two processes extending the same prefix at once end up on two sessions (the second one forks), and
the digest row is inserted with ON CONFLICT DO NOTHING (the first process to store a prefix keeps it).

What is kept, and for how long, is memory/prefix_retention.py's (`PrefixIndex.enforce`): a prefix that
was evicted is simply not found, and a state continuing one is stored whole.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import torch
from hybrid_agent.memory import prefix_retention as retention
from hybrid_agent.memory.errors import InvalidPageError, StoreError
from hybrid_agent.memory.queries import now
from hybrid_agent.memory.records import PageParts, Snapshot
from hybrid_agent.memory.schema import PrefixRow, SessionRow, SnapshotRow
from hybrid_agent.memory.store import Store
from hybrid_agent.memory.turns import prepare_turn, write_turn
from sqlalchemy import func, select
from sqlalchemy.orm import Session

PREFIX_TITLE = "serve: saved prefix"
# A prefix session that no prefix names is deleted once unchanged for this long (a younger one may be
# another server's, between its creation and its first turn).
ORPHAN_AGE = timedelta(minutes=10)


@dataclass(frozen=True)
class PrefixRef:
    """Where the state of a token prefix is: turn `turn` of session `session_id`, `n_tokens` long."""

    digest: str
    session_id: str
    turn: int
    n_tokens: int


def _insert_ignoring_duplicates(s: Session, values: dict[str, Any]) -> None:
    dialect = s.get_bind().dialect.name
    if dialect == "postgresql":
        from sqlalchemy.dialects.postgresql import insert
    else:
        from sqlalchemy.dialects.sqlite import insert
    s.execute(insert(PrefixRow).values(**values).on_conflict_do_nothing(index_elements=["digest"]))


def _ref(row: PrefixRow) -> PrefixRef:
    return PrefixRef(row.digest, row.session_id, int(row.turn), int(row.n_tokens))


class PrefixIndex:
    """The `prefix_states` table of one `Store`."""

    def __init__(self, store: Store) -> None:
        self.store = store

    def find(self, digests: Sequence[str]) -> PrefixRef | None:
        """The longest stored prefix among `digests` (one query), or None."""
        if not digests:
            return None

        def do(s: Session) -> PrefixRef | None:
            q = (
                select(PrefixRow)
                .where(PrefixRow.digest.in_(list(digests)))
                .order_by(PrefixRow.n_tokens.desc())
            )
            row = s.scalars(q.limit(1)).first()
            return None if row is None else _ref(row)

        return self.store._in_read(do, "looking up a saved prefix")

    def get(self, digest: str) -> PrefixRef | None:
        return self.find([digest])

    def count(self) -> int:
        return int(
            self.store._in_read(lambda s: s.scalar(select(func.count()).select_from(PrefixRow)), "counting")
        )

    def touch(self, digests: Sequence[str]) -> None:
        """Mark these prefixes used now (for the least-recently-used eviction)."""
        if digests:
            self.store._in_write(lambda s: retention.touch(s, digests), "marking saved prefixes used")

    def stored_bytes(self) -> int:
        """Bytes of every saved prefix state (blobs shared between them counted once)."""
        return self.store._in_read(retention.prefix_bytes, "measuring saved prefixes")

    def enforce(
        self, *, max_bytes: int | None, ttl_seconds: float | None, sweep: bool = False
    ) -> retention.RetentionStats:
        """Delete the prefixes unused for `ttl_seconds` (None or 0: none), then the least recently used
        ones until their bytes are at most `max_bytes` (None: no bound), with the blobs nothing else
        references any more. `sweep`: first the prefix sessions no prefix names (unchanged for
        `ORPHAN_AGE`)."""
        evicted = freed = 0
        if sweep:
            freed += self.store._in_write(
                lambda s: retention.sweep_orphans(s, PREFIX_TITLE, ORPHAN_AGE),
                "deleting unnamed prefix sessions",
            )

        def drop(digests: list[str]) -> None:
            nonlocal evicted, freed
            freed += self.evict(digests)
            evicted += len(digests)

        if ttl_seconds:
            ttl = timedelta(seconds=ttl_seconds)
            drop(self.store._in_read(lambda s: retention.expired(s, ttl), "finding expired prefixes"))
        if max_bytes is None:
            return retention.RetentionStats(evicted, freed, self.stored_bytes())
        while True:
            # Each round evicts at least one prefix; bytes shared between turns may free less than
            # estimated, so the total is measured again.
            digests, total = self.store._in_read(
                lambda s: retention.over_budget(s, max_bytes), "measuring saved prefixes"
            )
            if not digests:
                return retention.RetentionStats(evicted, freed, total)
            drop(digests)

    def evict(self, digests: Sequence[str]) -> int:
        """Delete these prefixes now (memory/prefix_retention.py `evict`), a batch per transaction;
        the blobs freed. A digest not stored is skipped."""
        freed = 0
        for i in range(0, len(digests), retention._BATCH):
            batch = list(digests[i : i + retention._BATCH])
            freed += self.store._in_write(lambda s, b=batch: retention.evict(s, b), "evicting saved prefixes")
        return freed

    def load(self, ref: PrefixRef, *, fingerprint: str, device: torch.device | str | None = None) -> Snapshot:
        """The prefix's snapshot, verified (memory/turns.py `read_snapshot`)."""
        return self.store.load_snapshot(ref.session_id, ref.turn, fingerprint=fingerprint, device=device)

    def save(
        self,
        digest: str,
        *,
        base: PrefixRef | None,
        recurrent: Mapping[str, torch.Tensor],
        pages: Sequence[PageParts],
        n_tokens: int,
        fingerprint: str,
        meta: dict[str, Any] | None = None,
    ) -> PrefixRef:
        """Store the state of a prefix `n_tokens` long under `digest`. `base` is a stored shorter prefix
        this state continues (then `pages` cover only [base.n_tokens, n_tokens)); None: `pages` cover
        every token. Returns where the prefix is (an earlier copy of it when one was stored already)."""
        known = self.get(digest)
        if known is not None:
            self.touch([digest])
            return known
        if base is not None:
            base = self.get(base.digest)  # where it is now; None when it was evicted
            if base is None and pages and pages[0][0] > 0:
                raise InvalidPageError(
                    f"the prefix this state of {n_tokens} tokens continues was evicted, and its pages "
                    f"start at token {pages[0][0]}: save every page to store it whole"
                )
        start = 0 if base is None else base.n_tokens
        new_pages = [(a, b, t) for a, b, t in pages if a >= start]
        if base is not None:
            try:
                ref = self._append(digest, base.session_id, base.turn, recurrent, new_pages, n_tokens, meta)
                if ref is not None:
                    return ref
                # Another prefix continues the base already: branch off it (rows copied, bytes shared).
                fork = self.store.fork_session(base.session_id, base.turn, title=PREFIX_TITLE)
                ref = self._append(digest, fork.id, base.turn, recurrent, new_pages, n_tokens, meta)
                if ref is not None:
                    return ref
            except StoreError:  # the base was evicted meanwhile (another server): stored whole below
                if pages and pages[0][0] > 0:
                    raise
        session = self.store.create_session(PREFIX_TITLE, "", fingerprint, {"serve": True})
        ref = self._append(digest, session.id, 0, recurrent, list(pages), n_tokens, meta)
        assert ref is not None  # a new session that nobody else knows has no turn yet
        return ref

    def _append(
        self,
        digest: str,
        session_id: str,
        after_turn: int,
        recurrent: Mapping[str, torch.Tensor],
        pages: Sequence[PageParts],
        n_tokens: int,
        meta: dict[str, Any] | None,
    ) -> PrefixRef | None:
        """Save turn `after_turn + 1` of the session and index it under `digest`, in one transaction;
        None when the session's last turn is not `after_turn` (nothing written). A brand-new session
        (`after_turn` 0, no turn yet) gets turn 1."""
        turn = after_turn + 1
        prepared = prepare_turn(
            turn, events=[], recurrent=recurrent, pages=pages, n_tokens=n_tokens, meta=meta, file_changes=()
        )

        def do(s: Session) -> PrefixRef | None:
            # The row lock orders two processes extending the same session (PostgreSQL; SQLite write
            # transactions are serial already).
            s.get(SessionRow, session_id, with_for_update=True)
            last = s.scalar(select(func.max(SnapshotRow.turn)).where(SnapshotRow.session_id == session_id))
            if (last or 0) != after_turn:
                return None
            write_turn(s, session_id, prepared)
            stamp = now()
            values = {
                "digest": digest,
                "session_id": session_id,
                "turn": turn,
                "n_tokens": n_tokens,
                "created_at": stamp,
                "last_used_at": stamp,
            }
            _insert_ignoring_duplicates(s, values)
            row = s.get(PrefixRow, digest)
            return PrefixRef(digest, session_id, turn, n_tokens) if row is None else _ref(row)

        return self.store._in_write(do, f"saving a prefix of {n_tokens} tokens")
