"""bench/gpu_e2e.py's decode sections: tokens/s at each context through a DecodeEngine against the floor
(bench/gpu_e2e_probes.py's floor_bytes over the measured copy bandwidth), for the default engine and for
same-run baselines with one of its choices switched (unfused, unaligned, cuBLAS only, no attention prep,
no greedy kernel, another down-projection GEMV config, another attention-kernel launch), and for an
attention-only model of the same size; the GEMV microbenchmark and the attention-kernel launch sweep
that pick the configs those sections use.
"""

from __future__ import annotations

from typing import Any

import torch
from gpu_common import fill_synthetic
from gpu_e2e_probes import floor_bytes, kernel_profile, kernels_per_token, sdpa_bandwidth
from gpu_e2e_run import Run
from gpu_olmo import attention_only
from hybrid_agent.model.decode.engine import DecodeEngine


def decode(r: Run, eng: DecodeEngine, model: Any, contexts: list[int]) -> list[dict[str, Any]]:
    b, N = r.b, r.n
    fill_synthetic(eng, r.gen)
    rows = []
    for ctx in contexts:
        eng.set_length(ctx)
        eng.generate_greedy(8 if not r.tiny else 2, sync_every=8)  # capture (first time), warm up
        eng.set_length(ctx)
        t = b.clock()
        eng.generate_greedy(N, sync_every=N)
        dt = (b.clock() - t) / N
        fb = floor_bytes(model, ctx)
        row = {"ctx": ctx, "ms": dt * 1e3, "tok_s": 1 / dt, "floor_ms": fb["total"] / r.copy_bps * 1e3,
               "cache_GB": fb["cache"] / 1e9, "recurrent_GB": fb["recurrent"] / 2e9}  # fmt: skip
        row["vs_floor"] = row["floor_ms"] / row["ms"]
        if b.cuda:
            row["sdpa_GBps"] = sdpa_bandwidth(eng, ctx)
            if ctx == contexts[0]:
                row["kernels_per_token"] = kernels_per_token(eng, ctx)
                row["profile"] = kernel_profile(eng, ctx, top=30)
        rows.append(row)
        print(row, flush=True)
    return rows


def decode_variant(r: Run, contexts: list[int], **engine_options: Any) -> list[dict[str, Any]]:
    # A same-run baseline: the engine built with other options, freed before the next section.
    size = max(contexts) + r.n + 16
    eng = DecodeEngine(r.ours, max_context=size, attention=r.args.attention, **engine_options)
    try:
        return decode(r, eng, r.ours, contexts)
    finally:
        del eng
        r.b.free()


def gemv_bench(r: Run) -> dict[str, Any]:
    # kernels.gemv vs cuBLAS at this model's one-token matmul shapes (bench/gpu_gemv.py); the best
    # config per shape goes into the engine's gemv_cfg for the decode sections after it
    from gpu_common import write_json
    from gpu_gemv import engine_shapes, sweep

    res = sweep(engine_shapes(r.engine), install=r.engine.gemv_cfg)
    r.gemv_roles["measured"] = res["faster_roles"]
    if r.args.gemv_out:
        write_json(r.args.gemv_out, res)
    return res


def decode_gemv(r: Run, roles: Any, cs: list[int]) -> list[dict[str, Any]]:
    engine = r.engine
    engine.set_gemv(roles)
    rows = decode(r, engine, r.ours, cs)
    for row in rows:
        row["gemv_roles"] = sorted(engine.gemv_roles)
    return rows


def decode_with(
    r: Run, cs: list[int], *, attn_prep: bool = True, attn: Any = None, greedy: bool = True, down: Any = None
) -> list[dict[str, Any]]:
    """The default engine (same buffers) with one of its choices switched: the attention prep fusion
    (attn_prep), the attention kernel's launch (attn: a kernels.attention_decode.DecodeConfig, the
    engine's attn_config), the greedy-advance kernel (greedy), the down projection's GEMV config (down);
    graphs recaptured."""
    from hybrid_agent.kernels.gemv import gemv_config

    engine = r.engine
    key = (r.ours.config.d_model, engine.model.layers[0].mlp.down_proj.in_features)
    saved = dict(engine.gemv_cfg)
    shown = down or saved.get(key) or gemv_config(engine.device, key, engine.model.dtype)
    engine.set_gemv(r.gemv_roles[r.args.gemv])
    engine.attn_prep, engine.greedy_kernel, engine.attn_config = attn_prep, greedy, attn
    if down is not None:
        engine.gemv_cfg[key] = down
    try:
        rows = decode(r, engine, r.ours, cs)
    finally:
        # each of these drops the captured graph: the next step captures the defaults again
        engine.attn_prep, engine.greedy_kernel, engine.attn_config, engine.gemv_cfg = True, True, None, saved
    for row in rows:
        row.update(attn_prep=attn_prep, attn_config=str(attn), greedy_kernel=greedy,
                   down_config=str(shown))  # fmt: skip
    return rows


