"""`hybrid-agent serve` on a GPU: aggregate decode throughput by concurrent sessions, and the time to the
first token of a returning long conversation, restored (GPU tier, host memory, database) vs prefilled again.

    python3 bench/gpu_serve.py --out $OUT/gpu_serve.json                 # device machine (H100), < 5 min
    python3 bench/gpu_serve.py --model PATH --out $OUT/gpu_serve.json    # a real checkpoint
    .venv/bin/python bench/gpu_serve.py --smoke --out /tmp/serve.json    # CPU smoke run, small sizes

Everything goes through the real server (agent/serve_app.py on uvicorn, loopback) and the official
`openai` client, one thread per session (in `--client-procs` processes of their own, bench/serve_clients.py):
1. decode: N sessions (1, 8, 32, 64) each stream `--decode-tokens` tokens (`ignore_eos`, so every
   session decodes exactly that many), after an untimed round of N other sessions of as many tokens
   on the same server (one-time costs: compiles, autotuning, graph captures, buffer growth; the
   server also steps its batch once at start-up); aggregate tok/s = every session's tokens over the
   time from the round's start to the last session's end (their admissions included: `join_s`, and
   by phase `join_phases_s`: restore, sampler set-up and first token, prefill, prompt-state save, load
   into the batch; the device synchronized at each phase's end, HYBRID_AGENT_SERVE_SYNC_PHASES).
   N = 1 also runs with `--max-concurrent 1` (no batch: the engine's own decode path, CUDA graphs on
   CUDA); each batched N runs on the decode engine's per-row slots (one captured step,
   agent/serve_rows.py) and on the model's own batched forward (model/batch.py), `--batch-paths`;
   `vs_solo` is the aggregate over the unbatched single session's (the issue's targets: >= 6x at 8
   sessions, >= 18x at 32);
2. returning conversation: a user message of `--context` tokens, answered (8 tokens), then the next
   user message: its latency with `max_tokens=1` (the time to the first token) on the server that
   holds the state in its GPU tier (`--gpu-tier-mb`, default the server's own automatic size; the smoke
   run's tier is on the CPU), on a fresh server without a GPU tier that reads it from the database
   (SQLite in a temporary folder), then on that server again from its host-memory tier, and on a fresh
   server with an empty database (the whole history prefilled again), twice: its prompt state's host
   copy made on the model thread before the first token (`prefill_sync_*`, HYBRID_AGENT_STAGE_SAVES=0)
   and by the server's default (`prefill_*`: staged on the GPU, copied by the writer thread), each with
   `*_first_token_s` (the model thread's time to the first token), `*_save_s` (the save's part of it),
   `*_host_copy_s` (the writer's copies) and `*_saved_after_s` (the wait after the answer until every
   save was in the database). Each one's time by phase is in
   `phases_ms` (`returning_phases`: rendering, queueing, lookup, restore, prefill, save, the first
   token's choice, the rest), and the GPU tier's again with the device synchronized at each phase's
   end (`gpu_synced`). The GPU tier's bound and bytes
   held, and where each restore came from (`*_hits`), are recorded; `speedup_gpu` is re-prefill over
   the GPU tier (issue #24's target: >= 20x, <= 150 ms at 64k tokens).
3. transformers in the same run (`--transformers`, the OLMo Hybrid shape only, random weights of the
   same shape): its continuous batching (`generate_batch`) where it runs (its paged cache takes full and
   sliding attention layers only, so a hybrid's recurrent layers are refused: the error is recorded),
   and its static batched `generate` of N equal prompts, greedy, exactly `--decode-tokens` new tokens.
Results go to one JSON file (rewritten after each section).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from unittest import mock

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from serve_clients import Clients, opening

# The phases of a request's admission to the batch (agent/serve_scheduler.py `Metrics`).
JOIN_PHASES = ("restore", "setup", "prefill", "save", "load")
# A returning request's first token, one request at a time (agent/serve_scheduler.py `Metrics`): the
# counters read around it, by the name of the phase in the JSON.
RETURNING_COUNTERS = {
    "render": "render_seconds_total",  # HTTP side: receive and parse the body, render it to token ids
    "queue": "queue_seconds_total",  # admitted, waiting for the model thread
    "lookup": "join_lookup_seconds_total",  # digests of the boundaries, the tiers (and the database)
    "restore": "join_restore_seconds_total",  # lookup + engine reset + the copy into the engine
    "setup": "join_setup_seconds_total",  # sampler set-up
    "prefill": "join_prefill_seconds_total",  # the new tail's prefill (and its last token)
    "save": "join_save_seconds_total",  # the prompt state's snapshot and tier put
    "model": "first_token_seconds_total",  # the model thread: taking the request to its first token
    "finish": "finish_seconds_total",  # then: the token fed back, the answer's save (max_tokens=1)
}


def returning_phases(metrics: Any, before: dict[str, float], total_s: float) -> dict[str, float]:
    """Milliseconds of one returning request's first token by phase: render (with receiving the body),
    queue, lookup, the rest of the restore, setup, prefill, save, the first token's choice, finish (the
    token fed back, the answer's save) and `other` (the client, HTTP, the reply): they sum to `total_s`."""
    d = {k: metrics.get(c) - before[k] for k, c in RETURNING_COUNTERS.items()}
    inside = d["restore"] + d["setup"] + d["prefill"] + d["save"]
    ms = {
        "render": d["render"],
        "queue": d["queue"],
        "lookup": d["lookup"],
        "restore_copy": d["restore"] - d["lookup"],
        "setup": d["setup"],
        "prefill": d["prefill"],
        "save": d["save"],
        "first_choice": d["model"] - inside,
        "finish": d["finish"],
        "other": total_s - d["render"] - d["queue"] - d["model"] - d["finish"],
    }
    return {k: round(1e3 * v, 3) for k, v in ms.items()}


