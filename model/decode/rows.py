"""Per-row positions in the decode engine (`DecodeEngine(..., per_row=True)`): a batch of B slots whose
rows each have their own length, recurrent state and cache, decoded by the same one-token step (one
CUDA graph, captured once for the B slots) so that `hybrid-agent serve` can add and remove requests
between steps without recapturing.

- `buf.pos` is (B,): row b's next position. Attention reads each row's own length on the device
  (kernels.attention_decode / mla_decode with per-row `pos`), RoPE turns at each row's position and the
  cache entries go to each row's own slot (`write_rows`, a scatter along the token axis).
- `buf.active` (B,) is 1 for slots that hold a request: the step advances only their positions. An
  empty slot stays at position 0 and rewrites its own slot 0 every step (its outputs are never read),
  so it runs harmlessly inside the graph.
- `load_row` copies a batch-1 `ModelState` (a prefilled prompt, a restored snapshot) into a slot;
  `export_row` gives a slot back as a batch-1 state of its own; `clear_row` empties a slot.
- Recurrent layers have no position: each row's slice of the fixed tensors is its state.
Windowed attention is not supported here (serve falls back to one request at a time for windows).
"""

from __future__ import annotations

import torch
from hybrid_agent.model.decode.buffers import StaticState
from hybrid_agent.model.errors import StateMismatchError
from hybrid_agent.model.state import LayerState, ModelState
from torch import Tensor


def write_rows(store: Tensor, ax: int, new: Tensor, pos: Tensor) -> None:
    """Row b of `new` (B, ..., 1, ... with the token axis `ax`) into `store` at slot pos[b] of that axis."""
    shape = [1] * new.dim()
    shape[0] = new.shape[0]
    idx = pos.view(shape).expand(new.shape)
    store.scatter_(ax, idx, new.to(store.dtype))


def load_row(buf: StaticState, b: int, state: ModelState) -> None:
    """Copy the batch-1 `state` into slot b (the slot's old content is replaced) and mark it active."""
    if state.layout != buf.state.layout or state.batch_size != 1:
        raise StateMismatchError("load_row takes a batch-1 state of the engine's model")
    if state.window is not None:
        raise StateMismatchError("the engine keeps full attention; load a state made with window=None")
    if not 0 <= b < buf.state.batch_size:
        raise IndexError(f"slot {b} out of range: the engine has {buf.state.batch_size} slots")
    n = state.n_tokens
    buf.room(n, 1)
    with torch.inference_mode():
        for ls, src, fixed in zip(buf.state.layers, state.layers, buf.fixed, strict=True):
            for name, t in fixed.items():
                t[b : b + 1].copy_(src.recurrent[name])
            if ls.pos is None or src.pos is None:
                continue
            if len(src.pos) != n or not bool((src.pos.cpu() == torch.arange(n)).all()):
                raise StateMismatchError("the state's cache does not hold every position 0..n-1")
            for name, t in src.cache.items():
                ls.storage[name][b : b + 1].narrow(ls.axes[name], 0, n).copy_(t)
            ls.storage["pos"][:n] = torch.arange(n, device=buf.device)  # slot p holds position p
        buf.pos[b] = n
        buf.active[b] = 1
    buf.lens[b], buf.live[b] = n, True


def export_row(buf: StaticState, b: int) -> ModelState:
    """Slot b as a batch-1 state of its own (copies: its recurrent tensors, its first lens[b] cache slots)."""
    return view_row(buf, b, copy=True)


def view_row(buf: StaticState, b: int, copy: bool = False) -> ModelState:
    """Slot b as a batch-1 state; without `copy`, views into the buffers (nothing copied, so cheap for
    a long row) that are valid only until the next step, load or clear: read them before."""
    n = buf.lens[b]
    own = (lambda t: t.clone()) if copy else (lambda t: t)
    layers = []
    for ls, fixed in zip(buf.state.layers, buf.fixed, strict=True):
        recurrent = {k: own(t[b : b + 1]) for k, t in fixed.items()}
        cache, pos = {}, None
        if ls.pos is not None:
            cache = {k: own(ls.storage[k][b : b + 1].narrow(ls.axes[k], 0, n)) for k in ls.cache}
            pos = torch.arange(n, device=buf.device)
        layers.append(LayerState(recurrent, cache, pos, dict(ls.axes), dense=True))  # pos is 0..n-1
    return ModelState(layers, buf.state.layout, n_tokens=n)


def clear_row(buf: StaticState, b: int) -> None:
    """Empty slot b: position 0, not advanced, its recurrent state zeroed (its cache is left as is)."""
    with torch.inference_mode():
        for fixed in buf.fixed:
            for t in fixed.values():
                t[b : b + 1].zero_()
        buf.pos[b] = 0
        buf.active[b] = 0
    buf.lens[b], buf.live[b] = 0, False
