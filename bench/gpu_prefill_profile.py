"""Where prefill time goes (issue 25, target 3), batch 1, bf16, random weights at OLMo Hybrid 7B's shape:

    python3 bench/gpu_prefill_profile.py --out $OUT/gpu_prefill_profile.json      # device machine
    python3 bench/gpu_prefill_profile.py --causal both --out $OUT/gpu_prefill_causal.json
    .venv/bin/python bench/gpu_prefill_profile.py --tiny --out /tmp/pp.json       # CPU smoke run

The model is built as bench/gpu_e2e.py builds it (bench/gpu_olmo.py: transformers' default
`OlmoHybridConfig`, random init, ours reading its tensors), then for each length (`--lengths`):
1. `sweep_<T>`: tokens/s of `DecodeEngine.prefill` at each prefill chunk (`--chunks`; a warm-up call,
   then the median of `--reps`); a chunk that does not fit the card's memory is recorded with the
   reason, and chunks at or above T are run once (they are one chunk of T);
2. `profile_<T>`: one prefill at `--profile-chunk` under torch.profiler, with labels around each
   layer's mixer, MLP, norms and residual adds and around the embedding and the head
   (bench/gpu_prefill_attrib.py): device time by kernel name (top 25) and by label, each label's ops
   by class (gemm / attention / aten small ops / kernels launched from Python), and each label's limit
   (FLOPs at the card's dense bf16 peak, bytes at its HBM peak: bench/gpu_prefill_limits.py) with
   efficiency = limit / measured; then the whole prefill against the model's FLOP limit.
`--causal` picks the attention path of the prefill chunks (model/ops.py; its switch
`HYBRID_AGENT_CAUSAL_PREFILL` is set for each section): `off` the masked call (the default path, as in
earlier result files: sections `sweep_<T>`, `profile_<T>`), `on` SDPA's causal kernel without a mask
(`sweep_<T>_causal`, `profile_<T>_causal`), `both` each in turn, and `causal_vs_masked_<T>` their
ratio per chunk (tokens/s) and per label (profiled device ms). Each section records `causal_prefill`,
the switch it ran under.
`info` records the card, its peaks from the table, a measured bf16 GEMM rate and copy bandwidth.
The JSON file is rewritten after each section; the sweeps (cheap) run before the profiles.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from hybrid_agent.model.ops import CAUSAL_PREFILL_ENV, Ops

sys.path.insert(0, str(Path(__file__).resolve().parent))

from gpu_e2e_run import Bench
from gpu_olmo import adopt_weights, build_hf, hf_config
from gpu_prefill_attrib import PREFIX, attribute, busy_ms, labels
from gpu_prefill_limits import kind_costs, limits, measured_gemm_tflops, peaks, totals, versus

K = 1024
PATHS = {"on": (True, "_causal"), "off": (False, "")}  # --causal value: (switch, section key suffix)


def _ints(text: str) -> list[int]:
    """A comma list of token counts, e.g. `4096,16k`."""
    try:
        vals = [int(float(v[:-1]) * K) if v.lower().endswith("k") else int(v) for v in text.split(",") if v]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected a comma list of token counts like 4096,16k; got {text!r}"
        ) from None
    if not vals or min(vals) < 1:
        raise argparse.ArgumentTypeError(f"expected positive token counts; got {text!r}")
    return vals


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="bench/results/gpu_prefill_profile.json")
    ap.add_argument("--tiny", action="store_true", help="toy shapes (CPU smoke run)")
    ap.add_argument("--cpu", action="store_true", help="stay on the CPU even if a GPU is there")
    ap.add_argument("--budget-s", type=float, default=270.0, help="skip sections that would start later")
    ap.add_argument("--lengths", type=_ints, default=None, help="prompt lengths (default 4k,16k,64k)")
    ap.add_argument("--chunks", type=_ints, default=None, help="prefill chunks (default 2k,4k,8k,16k)")
    ap.add_argument(
        "--profile-chunk", type=_ints, default=None,
        help="the chunk the profiles run at (default 8192, the chunk of bench/gpu_e2e.py's prefill rows)",
    )  # fmt: skip
    ap.add_argument("--reps", type=int, default=2, help="timed prefills per sweep row (median)")
    ap.add_argument("--sections", default="sweep,profile", help="comma list of sweep, profile")
    ap.add_argument(
        "--causal", choices=["on", "off", "both"], default="off",
        help="prefill attention: causal kernel without a mask (on), the masked call (off), or both in turn",
    )  # fmt: skip
    return ap


@contextmanager
def causal_switch(on: bool) -> Iterator[None]:
    """The prefill's attention path for the sections inside (each engine chunk reads the switch)."""
    old = os.environ.get(CAUSAL_PREFILL_ENV)
    os.environ[CAUSAL_PREFILL_ENV] = "1" if on else "0"
    try:
        yield
    finally:
        if old is None:
            os.environ.pop(CAUSAL_PREFILL_ENV, None)
        else:
            os.environ[CAUSAL_PREFILL_ENV] = old


