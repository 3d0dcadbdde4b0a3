"""`run --output-format json|stream-json [--include-partial-messages] [--input-format stream-json]`:
the agent's events as Claude Code's headless objects (agent/headless_schema.py says which and why).

Tool calls that ask are denied (no one is at a terminal; `--yes` approves them) and listed in the
result's `permission_denials`. With `--input-format stream-json` every stdin line is a turn of one
session, in this process; the first bad line ends it (docs/headless.md).
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable, Iterator
from typing import Any

from hybrid_agent.agent import events as ev
from hybrid_agent.agent.errors import AgentError
from hybrid_agent.agent.headless_schema import (
    AssistantBody,
    AssistantMessage,
    ContentBlockDelta,
    McpServer,
    PermissionDenial,
    ResultMessage,
    StreamEvent,
    SystemInit,
    SystemNotice,
    TextBlock,
    TextDeltaBody,
    ToolResultBlock,
    ToolUseBlock,
    Usage,
    UserBody,
    UserInput,
    UserMessage,
)
from pydantic import BaseModel, ValidationError

TEXT_INTERVAL_S = 0.05  # partial messages join text deltas: at most 20 events a second
MAX_LINE_BYTES = 64 << 20  # one input line, as a message read from '-'
_MODES = {"ask": "default", "accept-edits": "acceptEdits", "auto": "bypassPermissions"}


def _emit(obj: BaseModel) -> None:
    print(obj.model_dump_json(), flush=True)


def init_message(agent: Any) -> SystemInit:
    registry = agent.registry
    names = list(registry.names())
    servers = sorted({registry.get(n).source.removeprefix("mcp:") for n in names
                      if registry.get(n).source.startswith("mcp:")})  # fmt: skip
    return SystemInit(
        session_id=agent.session_id,
        cwd=str(agent.workspace),
        model=agent.model_name,
        tools=names,
        mcp_servers=[McpServer(name=s, status="connected") for s in servers],
        permissionMode=_MODES.get(agent.mode, "default"),  # type: ignore[arg-type]
    )


class TurnWriter:
    """One turn's events as headless objects: printed as they come (`stream`), and a `ResultMessage`
    at the end (`finish`)."""

    def __init__(self, agent: Any, *, stream: bool, partial: bool) -> None:
        self.agent, self.stream, self.partial = agent, stream, partial
        self.t0 = time.monotonic()
        self.segment: list[str] = []  # the assistant text not printed as a message yet
        self.last_round: list[str] = []  # the text of the current round: the result
        self.deltas: list[str] = []  # partial text not printed yet
        self.last_delta = float("-inf")
        self.block = 0  # content block index within the round (partial messages)
        self.rounds = 1
        self.after_tools = False
        self.calls: dict[str, ev.ToolCallRequested] = {}
        self.denials: list[PermissionDenial] = []
        self.errors: list[str] = []
        self.end: ev.TurnEnd | None = None

    def _out(self, obj: BaseModel) -> None:
        if self.stream:
            _emit(obj)

    def _next_round(self) -> None:
        if self.after_tools:
            self.rounds += 1
            self.after_tools = False
            self.last_round, self.block = [], 0

    def __call__(self, event: Any) -> None:
        sid = self.agent.session_id
        if isinstance(event, ev.TextDelta):
            self._next_round()
            self.segment.append(event.text)
            self.last_round.append(event.text)
            if self.partial:
                self.deltas.append(event.text)
                if time.monotonic() - self.last_delta >= TEXT_INTERVAL_S:
                    self._flush_deltas()
        elif isinstance(event, ev.ToolCallRequested):
            self._next_round()
            self._flush_text()
            self.calls[event.call_id] = event
            block = ToolUseBlock(id=event.call_id, name=event.tool, input=event.arguments)
            self._out(AssistantMessage(session_id=sid, message=self._body([block], "tool_use")))
            self.block += 1
        elif isinstance(event, ev.ToolResultEvent):
            self.after_tools = True
            block = ToolResultBlock(tool_use_id=event.call_id, content=event.text, is_error=event.is_error)
            self._out(UserMessage(session_id=sid, message=UserBody(content=[block])))
            if event.denied:
                call = self.calls.get(event.call_id)
                args = call.arguments if call is not None else {}
                self.denials.append(PermissionDenial(tool_name=event.tool, tool_use_id=event.call_id,
                                                     tool_input=args))  # fmt: skip
        elif isinstance(event, ev.HookNotice):
            data = event.model_dump(exclude={"kind"})
            notice = SystemNotice(subtype="hook_response", session_id=sid, hook_event=event.event, data=data)
            self._out(notice)
        elif isinstance(event, ev.PrefillProgress):
            self._out(
                SystemNotice(
                    subtype="prefill_progress", session_id=sid, data=event.model_dump(exclude={"kind"})
                )
            )
        elif isinstance(event, ev.ErrorEvent):
            self.errors.append(event.message)
        elif isinstance(event, ev.TurnEnd):
            self.end = event

    def _body(self, content: list[Any], stop: str | None) -> AssistantBody:
        return AssistantBody(model=self.agent.model_name, content=content, stop_reason=stop)

    def _flush_deltas(self) -> None:
        if self.deltas:
            delta = ContentBlockDelta(index=self.block, delta=TextDeltaBody(text="".join(self.deltas)))
            self._out(StreamEvent(session_id=self.agent.session_id, event=delta))
            self.deltas.clear()
            self.last_delta = time.monotonic()

    def _flush_text(self, stop: str | None = None) -> None:
        self._flush_deltas()
        text = "".join(self.segment)
        self.segment.clear()
        if text:
            body = self._body([TextBlock(text=text)], stop)
            self._out(AssistantMessage(session_id=self.agent.session_id, message=body))
            self.block += 1

    def finish(self, extra_error: str | None = None) -> ResultMessage:
        """The turn's `ResultMessage`, printed (with `--output-format json` it is all that is)."""
        end = self.end
        if extra_error:
            self.errors.append(extra_error)
        self._flush_text("end_turn" if end is not None and end.stop_reason == "end_of_turn" else None)
        if self.errors or (end is not None and end.stop_reason == "cancelled"):
            subtype = "error_during_execution"
        elif end is not None and end.stop_reason == "max_tool_rounds":
            subtype = "error_max_turns"
        else:
            subtype = "success"
        prompt = end.prompt_tokens if end else 0
        output = end.completion_tokens if end else 0
        cached = max(0, end.state_tokens - prompt - output) if end and end.saved else 0
        took = int((time.monotonic() - self.t0) * 1000)
        result = ResultMessage(
            subtype=subtype,  # type: ignore[arg-type]
            session_id=end.session_id if end else self.agent.session_id,
            is_error=subtype != "success",
            result="; ".join(self.errors) if self.errors else "".join(self.last_round),
            errors=self.errors,
            num_turns=self.rounds,
            duration_ms=took,
            duration_api_ms=took,
            usage=Usage(input_tokens=prompt, output_tokens=output, cache_read_input_tokens=cached),
            permission_denials=self.denials,
            stop_reason=end.stop_reason if end else None,
            turn=end.turn if end else None,
            saved=bool(end and end.saved),
            state_tokens=end.state_tokens if end else None,
            state_bytes=end.state_bytes if end else None,
            window=end.window if end else None,
            tokens_per_s=end.tokens_per_s if end else None,
            forked_from=end.forked_from if end else None,
            plan=end.plan if end else None,
        )
        _emit(result)
        return result


