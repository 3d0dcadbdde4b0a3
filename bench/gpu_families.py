"""Decode and prefill speed on the new families' shapes (issue #20), batch 1, bf16, random weights:

    python bench/gpu_families.py --out F.json                   # on the device machine (H100), ~6 min
    python bench/gpu_families.py --smoke --out /tmp/f.json      # CPU smoke run at toy shapes, seconds

Shapes (`--shapes`): "dense", Qwen3.5-9B (transformers' `Qwen3_5TextConfig` defaults: hidden 4096, 32
layers, 3 Gated DeltaNet : 1 gated attention, 16 q / 4 kv heads of 256 with a quarter rotated, GDN 16 key
/ 32 value heads of 128, MLP 12288, vocab 248320), and "moe", Qwen3.5-35B-A3B (`Qwen3_5MoeTextConfig`:
hidden 2048, 40 layers, 256 experts of 512, top 8, a shared expert of 512). For each shape, one process
builds transformers' model (random init) and ours from its tensors through the qwen3_5 adapter
(bench/gpu_families_models.py; the weights shared, so both fit the card), then:
1. check: ours against transformers on a short prompt (last-position logits, greedy tokens);
2. decode tok/s at each context (`--contexts`, default 1k, 16k, 64k, 128k) through our DecodeEngine (one
   CUDA graph a token; the context synthetic: random K/V and recurrent states, decode cost does not
   depend on the values) against the floor: the bytes a step must move (every weight but the embedding
   table, for the MoE only the top-k experts of each layer, the K/V cache at that context, the recurrent
   states read and written) over the copy bandwidth measured in the same run; same-run baselines on the
   same engine: the attention kernel's launch with 64 splits (kernels/attention_decode.py `config_for`
   gives few KV heads more), and every matmul on cuBLAS instead of kernels.gemv;
3. prefill tok/s at `--prefill` tokens (16k) through our engine;
4. transformers in the same run (with fla's kernels where fla is installed: `fla` in the JSON says):
   prefill at the same length (the second call: the first autotunes fla), then decode per context as
   its forward with its cache, token by token (what `generate` runs a step), after a 1k prefill whose
   attention K/V are grown to the context with random values (prefilling 128k through transformers
   would take minutes); also `generate` itself for the same tokens. Contexts where transformers runs out
   of memory or past the time budget are recorded as such.
Results go to one JSON file, rewritten after each section, a table printed last.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from gpu_common import copy_bandwidth_GBps, device_info, fill_synthetic, print_table
from gpu_e2e_probes import extend_hf_cache, hf_call, rel
from gpu_e2e_run import Bench
from gpu_families_models import NAMES, adopt_weights, build_hf, build_ours, describe, floor_bytes, hf_config
from hybrid_agent.kernels.attention_decode import DecodeConfig
from hybrid_agent.model.decode.engine import DecodeEngine

SHAPES = ("dense", "moe")


def parse_contexts(text: str) -> list[int]:
    """'1k,16k,128k' or '1024,4096' -> token counts."""
    out = []
    for part in text.split(","):
        part = part.strip().lower()
        if not part:
            continue
        mult = 1024 if part.endswith("k") else 1
        try:
            n = int(part[:-1] if part.endswith("k") else part) * mult
        except ValueError:
            msg = f"--contexts: {part!r} is not a token count like 16k or 4096"
            raise argparse.ArgumentTypeError(msg) from None
        if n < 2:
            raise argparse.ArgumentTypeError(f"--contexts: {part!r} must be at least 2 tokens")
        out.append(n)
    if not out:
        raise argparse.ArgumentTypeError("--contexts: give at least one context, e.g. 1k,16k")
    return sorted(set(out))


def parse_shapes(text: str) -> list[str]:
    got = [s.strip() for s in text.split(",") if s.strip()]
    bad = [s for s in got if s not in SHAPES]
    if bad or not got:
        raise argparse.ArgumentTypeError(f"--shapes: pick from {', '.join(SHAPES)}; got {text!r}")
    return got


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", required=True, help="the JSON file to write")
    p.add_argument("--shapes", type=parse_shapes, default=list(SHAPES), help="dense,moe (default both)")
    p.add_argument("--contexts", type=parse_contexts, default=None, help="default 1k,16k,64k,128k")
    p.add_argument("--prefill", type=int, default=None, help="prefill length (default 16384)")
    p.add_argument("--steps", type=int, default=None, help="decode tokens timed per context (default 64)")
    p.add_argument("--hf-steps", type=int, default=None, help="transformers decode tokens (default 8)")
    p.add_argument("--no-hf", action="store_true", help="skip transformers")
    p.add_argument(
        "--gemv-sweep", action="store_true", help="also tune kernels.gemv at these shapes (~1 min)"
    )
    p.add_argument("--smoke", action="store_true", help="toy shapes on the CPU (checks the script runs)")
    p.add_argument("--budget-s", type=float, default=None, help="wall-clock budget (default 360, smoke 60)")
    return p


class Shape:
    """One shape's run: the Bench (time budget, JSON), transformers' model and ours."""

    def __init__(self, b: Bench, args: argparse.Namespace, shape: str, copy_bps: float) -> None:
        self.b, self.args, self.shape, self.copy_bps = b, args, shape, copy_bps
        self.gen = torch.Generator(b.dev).manual_seed(0)
        self.hf: Any = None
        self.why_no_hf = "--no-hf" if args.no_hf else ""
        if not args.no_hf:
            try:
                self.hf = build_hf(hf_config(shape, args.tiny), b.dev, b.dtype)
            except ImportError as exc:  # a transformers without Qwen3.5: ours alone
                self.why_no_hf = f"transformers has no Qwen3.5 here: {exc}"[:300]
        self.ours = (
            adopt_weights(self.hf) if self.hf is not None else build_ours(shape, args.tiny, b.dev, b.dtype)
        )
        self.engine: DecodeEngine | None = None
        self.tuned_roles: list[str] = []
        self.vocab = self.ours.config.vocab_size

    def ids(self, n: int) -> torch.Tensor:
        return torch.randint(0, self.vocab, (1, n), device=self.b.dev, generator=self.gen)

    def check(self) -> dict[str, Any]:
        """Ours (engine) against transformers on one prompt: the logits and the greedy tokens."""
        T, n = (256, 16) if not self.args.tiny else (12, 4)
        if self.hf is None:
            return {"skipped": self.why_no_hf}
        eng = DecodeEngine(self.ours, max_context=T + n + 8)
        prompt = self.ids(T)
        with torch.inference_mode():
            ref, cache = hf_call(self.hf, prompt, None)
            mine = eng.prefill(prompt).clone()
            want, tok = [], ref.argmax(-1, keepdim=True)
            for _ in range(n):
                want.append(int(tok))
                logits, cache = hf_call(self.hf, tok, cache)
                tok = logits.argmax(-1, keepdim=True)
            got = eng.generate_greedy(n, sync_every=n)
        same = next((i for i, (x, y) in enumerate(zip(got, want, strict=True)) if x != y), n)
        return {"logits_rel_diff": rel(mine, ref), "greedy_tokens": n, "greedy_identical_prefix": same,
                "graphed": eng.graphed, "fused": eng.fused, "gemv_roles": sorted(eng.gemv_roles)}  # fmt: skip

    def decode_ours(self, eng: DecodeEngine) -> list[dict[str, Any]]:
        b, N = self.b, self.args.steps
        fill_synthetic(eng, self.gen)
        rows = []
        for ctx in self.args.contexts:
            eng.set_length(ctx)
            eng.generate_greedy(4, sync_every=4)  # the graph's capture (first time), warm-up
            eng.set_length(ctx)
            t = b.clock()
            eng.generate_greedy(N, sync_every=N)
            dt = (b.clock() - t) / N
            fb = floor_bytes(self.ours, ctx)
            floor_ms = fb["total"] / self.copy_bps * 1e3
            rows.append({"ctx": ctx, "ms": dt * 1e3, "tok_s": 1 / dt, "floor_ms": floor_ms,
                         "floor_tok_s": 1e3 / floor_ms, "vs_floor": floor_ms / (dt * 1e3),
                         "weights_GB": fb["weights"] / 1e9, "cache_GB": fb["cache"] / 1e9,
                         "recurrent_GB": fb["recurrent"] / 1e9, "idle_experts_GB": fb["idle_experts"] / 1e9,
                         "graphed": eng.graphed})  # fmt: skip
            print(rows[-1], flush=True)
        return rows

    def gemv_sweep(self) -> dict[str, Any]:
        """bench/gpu_gemv.py's sweep at this engine's matmul shapes: the best launch of each goes into the
        engine's gemv_cfg, the roles where it beats cuBLAS into `tuned_roles`."""
        from gpu_gemv import engine_shapes, sweep

        assert self.engine is not None
        res = sweep(engine_shapes(self.engine), install=self.engine.gemv_cfg)
        self.tuned_roles = res["faster_roles"]
        return {"shapes": res["shapes"], "faster_roles": res["faster_roles"]}

    def decode_with(self, *, attn_config: DecodeConfig | None = None, gemv: Any = None) -> Any:
        """decode_ours on the same engine with the attention launch or the matmul choice switched."""
        eng = self.engine
        assert eng is not None
        eng.attn_config = attn_config
        eng.set_gemv(gemv)
        try:
            rows = self.decode_ours(eng)
        finally:  # each setter drops the captured graph: the next step captures the defaults again
            eng.attn_config = None
            eng.set_gemv(None)
        for row in rows:
            row.update(
                attn_config=str(attn_config), gemv_roles=sorted(eng.gemv_roles) if gemv is None else gemv
            )
        return rows

    def prefill_ours(self, eng: DecodeEngine) -> dict[str, Any]:
        T = self.args.prefill
        eng.prefill_chunk = 8192 if not self.args.tiny else 16
        eng.reset()
        eng.prefill(self.ids(T))  # compiles and autotunes the chunked kernels at these chunk shapes
        eng.reset()
        ids = self.ids(T)
        t = self.b.clock()
        eng.prefill(ids)
        dt = self.b.clock() - t
        return {"T": T, "s": dt, "tok_s": T / dt, "chunk": eng.prefill_chunk}

    def ours_sections(self) -> None:
        b, name = self.b, self.shape
        b.section(f"{name}.check", self.check)
        size = max(self.args.contexts) + self.args.steps + 16
        self.engine = DecodeEngine(self.ours, max_context=max(size, self.args.prefill + 8))
        b.section(f"{name}.decode_ours", lambda: self.decode_ours(self.engine))
        # same-run baselines of two launch choices, on the same engine (graphs recaptured): the attention
        # kernel with 64 splits (its launch before few-KV-head shapes got more), every matmul on cuBLAS
        b.section(f"{name}.decode_nsplit64", lambda: self.decode_with(attn_config=DecodeConfig(nsplit=64)))
        b.section(f"{name}.decode_cublas", lambda: self.decode_with(gemv=False))
        # with --gemv-sweep: kernels.gemv's launches tuned at this shape's matmuls, then decode again
        if self.args.gemv_sweep and b.cuda:
            b.section(f"{name}.gemv_sweep", self.gemv_sweep)
            b.section(f"{name}.decode_gemv_tuned", lambda: self.decode_with(gemv=self.tuned_roles))
        b.section(f"{name}.prefill_ours", lambda: self.prefill_ours(self.engine))
        self.engine = None  # frees its buffers before transformers' caches need the room
        if self.b.cuda:
            b.free()

    def prefill_hf(self) -> dict[str, Any]:
        T = self.args.prefill
        with torch.inference_mode():
            for _ in range(2):  # a new length autotunes fla's kernels: time the second call
                ids = self.ids(T)
                t = self.b.clock()
                hf_call(self.hf, ids, None)
                dt = self.b.clock() - t
        return {"T": T, "s": dt, "tok_s": T / dt}

    def decode_hf(self) -> list[dict[str, Any]]:
        b, n = self.b, self.args.hf_steps
        base = min(self.args.contexts[0], 1024 if not self.args.tiny else 8)
        rows: list[dict[str, Any]] = []
        for ctx in self.args.contexts:
            if b.left() < (60 if not self.args.tiny else 0):
                rows.append({"ctx": ctx, "skipped": f"time budget ({b.left():.0f} s left)"})
                continue
            row: dict[str, Any] = {"ctx": ctx}
            logits = cache = None
            try:
                with torch.inference_mode():
                    prompt = self.ids(base)
                    logits, cache = hf_call(self.hf, prompt, None)
                    grown = grow_hf_cache(cache, ctx, self.gen) if ctx > base else 0
                    tok = logits.argmax(-1, keepdim=True)
                    for _ in range(2):  # warm-up at this cache length
                        logits, cache = hf_call(self.hf, tok, cache)
                        tok = logits.argmax(-1, keepdim=True)
                    t = b.clock()
                    for _ in range(n):
                        logits, cache = hf_call(self.hf, tok, cache)
                        tok = logits.argmax(-1, keepdim=True)
                    dt = (b.clock() - t) / n
                how = f", K/V of {grown} layers grown to {ctx} with random values" if grown else ""
                row.update(ms=dt * 1e3, tok_s=1 / dt, cache=f"{base} tokens prefilled{how}")
                row["generate_tok_s"] = self._generate(cache, ctx + n + 2, n)
            except torch.OutOfMemoryError as exc:
                row["oom"] = str(exc)[:300]
            except Exception as exc:  # a cache class we cannot grow, or another failure: say so, go on
                row["error"] = repr(exc)[:300]
            logits = cache = None
            if b.cuda:
                b.free()
            rows.append(row)
            print(row, flush=True)
        return rows

    def _generate(self, cache: Any, length: int, n: int) -> float | str:
        """transformers' `generate` (greedy, exactly n new tokens) continuing from `cache` (length
        tokens seen): tok/s, or the error it raised."""
        try:
            ids = self.ids(length + 1)
            with torch.inference_mode():
                kw = {
                    "max_new_tokens": n,
                    "min_new_tokens": n,
                    "do_sample": False,
                    "pad_token_id": 0,
                    cache_keyword(self.hf): cache,
                }
                self.hf.generate(input_ids=ids, **kw)
                t = self.b.clock()  # the warm call above grew the cache by n: time a second one
                self.hf.generate(input_ids=self.ids(length + n + 1), **kw)
                return n / (self.b.clock() - t)
        except Exception as exc:
            return f"error: {exc!r}"[:300]

    def hf_sections(self) -> None:
        b, name = self.b, self.shape
        if self.hf is None:
            b.res[f"{name}.transformers"] = {"skipped": self.why_no_hf}
            return
        b.section(f"{name}.prefill_hf", self.prefill_hf, min_left=60 if not self.args.tiny else 0)
        b.section(f"{name}.decode_hf", self.decode_hf)