def under(on: bool, fn: Callable[[], Any]) -> Callable[[], Any]:
    """`fn` run under the switch, its result marked with the switch as the model's `Ops` read it."""

    def run() -> Any:
        with causal_switch(on):
            seen = Ops().causal_prefill
            out = fn()
        if isinstance(out, dict):
            out["causal_prefill"] = seen
        elif isinstance(out, list):
            out = [{**r, "causal_prefill": seen} for r in out]
        return out

    return run


def compare(res: dict[str, Any], T: int) -> dict[str, Any]:
    """The causal path against the masked one at length T: tokens/s per sweep chunk, the profiles'
    unprofiled tokens/s and device ms per label (ratio = masked / causal time: > 1, the causal one
    is faster)."""
    out: dict[str, Any] = {"sweep": [], "profile": None}
    on, off = res.get(f"sweep_{T}_causal"), res.get(f"sweep_{T}")
    if isinstance(on, list) and isinstance(off, list):
        for a, b in zip(on, off, strict=False):
            if "tok_s" in a and "tok_s" in b:
                row = {"chunk": a["chunk"], "causal_tok_s": a["tok_s"], "masked_tok_s": b["tok_s"]}
                out["sweep"].append({**row, "speedup": a["tok_s"] / b["tok_s"]})
    p, q = res.get(f"profile_{T}_causal"), res.get(f"profile_{T}")
    if isinstance(p, dict) and isinstance(q, dict) and "by_kind" in p and "by_kind" in q:
        kinds = {
            k: {"causal_ms": p["by_kind"][k]["ms"], "masked_ms": q["by_kind"][k]["ms"]}
            for k in p["by_kind"]
            if k in q["by_kind"]
        }
        for r in kinds.values():
            r["ratio"] = r["masked_ms"] / r["causal_ms"] if r["causal_ms"] else None
        out["profile"] = {
            "chunk": p["chunk"],
            "causal_tok_s": p["total"]["plain_tok_s"],
            "masked_tok_s": q["total"]["plain_tok_s"],
            "speedup": p["total"]["plain_tok_s"] / q["total"]["plain_tok_s"],
            "by_kind": kinds,
        }
    return out


