"""Mixture-of-experts kernels on the GPU (kernels/moe.py), bf16, at two real MoE layer shapes:

    python bench/gpu_moe.py --out $OUT/gpu_moe.json     # on the device, well under 2 minutes
    python bench/gpu_moe.py --smoke --out /tmp/moe.json  # tiny shapes on the CPU (Triton interpreter)
    python bench/gpu_moe.py --sections tune --out $OUT/gpu_moe_tune.json  # the config sweep alone

- qwen3.5-35b-a3b: hidden 2048, 256 experts, 8 active, expert hidden 512, SwiGLU, one gated shared
  expert of 512 (transformers' configuration_qwen3_5_moe.py defaults, Qwen/Qwen3.5-35B-A3B);
- nemotron-3-nano: hidden 2688, 128 experts, 6 active, expert hidden 1856, relu2, shared expert 3712,
  sigmoid scores with a choice bias, routed scaling 2.5, router in fp32 (NVIDIA-Nemotron-3-Nano-30B-A3B).

Decode (batch 1 and 4): `moe_gemv` (Triton) against the gathered reference (`moe_gemv_ref`, the model's
decode path before the kernel) and the whole MoE layer (router, routing, experts, shared expert) with the
kernels on and off; then the layer as the decode engine's step runs it, both ways in the same run:
`engine_old` (`DecodeEngine.moe_fused=False`: the layer's own forward with the engine's ops, ~17
launches) and `engine_fused` (model/decode/moe_step.py: four launches), with `frac_*` of the layer's
bytes (active experts, router, shared expert and its gate; the last three, read by every call of a
graph, may stay in the L2). Times are medians of CUDA-graph replays; each graph runs E / (N k) calls
whose token-slots choose disjoint experts, so every call reads its experts' weights from HBM, not from
the 50 MB L2 (the layer runs get a fresh random x per call). `active_MB` = the bytes of the chosen
experts' weights (N k distinct experts); `frac_peak` = those bytes / time / the card's HBM peak (H100
SXM 3.35e12 B/s, H200 4.8e12), `frac_copy` the same against a measured 1 GiB device copy.
Prefill (4096 tokens, router-like random choices): `moe_grouped_gemm` (Triton, a few tile configs) against
the per-expert loop (`moe_grouped_gemm_ref`), TFLOP/s of the expert matmuls. Every timed config is first
checked against an fp32 computation (relative error, asserted below 2e-2).
Tune (`--tune`, or `--sections tune` alone; bench/gpu_moe_tune.py): `moe_gemv`'s launch configs swept at
each shape and batch, every point checked against fp32 (below 2e-2, else recorded as failed and not
timed) and timed as in decode (`--tune-rep-ms` of replays a point), within `--tune-budget-s` (each
(shape, batch) a share of what is left, see `tune_section`; how far each got is recorded). Recorded:
every point, the default's and the best's time and `frac_*`, the two again with the shared expert added
(as the engine's step calls it), and the line for kernels/moe_tuned.py's table, printed to paste.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable
from functools import cache
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
if "--smoke" in sys.argv:  # the interpreter must be on before anything imports Triton
    os.environ["TRITON_INTERPRET"] = "1"

from gpu_moe_tune import LAUNCHES, UP_SHARE, sweep, table_entry
from hybrid_agent.kernels.moe import (
    MoeGemmConfig,
    MoeGemvConfig,
    SharedExpert,
    default_gemm_config,
    default_gemv_config,
    heuristic_gemv_config,
    moe_gemv,
    moe_gemv_ref,
    moe_grouped_gemm,
    moe_grouped_gemm_ref,
)
from hybrid_agent.kernels.moe_tuned import batch_bucket
from hybrid_agent.kernels.testing import rel_err

SHAPES: dict[str, dict[str, Any]] = {
    "qwen3.5-35b-a3b": {"d": 2048, "e": 256, "k": 8, "i": 512, "act": "swiglu", "shared": 512,
                        "moe": {"shared_gate": True}},
    "nemotron-3-nano": {"d": 2688, "e": 128, "k": 6, "i": 1856, "act": "relu2", "shared": 3712,
                        "moe": {"scoring": "sigmoid", "score_bias": True, "routed_scaling": 2.5,
                                "router_fp32": True}},
}  # fmt: skip
SMOKE: dict[str, dict[str, Any]] = {
    "tiny-swiglu": {
        "d": 64,
        "e": 8,
        "k": 2,
        "i": 32,
        "act": "swiglu",
        "shared": 32,
        "moe": {"shared_gate": True},
    },
    "tiny-relu2": {
        "d": 48,
        "e": 12,
        "k": 3,
        "i": 40,
        "act": "relu2",
        "shared": 32,
        "moe": {"router_fp32": True},
    },
}
HBM_PEAK = {"H100": 3.35e12, "H200": 4.8e12}  # B/s, SXM cards
G, M = MoeGemvConfig, MoeGemmConfig
GEMV_CANDIDATES = [G(16, 128, 16, 128), G(8, 256, 8, 256), G(4, 256, 4, 256), G(4, 512, 8, 512)]
GEMM_CANDIDATES = [M(64, 128, 64, 4, 3), M(128, 128, 64, 8, 3), M(64, 64, 64, 4, 4)]
PREFILL_TOKENS = 4096


@cache
def model(name: str, dev: str) -> Any:
    """A one-layer model (model/hybrid.py) whose MLP is a MoE layer (model/moe.py) of shape `name`,
    random weights (made on the device), bf16."""
    from hybrid_agent.model import HybridConfig
    from hybrid_agent.model.hybrid import HybridLM

    shape = {**SHAPES, **SMOKE}[name]
    moe = {"n_experts": shape["e"], "top_k": shape["k"], "hidden_dim": shape["i"],
           "shared_hidden_dim": shape["shared"], **shape["moe"]}  # fmt: skip
    cfg = HybridConfig(vocab_size=64, d_model=shape["d"], layer_types=["mlp"],
                       mlp={"activation": shape["act"]}, moe=moe, init_std=shape["d"] ** -0.5)  # fmt: skip
    torch.manual_seed(0)
    with torch.device(dev):
        lm = HybridLM(cfg).to(torch.bfloat16).eval()
    m = lm.layers[0].mlp
    if m.score_bias is not None:
        with torch.no_grad():
            m.score_bias.normal_(std=0.01)
    return lm


def layer(name: str, dev: str) -> Any:
    """The MoE layer of `model(name, dev)`."""
    return model(name, dev).layers[0].mlp


def layer_bytes(m: Any, n: int) -> int:
    """The bytes one decode step of the layer reads at least: n k distinct experts' weights, the router,
    the shared expert and its gate."""
    e = m.experts
    per = sum(p[0].numel() * p.element_size() for p in (e.gate_proj, e.up_proj, e.down_proj) if p is not None)
    rest = [m.router, m.shared_expert, m.shared_expert_gate]
    return n * m.top_k * per + sum(p.numel() * p.element_size() for mod in rest if mod is not None
                                   for p in mod.parameters())  # fmt: skip


def experts(m: Any) -> tuple[torch.Tensor | None, torch.Tensor, torch.Tensor]:
    e = m.experts
    return e.gate_proj, e.up_proj, e.down_proj


def exact(x: torch.Tensor, ids: torch.Tensor, w: torch.Tensor, gate, up, down) -> torch.Tensor:
    """fp32 result through only the chosen experts' weights (copies of those alone)."""
    used, inv = ids.unique(return_inverse=True)
    f = lambda t: None if t is None else t[used].float()
    return moe_gemv_ref(x.float(), inv, w.float(), f(gate), f(up), f(down))


