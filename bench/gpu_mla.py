"""GPU benchmark (#10): a Mamba-2 + MLA stack against the same stack with grouped-query attention of
equal parameter count, batch 1, bf16, random weights, through our DecodeEngine (one CUDA graph a token):

    python3 bench/gpu_mla.py --out $OUT/gpu_mla.json              # on the device machine (H100)
    .venv/bin/python bench/gpu_mla.py --tiny --out /tmp/mla.json   # CPU smoke run at toy shapes

Stacks: d_model 2048, 12 layers `[mamba2, mamba2, X] * 4`, SwiGLU MLPs, vocab 32000 (tied), X one of
- `mla`: 16 heads, DeepSeek-V3's per-head sizes (qk_nope 128 + qk_rope 64, v 128, kv_lora_rank 512):
  13,763,072 attention weights a layer; caches 512 + 64 numbers a token and layer;
- `gqa-24/2` and `gqa-13/13`: head_dim 128, 13,631,488 attention weights a layer (1.0% fewer than
  MLA). Equal parameters buy either more query heads (24/2: a cache slightly smaller than MLA's)
  or more KV heads (13/13: 5.8x MLA's cache), so both run.
For each stack and context (1k / 16k / 64k): cache bytes per token (asserted: (kv_lora_rank +
qk_rope_head_dim) x 2 bytes per MLA layer, 2 x Hkv x head_dim x 2 per GQA layer), decode tokens/s
through the engine (graphed, fused; the caches and recurrent states filled with random values of the
right shape: decode cost does not depend on them), the eager `model(token, state)` path for
reference, a teacher-forced check of the engine against that eager path (64 steps after a 256-token
prompt), and the floor (every weight, the cache and the recurrent states read, the recurrent states
written, over the measured copy bandwidth). Stacks alternate inside each repeat; medians of 3.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from gpu_common import fill_synthetic
from hybrid_agent.model import HybridConfig, HybridLM
from hybrid_agent.model.decode.engine import DecodeEngine

MLA = {"n_heads": 16, "kv_lora_rank": 512, "qk_rope_head_dim": 64, "qk_nope_head_dim": 128, "v_head_dim": 128}
STACKS: dict[str, tuple[str, dict[str, Any]]] = {
    "mla": ("mla", {"mla": MLA}),
    "gqa-24/2": ("attention", {"attention": {"n_heads": 24, "n_kv_heads": 2, "head_dim": 128}}),
    "gqa-13/13": ("attention", {"attention": {"n_heads": 13, "n_kv_heads": 13, "head_dim": 128}}),
}
TINY = {"mla": {"n_heads": 4, "kv_lora_rank": 32, "qk_rope_head_dim": 8, "qk_nope_head_dim": 16,
                "v_head_dim": 16},
        "attention": {"n_heads": 6, "n_kv_heads": 2, "head_dim": 16}}  # fmt: skip


def build(name: str, tiny: bool, device: torch.device, dtype: torch.dtype) -> HybridLM:
    kind, sub = STACKS[name]
    if tiny:
        sub = {kind if kind == "mla" else "attention": TINY["mla" if kind == "mla" else "attention"]}
    cfg = HybridConfig.model_validate(
        {"vocab_size": 512 if tiny else 32000, "d_model": 64 if tiny else 2048,
         "layer_types": ["mamba2", "mamba2", kind] * (2 if tiny else 4), **sub}
    )  # fmt: skip
    torch.manual_seed(0)
    with torch.device(device):
        model = HybridLM(cfg)
    rope = {n: b for n, b in model.named_buffers() if n.endswith("inv_freq")}
    model = model.to(dtype).eval()
    for name, buf in rope.items():  # RoPE frequencies stay fp32 (bf16 positions would be wrong past 256)
        owner = model.get_submodule(name.rsplit(".", 1)[0])
        owner.register_buffer("inv_freq", buf, persistent=False)
    return model


def attention_params(model: HybridLM) -> int:
    block = next(b for b in model.layers if b.kind in ("mla", "attention"))
    return sum(p.numel() for p in block.mixer.parameters())


def cache_bytes_per_token(eng: DecodeEngine) -> int:
    """From the engine's state: bytes of every attention cache tensor over the tokens it holds."""
    n = eng.n_tokens
    total = sum(t.nbytes for ls in eng.state.layers for t in ls.cache.values())
    assert total % n == 0
    return total // n


def expected_cache_bytes(model: HybridLM) -> int:
    cfg, item = model.config, model.dtype.itemsize
    per = 0
    for kind in cfg.layer_types:
        if kind == "mla":
            per += (cfg.mla.kv_lora_rank + cfg.mla.qk_rope_head_dim) * item  # type: ignore[operator]
        elif kind == "attention":
            per += 2 * cfg.attention.n_kv_heads * cfg.attention.head_dim * item  # type: ignore[operator]
    return per


def check_vs_eager(m: HybridLM, eng: DecodeEngine, gen: torch.Generator, steps: int) -> dict[str, Any]:
    """Teacher forcing on a real 256-token prompt: the engine's logits against model(token, state) at
    each step (largest difference relative to the largest logit), and whether the argmax agrees."""
    from hybrid_agent.model.decode.generate import prefill

    prompt = torch.randint(0, m.config.vocab_size, (1, 256), device=m.device, generator=gen)
    state = m.new_state()
    want = [prefill(m, prompt, state)[0].float()]
    toks = []
    for _ in range(steps):
        toks.append(int(want[-1].argmax()))
        want.append(m(torch.tensor([[toks[-1]]], device=m.device), state)[0, -1].float())
    eng.reset()
    got = [eng.prefill(prompt)[0].float().clone()] + [eng.step(t)[0].float().clone() for t in toks]
    rel = [float((g - w).abs().max() / w.abs().max()) for g, w in zip(got, want, strict=True)]
    same = sum(int(g.argmax() == w.argmax()) for g, w in zip(got, want, strict=True))
    eng.reset()
    return {"steps": steps + 1, "max_rel_logit_diff": max(rel), "argmax_agree": same}


