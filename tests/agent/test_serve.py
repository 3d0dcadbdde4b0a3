"""`hybrid-agent serve` with the official `openai` client against a real uvicorn server on loopback, the
packaged default model on the CPU (agent/serve_app.py, serve_scheduler.py, serve_prefix.py)."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

import openai
import pytest

sys.path.insert(0, str(Path(__file__).parent))
from serve_testkit import ANSWERED, READ, as_history, assert_same_answer, called, chat, said, serving, tokens

TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "list_files",
            "description": "List the files of a folder",
            "parameters": {
                "type": "object",
                "properties": {"path": {"type": "string"}},
                "required": ["path"],
            },
        },
    }
]


@pytest.fixture(scope="module")
def engine() -> Any:
    from hybrid_agent.agent.factory import load_engine

    return load_engine(None)


def _db(tmp_path: Path, name: str = "serve.db") -> str:
    return str(tmp_path / name)


def test_second_turn_reuses_the_first_and_answers_as_a_fresh_prefill(engine: Any, tmp_path: Path) -> None:
    first = [{"role": "user", "content": "Show me main.py"}]
    with serving(engine, _db(tmp_path), max_new_tokens=64) as served:
        a1, convo = called(served, first)  # a whole answer, a call, whichever model is packaged
        a2 = chat(served, convo, tools=[READ], logprobs=True)
        assert a1.usage.prompt_tokens_details.cached_tokens == 0
        # Everything of turn one, its answer included, is restored rather than prefilled.
        assert (
            a2.usage.prompt_tokens_details.cached_tokens
            == a1.usage.prompt_tokens + a1.usage.completion_tokens
        )
        assert served.metric("state_hits_total", tier="memory") == 1
        assert served.metric("state_misses_total") == 1
    with serving(engine, _db(tmp_path, "fresh.db"), max_new_tokens=64) as fresh:
        b2 = chat(fresh, convo, tools=[READ], logprobs=True)
        assert b2.usage.prompt_tokens_details.cached_tokens == 0
    assert b2.usage.prompt_tokens == a2.usage.prompt_tokens
    # greedy: the same answer as a full prefill, token by token
    assert_same_answer(b2, a2)


def test_streaming_equals_the_plain_answer_and_a_retry_reuses_the_prompt(engine: Any, tmp_path: Path) -> None:
    messages = [{"role": "user", "content": "Explain what a hybrid model is."}]
    with serving(engine, _db(tmp_path), max_new_tokens=20) as served:
        plain = chat(served, messages)
        chunks = list(chat(served, messages, stream=True, stream_options={"include_usage": True}))
        text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        finish = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
        usage = chunks[-1].usage
    assert text == (plain.choices[0].message.content or "")
    assert finish == [plain.choices[0].finish_reason]
    # The same request again restores the prompt's state one token short of its end.
    assert usage.prompt_tokens == plain.usage.prompt_tokens
    assert usage.prompt_tokens_details.cached_tokens == plain.usage.prompt_tokens - 1


def test_tool_calls_in_openai_shape_and_the_tool_result_turn_reuses_state(
    engine: Any, tmp_path: Path
) -> None:
    messages = [{"role": "user", "content": "List the files in src please."}]
    with serving(engine, _db(tmp_path), max_new_tokens=48) as served:
        a1 = chat(
            served,
            messages,
            tools=TOOLS,
            tool_choice={"type": "function", "function": {"name": "list_files"}},
        )
        choice = a1.choices[0]
        assert choice.finish_reason == "tool_calls"
        call = choice.message.tool_calls[0]
        assert call.type == "function" and call.function.name == "list_files" and call.id
        assert isinstance(json.loads(call.function.arguments), dict)
        streamed = list(
            chat(
                served,
                messages,
                tools=TOOLS,
                tool_choice={"type": "function", "function": {"name": "list_files"}},
                stream=True,
            )
        )
        deltas = [tc for c in streamed if c.choices for tc in (c.choices[0].delta.tool_calls or [])]
        assert [(d.function.name, d.function.arguments) for d in deltas] == [
            (call.function.name, call.function.arguments)
        ]
        assert streamed[-1].choices[0].finish_reason == "tool_calls"
        result = {"role": "tool", "tool_call_id": call.id, "content": "Makefile\nREADME.md"}
        a2 = chat(served, [*messages, as_history(choice.message), result], tools=TOOLS)
        assert (
            a2.usage.prompt_tokens_details.cached_tokens
            == a1.usage.prompt_tokens + a1.usage.completion_tokens
        )


def test_a_restart_reuses_states_from_the_database(engine: Any, tmp_path: Path) -> None:
    first = [{"role": "user", "content": "hi"}]
    with serving(engine, _db(tmp_path), max_new_tokens=64) as served:
        a1 = chat(served, first)
    # A graceful shutdown wrote the states; a new process (its memory tier empty) finds them.
    convo = [*first, as_history(a1.choices[0].message), {"role": "user", "content": "Read README.md"}]
    with serving(engine, _db(tmp_path), max_new_tokens=64) as served:
        a2 = chat(served, convo)
        assert served.metric("state_hits_total", tier="database") == 1
    assert a2.usage.prompt_tokens_details.cached_tokens == a1.usage.prompt_tokens + a1.usage.completion_tokens


def test_bad_input_gets_openai_shaped_errors(engine: Any, tmp_path: Path) -> None:
    ok = {"model": "default", "messages": [{"role": "user", "content": "hi"}]}
    with serving(engine, None, api_key="sekrit", max_prompt_tokens=64) as served:
        auth = {"Authorization": "Bearer sekrit", "Content-Type": "application/json"}
        status, body = served.raw("/v1/chat/completions", b'{"model": "default", "messages": [', auth)
        assert status == 400 and body["error"]["type"] == "invalid_request_error"
        assert "not valid JSON" in body["error"]["message"]
        status, body = served.raw("/v1/chat/completions", json.dumps({**ok, "messages": []}).encode(), auth)
        assert status == 400 and body["error"]["param"] == "messages"
        with pytest.raises(openai.AuthenticationError):
            openai.OpenAI(base_url=served.url + "/v1", api_key="wrong", max_retries=0).models.list()
        status, _ = served.raw(
            "/v1/chat/completions", json.dumps(ok).encode(), {"Content-Type": "application/json"}
        )
        assert status == 401
        with pytest.raises(openai.NotFoundError, match="does not exist"):
            served.client.chat.completions.create(model="gpt-4", messages=ok["messages"])
        bad_tool = {
            "type": "function",
            "function": {"name": "f", "parameters": {"type": "object", "properties": 3}},
        }
        with pytest.raises(openai.BadRequestError, match="not a valid JSON Schema"):
            chat(served, ok["messages"], tools=[bad_tool])
        with pytest.raises(openai.BadRequestError, match="--max-prompt-tokens"):
            chat(served, [{"role": "user", "content": "word " * 200}])
        with pytest.raises(openai.BadRequestError, match="last message"):
            chat(served, [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}])
        assert [m.id for m in served.client.models.list().data] == ["default"]
        assert served.raw("/health")[1]["status"] == "ok"
        status, text = served.raw("/metrics", headers=auth)
        assert status == 200 and 'hybrid_agent_requests_total{code="400"}' in text
        names = ("prompt_tokens_total", "completion_tokens_total", "state_hits_total", "state_misses_total")
        for name in (*names, "restore_seconds_total", "queue_depth"):
            assert f"# TYPE hybrid_agent_{name} " in text


def _until(condition: Any, seconds: float = 10) -> bool:
    deadline = time.monotonic() + seconds
    while not condition() and time.monotonic() < deadline:
        time.sleep(0.02)
    return bool(condition())


@pytest.mark.parametrize("concurrent", [1, 2])  # one at a time on the engine; in a batch
def test_full_slots_get_429_and_a_disconnect_frees_the_slot(engine: Any, concurrent: int) -> None:
    from concurrent.futures import ThreadPoolExecutor

    messages = [{"role": "user", "content": "Count."}]
    endless_kw: dict[str, Any] = {"stream": True, "max_tokens": 100_000, "extra_body": {"ignore_eos": True}}
    with (
        serving(engine, None, max_concurrent=concurrent, max_queue=1) as served,
        ThreadPoolExecutor(1) as pool,
    ):
        scheduler = served.app.state.scheduler
        endless = [chat(served, messages, **endless_kw) for _ in range(concurrent)]
        try:
            assert _until(lambda: scheduler.running == concurrent)  # every slot decoding
            waiting = pool.submit(chat, served, messages, max_tokens=2)  # queued behind them
            assert _until(lambda: "hybrid_agent_queue_depth 1.0" in served.raw("/metrics")[1])
            assert f"hybrid_agent_running_requests {float(concurrent)}" in served.raw("/metrics")[1]
            with pytest.raises(openai.RateLimitError, match="full"):
                chat(served, messages, max_tokens=2)
        finally:
            for stream in endless:
                stream.close()  # the client goes away: its generation stops and its slot is free again
        assert waiting.result(timeout=30).usage.completion_tokens == 2
        assert chat(served, messages, max_tokens=2).usage.completion_tokens == 2
        generated = served.metric("completion_tokens_total")
    assert generated < 100_000


def _conversation(served: Any, client: int, turns: int, max_tokens: int) -> list[tuple[Any, Any]]:
    """One client's conversation: each turn's answer (content, tool calls, every token), the log
    probabilities of each token and of its top alternatives (a state mixed up with another row's shows
    in them even where the model picks the same tokens), and its cached tokens."""
    messages: list[dict[str, Any]] = []
    out = []
    for turn in range(turns):
        messages.append({"role": "user", "content": f"Show me file_{client}_{turn}.py"})
        answer = chat(served, messages, max_tokens=max_tokens, logprobs=True, top_logprobs=3)
        probs = [
            [e.logprob, *(t.logprob for t in e.top_logprobs)] for e in answer.choices[0].logprobs.content
        ]
        cached = answer.usage.prompt_tokens_details.cached_tokens
        out.append(((said(answer), tokens(answer)), probs, cached))
        messages.append(as_history(answer.choices[0].message))
    return out


def _load(engine: Any, tmp_path: Path, clients: int, turns: int, max_tokens: int) -> None:
    from concurrent.futures import ThreadPoolExecutor

    # Alone: one request at a time on the engine (no batch), each client's conversation on its own.
    with serving(engine, _db(tmp_path, "solo.db"), max_concurrent=1) as solo:
        assert not solo.app.state.scheduler.batched
        alone = [_conversation(solo, c, turns, max_tokens) for c in range(clients)]
    with serving(engine, _db(tmp_path), max_concurrent=clients, max_queue=clients) as served:
        with ThreadPoolExecutor(clients) as pool:
            together = list(pool.map(lambda c: _conversation(served, c, turns, max_tokens), range(clients)))
        assert served.metric("requests_total", code="200") == clients * turns
        assert served.app.state.scheduler.peak_batch > 1  # requests did decode together
    for c in range(clients):
        assert [a for a, _, _ in together[c]] == [a for a, _, _ in alone[c]], f"client {c}'s answers changed"
        for (_, got, _), (_, want, _) in zip(together[c], alone[c], strict=True):
            assert got == [pytest.approx(p, abs=1e-3) for p in want], (
                f"client {c}'s log probabilities changed"
            )
        assert all(cached > 0 for _, _, cached in together[c][1:])  # every later turn restored its state


def test_concurrent_clients_get_their_solo_answers(engine: Any, tmp_path: Path) -> None:
    # 8 tokens: all of the file name the model repeats ("file_3_0.py"), which is each client's own
    _load(engine, tmp_path, clients=4, turns=2, max_tokens=8)  # ~0.2 s a request on this CPU


@pytest.mark.slow
def test_load_32_clients_20_turns(engine: Any, tmp_path: Path) -> None:
    _load(engine, tmp_path, clients=32, turns=20, max_tokens=12)


def test_two_servers_on_one_database_are_one_service(engine: Any, tmp_path: Path) -> None:
    # Turn one must be a text answer whose state turn two restores whole: call markup written with no
    # tools offered comes back as text, which renders back differently, so its state is not saved
    # (agent/serve_scheduler.py `end`). An answered call steers the model to a short text answer.
    with serving(engine, _db(tmp_path), max_new_tokens=32) as a, serving(engine, _db(tmp_path)) as b:
        a1 = chat(a, ANSWERED)
        assert a1.choices[0].finish_reason == "stop", a1.choices[0].message
        a.app.state.prefix.flush()  # on the database (a second later without this)
        convo = [*ANSWERED, as_history(a1.choices[0].message), {"role": "user", "content": "Read README.md"}]
        b2 = chat(b, convo, max_tokens=8, logprobs=True)
        assert b.metric("state_hits_total", tier="database") == 1
        assert (
            b2.usage.prompt_tokens_details.cached_tokens
            == a1.usage.prompt_tokens + a1.usage.completion_tokens
        )
        b.app.state.prefix.flush()
        # Back on the first: its memory tier has turn one, but the database has more (the second's
        # prompt, saved one token short of its end), and the longest prefix wins.
        a2 = chat(a, convo, max_tokens=8, logprobs=True)
        assert a.metric("state_hits_total", tier="database") == 1
        assert a2.usage.prompt_tokens_details.cached_tokens == b2.usage.prompt_tokens - 1
    assert_same_answer(a2, b2)


def _start_process(db: str, tmp_path: Path, name: str) -> tuple[Any, str]:
    """`hybrid-agent serve --port 0` in a process of its own; its base URL from the line it prints."""
    import subprocess

    log = open(tmp_path / f"{name}.log", "w+b")  # noqa: SIM115 (closed by the caller with the process)
    cmd = [sys.executable, "-m", "hybrid_agent", "serve", "--port", "0", "--db", db, "--max-new-tokens", "32"]
    proc = subprocess.Popen(cmd, stderr=log, stdout=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        text = (tmp_path / f"{name}.log").read_text()
        if "serving" in text:
            return proc, text.split("on ", 1)[1].split()[0]
        assert proc.poll() is None, text
        time.sleep(0.1)
    proc.kill()
    raise AssertionError("the server did not start")


def _pg_or_sqlite(request: pytest.FixtureRequest, tmp_path: Path) -> Any:
    import os
    import uuid

    if request.param == "sqlite":
        yield str(tmp_path / "shared.db")
        return
    server = os.environ.get("HYBRID_AGENT_TEST_PG_URL")
    if not server:
        pytest.skip("set HYBRID_AGENT_TEST_PG_URL=postgresql+psycopg://USER@HOST:PORT/DB to run")
    import sqlalchemy as sa

    admin = sa.create_engine(server, isolation_level="AUTOCOMMIT")
    name = f"hybrid_agent_serve_{uuid.uuid4().hex[:12]}"
    with admin.connect() as conn:
        conn.exec_driver_sql(f'CREATE DATABASE "{name}"')
    try:
        yield sa.make_url(server).set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as conn:
            conn.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.dispose()


shared_db = pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])(
    _pg_or_sqlite
)


@pytest.mark.slow
def test_two_processes_on_one_database(shared_db: str, tmp_path: Path) -> None:
    import signal

    a, url_a = _start_process(shared_db, tmp_path, "a")
    b, url_b = _start_process(shared_db, tmp_path, "b")
    try:
        client_a, client_b = (openai.OpenAI(base_url=u, api_key="-", max_retries=0) for u in (url_a, url_b))
        # A text answer, whose state is saved whole (as in test_two_servers_on_one_database_are_one_service)
        a1 = client_a.chat.completions.create(model="default", messages=ANSWERED)
        assert a1.choices[0].finish_reason == "stop", a1.choices[0].message
        convo = [*ANSWERED, as_history(a1.choices[0].message), {"role": "user", "content": "Read README.md"}]
        time.sleep(1.0)  # the first process's writer thread puts the states in the database
        b2 = client_b.chat.completions.create(model="default", messages=convo)
        assert (
            b2.usage.prompt_tokens_details.cached_tokens
            == a1.usage.prompt_tokens + a1.usage.completion_tokens
        )
    finally:
        for proc in (a, b):
            proc.send_signal(signal.SIGTERM)
        codes = [proc.wait(60) for proc in (a, b)]
    # A graceful stop (uvicorn re-raises the signal once it has shut down), states all written.
    assert codes == [-signal.SIGTERM] * 2
    assert "Traceback" not in (tmp_path / "a.log").read_text() + (tmp_path / "b.log").read_text()
    from hybrid_agent.memory import Store
    from hybrid_agent.memory.prefixes import PrefixIndex

    with Store(shared_db) as store:
        assert PrefixIndex(store).count() >= 3  # a's prompt and answer, b's prompt (and its answer)


@pytest.mark.slow
def test_gpu_serve_bench_smoke(tmp_path: Path) -> None:
    import subprocess

    bench = Path(__file__).resolve().parents[2] / "bench" / "gpu_serve.py"
    out = tmp_path / "serve.json"
    subprocess.run(
        [sys.executable, str(bench), "--smoke", "--device", "cpu", "--out", str(out)], check=True, timeout=300
    )
    result = json.loads(out.read_text())
    decode = result["decode"]
    assert [(r["sessions"], r["path"]) for r in decode] == [
        (1, "solo"), (1, "engine"), (1, "model"), (4, "engine"), (4, "model")
    ]  # fmt: skip
    assert decode[3]["mean_batch"] > 1 and decode[4]["mean_batch"] > 1
    for row in decode[1:]:  # batched: the join's time by phase (device-synced), within join_s
        phases = row["join_phases_s"]
        assert set(phases) == {"restore", "setup", "prefill", "save", "load"}
        assert all(v >= 0 for v in phases.values()) and sum(phases.values()) <= row["join_s"]
        assert set(row["join_phases_ms_per_join"]) == set(phases)
    back = result["returning"]
    assert back["memory_cached"] > 0 and back["database_cached"] > 0 and back["prefill_cached"] == 0
    assert back["gpu_cached"] == back["memory_cached"] == back["database_cached"]  # the first turn, whole
    assert back["gpu_hits"] == back["memory_hits"] == back["database_hits"] == 1
    assert 0 < back["gpu_tier_bytes"] <= back["gpu_tier_capacity_bytes"] == 1 << 30
    # the history is the asked length (--smoke: 1024 tokens), not a tokenizer-dependent multiple of it
    assert 1024 * 0.9 <= back["prompt_tokens"] <= 1024 * 1.25
    # each request's first token by phase (ms), summing to its latency; the restored ones looked up and
    # restored a state, the re-prefill prefilled the whole history
    for tag, total in [("gpu", "gpu_s"), ("gpu_synced", "gpu_synced_s"), ("memory", "memory_s"),
                       ("database", "database_s"), ("prefill", "prefill_s"),
                       ("prefill_sync", "prefill_sync_s")]:  # fmt: skip
        phases = back["phases_ms"][tag]
        assert set(phases) == {"render", "queue", "lookup", "restore_copy", "setup", "prefill", "save",
                               "first_choice", "finish", "other"}  # fmt: skip
        assert abs(sum(phases.values()) - 1e3 * back[total]) < 0.1
        assert phases["render"] > 0 and phases["lookup"] > 0 and phases["finish"] > 0 and phases["other"] > 0
    restored, fresh = back["phases_ms"]["gpu"], back["phases_ms"]["prefill"]
    assert fresh["prefill"] > restored["prefill"]
    # The fresh servers' first token, the save's part of it, the writer's host copies (none on the CPU:
    # not staged there by default) and the wait for the database after the answer, each measured.
    for tag in ("prefill", "prefill_sync"):
        assert back[f"{tag}_cached"] == 0 and back[f"{tag}_staged_saves"] == 0
        assert 0 < back[f"{tag}_save_s"] < back[f"{tag}_first_token_s"] < back[f"{tag}_s"]
        assert back[f"{tag}_host_copy_s"] == 0 and back[f"{tag}_saved_after_s"] >= 0


def test_gpu_serve_bench_sections(tmp_path: Path) -> None:
    """An unknown section is refused in one line before any model loads; `--sections returning` runs
    that section alone (the device script runs transformers' side as a step of its own)."""
    import subprocess

    bench = Path(__file__).resolve().parents[2] / "bench" / "gpu_serve.py"
    bad = subprocess.run(
        [sys.executable, str(bench), "--sections", "decode,speed", "--out", str(tmp_path / "x.json")],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert (
        bad.returncode == 2 and "--sections takes decode and/or returning; got 'decode,speed'" in bad.stderr
    )
    assert "Traceback" not in bad.stderr and not (tmp_path / "x.json").exists()


def test_a_plain_request_whose_client_leaves_is_cancelled(engine: Any) -> None:
    import socket

    with serving(engine, None, max_concurrent=2) as served:
        body = json.dumps(
            {
                "model": "default",
                "messages": [{"role": "user", "content": "Count."}],
                "max_tokens": 100_000,
                "ignore_eos": True,
            }
        ).encode()
        port = int(served.url.rsplit(":", 1)[1])
        with socket.create_connection(("127.0.0.1", port)) as conn:
            head = "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            head += f"Content-Length: {len(body)}\r\n\r\n"
            conn.sendall(head.encode() + body)
            scheduler = served.app.state.scheduler
            assert _until(lambda: scheduler.running == 1)
        # Closed: the server notices within a poll and stops decoding.
        assert _until(lambda: scheduler.running == 0)


def test_the_command_says_in_one_line_when_the_port_is_taken(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import socket

    from hybrid_agent.agent.cli import main

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        code = main(["serve", "--port", str(port), "--db", str(tmp_path / "s.db")])
    err = capsys.readouterr().err.strip()
    assert code != 0 and len(err.splitlines()) == 1
    assert f"cannot listen on 127.0.0.1:{port}" in err and "--port" in err


def test_evicted_states_are_a_fresh_prefill_and_the_bytes_stay_bounded(engine: Any, tmp_path: Path) -> None:
    """The retention policy (memory/prefix_retention.py) under the real server: the memory tier holds
    nothing here, so every reuse comes from the database."""

    def conversation(i: int) -> list[dict[str, Any]]:
        return [{"role": "user", "content": f"Show me file_{i}.py"}]

    def follow_up(served: Any, i: int, answer: Any) -> Any:
        convo = [*conversation(i), as_history(answer.choices[0].message), {"role": "user", "content": "Why?"}]
        return chat(served, convo, max_tokens=4, logprobs=True)

    with serving(engine, _db(tmp_path), max_new_tokens=8) as unbounded:
        first = chat(unbounded, conversation(0))
        unbounded.app.state.prefix.flush()
        one = unbounded.app.state.prefix.index.stored_bytes()  # a conversation's prompt and answer
    assert one > 0
    # A server whose bound is under what is stored evicts at start; then every state right after it
    # is written. A follow-up is prefilled afresh and answers as on a fresh database.
    with serving(engine, _db(tmp_path), memory_tier_bytes=1, prefix_max_bytes=0) as none_kept:
        prefix = none_kept.app.state.prefix
        prefix.flush()
        assert prefix.index.count() == 0
        again = follow_up(none_kept, 0, first)
        prefix.flush()
        assert prefix.index.stored_bytes() == 0
    with serving(engine, _db(tmp_path, "fresh.db"), max_new_tokens=8) as fresh:
        expected = follow_up(fresh, 0, first)
    assert again.usage.prompt_tokens_details.cached_tokens == 0
    assert_same_answer(again, expected)
    # Room for about two conversations: the least recently used go, the bound holds after each one.
    bound = 5 * one // 2
    with serving(engine, _db(tmp_path, "lru.db"), memory_tier_bytes=1, prefix_max_bytes=bound) as served:
        prefix = served.app.state.prefix
        answers = []
        for i in range(4):
            answers.append(chat(served, conversation(i), max_tokens=8))
            prefix.flush()
            assert prefix.index.stored_bytes() <= bound
        assert prefix.evicted > 0
        newest, oldest = follow_up(served, 3, answers[3]), follow_up(served, 0, answers[0])
    assert newest.usage.prompt_tokens_details.cached_tokens > 0
    assert oldest.usage.prompt_tokens_details.cached_tokens == 0


def test_a_state_another_server_evicted_is_no_error_on_either(engine: Any, tmp_path: Path) -> None:
    first = [{"role": "user", "content": "Show me main.py"}]
    with serving(engine, _db(tmp_path), max_new_tokens=16) as a:
        a1, convo = called(a, first)  # a whole answer, a call, whichever model is packaged
        a.app.state.prefix.flush()
        with serving(engine, _db(tmp_path), memory_tier_bytes=1, prefix_max_bytes=0) as b:
            b.app.state.prefix.flush()  # its start evicted every state, a's included
            assert b.app.state.prefix.index.count() == 0
            # a still holds turn one in memory, and continues it
            a2 = chat(a, convo, tools=[READ], max_tokens=8, logprobs=True)
            assert (
                a2.usage.prompt_tokens_details.cached_tokens
                == a1.usage.prompt_tokens + a1.usage.completion_tokens
            )
            a.app.state.prefix.flush()
            assert a.app.state.prefix.write_errors == 0 and a.app.state.prefix.index.count() > 0
            b2 = chat(
                b, convo, tools=[READ], max_tokens=8, logprobs=True
            )  # from a's new states, stored whole
            assert b.metric("state_hits_total", tier="database") == 1
            assert b2.usage.prompt_tokens_details.cached_tokens == a2.usage.prompt_tokens - 1
    assert_same_answer(b2, a2)
