"""The in-memory tiers of `hybrid-agent serve`'s saved prefix states (agent/serve_prefix.py): each an
LRU bounded in bytes, and the copies that move a state between the model's device and host memory.

Design choices:
- A tier counts the memory it holds: a tensor shared by several entries (the pages a state shares
  with the one it continues) counts once, and leaves the count with the last entry holding it. So a
  long conversation's successive states cost their new pages each, not the whole state again, and
  evicting a state frees only what no other held state uses (the LRU goes on until under the bound).
- Device -> host copies run on the prefix writer's thread, never on the model's: the model thread only
  records a CUDA event after the snapshot (no sync); the writer's own stream waits for that event and
  copies, then waits for its own stream alone. The writer holds the device tensors until the copy is
  done, so they cannot be freed and reused under it.
- Host copies are pinned (uploaded back at link speed when promoted) where that costs little: PyTorch's
  caching host allocator reuses pinned blocks (no pinning again for every copy) but rounds each one up
  to a power of two, so a tensor is pinned only when that wastes at most 1/8 of it (`PIN_WASTE`), else
  it is plain memory (exactly its size: the tiers' byte bounds stay true within 1/8).
  `HYBRID_AGENT_PIN_HOST=0` makes every host copy plain memory: pinning a new block (cudaHostAlloc) is
  slow and may hold up the model thread's CUDA calls while the writer saves a long state, which the
  returning 64k benchmark suggests (docs/results.md, serve section); the switch lets a run compare.
- A device -> host copy goes in chunks of `COPY_CHUNK_BYTES`, one in flight at a time, and pauses
  between chunks while the model thread admits a request (`Copier.hold`, at most `HOLD_SECONDS` an
  admission): a read of the model thread (the first token's logits) queues behind at most one chunk
  on the copy engine, not behind a whole multi-GB state being written out after the previous answer.
- Host -> device copies (promoting a state found in host memory or the database) run on the model
  thread's stream, before the restore that reads them, so they are ordered with it without a sync.
- On a CPU "device" (tests, or `--gpu-tier-mb` on a CPU server) the copies are plain host copies, in
  the same chunks: the tier logic is the same, only the memory is.
- Staged saves: with no device tier, a save is still snapshotted on the model's device when the device
  has room for it (`stage_fits`: staged copies at most `STAGE_FRACTION` of what it could give without
  them), and the writer thread makes its host copy as above, then lets the device copy go: the model
  thread (a request's first token) never waits for a long state's copy to host memory. Short of room,
  the snapshot is a host copy on the model thread, as it was. (With a device tier every save is
  snapshotted on the device; one too big for the tier is staged the same way.)
  `HYBRID_AGENT_STAGE_SAVES` switches it: "0" never (every save without a device tier copied to the
  host by the model thread), "1" on a CPU device as well (the writer then makes a second host copy:
  tests, comparisons), else ("auto") on CUDA only.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from typing import Any

import torch
from hybrid_agent.model.state import Page
from hybrid_agent.model.switches import env_switch
from torch import Tensor

AUTO_DEVICE_FRACTION = 0.5  # of the device memory free once the model and its buffers are built
PIN_WASTE = 8  # a host copy is pinned when rounding it up to a power of two adds at most 1/PIN_WASTE
COPY_CHUNK_BYTES = 64 << 20  # a device -> host copy's piece (~2-6 ms of the link)
HOLD_SECONDS = 1.0  # the longest one admission pauses the device -> host copies
PIN_HOST_ENV = "HYBRID_AGENT_PIN_HOST"  # "0": host copies in plain memory only (see the module's doc)
STAGE_ENV = "HYBRID_AGENT_STAGE_SAVES"  # "0" | "auto" | "1": staged saves (see the module's doc)
STAGE_FRACTION = 0.5  # staged saves take at most this part of the memory the device could give


def pins_well(nbytes: int) -> bool:
    """Whether a pinned block for `nbytes` (rounded up to a power of two) wastes at most 1/PIN_WASTE."""
    if nbytes <= 0:
        return False
    block = 1 << (nbytes - 1).bit_length()
    return (block - nbytes) * PIN_WASTE <= nbytes


def auto_device_bytes(device: torch.device) -> int:
    """The device tier's size when none is given: half the device's free memory now (0 on a CPU).
    Measured at the first save, when the model, the decode engine's buffers and the batch are built;
    the other half stays for the decode engine growing to longer contexts and for prefill's work."""
    if device.type != "cuda":
        return 0
    free, _ = torch.cuda.mem_get_info(device)
    return int(free * AUTO_DEVICE_FRACTION)


