"""Plan mode, the fourth approval mode (`plan`), and the notes a session records besides its turns.

In plan mode the model may look but not touch: it is offered only the read-only tools (tools declared
`read_only`, MCP tools whose server marks them `readOnlyHint`, tools/base.py), and a call of any other
tool is refused with a tool error saying that plan mode is on.
Its final answer is the plan (`TurnEnd.plan`, and a `system` event with `data.plan`). Accepting it
(`accept_plan`: the UI's "Accept plan") switches back to the mode used before plan mode and gives the
message that asks the model to carry the plan out, in the same session. The next turn after a plan-mode
turn tells the model that plan mode is off.

Where the offer is made: the tool list of the system prompt is the start of the session's saved state
(docs/design.md, "One turn"), so it is fixed when the session starts. A session that starts in plan
mode gets only the read-only tools there; every plan-mode turn's message also names the tools it may
use (a session that entered plan mode later has the others in its system prompt). When plan mode ends,
the first message after it gives the schemas of the tools the system prompt lacks, once.

Mode changes (`Agent.mode = ...`, from the UI's shift+tab or `accept_plan`) are recorded as `system`
events with `data.mode`; they and the hook runs of a turn that was not saved (cancelled, refused, an
error) reach the session's events through `_keep_notes` (agent/loop.py). Neither is part of the
conversation (agent/records.py).
"""

from __future__ import annotations

import contextlib
from typing import Any, Literal

from hybrid_agent.agent.records import NOTE_KEYS
from hybrid_agent.memory import Event, Store, StoreError
from hybrid_agent.model.chat import render_tool_list
from hybrid_agent.tools.registry import ToolRegistry

Mode = Literal["ask", "accept-edits", "auto", "plan"]
MODES: tuple[Mode, ...] = ("ask", "accept-edits", "auto", "plan")
PLAN: Mode = "plan"


def read_only_tools(registry: ToolRegistry) -> list[str]:
    """The tools plan mode offers: those that only read (and that policy does not deny)."""
    return [s["function"]["name"] for s in registry.schemas() if registry.read_only(s["function"]["name"])]


def plan_note(tools: list[str]) -> str:
    """The context of a plan-mode turn's message."""
    offered = ", ".join(tools) if tools else "none"
    return (
        "[Plan mode is on. Do not change anything yet: look around with the read-only tools only "
        f"({offered}); any other tool call is refused. Then answer with a step-by-step plan for the "
        "request below. The user will read it and, if they accept it, ask you to carry it out.]"
    )


def plan_off_note(mode: str, added: list[dict[str, Any]]) -> str:
    """The context of the first message after a plan-mode turn; `added`: the schemas of the tools the
    session's system prompt does not list (it started in plan mode)."""
    note = f"[Plan mode is off (approval mode: {mode}): every tool is available again.]"
    if added:
        note += "\nThese tools are available now, call them as the others:\n" + render_tool_list(added)
    return note


def plan_refusal(name: str, tools: list[str]) -> str:
    offered = ", ".join(tools) if tools else "none"
    return (
        f"plan mode is on: {name} can change files or run commands, so this call was not run. Use only "
        f"the read-only tools ({offered}) and answer with your plan; the user accepts it to leave plan mode"
    )


ACCEPTED = "I accept the plan. Carry it out now, step by step."


def carry_out_hint(session_id: str) -> str:
    """What headless `run` says after a plan: how to carry it out."""
    return (
        "plan mode: nothing was changed. To carry out the plan: hybrid-agent run --resume "
        f'{session_id} --permission-mode ask "{ACCEPTED}" (or accept-edits, auto)'
    )


def mode_event(old: str, new: str) -> Event:
    return Event("system", f"approval mode: {old} -> {new}", {"mode": {"from": old, "to": new}})


def plan_event(plan: str) -> Event:
    return Event("system", "plan", {"plan": plan})


def is_note(event: Event) -> bool:
    return event.kind == "system" and any(k in (event.data or {}) for k in NOTE_KEYS)


class PlanOps:
    """The approval mode of `Agent` (agent/loop.py) and what plan mode adds to it; a mixin."""

    registry: ToolRegistry
    store: Store
    session_id: str
    turn: int
    _mode: str
    _mode_before_plan: str
    _notes: list[Event]  # mode changes (and hook runs of an unsaved turn) not yet in the database
    _after_plan: bool  # the last turn was a plan-mode turn: the next one says plan mode is off

    _session_row: Any
    _tools: list[dict[str, Any]]  # the tool list of the session's system prompt

    @property
    def mode(self) -> str:
        return self._mode

    @mode.setter
    def mode(self, mode: str) -> None:
        """Set the approval mode (a plain assignment, from any thread: read at the next tool call).
        A change is recorded in the session's events with its next turn."""
        if mode not in MODES:
            raise ValueError(f"mode must be one of {', '.join(MODES)}, not {mode!r}")
        old = getattr(self, "_mode", None)
        self._mode = mode
        if old is None:  # the agent being built
            self._mode_before_plan, self._notes, self._after_plan = "ask", [], False
            return
        if mode == PLAN and old != PLAN:
            self._mode_before_plan = old
        if mode != old:
            self._notes.append(mode_event(old, mode))

    @property
    def mode_before_plan(self) -> str:
        """The mode `accept_plan` goes back to: the one set before plan mode (ask when it started in it)."""
        return self._mode_before_plan

    def accept_plan(self) -> str:
        """Leave plan mode for the mode used before it; returns the message that asks the model to carry
        out its plan (send it as the next turn)."""
        if self._mode == PLAN:
            self.mode = self._mode_before_plan
        return ACCEPTED

    def _offered_tools(self) -> list[dict[str, Any]]:
        """The tool list a new session's system prompt gets: in plan mode only the read-only tools."""
        schemas = [s["function"] for s in self.registry.schemas()]
        return [f for f in schemas if self.registry.read_only(f["name"])] if self._mode == PLAN else schemas

    def _plan_context(self) -> tuple[bool, str]:
        """(whether this turn is in plan mode, the note its message gets)."""
        if self._mode == PLAN:
            return True, plan_note(read_only_tools(self.registry))
        if self._after_plan:
            listed = {t.get("name") for t in self._tools}
            added = [s["function"] for s in self.registry.schemas() if s["function"]["name"] not in listed]
            return False, plan_off_note(self._mode, added)
        return False, ""

    def _plan_refusal(self, name: str) -> str | None:
        """The refusal of a call plan mode does not allow, or None."""
        if self._mode != PLAN or name not in self.registry or self.registry.read_only(name):
            return None
        return plan_refusal(name, read_only_tools(self.registry))

    def _take_notes(self) -> list[Event]:
        notes, self._notes = self._notes, []
        return notes

    def _flush_notes(self) -> None:
        """The notes not yet saved (mode changes since the last turn) go to the session now: it is
        being left or closed. A session without a database row has nowhere to keep them."""
        notes = self._take_notes() if getattr(self, "_notes", None) else []
        if notes and self.session_id and self._session_row(False) is not None:
            with contextlib.suppress(StoreError):
                self.store.append_events(self.session_id, self.turn, notes)

    def _keep_notes(self, events: list[Event]) -> None:
        """The notes among the events of a turn that will not be saved (its hook runs, mode changes)
        still reach the session: after the events of its last saved turn, or, before the session has
        one, with its first."""
        notes = [e for e in events if is_note(e)]
        if not notes:
            return
        if self._session_row(False) is None:
            self._notes[:0] = notes
            return
        self.store.append_events(self.session_id, self.turn, notes)
