"""Events an agent turn yields, in the order they happen.

The TUI and the CLI (`--json`) consume these; they are pydantic models so that `--json` is
`event.model_dump_json()` and a test can compare them structurally. `kind` is the discriminator.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, Field


class TextDelta(BaseModel):
    """A piece of assistant text, streamed as it is decoded."""

    kind: Literal["text"] = "text"
    text: str


class PrefillProgress(BaseModel):
    """How far the model has read a long segment (a big message or tool output), sent after each
    prefill chunk of a segment longer than one chunk: reading one can take minutes on a CPU."""

    kind: Literal["prefill"] = "prefill"
    tokens: int  # read so far
    total: int  # in the segment
    tokens_per_s: float


class ToolCallRequested(BaseModel):
    """The model asked for a tool. `needs_approval` is true when the policy says `ask`: the consumer
    answers through the approval callback it gave the agent (the UI shows `diff` / `command` / `path`)."""

    kind: Literal["tool_call"] = "tool_call"
    call_id: str
    tool: str
    arguments: dict[str, Any]
    source: str = "builtin"  # "builtin", "plugin:<dist>", "mcp:<server>"
    needs_approval: bool = False
    diff: str | None = None
    command: str | None = None
    path: str | None = None


class ToolResultEvent(BaseModel):
    kind: Literal["tool_result"] = "tool_result"
    call_id: str
    tool: str
    text: str
    is_error: bool = False
    denied: bool = False


class TurnEnd(BaseModel):
    """The turn is over and its snapshot is committed (`saved`)."""

    kind: Literal["turn_end"] = "turn_end"
    session_id: str
    turn: int
    prompt_tokens: int
    completion_tokens: int
    state_tokens: int
    state_bytes: int
    window: int | None
    tokens_per_s: float
    saved: bool = True
    stop_reason: Literal["end_of_turn", "max_tokens", "max_tool_rounds", "cancelled"] = "end_of_turn"
    # Set when another process saved this turn number of the session first (the session open in two
    # windows): this turn was saved on a fork at the turn both share, which is now `session_id`.
    forked_from: str | None = None
    # A plan-mode turn's final answer: the plan the user may accept (agent/plan.py).
    plan: str | None = None

    def fork_notice(self) -> str:
        """What to tell the user when `forked_from` is set."""
        base = self.turn - 1
        shared = {0: "a new session", 1: "a fork sharing turn 1"}.get(base, f"a fork sharing turns 1-{base}")
        return (
            f"another process saved turn {self.turn} of session {self.forked_from} first; this turn "
            f"is saved on session {self.session_id} instead ({shared})"
        )


class ErrorEvent(BaseModel):
    """Something the user should see; the session stays at its last snapshot."""

    kind: Literal["error"] = "error"
    message: str


class HookNotice(BaseModel):
    """A hook ran (agent/hooks.py). `message` is the one line to show when it did not go well (a
    failure, a timeout, a block); empty when it did."""

    kind: Literal["hook"] = "hook"
    event: str
    command: str
    exit_code: int | None  # None: killed at its timeout
    duration_s: float
    blocked: bool = False
    message: str = ""


class MentionNotice(BaseModel):
    """An `@path` of the message (agent/mentions.py): the file was attached, cut, or not attached
    (outside the workspace, not text, ...); `message` says which in one line."""

    kind: Literal["mention"] = "mention"
    path: str
    attached: bool
    message: str


AgentEvent = Annotated[
    TextDelta
    | PrefillProgress
    | ToolCallRequested
    | ToolResultEvent
    | TurnEnd
    | ErrorEvent
    | HookNotice
    | MentionNotice,
    Field(discriminator="kind"),
]


class ApprovalDecision(BaseModel):
    """The answer to a `ToolCallRequested` with `needs_approval`. `always` makes the answer stick for
    this tool for the rest of the session; `reason` (on a rejection) goes back to the model."""

    allow: bool
    always: bool = False
    reason: str | None = None
