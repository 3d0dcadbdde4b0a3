"""Decode speed at tensor parallel sizes (issue #26), batch 1, bf16, random weights at OLMo Hybrid 7B's
shape (transformers' `OlmoHybridConfig` defaults through the olmo_hybrid adapter):

    python bench/gpu_tp.py --out tp.json                          # a machine with 4 GPUs (NCCL)
    python bench/gpu_tp.py --tp 1,2 --contexts 1k --out tp.json   # 2 GPUs
    python bench/gpu_tp.py --smoke --out /tmp/tp.json             # CPU over gloo, a toy shape, seconds

For each tp (`--tp`, default 1,2,4), `launch` starts tp processes (a card each, joined over NCCL); each
builds its shard of the model directly (`HybridLM(cfg, tp)`, random init: decode cost does not depend on
the values) and a DecodeEngine over it, whose step (its all-reduces and the head's all-gather included)
is one CUDA graph. At each context (`--contexts`, default 1k and 128k) the caches and recurrent states
are filled with random values (no prefill), then `--steps` greedy tokens are timed on every rank between
barriers. The floor is a rank's own bytes a step must move (its shard's weights but the embedding table,
its K/V cache heads at that context, its recurrent states read and written) over the device-to-device
copy bandwidth measured on that rank in the same run: the HBM floor per GPU, which ignores the
collectives' time. Rank 0 writes its row; the JSON (`--out`) is rewritten after each tp, a table printed
last.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from gpu_common import copy_bandwidth_GBps, device_info, fill_synthetic, print_table, write_json
from gpu_families import parse_contexts
from hybrid_agent.model.decode.engine import DecodeEngine
from hybrid_agent.model.hybrid import HybridLM
from hybrid_agent.model.parallel import TensorParallel, launch
from hybrid_agent.model.state import state_layout

TINY = dict(
    vocab_size=2048, hidden_size=64, intermediate_size=128, num_hidden_layers=4, num_attention_heads=4,
    num_key_value_heads=2, linear_num_key_heads=2, linear_num_value_heads=4, linear_key_head_dim=16,
    linear_value_head_dim=16,
    layer_types=["linear_attention", "linear_attention", "linear_attention", "full_attention"],
)  # fmt: skip


def parse_tps(text: str) -> list[int]:
    try:
        got = sorted({int(p) for p in text.split(",") if p.strip()})
    except ValueError:
        raise argparse.ArgumentTypeError(f"--tp: give sizes like 1,2,4; got {text!r}") from None
    if not got or got[0] < 1:
        raise argparse.ArgumentTypeError(f"--tp: sizes must be 1 or more; got {text!r}")
    return got


def olmo_config(tiny: bool) -> Any:
    from hybrid_agent.model.checkpoints import olmo_hybrid
    from transformers import OlmoHybridConfig

    return olmo_hybrid.hybrid_config(OlmoHybridConfig(**(TINY if tiny else {})).to_dict())


def rank_floor_bytes(model: HybridLM, ctx: int) -> dict[str, int]:
    """One rank's bytes a decode step must move at context `ctx`: its shard's weights but the embedding
    table (one row), its K/V cache heads, its recurrent states read and written (fp32)."""
    weights = sum(p.nbytes for p in model.parameters()) - model.embed_tokens.weight.nbytes
    item = model.dtype.itemsize
    cache = rec = 0
    for _, spec in state_layout(model.local_config):
        for shape in spec.cache.values():
            cache += ctx * item * int(torch.tensor([d for d in shape if d != -1]).prod())
        for shape in spec.recurrent.values():
            rec += 2 * 4 * int(torch.tensor(shape).prod())
    return {"weights": weights, "cache": cache, "recurrent": rec, "total": weights + cache + rec}


def _barrier(tp: TensorParallel, dev: torch.device) -> None:
    """Every rank here, its device idle (an all-reduce of one value, then a sync)."""
    tp.all_reduce(torch.zeros(1, device=dev))
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def run_rank(tp: TensorParallel, args: argparse.Namespace, part: str) -> None:
    """One rank: its shard, an engine at each context, the timed greedy tokens; rank 0 writes `part`."""
    cuda = not args.smoke
    dev = torch.device("cuda", torch.cuda.current_device()) if cuda else torch.device("cpu")
    cfg = olmo_config(args.smoke)
    torch.manual_seed(tp.rank)
    with torch.device(dev):
        prev = torch.get_default_dtype()
        torch.set_default_dtype(torch.bfloat16 if cuda else torch.float32)
        try:
            model = HybridLM(cfg, tp).eval()
        finally:
            torch.set_default_dtype(prev)
    copy_bps = copy_bandwidth_GBps() * 1e9 if cuda else None
    gen = torch.Generator(dev).manual_seed(tp.rank)
    rows = []
    for ctx in args.contexts:
        eng = DecodeEngine(model, max_context=ctx + args.steps + 8)
        fill_synthetic(eng, gen)
        eng.set_length(ctx)
        eng.generate_greedy(4, sync_every=4)  # the graph's capture, warm-up
        eng.set_length(ctx)
        _barrier(tp, dev)
        t = time.perf_counter()
        eng.generate_greedy(args.steps, sync_every=args.steps)
        _barrier(tp, dev)
        dt = (time.perf_counter() - t) / args.steps
        fb = rank_floor_bytes(model, ctx)
        row: dict[str, Any] = {
            "tp": tp.world, "ctx": ctx, "ms": dt * 1e3, "tok_s": 1 / dt, "graphed": eng.graphed,
            "fused": eng.fused, "rank_weights_GB": fb["weights"] / 1e9, "rank_cache_GB": fb["cache"] / 1e9,
            "rank_recurrent_GB": fb["recurrent"] / 1e9,
        }  # fmt: skip
        if copy_bps is not None:
            floor_ms = fb["total"] / copy_bps * 1e3
            row |= {"floor_ms": floor_ms, "floor_tok_s": 1e3 / floor_ms, "vs_floor": floor_ms / (dt * 1e3),
                    "copy_GBps": copy_bps / 1e9}  # fmt: skip
        rows.append(row)
        del eng
        if cuda:
            torch.cuda.empty_cache()
    if tp.rank == 0:
        write_json(part, {"rows": rows})


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--tp", type=parse_tps, default=[1, 2, 4], help="tensor parallel sizes (default 1,2,4)")
    p.add_argument("--contexts", type=parse_contexts, default=None, help="default 1k,128k (smoke: 64)")
    p.add_argument("--steps", type=int, default=128, help="timed greedy tokens per context")
    p.add_argument("--smoke", action="store_true", help="a toy shape on the CPU over gloo")
    p.add_argument("--out", required=True, help="the JSON file to write")
    args = p.parse_args(argv)
    if args.steps < 1:
        p.error("--steps must be at least 1")
    args.contexts = args.contexts or ([64] if args.smoke else [1024, 131072])
    if not args.smoke:
        if not torch.cuda.is_available():
            p.error("no CUDA device: run on a GPU machine, or --smoke on the CPU")
        if max(args.tp) > torch.cuda.device_count():
            p.error(f"--tp {max(args.tp)} needs that many GPUs; this machine has {torch.cuda.device_count()}")
    payload: dict[str, Any] = {
        "shape": "olmo-tiny" if args.smoke else "OLMo Hybrid 7B (transformers OlmoHybridConfig defaults)",
        "device": device_info() if not args.smoke else {"card": "cpu"},
        "steps": args.steps, "rows": [],
    }  # fmt: skip
    for world in args.tp:
        with tempfile.TemporaryDirectory() as folder:
            part = os.path.join(folder, "rank0.json")
            try:
                launch(run_rank, world, args, part, backend="gloo" if args.smoke else "nccl")
                payload["rows"] += json.loads(Path(part).read_text())["rows"]
            except Exception as exc:  # one tp failing (out of memory at 128k) keeps the others' rows
                payload["rows"].append({"tp": world, "error": f"{type(exc).__name__}: {exc}"[:500]})
        write_json(args.out, payload)
    cols = [
        "tp",
        "ctx",
        "ms",
        "tok_s",
        "floor_tok_s",
        "vs_floor",
        "rank_weights_GB",
        "rank_cache_GB",
        "graphed",
    ]
    print_table(payload["rows"], cols)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
