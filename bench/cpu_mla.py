"""CPU benchmark: a Mamba-2 + MLA stack against the same stack with grouped-query attention of equal
parameter count: cache bytes per token and decode tokens/s at long contexts, in one run.

Stacks (d_model 512, fp32, batch 1, random weights, the torch reference kernels): 6 layers
`[mamba2, mamba2, X] * 2`, X one of
- `mla`: 8 heads, qk_nope 64 + qk_rope 32, v 64, kv_lora_rank 256 (DeepSeek's ratios: C = 4 dn,
  R = dn / 2; the config's derived defaults at d_model 512); caches 256 + 32 numbers per token;
- `gqa-8/8`, `gqa-12/4`, `gqa-14/2`: GQA with head_dim 64 and (query heads / kv heads) chosen so
  that every one has exactly 16 x 512 x 64 x 2 = 1,048,576 attention weights per layer, 1.6% fewer
  than MLA's 1,065,216. Which of them is "the" GQA baseline is a choice, so all three run: equal
  parameters can buy more kv heads (bigger cache) or more query heads (smaller cache).
A fifth row, `mla-decompressed` (the same MLA weights, decode forced to expand the latents to per-head
keys and values every step instead of the absorbed form), runs up to `--decompressed-up-to` tokens
of context: it shows what absorption buys.

Context: a 64k-token prefill on a shared CPU would take hours, so the state for each context is
built synthetically: the attention caches filled with random latents / keys / values of the right
shape and dtype, positions 0..ctx-1, n_tokens = ctx (decode cost does not depend on the values).
At the first context the synthetic state's bytes are checked against a real prefill of that many
tokens. Decode: one token per call, greedy, `--decode-tokens` per repeat, the stacks alternating
inside every repeat so load from other processes hits all alike; median over repeats. After each
repeat the caches are reset to the context length.

    .venv/bin/python bench/cpu_mla.py [--contexts 1024 16384 65536] [--repeats 5] [--threads 1]
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import statistics
import time
from pathlib import Path

import torch
from hybrid_agent.model import HybridConfig, HybridLM, ModelState
from hybrid_agent.model.mla import MLA
from hybrid_agent.model.state import TOKEN_AXIS

D_MODEL = 512
BASELINE = "mla"
DECOMPRESSED = "mla-decompressed"
STACKS: dict[str, tuple[str, dict[str, object]]] = {
    "mla": ("mla", {"mla": {"n_heads": 8, "qk_nope_head_dim": 64, "qk_rope_head_dim": 32,
                            "v_head_dim": 64, "kv_lora_rank": 256}}),
    "gqa-8/8": ("attention", {"attention": {"n_heads": 8, "n_kv_heads": 8, "head_dim": 64}}),
    "gqa-12/4": ("attention", {"attention": {"n_heads": 12, "n_kv_heads": 4, "head_dim": 64}}),
    "gqa-14/2": ("attention", {"attention": {"n_heads": 14, "n_kv_heads": 2, "head_dim": 64}}),
}  # fmt: skip


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def build(name: str) -> HybridLM:
    if name == DECOMPRESSED:
        model = build(BASELINE)  # same seed: the same weights
        for m in model.modules():
            if isinstance(m, MLA):
                m.absorb = False
        return model
    kind, sub = STACKS[name]
    cfg = HybridConfig.model_validate(
        {"vocab_size": 267, "d_model": D_MODEL, "layer_types": ["mamba2", "mamba2", kind] * 2, **sub}
    )
    torch.manual_seed(0)
    return HybridLM(cfg).eval()


def attention_params(model: HybridLM) -> int:
    """Weights of one attention layer's mixer (all attention layers are alike)."""
    i = next(i for i, kind in enumerate(model.config.layer_types) if kind != "mamba2")
    mixer = model.layers[i].mixer
    assert mixer is not None
    return sum(p.numel() for p in mixer.parameters())


def synthetic_state(model: HybridLM, ctx: int) -> ModelState:
    """A state that has 'seen' ctx tokens: random attention caches of the right shapes, zero recurrences."""
    state = model.new_state()
    g = torch.Generator().manual_seed(ctx)
    for (_, spec), layer in zip(state.layout, state.layers, strict=True):
        if not spec.cache:
            continue
        for n, shape in spec.cache.items():
            full = tuple(ctx if d == TOKEN_AXIS else d for d in shape)
            layer.cache[n] = torch.randn(1, *full, generator=g, dtype=model.dtype)
        layer.pos = torch.arange(ctx)
    state.n_tokens = ctx
    return state


def cache_bytes_per_token(state: ModelState) -> tuple[float, float]:
    """Bytes per token, over the whole model, of the attention caches and of their int64 positions."""
    cache = state.cache_range(0, state.n_tokens)
    pos = sum(t.nbytes for n, t in cache.items() if n.endswith(".pos"))
    return (sum(t.nbytes for t in cache.values()) - pos) / state.n_tokens, pos / state.n_tokens


