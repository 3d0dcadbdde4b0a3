"""What `hybrid-agent acp` (agent/acp_server.py) tells the editor: the agent's turn events and a
saved session's events as ACP `session/update`s, and the other direct translations between the two
(stop reasons, permission answers, prompt blocks, MCP server entries).

- A tool call is announced as `tool_call` (`pending` when it waits for the user's approval, else
  `in_progress`) with a title, a kind and the raw arguments, and ended by one `tool_call_update`
  (`completed`, or `failed` for an error or a refusal) carrying the tool's output; an edit that ran
  also carries its diff (the file's text before and after), which editors show as a diff.
- `update_plan` (agent/acp_tools.py) is the one tool the editor does not see as a tool call: its
  entries become a `plan` update, which editors draw as the thread's plan.
- A replayed session (`session/load`) is its stored conversation: the user's messages, the
  assistant's visible text, and each tool call with its result.
"""

from __future__ import annotations

import json
from typing import Any

from acp import helpers
from acp.schema import PermissionOption, PlanEntry, ToolCallLocation
from hybrid_agent.agent.errors import AgentError
from hybrid_agent.agent.events import ApprovalDecision, ToolCallRequested, ToolResultEvent
from hybrid_agent.memory import Event

PLAN_TOOL = "update_plan"

# The agent's stop reasons (agent/events.py TurnEnd) as ACP's.
STOP_REASONS = {
    "end_of_turn": "end_turn",
    "max_tokens": "max_tokens",
    "max_tool_rounds": "max_turn_requests",
    "cancelled": "cancelled",
}

_KINDS = {
    "read_file": "read",
    "write_file": "edit",
    "edit_file": "edit",
    "list_dir": "search",
    "glob": "search",
    "grep": "search",
    "run_command": "execute",
}

PERMISSION_OPTIONS = [
    PermissionOption(option_id="allow_once", name="Allow", kind="allow_once"),
    PermissionOption(option_id="allow_always", name="Always allow", kind="allow_always"),
    PermissionOption(option_id="reject_once", name="Reject", kind="reject_once"),
    PermissionOption(option_id="reject_always", name="Always reject", kind="reject_always"),
]


def stop_reason(agent_reason: str) -> str:
    return STOP_REASONS[agent_reason]


def decision_of(option_id: str) -> ApprovalDecision:
    """The agent's approval for the option the user picked."""
    if option_id == "allow_once":
        return ApprovalDecision(allow=True)
    if option_id == "allow_always":
        return ApprovalDecision(allow=True, always=True)
    if option_id == "reject_always":
        return ApprovalDecision(allow=False, always=True, reason="the user rejected it in the editor")
    return ApprovalDecision(allow=False, reason="the user rejected it in the editor")


def tool_kind(tool: str) -> str:
    return _KINDS.get(tool, "other")


def tool_title(tool: str, arguments: dict[str, Any]) -> str:
    """One line for the editor's tool-call header."""
    path = arguments.get("path") if isinstance(arguments.get("path"), str) else None
    if tool == "read_file" and path:
        return f"Read {path}"
    if tool == "write_file" and path:
        return f"Write {path}"
    if tool == "edit_file" and path:
        return f"Edit {path}"
    if tool == "list_dir":
        return f"List {path or '.'}"
    if tool in ("glob", "grep") and isinstance(arguments.get("pattern"), str):
        return f"{tool} {arguments['pattern']}"[:120]
    if tool == "run_command" and isinstance(arguments.get("command"), str):
        return f"Run `{' '.join(arguments['command'].split())[:100]}`"
    shown = json.dumps(arguments, ensure_ascii=False)
    return f"{tool} {shown[:100]}"


def locations(path: str | None) -> list[ToolCallLocation] | None:
    return [ToolCallLocation(path=path)] if path else None


def diff_content(path: str, before: str | None, after: str) -> Any:
    return helpers.tool_diff_content(path, after, before)


def tool_call_start(
    call: ToolCallRequested, abs_path: str | None, diff: tuple[str | None, str] | None
) -> Any:
    """The `tool_call` update announcing `call` (its diff shown ahead, for the approval)."""
    content = [diff_content(abs_path, *diff)] if diff is not None and abs_path else None
    return helpers.start_tool_call(
        call.call_id,
        tool_title(call.tool, call.arguments),
        kind=tool_kind(call.tool),  # type: ignore[arg-type]
        status="pending" if call.needs_approval else "in_progress",
        content=content,
        locations=locations(abs_path),
        raw_input=call.arguments,
    )


def permission_tool_call(call: ToolCallRequested, abs_path: str | None, diff: Any) -> Any:
    """The `toolCall` of a `session/request_permission` for `call`."""
    from acp.schema import ToolCallUpdate

    content = [diff_content(abs_path, *diff)] if diff is not None and abs_path else None
    return ToolCallUpdate(
        tool_call_id=call.call_id,
        title=tool_title(call.tool, call.arguments),
        kind=tool_kind(call.tool),  # type: ignore[arg-type]
        status="pending",
        content=content,
        locations=locations(abs_path),
        raw_input=call.arguments,
    )


