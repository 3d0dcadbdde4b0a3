"""`hybrid-agent serve`'s side of the OpenAI chat API: the request models (pydantic) and how a request's
messages become token ids, with the positions where a saved state may be reused.

Design choices:
- The whole conversation is rendered the way the agent loop renders it one segment at a time
  (model/chat.py `segment`): user and tool messages through the chat format, each assistant message as
  the text the model wrote (its content, each tool call as the format's markup, and the stop string
  when it made no call: the loop stops on a tool call's close marker, the stop string otherwise). So
  a conversation that a client sends back unchanged renders to exactly the tokens the server's state
  holds, and the state saved at the end of the previous answer is found by its digest.
- The ends of segments and of assistant messages are the only places a state is saved, so they are the
  only prefixes looked up (`Rendered.boundaries`).
- Bad input is a `RequestError` (HTTP status, OpenAI error type, the parameter, one line), never a
  framework's default answer.
"""

from __future__ import annotations

import array
import json
import logging
import threading
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

from hybrid_agent.agent.serve_sampling import MAX_TOP_LOGPROBS, Sampling
from hybrid_agent.model.chat import DEFAULT_SYSTEM_PROMPT, ChatFormat, ChatFormatError, ChatMessage, Segment
from pydantic import BaseModel, ConfigDict, Field, ValidationError


class RequestError(Exception):
    """A request the server refuses: `status`, OpenAI's error `type`, the `param` at fault, a message."""

    def __init__(
        self, status: int, message: str, *, type: str = "invalid_request_error", param: str | None = None
    ) -> None:
        super().__init__(message)
        self.status, self.type, self.param, self.code = status, type, param, None

    def body(self) -> dict[str, Any]:
        return {"error": {"message": str(self), "type": self.type, "param": self.param, "code": self.code}}


def failure(exc: Exception) -> RequestError:
    """What the client is told of an error in its request's run: a RequestError as it is, anything
    else (a bug, a model error) as a 500 (the traceback goes to the log)."""
    if isinstance(exc, RequestError):
        return exc
    logging.getLogger("hybrid_agent.serve").error("request failed", exc_info=exc)
    return RequestError(500, f"the model failed: {type(exc).__name__}: {exc}", type="server_error")


class _Loose(BaseModel):
    model_config = ConfigDict(extra="ignore")  # clients send fields this server does not use


class FunctionDef(_Loose):
    name: str = Field(pattern=r"^[A-Za-z0-9_.-]{1,64}$")
    description: str | None = None
    parameters: dict[str, Any] | None = None


class ToolDef(_Loose):
    type: Literal["function"]
    function: FunctionDef


class CallFunction(_Loose):
    name: str
    arguments: str = "{}"


class ToolCall(_Loose):
    id: str = ""
    type: Literal["function"] = "function"
    function: CallFunction


class ContentPart(_Loose):
    type: str
    text: str | None = None


class Message(_Loose):
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[ContentPart] | None = None
    name: str | None = None
    tool_calls: list[ToolCall] | None = None
    tool_call_id: str | None = None

    def text(self) -> str:
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        parts = []
        for part in self.content:
            if part.type != "text" or part.text is None:
                raise RequestError(400, f"content parts of type {part.type!r} are not supported (text only)")
            parts.append(part.text)
        return "".join(parts)


class StreamOptions(_Loose):
    include_usage: bool = False