def time_decode(model: HybridLM, state: ModelState, n: int) -> tuple[float, float]:
    """Decode n tokens greedily from `state`, then put its caches back to where they were.

    Returns tokens per wall second and per CPU second of this process: on a CPU shared with other
    jobs the wall time includes waiting for a core, the CPU time (one thread) does not.
    """
    saved = [(dict(ls.cache), ls.pos) for ls in state.layers]  # decode replaces, never mutates, these
    n_tokens = state.n_tokens
    token = torch.zeros(1, 1, dtype=torch.long)
    start, start_cpu = time.perf_counter(), time.process_time()
    for _ in range(n):
        token = model(token, state)[:, -1].argmax(-1, keepdim=True)  # (1, 1)
    elapsed, elapsed_cpu = time.perf_counter() - start, time.process_time() - start_cpu
    for ls, (cache, pos) in zip(state.layers, saved, strict=True):
        ls.cache, ls.pos = cache, pos
    state.n_tokens = n_tokens
    return n / elapsed, n / elapsed_cpu


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--contexts", type=int, nargs="+", default=[1024, 16384, 65536])
    ap.add_argument("--decode-tokens", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument(
        "--decompressed-up-to", type=int, default=16384, help="longest context for mla-decompressed"
    )
    ap.add_argument("--threads", type=int, default=1, help="torch threads (1 is fastest on a shared CPU)")
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "cpu_mla.json")
    args = ap.parse_args()

    torch.set_num_threads(args.threads)
    all_models = {name: build(name) for name in (*STACKS, DECOMPRESSED)}
    load_before = os.getloadavg()

    # The synthetic state must be exactly what a real prefill leaves (same tensors, same bytes).
    check_ctx = args.contexts[0]
    ids = torch.randint(0, 267, (1, check_ctx), generator=torch.Generator().manual_seed(0))
    for name, model in all_models.items():
        real = model.new_state()
        model(ids, real)
        fake = synthetic_state(model, check_ctx)
        assert real.nbytes == fake.nbytes, (name, real.nbytes, fake.nbytes)
        assert {k: v.shape for k, v in real.to_tensors().items()} == {
            k: v.shape for k, v in fake.to_tensors().items()
        }

    rows: list[dict[str, object]] = []
    for ctx in args.contexts:
        models = {n: m for n, m in all_models.items() if n != DECOMPRESSED or ctx <= args.decompressed_up_to}
        states = {name: synthetic_state(model, ctx) for name, model in models.items()}
        for name, model in models.items():  # warm-up
            time_decode(model, states[name], 2)
        decode: dict[str, list[tuple[float, float]]] = {n: [] for n in models}
        for _ in range(args.repeats):
            for name, model in models.items():
                decode[name].append(time_decode(model, states[name], args.decode_tokens))
        for name, model in models.items():
            cache_bytes, pos_bytes = cache_bytes_per_token(states[name])
            rows.append(
                {
                    "stack": name,
                    "context": ctx,
                    "params": model.num_parameters(),
                    "attention_params_per_layer": attention_params(model),
                    "cache_bytes_per_token": cache_bytes,
                    "pos_bytes_per_token": pos_bytes,
                    "state_bytes": states[name].nbytes,
                    "decode_tok_s": statistics.median(w for w, _ in decode[name]),
                    "decode_tok_per_cpu_s": statistics.median(c for _, c in decode[name]),
                    "decode_repeats_wall_cpu": decode[name],
                }
            )
        del states

    by = {(r["stack"], r["context"]): r for r in rows}
    for r in rows:
        base = by[(BASELINE, r["context"])]
        r["cache_bytes_vs_mla"] = float(r["cache_bytes_per_token"]) / float(base["cache_bytes_per_token"])  # type: ignore[arg-type]
        for key in ("decode_tok_s", "decode_tok_per_cpu_s"):
            r[f"mla_speedup_{key}"] = float(base[key]) / float(r[key])  # type: ignore[arg-type]

    load = load_before[0]
    print(f"CPU: {cpu_name()}, torch {torch.__version__}, {args.threads} thread(s), load avg {load:.1f}")
    cols = ("context", "stack", "params", "attn/layer", "cache B/tok", "x MLA", "state MB", "tok/s",
            "tok/cpu-s", "MLA speedup")  # fmt: skip
    widths = (7, 16, 7, 10, 11, 5, 8, 6, 9, 11)
    header = " | ".join(f"{c:>{w}}" for c, w in zip(cols, widths, strict=True))
    print(header + "\n" + "-" * len(header))
    for r in rows:
        cells = (
            r["context"],
            r["stack"],
            f"{float(r['params']) / 1e6:.2f}M",  # type: ignore[arg-type]
            r["attention_params_per_layer"],
            f"{float(r['cache_bytes_per_token']):.0f}",  # type: ignore[arg-type]
            f"{float(r['cache_bytes_vs_mla']):.2f}",  # type: ignore[arg-type]
            f"{float(r['state_bytes']) / 1e6:.1f}",  # type: ignore[arg-type]
            f"{float(r['decode_tok_s']):.2f}",  # type: ignore[arg-type]
            f"{float(r['decode_tok_per_cpu_s']):.2f}",  # type: ignore[arg-type]
            f"x{float(r['mla_speedup_decode_tok_per_cpu_s']):.2f}",  # type: ignore[arg-type]
        )
        print(" | ".join(f"{c!s:>{w}}" for c, w in zip(cells, widths, strict=True)))
    print("cache B/tok: attention caches only (+8 B/token/layer of int64 positions for every stack);")
    print("MLA speedup: MLA's decode tokens per CPU-second over this stack's (median of repeats)")

    args.out.parent.mkdir(parents=True, exist_ok=True)
    result = {
        "benchmark": "cpu_mla",
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "device": {"cpu": cpu_name(), "cores": os.cpu_count(), "threads": args.threads},
        "load_average_at_start": load_before,
        "load_average_at_end": os.getloadavg(),
        "versions": {"python": platform.python_version(), "torch": torch.__version__},
        "settings": {
            "dtype": "float32",
            "batch": 1,
            "layer_types": "[mamba2, mamba2, X] * 2",
            "decode_tokens": args.decode_tokens,
            "repeats": args.repeats,
            "state": "synthetic random caches of the context length (checked against a real prefill "
            f"of {check_ctx} tokens: same tensor shapes and bytes)",
        },
        "stacks": {**{name: STACKS[name][1] for name in STACKS}, DECOMPRESSED: "mla with absorb=False"},
        "baseline": BASELINE,
        "rows": rows,
    }
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
