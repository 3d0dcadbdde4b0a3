"""`JinjaChatFormat`: a Hugging Face chat template as a chat format (model/chat.py has the protocol, the
segments and the tool-call syntaxes it builds on), rendered incrementally in jinja2's sandbox, with its
prefix-stability check and the split of a rendered segment into markup and content.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from hybrid_agent.model.chat import (
    DEFAULT_SYSTEM_PROMPT,
    ChatFormatError,
    ChatMessage,
    HermesToolCalls,
    ParsedToolCall,
    Segment,
    TemplateNotPrefixStable,
)
from hybrid_agent.model.chat_text import THINK_CLOSE, THINK_OPEN, template_environment, without_thinking


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