def check_options(args: argparse.Namespace) -> None:
    """Refuse combinations that cannot work, before anything loads (as argparse's usage errors)."""
    if args.input_format == "stream-json":
        if args.output_format != "stream-json":
            raise AgentError("--input-format stream-json needs --output-format stream-json (or --json)")
        if args.prompt:
            raise AgentError("--input-format stream-json reads the messages from stdin; give no prompt")
    if args.include_partial_messages and args.output_format != "stream-json":
        raise AgentError("--include-partial-messages needs --output-format stream-json (or --json)")


def input_lines(stream: Any) -> Iterator[tuple[int, str | None, str | None]]:
    """(line number, message text, None), or (line number, None, what is wrong) for a bad line."""
    raw = getattr(stream, "buffer", stream)
    number = 0
    while True:
        line = raw.readline(MAX_LINE_BYTES + 1)
        if not line:
            return
        number += 1
        if len(line) > MAX_LINE_BYTES:
            yield number, None, f"stdin line {number} is over {MAX_LINE_BYTES >> 20} MiB"
            return
        if isinstance(line, bytes):
            try:
                line = line.decode("utf-8")
            except UnicodeDecodeError as exc:
                yield number, None, f"stdin line {number} is not UTF-8 text (byte {exc.start}: {exc.reason})"
                return
        if not line.strip():
            continue
        try:
            message = UserInput.model_validate_json(line)
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(p) for p in first["loc"])
            yield (
                number,
                None,
                (
                    f"stdin line {number} is not a user message "
                    '({"type": "user", "message": {"role": "user", "content": "..."}}): '
                    f"{where + ': ' if where else ''}{first['msg']}"
                ),
            )
            return
        text = message.text()
        if not text.strip():
            yield number, None, f"stdin line {number}: the message is empty"
            return
        yield number, text, None


def run_headless(
    args: argparse.Namespace, open_agent: Callable[[], Any], read_prompt: Callable[[list[str]], str]
) -> int:
    """`run` with `--output-format json|stream-json` or `--input-format stream-json`; the exit status
    is 1 when a turn ended in an error or an input line was bad."""
    check_options(args)
    from_stdin = args.input_format == "stream-json"
    prompt = None if from_stdin else read_prompt(args.prompt)  # a bad message fails before the model loads
    stream = args.output_format == "stream-json"
    agent = open_agent()
    failed = False
    try:
        if stream:
            _emit(init_message(agent))
        messages = input_lines(sys.stdin) if from_stdin else iter([(0, prompt, None)])
        for _, text, problem in messages:
            writer = TurnWriter(agent, stream=stream, partial=args.include_partial_messages)
            if problem is not None:
                writer.finish(problem)
                return 1
            try:
                agent.send_sync(text or "", on_event=writer)
            finally:
                writer.finish()
            failed = failed or bool(writer.errors)
    finally:
        agent.close()
    return 1 if failed else 0
