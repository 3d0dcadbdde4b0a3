"""What each `hybrid-agent` command does (parsing is in agent/cli.py).

Output contract: `run` prints the answer on stdout as it streams, then `session: ID` as the last
line; tool activity goes to stderr. `--json` prints each event as one JSON line on stdout.
`sessions export` prints a session's stored events as JSON lines. Errors print one line on stderr.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Callable
from typing import Any

from hybrid_agent.agent.errors import AgentError, printable
from hybrid_agent.agent.session_ids import resolve_session_id

EXIT_ERROR = 1
EXIT_INTERRUPTED = 130
EXIT_BROKEN_PIPE = 141  # 128 + SIGPIPE, what a shell reports for a writer whose reader left


def _user_errors() -> tuple[type[BaseException], ...]:
    """Exceptions that are the user's to fix: shown as one line."""
    from hybrid_agent.memory import StoreError
    from hybrid_agent.model.chat import ChatFormatError
    from hybrid_agent.model.errors import ModelError
    from hybrid_agent.tools.errors import ToolError

    return (AgentError, StoreError, ModelError, ChatFormatError, ToolError, OSError)


MAX_STDIN_BYTES = 64 << 20  # a message read from '-': more is surely not meant for the model


def _say(*parts: Any) -> None:
    print(*(printable(str(p)) for p in parts), file=sys.stderr, flush=True)


def dispatch(args: argparse.Namespace) -> int:
    """Run the command that `args` names (`run`, `sessions`, `config`, `trust`). The terminal UI, the
    one without a command, is opened by hybrid_agent/cli.py: tui/ sits above agent/."""
    from hybrid_agent.agent.config_commands import cmd_config, cmd_trust
    from hybrid_agent.agent.mcp_commands import cmd_mcp
    from hybrid_agent.agent.serve_command import cmd_serve

    commands = {
        "run": cmd_run, "sessions": cmd_sessions, "config": cmd_config, "trust": cmd_trust, "mcp": cmd_mcp,
        "serve": cmd_serve,
    }  # fmt: skip
    return run_command(commands[args.command], args)


def run_command(command: Callable[[argparse.Namespace], int], args: argparse.Namespace) -> int:
    """`command(args)`'s exit status; an error becomes one line on stderr and its exit status (with
    `--debug`, the traceback instead)."""
    if args.debug:
        return command(args)
    try:
        status = command(args)
        sys.stdout.flush()  # here, where a reader that left is caught, not at the interpreter's exit
        return status
    except KeyboardInterrupt:
        _say("hybrid-agent: interrupted; the session stays at its last saved turn")
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        # The reader went away (`... | head`): stop quietly, as cat does. Point stdout at /dev/null so
        # the interpreter's own flush at exit cannot raise a second time.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_BROKEN_PIPE
    except Exception as exc:
        ours = isinstance(exc, AgentError)  # checked first: the others' modules import torch
        if ours or isinstance(exc, _user_errors()):
            _say(f"hybrid-agent: error: {exc}")
        else:
            name = type(exc).__name__
            _say(f"hybrid-agent: internal error: {name}: {exc} (rerun with --debug for a traceback)")
        return EXIT_ERROR


def _agent_options(args: argparse.Namespace) -> dict[str, Any]:
    """The options of `Agent.open`: the flags, over the settings files (agent/config_commands.py)."""
    from hybrid_agent.agent.config_commands import hook_set, permission_rules, sandbox_policy, settle

    rules = permission_rules(args)
    return {
        "model": args.model,
        "db": args.db,
        "workspace": args.workspace,
        "device": args.device,
        "window": args.window,
        "sinks": args.sinks,
        "seed": args.seed,
        "temperature": args.temperature,
        "max_new_tokens": args.max_new_tokens,
        "max_prompt_tokens": args.max_prompt_tokens,
        "enable_commands": args.enable_commands,
        "mode": args.permission_mode,
        "permissions": rules,
        "sandbox": sandbox_policy(args),
        "mcp_servers": settle(args).get("mcp_servers") or None,  # mounted by Agent.open
        "hooks": hook_set(args),
    }


def _store(args: argparse.Namespace) -> Any:
    from hybrid_agent.agent.config_commands import settle
    from hybrid_agent.memory import Store

    settle(args)  # the database may come from the settings
    return Store(args.db)


