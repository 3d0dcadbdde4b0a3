"""The streamed answer's chunks (agent/serve_app.py `_sse`): the text-only chunk written from a template
is the general form's bytes, and events that wait in the queue go out in one write with the same bytes
as one write each."""

from __future__ import annotations

import asyncio
import json
import threading
from types import SimpleNamespace
from typing import Any

import pytest
from hybrid_agent.agent.serve_app import _sse, chunk_head, text_chunk
from hybrid_agent.agent.serve_scheduler import Result

TEXTS = [
    "",
    "hello",
    'a "quoted" word',
    "back\\slash",
    "line\nbreak\ttab",
    "naïve ünïcode ✓",
    "\x00\x1f",
    "</tool_call>",
]


def general(rid: str, created: int, model: str, text: str) -> str:
    """The chunk as the general form builds it: the whole body through json.dumps."""
    body = {"id": rid, "object": "chat.completion.chunk", "created": created, "model": model}
    choice = {"index": 0, "delta": {"content": text}, "finish_reason": None, "logprobs": None}
    return f"data: {json.dumps({**body, 'choices': [choice]})}\n\n"


@pytest.mark.parametrize("text", TEXTS)
def test_the_text_chunk_is_the_general_forms_bytes(text: str) -> None:
    rid, created, model = 'chatcmpl-"x"', 1_700_000_000, "olmo\u2011tiny"
    got = text_chunk(chunk_head(rid, created, model), text)
    assert got == general(rid, created, model, text)
    assert json.loads(got[len("data: ") :])["choices"][0]["delta"]["content"] == text


def stream(events: list[tuple[str, Any]], queued_at_once: bool) -> list[str]:
    """`_sse`'s writes for `events`: all in the queue before the first read, or each put once the
    reader has taken the one before (one event a read)."""

    async def run() -> list[str]:
        job = SimpleNamespace(events=asyncio.Queue(), cancelled=threading.Event())
        gen = _sse(job, "chatcmpl-abc", 7, "m", usage=True)
        writes = [await gen.__anext__()]

        async def feed() -> None:
            for event in events:
                while not queued_at_once and not job.events.empty():
                    await asyncio.sleep(0)
                job.events.put_nowait(event)

        if queued_at_once:
            await feed()
        else:
            task = asyncio.create_task(feed())
        writes += [w async for w in gen]
        if not queued_at_once:
            await task
        return writes

    return asyncio.run(asyncio.wait_for(run(), 10))


def test_queued_events_go_out_in_one_write_with_the_same_bytes() -> None:
    done = Result("hi there", [("read_file", {"path": "a.py"})], "tool_calls", 12, 3, 8)
    lp = [{"token": "hi", "logprob": -0.1, "bytes": None, "top_logprobs": []}]
    events = [("delta", "hi"), ("logprobs", lp), ("delta", " there"), ("delta", "\n"), ("done", done)]
    apart, together = stream(events, False), stream(events, True)
    assert "".join(apart) == "".join(together)
    assert len(together) < len(apart)  # the waiting events shared writes
    chunks = [
        json.loads(c[len("data: ") :]) for c in "".join(together).split("\n\n") if c and "[DONE]" not in c
    ]
    assert [c["choices"][0]["delta"].get("content") for c in chunks[1:4]] == ["hi", " there", "\n"]
    assert chunks[2]["choices"][0]["logprobs"] == {"content": lp}  # the text chunk after logprobs keeps them
    assert chunks[4]["choices"][0]["delta"]["tool_calls"][0]["function"]["name"] == "read_file"
    assert chunks[5]["choices"][0]["finish_reason"] == "tool_calls"
    assert chunks[6]["usage"]["prompt_tokens_details"] == {"cached_tokens": 8}
    assert "".join(together).endswith("data: [DONE]\n\n")
