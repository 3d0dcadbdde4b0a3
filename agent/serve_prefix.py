"""States saved by token prefix for `hybrid-agent serve`: a host-memory tier (LRU, bounded in bytes)
in front of the database (memory/prefixes.py).

Design choices:
- A prefix is named by a digest of the model's fingerprint, the attention policy and its token ids, so
  states of another model, tokenizer or window are never found. Digests are taken only at the
  rendered conversation's boundaries (agent/serve_api.py), the only places a state is saved.
- Lookup: the memory tier first (the longest boundary it holds), then one database query over the
  boundaries longer than that. A state found in the database joins the memory tier.
- Saves land in memory at once and reach the database on one writer thread, in order, so a state that
  continues another is written after it and stored as the next turn of its session (only its new
  cache pages). `flush` waits for every write: a graceful shutdown calls it, so reuse survives a restart.
- The memory tier's tensors are never handed out to be changed: a restore reads them straight into the
  engine's own state (`Engine.restore` copies and keeps no reference), with no clone of the whole
  state first.
- Retention (memory/prefix_retention.py): every state found is marked used in the database, and after
  each write (and once at start) the writer thread deletes the states unused for `ttl_seconds` and the
  least recently used ones beyond `max_bytes`. A state evicted there is a miss (a fresh prefill); one
  continuing an evicted state is stored whole (its entry has every page).
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import hashlib
import logging
import os
import sys
import threading
import time
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from hybrid_agent.memory import Store, StoreError
from hybrid_agent.memory.prefixes import PrefixIndex, PrefixRef
from hybrid_agent.model.state import Page
from torch import Tensor

log = logging.getLogger("hybrid_agent.serve")


def _yielding() -> None:
    """The writer thread runs below the model's thread: a multi-GB save (serialise, digest, insert)
    must not slow the restore and prefill of the request being answered. Linux only, where the nice
    value is per thread (elsewhere it would lower the whole process)."""
    if sys.platform == "linux":
        with contextlib.suppress(OSError):
            os.setpriority(os.PRIO_PROCESS, 0, 10)


@dataclass
class Entry:
    """One saved prefix state: the recurrent tensors and every cache page [0, n_tokens), on the CPU."""

    digest: str
    n_tokens: int
    recurrent: dict[str, Tensor]
    pages: list[Page]
    ref: PrefixRef | None = None  # where it is in the database, once written
    written: concurrent.futures.Future[Any] | None = field(default=None, repr=False)

    @property
    def nbytes(self) -> int:
        tensors = [*self.recurrent.values(), *(t for p in self.pages for t in p.tensors.values())]
        return sum(t.numel() * t.element_size() for t in tensors)


@dataclass(frozen=True)
class Hit:
    entry: Entry
    source: str  # "memory" | "database"
    seconds: float  # looking up and reading the state


class PrefixCache:
    def __init__(
        self,
        store: Store | None,
        *,
        fingerprint: str,
        policy: str,
        layout: dict[str, str] | None,
        memory_bytes: int,
        max_bytes: int | None = None,
        ttl_seconds: float | None = None,
    ) -> None:
        self.index = PrefixIndex(store) if store is not None else None
        self.fingerprint = fingerprint
        self.layout = layout
        self.memory_bytes = memory_bytes
        self._header = f"{fingerprint}\0{policy}\0".encode()
        self._mem: OrderedDict[str, Entry] = OrderedDict()
        self._mem_used = 0
        self._lock = threading.Lock()
        self._writer = concurrent.futures.ThreadPoolExecutor(
            1, thread_name_prefix="hybrid-agent-prefix-writer", initializer=_yielding
        )
        self.write_errors = 0
        self.max_bytes, self.ttl_seconds = max_bytes, ttl_seconds
        self.evicted = 0  # states this server evicted from the database
        if self.index is not None:
            self._writer.submit(self._retain, True)

    def _retain(self, start: bool = False) -> None:
        """Apply the retention policy (on the writer thread); at start, also delete the prefix sessions
        no prefix names (memory/prefixes.py `ORPHAN_AGE`)."""
        assert self.index is not None
        if self.max_bytes is None and not self.ttl_seconds:
            return
        try:
            stats = self.index.enforce(max_bytes=self.max_bytes, ttl_seconds=self.ttl_seconds, sweep=start)
        except StoreError as exc:  # tried again after the next write
            log.warning("evicting saved prefixes failed: %s", exc)
            return
        self.evicted += stats.evicted

    def _touch(self, entry: Entry) -> None:
        if self.index is None:
            return

        def do() -> None:
            assert self.index is not None
            try:
                self.index.touch([entry.digest])
            except StoreError as exc:
                log.warning("marking a saved prefix used failed: %s", exc)

        self._writer.submit(do)

    def digests(self, ids: Sequence[int], lengths: Sequence[int]) -> list[str]:
        """The digest of `ids[:n]` for each n in `lengths` (increasing), in one pass over the ids."""
        h = hashlib.sha256(self._header)
        out, done = [], 0
        for n in lengths:
            h.update(torch.tensor(ids[done:n], dtype=torch.int64).numpy().tobytes())
            done = n
            out.append(h.hexdigest())
        return out

    def digest(self, ids: Sequence[int]) -> str:
        return self.digests(ids, [len(ids)])[0]

    # -- memory tier ------------------------------------------------------------------------------

    def _remember(self, entry: Entry) -> None:
        with self._lock:
            old = self._mem.pop(entry.digest, None)
            if old is not None:
                self._mem_used -= old.nbytes
            size = entry.nbytes
            if size > self.memory_bytes:
                return
            self._mem[entry.digest] = entry
            self._mem_used += size
            while self._mem_used > self.memory_bytes:
                _, dropped = self._mem.popitem(last=False)
                self._mem_used -= dropped.nbytes

    @property
    def memory_used(self) -> int:
        return self._mem_used

    def lookup(self, ids: Sequence[int], boundaries: Sequence[int]) -> Hit | None:
        """The longest saved prefix of `ids` ending at one of `boundaries` (each < len(ids))."""
        t0 = time.perf_counter()
        # The prompt's own state is saved one token short of its end (agent/serve_scheduler.py).
        lengths = sorted({n for b in boundaries for n in (b - 1, b) if 0 < n < len(ids)})
        digests = self.digests(ids, lengths)
        best: Entry | None = None
        with self._lock:
            for digest in reversed(digests):
                if digest in self._mem:
                    self._mem.move_to_end(digest)
                    best = self._mem[digest]
                    break
        if best is not None and best.n_tokens == (lengths[-1] if lengths else 0):
            self._touch(best)
            return Hit(best, "memory", time.perf_counter() - t0)
        longer = [d for n, d in zip(lengths, digests, strict=True) if best is None or n > best.n_tokens]
        found = self._from_database(longer)
        if found is not None:
            self._touch(found)
            return Hit(found, "database", time.perf_counter() - t0)
        if best is None:
            return None
        self._touch(best)
        return Hit(best, "memory", time.perf_counter() - t0)

    def _from_database(self, digests: Sequence[str]) -> Entry | None:
        if self.index is None or not digests:
            return None
        try:
            ref = self.index.find(digests)
            if ref is None:
                return None
            snap = self.index.load(ref, fingerprint=self.fingerprint)
        except StoreError as exc:  # a damaged or vanished row: re-prefill instead (said in the log)
            log.warning("saved prefix not usable: %s", exc)
            return None
        if self.layout is not None and snap.meta.get("state_layout") not in (None, self.layout):
            log.warning("saved prefix %s has another state layout; not used", ref.digest[:12])
            return None
        entry = Entry(ref.digest, ref.n_tokens, dict(snap.recurrent), [Page(*p) for p in snap.pages], ref=ref)
        self._remember(entry)
        return entry

    # -- saving -----------------------------------------------------------------------------------

    def put(
        self,
        digest: str,
        n_tokens: int,
        recurrent: dict[str, Tensor],
        new_pages: list[Page],
        base: Entry | None,
    ) -> Entry:
        """Save the state of a prefix `n_tokens` long that continues `base` (None: from the start);
        `new_pages` cover [base.n_tokens, n_tokens). In memory now, in the database soon."""
        pages = [*(base.pages if base is not None else []), *new_pages]
        entry = Entry(digest, n_tokens, recurrent, pages)
        self._remember(entry)
        if self.index is not None:
            entry.written = self._writer.submit(self._write, entry, base)
        return entry

    def _write(self, entry: Entry, base: Entry | None) -> None:
        assert self.index is not None
        base_ref = base.ref if base is not None else None
        try:
            entry.ref = self.index.save(
                entry.digest,
                base=base_ref,
                recurrent=entry.recurrent,
                # Every page: the index stores only those past the base, or all when it was evicted.
                pages=[(p.start, p.end, p.tensors) for p in entry.pages],
                n_tokens=entry.n_tokens,
                fingerprint=self.fingerprint,
                meta={"state_layout": self.layout} if self.layout else {},
            )
        except StoreError as exc:  # the database is down or full: the memory tier still serves it
            self.write_errors += 1
            log.warning("saving a prefix of %d tokens failed: %s", entry.n_tokens, exc)
            return
        self._retain()

    def flush(self) -> None:
        """Wait until every save so far is in the database."""
        self._writer.submit(lambda: None).result()

    def close(self) -> None:
        self._writer.shutdown(wait=True)