@contextmanager
def server(engine: Any, db: str, **options: Any) -> Any:
    import openai
    import uvicorn
    from hybrid_agent.agent.serve_app import ServeOptions, build_app
    from hybrid_agent.agent.serve_command import listening_socket
    from hybrid_agent.memory import Store

    store = Store(db)
    app = build_app(engine, store, ServeOptions(**options))
    sock = listening_socket("127.0.0.1", 0)  # as `hybrid-agent serve` makes it (TCP_NODELAY)
    srv = uvicorn.Server(uvicorn.Config(app, lifespan="on", log_level="warning"))
    thread = threading.Thread(target=srv.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    while not srv.started:
        time.sleep(0.01)
    url = f"http://127.0.0.1:{sock.getsockname()[1]}/v1"
    try:
        yield app, openai.OpenAI(base_url=url, api_key="-", max_retries=0, timeout=3600)
    finally:
        srv.should_exit = True
        thread.join()
        sock.close()
        store.close()


def save_times(app: Any, tag: str) -> dict[str, float]:
    """A fresh server's one request, after its answer: the model thread's time to the first token and
    the part of it that saved the prompt's state, the prefix writer's device -> host copies, and how long
    after the answer every save was in the database (the writer's copies and writes still running)."""
    metrics, prefix = app.state.metrics, app.state.prefix
    t0 = time.perf_counter()
    prefix.flush()
    return {
        f"{tag}_first_token_s": metrics.get("first_token_seconds_total"),
        f"{tag}_save_s": metrics.get("join_save_seconds_total"),
        f"{tag}_host_copy_s": prefix.copy_seconds,
        f"{tag}_saved_after_s": time.perf_counter() - t0,
        f"{tag}_staged_saves": metrics.get("state_saves_staged_total"),
    }


def next_turn(i: int, answer: str) -> list[dict[str, Any]]:
    """Session i's second turn: its first message, the answer it got, a short new user message (the
    answer's state is restored: only that message, a few tokens, is new to the model)."""
    return [*opening(i), {"role": "assistant", "content": answer}, {"role": "user", "content": "Go on."}]


def decode_section(
    engine: Any,
    sessions: list[int],
    tokens: int,
    tmp: Path,
    paths: list[str],
    feed: int | None = None,
    returning: bool = False,
    clients: Clients | None = None,
    together: bool = False,
) -> list[dict[str, Any]]:
    from hybrid_agent.agent.serve_rows import BATCH_ENGINE_ENV
    from hybrid_agent.agent.serve_scheduler import SYNC_PHASES_ENV

    clients = clients or Clients(0)
    rows: list[dict[str, Any]] = []
    runs = [(1, 1, "solo"), *((n, max(n, 2), path) for n in sessions for path in paths)]
    for n, concurrent, path in runs:
        # the batch on the decode engine's per-row slots (one captured step) or the model's own forward
        os.environ[BATCH_ENGINE_ENV] = {"engine": "1", "model": "0"}.get(path, "auto")
        # The join phases' times are the device's (a sync at each phase's end; the step syncs anyway).
        os.environ[SYNC_PHASES_ENV] = "1"
        # `feed`: the server's --join-feed-tokens (None: its default)
        extra: dict[str, Any] = {} if feed is None else {"join_feed_tokens": feed}
        extra["join_together"] = together  # the server's --join-together
        with server(
            engine,
            str(tmp / f"decode_{n}_{concurrent}_{path}.db"),
            max_concurrent=concurrent,
            max_queue=n,
            **extra,
        ) as (
            app,
            client,
        ):
            metrics = app.state.metrics
            names = ("decode_steps_total", "batch_rows_total", "decode_seconds_total", "batch_builds_total",
                     "join_seconds_total", "step_prompt_tokens_total", "rows_seconds_total",
                     *(f"join_{p}_seconds_total" for p in JOIN_PHASES))  # fmt: skip
            # Untimed warm round: the same number of sessions and tokens (other prompts, so nothing of
            # it is restored later), so the batch's buffers reach the size the timed round needs and
            # every one-time cost (kernel compiles, autotuning, graph captures) is paid here.
            # `returning`: the warm round is the timed sessions' own first turns instead, and the timed
            # round their second turns (each restores its first turn's state).
            before = [metrics.get(k) for k in names]
            url, name = str(client.base_url), engine.model_name
            t0 = time.monotonic()
            firsts = clients.run(url, name, [(i if returning else -1 - i, tokens, None) for i in range(n)])
            warm_s = time.monotonic() - t0
            warm_steps = metrics.get("decode_steps_total") - before[0]
            before = [metrics.get(k) for k in names]
            t0 = time.monotonic()
            turns = [next_turn(i, firsts[i][3]) if returning else None for i in range(n)]
            got = clients.run(url, name, [(i, tokens, turns[i]) for i in range(n)])
            steps, rows_fed, step_s, builds, join_s, step_prompt, rows_s, *phase_s = (
                metrics.get(k) - b for k, b in zip(names, before, strict=True)
            )
            used = app.state.scheduler.batch_path if concurrent > 1 else "solo"
            warmup_s = metrics.get("warmup_seconds_total")
        end = max(g[1] for g in got)
        wall = sum(g[2] for g in got) / (end - t0)
        rows.append(
            {
                "sessions": n,
                "batched": concurrent > 1,
                "path": used,  # "engine" (per-row slots), "model" (model/batch.py) or "solo" (no batch)
                "tokens_per_session": tokens,
                # Every token of every session (first ones and prefills included) over the wall time.
                "aggregate_tok_s_wall": wall,
                # Against the first run (one session, no batch: the engine's own decode path).
                "vs_solo": wall / rows[0]["aggregate_tok_s_wall"] if rows else 1.0,
                # Tokens fed by batched steps over the time in those steps (decode alone).
                "aggregate_tok_s_steps": rows_fed / step_s if step_s else None,
                "wall_s": end - t0,
                "mean_batch": rows_fed / steps if steps else 1.0,
                # Host time taking the rows' tokens, overlapped with the steps on the device.
                "rows_s": rows_s,
                # Time admitting the sessions to the batch (restore, prefill alone on the engine, first
                # token): in the wall time, outside the steps.
                "join_s": join_s,
                # Of join_s, by phase (agent/serve_scheduler.py's `join_*_seconds_total`, device time):
                # the totals over the round's n joins, and per join.
                "join_phases_s": dict(zip(JOIN_PHASES, phase_s, strict=True)),
                "join_phases_ms_per_join": {
                    p: 1e3 * v / n for p, v in zip(JOIN_PHASES, phase_s, strict=True)
                },
                # Prompt tokens the steps fed instead of a prefill on joining (--join-feed-tokens).
                "step_prompt_tokens": step_prompt,
                "join_feed_tokens": getattr(app.state.scheduler, "join_feed_tokens", 0),
                "join_together": together,
                "together_prompt_tokens": metrics.get("together_prompt_tokens_total"),  # both rounds
                "returning": returning,  # second turns (a restored state, a short new message)
                "warm_round_s": warm_s,  # the untimed round before
                "warm_round_steps": warm_steps,
                "server_warmup_s": warmup_s,  # the server's own start-up step (agent/serve_batch.py)
                "builds_timed": builds,  # batch buffers built inside the timed round (0: all warmed)
            }
        )
        print(json.dumps(rows[-1]), flush=True)
    os.environ.pop(BATCH_ENGINE_ENV, None)
    os.environ.pop(SYNC_PHASES_ENV, None)
    return rows


def returning_section(engine: Any, context: int, tmp: Path, gpu_tier_bytes: int | None) -> dict[str, Any]:
    import gc

    from hybrid_agent.agent.serve_tiers import STAGE_ENV

    name = engine.model_name
    if torch.cuda.is_available():  # the decode section's servers and their GPU tiers are gone
        gc.collect()
        torch.cuda.empty_cache()
    # Words of "wN" cost a tokenizer-dependent number of tokens each: measure it on a sample, so the
    # history is about `context` tokens whatever the checkpoint's tokenizer.
    sample = " ".join(f"w{i % 97}" for i in range(970))
    per_word = max(1e-3, len(engine.tokenizer.encode(sample)) / 970)
    words = max(1, int(context / per_word))
    text = " ".join(f"w{i % 97}" for i in range(words))
    first = [{"role": "user", "content": text}]
    opts = {"max_prompt_tokens": 4 * context + 4096, "memory_tier_bytes": 1 << 40, "max_concurrent": 1}
    db = str(tmp / "returning.db")

    phases: dict[str, dict[str, float]] = {}

    def ttft(client: Any, convo: list[Any], app: Any = None, tag: str = "") -> tuple[float, int, int]:
        """The request's latency, prompt and cached tokens; with `app`, its phases go to phases[tag]."""
        before = {k: app.state.metrics.get(c) for k, c in RETURNING_COUNTERS.items()} if app else {}
        t0 = time.perf_counter()
        r = client.chat.completions.create(model=name, messages=convo, max_tokens=1)
        took = time.perf_counter() - t0
        if app is not None:
            phases[tag] = returning_phases(app.state.metrics, before, took)
        return took, r.usage.prompt_tokens, r.usage.prompt_tokens_details.cached_tokens

    out: dict[str, Any] = {}
    with server(engine, db, gpu_tier_bytes=gpu_tier_bytes, **opts) as (app, client):
        t0 = time.perf_counter()
        a1 = client.chat.completions.create(
            model=name, messages=first, max_tokens=8, extra_body={"ignore_eos": True}
        )
        out["first_turn_s"] = time.perf_counter() - t0
        message = a1.choices[0].message.model_dump(
            exclude_none=True, include={"role", "content", "tool_calls"}
        )
        # Each of the four asks something else next, so each restores the first turn's state.
        then = lambda text: [*first, message, {"role": "user", "content": text}]
        # Whether the server's writer thread was still saving the first turn's state (its host copy and
        # database write) as the request came: it then runs beside the restore.
        out["gpu_writer_busy"] = not app.state.prefix._writer.submit(lambda: None).done()
        out["gpu_s"], out["prompt_tokens"], out["gpu_cached"] = ttft(
            client, then("Now summarise it."), app, "gpu"
        )
        metrics = app.state.metrics
        out["gpu_hits"] = metrics.get("state_hits_total", tier="gpu")
        out["gpu_restore_s"] = metrics.get("restore_seconds_total")
        # Once more with the device synchronized at each phase's end (the phases are then the device's
        # time, not their launches'; the syncs add a little); the writer has had time to finish.
        app.state.prefix.flush()
        app.state.scheduler.sync_phases = True
        out["gpu_synced_s"], _, _ = ttft(client, then("Now retell it."), app, "gpu_synced")
        app.state.scheduler.sync_phases = False
        out["gpu_tier_capacity_bytes"] = app.state.prefix.device_capacity
        out["gpu_tier_bytes"] = metrics.gauges["gpu_tier_bytes"]()
    with server(engine, db, **{**opts, "gpu_tier_bytes": 0}) as (app, client):
        metrics = app.state.metrics
        out["database_s"], _, out["database_cached"] = ttft(client, then("Now shorten it."), app, "database")
        out["database_restore_s"] = metrics.get("restore_seconds_total")
        out["database_hits"] = metrics.get("state_hits_total", tier="database")
        out["memory_s"], _, out["memory_cached"] = ttft(client, then("Now count its words."), app, "memory")
        out["memory_restore_s"] = metrics.get("restore_seconds_total") - out["database_restore_s"]
        out["memory_hits"] = metrics.get("state_hits_total", tier="memory")
        out["memory_tier_bytes"] = metrics.gauges["memory_tier_bytes"]()
    # A fresh server without a GPU tier and an empty database: the whole history prefilled and its state
    # saved. Twice: the save's host copy made on the model thread before the first token (staged saves
    # off: "prefill_sync"), then as the server saves by default ("prefill": staged on the GPU when it
    # has room, the host copy made by the writer thread, agent/serve_tiers.py).
    for tag, stage in (("prefill_sync", "0"), ("prefill", None)):
        if torch.cuda.is_available():  # the last server's states are gone before this one measures room
            gc.collect()
            torch.cuda.empty_cache()
        env, fresh = {STAGE_ENV: stage} if stage else {}, {**opts, "gpu_tier_bytes": 0}
        with (
            mock.patch.dict(os.environ, env),
            server(engine, str(tmp / f"{tag}.db"), **fresh) as (app, client),
        ):
            out[f"{tag}_s"], _, out[f"{tag}_cached"] = ttft(client, then("Now list its words."), app, tag)
            out.update(save_times(app, tag))
    out["speedup_gpu"] = out["prefill_s"] / out["gpu_s"]
    # Each request's first token by phase, in ms (`returning_phases`); "gpu_synced" with device syncs.
    out["phases_ms"] = phases
    print(json.dumps(out), flush=True)
    return out


def transformers_section(sessions: list[int], tokens: int) -> dict[str, Any]:
    """transformers on the OLMo Hybrid 7B shape (bf16, random weights): `generate_batch` (continuous
    batching) where it runs, else its error; `generate` on a static batch of N prompts of 32 tokens."""
    import sys

    from transformers import GenerationConfig

    sys.path.insert(0, str(Path(__file__).parent))
    from gpu_olmo import build_hf, hf_config

    hf = build_hf(hf_config(False), torch.device("cuda"), torch.bfloat16)
    gen = torch.Generator(device="cuda").manual_seed(0)
    vocab = hf.config.vocab_size
    cfg = GenerationConfig(max_new_tokens=tokens, min_new_tokens=tokens, do_sample=False, eos_token_id=None)
    out: dict[str, Any] = {"shape": "OlmoHybridConfig() defaults (OLMo Hybrid 7B)", "static": []}
    prompts = torch.randint(0, vocab, (max(sessions), 32), device="cuda", generator=gen)
    try:
        t0 = time.perf_counter()
        got = hf.generate_batch([p.tolist() for p in prompts[:8]], generation_config=cfg, progress_bar=False)
        wall = time.perf_counter() - t0
        n = sum(len(g.generated_tokens) for g in got.values())
        out["generate_batch"] = {"sessions": 8, "tok_s": n / wall}
    except Exception as exc:  # the recorded answer is the reason it does not run
        out["generate_batch"] = {"error": f"{type(exc).__name__}: {str(exc)[:300]}"}
    with torch.inference_mode():
        hf.generate(prompts[:1], generation_config=GenerationConfig(max_new_tokens=4, do_sample=False))
        for n in sessions:
            torch.cuda.synchronize()
            t0 = time.perf_counter()
            res = hf.generate(prompts[:n], generation_config=cfg)
            torch.cuda.synchronize()
            wall = time.perf_counter() - t0
            new = (res.shape[1] - prompts.shape[1]) * n
            out["static"].append({"sessions": n, "new_tokens": new, "tok_s": new / wall, "wall_s": wall})
            print(json.dumps(out["static"][-1]), flush=True)
    del hf
    torch.cuda.empty_cache()
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default=None, help="model folder (default: the packaged model)")
    p.add_argument("--device", default=None, help="default: cuda when available")
    p.add_argument("--sessions", default="1,8,32,64")
    p.add_argument("--decode-tokens", type=int, default=128)
    p.add_argument(
        "--batch-paths",
        default="engine,model",
        help="batched runs on the decode engine's per-row slots and/or the model's own batch",
    )
    p.add_argument("--context", type=int, default=65536)
    p.add_argument(
        "--gpu-tier-mb",
        type=int,
        default=None,
        help="the returning section's GPU tier in MB (default: the server's automatic size; --smoke: 1024)",
    )
    p.add_argument("--smoke", action="store_true", help="tiny sizes (CPU)")
    p.add_argument(
        "--transformers",
        action="store_true",
        help="also time transformers' batching (CUDA, OLMo Hybrid 7B shape)",
    )
    p.add_argument(
        "--sections",
        default="decode,returning",
        help="which of decode and returning to run (comma list; empty: only --transformers)",
    )
    p.add_argument(
        "--join-feed-tokens", type=int, default=None, metavar="K",
        help="the servers' --join-feed-tokens (default: the server's default)",
    )  # fmt: skip
    p.add_argument(
        "--returning", action="store_true",
        help="decode: time each session's second turn (its first restored, a short new message) "
        "instead of a first turn",
    )  # fmt: skip
    p.add_argument(
        "--client-procs", type=int, default=min(8, max(1, (os.cpu_count() or 2) // 2)), metavar="P",
        help="decode: the sessions' clients in P processes of their own (0: threads of this process, "
        "the server's, as the first form of this benchmark ran them; bench/serve_clients.py says why)",
    )  # fmt: skip
    p.add_argument(
        "--join-together", action=argparse.BooleanOptionalAction, default=True,
        help="decode: the servers' --join-together (first turns joining at once prefilled as one batch; "
        "default on, as the server's)",
    )  # fmt: skip
    p.add_argument(
        "--switch-interval", type=float, default=None, metavar="S",
        help="sys.setswitchinterval(S) in this process, the server's (Python's default 0.005 s): how long "
        "a thread that waits for the interpreter lock lets the holder run before asking for it",
    )  # fmt: skip
    p.add_argument("--out", default="gpu_serve.json")
    args = p.parse_args()
    sections = {x for x in args.sections.split(",") if x}
    if sections - {"decode", "returning"}:
        p.error(f"--sections takes decode and/or returning; got {args.sections!r}")
    if args.smoke:
        args.sessions, args.decode_tokens, args.context = "1,4", 8, 1024
        if args.gpu_tier_mb is None:
            args.gpu_tier_mb = 1024  # on the CPU the automatic size is 0: run the tier's path anyway
    if args.switch_interval is not None:
        if not 0 < args.switch_interval <= 1:
            p.error(f"--switch-interval takes seconds in (0, 1]; got {args.switch_interval}")
        sys.setswitchinterval(args.switch_interval)
    from hybrid_agent.agent.factory import load_engine

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    engine = load_engine(args.model, device=device)
    result: dict[str, Any] = {
        "device": torch.cuda.get_device_name() if device.startswith("cuda") else "cpu",
        "model": engine.model_name,
        "torch": torch.__version__,
        "switch_interval_s": sys.getswitchinterval(),
    }
    out = Path(args.out)
    with tempfile.TemporaryDirectory() as folder:
        tmp = Path(folder)
        sessions = [int(s) for s in args.sessions.split(",")]
        paths = [x for x in args.batch_paths.split(",") if x]
        if set(paths) - {"engine", "model"}:
            p.error(f"--batch-paths takes engine and/or model; got {args.batch_paths!r}")
        if "decode" in sections:
            result["client_procs"] = args.client_procs
            with Clients(args.client_procs) as clients:
                result["decode"] = decode_section(
                    engine, sessions, args.decode_tokens, tmp, paths, args.join_feed_tokens, args.returning,
                    clients, args.join_together,
                )  # fmt: skip
            out.write_text(json.dumps(result, indent=1) + "\n")
        if "returning" in sections:
            gpu_tier = None if args.gpu_tier_mb is None else args.gpu_tier_mb << 20
            result["returning"] = returning_section(engine, args.context, tmp, gpu_tier)
            out.write_text(json.dumps(result, indent=1) + "\n")
    if args.transformers and device.startswith("cuda"):
        del engine
        torch.cuda.empty_cache()
        import transformers

        result["transformers"] = transformers_section(sessions, args.decode_tokens)
        result["transformers"]["version"] = transformers.__version__
        out.write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
