"""`hybrid-agent sessions export ID --format jsonl|json|md` and `sessions import FILE.json`.

- `jsonl` (the default, as before): the stored events, one JSON object a line.
- `json`: one object, `SessionExport` below: the session's details and its events. This is what
  `sessions import` reads.
- `md`: the readable transcript; each tool call and its result folded in a `<details>` block.

An import is text only: the conversation (user and assistant text, tool calls and their results) goes
into a new session under a new id, with no model state. The state is rebuilt by prefill when the
session first runs a turn (agent/loop.py reads the whole conversation then). The file is never
trusted: it is validated (`SessionExport`), at most MAX_IMPORT_BYTES, and only its text is kept: not
its system prompt, tool list or the raw model markup; the session works on `--workspace` (not a folder
the file names). An import writes nothing but the database's rows and runs nothing.
"""

from __future__ import annotations

import html
import json
import re
import sys
from datetime import datetime
from pathlib import Path
from typing import Any, Literal

from hybrid_agent.agent.errors import AgentError
from pydantic import BaseModel, ConfigDict, Field, ValidationError

FORMAT_NAME = "hybrid-agent-session"
FORMAT_VERSION = 1
MAX_IMPORT_BYTES = 64 << 20
MAX_EVENTS = 100_000
_TEXT_MAX = 16 << 20  # one event's text
_NAME_MAX = 1000  # a title, an id, a tool's name


class ExportedEvent(BaseModel):
    """One stored event (agent/records.py says what each kind holds)."""

    model_config = ConfigDict(extra="forbid")
    turn: int = Field(ge=0, le=2**31 - 1)
    seq: int = Field(ge=0, le=2**31 - 1)
    kind: Literal["user", "assistant", "tool_call", "tool_result", "system"]
    content: str = Field(max_length=_TEXT_MAX)
    data: dict[str, Any] | None = None
    created_at: datetime | None = None


class SessionExport(BaseModel):
    """`sessions export --format json`; what `sessions import` reads."""

    model_config = ConfigDict(extra="forbid")
    format: Literal["hybrid-agent-session"] = FORMAT_NAME
    version: Literal[1] = FORMAT_VERSION
    id: str = Field(max_length=_NAME_MAX)
    title: str = Field(max_length=_NAME_MAX)
    workspace: str = Field(max_length=4096)
    model_fingerprint: str = Field(max_length=128)
    created_at: datetime
    updated_at: datetime
    parent_id: str | None = Field(default=None, max_length=_NAME_MAX)
    fork_turn: int | None = None
    git_head: str | None = Field(default=None, max_length=64)
    turns: int = Field(ge=0)
    events: list[ExportedEvent] = Field(max_length=MAX_EVENTS)


class _ImportedCall(BaseModel):
    """The parts of a `tool_call` event's data an import keeps (what the UI redraws)."""

    call_id: str = Field(max_length=_NAME_MAX)
    tool: str = Field(max_length=_NAME_MAX)
    arguments: dict[str, Any] = Field(default_factory=dict)


class _ImportedResult(BaseModel):
    call_id: str = Field(default="", max_length=_NAME_MAX)
    tool: str = Field(default="", max_length=_NAME_MAX)
    is_error: bool = False
    denied: bool = False


# ---- export --------------------------------------------------------------------------------------
def event_json(ev: Any) -> dict[str, Any]:
    return {
        "turn": ev.turn,
        "seq": ev.seq,
        "kind": ev.kind,
        "content": ev.content,
        "data": ev.data,
        "created_at": ev.created_at.isoformat() if ev.created_at else None,
    }


def session_fields(info: Any) -> dict[str, Any]:
    """A session's details (memory's SessionInfo) as `sessions export --format json` carries them and
    `sessions list/show --json` print them (agent/commands.py, dates there as ISO text): one list."""
    return {
        "id": info.id,
        "title": info.title,
        "workspace": info.workspace,
        "model_fingerprint": info.model_fingerprint,
        "created_at": info.created_at,
        "updated_at": info.updated_at,
        "parent_id": info.parent_id,
        "fork_turn": info.fork_turn,
        "turns": info.latest_turn or 0,
        "git_head": (info.meta or {}).get("git_head"),  # the commit its workspace was on at the start
    }


def session_export(store: Any, session_id: str) -> SessionExport:
    info = store.get_session(session_id)
    return SessionExport(
        **session_fields(info),
        events=[ExportedEvent.model_validate(event_json(ev)) for ev in store.events(session_id)],
    )


def _fence(text: str, lang: str = "") -> str:
    """`text` in a code fence longer than any run of backticks inside it."""
    longest = max((len(m) for m in re.findall(r"`+", text)), default=0)
    ticks = "`" * max(3, longest + 1)
    return f"{ticks}{lang}\n{text.rstrip(chr(10))}\n{ticks}\n"