def attn_sweep(r: Run) -> list[dict[str, Any]]:
    """kernels.attention_decode launch candidates over the engine's own 8 cache buffers (one call per
    layer, as in a step; 126 MB of K/V at 1k, past the 50 MB L2), as CUDA-graph replays."""
    import triton.testing as tt
    from hybrid_agent.kernels import attention_decode as ad

    b, engine, gen = r.b, r.engine, r.gen
    fill_synthetic(engine, gen)
    layers = [ls for ls in engine.state.layers if ls.pos is not None]
    k0 = layers[0].storage["k"]
    q = torch.randn(1, k0.shape[1], 1, k0.shape[3], device=b.dev, dtype=k0.dtype, generator=gen)
    # (nsplit, block_n, num_warps, slots, prefetch)
    cands = [None] + [ad.DecodeConfig(*c) for c in (
        (64, 64, 4, False),  # the kernel before the slots form (one running max per row)
        (64, 64, 4, True, False), (64, 32, 4, True, False), (64, 64, 4), (64, 16, 4), (32, 32, 4),
        (128, 32, 4), (64, 32, 8))]  # fmt: skip
    rows = []
    for ctx in r.ctxs:
        engine.set_length(ctx)
        pos = torch.tensor([ctx - 1], device=b.dev)
        kv_bytes = sum(2 * ls.storage["k"][:, :, :ctx].nbytes for ls in layers)
        k1, v1 = layers[0].storage["k"], layers[0].storage["v"]
        want = ad.attention_decode_ref(q, k1, v1, pos, scale=0.088)
        for cfg in cands:

            def run(cfg: Any = cfg, pos: torch.Tensor = pos) -> None:
                for ls in layers:
                    ad._attention_decode_triton(q, ls.storage["k"], ls.storage["v"], pos, scale=0.088,
                                                config=cfg)  # fmt: skip

            try:
                run()
                ms = float(tt.do_bench_cudagraph(run, rep=60, return_mode="median"))
                got = ad._attention_decode_triton(q, k1, v1, pos, scale=0.088, config=cfg)
                err = float((got.float() - want.float()).norm() / want.float().norm())
                rows.append({"ctx": ctx, "config": str(cfg), "us_8_layers": ms * 1e3,
                             "GBps": kv_bytes / (ms * 1e-3) / 1e9, "rel_err": err})  # fmt: skip
            except Exception as exc:
                rows.append({"ctx": ctx, "config": str(cfg), "error": repr(exc)[:300]})
        timed = [row for row in rows if row["ctx"] == ctx and row.get("rel_err", 1.0) < 1e-2]
        best = min(timed, key=lambda row: row["us_8_layers"])
        print(f"attn sweep ctx {ctx}: best {best}", flush=True)
    first = [row for row in rows if row["ctx"] == r.ctxs[0] and row.get("rel_err", 1.0) < 1e-2]
    first.sort(key=lambda row: row["us_8_layers"])
    byname = {str(c): c for c in cands}
    total: dict[str, float] = {}  # over all contexts, for configs right at every one
    for row in rows:
        us = row["us_8_layers"] if row.get("rel_err", 1.0) < 1e-2 else 1e9
        total[row["config"]] = total.get(row["config"], 0.0) + us
    picks = [first[0]["config"]] if first else []
    picks += [min(total, key=total.__getitem__)] if total else []
    for name in dict.fromkeys(picks):
        if byname[name] is not None:
            r.sweep_best.append(byname[name])
    return rows


def attention_baseline(r: Run) -> list[dict[str, Any]]:
    """The hybrid advantage: an attention-only model of the same width and depth through the same
    engine at the same contexts. Drops the hybrid model (r.ours) first."""
    b, ctxs = r.b, r.ctxs
    attn = attention_only(r.ours)
    r.ours = None  # frees the Gated DeltaNet weights: the 64 GB cache at 128k needs the room
    b.free()
    mode = r.args.attention
    rows = decode(r, DecodeEngine(attn, max_context=ctxs[-2] + r.n + 16, attention=mode), attn, ctxs[:-1])
    b.free()
    try:  # 64 GB of cache at 128k beside 13.4 GB of weights: fits only just
        rows += decode(r, DecodeEngine(attn, max_context=r.maxctx, attention=mode), attn, ctxs[-1:])
    except torch.OutOfMemoryError as exc:
        rows.append({"ctx": ctxs[-1], "oom": str(exc)[:300]})
    return rows
