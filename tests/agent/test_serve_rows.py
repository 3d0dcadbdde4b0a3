"""`hybrid-agent serve`'s batch on the decode engine's per-row slots (agent/serve_rows.py `EngineRows`,
model/decode/rows.py), the packaged default model on the CPU where the step runs uncaptured: concurrent
clients get exactly the answers they get one at a time, through the real server and `openai` client."""

from __future__ import annotations

import os
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).parent))
from serve_testkit import answered_read, as_history, chat, said, serving, tokens

# The phases of a join (agent/serve_scheduler.py `join_<phase>_seconds_total`).
PHASES = ("restore", "setup", "prefill", "save", "load")


@pytest.fixture(scope="module")
def engine() -> Any:
    from hybrid_agent.agent.factory import load_engine

    return load_engine(None)


def _conversation(served: Any, client: int, turns: int, max_tokens: int) -> list[Any]:
    messages: list[dict[str, Any]] = []
    out = []
    for turn in range(turns):
        messages.append({"role": "user", "content": f"Tell me about item {client * 7 + turn}, please."})
        answer = chat(served, messages, max_tokens=max_tokens + client, logprobs=True)  # rows end apart
        out.append((said(answer), tokens(answer)))
        messages.append(as_history(answer.choices[0].message))
    return out


@pytest.mark.parametrize("path", ["1", "0"])
def test_batched_answers_equal_solo_ones(engine: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                         path: str) -> None:  # fmt: skip
    monkeypatch.setenv("HYBRID_AGENT_BATCH_ENGINE", path)  # the engine's slots, or the model's own batch
    clients, turns, max_tokens = 3, 1, 3
    with serving(engine, str(tmp_path / "solo.db"), max_concurrent=1) as solo:
        alone = [_conversation(solo, c, turns, max_tokens) for c in range(clients)]
    with serving(engine, str(tmp_path / "batch.db"), max_concurrent=clients, max_queue=clients) as served:
        with ThreadPoolExecutor(clients) as pool:
            together = list(pool.map(lambda c: _conversation(served, c, turns, max_tokens), range(clients)))
        scheduler = served.app.state.scheduler
        assert scheduler.batched and scheduler.peak_batch > 1
        assert scheduler.batch_path == ("engine" if path == "1" else "model")
    assert together == alone


def _until(condition: Any, seconds: float = 10) -> bool:
    deadline = time.monotonic() + seconds
    while not condition() and time.monotonic() < deadline:
        time.sleep(0.02)
    return bool(condition())