def markdown(export: SessionExport) -> str:
    """The readable transcript: a section per turn, each tool call with its result in `<details>`."""
    out = [f"# {export.title or '(untitled)'}\n\n"]
    out.append(f"Session `{export.id}` on `{export.workspace}`, {export.turns} turn(s)")
    if export.git_head:
        out.append(f", started at git commit `{export.git_head}`")
    out.append(".\n")
    turn: int | None = None
    open_call = False
    for ev in export.events:
        data = ev.data or {}
        if ev.kind == "system":
            continue
        if ev.turn != turn:
            if open_call:
                out.append("</details>\n")
                open_call = False
            turn = ev.turn
            out.append(f"\n## Turn {turn}\n" if turn else "\n## Imported conversation\n")
        if ev.kind in ("user", "assistant") and open_call:
            out.append("</details>\n")
            open_call = False
        if ev.kind == "user":
            out.append(f"\n**User**\n\n{ev.content}\n")
        elif ev.kind == "assistant" and ev.content.strip():
            out.append(f"\n**Assistant**\n\n{ev.content}\n")
        elif ev.kind == "tool_call":
            if open_call:
                out.append("</details>\n")
            args = json.dumps(data.get("arguments", {}), ensure_ascii=False, indent=2)
            out.append(f"\n<details>\n<summary>tool call: {html.escape(ev.content)}</summary>\n\n")
            out.append(_fence(args, "json"))
            open_call = True
        elif ev.kind == "tool_result":
            label = "error" if data.get("is_error") else "result"
            if not open_call:
                tool = html.escape(str(data.get("tool", "")))
                out.append(f"\n<details>\n<summary>tool {label}: {tool}</summary>\n")
            out.append(f"\n{label}:\n\n{_fence(ev.content)}")
            out.append("</details>\n")
            open_call = False
    if open_call:
        out.append("</details>\n")
    return "".join(out)


def export_session(store: Any, session_id: str, fmt: str) -> int:
    """`sessions export ID --format FMT` on stdout (exact text: JSON escapes, Markdown is a file)."""
    if fmt == "jsonl":
        for ev in store.events(session_id):
            print(json.dumps(event_json(ev), ensure_ascii=False))
        return 0
    export = session_export(store, session_id)
    if fmt == "json":
        print(export.model_dump_json(indent=1))
    else:
        sys.stdout.write(markdown(export))
    return 0


# ---- import --------------------------------------------------------------------------------------
def read_export(path: str) -> SessionExport:
    """The file, checked: a one-line AgentError says what is wrong and where."""
    file = Path(path)
    try:
        with file.open("rb") as f:
            raw = f.read(MAX_IMPORT_BYTES + 1)
    except OSError as exc:
        raise AgentError(f"cannot read {path}: {exc.strerror or exc}") from None
    if len(raw) > MAX_IMPORT_BYTES:
        raise AgentError(f"{path} is over {MAX_IMPORT_BYTES >> 20} MiB; an exported session is far smaller")
    try:
        return SessionExport.model_validate_json(raw)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "the file"
        more = f" (and {exc.error_count() - 1} more)" if exc.error_count() > 1 else ""
        raise AgentError(
            f"{path} is not a session exported with `hybrid-agent sessions export ID --format json`: "
            f"{where}: {first['msg']}{more}"
        ) from None


def imported_events(export: SessionExport) -> list[Any]:
    """The conversation's text as events to store (memory.Event): system events (the exporter's
    prompt, tools and hook runs) and raw model markup are left out; tool data keeps only what the UI
    redraws."""
    from hybrid_agent.memory import Event

    out = []
    for ev in export.events:
        data = ev.data or {}
        try:
            if ev.kind == "user":
                context = data.get("context")
                kept = {"context": context} if isinstance(context, str) and context else None
            elif ev.kind == "assistant":
                kept = None
            elif ev.kind == "tool_call":
                kept = _ImportedCall.model_validate(data).model_dump()
            elif ev.kind == "tool_result":
                kept = _ImportedResult.model_validate(data).model_dump()
            else:
                continue
        except ValidationError as exc:
            raise AgentError(f"event {ev.turn}.{ev.seq} ({ev.kind}): {exc.errors()[0]['msg']}") from None
        out.append(Event(ev.kind, ev.content, kept, created_at=ev.created_at))
    spoken = [e.kind for e in out if e.kind in ("user", "assistant", "tool_result")]
    if spoken and spoken[0] != "user":
        raise AgentError(f"the conversation starts with a {spoken[0]} event, not a user message")
    return out


def import_session(store: Any, path: str, workspace: str) -> int:
    """`sessions import FILE.json`: a new session; prints its id and what happens on its first turn."""
    export = read_export(path)
    events = imported_events(export)
    folder = Path(workspace).resolve()
    if not folder.is_dir():
        raise AgentError(f"--workspace {workspace} is not a folder; the imported session works on one")
    info = store.create_session(
        export.title,
        str(folder),
        export.model_fingerprint,
        meta={"imported_from": export.id},
        events=events,
    )
    print(info.id)
    print(
        f"hybrid-agent: imported {len(events)} event(s) of session {export.id} as {info.id} (text only): "
        "the model reads the whole conversation on its first turn to rebuild the state",
        file=sys.stderr,
    )
    return 0
