"""Resume vs re-prefill on the GPU (issue 8, item 4), at OLMo Hybrid 7B's shape (bf16, random weights).

    python3 bench/gpu_resume.py --out $OUT/gpu_resume.json        # on the device machine (H100)
    .venv/bin/python bench/gpu_resume.py --tiny --out /tmp/r.json # CPU smoke run at toy shapes

Also the resume sections of bench/gpu_e2e.py (`resume_windowed`, `resume_full` are called from there).

Two ways a 64k-token session can live, each timed against re-prefilling its history in the same run:
- `resume_windowed`: the product's constant-memory mode (`--window 4096`, 4 sink tokens). The history
  is prefilled with that window (the baseline, through the model's eager path: the engine keeps full
  attention only); the snapshot holds the recurrent state and the cache pages the window needs.
  Resume = open the store, load the snapshot (every chunk verified) straight onto the GPU
  (`load_snapshot(device="cuda")`), rebuild the state there. Timed: the first load in the process
  (which also page-locks the store's small staging ring), a second one, one with the database file
  evicted from the page cache (bytes from the disk), and the previous load path (CPU bytes, joins,
  safetensors copies, `from_parts` on the CPU, then `.to(cuda)`) on the same snapshot. Also each load
  stage alone in GB/s (bench/snapshot.py's `load_stages`). Check: next-token logits vs the live state.
- `resume_full`: exact full attention. The history is prefilled through the DecodeEngine (baseline);
  the snapshot holds every page (4k tokens each, 8.1 GB at 64k); resume = load it onto the GPU and
  copy it into the engine's buffers (`load_state`). Check: the next token's logits, bit for bit.

Floors, printed with the results: bytes / (the slowest unavoidable stage), where the stages are the
digest of every byte (the integrity guarantee) over the host's cores, the host-to-device copy, and,
from a cold page cache, the disk.

`--digest` picks the algorithm the snapshots are written (and so verified) with: blake3 (the store's
default, memory/blobs.py) or sha256 (what databases written before it hold); run both to compare.
"""

from __future__ import annotations

import argparse
import cProfile
import hashlib
import io
import os
import pstats
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

import blake3
from hybrid_agent.memory import Store, blobs, sqlite_chunks
from hybrid_agent.memory.blobs import prepare_blob
from hybrid_agent.memory.codec import tensors_to_bytes
from hybrid_agent.model import HybridLM, ModelState, Page
from hybrid_agent.model.decode.engine import DecodeEngine
from hybrid_agent.model.decode.generate import prefill as eager_prefill
from snapshot import drop_from_page_cache, legacy_load, load_stages

Clock = Callable[[], float]


def _pages(state: ModelState, spans: list[tuple[int, int]]) -> list[Page]:
    return [Page(s, e, {k: v.cpu() for k, v in state.cache_range(s, e).items()}) for s, e in spans]


def _save(
    db: Path, fp: str, state: ModelState, pages: list[Page], *, stages: bool = False
) -> tuple[str, dict[str, Any]]:
    recurrent = {k: v.cpu() for k, v in state.recurrent_tensors().items()}
    out: dict[str, Any] = {}
    if stages:  # save_turn's two CPU stages alone on the same tensors; the rest is the database
        t = time.perf_counter()
        raw = [tensors_to_bytes(recurrent), *(tensors_to_bytes(p.tensors) for p in pages)]
        out["save_serialize_s"] = time.perf_counter() - t
        t = time.perf_counter()
        for b in raw:
            prepare_blob(b)
        out["save_digest_s"] = time.perf_counter() - t
        del raw
    store = Store(db)
    sid = store.create_session("gpu resume bench", "/tmp", fp).id
    t = time.perf_counter()
    stats = store.save_turn(
        sid, 1, events=[{"kind": "user", "content": "history"}], recurrent=recurrent, pages=pages,
        n_tokens=state.n_tokens,
    )  # fmt: skip
    out.update(save_s=time.perf_counter() - t, snapshot_bytes=stats.bytes_written, pages_saved=len(pages))
    t = time.perf_counter()
    store.close()  # checkpoints the WAL into the file (what a later process reads)
    out["checkpoint_s"] = time.perf_counter() - t
    return sid, out