def test_the_engine_batch_is_built_and_stepped_before_the_first_request(
    engine: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HYBRID_AGENT_BATCH_ENGINE", "1")
    with serving(engine, str(tmp_path / "warm.db"), max_concurrent=3, max_queue=3) as served:
        # Start-up alone (no request yet) builds the slots and runs their step once.
        assert _until(lambda: served.metric("warmup_seconds_total") > 0)
        assert served.metric("batch_builds_total") == 1 and served.metric("decode_steps_total") == 0
        assert served.app.state.scheduler.batch_path == "engine"
        with ThreadPoolExecutor(3) as pool:
            together = list(pool.map(lambda c: _conversation(served, c, 1, 3), range(3)))
        # Short answers fit the warmed buffers: the requests' steps built (and captured) nothing more.
        assert served.metric("batch_builds_total") == 1 and served.metric("decode_steps_total") > 0
    with serving(engine, str(tmp_path / "solo.db"), max_concurrent=1) as solo:
        assert solo.metric("warmup_seconds_total") == 0  # no batch, nothing to warm
        assert together == [_conversation(solo, c, 1, 3) for c in range(3)]


def test_the_outbox_hands_each_loop_its_jobs_events_in_order() -> None:
    import asyncio
    import threading

    from hybrid_agent.agent.serve_batch import Outbox
    from hybrid_agent.agent.serve_sampling import Sampling
    from hybrid_agent.agent.serve_scheduler import Job

    loops = [asyncio.new_event_loop() for _ in range(2)]
    threads = [threading.Thread(target=lp.run_forever, daemon=True) for lp in loops]
    for t in threads:
        t.start()
    try:
        jobs = [Job([1], [], 4, Sampling(), None, loops[i % 2]) for i in range(3)]
        outbox = Outbox()
        for job in jobs:
            job.outbox = outbox
        for k in range(4):
            for i, job in enumerate(jobs):
                job.emit("delta", f"{i}:{k}")
            if k == 1:
                time.sleep(0.05)
                assert all(job.events.empty() for job in jobs)  # nothing goes over before the flush
            if k % 2:
                outbox.flush()
        assert outbox.items == []
        for i, job in enumerate(jobs):
            got = [asyncio.run_coroutine_threadsafe(job.events.get(), job.loop).result(5) for _ in range(4)]
            assert got == [("delta", f"{i}:{k}") for k in range(4)]
    finally:
        for lp, t in zip(loops, threads, strict=True):
            lp.call_soon_threadsafe(lp.stop)
            t.join()
            lp.close()


def test_the_serve_bench_warms_each_run_before_timing_it(
    engine: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import importlib.util

    monkeypatch.setenv("HYBRID_AGENT_BATCH_ENGINE", "auto")  # the bench sets it per run: restored after

    bench = Path(__file__).resolve().parents[2] / "bench" / "gpu_serve.py"
    spec = importlib.util.spec_from_file_location("gpu_serve_bench", bench)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    solo, batched = module.decode_section(engine, [2], 3, tmp_path, ["engine"])
    assert (solo["path"], batched["path"]) == ("solo", "engine")
    # The untimed round decoded as much as the timed one; the timed one built no buffers.
    assert batched["warm_round_steps"] >= 3 and batched["server_warmup_s"] > 0
    assert batched["builds_timed"] == 0 and batched["mean_batch"] > 1
    assert solo["warm_round_steps"] == 0 and solo["join_s"] == 0  # one at a time: no batch
    # The join's phases, timed with the device synchronized at each boundary, make up most of join_s.
    phases = batched["join_phases_s"]
    assert set(phases) == set(PHASES) and all(v >= 0 for v in phases.values())
    assert 0.8 * batched["join_s"] <= sum(phases.values()) <= batched["join_s"]
    per_join = batched["join_phases_ms_per_join"]
    assert per_join == pytest.approx({p: 1e3 * v / 2 for p, v in phases.items()})  # 2 sessions, 2 joins
    assert "HYBRID_AGENT_SERVE_SYNC_PHASES" not in os.environ  # the bench's setting does not leak


@pytest.mark.parametrize("path", ["1", "0"])
def test_a_joining_rows_last_prompt_token_is_fed_by_the_batch(
    engine: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, path: str
) -> None:
    from test_serve import TOOLS

    monkeypatch.setenv("HYBRID_AGENT_BATCH_ENGINE", path)
    messages = [{"role": "user", "content": "List the files in src please."}]
    forced = {"type": "function", "function": {"name": "list_files"}}
    asks = [{}, {"tools": TOOLS, "tool_choice": forced}]  # plain; a forced call's markup fed too

    def answers(served: Any) -> list[Any]:
        out = []
        for ask in asks:
            before = served.metric("decode_steps_total")
            reply = chat(served, messages, max_tokens=48, **ask)
            out.append((*said(reply), reply.usage.completion_tokens))
            steps = served.metric("decode_steps_total") - before
            if served.app.state.scheduler.batched:  # the prompt's last token, then each generated one
                assert steps == reply.usage.completion_tokens + 1
        return out

    with serving(engine, str(tmp_path / "batch.db"), max_concurrent=2) as served:
        together = answers(served)
    with serving(engine, str(tmp_path / "solo.db"), max_concurrent=1) as solo:
        assert together == answers(solo)
    assert together[1][1] and together[1][1][0][0] == "list_files"


@pytest.mark.parametrize("path", ["1", "0"])
def test_a_short_unrestored_prompt_part_is_fed_by_the_batch_without_a_prefill(
    engine: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, path: str
) -> None:
    monkeypatch.setenv("HYBRID_AGENT_BATCH_ENGINE", path)
    real_prefill, prefilled = engine.prefill, []

    def prefill(ids: Any) -> None:  # the real engine's prefill, its calls counted
        prefilled.append(len(ids))
        real_prefill(ids)

    monkeypatch.setattr(engine, "prefill", prefill)
    from test_serve import TOOLS

    first = [{"role": "user", "content": "Show me file_3_0.py"}]
    forced = {"type": "function", "function": {"name": "list_files"}}

    def ask(served: Any, messages: list[Any], max_tokens: int = 6, **extra: Any) -> Any:
        steps, calls = served.metric("decode_steps_total"), len(prefilled)
        reply = chat(served, messages, max_tokens=max_tokens, tools=TOOLS, **extra)
        usage = reply.usage
        if served.app.state.scheduler.batched:
            assert len(prefilled) == calls  # no prefill of its own: the batch's steps fed the rest
            fed = usage.prompt_tokens - usage.prompt_tokens_details.cached_tokens
            assert served.metric("decode_steps_total") - steps == fed + usage.completion_tokens
        return reply

    def turns(served: Any) -> list[Any]:
        answer = chat(served, first, max_tokens=6, tools=TOOLS).choices[0].message
        messages = [*first, as_history(answer), {"role": "user", "content": "And x.py"}]
        out: list[Any] = [answer.content]
        for _ in range(2):  # the second turn, then the same request again (a retry)
            reply = ask(served, messages)
            usage = reply.usage
            out.append((reply.choices[0].message.content, usage.prompt_tokens,
                        usage.prompt_tokens_details.cached_tokens))  # fmt: skip
        # A third turn whose answer must start with a named call: the markup is fed after the prompt.
        messages += [as_history(reply.choices[0].message), {"role": "user", "content": "List src."}]
        message = ask(served, messages, 48, tool_choice=forced).choices[0].message
        out.append([(c.function.name, c.function.arguments) for c in message.tool_calls or ()])
        return out

    with serving(engine, str(tmp_path / "batch.db"), max_concurrent=2, join_feed_tokens=32) as served:
        together = turns(served)
        step_fed = served.metric("step_prompt_tokens_total")
    with serving(engine, str(tmp_path / "solo.db"), max_concurrent=1) as solo:
        assert together == turns(solo)  # the same answers as one at a time, prefilled
    assert together[3] and together[3][0][0] == "list_files"
    (_, prompt, cached), (_, _, retry_cached) = together[1], together[2]
    assert cached > 0 and 0 < step_fed - (prompt - 1 - cached) <= 32  # the second and third turns' rests
    # The retry restored the prompt's state that the batch saved once its steps had fed the rest: all
    # of the prompt but its last token.
    assert retry_cached == prompt - 1


def test_a_failed_save_of_a_step_fed_prompt_fails_that_request_and_the_server_goes_on(
    engine: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import openai
    from hybrid_agent.agent.serve_scheduler import Scheduler

    monkeypatch.setenv("HYBRID_AGENT_BATCH_ENGINE", "0")
    first = [{"role": "user", "content": "Show me file_5_0.py"}]
    with serving(engine, str(tmp_path / "fail.db"), max_concurrent=2, join_feed_tokens=32) as served:
        answer = chat(served, first, max_tokens=4).choices[0].message
        messages = [*first, as_history(answer), {"role": "user", "content": "And y.py"}]

        def save_prompt(self: Any, row: Any, snapshot: Any) -> None:  # the store refuses the write
            raise OSError("disk full")

        monkeypatch.setattr(Scheduler, "save_prompt", save_prompt)
        with pytest.raises(openai.InternalServerError, match="disk full"):
            chat(served, messages, max_tokens=4)
        assert _until(lambda: served.app.state.scheduler.running == 0)
        monkeypatch.undo()
        monkeypatch.setenv("HYBRID_AGENT_BATCH_ENGINE", "0")
        # The server goes on: the same request again is answered, with its prompt state saved this time.
        assert chat(served, messages, max_tokens=4).usage.completion_tokens > 0
        assert chat(served, messages, max_tokens=4).usage.prompt_tokens_details.cached_tokens > 0


@pytest.mark.parametrize("path", ["1", "0"])  # the decode engine's slots; the model's batch
def test_join_phases_make_up_the_join_time(
    engine: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, path: str
) -> None:
    """`join_<phase>_seconds_total` (agent/serve_scheduler.py `Scheduler.lap`): each phase of admitting
    a request is timed, the phases lie inside the join's time and make up most of it. With
    HYBRID_AGENT_SERVE_SYNC_PHASES=1 the device is synchronized at each boundary (on the CPU: nothing)."""
    monkeypatch.setenv("HYBRID_AGENT_BATCH_ENGINE", path)
    monkeypatch.setenv("HYBRID_AGENT_SERVE_SYNC_PHASES", "1")
    clients = 3
    with serving(engine, str(tmp_path / "batch.db"), max_concurrent=clients, max_queue=clients) as served:
        scheduler = served.app.state.scheduler
        assert scheduler.batched and scheduler.sync_phases
        with ThreadPoolExecutor(clients) as pool:
            list(pool.map(lambda c: _conversation(served, c, 2, 2), range(clients)))
        assert served.metric("state_hits_total", tier="memory") >= clients  # second turns restored
        join = served.metric("join_seconds_total")
        phases = {name: served.metric(f"join_{name}_seconds_total") for name in PHASES}
        text = served.raw("/metrics")[1]
    assert all(f"# TYPE hybrid_agent_join_{name}_seconds_total counter" in text for name in PHASES)
    assert all(seconds > 0 for seconds in phases.values()), phases
    assert 0.8 * join <= sum(phases.values()) <= join, (join, phases)
    monkeypatch.delenv("HYBRID_AGENT_SERVE_SYNC_PHASES")
    with serving(engine, None, max_concurrent=2) as served:
        assert not served.app.state.scheduler.sync_phases  # off unless asked for


def test_the_serve_bench_clients_in_processes_get_what_threads_get(engine: Any, tmp_path: Path) -> None:
    """bench/serve_clients.py: sessions streamed from two worker processes come back in the jobs'
    order with the answers, token counts and times that clients in this process get."""
    import importlib.util

    bench = Path(__file__).resolve().parents[2] / "bench" / "gpu_serve.py"
    spec = importlib.util.spec_from_file_location("gpu_serve_bench", bench)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    # Each session's read_file call of a file of its own name is answered: the model's text answer
    # starts with the name it copies, so the sessions' answers differ.
    names = ("apple.py", "whale.py", "tea.py", "room.py", "gate.py")
    jobs = [(i, 8, answered_read(name)) for i, name in enumerate(names)]
    with module.server(engine, str(tmp_path / "s.db"), max_concurrent=2, max_queue=5) as (_, client):
        url = str(client.base_url)
        with module.Clients(0) as threads:
            here = threads.run(url, engine.model_name, jobs)
        t0 = time.monotonic()
        with module.Clients(2) as procs:
            there = procs.run(url, engine.model_name, jobs)
    assert [(n, text) for _, _, n, text in there] == [(n, text) for _, _, n, text in here]
    assert len({text for *_, text in here}) > 1  # the sessions' answers differ: the order is checked
    assert all(t0 <= first <= end <= time.monotonic() for first, end, _, _ in there)  # one clock


@pytest.mark.parametrize("overlap", ["1", "0"])
def test_rows_take_their_tokens_while_the_step_runs(
    engine: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, overlap: str
) -> None:
    """agent/serve_batch.py `BatchLoop._step`: the step is queued on the device first, then each row
    takes its token on the host (detokenise, stop strings, events), then the loop waits for the step:
    the host work overlaps the device's. HYBRID_AGENT_STEP_OVERLAP=0 takes them before the step (the
    order to compare with). The answers stay those of a client alone either way."""
    from hybrid_agent.agent import serve_batch
    from hybrid_agent.agent.serve_rows import ModelRows
    from hybrid_agent.agent.serve_scheduler import Row

    monkeypatch.setenv("HYBRID_AGENT_BATCH_ENGINE", "0")
    monkeypatch.setenv("HYBRID_AGENT_STEP_OVERLAP", overlap)
    with serving(engine, str(tmp_path / "solo.db"), max_concurrent=1) as solo:
        alone = [_conversation(solo, c, 1, 3) for c in range(2)]
    log: list[str] = []
    step, take, wait = ModelRows.step, Row.take, serve_batch.wait_for_model
    monkeypatch.setattr(ModelRows, "step", lambda self, toks: (log.append("step"), step(self, toks))[1])
    monkeypatch.setattr(Row, "take", lambda self, tok: (log.append("take"), take(self, tok))[1])
    monkeypatch.setattr(serve_batch, "wait_for_model", lambda device: (log.append("wait"), wait(device))[1])
    with serving(engine, str(tmp_path / "batch.db"), max_concurrent=2, max_queue=2) as served:
        with ThreadPoolExecutor(2) as pool:
            together = list(pool.map(lambda c: _conversation(served, c, 1, 3), range(2)))
        assert served.metric("rows_seconds_total") > 0
    assert together == alone
    steps = "".join("s" if e == "step" else "t" if e == "take" else "w" for e in log)
    # Overlapped: every step is followed by its rows' takes (any number: none while joining rows feed
    # their prompt) and then its wait; no take ever comes between a wait and the next step. Not
    # overlapped: the takes come before their step.
    import re

    assert steps and re.fullmatch(r"(st*w)+" if overlap == "1" else r"(t*sw)+", steps), steps
    assert "t" in steps
