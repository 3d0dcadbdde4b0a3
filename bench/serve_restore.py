"""Restoring a served conversation's state: from the server's host-memory tier vs from the database,
on this CPU (agent/serve_prefix.py, agent/serve_scheduler.py `Scheduler._restore`).

    .venv/bin/python bench/serve_restore.py [--tokens 16384] [--layers 8] [--repeats 3] [--out FILE]

A random-weight hybrid (mamba2, `--layers` attention layers with 16 KV heads of 64, gated deltanet) on
the DecodeEngine, `--tokens` of history: its state is put in a `PrefixCache` over a SQLite store
and written (what `serve` does after an answer). The state's bytes are random, made at the shapes a
prefill of that length gives (a CPU prefill that long would take minutes); what is timed only copies
them. In one run, alternating, the median of `--repeats`:
- memory: `Scheduler._restore` on a server that holds the state in memory (lookup + restore);
- memory, the previous code: the same with the clone of the whole entry before the restore
  (`Entry.clone()`, removed);
- database: `Scheduler._restore` on a fresh `PrefixCache` over the same store (the state is read,
  verified, and then joins the memory tier; each repeat starts from a fresh cache);
- memory (and the previous code) while the server's writer thread saves another state as large
  into the database, as after an answer in bench/gpu_serve.py's returning conversation.
Check: the restored engine's state equals the saved one, bit for bit, from each path.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import torch
from hybrid_agent.agent.engine import ModelEngine
from hybrid_agent.agent.serve_prefix import PrefixCache
from hybrid_agent.agent.serve_scheduler import Metrics, Scheduler
from hybrid_agent.memory import Store
from hybrid_agent.model import HybridConfig, HybridLM, Page
from hybrid_agent.model.chat import NativeChatFormat
from hybrid_agent.model.tokenizer import ByteTokenizer


def stretched(small: dict[str, torch.Tensor], t_small: int, n: int, gen: torch.Generator) -> dict[str, Any]:
    """Page tensors for tokens [0, n) shaped as `small`'s (a prefill of `t_small` tokens): the token
    axis is the one of length `t_small`; positions count 0..n-1, the rest is random."""
    out = {}
    for name, t in small.items():
        if name.endswith(".pos"):
            out[name] = torch.arange(n, dtype=t.dtype)
            continue
        ax = next(i for i, s in enumerate(t.shape) if s == t_small)
        shape = list(t.shape)
        shape[ax] = n
        out[name] = torch.randn(shape, generator=gen).to(t.dtype) if t.is_floating_point() else t
    return out


def equal_state(eng: ModelEngine, rec: dict[str, torch.Tensor], page: Page) -> bool:
    """Whether the engine holds `rec` and the one cache page `page`, bit for bit."""
    got_rec, got_pages = eng.snapshot(0)
    if any(not torch.equal(got_rec[k], v) for k, v in rec.items()) or len(got_pages) != 1:
        return False
    return all(torch.equal(got_pages[0].tensors[k], v) for k, v in page.tensors.items())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tokens", type=int, default=16384)
    ap.add_argument("--layers", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    torch.manual_seed(0)
    cfg = HybridConfig(
        vocab_size=267, d_model=128, layer_types=["mamba2", *(["attention"] * args.layers), "gated_deltanet"],
        attention={"head_dim": 64, "n_kv_heads": 16, "n_heads": 16},
    )  # fmt: skip
    eng = ModelEngine(HybridLM(cfg).eval(), ByteTokenizer(), NativeChatFormat(), window=None,
                      decode_engine=True, max_context=args.tokens + 64)  # fmt: skip
    n, t_small = args.tokens, 7
    eng.prefill(list(range(1, t_small + 1)))
    rec, small = eng.snapshot(0)
    gen = torch.Generator().manual_seed(1)
    rec = {k: (torch.full_like(v, n) if k == "n_tokens" else v.clone()) for k, v in rec.items()}
    pages = [Page(0, n, stretched(small[0].tensors, t_small, n, gen))]
    ids = [i % 250 + 1 for i in range(n + 1)]
    job = SimpleNamespace(ids=ids, boundaries=[n])
    res: dict[str, Any] = {"what": " ".join(__doc__.split("\n\n")[0].split()), "tokens": n}
    res.update(cpu_threads=torch.get_num_threads(), load_avg_start=os.getloadavg())

    def cache(store: Store) -> PrefixCache:
        return PrefixCache(store, fingerprint="bench", policy="window=None,sinks=4", layout=None,
                           memory_bytes=1 << 40)  # fmt: skip

    with tempfile.TemporaryDirectory(dir=os.environ.get("TMPDIR")) as tmp:
        store = Store(Path(tmp) / "s.db")
        warm = cache(store)
        entry = warm.put(warm.digest(ids[:n]), n, rec, pages, None)
        res["state_bytes"] = entry.nbytes
        warm.flush()
        held = Scheduler(eng, warm, Metrics(), max_concurrent=1, max_queue=1)

        def previous() -> None:  # the restore before this change: a clone of the whole entry first
            hit = warm.lookup(job.ids, job.boundaries)
            assert hit is not None
            eng.reset()
            r = {k: v.clone() for k, v in hit.entry.recurrent.items()}
            ps = [Page(p.start, p.end, {k: v.clone() for k, v in p.tensors.items()}) for p in hit.entry.pages]
            eng.restore(r, ps)

        def from_database() -> None:
            fresh = Scheduler(eng, cache(store), Metrics(), max_concurrent=1, max_queue=1)
            fresh._restore(job)  # type: ignore[arg-type]
            assert fresh.metrics.get("state_hits_total", tier="database") == 1
            fresh.prefix.close()

        runs: dict[str, list[float]] = {"memory": [], "memory_previous": [], "database": []}
        exact: dict[str, bool] = {}
        for _ in range(args.repeats):
            for name, fn in (("memory", lambda: held._restore(job)), ("memory_previous", previous),
                             ("database", from_database)):  # fmt: skip
                t = time.perf_counter()
                fn()  # type: ignore[no-untyped-call]
                runs[name].append(time.perf_counter() - t)
                exact[name] = exact.get(name, True) and equal_state(eng, rec, pages[0])
        # As in bench/gpu_serve.py's returning conversation: the state restored while the writer
        # thread still saves another one as large (the answer before it) into the database.
        for k in range(args.repeats):
            for name, fn in (("memory_during_write", lambda: held._restore(job)),
                             ("memory_previous_during_write", previous)):  # fmt: skip
                other = Page(0, n, {key: v + 1 + k if v.is_floating_point() else v
                                    for key, v in pages[0].tensors.items()})  # fmt: skip
                warm.put(warm.digest([*ids[:n], k, len(name)]), n, rec, [other], None)
                t = time.perf_counter()
                fn()  # type: ignore[no-untyped-call]
                runs.setdefault(name, []).append(time.perf_counter() - t)
                exact[name] = exact.get(name, True) and equal_state(eng, rec, pages[0])
                warm.flush()
        warm.close()
        store.close()
    res["runs_s"] = runs
    res.update({f"{k}_median_s": statistics.median(v) for k, v in runs.items()})
    res["exact"] = exact
    res["load_avg_end"] = os.getloadavg()
    print(json.dumps(res, indent=1))
    if args.out:
        args.out.write_text(json.dumps(res, indent=1) + "\n")


if __name__ == "__main__":
    main()
