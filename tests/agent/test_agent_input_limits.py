"""What a turn does with input it should not read whole: a message (or a tool's output) over
`max_prompt_tokens` is refused before any of it is read, a long one reports its progress, and a
resume takes an id prefix. Scripted engine (tests/agent/conftest.py) over the real Store."""

from __future__ import annotations

import json
from typing import Any

from hybrid_agent.agent.engine import PREFILL_CHUNK
from hybrid_agent.agent.events import ErrorEvent, PrefillProgress, TurnEnd
from hybrid_agent.agent.prefill import DEFAULT_MAX_PROMPT_TOKENS, MAX_CHARS_PER_TOKEN
from hybrid_agent.tools import tool


def test_a_message_over_the_default_limit_is_refused_unread(make_agent) -> None:
    agent, engine = make_agent(["never<|end|>"])
    events = agent.send_sync("x" * (DEFAULT_MAX_PROMPT_TOKENS + 1))  # a byte tokenizer: > the limit
    assert len(events) == 1 and isinstance(events[0], ErrorEvent)
    assert events[0].message.startswith("the message with the system prompt is ")
    assert "over the limit of 32,768 (--max-prompt-tokens)" in events[0].message
    assert engine.tokens == [] and agent.turn == 0  # nothing read, nothing saved
    assert isinstance(agent.send_sync("short")[-1], TurnEnd)  # the session goes on


def test_a_huge_message_is_refused_before_it_is_tokenized(make_agent) -> None:
    agent, engine = make_agent(["never<|end|>"], max_prompt_tokens=10)
    encoded: list[Any] = []
    encode = engine.encode
    engine.encode = lambda segment: encoded.append(segment) or encode(segment)
    (error,) = agent.send_sync("x" * (10 * MAX_CHARS_PER_TOKEN + 1))
    assert isinstance(error, ErrorEvent), error
    assert "641 characters, far over the limit of 10 tokens" in error.message
    assert encoded == [] and engine.tokens == [] and agent.turn == 0


def test_a_tool_output_over_the_limit_ends_the_turn_at_its_last_snapshot(make_agent) -> None:
    @tool(policy="auto")
    def dump() -> str:
        """Print a lot."""
        return "y" * 9000

    call = json.dumps({"name": "dump", "arguments": {}})
    agent, engine = make_agent([f"<|tool_call|>{call}<|/tool_call|>"], max_prompt_tokens=8000)
    agent.registry.register(dump)
    events = agent.send_sync("dump it")
    assert isinstance(events[-1], ErrorEvent) and events[-1].message.startswith("the tool output is "), events
    assert engine.tokens == [] and agent.turn == 0


def test_a_long_message_reports_prefill_progress(make_agent) -> None:
    agent, _ = make_agent(["ok<|end|>"])
    seen: list[Any] = []
    events = agent.send_sync("z" * (2 * PREFILL_CHUNK + 100), on_event=seen.append)
    assert seen == events  # the callback saw every event, in order, as it happened
    progress = [e for e in events if isinstance(e, PrefillProgress)]
    assert [p.tokens for p in progress][:2] == [PREFILL_CHUNK, 2 * PREFILL_CHUNK]
    assert progress[-1].tokens == progress[-1].total == events[-1].prompt_tokens
    assert all(p.tokens_per_s > 0 for p in progress)
    assert not any(isinstance(e, PrefillProgress) for e in agent.send_sync("short"))


def test_send_sync_runs_the_turn_without_being_iterated(make_agent, store) -> None:
    agent, _ = make_agent(["done<|end|>"])
    agent.send_sync("hi")
    assert agent.turn == 1 and store.get_session(agent.session_id).latest_turn == 1


def test_resume_takes_a_unique_id_prefix(make_agent) -> None:
    agent, _ = make_agent(["one<|end|>"])
    agent.send_sync("hi")
    first = agent.session_id
    agent.new_session()
    agent.resume(first[:8])
    assert agent.session_id == first and agent.turn == 1