def _load_new(
    db: Path,
    sid: str,
    fp: str,
    cfg: Any,
    dev: torch.device,
    window: int | None,
    sinks: int,
    steps: dict[str, float] | None = None,
) -> ModelState:
    """The resume path: open, load onto the GPU (verified), rebuild the state there. `steps` gets the
    time of each step (the device synchronised after each, so copies in flight count where issued)."""
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    t0 = time.perf_counter()
    store = Store(db)
    t1 = time.perf_counter()
    snap = store.load_snapshot(sid, window=window, sinks=sinks, fingerprint=fp, device=dev)
    sync()
    t2 = time.perf_counter()
    state = ModelState.from_parts(snap.recurrent, list(snap.pages), cfg, window=window, sinks=sinks).to(dev)
    sync()
    t3 = time.perf_counter()
    store.close()
    if steps is not None:
        steps.update(
            open_s=t1 - t0, load_snapshot_s=t2 - t1, from_parts_s=t3 - t2, close_s=time.perf_counter() - t3
        )
    return state


def _load_legacy(
    db: Path, sid: str, cfg: Any, dev: torch.device, window: int | None, sinks: int
) -> ModelState:
    """The previous path on the same snapshot: CPU bytes, joins, safetensors copies, from_parts on the
    CPU, then the whole state to the GPU."""
    store = Store(db)
    loaded = legacy_load(store, sid, window=window, sinks=sinks)
    store.close()
    rec, *pages = loaded.values()  # recurrent first, then the pages in token order
    parts = [(i, i + 1, p) for i, p in enumerate(pages)]  # from_parts reads positions from "pos"
    return ModelState.from_parts(rec, parts, cfg, window=window, sinks=sinks).to(dev)


def _timed(clock: Clock, fn: Callable[[], Any]) -> tuple[float, Any]:
    t = clock()
    out = fn()
    return clock() - t, out


def resume_windowed(
    model: HybridLM,
    ids: torch.Tensor,
    db: Path,
    clock: Clock,
    *,
    window: int,
    sinks: int,
    chunk: int,
    repeats: int = 1,
) -> dict[str, Any]:
    n, fp, cfg, dev = ids.shape[1], model.fingerprint, model.config, model.device
    eager_prefill(
        model, ids[:, :chunk], model.new_state(window=window, sinks=sinks), chunk_size=chunk
    )  # warm
    state = model.new_state(window=window, sinks=sinks)
    t = clock()
    eager_prefill(model, ids, state, chunk_size=chunk)
    out: dict[str, Any] = {"tokens": n, "window": window, "sinks": sinks, "reprefill_s": clock() - t}
    state = model.new_state(window=window, sinks=sinks)  # twice: the baseline is the faster of two
    t = clock()
    eager_prefill(model, ids, state, chunk_size=chunk)
    out["reprefill_again_s"] = clock() - t
    spans = [(0, sinks), (n - window, n)] if n - window > sinks else [(0, n)]
    sid, saved = _save(db, fp, state, _pages(state, spans), stages=True)
    out.update(saved)
    probe = ids[:, :1]
    ref = model(probe, state.clone())[:, -1].float()
    del state

    out["load_first_s"], loaded = _timed(clock, lambda: _load_new(db, sid, fp, cfg, dev, window, sinks))
    del loaded
    # Warm loads, repeated; the parallel readers with and without mmap, alternating (an A/B in one run).
    runs: dict[str, list[dict[str, float]]] = {"plain": [], "mmap": []}
    for _ in range(repeats):
        for variant in ("plain", "mmap"):
            sqlite_chunks.READER_MMAP_BYTES = (1 << 31) - (1 << 16) if variant == "mmap" else 0
            steps: dict[str, float] = {}
            dt, loaded = _timed(clock, lambda s=steps: _load_new(db, sid, fp, cfg, dev, window, sinks, s))
            runs[variant].append({"total_s": dt, **steps})
            del loaded
    sqlite_chunks.READER_MMAP_BYTES = 0
    out["load_runs"] = runs
    for variant, rs in runs.items():
        out[f"load_{variant}_median_s"] = statistics.median(r["total_s"] for r in rs)
    out["load_s"] = out["load_plain_median_s"]  # the default (no mmap)
    out["reprefill_s"] = min(out["reprefill_s"], out.pop("reprefill_again_s"))
    prof = cProfile.Profile()  # where a warm load's host time goes (the calling thread)
    loaded = prof.runcall(_load_new, db, sid, fp, cfg, dev, window, sinks)
    text = io.StringIO()
    pstats.Stats(prof, stream=text).sort_stats("tottime").print_stats(15)
    out["profile_top"] = [ln for ln in text.getvalue().splitlines() if ln.strip()][-16:]
    out["state_bytes"] = loaded.nbytes
    got = model(probe, loaded)[:, -1].float()
    del loaded
    drop_from_page_cache(db)
    out["load_cold_s"], cold = _timed(clock, lambda: _load_new(db, sid, fp, cfg, dev, window, sinks))
    got_cold = model(probe, cold)[:, -1].float()
    del cold
    out["load_legacy_s"], old = _timed(clock, lambda: _load_legacy(db, sid, cfg, dev, window, sinks))
    got_old = model(probe, old)[:, -1].float()
    del old
    for key in ("load_first_s", "load_s", "load_mmap_median_s", "load_cold_s", "load_legacy_s"):
        out[key.replace("load", "speedup").removesuffix("_s")] = out["reprefill_s"] / out[key]
    out["load_GBps"] = out["snapshot_bytes"] / out["load_s"] / 1e9
    out["load_vs_legacy"] = out["load_legacy_s"] / out["load_s"]
    store = Store(db)
    sync = torch.cuda.synchronize if dev.type == "cuda" else None
    out["stages"] = load_stages(store, sid, window=window, sinks=sinks, device=str(dev), sync=sync)
    store.close()
    # The live state may still hold a few evicted-but-masked keys (eviction runs in batches), so the
    # attention reductions can differ in the last bits; the next token must not.
    out["next_logits_max_rel_diff"] = float((got - ref).abs().max() / ref.abs().max())
    out["next_token_same"] = bool(got.argmax() == ref.argmax())
    out["cold_and_legacy_equal_warm"] = bool(torch.equal(got, got_cold) and torch.equal(got, got_old))
    return out


