"""Loading a snapshot (recurrent tensors + cache pages) straight into the engine's buffers: where
each page's entries go (`plan_parts`, every check before the first write) and the copies (`load_plan`,
`load_parts`).

The plan reads only the pages' positions, on the host: positions held on the host (the engine's own
snapshots give them so, `snapshot_parts`) cost no device read, so restoring a state held on the
GPU makes no host round-trip. Pages whose positions are consecutive runs that follow each other from 0
(every snapshot of the engine) are placed without sorting or searching: one copy per page and tensor.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from hybrid_agent.model.decode.buffers import StaticState
from hybrid_agent.model.errors import StateMismatchError
from hybrid_agent.model.state import TOKEN_AXIS, ModelState, Page, token_axis
from torch import Tensor

# One page's part of a layer's cache: its tensors, contiguous runs (first slot, first entry, length)
# each copied with one narrow copy, and scattered picks (slots, entries) or None.
_Copies = tuple[dict[str, Tensor], list[tuple[int, int, int]], "tuple[Tensor, Tensor] | None"]
_MAX_RUNS = 4  # runs per page before its picks are gathered instead (only overlapping pages get here)


@dataclass
class PartsPlan:
    n_tokens: int
    recurrent: list[tuple[Tensor, Tensor]]  # (the engine's fixed tensor, its source)
    layers: list[list[_Copies]]  # per layer, per page that fills some of its slots
    buf: StaticState | None = None  # the buffers it was planned for (`load_plan` refuses others)
    row: bool = False  # a batch-1 snapshot for one slot of per-row buffers (model/decode/rows.py)


def _is_float(t: Tensor) -> bool:
    return t.dtype.is_floating_point


def _page(p: object) -> Page:
    """A `Page` (or a (start, end, tensors) triple, which is what a Page is), checked."""
    if not (isinstance(p, tuple) and len(p) == 3):
        raise StateMismatchError(f"a cache page must be a Page (start, end, tensors); got {type(p).__name__}")
    start, end, tensors = p
    if not isinstance(tensors, dict):
        raise StateMismatchError(f"a cache page's tensors must be a dict; got {type(tensors).__name__}")
    return Page(int(start), int(end), tensors)


def _check_page(
    i: int, kind: str, cache: dict[str, tuple[int, ...]], axes: dict[str, int], t: dict[str, Tensor], B: int
) -> Tensor:
    """One page's tensors of layer i against the layout; returns its positions (CPU int64)."""
    pos = t[f"layers.{i}.pos"]
    if pos.dim() != 1 or pos.dtype.is_floating_point or pos.dtype.is_complex or pos.dtype == torch.bool:
        raise StateMismatchError(
            f"page tensor layers.{i}.pos is {pos.dtype} {tuple(pos.shape)}; positions are (tokens,) int64"
        )
    for name, want in cache.items():
        key = f"layers.{i}.{name}"
        if key not in t:
            raise StateMismatchError(f"a cache page holds layers.{i}.pos but not {key}; the page is corrupt")
        got, ax = tuple(t[key].shape), axes[name]
        full = (B, *(len(pos) if d == TOKEN_AXIS else d for d in want))
        if got != full or not _is_float(t[key]):
            dims = ", ".join("tokens" if d == TOKEN_AXIS else str(d) for d in want)
            raise StateMismatchError(
                f"page tensor {key} ({kind}) is {t[key].dtype} {got} with {len(pos)} positions, but this "
                f"engine needs floating point (batch {B}, {dims}) with tokens on axis {ax}; "
                "load the state with the model it was saved from"
            )
    return pos.cpu().long()


def _runs_in_order(n: int, parts: list[dict[str, Tensor]], poss: list[Tensor]) -> list[_Copies] | None:
    """`_place`'s answer when the pages' positions, in page order, are 0, 1, 2, ... (each page one
    consecutive run, the next page going on where it ends) up to n or beyond: page j fills its own
    slots with one run. None when they are anything else (the general placement decides)."""
    out: list[_Copies] = []
    at = 0
    for t, pos in zip(parts, poss, strict=True):
        m = len(pos)
        if m == 0 or int(pos[0]) != at or not torch.equal(pos, torch.arange(at, at + m)):
            return None
        if at < n:
            out.append((t, [(at, 0, min(m, n - at))], None))
        at += m
    return out if at >= n else None


def _place(i: int, n: int, parts: list[dict[str, Tensor]], poss: list[Tensor]) -> list[_Copies]:
    """Which entry of which page fills each of the n slots of layer i: from_parts' choice (pages sorted
    by start, concatenated; per slot the first entry holding its position), as copies per page. The
    arithmetic runs on the positions only (8 bytes a token), never on the cache tensors."""
    fast = _runs_in_order(n, parts, poss)
    return fast if fast is not None else _place_any(i, n, parts, poss)


