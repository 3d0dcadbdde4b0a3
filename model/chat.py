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
  Reasoning blocks are the exception (`JinjaChatFormat`): they stay in the state as the model wrote them.
- Tool calls: ours are `<|tool_call|>{json}<|/tool_call|>`, Hermes/Qwen-style are
  `<tool_call>{json}</tool_call>`. A call that cannot be parsed is returned with `error` set, so the
  loop can hand the model an error result it can correct.
"""

from __future__ import annotations

import json
import re
import secrets
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal, Protocol, runtime_checkable

from hybrid_agent.model.chat_text import (
    THINK_CLOSE,
    THINK_OPEN,
    load_call_json,
    template_environment,
    without_thinking,
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


class JinjaChatFormat(HermesToolCalls):
    """A Hugging Face chat template, rendered incrementally.

    The text in the state is `render(history[:-1], add_generation_prompt=True) + history[-1].raw`
    (the last message being the assistant's, as the model decoded it). The new segment is
    `render(history + new, add_generation_prompt=True)` minus that text, which must be a prefix of it:
    when it is not, the template rewrote something already read and `TemplateNotPrefixStable` is raised.
    Assistant messages are passed to the template with their raw text (tool-call markup included) as
    `content`, so the template reproduces exactly what the model wrote.

    Reasoning (model/chat_text.py) is the exception: templates of thinking models drop it from earlier
    replies (Qwen3, LFM2.5) or never render it for a reply (Nemotron Nano 2), so theirs cannot be
    prefix-stable. For a template that mentions `</think>`, the state keeps what the model wrote, and
    the new segment is what the template writes after the last reply (its content stood in for by a
    placeholder): the end of that turn, less the stop string the model already wrote, then the new
    messages. Reasoning is never shown (`visible_text`) and tool calls inside it are not read.
    """

    def __init__(
        self,
        template: str,
        *,
        bos_token: str = "",
        eos_token: str = "",
        stop_strings: Sequence[str] = (),
        name: str = "jinja",
        extra_context: dict[str, Any] | None = None,
    ) -> None:
        from jinja2.exceptions import TemplateSyntaxError

        try:
            self._template = template_environment().from_string(template)
        except TemplateSyntaxError as exc:
            raise ChatFormatError(f"the chat template does not parse: {exc}") from exc
        self.name = name
        self.bos_token = bos_token
        self.eos_token = eos_token
        stops = tuple(s for s in (*stop_strings, eos_token) if s)
        self.stop_strings = tuple(dict.fromkeys(stops))
        self._extra = dict(extra_context or {})
        self.thinks = THINK_CLOSE in template  # the template knows reasoning blocks
        self._opened = False  # the last segment's generation prompt opened a reasoning block
        self.thinking_markers = (THINK_OPEN, THINK_CLOSE)  # held back while streaming (agent/stream.py)

    @classmethod
    def from_pretrained(cls, path: str | Path, **kwargs: Any) -> JinjaChatFormat:
        """Read the template of a Hugging Face checkpoint directory (chat_template.jinja, or
        `chat_template` in tokenizer_config.json) and its bos/eos tokens."""
        root = Path(path)
        config: dict[str, Any] = {}
        if (root / "tokenizer_config.json").is_file():
            config = json.loads((root / "tokenizer_config.json").read_text(encoding="utf-8"))
        template = config.get("chat_template")
        if (root / "chat_template.jinja").is_file():
            template = (root / "chat_template.jinja").read_text(encoding="utf-8")
        if isinstance(template, list):  # a list of named templates: use "default"
            template = next((t["template"] for t in template if t.get("name") == "default"), None)
        if not isinstance(template, str):
            raise ChatFormatError(f"no chat template in {root}; pass a native model or a checkpoint with one")

        def token(key: str) -> str:
            value = config.get(key) or ""
            return value.get("content", "") if isinstance(value, dict) else str(value)

        kwargs.setdefault("name", root.name or "jinja")
        return cls(template, bos_token=token("bos_token"), eos_token=token("eos_token"), **kwargs)

    @staticmethod
    def _as_template_message(msg: ChatMessage) -> dict[str, Any]:
        if msg.role == "assistant":
            return {"role": "assistant", "content": msg.content if msg.raw is None else msg.raw}
        out: dict[str, Any] = {"role": msg.role, "content": msg.content}
        if msg.name is not None:
            out["name"] = msg.name
        if msg.tool_call_id is not None:
            out["tool_call_id"] = msg.tool_call_id
        return out

    def render(
        self,
        messages: Sequence[ChatMessage],
        *,
        add_generation_prompt: bool,
        tools: Sequence[dict[str, Any]] = (),
    ) -> str:
        from jinja2.exceptions import TemplateError

        context = {
            **self._extra,
            "messages": [self._as_template_message(m) for m in messages],
            "add_generation_prompt": add_generation_prompt,
            "bos_token": self.bos_token,
            "eos_token": self.eos_token,
            # HF's convention: a list of {"type": "function", "function": schema}; None when empty.
            "tools": [{"type": "function", "function": t} for t in tools] or None,
        }
        try:
            return self._template.render(**context)
        except TemplateError as exc:
            raise ChatFormatError(f"the chat template failed to render: {exc}") from exc
        except Exception as exc:  # the template is untrusted code: 1 // 0 on some content, and so on
            raise ChatFormatError(f"the chat template failed to render: {type(exc).__name__}: {exc}") from exc

    def _answer(self, text: str) -> str:
        return without_thinking(text, self._opened)

    def parse_tool_calls(self, text: str) -> list[ParsedToolCall]:
        return super().parse_tool_calls(self._answer(text))

    def visible_text(self, text: str) -> str:
        return super().visible_text(self._answer(text))

    def plain_text(self, text: str) -> str:
        return super().plain_text(self._answer(text))

    def _strip_stop(self, raw: str) -> str:
        for stop in self.stop_strings:
            if raw.endswith(stop):
                return raw[: -len(stop)]
        return raw

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
        # The system message is part of the history the template sees from the first segment on.
        full_history = [ChatMessage("system", system), *history] if system else list(history)
        if history:
            last = history[-1]
            if last.role != "assistant":
                raise ChatFormatError("a new segment must follow an assistant message")
            raw = last.raw if last.raw is not None else last.content
            in_state = self.render(full_history[:-1], add_generation_prompt=True, tools=tools) + raw
            # The template sees the assistant's text without the stop token (it adds its own).
            full_history[-1] = ChatMessage("assistant", last.content, raw=self._strip_stop(raw))
        else:
            in_state = ""
        full = self.render([*full_history, *new], add_generation_prompt=True, tools=tools)
        if history and self.thinks and not full.startswith(in_state):
            seg = self._after_reply(full_history, new, tools, raw)
        elif not full.startswith(in_state):
            at = next(
                (i for i, (a, b) in enumerate(zip(full, in_state, strict=False)) if a != b),
                min(len(full), len(in_state)),
            )
            raise TemplateNotPrefixStable(
                f"chat template {self.name!r} is not prefix-stable: adding a message rewrites text the model "
                f"has already read (at char {at}: {in_state[at : at + 40]!r} became {full[at : at + 40]!r}). "
                "Start a new session, or use a model whose template only appends."
            )
        else:
            text = full[len(in_state) :]
            exact = self._split_exactly(text, full_history, new, tools, in_state)
            seg = exact if exact is not None else _split_content(text, [m.content for m in new])
        self._opened = seg.text.rstrip().endswith(THINK_OPEN)
        return seg

    def _after_reply(
        self, head: Sequence[ChatMessage], new: Sequence[ChatMessage], tools: Sequence[Any], raw: str
    ) -> Segment:
        """The segment after the last reply for a template that rewrites replies (the class docstring):
        what it writes after a placeholder in place of the reply's content."""
        mark = f"\ue000{secrets.token_hex(8)}:reply\ue001"
        head = [*head[:-1], ChatMessage("assistant", mark, raw=mark)]
        full = self.render([*head, *new], add_generation_prompt=True, tools=tools)
        if full.count(mark) != 1:
            raise TemplateNotPrefixStable(
                f"chat template {self.name!r} does not write the last reply where it stood, so the end of "
                "that turn cannot be found. Start a new session, or use a model whose template only appends."
            )
        cut = full.index(mark) + len(mark)
        # The end of the reply's turn, before the first new message: the model may have written part of
        # it already (its stop string), which is not written twice.
        found = (full.find(m.content, cut) for m in new if m.content)
        first = min((i for i in found if i >= 0), default=len(full))
        stop = next((s for s in self.stop_strings if raw.endswith(s) and s in full[cut:first]), None)
        if stop is not None:
            cut = full.index(stop, cut) + len(stop)
        text = full[cut:]
        exact = self._split_exactly(text, head, new, tools, full[:cut])
        return exact if exact is not None else _split_content(text, [m.content for m in new])

    def _split_exactly(
        self,
        text: str,
        head: Sequence[ChatMessage],
        new: Sequence[ChatMessage],
        tools: Sequence[dict[str, Any]],
        in_state: str,
    ) -> Segment | None:
        """`text`, the new segment, cut into the template's markup and the new contents, or None.

        The markup is what the template writes around placeholders put in place of the contents (a
        second render), so text in a content is never taken for markup, whatever it repeats. That holds
        when the template writes each content as it is, or trimmed (`| trim`), where its placeholder
        was; for a template that does anything else, None, and `_split_content` searches instead."""
        nonce = secrets.token_hex(8)
        marks = [f"\ue000{nonce}:{i}\ue001" for i in range(len(new))]  # private-use code points
        probe = [replace(m, content=mark) for m, mark in zip(new, marks, strict=True)]
        try:
            rendered = self.render([*head, *probe], add_generation_prompt=True, tools=tools)
        except ChatFormatError:
            return None
        if not rendered.startswith(in_state):
            return None
        rest, markup = rendered[len(in_state) :], []
        for mark in marks:
            before, found, rest = rest.partition(mark)
            if not found or mark in rest:
                return None  # a placeholder missing, repeated or out of order
            markup.append(before)
        markup.append(rest)
        if not text.startswith(markup[0]):
            return None
        pieces, pos = [(markup[0], True)], len(markup[0])
        for msg, after in zip(new, markup[1:], strict=True):
            fits = [c for c in (msg.content, msg.content.strip()) if text.startswith(c + after, pos)]
            if not fits:
                return None
            written = fits[0]
            pieces += [(written, False), (after, True)]
            pos += len(written) + len(after)
        return Segment(tuple(p for p in pieces if p[0])) if pos == len(text) else None


def _split_content(text: str, contents: Sequence[str]) -> Segment:
    """`_split_exactly`'s fallback: contents are looked for in order and marked as content. One the
    template changed (escaped, cut) is not found and its text stays markup, which only matters if it
    contains special-token strings."""
    pieces: list[tuple[str, bool]] = []
    pos = 0
    for content in contents:
        at = text.find(content, pos) if content else -1
        if at < 0:
            continue
        pieces += [(text[pos:at], True), (content, False)]
        pos = at + len(content)
    pieces.append((text[pos:], True))
    return Segment(tuple(p for p in pieces if p[0]))
