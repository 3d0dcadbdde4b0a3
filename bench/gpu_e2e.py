"""End-to-end GPU benchmark (issue 8, items 2-4), batch 1, bf16, random weights at OLMo Hybrid 7B's shape:

    python3 bench/gpu_e2e.py --out $OUT/gpu_e2e.json        # on the device machine (H100)
    .venv/bin/python bench/gpu_e2e.py --tiny --out /tmp/e2e.json   # CPU smoke run at toy shapes

One process builds transformers' `OlmoHybridForCausalLM` from its default `OlmoHybridConfig` (random
init) and ours from that model's state dict through the olmo_hybrid adapter, sharing the weight
tensors (so both fit the card), then:
1. checks: our DecodeEngine (CUDA graphs) vs our eager path, greedy, 256 tokens (must be identical);
   ours vs transformers: last-position logits and greedy tokens (bf16 kernels differ: reported);
2. prefill tokens/s at 4k and 16k, ours vs transformers (with fla kernels);
3. decode tokens/s at 1k, 16k, 64k, 128k: ours through the engine vs transformers vs the floor
   (weights + cache + recurrent state bytes over the measured copy bandwidth). Our long states are
   synthetic (random K/V and recurrent states: decode cost does not depend on the values); the
   transformers caches are built by its own prefill in 16k chunks (as far as time and memory allow);
4. resume (bench/gpu_resume.py): a 64k-token session's snapshot saved to SQLite (memory.Store) and
   loaded onto the GPU vs re-prefilling the history, with a 4k window + 4 sinks, then (last, if time
   is left) with full attention (every 4k-token page, 8 GB), before the attention-only model needs
   the memory;
5. the hybrid advantage: an attention-only model of the same width and depth (sharing every weight
   that has the same shape) through the same engine at the same contexts.
Results go to one JSON file, rewritten after each section; a short table is printed last.
"""

from __future__ import annotations

import argparse
import gc
import inspect
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from gpu_common import fill_synthetic
from gpu_olmo import adopt_weights, attention_only, build_hf, hf_config
from hybrid_agent.model import HybridLM
from hybrid_agent.model.decode.engine import DecodeEngine
from hybrid_agent.model.decode.generate import prefill as eager_prefill


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


class Bench:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.t0 = time.time()
        self.cuda = torch.cuda.is_available() and not args.cpu
        self.dev = torch.device("cuda" if self.cuda else "cpu")
        self.dtype = torch.bfloat16 if self.cuda else torch.float32
        self.res: dict[str, Any] = {"what": __doc__.splitlines()[0], "tiny": args.tiny}

    def left(self) -> float:
        return self.args.budget_s - (time.time() - self.t0)

    def sync(self) -> None:
        if self.cuda:
            torch.cuda.synchronize()

    def clock(self) -> float:
        self.sync()
        return time.perf_counter()

    def save(self) -> None:
        self.res["elapsed_s"] = round(time.time() - self.t0, 1)
        Path(self.args.out).parent.mkdir(parents=True, exist_ok=True)
        import json

        Path(self.args.out).write_text(json.dumps(self.res, indent=2) + "\n")

    def section(self, name: str, fn: Any, min_left: float = 0.0) -> Any:
        if self.left() < min_left:
            self.res[name] = {"skipped": f"time budget ({self.left():.0f} s left)"}
            print(f"[{name}] skipped: {self.left():.0f} s left", flush=True)
            return None
        t = time.time()
        try:
            out = fn()
        except Exception as exc:  # report and go on: later sections still count
            import traceback

            traceback.print_exc()
            out = {"error": repr(exc)[:500]}
        self.res[name] = out
        print(f"[{name}] {time.time() - t:.1f} s: {str(out)[:600]}", flush=True)
        self.save()
        return out


