"""`hybrid-agent acp`: the command that serves the Agent Client Protocol on stdio (agent/acp_server.py).

Stdout carries only JSON-RPC messages: the process's file descriptor 1 is pointed at stderr before
anything else runs (a stray print, a library's warning or a child process then land in the log), and
the protocol is written to a copy of the original stdout. Stdin likewise: the protocol is read from a
copy, and descriptor 0 becomes /dev/null, so no child process can eat the editor's messages.

Sessions take the settings of their own folder (`cwd` of `session/new`): permission rules, hooks,
MCP servers, the sandbox. The model, its device and sampling come from the command line and the
settings of the folder the server started in. The weights are read once, on a thread started as
soon as those settings are read (agent/factory.py `ModelPreload`), while the editor connects and
opens its first session, whose engine takes the model.
"""

from __future__ import annotations

import argparse
import asyncio
import copy
import os
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any


def add_parser(sub: Any, shared: argparse.ArgumentParser) -> None:
    """The `acp` command, on the subparsers `sub` of agent/cli.py's parser."""
    acp = sub.add_parser(
        "acp",
        parents=[shared],
        help="serve the Agent Client Protocol on stdio, for editors (Zed, ...)",
        description="Serve the Agent Client Protocol (JSON-RPC on stdin/stdout) for an editor. "
        "Each editor thread is a saved session; logs go to stderr.",
    )
    acp.add_argument(
        "--permission-mode",
        choices=("ask", "accept-edits", "auto"),
        default=argparse.SUPPRESS,
        help="when tools ask the editor before they run (default: ask, or the settings' permission_mode)",
    )
    acp.add_argument(
        "--max-tool-rounds",
        type=_count,
        default=8,
        metavar="N",
        help="tool rounds per prompt before it stops with max_turn_requests (default: 8)",
    )


def _count(text: str) -> int:
    if not text.isdigit():
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number >= 0")
    return int(text)


def _session_options(args: argparse.Namespace) -> dict[str, Any]:
    """What a session in `args.workspace` takes from that folder's settings (agent/config_commands.py)."""
    from hybrid_agent.agent.config_commands import hook_set, permission_rules, sandbox_policy, settle

    return {
        "permissions": permission_rules(args),
        "hooks": hook_set(args),
        "sandbox": sandbox_policy(args),
        "mcp_servers": settle(args).get("mcp_servers") or {},
    }