def _place_any(i: int, n: int, parts: list[dict[str, Tensor]], poss: list[Tensor]) -> list[_Copies]:
    """`_place` for positions in any order: sorted, searched, overlaps settled as from_parts does."""
    need = torch.arange(n)
    pos = torch.cat(poss) if poss else torch.zeros(0, dtype=torch.long)
    order = torch.argsort(pos, stable=True)
    sorted_pos = pos[order]
    where = torch.searchsorted(sorted_pos, need).clamp(max=max(len(pos) - 1, 0))  # (n,)
    covered = n == 0 or (len(pos) > 0 and bool((sorted_pos[where] == need).all()))
    if not covered:
        raise StateMismatchError(
            f"the cache pages do not cover the {n} tokens layer {i} needs "
            f"(of positions 0..{n - 1}); pass every page overlapping the sinks and the window"
        )
    idx = order[where]  # (n,) slot -> entry of the concatenated pages
    starts = torch.tensor([0] + [len(p) for p in poss]).cumsum(0)  # (pages + 1,)
    owner = torch.searchsorted(starts, idx, right=True) - 1  # (n,) page of each slot
    out: list[_Copies] = []
    for j, t in enumerate(parts):
        slots = (owner == j).nonzero().squeeze(1)  # (m,) increasing
        if len(slots) == 0:
            continue
        local = idx[slots] - starts[j]  # (m,) entries of page j
        # Runs contiguous in both slot and entry: one for each page of a plain snapshot.
        cuts = ((slots.diff() != 1) | (local.diff() != 1)).nonzero().squeeze(1) + 1
        bounds = [0, *cuts.tolist(), len(slots)]
        if len(bounds) - 1 <= _MAX_RUNS:
            runs = [(int(slots[a]), int(local[a]), b - a) for a, b in itertools.pairwise(bounds)]
            out.append((t, runs, None))
        else:
            out.append((t, [], (slots, local)))
    return out


def load_parts(buf: StaticState, recurrent: dict[str, Tensor], pages: Sequence[Page]) -> None:
    """Load a snapshot given as `ModelState.recurrent_tensors()` and cache pages straight into the
    buffers: the same result as `buf.load_state(ModelState.from_parts(recurrent, pages, cfg))`
    without building that state (no concatenated cache, no gathered copy: each tensor of each page
    is copied once, into its slots; only pages that overlap others or hold scattered positions are
    gathered, a temporary of at most one page). The tensors may be on any device; dtypes convert as in
    `load_state`. Pages are `Page`s (model/state.py).

    Semantics are from_parts' with `window=None` (the engine keeps full attention): pages in any
    order, positions read from each page's `layers.{i}.pos`, every position 0..n_tokens-1 must be
    present, a position held by several pages comes from the page with the smallest start (then the
    earliest entry), positions >= n_tokens are ignored. A snapshot saved under a window is refused.
    Everything is validated before the first write: on StateMismatchError / ContextFullError the
    engine is unchanged."""
    load_plan(buf, plan_parts(buf, recurrent, pages))


def load_plan(buf: StaticState, plan: PartsPlan, b: int | None = None) -> None:
    """`load_parts` with the plan made already (`plan_parts` on these same buffers); with `b`, a row's
    plan into slot b of per-row buffers, which is then live at its length (as `rows.load_row` leaves
    it), one copy per page and tensor instead of a state assembled first."""
    if plan.buf is not buf or plan.row != (b is not None):
        raise StateMismatchError("this plan was made for other buffers; plan the snapshot again")
    if b is not None and not 0 <= b < buf.state.batch_size:
        raise IndexError(f"slot {b} out of range: the engine has {buf.state.batch_size} slots")
    n = plan.n_tokens
    buf.room(n, 0 if b is None else 1)
    mine = (lambda t: t) if b is None else (lambda t: t[b : b + 1])
    with torch.inference_mode():
        for fixed, src in plan.recurrent:
            mine(fixed).copy_(src)
        for i, (ls, copies) in enumerate(zip(buf.state.layers, plan.layers, strict=True)):
            if ls.pos is None:
                continue
            for tensors, runs, scattered in copies:
                for name in ls.cache:
                    ax, t, dst = ls.axes[name], tensors[f"layers.{i}.{name}"], mine(ls.storage[name])
                    for dst_lo, src_lo, length in runs:  # one copy each, no temporary
                        dst.narrow(ax, dst_lo, length).copy_(t.narrow(ax, src_lo, length))
                    if scattered is not None:  # picks from overlapping pages: a temporary <= one page
                        slots, local = scattered
                        picked = t.index_select(ax, local.to(t.device)).to(dst.dtype)
                        dst.index_copy_(ax, slots.to(dst.device), picked)
            ls.storage["pos"][:n] = torch.arange(n, device=buf.device)  # slot p holds position p
        if b is None:
            buf.set_views(n)
            return
        buf.pos[b] = n
        buf.active[b] = 1
    buf.lens[b], buf.live[b] = n, True


