"""bench/gpu_e2e.py's checks: our DecodeEngine (fused and unfused) against our eager path, greedy and
teacher-forced; the eager T == 1 path's SDPA backends; ours against transformers on the same weights
(logits, greedy tokens, prefill and decode speed).
"""

from __future__ import annotations

from typing import Any

import torch
from gpu_e2e_probes import extend_hf_cache, hf_call, rel
from gpu_e2e_run import Run
from hybrid_agent.model.decode.engine import DecodeEngine
from hybrid_agent.model.decode.generate import prefill as eager_prefill


def check_engine(r: Run) -> dict[str, Any]:
    """The engine against our eager path, greedy and teacher-forced (see tests/engine/test_engine_gpu.py)."""
    b, ours, engine, check_tokens = r.b, r.ours, r.engine, r.check_tokens
    prompt = r.rand_ids(64)
    state = ours.new_state()
    logits = eager_prefill(ours, prompt, state)[0].float()
    want, eager = [], []
    t = b.clock()
    for _ in range(check_tokens):
        eager.append(logits)
        want.append(int(logits.argmax()))
        logits = ours(torch.tensor([[want[-1]]], device=b.dev), state)[0, -1].float()
    eager_ms = (b.clock() - t) / check_tokens * 1e3
    out: dict[str, Any] = {"tokens": check_tokens, "eager_ms_per_token": eager_ms}
    small = DecodeEngine(ours, max_context=64 + check_tokens + 16, attention=r.args.attention, fuse=False)
    for name, eng in (("fused", engine), ("unfused", small)):
        eng.reset()
        eng.prefill_chunk = 2048  # the eager prefill's chunking: same shapes
        forced = [eng.prefill(prompt)[0].float().clone()]
        forced += [eng.step(tok)[0].float().clone() for tok in want[:-1]]
        pairs = list(zip(eager, forced, strict=True))
        noise = [float((e - x).abs().max() / e.abs().max()) for e, x in pairs]
        flips = [i for i, (e, x) in enumerate(pairs) if e.argmax() != x.argmax()]
        # a flip is within noise when the eager top two are closer than twice the step's largest
        # logit difference (tests/engine/test_engine_gpu.py's criterion)
        outside = [i for i in flips if float(pairs[i][0].max() - pairs[i][0][pairs[i][1].argmax()])
                   > 2 * float((pairs[i][0] - pairs[i][1]).abs().max())]  # fmt: skip
        eng.reset()
        eng.prefill(prompt)
        got = eng.generate_greedy(check_tokens, sync_every=32)
        same = next((i for i, (x, y) in enumerate(zip(got, want, strict=True)) if x != y), len(want))
        out[name] = {"graphed": eng.graphed, "attention": eng.attention, "fused": eng.fused,
                     "greedy_identical_prefix": same, "all_identical": got == want,
                     "teacher_forced_max_rel_logit_diff": max(noise),
                     "teacher_forced_median_rel_logit_diff": sorted(noise)[len(noise) // 2],
                     "teacher_forced_argmax_flips": flips, "flips_outside_noise": outside}  # fmt: skip
    del small
    return out


def eager_decode_sdpa(r: Run) -> dict[str, Any]:
    """#8 item 4: the model's eager T == 1 path (model(token, state)) per token, with the default
    SDPA backends (before) and restricted to flash / memory-efficient (model/ops.py `sdpa`)."""
    from hybrid_agent.model.ops import Ops

    b, ours = r.b, r.ours
    out: dict[str, Any] = {}
    for name, restrict in (
        ("default_backends", False),
        ("flash_or_efficient", True),
        ("default_again", False),
    ):
        ops = Ops(restrict_sdpa=restrict)
        state = ours.new_state()
        logits = eager_prefill(ours, r.rand_ids(64), state)
        times = []
        for _ in range(10):
            t = b.clock()
            logits = ours(logits.argmax(-1).view(1, 1), state, ops)[:, -1]
            times.append((b.clock() - t) * 1e3)
        out[f"{name}_ms_per_token_median"] = sorted(times[2:])[len(times[2:]) // 2]
    return out


def versus_hf(r: Run) -> dict[str, Any]:
    """Ours against transformers, in the same process, on the same weights."""
    b, hf, ours, sections, prefills, ctxs = r.b, r.hf, r.ours, r.sections, r.prefills, r.ctxs
    out: dict[str, Any] = {}
    T0 = prefills[0] if "hf_prefill" in sections else min(ctxs)  # one fla autotune less
    small = DecodeEngine(ours, max_context=T0 + 64)
    prompt = r.rand_ids(T0)
    ref, cache = hf_call(hf, prompt, None)
    mine = small.prefill(prompt).clone()
    out["logits_rel_diff"] = rel(mine, ref)
    toks_hf, tok = [], ref.argmax(-1, keepdim=True)
    for _ in range(32 if not r.tiny else 8):
        toks_hf.append(int(tok))
        logits, cache = hf_call(hf, tok, cache)
        tok = logits.argmax(-1, keepdim=True)
    toks = small.generate_greedy(len(toks_hf))
    out["greedy_tokens"] = len(toks)
    out["greedy_identical_prefix"] = next(
        (i for i, (x, y) in enumerate(zip(toks, toks_hf, strict=True)) if x != y), len(toks)
    )
    del small, cache
    out["prefill"] = []
    for T in prefills if "hf_prefill" in sections else []:
        for _ in range(1 if T == T0 else 2):  # a new length autotunes fla's kernels: time the rerun
            ids = r.rand_ids(T)
            t = b.clock()
            hf_call(hf, ids, None)
            dt = b.clock() - t
        out["prefill"].append({"T": T, "s": dt, "tok_s": T / dt})
    out["decode"] = []
    base = min(ctxs)
    for ctx in ctxs:
        if b.left() < 90:
            out["decode"].append({"ctx": ctx, "skipped": "time budget"})
            continue
        try:
            logits, cache = hf_call(hf, r.rand_ids(base), None)
            grown = extend_hf_cache(cache, ctx, r.gen) if ctx > base else 0
            tok = logits.argmax(-1, keepdim=True)
            for _ in range(2):
                logits, cache = hf_call(hf, tok, cache)
                tok = logits.argmax(-1, keepdim=True)
            n = 8 if not r.tiny else 2
            t = b.clock()
            for _ in range(n):
                logits, cache = hf_call(hf, tok, cache)
                tok = logits.argmax(-1, keepdim=True)
            dt = (b.clock() - t) / n
            out["decode"].append({"ctx": ctx, "ms": dt * 1e3, "tok_s": 1 / dt, "cache":
                                  f"{base} tokens prefilled" + (f", K/V of {grown} layers grown to {ctx} "
                                  "with random values" if grown else "")})  # fmt: skip
        except Exception as exc:  # out of memory, or a cache class we cannot grow: say so, go on
            out["decode"].append({"ctx": ctx, "error": repr(exc)[:300]})
        cache = logits = None
        b.free()
        print(out["decode"][-1], flush=True)
    return out
