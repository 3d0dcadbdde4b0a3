"""Measurements bench/gpu_e2e.py's sections take of a model, an engine or transformers: the bytes a
decode step must move (the floor), transformers' forward with its cache and that cache grown to a long
context, the host cost of a decode-shaped SDPA call, and torch.profiler views of one decode step.
"""

from __future__ import annotations

import inspect
import time
from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:
    from hybrid_agent.model import HybridLM
    from hybrid_agent.model.decode.engine import DecodeEngine


def floor_bytes(model: HybridLM, ctx: int) -> dict[str, int]:
    """Bytes a decode step must move at context `ctx`: every weight but the embedding table (one row),
    the K/V cache read, the recurrent states read and written."""
    from hybrid_agent.model.state import state_layout

    weights = sum(p.nbytes for p in model.parameters()) - model.embed_tokens.weight.nbytes
    item = model.dtype.itemsize
    cache = rec = 0
    for _, spec in state_layout(model.config):
        for shape in spec.cache.values():
            cache += ctx * item * int(torch.tensor([d for d in shape if d != -1]).prod())
        for shape in spec.recurrent.values():
            rec += 2 * 4 * int(torch.tensor(shape).prod())
    return {"weights": weights, "cache": cache, "recurrent": rec, "total": weights + cache + rec}


def hf_call(hf: Any, ids: torch.Tensor, cache: Any) -> tuple[torch.Tensor, Any]:
    """One transformers forward with its cache (the keyword is `cache` in newer 5.x, else past_key_values)."""
    key = "cache" if "cache" in inspect.signature(hf.forward).parameters else "past_key_values"
    out = hf(input_ids=ids, use_cache=True, logits_to_keep=1, **{key: cache})
    new = getattr(out, "cache", None) or getattr(out, "past_key_values", None)
    return out.logits[:, -1], new


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.float() - b.float()).norm() / b.float().norm())


def extend_hf_cache(cache: Any, ctx: int, gen: torch.Generator) -> int:
    """Grow every attention layer's K/V in transformers' cache to `ctx` tokens of random values (decode
    cost does not depend on them); returns how many layers were grown. Prefilling 128k tokens through
    transformers' masked chunked attention would take minutes of device time."""
    grown = 0

    def grow(t: torch.Tensor) -> torch.Tensor:
        shape = (t.shape[0], t.shape[1], ctx, t.shape[3])  # (B, H, L, Dh)
        return torch.randn(shape, device=t.device, dtype=t.dtype, generator=gen)

    for layer in getattr(cache, "layers", []):
        keys = getattr(layer, "keys", None)
        if isinstance(keys, torch.Tensor) and keys.dim() == 4 and keys.numel():
            layer.keys, layer.values = grow(layer.keys), grow(layer.values)
            grown += 1
    for name in ("key_cache", "value_cache"):  # older cache classes keep lists
        lst = getattr(cache, name, None)
        for i, t in enumerate(lst if isinstance(lst, list) else []):
            if isinstance(t, torch.Tensor) and t.dim() == 4 and t.numel():
                lst[i] = grow(t)
                grown += name == "key_cache"
    if grown == 0 or cache.get_seq_length() != ctx:
        raise RuntimeError(f"could not grow transformers' cache ({type(cache).__name__}) to {ctx} tokens")
    return grown


def sdpa_overhead() -> dict[str, Any]:
    """Host time of one decode-shaped SDPA call (q 1 x 30 x 1 x 128 over L keys) when L changes every
    call, as in a decode loop, with the default backends and with flash attention only."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    k = torch.randn(1, 30, 4096, 128, device="cuda", dtype=torch.bfloat16)
    q = torch.randn(1, 30, 1, 128, device="cuda", dtype=torch.bfloat16)
    out: dict[str, Any] = {}
    for name, backends in (("default", None), ("flash_only", [SDPBackend.FLASH_ATTENTION])):
        times = []
        for i in range(24):
            L = 1000 + 8 * i + (name == "flash_only") * 1000  # fresh lengths for each backend set
            torch.cuda.synchronize()
            t = time.perf_counter()
            if backends is None:
                torch.nn.functional.scaled_dot_product_attention(q, k[:, :, :L], k[:, :, :L])
            else:
                with sdpa_kernel(backends):
                    torch.nn.functional.scaled_dot_product_attention(q, k[:, :, :L], k[:, :, :L])
            torch.cuda.synchronize()
            times.append((time.perf_counter() - t) * 1e3)
        out[f"{name}_ms_median_new_length"] = sorted(times[4:])[len(times[4:]) // 2]
        torch.cuda.synchronize()
        t = time.perf_counter()
        for _ in range(20):
            torch.nn.functional.scaled_dot_product_attention(q, k[:, :, :1500], k[:, :, :1500])
        torch.cuda.synchronize()
        out["default_ms_same_length"] = (time.perf_counter() - t) / 20 * 1e3
    return out


def kernels_per_token(eng: DecodeEngine, ctx: int) -> dict[str, int]:
    """Device activities (kernels, copies, sets) of one decode step, by torch.profiler: the step's
    step run eagerly (the launches a graph captures), and one replay of the captured graph."""
    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity, profile

    def count(fn: Any) -> int:
        eng.set_length(ctx)
        with (
            torch.inference_mode(),
            profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof,
        ):
            fn()
            torch.cuda.synchronize()
        eng.set_length(ctx)
        return sum(1 for e in prof.events() if e.device_type == DeviceType.CUDA)

    # "eager_segments": the key earlier results use for the eager step's launches
    out = {"eager_segments": count(eng._step)}
    if eng._graphs is not None:
        out["graph_replay"] = count(eng._graphs.replay)
    return out


def kernel_profile(eng: DecodeEngine, ctx: int, top: int = 14) -> dict[str, Any]:
    """Device time of one graph replay by kernel name (torch.profiler): where the step's time goes."""
    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity, profile

    graph = eng._graphs
    if graph is None:
        return {}
    eng.set_length(ctx)
    with torch.inference_mode(), profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        graph.replay()
        torch.cuda.synchronize()
    eng.set_length(ctx)
    by: dict[str, list[float]] = {}
    events = [e for e in prof.events() if e.device_type == DeviceType.CUDA]
    for e in events:
        us = float(getattr(e, "device_time", None) or getattr(e, "cuda_time", 0.0) or 0.0)
        by.setdefault(e.name[:90], []).append(us)
    rows = sorted(((sum(v), len(v), k) for k, v in by.items()), reverse=True)
    span = max((e.time_range.end for e in events), default=0) - min(
        (e.time_range.start for e in events), default=0
    )
    return {"kernel_us_total": sum(r[0] for r in rows), "first_to_last_us": span,
            "top": [{"name": k, "count": n, "us": round(t, 1)} for t, n, k in rows[:top]]}  # fmt: skip


def sdpa_bandwidth(eng: DecodeEngine, ctx: int) -> float:
    """The attention core alone (what the engine runs between its graphs), as GB/s of K/V read."""
    import triton.testing as tt

    ls = next(ls for ls in eng.state.layers if ls.pos is not None)
    k, v = ls.storage["k"].narrow(2, 0, ctx), ls.storage["v"].narrow(2, 0, ctx)
    q = torch.randn(1, k.shape[1], 1, k.shape[3], device=k.device, dtype=k.dtype)
    ms = tt.do_bench(lambda: torch.nn.functional.scaled_dot_product_attention(q, k, v), return_mode="median")
    return 2 * k.nbytes / (ms * 1e-3) / 1e9