# ---- the TUI's options ---------------------------------------------------------------------------
def tui_options(args: argparse.Namespace) -> dict[str, Any]:
    """The options of `Agent.open` for the terminal UI, which hybrid_agent/cli.py opens with them.
    Checked here, so that a bad --resume, model folder or device fails with one line before the UI
    starts."""
    from hybrid_agent.agent.config_commands import continued_session, settle

    settle(args, ask_trust=True)  # before the UI: the first time in a folder, ask to trust it
    options = _agent_options(args)
    if args.resume or args.continue_:
        with _store(args) as store:
            options["resume"] = continued_session(store, args) or resolve_session_id(store, args.resume)
    from hybrid_agent.agent.factory import check_device, resolve_model_dir

    resolve_model_dir(options["model"])
    check_device(options["device"])
    return options


# ---- run -----------------------------------------------------------------------------------------
def ask_on_terminal(request: Any) -> Any:
    """Ask the person at the terminal about one tool call (stderr + stdin); blocking."""
    from hybrid_agent.agent.events import ApprovalDecision

    _say(f"[approve {request.tool} {json.dumps(request.arguments, ensure_ascii=False)}]")
    for shown in (request.command and f"$ {request.command}", request.diff):
        if shown:
            _say(shown.rstrip("\n"))
    sys.stderr.write("allow? [y]es, [n]o, [a]lways for this tool: ")
    sys.stderr.flush()
    answer = sys.stdin.readline().strip().lower()
    if answer in ("a", "always"):
        return ApprovalDecision(allow=True, always=True)
    if answer in ("y", "yes"):
        return ApprovalDecision(allow=True)
    return ApprovalDecision(allow=False, reason="the user said no at the terminal")


async def _ask_on_terminal(request: Any) -> Any:
    import asyncio

    return await asyncio.to_thread(ask_on_terminal, request)


def _read_stdin() -> str:
    """All of stdin as UTF-8 text, at most MAX_STDIN_BYTES. Read as bytes, so that a byte that is not
    UTF-8 is refused with its offset, before anything (a session) is made."""
    raw = getattr(sys.stdin, "buffer", None)
    if raw is None:  # a text stream without bytes underneath (an io.StringIO): already text
        text: str = sys.stdin.read(MAX_STDIN_BYTES + 1)
        if len(text) <= MAX_STDIN_BYTES:
            return text
    data = b"" if raw is None else raw.read(MAX_STDIN_BYTES + 1)
    if raw is None or len(data) > MAX_STDIN_BYTES:
        raise AgentError(
            f"stdin holds more than {MAX_STDIN_BYTES >> 20} MiB; send the part the model needs "
            "(head, tail or grep it first)"
        )
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise AgentError(
            f"stdin is not UTF-8 text: byte 0x{data[exc.start]:02x} at offset {exc.start} ({exc.reason}); "
            "convert it first, e.g. iconv -f latin1 -t utf-8"
        ) from None


def read_prompt(parts: list[str]) -> str:
    """The message of `run`: its parts joined by blank lines, '-' read from stdin (once). Only an
    explicit '-' reads stdin: a caller that leaves stdin open without writing to it must not hang us."""
    if "-" in parts:
        if sys.stdin.isatty():
            _say("hybrid-agent: reading the message from the terminal; end it with Ctrl-D")
        piped = _read_stdin()
        parts = [piped if part == "-" else part for part in parts]
    prompt = "\n\n".join(part.strip("\n") for part in parts if part.strip())
    if not prompt:
        raise AgentError("the message is empty; give it as an argument, or pipe it in with '-'")
    return prompt


JSON_TEXT_INTERVAL_S = 0.05  # `run --json` joins text deltas: at most 20 text events a second


class _JsonEvents:
    """`run --json`: one JSON line per event, text deltas joined so that a fast model prints at most one
    text event per JSON_TEXT_INTERVAL_S (the joined texts still add up to the answer exactly)."""

    def __init__(self) -> None:
        self._text: list[str] = []
        self._last = float("-inf")

    def __call__(self, event: Any) -> None:
        from hybrid_agent.agent.events import TextDelta

        if isinstance(event, TextDelta):
            self._text.append(event.text)
            if time.monotonic() - self._last < JSON_TEXT_INTERVAL_S:
                return
        self.flush()
        if not isinstance(event, TextDelta):
            print(event.model_dump_json(), flush=True)

    def flush(self) -> None:
        from hybrid_agent.agent.events import TextDelta

        if self._text:
            print(TextDelta(text="".join(self._text)).model_dump_json(), flush=True)
            self._text.clear()
            self._last = time.monotonic()