def plan_parts(
    buf: StaticState, recurrent: dict[str, Tensor], pages: Sequence[Page], *, row: bool = False
) -> PartsPlan:
    """Every check of from_parts + load_state, and where each page's entries go (no tensor copied);
    `row`: a batch-1 snapshot for one slot of per-row buffers (`load_plan(..., b)`)."""
    layout, B = buf.state.layout, 1 if row else buf.state.batch_size
    if buf.state.window is not None:
        raise StateMismatchError(
            f"this engine's model attends through a window ({buf.state.window}); the DecodeEngine "
            "keeps full attention only: resume on the model's own path (ModelState.from_parts)"
        )
    if "n_tokens" not in recurrent:
        raise StateMismatchError("recurrent tensors lack 'n_tokens'; pass what recurrent_tensors() gave")
    n = int(recurrent["n_tokens"])
    if n < 0:
        raise StateMismatchError(f"n_tokens is {n}; the snapshot is corrupt")
    saved_window = int(recurrent["window"]) if "window" in recurrent else -1
    if saved_window >= 0:
        raise StateMismatchError(
            f"this snapshot was saved under a window of {saved_window} tokens "
            f"(+ {int(recurrent.get('sinks', torch.tensor(0)))} sinks); the DecodeEngine keeps full "
            "attention only: resume it on the model's own path (ModelState.from_parts with its window)"
        )
    # Names: exactly what from_tensors would accept once from_parts has filled in the caches.
    names = set(ModelState._names(layout))
    wanted = {"n_tokens"} | {f"layers.{i}.{r}" for i, (_, sp) in enumerate(layout) for r in sp.recurrent}
    missing, extra = sorted(wanted - set(recurrent)), sorted(set(recurrent) - names)
    if missing or extra:
        raise StateMismatchError(
            "these state tensors do not belong to this model's config "
            f"(missing: {missing[:6]}{'...' if len(missing) > 6 else ''}; "
            f"unexpected: {extra[:6]}{'...' if len(extra) > 6 else ''}); "
            "load the state with the model it was saved from"
        )
    rec: list[tuple[Tensor, Tensor]] = []
    for i, ((kind, spec), fixed) in enumerate(zip(layout, buf.fixed, strict=True)):
        for r in spec.recurrent:
            t, want = recurrent[f"layers.{i}.{r}"], (B, *fixed[r].shape[1:])
            if tuple(t.shape) != want or not _is_float(t):
                raise StateMismatchError(
                    f"state tensor layers.{i}.{r} ({kind}) is {t.dtype} {tuple(t.shape)}, but this "
                    f"engine needs floating point {want} (batch {B}); "
                    "load the state with the model it was saved from"
                )
            rec.append((fixed[r], t))
    parsed = sorted((_page(p) for p in pages), key=lambda p: p[0])  # stable: from_parts' order
    layers: list[list[_Copies]] = []
    for i, ((kind, spec), ls) in enumerate(zip(layout, buf.state.layers, strict=True)):
        if not spec.cache:
            layers.append([])
            continue
        parts = [t for _, _, t in parsed if f"layers.{i}.pos" in t]
        poss = [_check_page(i, kind, spec.cache, ls.axes, t, B) for t in parts]
        layers.append(_place(i, n, parts, poss))
    return PartsPlan(n, rec, layers, buf, row)


def snapshot_parts(
    buf: StaticState, since: int, *, on_device: bool = False
) -> tuple[dict[str, Tensor], list[Page]]:
    """The buffers' state as `recurrent_tensors()` and one cache page of tokens [since, n): what
    `ModelState.cache_range` gives, without its gather. In these buffers slot p holds position p (every
    write keeps it so: prefill appends, the step writes at `pos`, loads place position p in slot p), so
    the page is a slice of each cache, copied, and its positions are made on the host (one tensor for
    every layer): no device read, so a snapshot kept on the device (`on_device`) costs the model no
    sync. Copies share no memory with the buffers; without `on_device` they are on the host."""
    state = buf.state

    def own(t: Tensor) -> Tensor:  # a slice of a buffer: copied
        t = t.detach()
        return t.clone(memory_format=torch.contiguous_format) if on_device else t.to("cpu", copy=True)

    # recurrent_tensors() copies already
    recurrent = {k: v if on_device else v.cpu() for k, v in state.recurrent_tensors().items()}
    end = int(state.n_tokens)
    if end <= since:
        return recurrent, []
    positions = torch.arange(since, end)
    tensors: dict[str, Tensor] = {}
    for i, ((_, spec), ls) in enumerate(zip(state.layout, state.layers, strict=True)):
        if ls.pos is None:
            continue
        for name, s in spec.cache.items():
            tensors[f"layers.{i}.{name}"] = own(ls.cache[name].narrow(token_axis(s), since, end - since))
        tensors[f"layers.{i}.pos"] = positions
    return recurrent, [Page(since, end, tensors)] if tensors else []
