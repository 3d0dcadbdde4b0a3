"""Resume vs re-prefill on the GPU (issue 8, item 4); run as a section of bench/gpu_e2e.py, which builds
the model and the engine:

- re-prefill: the whole history prefilled onto an empty state through the DecodeEngine (what a
  transcript-based agent pays on resume);
- save: the state after the history written to SQLite through memory.Store in pages of `page` tokens
  (as the agent writes them, one turn here), then the process "restarts": a new Store;
- resume, full attention: open the store, load the snapshot (every page, sha256-verified), rebuild the
  ModelState, copy it into the engine's GPU buffers; the next token's logits must equal those of the
  state that never left the GPU, bit for bit;
- resume with a window (the agent's `--window`): only the recurrent state, the sink tokens' page and
  the pages of the last `window` tokens are read; the baseline is re-prefilling with that window.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from memory import Page, Store
from model import ModelState
from model.engine import DecodeEngine
from model.generate import prefill as eager_prefill


def resume_bench(
    eng: DecodeEngine,
    ids: torch.Tensor,
    db: Path,
    page: int,
    clock: Callable[[], float],
    *,
    window: int = 4096,
    sinks: int = 4,
    window_baseline: bool = True,
) -> dict[str, Any]:
    model, n = eng.model, ids.shape[1]
    fp = model.fingerprint
    eng.reset()
    eng.prefill(ids[:, :page])  # warm-up (kernel compilation)
    eng.reset()
    t = clock()
    eng.prefill(ids)
    out: dict[str, Any] = {"tokens": n, "reprefill_s": clock() - t, "page_tokens": page}

    recurrent = {k: v.cpu() for k, v in eng.state.recurrent_tensors().items()}
    pages = []
    for s in range(0, n, page):
        e = min(s + page, n)
        pages.append(Page(s, e, {k: v.cpu() for k, v in eng.state.cache_range(s, e).items()}))
    probe = int(ids[0, 0])
    ref = eng.step(probe).float().cpu()

    store = Store(db)
    sid = store.create_session("gpu resume bench", "/tmp", fp).id
    t = time.perf_counter()
    stats = store.save_turn(
        sid, 1, events=[{"kind": "user", "content": "history"}], recurrent=recurrent, pages=pages, n_tokens=n
    )
    out["save_s"] = time.perf_counter() - t
    out["snapshot_bytes"] = stats.bytes_written
    store.close()
    del recurrent, pages

    t = clock()
    store = Store(db)
    snap = store.load_snapshot(sid, fingerprint=fp)
    state = ModelState.from_parts(snap.recurrent, list(snap.pages), model.config)
    eng.load_state(state)
    out["load_full_s"] = clock() - t
    out["speedup_full"] = out["reprefill_s"] / out["load_full_s"]
    out["full_resume_exact"] = torch.equal(eng.step(probe).float().cpu(), ref)
    del snap, state

    t = clock()
    snap = store.load_snapshot(sid, window=window, sinks=sinks, fingerprint=fp)
    state = ModelState.from_parts(snap.recurrent, list(snap.pages), model.config, window=window, sinks=sinks)
    state = state.to(model.device)
    out["load_window_s"] = clock() - t
    out["window"], out["sinks"], out["window_pages_read"] = window, sinks, len(snap.pages)
    out["window_state_bytes"] = state.nbytes
    store.close()
    if window_baseline:
        fresh = model.new_state(window=window, sinks=sinks)
        t = clock()
        eager_prefill(model, ids, fresh, chunk_size=eng.prefill_chunk)
        out["reprefill_window_s"] = clock() - t
        out["speedup_window"] = out["reprefill_window_s"] / out["load_window_s"]
    else:  # baseline skipped for time: the full-attention re-prefill (an upper bound on it) instead
        out["speedup_window"] = out["reprefill_s"] / out["load_window_s"]
        out["speedup_window_baseline"] = "full-attention re-prefill (windowed one not timed)"
    return out