def sweep(b: Bench, engine: Any, ids: torch.Tensor, chunks: list[int], reps: int) -> list[dict[str, Any]]:
    """Tokens/s of engine.prefill(ids) at each chunk."""
    T, rows, whole = ids.shape[1], [], None
    for c in chunks:
        if c >= T and whole is not None:
            rows.append({"chunk": c, "T": T, "skipped": f"one chunk of T, as chunk {whole}"})
            continue
        whole = c if c >= T else whole
        engine.prefill_chunk = c
        try:
            times = []
            for _ in range(1 + reps):  # the first call compiles the kernels for this chunk
                engine.reset()
                t = b.clock()
                engine.prefill(ids)
                times.append(b.clock() - t)
            s = sorted(times[1:])[len(times[1:]) // 2]
            rows.append({"chunk": c, "T": T, "s": s, "tok_s": T / s, "first_call_s": times[0]})
        except torch.OutOfMemoryError as exc:
            rows.append({"chunk": c, "T": T, "skipped": f"out of memory: {str(exc).splitlines()[0][:200]}"})
            engine.reset()
            b.free()
        print(f"  T={T} chunk={c}: {rows[-1]}", flush=True)
    return rows


def profile_one(b: Bench, engine: Any, ids: torch.Tensor, chunk: int, peak: dict[str, Any]) -> dict[str, Any]:
    """One profiled prefill of `ids` at `chunk`: time by kernel and by label against each label's limit."""
    from torch.profiler import ProfilerActivity, profile, record_function

    T = ids.shape[1]
    engine.prefill_chunk = chunk
    engine.reset()
    t = b.clock()
    engine.prefill(ids)  # warm (and the same call unprofiled, for the profiler's own cost)
    plain_s = b.clock() - t
    engine.reset()
    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if b.cuda else [])
    with labels(engine.model), profile(activities=acts) as prof:
        t = b.clock()
        with record_function(PREFIX + "prefill"):
            engine.prefill(ids)
        prof_s = b.clock() - t
    events = prof.events()
    res = attribute(events, device=b.cuda)
    lim = limits(kind_costs(engine.model, T, chunk), peak)
    versus(res["by_kind"], lim)
    tot = totals(lim, T, peak)
    tot["plain_s"], tot["plain_tok_s"], tot["profiled_s"] = plain_s, T / plain_s, prof_s
    tot["device_busy_ms"] = busy_ms(events)  # None on the CPU
    tot["flop_limit_share"] = tot["flop_limit_ms"] / (plain_s * 1e3)  # of the unprofiled time
    tot["roofline_share"] = tot["roofline_ms"] / (plain_s * 1e3)
    return {"T": T, "chunk": chunk, **res, "total": tot}


def table(res: dict[str, Any]) -> None:
    for key, rows in res.items():
        if key.startswith("sweep_") and isinstance(rows, list):
            cells = [
                f"{r['chunk']}:{r['tok_s'] / 1e3:.1f}k" if "tok_s" in r else f"{r['chunk']}:-" for r in rows
            ]
            print(f"{key:14s} tok/s by chunk  " + "  ".join(cells))
    for key, c in res.items():
        if key.startswith("causal_vs_masked_") and isinstance(c, dict):
            cells = [f"{r['chunk']}:{r['speedup']:.2f}x" for r in c["sweep"]]
            print(f"{key}: causal / masked tok/s by chunk  " + "  ".join(cells))
            if c["profile"]:
                mix = c["profile"]["by_kind"].get("attention.mixer")
                ratio = (
                    f", attention.mixer masked/causal ms {mix['ratio']:.2f}" if mix and mix["ratio"] else ""
                )
                print(f"  profile chunk {c['profile']['chunk']}: {c['profile']['speedup']:.2f}x{ratio}")
    for key, p in res.items():
        if not key.startswith("profile_") or not isinstance(p, dict) or "by_kind" not in p:
            continue
        tot = p["total"]
        print(
            f"\n{key} chunk {p['chunk']}: {tot['plain_tok_s'] / 1e3:.1f}k tok/s, FLOP limit "
            f"{tot['flop_limit_tok_s'] / 1e3:.1f}k (at the measured GEMM rate "
            f"{(tot['measured_gemm_limit_tok_s'] or 0) / 1e3:.1f}k), "
            f"roofline {tot['roofline_tok_s'] / 1e3:.1f}k; "
            f"kernels {p['total_ms']:.1f} ms ({p['attributed_ms']:.1f} attributed)"
        )
        print(f"  {'kind':26s} {'ms':>9s} {'share':>6s} {'limit':>8s} {'eff':>6s} bound")
        for kind, r in p["by_kind"].items():
            eff = f"{r['efficiency']:.2f}" if r.get("efficiency") is not None else "-"
            lim = f"{r['limit_ms']:.4g}" if "limit_ms" in r else "-"
            print(f"  {kind:26s} {r['ms']:9.2f} {r['share']:6.1%} {lim:>8s} {eff:>6s} {r.get('bound', '')}")


