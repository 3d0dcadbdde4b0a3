"""Several tokens per trip to the model's thread (agent/decode_steps.py) change no output: the same
text, the same other events, the same state and history as one token per trip."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hybrid_agent.agent import decode_steps
from hybrid_agent.agent.events import PrefillProgress, TextDelta

# Longer than SINGLE_TOKENS, with multi-byte characters split over byte tokens and marker-like text.
LONG = "".join(f"w{i} ünï 日本 <b>x</b> <|" for i in range(30))


def call(name: str, **arguments: Any) -> str:
    return "<|tool_call|>" + json.dumps({"name": name, "arguments": arguments}) + "<|/tool_call|>"


REPLIES = [
    LONG + "<|end|>",
    LONG[:150] + call("read_file", path="a.txt"),
    LONG[:77] + "<|end|>",
    LONG,  # no stop: the token limit ends it
]


def merged(events: list[Any]) -> list[dict[str, Any]]:
    """The events with adjacent text deltas joined, less what differs between any two runs (times,
    ids, and prefill progress: the second session reads its system segment from the prefix cache)."""
    out: list[dict[str, Any]] = []
    for e in events:
        if isinstance(e, PrefillProgress):
            continue
        d = e.model_dump(exclude={"session_id", "call_id", "tokens_per_s", "duration_s"})
        if isinstance(e, TextDelta) and out and out[-1]["kind"] == "text":
            out[-1]["text"] += d["text"]
        else:
            out.append(d)
    return out


def session(make_agent: Any) -> tuple[list[list[Any]], Any, Any]:
    agent, engine = make_agent(list(REPLIES), max_new_tokens=len(LONG.encode()) // 2)
    turns = [list(agent.send_sync(text)) for text in ("one", "two", "three")]
    return turns, agent, engine


@pytest.mark.parametrize("budget", [0.0, 10.0])
def test_batched_decoding_gives_the_same_events_state_and_history(make_agent, monkeypatch, budget) -> None:
    one_by_one, ref_agent, ref = session(make_agent)  # BATCH_S as shipped: mostly batched

    def batch(budget_s: float) -> Any:
        real = decode_steps.write_tokens

        def write(*args: Any) -> Any:
            return real(*args, budget_s=budget_s)

        return write

    import hybrid_agent.agent.loop as loop

    # budget 0: one token per trip, what the loop did before batching; 10 s: a whole message per trip
    monkeypatch.setattr(loop, "write_tokens", batch(budget))
    turns, agent, engine = session(make_agent)
    assert [merged(t) for t in turns] == [merged(t) for t in one_by_one]
    assert engine.tokens == ref.tokens
    assert [(e.kind, e.content) for e in agent.history()] == [
        (e.kind, e.content) for e in ref_agent.history()
    ]
    text = [e for e in turns[0] if isinstance(e, TextDelta)]
    assert (len(text) > 20) == (budget == 0.0)  # the switch did what it says
    assert turns[-1][-1].stop_reason == "max_tokens"