class ChatRequest(_Loose):
    model: str
    messages: list[Message] = Field(min_length=1)
    tools: list[ToolDef] | None = None
    tool_choice: Literal["none", "auto", "required"] | dict[str, Any] | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    max_tokens: int | None = Field(default=None, ge=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    temperature: float | None = Field(default=None, ge=0.0, le=2.0)
    top_p: float | None = Field(default=None, gt=0.0, le=1.0)
    top_k: int | None = Field(default=None, ge=-1)  # vLLM's extension; -1 or 0: every token
    presence_penalty: float | None = Field(default=None, ge=-2.0, le=2.0)
    frequency_penalty: float | None = Field(default=None, ge=-2.0, le=2.0)
    seed: int | None = Field(default=None, ge=-(2**63), lt=2**64)
    logprobs: bool | None = None
    top_logprobs: int | None = Field(default=None, ge=0, le=MAX_TOP_LOGPROBS)
    stop: str | list[str] | None = None
    n: int | None = Field(default=None, ge=1)
    user: str | None = None
    # vLLM's extension: decode exactly max_tokens, past stop strings and tool calls (benchmarks).
    ignore_eos: bool = False


def parse_request(raw: bytes) -> ChatRequest:
    """The request body as a `ChatRequest`, or a `RequestError` naming what is wrong."""
    try:
        data = json.loads(raw)
    except (ValueError, RecursionError) as exc:
        raise RequestError(400, f"the request body is not valid JSON ({exc})") from None
    if not isinstance(data, dict):
        raise RequestError(400, "the request body must be a JSON object")
    try:
        req = ChatRequest.model_validate(data)
    except ValidationError as exc:
        err = exc.errors()[0]
        where = ".".join(str(p) for p in err["loc"])
        raise RequestError(400, f"{where}: {err['msg']}", param=where or None) from None
    for i, tool in enumerate(req.tools or ()):
        check_tool_schema(tool.function, f"tools.{i}.function.parameters")
    _check_supported(data, req)
    return req


# Parameters this server does not apply, with the value each may have (the API's default, or none).
_UNSUPPORTED: dict[str, tuple[Any, ...]] = {
    "logit_bias": (None, {}),
    "min_p": (None, 0, 0.0),
    "repetition_penalty": (None, 1, 1.0),
    "min_tokens": (None, 0),
    "best_of": (None, 1),
    "use_beam_search": (None, False),
    "stop_token_ids": (None, []),
    "prompt_logprobs": (None,),
    "guided_json": (None,),
    "guided_regex": (None,),
    "guided_choice": (None,),
    "guided_grammar": (None,),
}


def _check_supported(data: dict[str, Any], req: ChatRequest) -> None:
    """A parameter the server would otherwise ignore is refused, naming it."""
    for name, fine in _UNSUPPORTED.items():
        if name in data and not any(data[name] == v and type(data[name]) is type(v) for v in fine):
            raise RequestError(400, f"{name} is not supported by this server; leave it out", param=name)
    fmt = data.get("response_format")
    if fmt is not None and (not isinstance(fmt, dict) or fmt.get("type") != "text"):
        raise RequestError(
            400, 'response_format: only {"type": "text"} is supported by this server', param="response_format"
        )
    if req.n is not None and req.n > 1:
        raise RequestError(400, "n: only one choice per request is supported (n = 1)", param="n")
    if req.top_logprobs and not req.logprobs:
        raise RequestError(400, "top_logprobs needs logprobs: true", param="top_logprobs")
    stops = [req.stop] if isinstance(req.stop, str) else req.stop or []
    if len(stops) > 4:
        raise RequestError(400, "stop: at most 4 stop strings", param="stop")
    if any(not s for s in stops):
        raise RequestError(400, "stop: a stop string may not be empty", param="stop")


def sampling(req: ChatRequest, default_temperature: float) -> Sampling:
    """The request's sampling parameters, with the server's temperature where it names none."""
    stops = [req.stop] if isinstance(req.stop, str) else req.stop or []
    return Sampling(
        temperature=default_temperature if req.temperature is None else req.temperature,
        top_p=req.top_p,
        top_k=req.top_k if req.top_k is not None and req.top_k > 0 else None,
        presence_penalty=req.presence_penalty or 0.0,
        frequency_penalty=req.frequency_penalty or 0.0,
        seed=req.seed,
        logprobs=bool(req.logprobs),
        top_logprobs=req.top_logprobs or 0,
        stop=tuple(stops),
    )


def check_tool_schema(fn: FunctionDef, param: str) -> None:
    """A tool's `parameters` must be a valid JSON Schema for an object."""
    if fn.parameters is None:
        return
    from jsonschema import SchemaError
    from jsonschema.validators import validator_for

    kind = fn.parameters.get("type", "object")
    if kind != "object":
        raise RequestError(
            400, f"tool {fn.name!r}: parameters must describe an object, not {kind!r}", param=param
        )
    try:
        validator_for(fn.parameters).check_schema(fn.parameters)
    except SchemaError as exc:
        raise RequestError(
            400, f"tool {fn.name!r}: parameters is not a valid JSON Schema ({exc.message})", param=param
        ) from None


def tool_list(req: ChatRequest) -> list[dict[str, Any]]:
    """The tools as the chat formats render them (name, description, parameters); none for
    `tool_choice: "none"`."""
    if not req.tools or req.tool_choice == "none":
        return []
    return [t.function.model_dump(exclude_none=True) for t in req.tools]


def forced_call(req: ChatRequest) -> str | None:
    """The name of the function `tool_choice` forces, "" for `required` (any), None for no force."""
    if not tool_list(req):
        return None
    if req.tool_choice == "required":
        return ""
    if isinstance(req.tool_choice, dict):
        name = (req.tool_choice.get("function") or {}).get("name")
        if not isinstance(name, str) or name not in {t.function.name for t in req.tools or ()}:
            raise RequestError(400, "tool_choice names a function that is not in tools", param="tool_choice")
        return name
    return None


def call_markup(chat: ChatFormat, name: str, arguments: Any) -> str:
    """A tool call as the model writes it between the format's markers."""
    return json.dumps({"name": name, "arguments": arguments}, ensure_ascii=False)


def forced_opening(name: str) -> str:
    """What follows the open marker of a call that `tool_choice` forces: the start of the call's JSON
    up to its arguments (as `call_markup` writes it) for a named function, nothing for any function."""
    return f'{{"name": {json.dumps(name, ensure_ascii=False)}, "arguments": ' if name else ""


def assistant_segment(chat: ChatFormat, content: str, calls: Sequence[tuple[str, Any]]) -> Segment:
    """What the model wrote for an assistant message: its text, then each call in the format's markup;
    the stop string ends a message without calls (the model stops after a call's close marker)."""
    pieces: list[tuple[str, bool]] = [(content, False)] if content else []
    for name, arguments in calls:
        pieces += [(chat.tool_call_open, True), (call_markup(chat, name, arguments), False)]
        pieces.append((chat.tool_call_close, True))
    if not calls and chat.stop_strings:
        pieces.append((chat.stop_strings[0], True))
    return Segment(tuple(pieces))


class CachedEncoder:
    """A tokenizer whose `encode` of long texts is remembered (least recently used out first, bounded
    in bytes): a returning conversation sends its whole history again with every request, and its long
    messages are then not tokenized again (at 64k tokens that was most of rendering the request).
    Tokenizing is a function of the text and `special` alone, so the ids are the tokenizer's own. The
    ids are kept as int64 arrays (8 bytes a token); the texts count in the bound too. Thread-safe:
    requests render on worker threads."""

    MIN_CHARS = 1024  # shorter texts are tokenized each time (cheap; not worth an entry)

    def __init__(self, tokenizer: Any, max_bytes: int = 256 << 20) -> None:
        self.tokenizer, self.max_bytes = tokenizer, max_bytes
        self._entries: OrderedDict[tuple[str, bool], array.array[int]] = OrderedDict()
        self._lock = threading.Lock()
        self.used = 0

    def encode(self, text: str, *, special: bool = False) -> list[int]:
        if len(text) < self.MIN_CHARS:
            return list(self.tokenizer.encode(text, special=special))
        key = (text, special)
        with self._lock:
            got = self._entries.get(key)
            if got is not None:
                self._entries.move_to_end(key)
                return got.tolist()
        ids = list(self.tokenizer.encode(text, special=special))
        size = len(text) + 8 * len(ids)
        if size > self.max_bytes:
            return ids
        with self._lock:
            if key not in self._entries:
                self._entries[key] = array.array("q", ids)
                self.used += size
            while self.used > self.max_bytes:
                (old, _), dropped = self._entries.popitem(last=False)
                self.used -= len(old) + 8 * len(dropped)
        return ids


@dataclass(frozen=True)
class Rendered:
    ids: list[int]
    boundaries: list[int]  # token counts after each segment and each assistant message, increasing


def _assistant_calls(msg: Message, index: int) -> list[tuple[str, Any]]:
    calls = []
    for j, call in enumerate(msg.tool_calls or ()):
        try:
            args = json.loads(call.function.arguments or "{}")
        except ValueError:
            raise RequestError(
                400, "a tool call's arguments are not valid JSON", param=f"messages.{index}.tool_calls.{j}"
            ) from None
        calls.append((call.function.name, args))
    return calls


def render(
    chat: ChatFormat, tokenizer: Any, messages: Sequence[Message], tools: Sequence[dict[str, Any]]
) -> Rendered:
    """The conversation's token ids, ending with the assistant prompt, and its boundaries."""
    system_parts: list[str] = []
    i = 0
    while i < len(messages) and messages[i].role in ("system", "developer"):
        system_parts.append(messages[i].text())
        i += 1
    system = "\n\n".join(system_parts) if system_parts else DEFAULT_SYSTEM_PROMPT
    history: list[ChatMessage] = []
    pending: list[ChatMessage] = []
    ids: list[int] = []
    boundaries: list[int] = []

    def flush() -> None:
        if pending:
            try:
                ids.extend(chat.segment(history, pending, system=system, tools=tools).encode(tokenizer))
            except ChatFormatError as exc:
                raise RequestError(400, f"the messages cannot be rendered: {exc}", param="messages") from None
            history.extend(pending)
            pending.clear()
            boundaries.append(len(ids))

    for k in range(i, len(messages)):
        msg = messages[k]
        if msg.role in ("system", "developer"):
            raise RequestError(400, "system messages must come first", param=f"messages.{k}")
        if msg.role == "assistant":
            flush()
            if not history:
                raise RequestError(
                    400, "the conversation must start with a user message", param=f"messages.{k}"
                )
            seg = assistant_segment(chat, msg.text(), _assistant_calls(msg, k))
            ids.extend(seg.encode(tokenizer))
            history.append(ChatMessage("assistant", msg.text(), raw=seg.text))
            boundaries.append(len(ids))
        else:
            pending.append(ChatMessage(msg.role, msg.text(), name=msg.name))
    if not pending:
        raise RequestError(400, "the last message must be a user or tool message", param="messages")
    flush()
    return Rendered(ids, boundaries)