def grow_hf_cache(cache: Any, ctx: int, gen: torch.Generator) -> int:
    """transformers' cache as if `ctx` tokens had been seen: the attention layers' K/V grown with random
    values (bench/gpu_e2e_probes.py), the Gated DeltaNet layers' token counts (their states have no
    token axis) set to `ctx`, so the next step's positions are the context's. Returns the layers grown."""
    for layer in getattr(cache, "layers", []):
        count = getattr(layer, "cumulative_length_linear", None)
        if isinstance(count, torch.Tensor):
            count.fill_(ctx)
    return extend_hf_cache(cache, ctx, gen)


def cache_keyword(hf: Any) -> str:
    """The cache's keyword: `cache` in newer transformers 5.x (`past_key_values` deprecated there)."""
    import inspect

    return "cache" if "cache" in inspect.signature(hf.forward).parameters else "past_key_values"


def fla_available() -> bool:
    try:
        import fla  # noqa: F401
    except Exception:
        return False
    return True


def table(res: dict[str, Any], shapes: list[str]) -> None:
    rows = []
    for s in shapes:

        def by_ctx(section: str, s: str = s) -> dict[int, dict[str, Any]]:
            got = res.get(f"{s}.{section}")
            return (
                {r["ctx"]: r for r in got if isinstance(r, dict) and "ctx" in r}
                if isinstance(got, list)
                else {}
            )

        hf, split64, cublas = by_ctx("decode_hf"), by_ctx("decode_nsplit64"), by_ctx("decode_cublas")
        for ctx, r in by_ctx("decode_ours").items():
            rows.append({"shape": s, "ctx": ctx, "tok_s": r["tok_s"], "floor_tok_s": r["floor_tok_s"],
                         "vs_floor": r["vs_floor"], "nsplit64": split64.get(ctx, {}).get("tok_s"),
                         "cublas": cublas.get(ctx, {}).get("tok_s"), "hf_tok_s": hf.get(ctx, {}).get("tok_s"),
                         "hf_generate": hf.get(ctx, {}).get("generate_tok_s")})  # fmt: skip
        po, ph = res.get(f"{s}.prefill_ours") or {}, res.get(f"{s}.prefill_hf") or {}
        rows.append({"shape": s, "ctx": f"prefill {po.get('T')}", "tok_s": po.get("tok_s"),
                     "hf_tok_s": ph.get("tok_s")})  # fmt: skip
    cols = [
        "shape",
        "ctx",
        "tok_s",
        "floor_tok_s",
        "vs_floor",
        "nsplit64",
        "cublas",
        "hf_tok_s",
        "hf_generate",
    ]
    print_table(rows, cols)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parser().parse_args(argv)
    args.tiny = args.smoke
    args.cpu = args.smoke
    if args.contexts is None:
        args.contexts = [64, 128] if args.smoke else [1024, 16384, 65536, 131072]
    args.prefill = args.prefill or (48 if args.smoke else 16384)
    args.steps = args.steps or (3 if args.smoke else 64)
    args.hf_steps = args.hf_steps or (2 if args.smoke else 8)
    args.budget_s = args.budget_s or (60.0 if args.smoke else 360.0)
    if args.prefill < 1 or args.steps < 1 or args.hf_steps < 1:
        raise SystemExit("gpu_families.py: --prefill, --steps and --hf-steps must be positive")
    b = Bench(args, "Qwen3.5 dense and MoE shapes: decode and prefill, ours vs transformers (issue #20)")
    if not b.cuda and not args.smoke:
        raise SystemExit("gpu_families.py: no CUDA device; use --smoke for the CPU smoke run")
    b.res.update(shapes={s: NAMES[s] for s in args.shapes}, contexts=args.contexts, steps=args.steps,
                 fla=fla_available())  # fmt: skip
    if b.cuda:
        b.res["device"] = device_info()
        copy_bps = copy_bandwidth_GBps() * 1e9
    else:  # the smoke run: a CPU copy, only so the floor columns are filled
        src = torch.randn(1 << 22)
        t = time.perf_counter()
        src.clone()
        copy_bps = 2 * src.nbytes / (time.perf_counter() - t)
    b.res["copy_GBps"] = copy_bps / 1e9
    with torch.no_grad():  # the run only: main() called in-process leaves autograd as it found it
        for shape in args.shapes:
            run = Shape(b, args, shape, copy_bps)
            b.res[f"{shape}.model"] = describe(run.ours)
            run.ours_sections()
            run.hf_sections()
            run.hf = run.ours = None
            if b.cuda:
                b.free()
    b.save()
    table(b.res, args.shapes)
    return b.res


if __name__ == "__main__":
    main()