def stage_mode(value: str | None = None) -> str:
    """ "off", "auto" or "on": `value`, else `STAGE_ENV`'s (see the module's docstring)."""
    return {True: "on", False: "off", None: "auto"}[env_switch(STAGE_ENV, value)]


def device_room(device: torch.device) -> int:
    """Bytes PyTorch can still allocate on a CUDA device: its free memory and what the caching allocator
    holds unused (no sync: a driver query and the allocator's counters)."""
    free, _ = torch.cuda.mem_get_info(device)
    return int(free + torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device))


def stage_fits(nbytes: int, device: torch.device, mode: str, held: int = 0) -> bool:
    """Whether a save of about `nbytes` with no device tier to hold it is staged on `device` (see the
    module's docstring); `mode` as `stage_mode` gives it. `held`: the bytes of staged saves whose host
    copy is still to be made: with them, staged copies take at most `STAGE_FRACTION` of what the device
    could give without them (a slow writer cannot let them fill the device, save after save)."""
    if mode == "off":
        return False
    if device.type == "cuda":
        return held + nbytes <= STAGE_FRACTION * (device_room(device) + held)
    return mode == "on"


def parts_bytes(recurrent: dict[str, Tensor], pages: list[Page]) -> int:
    tensors = [*recurrent.values(), *(t for p in pages for t in p.tensors.values())]
    return sum(t.numel() * t.element_size() for t in tensors)


def touches(recurrent: dict[str, Tensor], pages: list[Page], device: torch.device) -> bool:
    """Whether any of the tensors is on `device` (of its type; of its index when it names one)."""
    tensors = [*recurrent.values(), *(t for p in pages for t in p.tensors.values())]
    return any(
        t.device.type == device.type and (device.index is None or t.device.index == device.index)
        for t in tensors
    )


def _tensors(entry: Any) -> list[Tensor]:
    return [*entry.recurrent.values(), *(t for p in entry.pages for t in p.tensors.values())]


def distinct_bytes(entries: list[Any]) -> int:
    """Bytes of the distinct tensors `entries` hold (one shared by several, such as the pages a state
    shares with the one it continues, counts once)."""
    return sum({id(t): t.numel() * t.element_size() for e in entries for t in _tensors(e)}.values())


