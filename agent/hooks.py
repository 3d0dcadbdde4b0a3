"""Hooks: the user's own commands, run at points of a session (the `hooks` table of the settings,
agent/settings.py).

Events: `SessionStart` (a session created or resumed), `UserPromptSubmit` (before the user's message is
read by the model), `PreToolUse` (a call allowed by the approval and the permission rules, before it
runs), `PostToolUse` (after it ran), `Stop` (a turn ends). Each hook of the event whose `matcher` (a
regular expression, matched against the whole tool name; absent: every tool) fits runs in turn:
`command` through /bin/sh in the workspace, in a process group of its own, with one JSON object on
stdin (`session_id`, `workspace`, `hook_event_name`; `tool_name` and `tool_input` for the tool events,
`tool_response` for PostToolUse; `prompt` for UserPromptSubmit).

Its exit status decides: 0 goes on (for UserPromptSubmit and SessionStart its stdout is context the
model reads before the user's message); 2 blocks (a PreToolUse call is not run and the hook's stderr
is the reason the model reads; a UserPromptSubmit prompt is refused with it; for the other events it is
a warning); any other status is a one-line warning. A hook still running after `timeout` seconds has its
process group killed: a warning too. Every run is recorded in the session's events
(`hook_record`), also those of a turn that is cancelled or refused (agent/plan.py, `_keep_notes`).

Hooks from a project or local settings file run only in a trusted folder: `load_settings` drops them
otherwise.
"""

from __future__ import annotations

import contextlib
import json
import re
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hybrid_agent.agent.events import HookNotice
from hybrid_agent.agent.settings import HOOK_EVENTS, Settings
from hybrid_agent.memory import Event
from hybrid_agent.tools.builtins.command import stop_group

BLOCK = 2  # the exit status that blocks
DEFAULT_TIMEOUT_S = 60.0
MAX_OUTPUT_CHARS = 10_000  # of a hook's stdout (context) and stderr (a reason) kept
_GRACE_S = 2.0


@dataclass(frozen=True)
class Hook:
    event: str
    command: str
    matcher: re.Pattern[str] | None = None
    timeout: float = DEFAULT_TIMEOUT_S
    origin: str = ""  # the settings layer it came from

    def matches(self, tool: str | None) -> bool:
        return self.matcher is None or tool is None or self.matcher.fullmatch(tool) is not None


@dataclass
class HookRun:
    """One run of a hook: its exit status (None: killed at its timeout), how long it took, its output."""

    hook: Hook
    exit_code: int | None
    duration_s: float
    stdout: str = ""
    stderr: str = ""
    blocks: bool = False  # exit 2 where the event can be blocked

    def warning(self) -> str | None:
        """The one line to show the user, or None for a run that went well."""
        what = f"{self.hook.event} hook `{self.hook.command}`"
        if self.exit_code is None:
            return f"{what} was killed after {self.hook.timeout:g} s"
        if self.exit_code == 0:
            return None
        why = " ".join(self.stderr.split())[:200]
        if self.blocks:
            return f"{what} blocked it: {why or 'no reason given'}"
        return f"{what} exited with {self.exit_code}" + (f": {why}" if why else "")

    def reason(self) -> str:
        return self.stderr.strip() or f"the {self.hook.event} hook `{self.hook.command}` gave no reason"


def hook_record(run: HookRun) -> Event:
    """A run as a session event: kind `system` with `data.hook` (records.py keeps such events out of
    the conversation)."""
    data = {
        "event": run.hook.event,
        "command": run.hook.command,
        "exit_code": run.exit_code,
        "duration_s": round(run.duration_s, 3),
        "blocked": run.blocks,
        "timed_out": run.exit_code is None,
    }
    return Event("system", f"hook {run.hook.event}: {run.hook.command}", {"hook": data})


@dataclass
class HookOutcome:
    """What the hooks of one event did: their runs, the run that blocked (if any), the context their
    stdout adds."""

    runs: list[HookRun] = field(default_factory=list)
    context: str = ""

    @property
    def blocked(self) -> HookRun | None:
        return next((r for r in self.runs if r.blocks), None)

    def records(self) -> list[Event]:
        return [hook_record(r) for r in self.runs]

    def notices(self) -> list[HookNotice]:
        return [
            HookNotice(
                event=r.hook.event,
                command=r.hook.command,
                exit_code=r.exit_code,
                duration_s=r.duration_s,
                blocked=r.blocks,
                message=r.warning() or "",
            )
            for r in self.runs
        ]


class Hooks:
    """The hooks of one agent, by event."""

    def __init__(self, workspace: str | Path, hooks: list[Hook] | None = None) -> None:
        self.workspace = Path(workspace).resolve()
        self.hooks: dict[str, list[Hook]] = {event: [] for event in HOOK_EVENTS}
        for hook in hooks or []:
            self.hooks[hook.event].append(hook)

    @classmethod
    def from_settings(cls, settings: Settings, workspace: str | Path) -> Hooks:
        hooks = []
        for event, entries in settings.get("hooks", {}).items():
            origins = settings.list_sources.get(f"hooks.{event}", [])
            for entry, origin in zip(entries, origins, strict=True):
                matcher = entry.get("matcher")
                hooks.append(
                    Hook(
                        event,
                        entry["command"],
                        None if matcher is None else re.compile(matcher),
                        float(entry.get("timeout", DEFAULT_TIMEOUT_S)),
                        origin,
                    )
                )
        return cls(workspace, hooks)

    def wants(self, event: str, tool: str | None = None) -> bool:
        return any(h.matches(tool) for h in self.hooks[event])

    def run(self, event: str, session_id: str, tool: str | None = None, **fields: Any) -> HookOutcome:
        """Run the hooks of `event` (those whose matcher fits `tool`), one after another, until one
        blocks. `fields` join the JSON object they read."""
        outcome = HookOutcome()
        payload = {"session_id": session_id, "workspace": str(self.workspace), "hook_event_name": event}
        if tool is not None:
            payload["tool_name"] = tool
        payload.update(fields)
        stdin = json.dumps(payload, ensure_ascii=False, default=str).encode()
        context = []
        for hook in self.hooks[event]:
            if not hook.matches(tool):
                continue
            run = self._run(hook, stdin)
            run.blocks = run.exit_code == BLOCK and event in ("PreToolUse", "UserPromptSubmit")
            outcome.runs.append(run)
            if run.exit_code == 0 and event in ("SessionStart", "UserPromptSubmit") and run.stdout.strip():
                context.append(run.stdout.strip())
            if run.blocks:
                break
        outcome.context = "\n\n".join(context)
        return outcome

    def _run(self, hook: Hook, stdin: bytes) -> HookRun:
        t0 = time.perf_counter()
        proc = subprocess.Popen(
            ["/bin/sh", "-c", hook.command],
            cwd=self.workspace,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            # Its own group, so that a timeout kills its children too (tools/builtins/command.py).
            start_new_session=True,
        )
        try:
            out, err = proc.communicate(stdin, timeout=hook.timeout)
            code: int | None = proc.returncode
        except subprocess.TimeoutExpired:
            stop_group(proc, lambda: proc.poll() is not None)
            code, out, err = None, b"", b""
            # (A child that left the group may still hold the pipes: then the output is lost.)
            with contextlib.suppress(subprocess.TimeoutExpired):
                out, err = proc.communicate(timeout=_GRACE_S)
        return HookRun(hook, code, time.perf_counter() - t0, _text(out), _text(err))


def _text(data: bytes | None) -> str:
    return (data or b"").decode("utf-8", "replace")[:MAX_OUTPUT_CHARS]
