"""Chat formats: how a conversation becomes text, one new segment at a time, and how tool calls are
read back out of what the model wrote.

Design choices:
- A format renders only the *new* segment of a conversation (a user turn or tool results, ending with
  the assistant prompt). The state already holds everything before it; the history is never re-sent.
- The assistant's text is never re-rendered by us: what the model decoded (markup and stop token
  included) is already in the state. `ChatMessage.raw` keeps that exact text so that a Hugging Face
  template, which needs the whole conversation, can be diffed against what the state really holds.
- Hugging Face templates are untrusted code from the Hub: they run in jinja2's immutable sandbox, with
  the same few helpers transformers gives them (`raise_exception`, `tojson`, `strftime_now`).
- A template is *prefix-stable* when rendering one more message only appends text. Some are not (they
  trim content, or drop the reasoning of earlier turns). That is detected on every segment and raises
  `TemplateNotPrefixStable`, because a state cannot un-read tokens; nothing is silently re-rendered.
  Reasoning blocks are the exception (`JinjaChatFormat`, model/chat_jinja.py): they stay in the state as
  the model wrote them.
- Tool calls: ours are `<|tool_call|>{json}<|/tool_call|>`, Hermes/Qwen-style are
  `<tool_call>{json}</tool_call>`. A call that cannot be parsed is returned with `error` set, so the
  loop can hand the model an error result it can correct.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol, runtime_checkable

from hybrid_agent.model.chat_text import (
    load_call_json,
)

Role = Literal["system", "user", "assistant", "tool"]

DEFAULT_SYSTEM_PROMPT = (
    "You are a coding agent working inside the user's project. Use the tools to read and change files; "
    "answer briefly."
)


class ChatFormatError(Exception):
    """A chat template could not be loaded or rendered."""


class TemplateNotPrefixStable(ChatFormatError):
    """Rendering one more message changed text the model has already read."""


@dataclass(frozen=True)
class ChatMessage:
    """One message. For an assistant message `raw` is the exact decoded text already in the state
    (stop token and tool-call markup included); `content` is what the user sees."""

    role: Role
    content: str
    name: str | None = None  # the tool's name, on a tool result
    raw: str | None = None
    tool_call_id: str | None = None  # on a tool result: the id of the call it answers


@dataclass(frozen=True)
class Segment:
    """Text to prefill, as pieces: `(text, markup)`. Markup is written by the format and may contain
    special-token strings; the rest (user text, tool output, schemas) is content, tokenized so that a
    user who types `<|end|>` cannot inject a control token."""

    pieces: tuple[tuple[str, bool], ...]

    @property
    def text(self) -> str:
        return "".join(t for t, _ in self.pieces)

    def encode(self, tokenizer: Any) -> list[int]:
        """Token ids: each piece on its own, `special=True` only for markup."""
        ids: list[int] = []
        for text, markup in self.pieces:
            if text:
                ids += tokenizer.encode(text, special=markup)
        return ids


@dataclass(frozen=True)
class ParsedToolCall:
    """A tool call found in the model's output. `error` is set (and `name` may be None) when the
    call is malformed; the text of `error` is what the model will read back."""

    name: str | None
    arguments: dict[str, Any] = field(default_factory=dict)
    raw: str = ""
    error: str | None = None
    call_id: str | None = None  # the id the model gave the call, in syntaxes that have one (Kimi)


@runtime_checkable
class ChatFormat(Protocol):
    """What the agent loop needs from a chat format."""

    name: str
    # Decoded text that ends the assistant's message (the loop stops decoding when one appears).
    stop_strings: tuple[str, ...]
    # The open/close markers of a tool call; decoding pauses once a close marker appears.
    tool_call_open: str
    tool_call_close: str

    def segment(
        self,
        history: Sequence[ChatMessage],
        new: Sequence[ChatMessage],
        *,
        system: str = DEFAULT_SYSTEM_PROMPT,
        tools: Sequence[dict[str, Any]] = (),
    ) -> Segment:
        """What to prefill after `history` (already in the state) for the `new` user/tool messages,
        ending with the assistant prompt. With an empty history it starts with the system segment."""
        ...

    def parse_tool_calls(self, text: str) -> list[ParsedToolCall]: ...

    def visible_text(self, text: str) -> str:
        """The assistant's raw text without tool-call blocks and stop strings."""
        ...

    def plain_text(self, text: str) -> str:
        """The assistant's raw text without stop strings (and reasoning, where `visible_text` hides it),
        tool-call markup kept as written: the answer when no tools were offered, so that none is a call."""
        ...


def call_from_object(obj: Any, raw: str, *, what: str = "a tool call") -> ParsedToolCall:
    """Read `{"name": ..., "arguments": {...}}`; accept `parameters` and a JSON-string `arguments`,
    which real models emit too."""
    if not isinstance(obj, dict) or not isinstance(obj.get("name"), str):
        return ParsedToolCall(None, {}, raw, f'{what} must be a JSON object with a string "name"')
    args = obj.get("arguments", obj.get("parameters", {}))
    if isinstance(args, str):
        args, error = load_call_json(args) if args.strip() else ({}, None)
        if error is not None:
            return ParsedToolCall(obj["name"], {}, raw, '"arguments" is a string that is not a JSON object')
    if not isinstance(args, dict):
        return ParsedToolCall(obj["name"], {}, raw, '"arguments" must be a JSON object')
    return ParsedToolCall(obj["name"], args, raw)


