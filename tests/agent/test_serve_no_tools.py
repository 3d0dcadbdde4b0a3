"""A request that offers no tools (none, or `tool_choice: "none"`) gets text: call markup the model
writes anyway stays in `content` and in the streamed deltas, as vLLM leaves it, never `tool_calls` the
client did not offer (agent/serve_scheduler.py `Scheduler.end`). With the official `openai` client on a
real server on loopback, the packaged default model on the CPU, alone on the engine and in a batch."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).parent))
from serve_testkit import READ, assert_same_answer, chat, serving, tokens

# Asks the packaged model writes a call for even with no tools in its prompt; the first that does is
# used. What it wrote is read from the answer's logprobs (every token it chose, markup included), so
# the test cannot pass on text without markup: if no ask gets markup, it fails saying so.
ASKS = ["List the files in src please.", "List the files in tests please.", "Show me the files in docs."]
NO_TOOLS: list[dict[str, Any]] = [{}, {"tools": [READ], "tool_choice": "none"}]


@pytest.fixture(scope="module")
def engine() -> Any:
    from hybrid_agent.agent.factory import load_engine

    return load_engine(None)


def _written(answer: Any) -> str:
    """What the model wrote, token by token, as text."""
    return b"".join(bytes(t) for t in tokens(answer)).decode("utf-8", errors="replace")


def _ask_with_markup(served: Any, open_marker: str) -> tuple[list[dict[str, str]], Any]:
    for ask in ASKS:
        messages = [{"role": "user", "content": ask}]
        answer = chat(served, messages, logprobs=True, max_tokens=40)
        if open_marker in _written(answer):
            return messages, answer
    pytest.fail(f"the packaged model wrote no {open_marker} for any of {ASKS}: add an ask it calls for")


@pytest.mark.parametrize("concurrent", [1, 2])  # alone on the engine; in a batch
def test_markup_without_tools_offered_is_content_not_tool_calls(engine: Any, concurrent: int) -> None:
    chat_format = engine.chat
    with serving(engine, None, max_concurrent=concurrent) as served:
        assert served.app.state.scheduler.batched == (concurrent > 1)
        messages, first = _ask_with_markup(served, chat_format.tool_call_open)
        written = _written(first)
        expected = chat_format.plain_text(written)  # all of it, but a stop string that ended it
        assert chat_format.tool_call_close in expected  # a whole call, open to close
        for kwargs in NO_TOOLS:
            answer = chat(served, messages, logprobs=True, max_tokens=40, **kwargs)
            choice = answer.choices[0]
            assert _written(answer) == written  # the same prompt: tools "none" leaves them out of it
            assert choice.message.content == expected and not choice.message.tool_calls
            assert choice.finish_reason in ("stop", "length")
            chunks = list(chat(served, messages, max_tokens=40, stream=True, **kwargs))
            deltas = [c.choices[0].delta for c in chunks if c.choices]
            assert "".join(d.content or "" for d in deltas) == expected
            assert not any(d.tool_calls for d in deltas)
            assert chunks[-1].choices[0].finish_reason == choice.finish_reason
        # Offered, the same kind of markup is a call.
        offered = chat(served, messages, tools=[READ], max_tokens=40).choices[0]
        assert offered.finish_reason == "tool_calls" and offered.message.tool_calls


def test_the_text_answer_sent_back_continues_as_a_fresh_prefill(engine: Any, tmp_path: Path) -> None:
    """The markup in `content` renders back as text, not as the markers the model decoded, so the
    state after the answer is not the conversation's: the next turn must not start from it."""
    with serving(engine, str(tmp_path / "serve.db")) as served:
        messages, first = _ask_with_markup(served, engine.chat.tool_call_open)
        reply = {"role": "assistant", "content": first.choices[0].message.content}
        follow = [*messages, reply, {"role": "user", "content": "Thanks. Now show me main.py"}]
        again = chat(served, follow, logprobs=True, max_tokens=16)
        assert again.usage.prompt_tokens_details.cached_tokens < (
            first.usage.prompt_tokens + first.usage.completion_tokens
        )
    with serving(engine, None) as fresh:
        assert_same_answer(again, chat(fresh, follow, logprobs=True, max_tokens=16))
