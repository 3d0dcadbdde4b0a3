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

Prefill and resume (2, 4) run here; the checks (1, and transformers' side of 2 and 3) are in
bench/gpu_e2e_checks.py, the decode sections (3, 5, and same-run baselines of the engine's choices) in
bench/gpu_e2e_decode.py, what they measure with in bench/gpu_e2e_probes.py, the table in
bench/gpu_e2e_table.py, the section runner and what the sections share in bench/gpu_e2e_run.py.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from gpu_e2e_checks import check_engine, eager_decode_sdpa, versus_hf
from gpu_e2e_decode import (
    attention_baseline,
    attn_sweep,
    decode_gemv,
    decode_variant,
    decode_with,
    gemv_bench,
)
from gpu_e2e_probes import sdpa_overhead
from gpu_e2e_run import Bench, Run
from gpu_e2e_table import table
from gpu_olmo import adopt_weights, build_hf, hf_config
from hybrid_agent.model.decode.engine import DecodeEngine


def prefill_ours(r: Run) -> list[dict[str, Any]]:
    b, engine, tiny = r.b, r.engine, r.tiny
    engine.prefill_chunk = 8192 if not tiny else 64
    engine.reset()
    engine.prefill(r.rand_ids(r.prefills[0]))  # compiles the chunked kernels
    rows = []
    for T in r.prefills:
        engine.reset()
        ids = r.rand_ids(T)
        t = b.clock()
        engine.prefill(ids)
        dt = b.clock() - t
        rows.append({"T": T, "s": dt, "tok_s": T / dt, "chunk": engine.prefill_chunk})
    return rows


def resume_window(r: Run) -> dict[str, Any]:
    from gpu_resume import resume_windowed

    with tempfile.TemporaryDirectory() as tmp:
        w, chunk = (128, 64) if r.tiny else (4096, 8192)
        db = Path(tmp) / "w.db"
        return resume_windowed(
            r.ours, r.rand_ids(r.resume_len), db, r.b.clock, window=w, sinks=4, chunk=chunk
        )


def resume_exact(r: Run) -> dict[str, Any]:
    from gpu_resume import resume_full

    eng = DecodeEngine(r.ours, max_context=r.resume_len + 16, prefill_chunk=8192 if not r.tiny else 64)
    with tempfile.TemporaryDirectory() as tmp:
        return resume_full(eng, r.rand_ids(r.resume_len), Path(tmp) / "f.db", r.b.clock, page=r.page)


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
    b = Bench(args, what=__doc__.splitlines()[0])
    tiny = args.tiny
    K = 1024
    ctxs = [64, 256] if tiny else [1 * K, 16 * K, 64 * K, 128 * K]
    if args.ctxs:
        ctxs = [int(c) for c in args.ctxs.split(",")]
    r = Run(
        b, args, sections=set(args.sections.split(",")), tiny=tiny, ctxs=ctxs,
        prefills=[128, 256] if tiny else [4 * K, 16 * K], resume_len=256 if tiny else 64 * K,
        n=8 if tiny else args.decode_tokens, check_tokens=32 if tiny else 256, page=64 if tiny else 4 * K,
        gen=torch.Generator(b.dev).manual_seed(0),
    )  # fmt: skip
    sections, N = r.sections, r.n

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
    r.copy_bps = info.get("copy_1GiB_GBps", 10.0) * 1e9
    print(info, flush=True)

    r.hf = build_hf(hf_config(tiny), b.dev, b.dtype)
    r.ours = adopt_weights(r.hf)
    r.vocab = r.ours.config.vocab_size
    b.res["model"] = {
        "params": r.ours.num_parameters(),
        "weight_bytes": sum(p.nbytes for p in r.ours.parameters()),
        "layer_types": r.ours.config.layer_types,
        "rope_theta": r.ours.config.attention.rope_theta,
    }
    r.maxctx = max(ctxs) + N + 16
    r.engine = DecodeEngine(r.ours, max_context=r.maxctx, prefill_chunk=2048, attention=args.attention)

    # 1. the engine against our eager path, greedy and teacher-forced (see tests/engine/test_engine_gpu.py).
    if "check" in sections:
        b.section("check_engine_vs_eager", lambda: check_engine(r))
    if "sdpa_overhead" in sections and b.cuda:
        b.section("sdpa_overhead", sdpa_overhead)
    if "eager_sdpa" in sections and b.cuda:
        b.section("eager_decode_sdpa", lambda: eager_decode_sdpa(r))
    if "prefill" in sections:
        b.section("prefill_ours", lambda: prefill_ours(r))

    # The one-graph step with the model's own modules (fuse=False): the session-1 engine, as the
    # same-run baseline of the fused step.
    if "decode_unfused" in sections:
        b.section("decode_unfused", lambda: decode_variant(r, ctxs, fuse=False))

    # The fused step without the zero rows that pad fused projections to multiples of 16 outputs
    # (align=1; 16 is the CUDA default: OLMo's GDN q|k|v|a|b|g, 17,340 outputs, ran as cuBLAS gemvx at
    # ~1.4 TB/s unpadded), up to 64k: the same-run baseline for that choice.
    if "decode_unaligned" in sections:
        b.section("decode_unaligned", lambda: decode_variant(r, ctxs[:-1], align=1))
    if "gemv" in sections and b.cuda:
        b.section("gemv_microbench", lambda: gemv_bench(r))

    # same-run baselines of this session's choices, each switched back alone: the attention layers'
    # QK-norm / RoPE / cache writes as the model's small ops (before kernels.attn_decode_prep),
    # torch's argmax + 3 ops for the greedy advance; the down projection with and without split-K
    if "decode_noprep" in sections:
        b.section("decode_noprep", lambda: decode_with(r, ctxs, attn_prep=False))
    if "decode_nogreedy" in sections:
        b.section("decode_nogreedy", lambda: decode_with(r, ctxs, greedy=False))
    if "decode_down" in sections:
        from hybrid_agent.kernels.gemv import GemvConfig

        for name, cfg in (("split2", GemvConfig(16, 256, 2, 4, 2)), ("nosplit", GemvConfig(8, 512, 1, 4, 2))):
            b.section(f"decode_down_{name}", lambda cfg=cfg: decode_with(r, ctxs, down=cfg))

    # the same engine (same buffers) with every matmul on cuBLAS: the same-run baseline of the gemv
    roles = r.gemv_roles
    if "decode_cublas" in sections:
        b.section("decode_cublas", lambda: decode_gemv(r, False, ctxs))
    if "decode" in sections:
        b.section("decode_ours", lambda: decode_gemv(r, roles[args.gemv], ctxs))
    if "decode_cublas" in sections:  # again at the first context: the run-to-run spread
        b.section("decode_cublas_again", lambda: decode_gemv(r, False, ctxs[:1]))
    if "decode" in sections and "decode_cublas" in sections:
        b.section("decode_ours_again", lambda: decode_gemv(r, roles[args.gemv], ctxs[:1]))
    # last: a launch that goes wrong on the device would end the CUDA context for every later section
    if "attn_sweep" in sections and b.cuda:
        b.section("attn_sweep", lambda: attn_sweep(r))
    if "decode_attn" in sections and b.cuda:
        for i, cfg in enumerate(r.sweep_best):
            b.section(f"decode_attn{i}", lambda cfg=cfg: decode_with(r, ctxs, attn=cfg))

    r.engine = None  # frees its buffers
    b.free()

    # 2. transformers, in the same process, on the same weights.
    if "hf" in sections:
        b.section("transformers", lambda: versus_hf(r), min_left=60)
    r.hf = None
    b.free()

    if "resume" in sections:
        b.section("resume_windowed", lambda: resume_window(r), min_left=60)
    if "resume" in sections:
        b.section("resume_full", lambda: resume_exact(r), min_left=110)
    b.free()

    if "attention" in sections:
        b.section("decode_attention_only", lambda: attention_baseline(r), min_left=15)
    b.free()

    table(b.res)
    b.save()


if __name__ == "__main__":
    main()