def _parse_call_json(body: str, raw: str) -> ParsedToolCall:
    obj, error = load_call_json(body)
    if error is not None:
        return ParsedToolCall(None, {}, raw, error)
    return call_from_object(obj, raw)


class _TaggedToolCalls:
    """Parsing shared by formats whose tool calls sit between an open and a close marker."""

    tool_call_open: str
    tool_call_close: str
    stop_strings: tuple[str, ...]

    def parse_block(self, body: str, raw: str) -> list[ParsedToolCall]:
        """The calls in one block: `body` is the text between the markers, `raw` the whole block."""
        return [_parse_call_json(body, raw)]

    def parse_tool_calls(self, text: str) -> list[ParsedToolCall]:
        # str.find, not a lazy regex: `open(.*?)close` rescans to the end of the text for every open
        # marker that has no close, quadratic in a degenerate output that repeats the open marker.
        calls: list[ParsedToolCall] = []
        opener, closer = self.tool_call_open, self.tool_call_close
        pos = 0
        while (start := text.find(opener, pos)) >= 0:
            end = text.find(closer, start + len(opener))
            if end < 0:
                # An open marker without its close (the model stopped or ran out of tokens) is malformed.
                calls.append(
                    ParsedToolCall(None, {}, text[start:], f"the tool call was not closed with {closer}")
                )
                break
            pos = end + len(closer)
            calls += self.parse_block(text[start + len(opener) : end].strip(), text[start:pos])
        return calls

    def _without_stop_strings(self, text: str) -> str:
        for stop in self.stop_strings:
            text = text.replace(stop, "")
        return text

    def visible_text(self, text: str) -> str:
        pattern = re.escape(self.tool_call_open) + r".*?(" + re.escape(self.tool_call_close) + r"|$)"
        return self._without_stop_strings(re.sub(pattern, "", text, flags=re.DOTALL))

    def plain_text(self, text: str) -> str:
        return self._without_stop_strings(text)


def render_tool_list(tools: Sequence[dict[str, Any]]) -> str:
    """One JSON object per line: name, description, parameters (the tool's JSON schema)."""
    return "\n".join(json.dumps(t, ensure_ascii=False, sort_keys=True) for t in tools)


class NativeChatFormat(_TaggedToolCalls):
    """Our own format (docs/interfaces.md): every marker is one special token of the tokenizer.

    System segment: `<|bos|><|system|>{system}` + (with tools) `\\n\\n# Tools\\n` + one JSON schema per
    line + `<|end|>`. User turn: `<|user|>{text}<|end|><|assistant|>`. Tool result:
    `<|tool_result|>{text}<|/tool_result|>` per result, then `<|assistant|>`. The assistant ends its
    message with `<|end|>`; if it stopped without one (token limit, tool-round limit), the next segment
    closes the message first, so the state always reads as a well-formed conversation.
    """

    name = "native"
    stop_strings = ("<|end|>", "<|eos|>")
    tool_call_open = "<|tool_call|>"
    tool_call_close = "<|/tool_call|>"

    def system_pieces(self, system: str, tools: Sequence[dict[str, Any]]) -> list[tuple[str, bool]]:
        body = system
        if tools:
            body += (
                '\n\n# Tools\nCall a tool with <|tool_call|>{"name": NAME, "arguments": {...}}'
                "<|/tool_call|>. Available tools:\n" + render_tool_list(tools)
            )
        return [("<|bos|><|system|>", True), (body, False), ("<|end|>", True)]

    def segment(
        self,
        history: Sequence[ChatMessage],
        new: Sequence[ChatMessage],
        *,
        system: str = DEFAULT_SYSTEM_PROMPT,
        tools: Sequence[dict[str, Any]] = (),
    ) -> Segment:
        if not new:
            raise ChatFormatError("a segment needs at least one new message")
        pieces: list[tuple[str, bool]] = []
        if not history:
            pieces += self.system_pieces(system, tools)
        last = history[-1] if history else None
        if new[0].role == "user" and last is not None and last.role == "assistant":
            raw = last.raw if last.raw is not None else last.content
            if not raw.endswith(self.stop_strings):
                pieces.append(("<|end|>", True))
        for msg in new:
            if msg.role == "user":
                pieces += [("<|user|>", True), (msg.content, False), ("<|end|>", True)]
            elif msg.role == "tool":
                pieces += [("<|tool_result|>", True), (msg.content, False), ("<|/tool_result|>", True)]
            else:
                raise ChatFormatError(f"cannot render a new {msg.role!r} message; the model writes those")
        pieces.append(("<|assistant|>", True))
        return Segment(tuple(pieces))


class HermesToolCalls(_TaggedToolCalls):
    """Hermes / Qwen-style tool calls: `<tool_call>{json}</tool_call>`."""

    tool_call_open = "<tool_call>"
    tool_call_close = "</tool_call>"
    stop_strings: tuple[str, ...] = ()