def resume_full(eng: DecodeEngine, ids: torch.Tensor, db: Path, clock: Clock, *, page: int) -> dict[str, Any]:
    n, fp, cfg, dev = ids.shape[1], eng.model.fingerprint, eng.model.config, eng.device
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

    def from_parts(snap: Any) -> None:
        eng.load_state(ModelState.from_parts(snap.recurrent, list(snap.pages), cfg))

    def load_parts(snap: Any) -> None:  # the agent's path: pages straight into the engine's buffers
        eng.load_parts(snap.recurrent, list(snap.pages))

    # Both loads in the same run, with the GPU memory each needs beyond the engine's own buffers
    # (from_parts concatenates the cache; load_parts copies page by page).
    for key, place in (("load", from_parts), ("load_parts", load_parts)):

        def load(place: Callable[[Any], None] = place) -> None:
            store = Store(db)
            place(store.load_snapshot(sid, fingerprint=fp, device=dev))
            store.close()

        if dev.type == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            before = torch.cuda.memory_allocated()
        out[f"{key}_s"], _ = _timed(clock, load)
        if dev.type == "cuda":
            out[f"{key}_peak_extra_GB"] = (torch.cuda.max_memory_allocated() - before) / 1e9
        out[f"{key}_speedup"] = out["reprefill_s"] / out[f"{key}_s"]
        out[f"{key}_exact"] = torch.equal(eng.step(probe).float().cpu(), ref)
    # the names earlier JSON used for the from_parts load
    out["speedup"], out["exact"] = out.pop("load_speedup"), out.pop("load_exact")
    out["load_GBps"] = out["snapshot_bytes"] / out["load_s"] / 1e9
    return out


