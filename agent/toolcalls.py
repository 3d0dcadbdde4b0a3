"""A tool call of a turn: whether it needs approval (the mode, the "always" answers, the permission
rules of agent/permissions.py), asking for it, the hooks before and after it (agent/hooks.py), and
running it. A mixin of `Agent` (agent/loop.py), which keeps to the turn itself.

Tool calls that cannot be run (malformed, unknown tool, bad arguments, denied, blocked by a hook, a
tool that writes or runs things in plan mode: agent/plan.py) become results the model reads, never
exceptions.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from hybrid_agent.agent.engine import Engine
from hybrid_agent.agent.events import AgentEvent, ApprovalDecision, ToolCallRequested, ToolResultEvent
from hybrid_agent.agent.hooks import HookOutcome, Hooks
from hybrid_agent.agent.permissions import PermissionRules, Verdict, refusal, rule_name
from hybrid_agent.agent.prefill import TurnCancelled as _Cancelled
from hybrid_agent.agent.records import tool_call_event, tool_result_event
from hybrid_agent.memory import Event
from hybrid_agent.model.chat import ChatMessage, ParsedToolCall
from hybrid_agent.tools.registry import ToolRegistry

Approval = Callable[[ToolCallRequested], Awaitable[ApprovalDecision]]


class ToolCallOps:
    engine: Engine
    registry: ToolRegistry
    mode: str
    approval: Approval | None
    permissions: PermissionRules | None
    hooks: Hooks | None
    session_id: str
    _always: dict[str, ApprovalDecision]
    _cancel: threading.Event
    _on_model: Callable[..., Any]
    _plan_refusal: Callable[[str], str | None]

    def _needs_approval(self, name: str, arguments: dict[str, Any]) -> tuple[bool, Any, Verdict | None]:
        """(ask?, preview, the deciding permission rule: in every mode). Calls the registry refuses anyway
        (unknown tool, bad arguments, policy deny) are not asked about: their error is enough."""
        if name not in self.registry:
            return False, None, None
        try:
            self.registry.get(name).parse_arguments(arguments)
        except Exception:
            return False, None, None
        preview = self.registry.preview(name, arguments)
        rule = self.permissions and self.permissions.check(name, arguments, self.registry.get(name).source)
        if rule is not None and self.registry.policy(name) != "deny":
            return rule.action == "ask", preview, rule
        if self.registry.policy(name) != "ask" or self.mode == "auto" or name in self._always:
            # A remembered rejection is applied by the caller, without asking (and in every mode: the
            # user said never, and switching to auto does not take that back).
            return False, preview, None
        if self.mode == "accept-edits" and preview.diff is not None and preview.command is None:
            return False, preview, None
        return True, preview, None

    async def _tool_call(
        self, call: ParsedToolCall, call_id: str, turn: int, events: list[Event], new: list[ChatMessage]
    ) -> AsyncIterator[AgentEvent]:
        name = call.name or "?"
        hooked: list[Event] = []  # the hooks' runs
        if call.error is not None:
            request = ToolCallRequested(call_id=call_id, tool=name, arguments=call.arguments)
            yield request
            chat = self.engine.chat
            shape = f'{chat.tool_call_open}{{"name": "...", "arguments": {{...}}}}{chat.tool_call_close}'
            text = f"error: {call.error}. Write a tool call as {getattr(chat, 'call_example', shape)}"
            result = ToolResultEvent(call_id=call_id, tool=name, text=text, is_error=True)
        else:
            needs, preview, rule = await self._on_model(self._needs_approval, name, call.arguments)
            planned = self._plan_refusal(name)  # plan mode: not asked about, not run
            needs = needs and planned is None
            request = ToolCallRequested(
                call_id=call_id,
                tool=name,
                arguments=call.arguments,
                source=self.registry.get(name).source if name in self.registry else "builtin",
                needs_approval=needs,
                diff=getattr(preview, "diff", None),
                command=getattr(preview, "command", None),
                path=getattr(preview, "path", None),
            )
            yield request
            decision = ApprovalDecision(allow=True)
            remembered = self._always.get(name)
            if planned is not None:
                decision = ApprovalDecision(allow=False, reason="plan mode is on")
            elif rule is not None and rule.action == "deny":
                decision = ApprovalDecision(allow=False, reason=f"denied by {rule.describe()}")
            elif remembered is not None and not remembered.allow and name in self.registry:
                decision = remembered
            elif needs:
                nobody = "run with --yes to allow tools" if rule is None else f"{rule.describe()} asks"
                if self.approval is None:
                    decision = ApprovalDecision(allow=False, reason=f"no one was asked ({nobody})")
                else:
                    decision = await self.approval(request)
                if decision.always:
                    self._always[name] = decision
            if self._cancel.is_set():
                raise _Cancelled
            source = request.source
            pre = HookOutcome()
            if decision.allow:
                pre = await self._run_hooks("PreToolUse", rule_name(name, source), tool_input=call.arguments)
                for notice in pre.notices():
                    yield notice
                hooked += pre.records()
            if decision.allow and (blocked := pre.blocked) is not None:
                text = f"a PreToolUse hook blocked this {name} call; it was not run: {blocked.reason()}"
                result = ToolResultEvent(call_id=call_id, tool=name, text=text, is_error=True, denied=True)
            elif decision.allow:
                out = await asyncio.to_thread(
                    self.registry.call, name, call.arguments, True, turn, cancel=self._cancel
                )
                result = ToolResultEvent(
                    call_id=call_id, tool=name, text=out.text, is_error=out.is_error, denied=out.denied
                )
                response = {"text": out.text, "is_error": out.is_error}
                post = await self._run_hooks(
                    "PostToolUse", rule_name(name, source), tool_input=call.arguments, tool_response=response
                )
                for notice in post.notices():
                    yield notice
                hooked += post.records()
            else:
                text = planned or refusal(name, decision, rule)
                result = ToolResultEvent(call_id=call_id, tool=name, text=text, is_error=True, denied=True)
        # The result names its call by the id the model gave it, where its syntax has ids (Kimi's).
        answers = call.call_id or call_id
        events += [tool_call_event(request, call.raw, call.error), *hooked]
        events.append(tool_result_event(result, answers))
        new.append(ChatMessage("tool", result.text, name=call.name, tool_call_id=answers))
        yield result
        if self._cancel.is_set():
            raise _Cancelled

    async def _run_hooks(self, event: str, tool: str | None = None, **fields: Any) -> HookOutcome:
        """The hooks of `event` run, off the event loop (agent/hooks.py)."""
        if self.hooks is None or not self.hooks.wants(event, tool):
            return HookOutcome()
        return await asyncio.to_thread(self.hooks.run, event, self.session_id, tool, **fields)
