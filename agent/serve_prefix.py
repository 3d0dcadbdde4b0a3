"""States saved by token prefix for `hybrid-agent serve`: a device tier (states on the model's device,
LRU, bounded in bytes), a host-memory tier behind it (the same), and the database behind both
(memory/prefixes.py). The tiers themselves and the copies between them: agent/serve_tiers.py.

Design choices:
- A prefix is named by a digest of the model's fingerprint, the attention policy and its token ids, so
  states of another model, tokenizer or window are never found. Digests are taken only at the
  rendered conversation's boundaries (agent/serve_api.py), the only places a state is saved.
- Lookup: the device tier and the host tier first (the longest boundary either holds), then one
  database query over the boundaries longer than that. A state found in host memory or the database
  moves to the device tier when it fits there (`promote`), else a database hit joins the host tier.
- Saves: a snapshot taken on the model's device stays there, in the device tier, when it fits. Its
  host copy is made on the writer thread (agent/serve_tiers.py `Copier`), which then writes it to the
  database; the model thread never waits for either. Saves reach the database on that one thread, in
  order, so a state that continues another is written after it and stored as the next turn of its
  session (only its new cache pages). `flush` waits for every write: a graceful shutdown calls it, so
  reuse survives a restart.
- With no device tier (or a state too big for it), a save is staged when the device has room
  (agent/serve_tiers.py `stage_fits`): snapshotted on the device like a tier's state, but held only in
  `_moving` (still found by lookups, its device tensors restored from) until the writer thread's host
  copy lets it move to the host tier. So the model thread never waits for a long state's host copy,
  and a request returning before that copy is done restores the device copy: the same tensors.
- Leaving the device tier (least recently used first) demotes a state to the host tier: its tensors
  become its host copy, or, while that copy is still being made, it waits in `_moving` (still found
  by lookups, its device tensors held) until the writer thread finishes the copy and demotes it. A
  state leaving the host tier is dropped: it is in the database, or its write is pending and holds it.
- A state continuing one that left the device tier meanwhile (a batch row's answer, saved after
  other rows' saves pushed its prompt's state out) holds that one's pages where they now are, in host
  memory, beside its own on the device: it is restored all the same, those pages uploaded.
- A state kept on the device also keeps its host copy once made (host memory, outside the host tier's
  bound): the database write and a later demotion need it, and it is the same size as the device tier.
- Tiers' tensors are never handed out to be changed: a restore reads them straight into the engine's
  own state (`Engine.restore` copies and keeps no reference), with no clone of the whole state first;
  from the device tier that is a device-to-device copy.
- Retention (memory/prefix_retention.py): every state found is marked used in the database, and after
  each write (and once at start) the writer thread deletes the states unused for `ttl_seconds` and the
  least recently used ones beyond `max_bytes`. A state evicted there is a miss (a fresh prefill); one
  continuing an evicted state is stored whole (its entry has every page).
"""

from __future__ import annotations

import array
import concurrent.futures
import contextlib
import hashlib
import logging
import os
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from hybrid_agent.agent.serve_tiers import (
    Copier,
    Tier,
    auto_device_bytes,
    copy_parts,
    distinct_bytes,
    parts_bytes,
    stage_fits,
    stage_mode,
    touches,
)
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
    """One saved prefix state: the recurrent tensors and every cache page [0, n_tokens), on the model's
    device while in the device tier, else on the host."""

    digest: str
    n_tokens: int
    recurrent: dict[str, Tensor]
    pages: list[Page]
    ref: PrefixRef | None = None  # where it is in the database, once written
    written: concurrent.futures.Future[Any] | None = field(default=None, repr=False)
    # Its host copy (the tensors themselves when they are on the host); None while it is being made.
    host: tuple[dict[str, Tensor], list[Page]] | None = field(default=None, repr=False)
    ready: Any = field(default=None, repr=False)  # the CUDA event after which its device tensors are whole
    # Saved on the device but never held by the device tier (a staged save): its device copy is let go
    # once its host copy is made.
    staged: bool = False
    size: int = 0

    def __post_init__(self) -> None:
        self.size = parts_bytes(self.recurrent, self.pages)

    @property
    def nbytes(self) -> int:
        return self.size