def host_rates(dev: torch.device) -> dict[str, Any]:
    """The host's ceilings for the floor arithmetic: sha256 and BLAKE3 on one core (4 MiB chunks, as
    the store hashes), host-to-device copies of 1 GiB from pageable and from pinned memory, and
    page-locking 1 GiB."""
    data = os.urandom(256 << 20)
    t = time.perf_counter()
    hashlib.sha256(data).digest()
    out: dict[str, Any] = {"sha256_one_core_GBps": len(data) / (time.perf_counter() - t) / 1e9}
    view = memoryview(data)
    t = time.perf_counter()
    for i in range(0, len(data), blobs.CHUNK_SIZE):
        blake3.blake3(view[i : i + blobs.CHUNK_SIZE]).digest()
    out["blake3_one_core_GBps"] = len(data) / (time.perf_counter() - t) / 1e9
    cpu = next((ln.split(":", 1)[1].strip() for ln in Path("/proc/cpuinfo").read_text().splitlines()
                if ln.startswith("model name")), "?")  # fmt: skip
    flags = next((ln for ln in Path("/proc/cpuinfo").read_text().splitlines() if ln.startswith("flags")), "")
    out.update(cpu=cpu, cores=os.cpu_count(), sha_ni=" sha_ni" in flags)
    if dev.type != "cuda":
        return out
    n = 1 << 30
    pageable = torch.empty(n, dtype=torch.uint8).fill_(1)
    gpu = torch.empty(n, dtype=torch.uint8, device=dev)
    gpu[: 1 << 20].copy_(pageable[: 1 << 20])  # CUDA context and copy path warm
    torch.cuda.synchronize()
    t = time.perf_counter()
    pinned = torch.empty(n, dtype=torch.uint8, pin_memory=True)
    out["pin_1GiB_s"] = time.perf_counter() - t
    pinned.fill_(1)
    for name, src in (("h2d_pageable_GBps", pageable), ("h2d_pinned_GBps", pinned)):
        best = 0.0
        for _ in range(3):
            torch.cuda.synchronize()
            t = time.perf_counter()
            gpu.copy_(src, non_blocking=True)
            torch.cuda.synchronize()
            best = max(best, n / (time.perf_counter() - t) / 1e9)
        out[name] = best
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="bench/results/gpu_resume.json")
    ap.add_argument("--tiny", action="store_true", help="toy shapes (CPU smoke run)")
    ap.add_argument("--sections", default="windowed,full")
    ap.add_argument("--digest", choices=blobs.ALGORITHMS, default=blobs.WRITE_ALGORITHM)
    ap.add_argument("--repeats", type=int, default=5, help="warm windowed loads per variant (median)")
    ap.add_argument(
        "--budget-s", type=float, default=90.0, help="skip the full section if it would start later"
    )
    args = ap.parse_args()
    blobs.WRITE_ALGORITHM = args.digest
    t0 = time.time()
    from gpu_common import device_info, write_json
    from gpu_olmo import adopt_weights, build_hf, hf_config

    cuda = torch.cuda.is_available() and not args.tiny
    dev = torch.device("cuda" if cuda else "cpu")
    torch.set_grad_enabled(False)
    res: dict[str, Any] = {
        "what": __doc__.splitlines()[0],
        "command": " ".join(sys.argv),
        "digest": args.digest,
    }
    res["info"] = device_info() if cuda else {"device": "cpu"}
    res["host"] = host_rates(dev)
    print(res, flush=True)
    hf = build_hf(hf_config(args.tiny), dev, torch.bfloat16 if cuda else torch.float32)
    model = adopt_weights(hf)
    del hf
    n, window, chunk, page = (256, 128, 64, 64) if args.tiny else (64 * 1024, 4096, 8192, 4096)
    gen = torch.Generator(dev).manual_seed(0)
    ids = torch.randint(0, model.config.vocab_size, (1, n), device=dev, generator=gen)
    clock: Clock = (lambda: (torch.cuda.synchronize(), time.perf_counter())[1]) if cuda else time.perf_counter
    sections = set(args.sections.split(","))
    with tempfile.TemporaryDirectory(dir=os.environ.get("TMPDIR")) as tmp:

        def windowed() -> dict[str, Any]:
            return resume_windowed(
                model,
                ids,
                Path(tmp) / "w.db",
                clock,
                window=window,
                sinks=4,
                chunk=chunk,
                repeats=args.repeats,
            )

        def full() -> dict[str, Any]:
            eng = DecodeEngine(model, max_context=n + 16, prefill_chunk=chunk)
            return resume_full(eng, ids, Path(tmp) / "f.db", clock, page=page)

        for name, fn in (("windowed", windowed), ("full", full)):
            if name not in sections:
                continue
            if name == "full" and time.time() - t0 > args.budget_s:
                res["resume_full"] = {"skipped": f"budget: {time.time() - t0:.0f} s elapsed"}
                continue
            try:
                res[f"resume_{name}"] = fn()
            except Exception as exc:  # report and go on: the other section still counts
                import traceback

                traceback.print_exc()
                res[f"resume_{name}"] = {"error": repr(exc)[:500]}
            print(f"resume_{name}", res[f"resume_{name}"], flush=True)
            write_json(args.out, res)
    res["elapsed_s"] = round(time.time() - t0, 1)
    write_json(args.out, res)
    for key in ("resume_windowed", "resume_full"):
        r = res.get(key, {})
        if "speedup" in r:
            print(f"{key}: re-prefill {r['reprefill_s']:.3f} s, load {r['load_s']:.3f} s "
                  f"({r['speedup']:.1f}x, {r['load_GBps']:.2f} GB/s), save {r['save_s']:.2f} s")  # fmt: skip


if __name__ == "__main__":
    main()
