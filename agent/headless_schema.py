"""The objects of `run --output-format json|stream-json` and `--input-format stream-json`, in the
shapes Claude Code prints and reads, so that programs written for its headless mode work unchanged.

Output, one JSON object a line (`stream-json`), or only the final `ResultMessage` (`json`):

- `SystemInit` first, once per process: the session, the model, the tools.
- `AssistantMessage` per stretch of assistant text (the text up to a tool call, or to the turn's end),
  and one per tool call (a `tool_use` content block).
- `UserMessage` per tool result (a `tool_result` content block).
- `StreamEvent` text deltas, only with `--include-partial-messages` (Claude Code's
  `content_block_delta` events; several decoded tokens are joined, at most 20 events a second).
- `SystemNotice` for what Claude Code has no object for: a hook's run, reading progress of a long
  message.
- `ResultMessage` last, once per turn.

Input (`--input-format stream-json`): one `UserInput` a line; each is a turn of the same session.

docs/headless.md is generated from these models (`render_doc`); tests/agent/test_headless.py checks
that it is current. Regenerate it with `python -m hybrid_agent.agent.headless_schema > docs/headless.md`.
"""

from __future__ import annotations

import json
import uuid
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field


def new_uuid() -> str:
    return str(uuid.uuid4())


class _StatusEnvelope(BaseModel):
    """The keys a system or result object begins with, in Claude Code's order: `type`, `subtype`,
    `uuid`, `session_id`. Each object narrows `type` and `subtype` to its literals (a redeclared field
    keeps its base's place, so the order holds)."""

    type: str
    subtype: str
    uuid: str = Field(default_factory=new_uuid)
    session_id: str


class _MessageEnvelope(BaseModel):
    """The keys a conversation object (assistant, user, stream event) begins with, in Claude Code's
    order: `type`, `uuid`, `session_id`, `parent_tool_use_id` (always null: no subagent sends them)."""

    type: str
    uuid: str = Field(default_factory=new_uuid)
    session_id: str
    parent_tool_use_id: None = None


class TextBlock(BaseModel):
    type: Literal["text"] = "text"
    text: str


class ToolUseBlock(BaseModel):
    type: Literal["tool_use"] = "tool_use"
    id: str
    name: str
    input: dict[str, Any]


class ToolResultBlock(BaseModel):
    type: Literal["tool_result"] = "tool_result"
    tool_use_id: str
    content: str
    is_error: bool = False


class Usage(BaseModel):
    """Tokens of one turn. `cache_read_input_tokens` are those already in the model's state when the
    turn started: what the saved state spared reading again."""

    input_tokens: int
    output_tokens: int
    cache_creation_input_tokens: int = 0
    cache_read_input_tokens: int = 0


class McpServer(BaseModel):
    name: str
    status: str


class SystemInit(_StatusEnvelope):
    type: Literal["system"] = "system"
    subtype: Literal["init"] = "init"
    cwd: str
    model: str
    tools: list[str]
    mcp_servers: list[McpServer] = Field(default_factory=list)
    permissionMode: Literal["default", "acceptEdits", "bypassPermissions"]
    apiKeySource: Literal["none"] = "none"


class SystemNotice(_StatusEnvelope):
    """`hook_response`: a hook ran (agent/hooks.py; `hook_event` names it, as Claude Code does, and
    `data.message` is empty when it went well). `prefill_progress`: how far the model has read a long
    message or tool output."""

    type: Literal["system"] = "system"
    subtype: Literal["hook_response", "prefill_progress"]
    hook_event: str | None = None
    data: dict[str, Any]


class AssistantBody(BaseModel):
    id: str = Field(default_factory=lambda: f"msg_{uuid.uuid4().hex}")
    type: Literal["message"] = "message"
    role: Literal["assistant"] = "assistant"
    model: str
    content: list[TextBlock | ToolUseBlock]
    stop_reason: str | None = None
    stop_sequence: str | None = None


class AssistantMessage(_MessageEnvelope):
    type: Literal["assistant"] = "assistant"
    message: AssistantBody


class UserBody(BaseModel):
    role: Literal["user"] = "user"
    content: list[ToolResultBlock]


class UserMessage(_MessageEnvelope):
    type: Literal["user"] = "user"
    message: UserBody


class TextDeltaBody(BaseModel):
    type: Literal["text_delta"] = "text_delta"
    text: str