def floor_bytes(model: HybridLM, eng: DecodeEngine, ctx: int) -> int:
    weights = sum(p.nbytes for p in model.parameters())  # tied embeddings: the head reads the table
    if model.lm_head is not None:
        weights -= model.embed_tokens.weight.nbytes  # only one row of the table is read
    rec = sum(t.nbytes for ls in eng.state.layers for t in ls.recurrent.values())
    return weights + ctx * expected_cache_bytes(model) + 2 * rec


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="bench/results/gpu_mla.json")
    ap.add_argument("--tiny", action="store_true")
    ap.add_argument("--tokens", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    cuda = torch.cuda.is_available() and not args.tiny
    dev = torch.device("cuda" if cuda else "cpu")
    dtype = torch.bfloat16 if cuda else torch.float32
    K = 1024
    ctxs = [32, 64] if args.tiny else [1 * K, 16 * K, 64 * K]
    N = 4 if args.tiny else args.tokens
    res: dict[str, Any] = {"what": __doc__.splitlines()[0], "tiny": args.tiny}
    if cuda:
        from gpu_common import copy_bandwidth_GBps, device_info

        res["info"] = device_info()
        res["info"]["copy_1GiB_GBps"] = copy_bandwidth_GBps()
    copy_bps = res.get("info", {}).get("copy_1GiB_GBps", 10.0) * 1e9
    gen = torch.Generator(dev).manual_seed(0)

    def sync() -> None:
        if cuda:
            torch.cuda.synchronize()

    models, engines = {}, {}
    res["stacks"] = {}
    for name in STACKS:
        models[name] = m = build(name, args.tiny, dev, dtype)
        engines[name] = eng = DecodeEngine(m, max_context=max(ctxs) + 2 * N + 400)
        check = check_vs_eager(m, eng, gen, steps=8 if args.tiny else 64)
        fill_synthetic(eng, gen)
        eng.set_length(ctxs[0])
        got, want = cache_bytes_per_token(eng), expected_cache_bytes(m)
        assert got == want, f"{name}: cache {got} B/token, expected {want}"
        res["stacks"][name] = {
            "params": m.num_parameters(), "attention_params_per_layer": attention_params(m),
            "cache_bytes_per_token": got, "graphed": eng.graphed, "fused": eng.fused,
            "layer_types": m.config.layer_types, "check_vs_eager": check,
        }  # fmt: skip
    a_mla = res["stacks"]["mla"]["attention_params_per_layer"]
    for name in STACKS:
        ratio = res["stacks"][name]["attention_params_per_layer"] / a_mla
        assert args.tiny or abs(ratio - 1) < 0.02, f"{name}: attention weights {ratio:.3f}x MLA's, not equal"
    print(res["stacks"], flush=True)

    times: dict[tuple[str, int], list[float]] = {}
    eager: dict[tuple[str, int], float] = {}
    for rep in range(args.repeats):
        for ctx in ctxs:
            for name, eng in engines.items():
                eng.set_length(ctx)
                eng.generate_greedy(N if rep == 0 else 4, sync_every=N)  # capture (first time), warm up
                eng.set_length(ctx)
                sync()
                t = time.perf_counter()
                eng.generate_greedy(N, sync_every=N)
                sync()
                times.setdefault((name, ctx), []).append((time.perf_counter() - t) / N)
                if rep == 0:  # the eager model on the engine's state (its own T == 1 path), once
                    m, n_eager = models[name], 4 if args.tiny else 8
                    eng.set_length(ctx)
                    tok = torch.zeros(1, 1, dtype=torch.long, device=dev)
                    m(tok, eng.state)  # warm-up
                    sync()
                    t = time.perf_counter()
                    for _ in range(n_eager):
                        m(tok, eng.state)
                    sync()
                    eager[(name, ctx)] = (time.perf_counter() - t) / n_eager
                    eng.set_length(ctx)
    rows = []
    for ctx in ctxs:
        base = statistics.median(times[("mla", ctx)])
        for name in STACKS:
            ms = statistics.median(times[(name, ctx)])
            fb = floor_bytes(models[name], engines[name], ctx)
            rows.append({
                "ctx": ctx, "stack": name, "ms": ms * 1e3, "tok_s": 1 / ms,
                "ms_all": [x * 1e3 for x in times[(name, ctx)]], "eager_tok_s": 1 / eager[(name, ctx)],
                "floor_tok_s": copy_bps / fb, "vs_floor": (fb / copy_bps) / ms,
                "cache_MB": ctx * res["stacks"][name]["cache_bytes_per_token"] / 1e6,
                "mla_speed_vs_this": (1 / base) / (1 / ms),
            })  # fmt: skip
    res["decode"] = rows
    from gpu_common import write_json

    write_json(args.out, res)
    print(f"\ncard: {res.get('info', {}).get('card', dev)}")
    print("ctx     stack       cache B/tok  cache MB  tok/s   eager tok/s  floor tok/s  %floor  MLA/this")
    for r in rows:
        print(f"{r['ctx']:<7} {r['stack']:<10} {res['stacks'][r['stack']]['cache_bytes_per_token']:>12} "
              f"{r['cache_MB']:>9.1f} {r['tok_s']:>7.1f} {r['eager_tok_s']:>12.1f} {r['floor_tok_s']:>12.1f} "
              f"{100 * r['vs_floor']:>6.0f}% {r['mla_speed_vs_this']:>8.2f}")  # fmt: skip


if __name__ == "__main__":
    main()
