"""What each `hybrid-agent` command does (parsing is in agent/cli.py).

Output contract: `run` prints the answer on stdout as it streams, then `session: ID` as the last
line; tool activity goes to stderr. `--output-format json|stream-json` (`--json`) prints Claude Code's
headless objects instead (agent/headless.py, docs/headless.md).
`sessions export` prints a session's stored events as JSON lines (agent/transfer.py: other formats,
and `sessions import`). Errors print one line on stderr.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable
from typing import Any

from hybrid_agent.agent.errors import AgentError, printable
from hybrid_agent.agent.session_ids import PICK_SESSION, resolve_session_id

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
    from hybrid_agent.agent.acp_commands import cmd_acp
    from hybrid_agent.agent.config_commands import cmd_config, cmd_trust
    from hybrid_agent.agent.mcp_commands import cmd_mcp
    from hybrid_agent.agent.pull_command import cmd_pull
    from hybrid_agent.agent.serve_command import cmd_serve
    from hybrid_agent.agent.undo_commands import cmd_rewind, cmd_undo

    commands = {
        "run": cmd_run, "sessions": cmd_sessions, "config": cmd_config, "trust": cmd_trust, "mcp": cmd_mcp,
        "undo": cmd_undo, "rewind": cmd_rewind, "pull": cmd_pull, "acp": cmd_acp, "serve": cmd_serve,
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
        "tp": getattr(args, "tp", 1),
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
        "mention_max_bytes": settle(args).get("mention_max_bytes"),  # @path attachments
        "project_memory_max_bytes": settle(args).get("project_memory_max_bytes"),  # AGENTS.md
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

    settle(args, quiet=True)  # the UI asks whether to trust the folder instead (trust_question)
    options = _agent_options(args)
    if args.resume or args.continue_:  # `--resume` alone (PICK_SESSION) opens the picker in the UI
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


async def _approve_all(request: Any) -> Any:
    from hybrid_agent.agent.events import ApprovalDecision

    return ApprovalDecision(allow=True)


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
        elif isinstance(event, ev.MentionNotice):
            _say(f"[{event.message}]")
        elif isinstance(event, ev.TurnEnd):
            if not self._ended_with_text:
                print()
            if event.forked_from:
                _say(f"hybrid-agent: {event.fork_notice()}")
            if event.plan is not None:
                from hybrid_agent.agent.plan import carry_out_hint

                _say(f"hybrid-agent: {carry_out_hint(self.agent.session_id)}")
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
    if args.resume == PICK_SESSION:  # `run --resume` without an id: there is no picker here
        raise AgentError("run --resume needs a session id: `hybrid-agent sessions list` shows them")
    if args.json:
        args.output_format = "stream-json"
    if args.output_format != "text" or args.input_format != "text" or args.include_partial_messages:
        from hybrid_agent.agent.headless import run_headless

        return run_headless(args, lambda: _open_run_agent(args, ask=False), read_prompt)
    prompt = read_prompt(args.prompt)  # before torch and the model load: a bad message fails at once
    from hybrid_agent.agent.events import ErrorEvent

    agent = _open_run_agent(args, ask=not args.yes and sys.stdin.isatty())
    show = _PlainEvents(agent)
    try:
        events = agent.send_sync(prompt, on_event=show)
    finally:
        show.close_bar()
        agent.close()
    return EXIT_ERROR if any(isinstance(e, ErrorEvent) for e in events) else 0


def _open_run_agent(args: argparse.Namespace, *, ask: bool) -> Any:
    """The agent of `run`: the options, the session to resume, and who approves tool calls (the person
    at the terminal with `ask`; else every `ask` call is denied, unless --yes)."""
    from hybrid_agent.agent.config_commands import continued_session, settle
    from hybrid_agent.agent.factory import ModelPreload, preloading
    from hybrid_agent.agent.startup import mark

    # The weights are read on a thread from the moment the model and device are known, while the rest
    # is set up (`preloading`): at once when both flags are given, else once the settings are read.
    tp = getattr(args, "tp", 1)
    with preloading(
        lambda: ModelPreload(args.model, args.device, args.seed) if tp == 1 else None,
        settle=lambda: (settle(args), mark("settings")),
        known=args.model is not None and args.device is not None,
    ) as preload:
        from hybrid_agent.agent.loop import Agent

        mark("imports")
        options = _agent_options(args)
        if args.resume:
            options["resume"] = args.resume  # an id or a unique prefix (Agent.open resolves it)
        if args.continue_:
            with _store(args) as store:
                options["resume"] = continued_session(store, args)
        if args.yes and options["mode"] != "plan":  # with plan: --yes approves what plan mode allows
            options["mode"] = "auto"
        if args.yes and options["mode"] == "plan":
            options["approval"] = _approve_all
        if ask:
            options["approval"] = _ask_on_terminal
    agent = Agent.open(**options, preload=preload)  # which takes or discards the preload
    mark("agent-ready")
    for problem in agent.registry.plugin_errors:  # the tools it lacks, so the user knows why
        _say(f"hybrid-agent: warning: {problem.splitlines()[0] if problem else problem}")
    return agent


# ---- sessions ------------------------------------------------------------------------------------
def _session_json(info: Any, size_bytes: int | None = None) -> dict[str, Any]:
    from hybrid_agent.agent.transfer import session_fields

    data = session_fields(info)
    data["created_at"] = info.created_at.isoformat()
    data["updated_at"] = info.updated_at.isoformat()
    data["state_tokens"] = info.n_tokens
    data["git_head"] = data.pop("git_head")  # last, after the state's size, as this output always had it
    if size_bytes is not None:
        data["size_bytes"] = size_bytes  # the bytes its snapshots use (memory/queries.py)
    return data


def cmd_sessions(args: argparse.Namespace) -> int:
    action = args.action or "list"  # `sessions` alone lists them
    with _store(args) as store:
        if action == "list":
            infos = store.list_sessions()
            sizes = store.snapshot_bytes()
            if args.json:
                for info in infos:
                    print(json.dumps(_session_json(info, sizes.get(info.id, 0))))
                return 0
            if not infos:
                print("no saved sessions")
                return 0
            print(f"{'ID':36}  {'TURNS':>5}  {'TOKENS':>8}  {'SIZE':>9}  {'UPDATED':16}  TITLE")
            for info in infos:
                updated = info.updated_at.strftime("%Y-%m-%d %H:%M")
                turns, size = info.latest_turn or 0, _mib(sizes.get(info.id, 0))
                print(
                    f"{info.id:36}  {turns:>5}  {info.n_tokens:>8}  {size:>9}  {updated:16}  "
                    f"{printable(info.title)}"
                )
            return 0
        if action == "gc":
            return _gc(store)
        if action == "check":
            return _check(store, None if args.id is None else resolve_session_id(store, args.id))
        if action == "import":
            from hybrid_agent.agent.transfer import import_session

            return import_session(store, args.file, args.workspace)
        session_id = resolve_session_id(store, args.id)
        if action in ("diff", "export"):
            from hybrid_agent.agent.transfer import export_session
            from hybrid_agent.agent.undo_commands import sessions_diff

            if action == "diff":
                return sessions_diff(store, session_id, args.turn)
            return export_session(store, session_id, args.format)
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
    if d["git_head"]:
        lines.append(f"  started at git commit {d['git_head']}")
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
