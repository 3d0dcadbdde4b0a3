"""The short table bench/gpu_e2e.py prints last, from its results dict (the JSON it writes)."""

from __future__ import annotations

from typing import Any


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
