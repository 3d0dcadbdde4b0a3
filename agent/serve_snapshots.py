"""How `hybrid-agent serve` snapshots a state it saves (agent/serve_scheduler.py `_save`): on the model's
device, for the device tier or staged (agent/serve_prefix.py, agent/serve_tiers.py `stage_fits`), so
that the model thread only launches a device copy and the writer thread makes the host copy; else as
host copies made on the model thread. A device snapshot that finds the device out of memory after all
is taken as host copies instead: the save costs the model thread its copy, never the request."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from hybrid_agent.model.state import Page
from torch import Tensor

log = logging.getLogger("hybrid_agent.serve")

Parts = tuple[dict[str, Tensor], list[Page]]


@dataclass(frozen=True)
class Snapshotter:
    """A state to snapshot: `take(since, on_device)` gives its recurrent tensors (whole) and its cache
    pages for tokens [since, n) as copies, left on the model's device or on the host; `nbytes()` is
    about the bytes of a whole one (at least the snapshot's); `device` False: host copies only."""

    take: Callable[[int, bool], Parts]
    nbytes: Callable[[], int]
    device: bool = True


def _engine_bytes(engine: Any) -> int:
    value = getattr(engine, "state_bytes", 0)  # a property on ModelEngine, a method on some engines
    return int(value() if callable(value) else value)


def of_engine(engine: Any) -> Snapshotter:
    """The engine's live state (agent/engine.py `snapshot`, `snapshot_on_device` where it has one)."""
    on_device = getattr(engine, "snapshot_on_device", None)

    def take(since: int, device: bool) -> Parts:
        parts: Parts = (on_device if device and on_device is not None else engine.snapshot)(since)
        return parts

    return Snapshotter(take, lambda: _engine_bytes(engine), on_device is not None)


def of_state(state: Any) -> Snapshotter:
    """A `ModelState` of its own (a batch row's, agent/serve_batch.py)."""
    from hybrid_agent.agent.engine import state_snapshot

    return Snapshotter(
        lambda since, device: state_snapshot(state, since, on_device=device), lambda: int(state.nbytes)
    )


def snapshot(prefix: Any, snap: Snapshotter, since: int) -> tuple[Parts, bool]:
    """`snap`'s snapshot from `since`, on the device when the prefix cache wants it there
    (agent/serve_prefix.py `saves_on_device`); and whether it is."""
    if snap.device and prefix.saves_on_device(snap.nbytes()):
        try:
            return snap.take(since, True), True
        except torch.OutOfMemoryError:  # the device filled up since the check: host copies, as without
            log.warning("no device memory for a snapshot of a saved state: copied to host memory instead")
    return snap.take(since, False), False