class Tier:
    """Entries (anything with `digest`, `size`, `recurrent` and `pages`) by digest, least recently used
    first; `used` is the bytes of the distinct tensors they hold, kept at most `capacity` by `add`."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.entries: OrderedDict[str, Any] = OrderedDict()
        self.used = 0
        self._held: dict[str, list[Tensor]] = {}  # by digest: the tensors counted for it (as added)
        self._refs: dict[int, tuple[Tensor, int]] = {}  # by id: a counted tensor and how many hold it

    def __contains__(self, digest: str) -> bool:
        return digest in self.entries

    def __len__(self) -> int:
        return len(self.entries)

    def get(self, digest: str) -> Any:
        """The entry (now the most recently used), or None."""
        entry = self.entries.get(digest)
        if entry is not None:
            self.entries.move_to_end(digest)
        return entry

    def _hold(self, digest: str, tensors: list[Tensor]) -> None:
        self._held[digest] = tensors
        for t in tensors:
            _, n = self._refs.get(id(t), (t, 0))
            if n == 0:
                self.used += t.numel() * t.element_size()
            self._refs[id(t)] = (t, n + 1)

    def _release(self, digest: str) -> None:
        for t in self._held.pop(digest):
            _, n = self._refs[id(t)]
            if n == 1:
                del self._refs[id(t)]
                self.used -= t.numel() * t.element_size()
            else:
                self._refs[id(t)] = (t, n - 1)

    def pop(self, digest: str) -> Any:
        entry = self.entries.pop(digest, None)
        if entry is not None:
            self._release(digest)
        return entry

    def fits(self, entry: Any) -> bool:
        return self.capacity > 0 and entry.size <= self.capacity

    def add(self, entry: Any) -> list[Any]:
        """Hold `entry` (replacing one of its digest, which is let go) as the most recently used;
        returns what left to stay within the capacity, least recently used first (`entry` itself when
        it does not fit)."""
        out: list[Any] = []
        self.pop(entry.digest)
        if not self.fits(entry):
            return [entry]
        self.entries[entry.digest] = entry
        self._hold(entry.digest, _tensors(entry))
        while self.used > self.capacity:  # ends at the latest with `entry` alone, which fits
            digest, dropped = self.entries.popitem(last=False)
            self._release(digest)
            out.append(dropped)
        return out


class Copier:
    """Copies between the model's device and host memory (see the module's docstring)."""

    def __init__(self, device: torch.device, chunk_bytes: int = COPY_CHUNK_BYTES) -> None:
        self.device = device
        self.cuda = device.type == "cuda"
        self.chunk_bytes = max(1, chunk_bytes)
        self._stream: Any = None  # the writer thread's own CUDA stream, made on first use
        self._free = threading.Event()  # set: copies may go on; cleared by `hold` until `release`
        self._free.set()
        self._until = 0.0  # when a hold ends at the latest (time.monotonic)
        self.pin = env_switch(PIN_HOST_ENV) is not False

    def hold(self, seconds: float = HOLD_SECONDS) -> None:
        """On the model thread, as a request's admission starts: device -> host copies pause at their
        next chunk until `release`, or for `seconds` at most."""
        self._until = time.monotonic() + seconds
        self._free.clear()

    def release(self) -> None:
        self._free.set()

    def _wait(self) -> None:
        if not self._free.is_set():
            self._free.wait(max(0.0, self._until - time.monotonic()))

    def _copy_chunks(self, dst: Tensor, src: Tensor, non_blocking: bool, stream: Any) -> None:
        """`src` into the contiguous `dst`, a chunk at a time (pausing while held): with `stream`, each
        chunk is waited for before the next is issued, so one at a time is on the link."""
        flat_src, flat_dst = src.contiguous().view(-1), dst.view(-1)
        step = max(1, self.chunk_bytes // src.element_size())
        for a in range(0, flat_src.numel(), step):
            self._wait()
            flat_dst[a : a + step].copy_(flat_src[a : a + step], non_blocking=non_blocking)
            if stream is not None and non_blocking:
                stream.synchronize()

    def mark(self) -> Any:
        """On the model thread, after a snapshot: what a host copy of it waits for (no sync)."""
        if not self.cuda:
            return None
        return torch.cuda.current_stream(self.device).record_event()

    def to_host(self, tensors: list[Tensor], ready: Any) -> list[Tensor]:
        """Host copies of `tensors` (on CUDA: pinned where `pins_well`), once the work that made them
        (`ready`) is done; called on the writer thread. Host tensors among them are cloned as well: the
        copy shares nothing."""
        if not self.cuda:
            out = []
            for t in tensors:
                out.append(torch.empty(t.shape, dtype=t.dtype))
                self._copy_chunks(out[-1], t, False, None)
            return out
        if self._stream is None:
            self._stream = torch.cuda.Stream(self.device)
        stream = self._stream
        out = []
        with torch.cuda.stream(stream):
            if ready is not None:
                stream.wait_event(ready)
            for t in tensors:
                if t.device.type != "cuda":
                    out.append(t.clone())
                    continue
                pinned = self.pin and pins_well(t.numel() * t.element_size())
                self._wait()  # pinning a block may hold up the model thread's CUDA calls too (see above)
                host = torch.empty(t.shape, dtype=t.dtype, pin_memory=pinned)
                # into plain memory: synchronous, on this stream
                self._copy_chunks(host, t, pinned, stream)
                out.append(host)
        stream.synchronize()  # this thread waits for its own copies only
        return out

    def to_device(self, tensors: list[Tensor]) -> list[Tensor]:
        """Device copies of `tensors`, on the model thread's stream (clones on a CPU device)."""
        if not self.cuda:
            return [t.clone() for t in tensors]
        return [t.to(self.device, non_blocking=True) for t in tensors]


def copy_parts(
    recurrent: dict[str, Tensor],
    pages: list[Page],
    copy: Any,
    reuse: list[Page] | None = None,
    positions: bool = True,
) -> tuple[dict[str, Tensor], list[Page]]:
    """`recurrent` and `pages` through `copy` (a list of tensors -> their copies, in one call); the
    first pages are taken from `reuse` instead where it has them (the host copy of the state this one
    continues: the same token ranges). `positions` False: the pages' host positions (`layers.{i}.pos`)
    are kept as they are, not copied: a restore plans from positions on the host (model/decode/pages.py),
    so a state moved to the device keeps them there (they are never changed, so sharing them is safe)."""
    shared = 0
    for mine, theirs in zip(pages, reuse or [], strict=False):
        if (mine.start, mine.end) != (theirs.start, theirs.end):
            break
        shared += 1

    def moved(name: str, t: Tensor) -> bool:
        return positions or not (name.endswith(".pos") and t.device.type == "cpu")

    todo = [*recurrent.values(), *(t for p in pages[shared:] for k, t in p.tensors.items() if moved(k, t))]
    done = iter(copy(todo))
    new_rec = {k: next(done) for k in recurrent}
    new_pages = [
        Page(p.start, p.end, {k: next(done) if moved(k, t) else t for k, t in p.tensors.items()})
        for p in pages[shared:]
    ]
    return new_rec, [*(reuse or [])[:shared], *new_pages]
