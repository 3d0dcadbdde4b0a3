"""Resume vs re-prefill on the GPU (issue 8, item 4); sections of bench/gpu_e2e.py, which builds the model.

Two ways a 64k-token session can live, each timed against re-prefilling its history:
- `resume_windowed`: the product's constant-memory mode (`--window 4096`, 4 sink tokens). The history
  is prefilled with that window (the baseline, through the model's eager path: the engine keeps full
  attention only); the snapshot holds the recurrent state and the cache pages the window needs (the
  agent also stores the older pages, which a windowed resume never reads). Resume = open the store,
  load the snapshot (sha256-verified), rebuild the state on the GPU. Check: the next token's logits of
  the resumed state vs the state that never left the GPU.
- `resume_full`: exact full attention. The history is prefilled through the DecodeEngine (baseline);
  the snapshot holds every page (4k tokens each, 8 GB at 64k for OLMo Hybrid 7B's shape); resume =
  load it all and copy it into the engine's buffers. Check: the next token's logits, bit for bit.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from memory import Page, Store
from model import HybridLM, ModelState
from model.engine import DecodeEngine
from model.generate import prefill as eager_prefill

Clock = Callable[[], float]


def _pages(state: ModelState, spans: list[tuple[int, int]]) -> list[Page]:
    return [Page(s, e, {k: v.cpu() for k, v in state.cache_range(s, e).items()}) for s, e in spans]


def _save(db: Path, fp: str, state: ModelState, pages: list[Page]) -> tuple[str, dict[str, Any]]:
    recurrent = {k: v.cpu() for k, v in state.recurrent_tensors().items()}
    store = Store(db)
    sid = store.create_session("gpu resume bench", "/tmp", fp).id
    t = time.perf_counter()
    stats = store.save_turn(
        sid, 1, events=[{"kind": "user", "content": "history"}], recurrent=recurrent, pages=pages,
        n_tokens=state.n_tokens,
    )  # fmt: skip
    out = {
        "save_s": time.perf_counter() - t,
        "snapshot_bytes": stats.bytes_written,
        "pages_saved": len(pages),
    }
    store.close()
    return sid, out


def resume_windowed(
    model: HybridLM, ids: torch.Tensor, db: Path, clock: Clock, *, window: int, sinks: int, chunk: int
) -> dict[str, Any]:
    n, fp = ids.shape[1], model.fingerprint
    eager_prefill(
        model, ids[:, :chunk], model.new_state(window=window, sinks=sinks), chunk_size=chunk
    )  # warm
    state = model.new_state(window=window, sinks=sinks)
    t = clock()
    eager_prefill(model, ids, state, chunk_size=chunk)
    out: dict[str, Any] = {"tokens": n, "window": window, "sinks": sinks, "reprefill_s": clock() - t}
    spans = [(0, sinks), (n - window, n)] if n - window > sinks else [(0, n)]
    sid, saved = _save(db, fp, state, _pages(state, spans))
    out.update(saved)
    probe = ids[:, :1]
    ref = model(probe, state.clone())[:, -1].float()

    t = clock()
    store = Store(db)
    snap = store.load_snapshot(sid, window=window, sinks=sinks, fingerprint=fp)
    loaded = ModelState.from_parts(snap.recurrent, list(snap.pages), model.config, window=window, sinks=sinks)
    loaded = loaded.to(model.device)
    out["load_s"] = clock() - t
    store.close()
    out["state_bytes"] = loaded.nbytes
    out["speedup"] = out["reprefill_s"] / out["load_s"]
    got = model(probe, loaded)[:, -1].float()
    # The live state may still hold a few evicted-but-masked keys (eviction runs in batches), so the
    # attention reductions can differ in the last bits; the next token must not.
    out["next_logits_max_rel_diff"] = float((got - ref).abs().max() / ref.abs().max())
    out["next_token_same"] = bool(got.argmax() == ref.argmax())
    return out


def resume_full(eng: DecodeEngine, ids: torch.Tensor, db: Path, clock: Clock, *, page: int) -> dict[str, Any]:
    n, fp = ids.shape[1], eng.model.fingerprint
    eng.reset()
    eng.prefill(ids[:, :page])  # warm-up
    eng.reset()
    t = clock()
    eng.prefill(ids)
    out: dict[str, Any] = {"tokens": n, "reprefill_s": clock() - t, "page_tokens": page}
    sid, saved = _save(
        db, fp, eng.state, _pages(eng.state, [(s, min(s + page, n)) for s in range(0, n, page)])
    )
    out.update(saved)
    probe = int(ids[0, 0])
    ref = eng.step(probe).float().cpu()

    t = clock()
    store = Store(db)
    snap = store.load_snapshot(sid, fingerprint=fp)
    eng.load_state(ModelState.from_parts(snap.recurrent, list(snap.pages), eng.model.config))
    out["load_s"] = clock() - t
    store.close()
    out["speedup"] = out["reprefill_s"] / out["load_s"]
    out["exact"] = torch.equal(eng.step(probe).float().cpu(), ref)
    return out