class _PlainEvents:
    """`run` without --json: the answer on stdout, tool activity, progress and errors on stderr, all
    through `printable` (a tool's output or the model's text can hold terminal escapes)."""

    def __init__(self, agent: Any) -> None:
        self.agent = agent
        self._ended_with_text = True
        self._bar: Any = None  # a tqdm bar on stderr while a long message is read

    def __call__(self, event: Any) -> None:
        from hybrid_agent.agent import events as ev

        if isinstance(event, ev.PrefillProgress):
            self._progress(event)
            return
        self.close_bar()
        if isinstance(event, ev.TextDelta):
            sys.stdout.write(printable(event.text))
            sys.stdout.flush()
            self._ended_with_text = event.text.endswith("\n")
        elif isinstance(event, ev.ToolCallRequested):
            _say(f"[tool {event.tool} {json.dumps(event.arguments, ensure_ascii=False)}]")
        elif isinstance(event, ev.ToolResultEvent):
            first = event.text.splitlines()[0] if event.text else ""
            # (--yes does not help a call a permission rule refused.)
            hint = (
                " (rerun with --yes to approve tools)" if event.denied and " rule `" not in event.text else ""
            )
            _say(f"[{'error' if event.is_error else 'result'} {event.tool}: {first[:200]}]{hint}")
        elif isinstance(event, ev.ErrorEvent):
            _say(f"hybrid-agent: error: {event.message}")
        elif isinstance(event, ev.HookNotice) and event.message:
            _say(f"hybrid-agent: warning: {event.message}")
        elif isinstance(event, ev.TurnEnd):
            if not self._ended_with_text:
                print()
            if event.forked_from:
                _say(f"hybrid-agent: {event.fork_notice()}")
            print(f"session: {self.agent.session_id}", flush=True)

    def _progress(self, event: Any) -> None:
        from tqdm import tqdm

        if self._bar is None:
            self._bar = tqdm(
                total=event.total, unit="tok", desc="reading the message", file=sys.stderr, leave=False
            )
        self._bar.update(event.tokens - self._bar.n)

    def close_bar(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None


def cmd_run(args: argparse.Namespace) -> int:
    prompt = read_prompt(args.prompt)  # before torch and the model load: a bad message fails at once
    from hybrid_agent.agent.config_commands import continued_session
    from hybrid_agent.agent.events import ErrorEvent
    from hybrid_agent.agent.loop import Agent

    options = _agent_options(args)
    if args.resume:
        options["resume"] = args.resume  # an id or a unique prefix (Agent.open resolves it)
    if args.continue_:
        with _store(args) as store:
            options["resume"] = continued_session(store, args)
    if args.yes:
        options["mode"] = "auto"
    if not args.yes and not args.json and sys.stdin.isatty():
        options["approval"] = _ask_on_terminal  # else: every `ask` call is denied (use --yes)
    agent = Agent.open(**options)
    for problem in agent.registry.plugin_errors:  # the tools it lacks, so the user knows why
        _say(f"hybrid-agent: warning: {problem.splitlines()[0] if problem else problem}")
    show: Any = _JsonEvents() if args.json else _PlainEvents(agent)
    try:
        events = agent.send_sync(prompt, on_event=show)
    finally:
        if args.json:
            show.flush()  # text joined so far, even when the turn was interrupted
        else:
            show.close_bar()
        agent.close()
    return EXIT_ERROR if any(isinstance(e, ErrorEvent) for e in events) else 0


# ---- sessions ------------------------------------------------------------------------------------
def _session_json(info: Any) -> dict[str, Any]:
    return {
        "id": info.id,
        "title": info.title,
        "workspace": info.workspace,
        "model_fingerprint": info.model_fingerprint,
        "created_at": info.created_at.isoformat(),
        "updated_at": info.updated_at.isoformat(),
        "parent_id": info.parent_id,
        "fork_turn": info.fork_turn,
        "turns": info.latest_turn or 0,
        "state_tokens": info.n_tokens,
    }


def _event_json(ev: Any) -> dict[str, Any]:
    return {
        "turn": ev.turn,
        "seq": ev.seq,
        "kind": ev.kind,
        "content": ev.content,
        "data": ev.data,
        "created_at": ev.created_at.isoformat() if ev.created_at else None,
    }


def cmd_sessions(args: argparse.Namespace) -> int:
    action = args.action or "list"  # `sessions` alone lists them
    with _store(args) as store:
        if action == "list":
            infos = store.list_sessions()
            if args.json:
                for info in infos:
                    print(json.dumps(_session_json(info)))
                return 0
            if not infos:
                print("no saved sessions")
                return 0
            print(f"{'ID':36}  {'TURNS':>5}  {'TOKENS':>8}  {'UPDATED':16}  TITLE")
            for info in infos:
                updated = info.updated_at.strftime("%Y-%m-%d %H:%M")
                turns = info.latest_turn or 0
                print(f"{info.id:36}  {turns:>5}  {info.n_tokens:>8}  {updated:16}  {printable(info.title)}")
            return 0
        if action == "gc":
            return _gc(store)
        if action == "check":
            return _check(store, None if args.id is None else resolve_session_id(store, args.id))
        session_id = resolve_session_id(store, args.id)
        if action == "show":
            return _show(store, session_id, as_json=args.json)
        if action == "fork":
            info = store.fork_session(session_id, args.turn)
            print(info.id)
            return 0
        if action == "rm":
            store.delete_session(session_id)
            print(
                f"deleted session {session_id} (`hybrid-agent sessions gc` gives its space back to the disk)"
            )
            return 0
        if action == "export":
            for ev in store.events(session_id):
                print(json.dumps(_event_json(ev), ensure_ascii=False))
            return 0
    raise AgentError(f"unknown sessions action {action!r}")


def _mib(n: int) -> str:
    return f"{n / (1 << 20):.1f} MiB"


def _check(store: Any, session_id: str | None) -> int:
    """`sessions check [ID]`: one line per problem, then a summary; exit 1 when anything is damaged."""
    report = store.check(session_id)
    for problem in report.problems:
        print(f"damaged: {printable(problem)}")
    what = (
        f"{report.sessions} session(s), {report.turns} turn(s), {report.blobs} blob(s) ({_mib(report.bytes)})"
    )
    if report.ok:
        print(f"checked {what}: no damage found")
        return 0
    print(f"checked {what}: {len(report.problems)} problem(s) found")
    return EXIT_ERROR


def _gc(store: Any) -> int:
    """`sessions gc`: drop unreferenced blobs, give the space back, say how much."""
    stats = store.compact()
    line = f"deleted {stats.blobs_freed} unreferenced blob(s)"
    if stats.bytes_before is not None and stats.bytes_after is not None:
        line += f"; database {_mib(stats.bytes_before)} -> {_mib(stats.bytes_after)}"
    print(line)
    return 0


def _show(store: Any, session_id: str, *, as_json: bool) -> int:
    info = store.get_session(session_id)
    if as_json:
        data = _session_json(info)
        data["turn_list"] = [
            {"turn": t.turn, "state_tokens": t.n_tokens, **t.meta} for t in store.turns(session_id)
        ]
        print(json.dumps(data))
        return 0
    d = _session_json(info)
    lines = [f"session {d['id']}: {d['title'] or '(untitled)'}"]
    lines.append(f"  workspace {d['workspace']}; {d['turns']} turns, {d['state_tokens']} tokens in the state")
    if info.parent_id:
        lines.append(f"  forked from {info.parent_id} at turn {info.fork_turn}")
    for ev in store.events(session_id):
        if ev.kind == "user":
            lines.append(f"[{ev.turn}] user: {ev.content}")
        elif ev.kind == "assistant":
            lines.append(f"[{ev.turn}] assistant: {ev.content}")
        elif ev.kind == "tool_call":
            lines.append(
                f"[{ev.turn}] tool call: {ev.content} {json.dumps((ev.data or {}).get('arguments', {}))}"
            )
        elif ev.kind == "tool_result":
            lines.append(f"[{ev.turn}] tool result: {ev.content[:200]}")
    for line in lines:  # titles, messages and tool output may hold terminal escapes
        print(printable(line))
    return 0
