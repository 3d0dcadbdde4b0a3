"""A real `hybrid-agent serve` app on a real uvicorn server, on a free loopback port in a thread, with
the packaged default model on the CPU and the official `openai` client."""

from __future__ import annotations

import json
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import openai
import pytest
import uvicorn
from hybrid_agent.agent.serve_app import ServeOptions, build_app
from hybrid_agent.agent.serve_command import listening_socket
from hybrid_agent.memory import Store
from starlette.applications import Starlette


@dataclass
class Served:
    url: str
    app: Starlette
    client: openai.OpenAI

    def metric(self, name: str, **labels: str) -> float:
        return float(self.app.state.metrics.get(name, **labels))

    def raw(
        self, path: str, body: bytes | None = None, headers: dict[str, str] | None = None
    ) -> tuple[int, Any]:
        """A plain HTTP request (no client library): status and the JSON (or text) answer."""
        req = urllib.request.Request(
            self.url + path, data=body, headers=headers or {}, method="POST" if body is not None else "GET"
        )
        try:
            with urllib.request.urlopen(req, timeout=30) as resp:
                status, text = resp.status, resp.read().decode()
        except urllib.error.HTTPError as exc:
            status, text = exc.code, exc.read().decode()
        try:
            return status, json.loads(text)
        except ValueError:
            return status, text


@contextmanager
def serving(engine: Any, db: str | None, *, api_key: str | None = None, **options: Any) -> Iterator[Served]:
    store = Store(db) if db is not None else None
    app = build_app(engine, store, ServeOptions(api_key=api_key, **options))
    sock = listening_socket("127.0.0.1", 0)  # as `hybrid-agent serve` makes it (TCP_NODELAY)
    server = uvicorn.Server(uvicorn.Config(app, lifespan="on", log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 20
        while not server.started:
            assert thread.is_alive() and time.monotonic() < deadline, "the server did not start"
            time.sleep(0.01)
        url = f"http://127.0.0.1:{sock.getsockname()[1]}"
        client = openai.OpenAI(base_url=url + "/v1", api_key=api_key or "unused", max_retries=0, timeout=60)
        yield Served(url, app, client)
    finally:
        server.should_exit = True
        thread.join(60)
        sock.close()
        if store is not None:
            store.close()


def chat(served: Served, messages: list[dict[str, Any]], **kwargs: Any) -> Any:
    return served.client.chat.completions.create(model="default", messages=messages, **kwargs)


def as_history(message: Any) -> dict[str, Any]:
    """An answer's message as the client sends it back."""
    return message.model_dump(exclude_none=True, include={"role", "content", "tool_calls"})


def said(answer: Any) -> tuple[str | None, list[tuple[str, str]]]:
    """What an answer says: its text and its tool calls' names and arguments (not their ids, which
    are made per request: two equal answers have different ones)."""
    message = answer.choices[0].message
    return message.content, [(c.function.name, c.function.arguments) for c in message.tool_calls or ()]


READ = {
    "type": "function",
    "function": {
        "name": "read_file",
        "description": "Read a file",
        "parameters": {"type": "object", "properties": {"path": {"type": "string"}}, "required": ["path"]},
    },
}
FORCE_READ = {"type": "function", "function": {"name": "read_file"}}
MAIN_PY = "import sys\n\n\ndef main():\n    print('hello from main')\n"


def called(served: Served, messages: list[dict[str, Any]], **kwargs: Any) -> tuple[Any, list[dict[str, Any]]]:
    """A turn steered to a tool call by the request (`tool_choice` names read_file, so whatever model
    is packaged writes a call, closed within the token budget), and the conversation with the call's
    result after it: the answer and that conversation."""
    kwargs.setdefault("max_tokens", 48)
    answer = chat(served, messages, tools=[READ], tool_choice=FORCE_READ, **kwargs)
    choice = answer.choices[0]
    assert choice.finish_reason == "tool_calls", "the forced call did not close within max_tokens"
    result = {"role": "tool", "tool_call_id": choice.message.tool_calls[0].id, "content": MAIN_PY}
    return answer, [*messages, as_history(choice.message), result]


# A conversation whose call is already answered, asked without `tools`: the model's next message
# reports the result in words. (Without tools, or with `tool_choice: "none"`, call markup the model
# writes anyway comes back as text (tests/agent/test_serve_no_tools.py); a text turn without markup is
# steered by the conversation's shape, and the tests that need text assert that it is there.)
def answered_read(path: str, content: str = MAIN_PY, call_id: str = "call_0") -> list[dict[str, Any]]:
    """A user's request for `path`, a read_file call of it and the call's result `content`: the turn
    after these messages is the model's text about the file, which starts with the path it copies."""
    call = {
        "id": call_id,
        "type": "function",
        "function": {"name": "read_file", "arguments": json.dumps({"path": path})},
    }
    return [
        {"role": "user", "content": f"Show me {path}"},
        {"role": "assistant", "tool_calls": [call]},
        {"role": "tool", "tool_call_id": call_id, "content": content},
    ]


ANSWERED = answered_read("main.py")


def tokens(answer: Any) -> list[list[int]]:
    """Every token the model chose for an answer, as bytes (its `logprobs` entries; ask with
    `logprobs=True`): what it wrote, call markup and any text after a stop token included, so two
    answers compare token by token, not just by what `said` keeps of them."""
    return [entry.bytes for entry in answer.choices[0].logprobs.content]


def chosen(answer: Any) -> list[tuple[list[int], float]]:
    """Every token the model chose for an answer, as bytes, with its log probability (its `logprobs`
    entries; ask with `logprobs=True`): what it wrote, call markup and any text after a stop token
    included. Two answers from the same state agree in both; a state that differs shows in the
    probabilities even where a confident model picks the same tokens."""
    return [(entry.bytes, entry.logprob) for entry in answer.choices[0].logprobs.content]


def assert_same_answer(a: Any, b: Any, tol: float = 1e-3) -> None:
    """`a` and `b` say the same, token by token, each token's log probability within `tol`."""
    x, y = chosen(a), chosen(b)
    assert said(a) == said(b)
    assert [t for t, _ in x] == [t for t, _ in y]
    assert [p for _, p in x] == pytest.approx([q for _, q in y], abs=tol)