class CliOpener:
    """Opens the agent of each ACP session from the command line's options; one model for them all."""

    def __init__(self, args: argparse.Namespace, engines: Callable[[], Any] | None = None) -> None:
        from hybrid_agent.agent.config_commands import settle
        from hybrid_agent.agent.factory import preloading
        from hybrid_agent.agent.owner import ModelOwner

        self.args = args
        self._engines = engines  # a test's scripted engines; else the model of the command line
        self._first: Any = None
        # The weights' read starts as soon as the model and device are known (`preloading`): at once
        # when both flags are given, else once the settings (the server's folder's, over the flags:
        # the model, device and sampling) are read.
        with preloading(
            lambda: _start_read(args) if engines is None else None,
            settle=lambda: settle(args),
            known=args.model is not None and args.device is not None,
        ) as preload:
            self._preload: Any = preload
        self.owner = ModelOwner()
        self._lock = threading.Lock()

    def _engine(self) -> Any:
        """A fresh engine state; every session's engine shares the first one's weights. On the owner."""
        if self._engines is not None:
            return self._engines()
        a = self.args
        if self._first is None:
            from hybrid_agent.agent.factory import load_engine

            preload, self._preload = self._preload, None  # taken (or discarded) by load_engine
            self._first = load_engine(
                a.model,
                device=a.device,
                window=a.window,
                sinks=a.sinks,
                seed=a.seed,
                temperature=a.temperature,
                preload=preload,
            )
            return self._first
        from hybrid_agent.agent.engine import ModelEngine

        f = self._first
        return ModelEngine(
            f.model, f.tokenizer, f.chat, window=a.window, sinks=a.sinks, temperature=a.temperature,
            seed=a.seed, model_name=f.model_name,
        )  # fmt: skip

    def open(
        self,
        workspace: Path,
        resume: str | None,
        mcp_servers: dict[str, dict[str, Any]],
        approval: Any,
        files: Any,
    ) -> Any:
        from hybrid_agent.agent.acp_tools import UpdatePlan, client_file_tools
        from hybrid_agent.agent.errors import AgentError
        from hybrid_agent.agent.loop import Agent
        from hybrid_agent.agent.mcp_servers import mount_servers
        from hybrid_agent.agent.session_ids import resolve_session_id
        from hybrid_agent.memory import Store
        from hybrid_agent.tools import ToolRegistry

        args = copy.copy(self.args)
        args.workspace = str(workspace)
        del args.settings_  # this folder's settings, not the server's
        options = _session_options(args)
        a = self.args
        store = Store(self.args.db)
        registry = None
        try:
            moved = False
            if resume is not None:
                if resolve_session_id(store, resume) != resume:  # the editor names sessions by full id
                    raise AgentError(f"no session {resume!r}; session/load takes a full session id")
                moved = Path(store.get_session(resume).workspace).resolve() != workspace.resolve()
            registry = ToolRegistry(workspace, enable_commands=a.enable_commands, sandbox=options["sandbox"])
            mount_servers(registry, {**options["mcp_servers"], **mcp_servers})
            registry.add_from_object([UpdatePlan()], source="builtin")
            if files is not None:
                registry.add_from_object(client_file_tools(files), source="builtin", replace=True)
            permissions = options["permissions"]

            def build() -> Any:
                return Agent(
                    self._engine(),
                    store,
                    registry,
                    workspace=workspace,
                    session_id=resume,
                    mode=a.permission_mode,
                    approval=permissions.remembering(approval) if permissions else approval,
                    permissions=permissions,
                    hooks=options["hooks"],
                    enable_commands=a.enable_commands,
                    max_new_tokens=a.max_new_tokens,
                    max_tool_rounds=a.max_tool_rounds,
                    max_prompt_tokens=a.max_prompt_tokens,
                )

            with self._lock:
                agent = self.owner.call(build)
            if moved and resume is not None:
                store.move_session(resume, str(workspace.resolve()))
            return agent
        except BaseException:
            if registry is not None:
                registry.close()
            store.close()
            raise

    def close(self) -> None:
        self.owner.shutdown(wait=True)
        self.drop_read()

    def drop_read(self) -> None:
        """Stop the weights' read if no session took the model (the editor left first, or the start
        failed) and wait for its thread."""
        preload, self._preload = self._preload, None
        if preload is not None:
            preload.discard()


def _start_read(args: argparse.Namespace) -> Any:
    """The weights' read of `args.model` on `args.device`, started (`ModelPreload`). What the command
    line got wrong fails here, in one line, not at the editor's first session: a model folder that
    is not one, a device this machine lacks, `--tp`."""
    from hybrid_agent.agent.errors import AgentError
    from hybrid_agent.agent.factory import ModelPreload, check_device

    if getattr(args, "tp", 1) > 1:  # its sessions share one model; the ranks serve one engine
        raise AgentError("acp runs several sessions on one model and has no --tp; use it with run or the UI")
    preload = ModelPreload(args.model, args.device, args.seed)
    try:
        check_device(args.device)  # the read checks it too, but its error would wait for a session
    except BaseException:
        preload.discard()
        raise
    return preload


def _protocol_stdio() -> tuple[int, int]:
    """(the protocol's input and output descriptors), with fds 0 and 1 moved aside."""
    proto_in, proto_out = os.dup(0), os.dup(1)
    os.dup2(os.open(os.devnull, os.O_RDONLY), 0)
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    return proto_in, proto_out


def cmd_acp(args: argparse.Namespace, engines: Callable[[], Any] | None = None) -> int:
    """Serve until the editor closes stdin. `engines` replaces the model (tests' scripted engines)."""
    in_fd, out_fd = _protocol_stdio()
    opener = CliOpener(args, engines)  # which starts the weights' read, before the server's imports
    try:
        from hybrid_agent.agent.acp_server import log_to_stderr, serve
        from hybrid_agent.memory import Store

        log_to_stderr(args.debug)

        Store(args.db).close()
        asyncio.run(serve(opener, in_fd, out_fd))
    finally:
        opener.drop_read()  # a store that failed to open, or an editor that never opened a session
    return 0