def main(argv: list[str] | None = None) -> dict[str, Any]:
    # Tests call main in-process: autograd is off only for the run, then as it was.
    with torch.no_grad():
        return _main(argv)


def _main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parser().parse_args(argv)
    b = Bench(args, what=__doc__.splitlines()[0])
    tiny = args.tiny
    lengths = args.lengths or ([96, 160] if tiny else [4 * K, 16 * K, 64 * K])
    chunks = args.chunks or ([32, 64, 128, 256] if tiny else [2 * K, 4 * K, 8 * K, 16 * K])
    pchunk = args.profile_chunk[0] if args.profile_chunk else (64 if tiny else 8 * K)
    sections = set(args.sections.split(","))
    if not sections <= {"sweep", "profile"} or args.reps < 1:
        parser().error("--sections takes sweep and/or profile; --reps must be at least 1")
    info: dict[str, Any] = {"device": str(b.dev), "dtype": str(b.dtype)}
    if b.cuda:
        from gpu_common import copy_bandwidth_GBps, device_info

        info.update(device_info())
        info["copy_1GiB_GBps"] = copy_bandwidth_GBps()
        info["gemm_8192_bf16_TFLOPs"] = measured_gemm_tflops()
    peak = peaks(info.get("card", "cpu"))
    peak["measured_gemm_TFLOPs"] = info.get("gemm_8192_bf16_TFLOPs")
    info["peaks"] = peak
    paths = ["on", "off"] if args.causal == "both" else [args.causal]
    b.res.update(
        {"info": info, "lengths": lengths, "chunks": chunks, "profile_chunk": pchunk, "causal": paths}
    )
    print(info, flush=True)

    from hybrid_agent.model.decode.engine import DecodeEngine

    model = adopt_weights(build_hf(hf_config(tiny), b.dev, b.dtype))
    b.res["model"] = {
        "params": model.num_parameters(),
        "weight_bytes": sum(p.nbytes for p in model.parameters()),
        "layer_types": model.config.layer_types,
    }
    engine = DecodeEngine(model, max_context=max(lengths) + 16, prefill_chunk=pchunk)
    gen = torch.Generator(b.dev).manual_seed(0)
    ids = {T: torch.randint(0, model.config.vocab_size, (1, T), device=b.dev, generator=gen) for T in lengths}
    b.save()
    # what a section needs at the least (s), at ~20k tok/s and ~4 s of profiler parsing per 16k tokens
    reps = 1 if tiny else args.reps
    if "sweep" in sections:
        for T in lengths:
            need = 0 if tiny else 2 + len(chunks) * (1 + reps) * T / 20e3
            for on, suffix in (PATHS[p] for p in paths):
                fn = under(on, lambda T=T: sweep(b, engine, ids[T], chunks, reps))
                b.section(f"sweep_{T}{suffix}", fn, min_left=need)
    if "profile" in sections:
        for T in lengths:
            need = 0 if tiny else 5 + 2 * T / 20e3 + 4 * T / (16 * K)
            for on, suffix in (PATHS[p] for p in paths):
                fn = under(on, lambda T=T: profile_one(b, engine, ids[T], pchunk, peak))
                b.section(f"profile_{T}{suffix}", fn, min_left=need)
    if len(paths) == 2:
        for T in lengths:
            b.res[f"causal_vs_masked_{T}"] = compare(b.res, T)
    table(b.res)
    b.save()
    return b.res


if __name__ == "__main__":
    main()
