"""The editor side of tests/agent/test_acp.py (not a test module itself): a client built on the
official `acp` SDK that records what the agent streams and answers its requests as a test chooses.

- `permission`: the option id every `session/request_permission` is answered with, "cancelled" (the
  user closed the prompt), or "wait" (never answered: the test cancels the turn meanwhile).
- `buffers`: with it, the client offers `fs/read_text_file` / `fs/write_text_file`: a path in
  `buffers` reads as its (unsaved) text, any other as the file on disk; writes go into `buffers`
  and `writes`, never to disk, as an editor keeps them in its buffers.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from acp import RequestError, spawn_agent_process
from acp.schema import (
    AllowedOutcome,
    ClientCapabilities,
    DeniedOutcome,
    FileSystemCapabilities,
    ReadTextFileResponse,
    RequestPermissionResponse,
    WriteTextFileResponse,
)

HERE = Path(__file__).resolve().parent


class Recorder:
    def __init__(self, permission: str = "allow_once", buffers: dict[str, str] | None = None) -> None:
        self.permission = permission
        self.buffers = buffers
        self.updates: list[tuple[str, Any]] = []
        self.asked: list[Any] = []  # the toolCall of each permission request
        self.asking = asyncio.Event()  # set when a permission request arrives
        self.writes: list[tuple[str, str]] = []
        self.reads: list[str] = []

    def capabilities(self) -> ClientCapabilities:
        fs = self.buffers is not None
        return ClientCapabilities(fs=FileSystemCapabilities(read_text_file=fs, write_text_file=fs))

    async def session_update(self, session_id: str, update: Any, **_: Any) -> None:
        self.updates.append((session_id, update))

    async def request_permission(self, options: list[Any], session_id: str, tool_call: Any, **_: Any) -> Any:
        self.asked.append(tool_call)
        self.asking.set()
        if self.permission == "wait":
            await asyncio.Event().wait()
        if self.permission == "cancelled":
            return RequestPermissionResponse(outcome=DeniedOutcome(outcome="cancelled"))
        assert self.permission in {o.option_id for o in options}
        return RequestPermissionResponse(
            outcome=AllowedOutcome(outcome="selected", option_id=self.permission)
        )

    async def read_text_file(self, path: str, session_id: str, **_: Any) -> Any:
        assert self.buffers is not None and Path(path).is_absolute()
        self.reads.append(path)
        if path in self.buffers:
            return ReadTextFileResponse(content=self.buffers[path])
        if not Path(path).is_file():
            raise RequestError.resource_not_found(path)
        return ReadTextFileResponse(content=Path(path).read_text())

    async def write_text_file(self, content: str, path: str, session_id: str, **_: Any) -> Any:
        assert self.buffers is not None and Path(path).is_absolute()
        self.writes.append((path, content))
        self.buffers[path] = content
        return WriteTextFileResponse()

    def kinds(self, session_id: str | None = None) -> list[str]:
        return [u.session_update for s, u in self.updates if session_id in (None, s)]

    def text(self, kind: str = "agent_message_chunk") -> str:
        return "".join(u.content.text for _, u in self.updates if u.session_update == kind)

    def clear(self) -> None:
        self.updates.clear()
        self.asked.clear()
        self.asking.clear()


@contextlib.asynccontextmanager
async def connect(client: Recorder, *argv: str, cwd: Path, log: Path) -> AsyncIterator[tuple[Any, Any]]:
    """A `hybrid-agent acp` process started with `argv` (after the interpreter), initialized; its
    stderr goes to `log` (a pipe nobody reads would fill up and stop it)."""
    with open(log, "ab") as err:
        async with spawn_agent_process(
            lambda _: client,
            sys.executable,
            *argv,
            cwd=cwd,
            env=dict(os.environ),
            transport_kwargs={"stderr": err},
        ) as (conn, proc):
            answer = await asyncio.wait_for(
                conn.initialize(protocol_version=1, client_capabilities=client.capabilities()), 60
            )
            assert answer.protocol_version == 1
            yield conn, proc
