"""`--tp N`: the agent's model split over N processes (agent/tp_engine.py runs them).

This process is rank 0 (the agent, its terminal, tools and store); it starts ranks 1..N-1 as new
processes, joins them in one torch.distributed group (NCCL with `--device cuda`, one card per rank;
gloo on the CPU) through a file store in a private temporary folder, and every rank loads its shard
(`load_model(path, tp=N)`). The others serve rank 0's model calls until it exits (`shutdown`, run at
exit), or die with it (daemon processes).
"""

from __future__ import annotations

import atexit
import shutil
import sys
import tempfile
from datetime import timedelta
from pathlib import Path
from typing import Any

# A rank that does not answer within this time (a rank that died while loading) ends the group's calls
# with an error instead of a hang.
TIMEOUT = timedelta(minutes=10)


def _device(device: str | None, rank: int) -> str | None:
    return f"cuda:{rank}" if device is not None and device.startswith("cuda") else device


def _join(rank: int, world: int, store: str, device: str | None) -> Any:
    import torch
    import torch.distributed as dist
    from hybrid_agent.model.parallel import TensorParallel

    cuda = device is not None and device.startswith("cuda")
    if cuda:
        torch.cuda.set_device(rank)
    dist.init_process_group(
        "nccl" if cuda else "gloo",
        init_method=f"file://{store}",
        rank=rank,
        world_size=world,
        timeout=TIMEOUT,
    )
    return TensorParallel.current()


def _rank_main(
    rank: int, world: int, store: str, where: str, device: str | None, options: dict[str, Any]
) -> None:
    """A rank > 0: its shard and a `ModelEngine` on it, serving rank 0's calls."""
    import torch.distributed as dist
    from hybrid_agent.agent.engine import ModelEngine
    from hybrid_agent.agent.tp_engine import serve
    from hybrid_agent.model import load_model

    tp = _join(rank, world, store, device)
    try:
        lm, tokenizer, chat = load_model(where, device=_device(device, rank), progress=False, tp=world)
        serve(ModelEngine(lm, tokenizer, chat, **options), tp)
    except Exception as e:  # one line, as the CLI's own errors; rank 0's next call fails on it (TIMEOUT)
        print(f"hybrid-agent: rank {rank}: {type(e).__name__}: {e}", file=sys.stderr, flush=True)
        sys.exit(1)
    finally:
        dist.destroy_process_group()


def start_ranks(where: str, tp: int, device: str | None, options: dict[str, Any]) -> Any:
    """Rank 0's `LeaderEngine` over `tp` ranks (this process and `tp - 1` new ones)."""
    import multiprocessing

    import torch.distributed as dist
    from hybrid_agent.agent.tp_engine import LeaderEngine
    from hybrid_agent.model import load_model
    from hybrid_agent.model.checkpoints.loader import check_split

    check_split(where, tp)  # before any process starts
    folder = tempfile.mkdtemp(prefix="hybrid-agent-tp-")
    store = str(Path(folder) / "store")
    ctx = multiprocessing.get_context("spawn")
    procs = [
        ctx.Process(target=_rank_main, args=(r, tp, store, where, device, options), daemon=True)
        for r in range(1, tp)
    ]
    for p in procs:
        p.start()
    group = _join(0, tp, store, device)
    lm, tokenizer, chat = load_model(where, device=_device(device, 0), progress=False, tp=tp)
    name = Path(where).name if Path(where).is_dir() else where
    engine = LeaderEngine(lm, tokenizer, chat, model_name=name, **options)
    assert engine.tp == group

    def shutdown() -> None:
        try:
            engine.close_ranks()
            for p in procs:
                p.join(timeout=30)
        finally:
            for p in procs:
                if p.is_alive():
                    p.terminate()
            dist.destroy_process_group()
            shutil.rmtree(folder, ignore_errors=True)

    atexit.register(shutdown)
    return engine