class Timer:
    """Median ms of one call: CUDA-graph replays (bench/gpu_common.median_ms) on the device; on the CPU
    (--smoke) one wall-clock run, which only shows the script works."""

    def __init__(self, cuda: bool, rep_ms: int = 100) -> None:
        self.cuda, self.rep_ms = cuda, rep_ms

    def __call__(self, fn: Callable[[], object], *, graph: bool = True) -> float:
        if self.cuda:
            from gpu_common import median_ms

            return median_ms(fn, graph=graph, rep_ms=self.rep_ms)
        t = time.perf_counter()
        fn()
        return (time.perf_counter() - t) * 1e3


def decode_case(name: str, shape: dict[str, Any], n: int, dev: str) -> tuple:
    """The decode timings' inputs at batch n: the layer's experts (gate, up, down), the calls a graph
    makes, their x, ids (disjoint experts across the calls) and routing weights, the active experts'
    bytes a call, and the fp32 result of the first call."""
    m = layer(name, dev)
    gate, up, down = experts(m)
    E, k, D, H = shape["e"], shape["k"], shape["d"], shape["i"]
    calls = max(1, E // (n * k))
    gen = torch.Generator(device=dev).manual_seed(n)
    xs = [torch.randn(n, D, device=dev, generator=gen).bfloat16() for _ in range(calls)]
    perm = torch.randperm(E, device=dev, generator=gen)
    ids = [perm[(j * n * k + torch.arange(n * k, device=dev)) % E].view(n, k) for j in range(calls)]
    ws = [torch.rand(n, k, device=dev, generator=gen).softmax(-1).bfloat16() for _ in range(calls)]
    active = n * k * (3 if gate is not None else 2) * H * D * 2
    return (gate, up, down), calls, xs, ids, ws, active, exact(xs[0], ids[0], ws[0], gate, up, down)


def decode(name: str, shape: dict[str, Any], n: int, dev: str, timer: Timer, peaks: dict[str, float]) -> dict:
    m = layer(name, dev)
    (gate, up, down), calls, xs, ids, ws, active, want = decode_case(name, shape, n, dev)
    k, D, H = shape["k"], shape["d"], shape["i"]
    row: dict[str, Any] = {"shape": name, "tokens": n, "calls_per_graph": calls, "active_MB": active / 1e6}

    def rate(us: float) -> dict[str, float]:
        return {f"frac_{p}": active / (us * 1e-6) / v for p, v in peaks.items()}

    ref_err = rel_err(moe_gemv_ref(xs[0], ids[0], ws[0], gate, up, down), want)
    ref_us = timer(lambda: [moe_gemv_ref(xs[j], ids[j], ws[j], gate, up, down) for j in range(calls)]) * 1e3
    row["gathered_ref"] = {"us": ref_us / calls, "rel_err": ref_err, **rate(ref_us / calls)}
    cands = [default_gemv_config(n, k, D, H), *GEMV_CANDIDATES]
    row["configs"] = []
    for cfg in cands:
        err = rel_err(moe_gemv(xs[0], ids[0], ws[0], gate, up, down, config=cfg), want)
        assert err < 2e-2, f"{name} n={n} {cfg}: rel err {err}"
        us = timer(
            lambda c=cfg: [moe_gemv(xs[j], ids[j], ws[j], gate, up, down, config=c) for j in range(calls)]
        )
        us = us * 1e3 / calls
        row["configs"].append({"config": cfg.__dict__, "us": us, "rel_err": err, **rate(us)})
    row["default"], row["best"] = row["configs"][0], min(row["configs"], key=lambda r: r["us"])
    row["speedup_vs_gathered"] = row["gathered_ref"]["us"] / row["best"]["us"]
    # the whole layer, kernels on (auto: Triton on CUDA) and off (ref), fresh x each call
    lx = [t.view(1, n, D) for t in xs]
    for mode in ("auto", "ref"):
        os.environ["HYBRID_AGENT_KERNELS"] = (
            mode if dev == "cuda" else ("triton" if mode == "auto" else "ref")
        )
        us = timer(lambda: [m(t) for t in lx]) * 1e3 / calls
        row[f"layer_{mode}_us"] = us
    os.environ["HYBRID_AGENT_KERNELS"] = "auto" if dev == "cuda" else "triton"
    # the layer as the decode engine's step runs it: its own forward with the engine's ops (old), then
    # the fused step (model/decode/moe_step.py), timed in the same run on the same inputs
    from hybrid_agent.model.decode.engine import DecodeEngine

    engine = DecodeEngine(model(name, dev), max_context=4, batch_size=n, attention="kernel", use_graphs=False)
    nbytes = layer_bytes(m, n)
    row["layer_MB"] = nbytes / 1e6
    outs = {}
    for label, fused in (("engine_old", False), ("engine_fused", True)):
        engine.moe_fused = fused
        outs[label] = m(lx[0], engine.ops).float()
        us = timer(lambda: [m(t, engine.ops) for t in lx]) * 1e3 / calls
        row[label] = {"us": us, **{f"frac_{p}": nbytes / (us * 1e-6) / v for p, v in peaks.items()}}
    row["engine_fused"]["rel_err_vs_old"] = rel_err(outs["engine_fused"], outs["engine_old"])
    row["engine_speedup"] = row["engine_old"]["us"] / row["engine_fused"]["us"]
    return row


def tune(name: str, shape: dict[str, Any], n: int, dev: str, timer: Timer, peaks: dict[str, float],
         deadline: float, card: str) -> dict:  # fmt: skip
    """The `tune` section at one shape and batch: moe_gemv's launch configs swept (bench/gpu_moe_tune.py),
    each checked against fp32 and then timed as `decode` times them (on the CPU: the check's wall time);
    then the default and the best once more with the layer's shared expert added in the down launch, as
    the decode engine's step calls it (its weights, the same in every call of a graph, may stay in the
    L2)."""
    m = layer(name, dev)
    (gate, up, down), calls, xs, ids, ws, active, want = decode_case(name, shape, n, dev)
    k, D, H = shape["k"], shape["d"], shape["i"]
    cuda = dev == "cuda"
    tol = 2e-2

    def measure(cfg: MoeGemvConfig, shared: list[SharedExpert] | None = None) -> dict[str, Any]:
        s0 = shared[0] if shared else None
        t = time.perf_counter()
        got = moe_gemv(xs[0], ids[0], ws[0], gate, up, down, config=cfg, shared=s0)
        wall_us = (time.perf_counter() - t) * 1e6
        ref = want if s0 is None else moe_gemv_ref(xs[0], ids[0], ws[0], gate, up, down, shared=s0).float()
        err = rel_err(got, ref)
        if not err < tol:  # NaN too
            return {"ok": False, "rel_err": err}
        sh = shared or [None] * calls
        us = wall_us
        if cuda:
            run = lambda: [moe_gemv(xs[j], ids[j], ws[j], gate, up, down, config=cfg, shared=sh[j])
                           for j in range(calls)]  # fmt: skip
            us = timer(run) * 1e3 / calls
        fracs = {f"frac_{p}": active / (us * 1e-6) / v for p, v in peaks.items()} if s0 is None else {}
        return {"ok": True, "rel_err": err, "us": us, **fracs}

    first = [("default", default_gemv_config(n, k, D, H)), ("heuristic", heuristic_gemv_config(n, k, D, H))]
    res = sweep(measure, first, lambda c: c.clamped(D, H), deadline)
    key = (D, H, k, batch_bucket(n))
    row: dict[str, Any] = {"shape": name, "tokens": n, "key": list(key), "calls_per_graph": calls,
                           "active_MB": active / 1e6, **res}  # fmt: skip
    row["table_entry"] = table_entry(key, res, card)
    s = m.shared_expert
    if s is not None and res["best"] is not None:
        pre = [torch.cat([s.gate_proj(x), s.up_proj(x)], -1) if s.gate_proj is not None else s.up_proj(x)
               for x in xs]  # fmt: skip
        g = m.shared_expert_gate
        shared = [
            SharedExpert(p, s.down_proj.weight, None if g is None else g(x))
            for p, x in zip(pre, xs, strict=True)
        ]
        row["with_shared"] = {
            label: {"config": r["config"], **measure(MoeGemvConfig(**r["config"]), shared)}
            for label, r in (("default", res["default"]), ("best", res["best"]))
        }
    return row


def prefill(name: str, shape: dict[str, Any], T: int, dev: str, timer: Timer) -> dict:
    m = layer(name, dev)
    gate, up, down = experts(m)
    E, k, D, H = shape["e"], shape["k"], shape["d"], shape["i"]
    gen = torch.Generator(device=dev).manual_seed(T)
    x = torch.randn(T, D, device=dev, generator=gen).bfloat16()
    weights, ids = m.route(torch.randn(T, E, device=dev, generator=gen))  # router-like spread over experts
    w = weights.bfloat16()
    flops = 2 * T * k * D * H * (3 if gate is not None else 2)
    check = min(T, 512)
    want = exact(x[:check], ids[:check], w[:check], gate, up, down)
    row: dict[str, Any] = {"shape": name, "tokens": T, "expert_GFLOP": flops / 1e9}
    ref_err = rel_err(moe_grouped_gemm_ref(x[:check], ids[:check], w[:check], gate, up, down), want)
    # plain calls, as the loop reads the counts back to the host (the grouped GEMM is timed the same way)
    ref_ms = timer(lambda: moe_grouped_gemm_ref(x, ids, w, gate, up, down), graph=False)
    row["per_expert_loop"] = {"ms": ref_ms, "rel_err": ref_err, "TFLOPs": flops / (ref_ms * 1e-3) / 1e12}
    row["configs"] = []
    for cfg in [default_gemm_config(T * k, E), *GEMM_CANDIDATES]:
        if dev != "cuda":
            cfg = MoeGemmConfig(16, 16, 16)  # the interpreter: small tiles
        err = rel_err(moe_grouped_gemm(x[:check], ids[:check], w[:check], gate, up, down, config=cfg), want)
        assert err < 2e-2, f"{name} prefill {cfg}: rel err {err}"
        ms = timer(lambda c=cfg: moe_grouped_gemm(x, ids, w, gate, up, down, config=c), graph=False)
        row["configs"].append(
            {"config": cfg.__dict__, "ms": ms, "rel_err": err, "TFLOPs": flops / (ms * 1e-3) / 1e12}
        )
        if dev != "cuda":
            break
    row["default"], row["best"] = row["configs"][0], min(row["configs"], key=lambda r: r["ms"])
    row["speedup_vs_loop"] = ref_ms / row["best"]["ms"]
    return row


SECTIONS = ("decode", "prefill", "tune")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="bench/results/gpu_moe.json")
    ap.add_argument(
        "--smoke", action="store_true", help="tiny shapes on the CPU under the Triton interpreter"
    )
    ap.add_argument("--sections", default="decode,prefill", help=f"comma list of {', '.join(SECTIONS)}")
    ap.add_argument("--tune", action="store_true", help="add the tune section (moe_gemv's config sweep)")
    ap.add_argument("--batches", default="1,4", help="decode and tune batch sizes, comma list")
    ap.add_argument("--tune-budget-s", type=float, default=110.0, help="tune: stop the sweep after this")
    ap.add_argument("--tune-rep-ms", type=int, default=25, help="tune: CUDA-graph replay time per config")
    args = ap.parse_args(argv)
    args.sections = [x.strip() for x in args.sections.split(",") if x.strip()] + ["tune"] * args.tune
    bad = sorted(set(args.sections) - set(SECTIONS))
    if bad:
        ap.error(f"--sections: unknown {', '.join(bad)}; choose from {', '.join(SECTIONS)}")
    raw = args.batches
    try:
        args.batches = [int(b) for b in raw.split(",")]
    except ValueError:
        args.batches = []
    if not args.batches or min(args.batches) < 1:
        ap.error(f"--batches: a comma list of positive integers, got {raw!r}")
    if args.tune_budget_s < 0 or args.tune_rep_ms < 1:
        ap.error("--tune-budget-s must be >= 0 and --tune-rep-ms >= 1")
    return args


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    cuda = torch.cuda.is_available() and not args.smoke
    if not cuda and not args.smoke:
        sys.exit("gpu_moe: no CUDA device; run on the device, or pass --smoke for a CPU check")
    os.environ["HYBRID_AGENT_KERNELS"] = "auto" if cuda else "triton"
    with torch.no_grad():
        return run(args, cuda)