def tool_call_end(
    result: ToolResultEvent, abs_path: str | None = None, diff: tuple[str | None, str] | None = None
) -> Any:
    """The `tool_call_update` ending a call: its output, and the diff of an edit that ran."""
    failed = result.is_error or result.denied
    content: list[Any] = [helpers.tool_content(helpers.text_block(result.text))]
    if diff is not None and abs_path and not failed:
        content.append(diff_content(abs_path, *diff))
    return helpers.update_tool_call(
        result.call_id,
        status="failed" if failed else "completed",
        content=content,
        raw_output={"text": result.text, "is_error": result.is_error, "denied": result.denied},
    )


def tool_call_abandoned(call_id: str, why: str) -> Any:
    """The end of a call the turn stopped before finishing (a cancel, an error)."""
    return helpers.update_tool_call(
        call_id, status="failed", content=[helpers.tool_content(helpers.text_block(why))]
    )


def plan_update(arguments: dict[str, Any]) -> Any | None:
    """The `plan` update for an `update_plan` call, or None when its entries do not parse."""
    entries = arguments.get("entries")
    if not isinstance(entries, list):
        return None
    try:
        # The model may leave out priority and status (update_plan's defaults, agent/acp_tools.py).
        return helpers.update_plan(
            PlanEntry.model_validate({"priority": "medium", "status": "pending", **e}) for e in entries
        )
    except Exception:
        return None


def replay(events: list[Event], workspace: str) -> list[Any]:
    """The updates that redraw a saved session: its messages, and each tool call with its result."""
    from pathlib import Path

    out: list[Any] = []
    calls: dict[str, ToolCallRequested] = {}
    for ev in events:
        data = ev.data or {}
        if ev.kind == "user":
            out.append(helpers.update_user_message_text(ev.content))
        elif ev.kind == "assistant" and ev.content:
            out.append(helpers.update_agent_message_text(ev.content))
        elif ev.kind == "tool_call":
            try:
                call = ToolCallRequested.model_validate({k: v for k, v in data.items() if k in _CALL_FIELDS})
            except Exception:
                continue
            call = call.model_copy(update={"needs_approval": False})
            if call.tool == PLAN_TOOL:
                if (plan := plan_update(call.arguments)) is not None:
                    out.append(plan)
                continue
            calls[call.call_id] = call
            path = call.arguments.get("path")
            where = str(Path(workspace) / path) if isinstance(path, str) else None
            out.append(tool_call_start(call, where, None))
        elif ev.kind == "tool_result":
            call_id = data.get("call_id")
            if call_id in calls:
                fields = {k: v for k, v in data.items() if k in _RESULT_FIELDS}
                out.append(tool_call_end(ToolResultEvent(text=ev.content, **fields)))
    return out


_CALL_FIELDS = set(ToolCallRequested.model_fields) - {"kind"}
_RESULT_FIELDS = set(ToolResultEvent.model_fields) - {"kind", "text"}


def prompt_text(blocks: list[Any]) -> str:
    """The user's message from the prompt's content blocks: text as is, an embedded text resource as
    its text under its URI, a resource link as its URI. Images and audio are refused (the initialize
    answer says so)."""
    parts: list[str] = []
    for block in blocks:
        kind = getattr(block, "type", None)
        if kind == "text":
            parts.append(block.text)
        elif kind == "resource_link":
            parts.append(f"@{block.uri}")
        elif kind == "resource" and hasattr(block.resource, "text"):
            parts.append(f"{block.resource.uri}:\n```\n{block.resource.text}\n```")
        else:
            raise AgentError(f"this agent reads text only; a {kind} block cannot be sent to it")
    text = "\n\n".join(p for p in parts if p)
    if not text.strip():
        raise AgentError("the prompt is empty")
    return text


def mcp_entries(servers: list[Any] | None) -> tuple[dict[str, dict[str, Any]], list[str]]:
    """The editor's MCP servers as settings entries (agent/mcp_servers.py), and one line per server
    that cannot be mounted (an SSE or ACP transport)."""
    entries: dict[str, dict[str, Any]] = {}
    skipped: list[str] = []
    for server in servers or []:
        kind = getattr(server, "type", None)
        if kind == "http":
            entries[server.name] = {
                "transport": "http",
                "url": server.url,
                "headers": {h.name: h.value for h in server.headers},
            }
        elif kind is None and getattr(server, "command", None):
            entry: dict[str, Any] = {"command": server.command, "args": list(server.args)}
            if server.env:
                entry["env"] = {e.name: e.value for e in server.env}
            entries[server.name] = entry
        else:
            skipped.append(
                f"MCP server {server.name!r}: the {kind} transport is not supported (use stdio or http)"
            )
    return entries, skipped