def hf_call(hf: Any, ids: torch.Tensor, cache: Any) -> tuple[torch.Tensor, Any]:
    """One transformers forward with its cache (the keyword is `cache` in newer 5.x, else past_key_values)."""
    key = "cache" if "cache" in inspect.signature(hf.forward).parameters else "past_key_values"
    out = hf(input_ids=ids, use_cache=True, logits_to_keep=1, **{key: cache})
    new = getattr(out, "cache", None) or getattr(out, "past_key_values", None)
    return out.logits[:, -1], new


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.float() - b.float()).norm() / b.float().norm())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="bench/results/gpu_e2e.json")
    ap.add_argument("--tiny", action="store_true", help="toy shapes (CPU smoke run)")
    ap.add_argument("--cpu", action="store_true", help="stay on the CPU even if a GPU is there")
    ap.add_argument("--budget-s", type=float, default=420.0, help="skip sections that would start later")
    ap.add_argument("--decode-tokens", type=int, default=64)
    ap.add_argument("--attention", choices=["kernel", "sdpa"], default=None, help="engine attention mode")
    ap.add_argument("--ctxs", default=None, help="decode contexts, comma list (default 1k,16k,64k,128k)")
    ap.add_argument(
        "--gemv", choices=["default", "off", "all", "measured"], default="default",
        help="the engine's kernels.gemv roles for the decode section (measured: where the gemv section's "
        "microbenchmark beat cuBLAS; decode_cublas is always gemv=False)",
    )  # fmt: skip
    ap.add_argument("--gemv-out", default=None, help="also write the gemv section's JSON here")
    ap.add_argument(
        "--sections",
        default="check,sdpa_overhead,eager_sdpa,prefill,decode_unfused,decode_unaligned,decode,hf,hf_prefill,resume,attention",
        help="comma list; hf without hf_prefill = transformers' check and decode only",
    )  # fmt: skip
    args = ap.parse_args()
    sections = set(args.sections.split(","))
    b = Bench(args)
    tiny = args.tiny
    K = 1024
    ctxs = [64, 256] if tiny else [1 * K, 16 * K, 64 * K, 128 * K]
    if args.ctxs:
        ctxs = [int(c) for c in args.ctxs.split(",")]
    prefills = [128, 256] if tiny else [4 * K, 16 * K]
    resume_len = 256 if tiny else 64 * K
    N = 8 if tiny else args.decode_tokens
    check_tokens = 32 if tiny else 256
    page = 64 if tiny else 4 * K
    gen = torch.Generator(b.dev).manual_seed(0)

    def rand_ids(n: int, vocab: int) -> torch.Tensor:
        return torch.randint(0, vocab, (1, n), device=b.dev, generator=gen)

    torch.set_grad_enabled(False)
    info: dict[str, Any] = {"device": str(b.dev), "dtype": str(b.dtype)}
    if b.cuda:
        from gpu_common import copy_bandwidth_GBps, device_info

        info.update(device_info())
        info["copy_1GiB_GBps"] = copy_bandwidth_GBps()
    else:
        import importlib.metadata as md

        info["versions"] = {p: md.version(p) for p in ("torch", "transformers")}
    b.res["info"] = info
    copy_bps = info.get("copy_1GiB_GBps", 10.0) * 1e9
    print(info, flush=True)

    hf = build_hf(hf_config(tiny), b.dev, b.dtype)
    ours = adopt_weights(hf)
    V = ours.config.vocab_size
    b.res["model"] = {
        "params": ours.num_parameters(),
        "weight_bytes": sum(p.nbytes for p in ours.parameters()),
        "layer_types": ours.config.layer_types,
        "rope_theta": ours.config.attention.rope_theta,
    }
    maxctx = max(ctxs) + N + 16
    engine = DecodeEngine(ours, max_context=maxctx, prefill_chunk=2048, attention=args.attention)

    # 1. the engine against our eager path, greedy and teacher-forced (see tests/engine/test_engine_gpu.py).
    def check_engine() -> dict[str, Any]:
        prompt = rand_ids(64, V)
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
        small = DecodeEngine(ours, max_context=64 + check_tokens + 16, attention=args.attention, fuse=False)
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

    if "check" in sections:
        b.section("check_engine_vs_eager", check_engine)
    if "sdpa_overhead" in sections and b.cuda:
        b.section("sdpa_overhead", sdpa_overhead)

    def eager_decode_sdpa() -> dict[str, Any]:
        """#8 item 4: the model's eager T == 1 path (model(token, state)) per token, with the default
        SDPA backends (before) and restricted to flash / memory-efficient (model.attention.sdpa)."""
        import hybrid_agent.model.attention as att

        out: dict[str, Any] = {}
        for name, restrict in (
            ("default_backends", False),
            ("flash_or_efficient", True),
            ("default_again", False),
        ):
            att.RESTRICT_DECODE_BACKENDS = restrict
            state = ours.new_state()
            logits = eager_prefill(ours, rand_ids(64, V), state)
            times = []
            for _ in range(10):
                t = b.clock()
                logits = ours(logits.argmax(-1).view(1, 1), state)[:, -1]
                times.append((b.clock() - t) * 1e3)
            out[f"{name}_ms_per_token_median"] = sorted(times[2:])[len(times[2:]) // 2]
        att.RESTRICT_DECODE_BACKENDS = True
        return out

    if "eager_sdpa" in sections and b.cuda:
        b.section("eager_decode_sdpa", eager_decode_sdpa)

    def prefill_ours() -> list[dict[str, Any]]:
        engine.prefill_chunk = 8192 if not tiny else 64
        engine.reset()
        engine.prefill(rand_ids(prefills[0], V))  # compiles the chunked kernels
        rows = []
        for T in prefills:
            engine.reset()
            ids = rand_ids(T, V)
            t = b.clock()
            engine.prefill(ids)
            dt = b.clock() - t
            rows.append({"T": T, "s": dt, "tok_s": T / dt, "chunk": engine.prefill_chunk})
        return rows

    if "prefill" in sections:
        b.section("prefill_ours", prefill_ours)

    def decode(eng: DecodeEngine, model: Any, contexts: list[int]) -> list[dict[str, Any]]:
        fill_synthetic(eng, gen)
        rows = []
        for ctx in contexts:
            eng.set_length(ctx)
            eng.generate_greedy(8 if not tiny else 2, sync_every=8)  # capture (first time), warm up
            eng.set_length(ctx)
            t = b.clock()
            eng.generate_greedy(N, sync_every=N)
            dt = (b.clock() - t) / N
            fb = floor_bytes(model, ctx)
            row = {"ctx": ctx, "ms": dt * 1e3, "tok_s": 1 / dt, "floor_ms": fb["total"] / copy_bps * 1e3,
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

    def decode_variant(contexts: list[int], **engine_options: Any) -> list[dict[str, Any]]:
        # A same-run baseline: the engine built with other options, freed before the next section.
        size = max(contexts) + N + 16
        eng = DecodeEngine(ours, max_context=size, attention=args.attention, **engine_options)
        try:
            return decode(eng, ours, contexts)
        finally:
            del eng
            gc.collect()
            torch.cuda.empty_cache() if b.cuda else None

    # The one-graph step with the model's own modules (fuse=False): the session-1 engine, as the
    # same-run baseline of the fused step.
    if "decode_unfused" in sections:
        b.section("decode_unfused", lambda: decode_variant(ctxs, fuse=False))

    # The fused step without the zero rows that pad fused projections to multiples of 16 outputs
    # (align=1; 16 is the CUDA default: OLMo's GDN q|k|v|a|b|g, 17,340 outputs, ran as cuBLAS gemvx at
    # ~1.4 TB/s unpadded), up to 64k: the same-run baseline for that choice.
    if "decode_unaligned" in sections:
        b.section("decode_unaligned", lambda: decode_variant(ctxs[:-1], align=1))
    gemv_roles: dict[str, Any] = {"default": None, "off": False, "all": True, "measured": None}

    def gemv_bench() -> dict[str, Any]:
        # kernels.gemv vs cuBLAS at this model's one-token matmul shapes (bench/gpu_gemv.py); the best
        # config per shape goes into the engine's gemv_cfg for the decode sections below
        from gpu_common import write_json
        from gpu_gemv import engine_shapes, sweep

        res = sweep(engine_shapes(engine), install=engine.gemv_cfg)
        gemv_roles["measured"] = res["faster_roles"]
        if args.gemv_out:
            write_json(args.gemv_out, res)
        return res

    if "gemv" in sections and b.cuda:
        b.section("gemv_microbench", gemv_bench)

    def decode_gemv(roles: Any, cs: list[int]) -> list[dict[str, Any]]:
        engine.set_gemv(roles)
        rows = decode(engine, ours, cs)
        for r in rows:
            r["gemv_roles"] = sorted(engine.gemv_roles)
        return rows

    def decode_with(
        cs: list[int], *, attn_prep: bool = True, attn: Any = None, greedy: bool = True, down: Any = None
    ) -> list[dict[str, Any]]:
        """The default engine (same buffers) with one of its choices switched: the attention prep fusion
        (attn_prep), the attention kernel's launch (attn: a kernels.attention_decode.DecodeConfig), the
        greedy-advance kernel (greedy), the down projection's GEMV config (down); graphs recaptured."""
        from hybrid_agent.kernels import attention_decode as ad
        from hybrid_agent.kernels.gemv import gemv_config

        key = (ours.config.d_model, engine.model.layers[0].mlp.down_proj.in_features)
        saved = dict(engine.gemv_cfg)
        shown = down or saved.get(key) or gemv_config(engine.device, key, engine.model.dtype)
        engine.set_gemv(gemv_roles[args.gemv])
        engine.attn_prep, engine.greedy_kernel, ad.OVERRIDE = attn_prep, greedy, attn
        if down is not None:
            engine.gemv_cfg[key] = down
        try:
            rows = decode(engine, ours, cs)
        finally:
            engine.attn_prep, engine.greedy_kernel, ad.OVERRIDE, engine.gemv_cfg = True, True, None, saved
            engine._graphs = None
        for r in rows:
            r.update(attn_prep=attn_prep, attn_config=str(attn), greedy_kernel=greedy,
                     down_config=str(shown))  # fmt: skip
        return rows

    # same-run baselines of this session's choices, each switched back alone: the attention layers'
    # QK-norm / RoPE / cache writes as the model's small ops (before kernels.attn_decode_prep),
    # torch's argmax + 3 ops for the greedy advance; the down projection with and without split-K
    if "decode_noprep" in sections:
        b.section("decode_noprep", lambda: decode_with(ctxs, attn_prep=False))
    if "decode_nogreedy" in sections:
        b.section("decode_nogreedy", lambda: decode_with(ctxs, greedy=False))
    if "decode_down" in sections:
        from hybrid_agent.kernels.gemv import GemvConfig

        for name, cfg in (("split2", GemvConfig(16, 256, 2, 4, 2)), ("nosplit", GemvConfig(8, 512, 1, 4, 2))):
            b.section(f"decode_down_{name}", lambda cfg=cfg: decode_with(ctxs, down=cfg))

    # the same engine (same buffers) with every matmul on cuBLAS: the same-run baseline of the gemv
    if "decode_cublas" in sections:
        b.section("decode_cublas", lambda: decode_gemv(False, ctxs))
    if "decode" in sections:
        b.section("decode_ours", lambda: decode_gemv(gemv_roles[args.gemv], ctxs))
    if "decode_cublas" in sections:  # again at the first context: the run-to-run spread
        b.section("decode_cublas_again", lambda: decode_gemv(False, ctxs[:1]))
    if "decode" in sections and "decode_cublas" in sections:
        b.section("decode_ours_again", lambda: decode_gemv(gemv_roles[args.gemv], ctxs[:1]))
    # last: a launch that goes wrong on the device would end the CUDA context for every later section
    sweep_best: list[Any] = []

    def attn_sweep() -> list[dict[str, Any]]:
        """kernels.attention_decode launch candidates over the engine's own 8 cache buffers (one call per
        layer, as in a step; 126 MB of K/V at 1k, past the 50 MB L2), as CUDA-graph replays."""
        import triton.testing as tt
        from hybrid_agent.kernels import attention_decode as ad

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
        for ctx in ctxs:
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
            timed = [r for r in rows if r["ctx"] == ctx and r.get("rel_err", 1.0) < 1e-2]
            best = min(timed, key=lambda r: r["us_8_layers"])
            print(f"attn sweep ctx {ctx}: best {best}", flush=True)
        first = [r for r in rows if r["ctx"] == ctxs[0] and r.get("rel_err", 1.0) < 1e-2]
        first.sort(key=lambda r: r["us_8_layers"])
        byname = {str(c): c for c in cands}
        total: dict[str, float] = {}  # over all contexts, for configs right at every one
        for r in rows:
            us = r["us_8_layers"] if r.get("rel_err", 1.0) < 1e-2 else 1e9
            total[r["config"]] = total.get(r["config"], 0.0) + us
        picks = [first[0]["config"]] if first else []
        picks += [min(total, key=total.__getitem__)] if total else []
        for name in dict.fromkeys(picks):
            if byname[name] is not None:
                sweep_best.append(byname[name])
        return rows

    if "attn_sweep" in sections and b.cuda:
        b.section("attn_sweep", attn_sweep)
    if "decode_attn" in sections and b.cuda:
        for i, cfg in enumerate(sweep_best):
            b.section(f"decode_attn{i}", lambda cfg=cfg: decode_with(ctxs, attn=cfg))

    engine = None  # frees its buffers (closures above hold the name, not the object)
    gc.collect()
    torch.cuda.empty_cache() if b.cuda else None

    # 2. transformers, in the same process, on the same weights.
    def versus_hf() -> dict[str, Any]:
        out: dict[str, Any] = {}
        T0 = prefills[0] if "hf_prefill" in sections else min(ctxs)  # one fla autotune less
        small = DecodeEngine(ours, max_context=T0 + 64)
        prompt = rand_ids(T0, V)
        ref, cache = hf_call(hf, prompt, None)
        mine = small.prefill(prompt).clone()
        out["logits_rel_diff"] = rel(mine, ref)
        toks_hf, tok = [], ref.argmax(-1, keepdim=True)
        for _ in range(32 if not tiny else 8):
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
                ids = rand_ids(T, V)
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
                logits, cache = hf_call(hf, rand_ids(base, V), None)
                grown = extend_hf_cache(cache, ctx, gen) if ctx > base else 0
                tok = logits.argmax(-1, keepdim=True)
                for _ in range(2):
                    logits, cache = hf_call(hf, tok, cache)
                    tok = logits.argmax(-1, keepdim=True)
                n = 8 if not tiny else 2
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
            gc.collect()
            torch.cuda.empty_cache() if b.cuda else None
            print(out["decode"][-1], flush=True)
        return out

    if "hf" in sections:
        b.section("transformers", versus_hf, min_left=60)
    hf = None
    gc.collect()
    torch.cuda.empty_cache() if b.cuda else None

    def resume_window() -> dict[str, Any]:
        from gpu_resume import resume_windowed

        with tempfile.TemporaryDirectory() as tmp:
            w, chunk = (128, 64) if tiny else (4096, 8192)
            db = Path(tmp) / "w.db"
            return resume_windowed(ours, rand_ids(resume_len, V), db, b.clock, window=w, sinks=4, chunk=chunk)

    if "resume" in sections:
        b.section("resume_windowed", resume_window, min_left=60)

    def resume_exact() -> dict[str, Any]:
        from gpu_resume import resume_full

        eng = DecodeEngine(ours, max_context=resume_len + 16, prefill_chunk=8192 if not tiny else 64)
        with tempfile.TemporaryDirectory() as tmp:
            return resume_full(eng, rand_ids(resume_len, V), Path(tmp) / "f.db", b.clock, page=page)

    if "resume" in sections:
        b.section("resume_full", resume_exact, min_left=110)
    gc.collect()
    torch.cuda.empty_cache() if b.cuda else None

    def attention_baseline() -> list[dict[str, Any]]:
        nonlocal ours
        attn = attention_only(ours)
        ours = None  # frees the Gated DeltaNet weights: the 64 GB cache at 128k needs the room
        gc.collect()
        torch.cuda.empty_cache() if b.cuda else None
        mode = args.attention
        rows = decode(DecodeEngine(attn, max_context=ctxs[-2] + N + 16, attention=mode), attn, ctxs[:-1])
        gc.collect()
        torch.cuda.empty_cache() if b.cuda else None
        try:  # 64 GB of cache at 128k beside 13.4 GB of weights: fits only just
            rows += decode(DecodeEngine(attn, max_context=maxctx, attention=mode), attn, ctxs[-1:])
        except torch.OutOfMemoryError as exc:
            rows.append({"ctx": ctxs[-1], "oom": str(exc)[:300]})
        return rows

    if "attention" in sections:
        b.section("decode_attention_only", attention_baseline, min_left=15)
    gc.collect()
    torch.cuda.empty_cache() if b.cuda else None

    table(b.res)
    b.save()


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
    segments run eagerly (the launches a graph captures), and one replay of the captured graph."""
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

    out = {"eager_segments": count(lambda: [seg() for seg, _ in eng._segments])}
    if eng._graphs is not None and len(eng._graphs) == 1:
        out["graph_replay"] = count(lambda: next(iter(eng._graphs.values())).replay())  # type: ignore[union-attr]
    return out


def kernel_profile(eng: DecodeEngine, ctx: int, top: int = 14) -> dict[str, Any]:
    """Device time of one graph replay by kernel name (torch.profiler): where the step's time goes."""
    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity, profile

    if eng._graphs is None or len(eng._graphs) != 1:
        return {}
    graph = next(iter(eng._graphs.values()))
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


def _f(v: float | None, spec: str) -> str:
    return format(float("nan") if v is None else v, spec)


def table(res: dict[str, Any]) -> None:
    print(f"\ncard: {res['info'].get('card', res['info']['device'])}")
    hf = res.get("transformers") or {}
    hf_dec = {r["ctx"]: r for r in hf.get("decode", []) if "tok_s" in r}
    attn = {r["ctx"]: r for r in res.get("decode_attention_only") or [] if isinstance(r, dict) and "ctx" in r}
    unf = {r["ctx"]: r for r in res.get("decode_unfused") or [] if isinstance(r, dict) and "tok_s" in r}
    print(
        "ctx     ours tok/s  unfused  floor tok/s  %floor  hf tok/s  x hf  attn tok/s  hyb/attn  cache GB h/a"
    )
    for r in res.get("decode_ours") or []:
        if not isinstance(r, dict) or "ctx" not in r:
            continue
        h, a, u = hf_dec.get(r["ctx"]), attn.get(r["ctx"]), unf.get(r["ctx"])
        print(
            f"{r['ctx']:<8} {r['tok_s']:>10.1f}  {_f(u and u['tok_s'], '>7.1f')}"
            f"  {1e3 / r['floor_ms']:>11.1f}  {100 * r['vs_floor']:>5.0f}%"
            f"  {_f(h and h['tok_s'], '>8.1f')}  {_f(h and r['tok_s'] / h['tok_s'], '>5.1f')}"
            f"  {_f(a and a['tok_s'], '>10.1f')}  {_f(a and r['tok_s'] / a['tok_s'], '>11.2f')}"
            f"  {r['cache_GB']:.2f}/{_f(a and a['cache_GB'], '.2f')}"
        )
    for key in ("decode_unfused", "decode_ours"):
        for r in res.get(key) or []:
            if isinstance(r, dict) and "kernels_per_token" in r:
                print(f"{key} kernels per token at {r['ctx']}: {r['kernels_per_token']}")
    hf_pre = {r["T"]: r for r in hf.get("prefill", [])}
    for r in res.get("prefill_ours") or []:
        if isinstance(r, dict) and "T" in r:
            h = hf_pre.get(r["T"])
            print(f"prefill T={r['T']}: ours {r['tok_s']:.0f} tok/s, hf {_f(h and h['tok_s'], '.0f')}")
    for key in ("resume_windowed", "resume_full"):
        rs = res.get(key)
        if isinstance(rs, dict) and "speedup" in rs:
            print(f"{key} {rs['tokens']} tokens: re-prefill {rs['reprefill_s']:.2f} s, "
                  f"resume {rs['load_s']:.3f} s ({rs['speedup']:.1f}x), "
                  f"snapshot {rs['snapshot_bytes'] / 1e9:.2f} GB")  # fmt: skip


if __name__ == "__main__":
    main()