def run(args: argparse.Namespace, cuda: bool) -> dict[str, Any]:
    from gpu_common import write_json

    dev, timer = ("cuda" if cuda else "cpu"), Timer(cuda)
    info: dict[str, Any] = {"smoke": not cuda}
    peaks: dict[str, float] = {}
    if cuda:
        from gpu_common import copy_bandwidth_GBps, device_info

        info = device_info()
        info["copy_1GiB_GBps"] = copy_bandwidth_GBps()
        peaks["copy"] = info["copy_1GiB_GBps"] * 1e9 / 2  # read + write counted there; read rate here
        peak = next((v for key, v in HBM_PEAK.items() if key in info["card"]), None)
        if peak is not None:
            peaks["peak"] = peak
    shapes = SHAPES if cuda else SMOKE
    res: dict[str, Any] = {"what": __doc__.splitlines()[0], "info": info, "decode": [], "prefill": []}
    for name, shape in shapes.items():
        for n in args.batches if "decode" in args.sections else ():
            r = decode(name, shape, n, dev, timer, peaks)
            res["decode"].append(r)
            b = r["best"]
            print(f"decode  {name:16s} N={n}: moe_gemv {b['us']:7.1f} us ({r['active_MB']:.1f} MB,"
                  f" {', '.join(f'{k} {v:.2f}' for k, v in b.items() if k.startswith('frac'))})"
                  f" | gathered {r['gathered_ref']['us']:7.1f} us | layer {r['layer_auto_us']:7.1f} us"
                  f" (ref {r['layer_ref_us']:7.1f})", flush=True)  # fmt: skip
            f = r["engine_fused"]
            fr = ", ".join(f"{k} {v:.2f}" for k, v in f.items() if k.startswith("frac"))
            print(f"        engine step: old {r['engine_old']['us']:7.1f} us -> fused {f['us']:7.1f} us"
                  f" ({r['layer_MB']:.1f} MB, {fr})", flush=True)  # fmt: skip
        if "prefill" not in args.sections:
            continue
        T = PREFILL_TOKENS if cuda else 24
        r = prefill(name, shape, T, dev, timer)
        res["prefill"].append(r)
        best = r["best"]
        print(f"prefill {name:16s} T={T}: grouped {best['ms']:7.3f} ms {best['TFLOPs']:6.1f} TFLOP/s"
              f" {best['config']} | loop {r['per_expert_loop']['ms']:7.3f} ms"
              f" | x{r['speedup_vs_loop']:.2f}", flush=True)  # fmt: skip
    write_json(args.out, res)
    if "tune" in args.sections:
        card, save = info.get("card", "CPU smoke"), lambda: write_json(args.out, res)
        res["tune"] = tune_section(args, shapes, dev, Timer(cuda, args.tune_rep_ms), peaks, card, save)
    write_json(args.out, res)
    return res


