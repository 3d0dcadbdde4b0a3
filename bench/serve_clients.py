"""The serve benchmarks' streaming clients (the official `openai` package), in processes of their own.

Real clients of `hybrid-agent serve` run in other processes. Run as threads of the server's process
(the benchmark's first form), 32-64 of them parse their SSE streams in Python under the interpreter
lock that the server's model thread also needs between its device calls: on an H200 the batched step
took ~23 ms inside the server at 32 sessions (bench/results/gpu_serve_h200_s9.json) where the same
step timed alone takes 6.3 ms (bench/results/gpu_step_profile_h200_s9.json). `Clients(procs)` keeps a
pool of `procs` worker processes (spawned once, `openai` imported at start) and runs each round's
sessions across them, a thread per session inside each worker; `procs=0` keeps the threads in the
calling process, the old form, for comparison.

Times are `time.monotonic()` (CLOCK_MONOTONIC on Linux: one clock for every process of the machine),
so a worker's times compare with the caller's round start.
"""

from __future__ import annotations

import multiprocessing
import time
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from typing import Any

# One session's request: (session number, completion tokens, its messages or None for the opening)
Job = tuple[int, int, "list[dict[str, Any]] | None"]


def opening(i: int) -> list[dict[str, Any]]:
    """Session i's first user message."""
    return [{"role": "user", "content": f"Session {i}: write a long story about number {i}."}]


def stream_session(
    client: Any, model: str, i: int, tokens: int, messages: list[dict[str, Any]] | None = None
) -> tuple[float, float, int, str]:
    """(time of the first chunk, time of the end, completion tokens, text) of one streamed session;
    `messages`: its conversation so far (default: session i's first message)."""
    first = None
    text = []
    out = client.chat.completions.create(
        model=model,
        messages=messages or opening(i),
        max_tokens=tokens,
        stream=True,
        stream_options={"include_usage": True},
        extra_body={"ignore_eos": True},
    )
    used = 0
    for chunk in out:
        if first is None:  # the role chunk: the request is admitted
            first = time.monotonic()
        if chunk.usage is not None:
            used = chunk.usage.completion_tokens
        if chunk.choices and chunk.choices[0].delta.content:
            text.append(chunk.choices[0].delta.content)
    end = time.monotonic()
    return first or end, end, used, "".join(text)


def client_for(url: str) -> Any:
    import openai

    return openai.OpenAI(base_url=url, api_key="-", max_retries=0, timeout=3600)


def _sessions(url: str, model: str, jobs: list[Job]) -> list[tuple[float, float, int, str]]:
    """A worker's share of a round: one thread per session, all at once."""
    client = client_for(url)
    with ThreadPoolExecutor(max(1, len(jobs))) as pool:
        return list(pool.map(lambda job: stream_session(client, model, *job), jobs))


def _ready() -> bool:
    import openai  # noqa: F401  (imported once per worker, before the first timed round)

    return True


class Clients:
    """The benchmark's clients: `run(url, model, jobs)` streams every job at once and gives each one's
    (first chunk, end, tokens, text) in the jobs' order."""

    def __init__(self, procs: int) -> None:
        self.procs = procs
        self.pool = None
        if procs > 0:
            self.pool = ProcessPoolExecutor(procs, mp_context=multiprocessing.get_context("spawn"))
            for f in [self.pool.submit(_ready) for _ in range(procs)]:
                f.result()

    def run(self, url: str, model: str, jobs: list[Job]) -> list[tuple[float, float, int, str]]:
        if self.pool is None:
            return _sessions(url, model, jobs)
        shares = [jobs[k :: self.procs] for k in range(self.procs)]  # round-robin: sizes differ by <= 1
        futures = [self.pool.submit(_sessions, url, model, share) for share in shares if share]
        results = [f.result() for f in futures]
        out: list[Any] = [None] * len(jobs)
        for k, got in enumerate(results):
            out[k :: self.procs] = got
        return out

    def close(self) -> None:
        if self.pool is not None:
            self.pool.shutdown()

    def __enter__(self) -> Clients:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