class ContentBlockDelta(BaseModel):
    type: Literal["content_block_delta"] = "content_block_delta"
    index: int
    delta: TextDeltaBody


class StreamEvent(_MessageEnvelope):
    type: Literal["stream_event"] = "stream_event"
    event: ContentBlockDelta


class PermissionDenial(BaseModel):
    tool_name: str
    tool_use_id: str
    tool_input: dict[str, Any]


class ResultMessage(_StatusEnvelope):
    """The end of a turn. `subtype`: `success`; `error_max_turns` (the turn hit the tool-round limit);
    `error_during_execution` (an error, a cancelled turn, or a bad input line: then `errors` says
    what). `result` is the text of the turn's last round (or the error). After Claude Code's fields
    come this runtime's own: the saved turn, the state's size, the attention window."""

    type: Literal["result"] = "result"
    subtype: Literal["success", "error_max_turns", "error_during_execution"]
    is_error: bool
    result: str
    errors: list[str] = Field(default_factory=list)
    num_turns: int  # model rounds in this turn: 1, plus one after each batch of tool results
    duration_ms: int
    duration_api_ms: int  # time the model worked (reading and writing)
    total_cost_usd: float = 0.0  # a local model
    usage: Usage
    permission_denials: list[PermissionDenial] = Field(default_factory=list)
    stop_reason: str | None = None  # end_of_turn, max_tokens, max_tool_rounds, cancelled
    turn: int | None = None  # the session's turn number this turn was saved as
    saved: bool = False
    state_tokens: int | None = None
    state_bytes: int | None = None
    window: int | None = None
    tokens_per_s: float | None = None
    forked_from: str | None = None  # another process saved this turn number first (agent/events.py)
    plan: str | None = None  # with --permission-mode plan: the plan this turn made (agent/plan.py)


class InputBody(BaseModel):
    model_config = ConfigDict(extra="ignore")
    role: Literal["user"]
    content: str | list[TextBlock]


class UserInput(BaseModel):
    """One line of `--input-format stream-json`: a user message (text, or text blocks). Other fields
    Claude Code's clients send (`session_id`, `parent_tool_use_id`, ...) are read and ignored: the
    session is the one this process runs."""

    model_config = ConfigDict(extra="ignore")
    type: Literal["user"]
    message: InputBody

    def text(self) -> str:
        content = self.message.content
        return content if isinstance(content, str) else "\n\n".join(b.text for b in content)


OUTPUT_MODELS: tuple[type[BaseModel], ...] = (
    SystemInit, AssistantMessage, UserMessage, StreamEvent, SystemNotice, ResultMessage,
)  # fmt: skip


def render_doc() -> str:
    """docs/headless.md: the protocol and every object's JSON schema, from the models above."""
    intro = (__doc__ or "").split("\n\n", 1)[1].split("\ndocs/headless.md")[0].strip()
    out = [
        "# Headless protocol: `run --output-format json|stream-json`, `--input-format stream-json`\n\n",
        "Generated from agent/headless_schema.py by `python -m hybrid_agent.agent.headless_schema`; "
        "do not edit by hand.\n\n",
        intro + "\n\n",
        "Decisions: assistant text comes as one `assistant` message per stretch of text (a message "
        "is complete when printed); the deltas are only printed with `--include-partial-messages`. "
        "A bad input line (not JSON, not a user message, not UTF-8, over 64 MiB) ends the process: "
        "a `result` with subtype `error_during_execution` and the line's number in `errors` is printed, "
        "and the exit status is 1, as Claude Code stops on a line it cannot parse. `--json` is "
        "`--output-format stream-json`. `--output-format text` (the default) prints the answer as it "
        "streams and `session: ID` last.\n\n",
        "Example:\n\n",
        "    hybrid-agent run --output-format json 'What does main.py do?' | jq -r .result\n",
        '    printf \'%s\\n\' \'{"type": "user", "message": {"role": "user", "content": "hi"}}\' \\\n',
        "      | hybrid-agent run --input-format stream-json --output-format stream-json\n",
    ]
    for model in (*OUTPUT_MODELS, UserInput):
        kind = "input" if model is UserInput else "output"
        schema = json.dumps(model.model_json_schema(), indent=2, sort_keys=True)
        out.append(f"\n## {model.__name__} ({kind})\n\n```json\n{schema}\n```\n")
    return "".join(out)


if __name__ == "__main__":
    print(render_doc(), end="")