def tune_section(args: argparse.Namespace, shapes: dict[str, dict[str, Any]], dev: str, timer: Timer,
                 peaks: dict[str, float], card: str, save: Callable[[], None]) -> dict[str, Any]:  # fmt: skip
    """The sweep at every shape and batch, each pair given its share of what is left of the budget (so a
    cut sweep still has every pair's default and first points): the first batch of a shape counts
    twice, as it compiles the shape's kernels (the later batches launch the same gate|up kernels);
    the results saved after each pair."""
    out: dict[str, Any] = {"budget_s": args.tune_budget_s, "rep_ms": args.tune_rep_ms, "up_share": UP_SHARE,
                           "launches": [list(t) for t in LAUNCHES], "rows": []}  # fmt: skip
    pairs = [(name, shape, n) for name, shape in shapes.items() for n in args.batches]
    t0 = time.monotonic()
    end = t0 + args.tune_budget_s
    weight = [1 + (j == 0 or pairs[j - 1][0] != name) for j, (name, _, _) in enumerate(pairs)]
    for j, (name, shape, n) in enumerate(pairs):
        deadline = time.monotonic() + max(0.0, end - time.monotonic()) * weight[j] / sum(weight[j:])
        r = tune(name, shape, n, dev, timer, peaks, deadline, card)
        out["rows"].append(r)
        b, d, st = r["best"] or {}, r["default"], r["stages"]
        fr = lambda p: ", ".join(f"{k} {v:.2f}" for k, v in p.items() if k.startswith("frac"))
        print(f"tune    {name:16s} N={n}: best {b.get('us', float('nan')):7.1f} us ({fr(b)}) | default"
              f" {d.get('us', float('nan')):7.1f} us ({fr(d)}) | up {st['up']['run']}/{st['up']['planned']}"
              f" down {st['down']['run']}/{st['down']['planned']}{'' if r['complete'] else ', budget spent'}",
              flush=True)  # fmt: skip
        print(f"        paste into kernels/moe_tuned.py GEMV_TUNED: {r['table_entry']}", flush=True)
        save()
    out["complete"] = all(r["complete"] for r in out["rows"])
    out["seconds"] = time.monotonic() - t0
    return out


if __name__ == "__main__":
    main()