@dataclass(frozen=True)
class Hit:
    entry: Entry
    # "gpu" | "staged" | "memory" | "database": where it was found ("staged": a staged save's device
    # copy, its host copy still being made)
    source: str
    seconds: float  # looking up and reading the state (and moving it to the device tier)
    recurrent: dict[str, Tensor]  # the tensors to restore from (the entry's, as they were when found)
    pages: list[Page]


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
        device_bytes: int | None = 0,
        device: torch.device | str | None = None,
        stage: str | None = None,
    ) -> None:
        """`device_bytes`: the device tier's bound (0: no device tier; None: `auto_device_bytes`,
        measured at the first save, on the model thread; until then nothing is promoted to the device
        tier); `device`: the model's; `stage`: whether saves outside the device tier are staged on the
        device (agent/serve_tiers.py `stage_mode`; None: `HYBRID_AGENT_STAGE_SAVES`)."""
        self.stage = stage_mode(stage)
        self.index = PrefixIndex(store) if store is not None else None
        self.fingerprint = fingerprint
        self.layout = layout
        self.memory_bytes = memory_bytes
        self._header = f"{fingerprint}\0{policy}\0".encode()
        self.device = torch.device(device if device is not None else "cpu")
        self._device_bytes = device_bytes
        self._resolved = False
        self._gpu = Tier(device_bytes or 0)
        self._mem = Tier(memory_bytes)
        self._moving: dict[str, Entry] = {}  # left the device tier, host copy on its way
        self._copier = Copier(self.device)
        self._lock = threading.Lock()
        self._writer = concurrent.futures.ThreadPoolExecutor(
            1, thread_name_prefix="hybrid-agent-prefix-writer", initializer=_yielding
        )
        self.write_errors = 0
        self.max_bytes, self.ttl_seconds = max_bytes, ttl_seconds
        self.evicted = 0  # states this server evicted from the database
        self.copy_seconds = 0.0  # the writer thread's device -> host copies, in all
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
            # int64s in native order, as torch.tensor(..., dtype=torch.int64).numpy() lays them out
            # (digests already stored stay valid), a third of its cost
            h.update(array.array("q", ids[done:n]).tobytes())
            done = n
            out.append(h.hexdigest())
        return out

    def digest(self, ids: Sequence[int]) -> str:
        return self.digests(ids, [len(ids)])[0]

    # -- tiers ------------------------------------------------------------------------------------

    def _resolve(self) -> None:
        """Size the device tier once, at the first save (see `__init__`); a size given that the device
        cannot hold now is said in the log (saves would then run it out of memory)."""
        if self._resolved:
            return
        self._resolved = True
        if self._device_bytes is None:
            self._device_bytes = auto_device_bytes(self.device)
            self._gpu.capacity = self._device_bytes
            log.info("device tier for saved states: %d MiB", self._device_bytes >> 20)
        elif self._device_bytes > 0 and self.device.type == "cuda":
            free, _ = torch.cuda.mem_get_info(self.device)
            if self._device_bytes > free:
                log.warning(
                    "the GPU tier (%d MiB) is more than the free GPU memory (%d MiB): saving states may "
                    "run out of memory; lower --gpu-tier-mb",
                    self._device_bytes >> 20,
                    free >> 20,
                )

    @property
    def device_capacity(self) -> int:
        """The device tier's bound in bytes (0: none); the automatic size once measured."""
        self._resolve()
        return self._gpu.capacity

    @property
    def on_device(self) -> bool:
        """Whether saves should be snapshots on the model's device (the device tier is on)."""
        return self.device_capacity > 0

    def saves_on_device(self, nbytes: int) -> bool:
        """Whether a save (of about `nbytes`) is snapshotted on the model's device: for the device tier,
        or staged (see the module's docstring). Called on the model thread, before the snapshot."""
        return self.on_device or stage_fits(nbytes, self.device, self.stage, self.staged_used)

    @property
    def memory_used(self) -> int:
        return self._mem.used

    @property
    def device_used(self) -> int:
        """Bytes of the device tier's states, and of those leaving it whose host copy is on its way."""
        with self._lock:
            return self._gpu.used + sum(e.size for e in self._moving.values() if not e.staged)

    @property
    def staged_used(self) -> int:
        """Bytes of staged saves' device copies, held until their host copy is made (pages they share
        counted once)."""
        with self._lock:
            return distinct_bytes([e for e in self._moving.values() if e.staged])

    def _remember(self, entry: Entry) -> None:
        """Hold a host-resident entry in the host tier (under the lock)."""
        self._mem.add(entry)  # what leaves is dropped: in the database, or held by its pending write

    def _settle(self, entry: Entry) -> None:
        """`entry` left the device tier and its host copy exists: it lives on in the host tier (under the
        lock; the device tensors are let go)."""
        assert entry.host is not None
        entry.recurrent, entry.pages = entry.host
        entry.ready = None
        self._remember(entry)

    def _keep_on_device(self, entry: Entry) -> None:
        """Hold a device-resident entry in the device tier; those it pushes out are demoted (under the
        lock)."""
        self._moving.pop(entry.digest, None)
        self._mem.pop(entry.digest)
        for out in self._gpu.add(entry):
            if out.host is not None:
                self._settle(out)
            else:  # the writer thread is copying it: it demotes it when done (`_write`)
                self._moving[out.digest] = out

    def _promote(self, entry: Entry) -> None:
        """Move a host-resident entry (found in host memory or the database) to the device tier when it
        fits there: a copy on the model thread's stream, ahead of the restore that reads it."""
        if not self._gpu.fits(entry) or entry.host is None:
            return
        try:
            rec, pages = copy_parts(entry.recurrent, entry.pages, self._copier.to_device, positions=False)
        except torch.OutOfMemoryError:  # the device is fuller than the tier's bound allowed for
            log.warning("no device memory to keep a prefix of %d tokens there", entry.n_tokens)
            with self._lock:
                if entry.digest not in self._mem:
                    self._remember(entry)
            return
        with self._lock:
            entry.recurrent, entry.pages = rec, pages
            self._keep_on_device(entry)

    def _found(self, digest: str) -> tuple[Entry, str] | None:
        entry = self._gpu.get(digest)
        if entry is not None:
            return entry, "gpu"
        entry = self._moving.get(digest)
        if entry is not None:
            return entry, "staged" if entry.staged else "gpu"
        entry = self._mem.get(digest)
        return (entry, "memory") if entry is not None else None

    def lookup(self, ids: Sequence[int], boundaries: Sequence[int]) -> Hit | None:
        """The longest saved prefix of `ids` ending at one of `boundaries` (each < len(ids)). Called on
        the model thread (a promotion copies on its stream)."""
        t0 = time.perf_counter()
        # The prompt's own state is saved one token short of its end (agent/serve_scheduler.py).
        lengths = sorted({n for b in boundaries for n in (b - 1, b) if 0 < n < len(ids)})
        digests = self.digests(ids, lengths)
        best: tuple[Entry, str] | None = None
        with self._lock:
            for digest in reversed(digests):
                if (best := self._found(digest)) is not None:
                    break
        if best is None or best[0].n_tokens != (lengths[-1] if lengths else 0):
            longer = [
                d for n, d in zip(lengths, digests, strict=True) if best is None or n > best[0].n_tokens
            ]
            found = self._from_database(longer)
            if found is not None:
                best = (found, "database")
        if best is None:
            return None
        entry, source = best
        self._touch(entry)
        if source not in ("gpu", "staged"):  # a staged one is on the device already
            self._promote(entry)
        with self._lock:
            recurrent, pages = entry.recurrent, entry.pages
        return Hit(entry, source, time.perf_counter() - t0, recurrent, pages)

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
        entry.host = (entry.recurrent, entry.pages)
        if not self._gpu.fits(entry):
            with self._lock:
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
        `new_pages` cover [base.n_tokens, n_tokens). Called on the model thread, right after the
        snapshot. In a tier now (the device tier when its tensors are on the model's device and it fits
        there), its host copy and the database write soon, on the writer thread."""
        self._resolve()
        pages = [*(base.pages if base is not None else []), *new_pages]
        entry = Entry(digest, n_tokens, recurrent, pages)
        # The device tier holds states with tensors on the model's device (small CPU ones, such as the
        # state's header, may come along); all-host ones go to the host tier as they are.
        if self._gpu.fits(entry) and touches(recurrent, pages, self.device):
            entry.ready = self._copier.mark()
            with self._lock:
                self._keep_on_device(entry)
        elif (self.device.type != "cpu" or self.stage == "on") and touches(recurrent, pages, self.device):
            entry.ready, entry.staged = self._copier.mark(), True
            with self._lock:  # staged (no device tier, or too big for it): to the host tier once copied
                self._moving[digest] = entry
        else:
            entry.host = (recurrent, pages)
            with self._lock:
                self._remember(entry)
        if self.index is not None or entry.host is None:
            entry.written = self._writer.submit(self._write, entry, base)
        return entry

    def _copy_to_host(self, entry: Entry, base: Entry | None) -> None:
        """Make the entry's host copy (on the writer thread), the base's pages reused from its own copy;
        then demote it if it left the device tier meanwhile."""
        try:
            recurrent, pages = entry.recurrent, entry.pages
            reuse = base.host[1] if base is not None and base.host is not None else None
            t0 = time.perf_counter()
            host = copy_parts(recurrent, pages, lambda ts: self._copier.to_host(ts, entry.ready), reuse)
            self.copy_seconds += time.perf_counter() - t0
        except Exception as exc:  # e.g. no host memory left: the state stays where it is
            log.warning("copying a prefix of %d tokens to host memory failed: %s", entry.n_tokens, exc)
            with self._lock:
                self._moving.pop(entry.digest, None)
            return
        entry.host = host
        with self._lock:
            if self._moving.get(entry.digest) is entry:
                del self._moving[entry.digest]
                self._settle(entry)

    def _write(self, entry: Entry, base: Entry | None) -> None:
        if entry.host is None:
            self._copy_to_host(entry, base)
        if self.index is None or entry.host is None:
            return
        recurrent, pages = entry.host
        base_ref = base.ref if base is not None else None
        try:
            entry.ref = self.index.save(
                entry.digest,
                base=base_ref,
                recurrent=recurrent,
                # Every page: the index stores only those past the base, or all when it was evicted.
                pages=[(p.start, p.end, p.tensors) for p in pages],
                n_tokens=entry.n_tokens,
                fingerprint=self.fingerprint,
                meta={"state_layout": self.layout} if self.layout else {},
            )
        except StoreError as exc:  # the database is down or full: the memory tiers still serve it
            self.write_errors += 1
            log.warning("saving a prefix of %d tokens failed: %s", entry.n_tokens, exc)
            return
        self._retain()

    def hold_copies(self) -> None:
        """A request's admission starts (model thread): host copies pause until `release_copies`, for
        a bounded time (agent/serve_tiers.py `Copier.hold`)."""
        self._copier.hold()

    def release_copies(self) -> None:
        self._copier.release()

    def flush(self) -> None:
        """Wait until every save so far is in the database."""
        self._writer.submit(lambda: None).result()

    def close(self) -> None:
        self._writer.shutdown(wait=True)
