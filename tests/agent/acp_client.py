"""The editor side of tests/agent/test_acp.py (not a test module itself): a client built on the
official `acp` SDK that records what the agent streams and answers its requests as a test chooses.

- `permission`: the option id every `session/request_permission` is answered with, "cancelled" (the
  user closed the prompt), or "wait" (never answered: the test cancels the turn meanwhile).
- `buffers`: with it, the client offers `fs/read_text_file` / `fs/write_text_file`: a path in
  `buffers` reads as its (unsaved) text, any other as the file on disk; writes go into `buffers`
  and `writes`, never to disk, as an editor keeps them in its buffers.

`forked` connects it to a server forked by tests/agent/acp_scripted.py (`ForkServer`) over two FIFOs;
`connect` to a `hybrid-agent acp` started as a new process over its stdio.
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


class ForkServer:
    """tests/agent/acp_scripted.py --serve: `hybrid-agent acp` processes forked in milliseconds."""

    def __init__(self) -> None:
        import subprocess

        self.proc = subprocess.Popen(
            [sys.executable, str(HERE / "acp_scripted.py")],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env=dict(os.environ),
        )
        assert self.proc.stdout is not None and self.proc.stdout.readline() == "ready\n"

    def start(
        self, tmp: Path, argv: list[str], script: dict[str, Any] | None = None
    ) -> tuple[int, Path, Path]:
        """A child running `hybrid-agent ARGV`; (pid, its stdin FIFO, its stdout FIFO)."""
        import json

        n = len(list(tmp.glob("in-*")))
        fin, fout = tmp / f"in-{n}", tmp / f"out-{n}"
        os.mkfifo(fin)
        os.mkfifo(fout)
        request: dict[str, Any] = {
            "argv": argv,
            "in": str(fin),
            "out": str(fout),
            "err": str(tmp / "stderr.log"),
        }
        if script is not None:
            (tmp / f"script-{n}.json").write_text(json.dumps(script))
            request["script"] = str(tmp / f"script-{n}.json")
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(json.dumps(request) + "\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        assert line.startswith("pid "), line
        return int(line.split()[1]), fin, fout

    def close(self) -> None:
        self.proc.kill()  # it holds nothing to save; its children are servers that got EOF
        self.proc.wait(timeout=30)


async def pipes(fin: Path, fout: Path) -> tuple[asyncio.StreamWriter, asyncio.StreamReader]:
    """asyncio streams on a child's FIFOs (opened in the order the child opens them)."""
    loop = asyncio.get_running_loop()
    w = await asyncio.to_thread(os.open, fin, os.O_WRONLY)
    r = await asyncio.to_thread(os.open, fout, os.O_RDONLY)
    reader = asyncio.StreamReader(limit=64 << 20)
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), os.fdopen(r, "rb", 0))
    transport, protocol = await loop.connect_write_pipe(
        asyncio.streams.FlowControlMixin, os.fdopen(w, "wb", 0)
    )
    return asyncio.StreamWriter(transport, protocol, None, loop), reader


@contextlib.asynccontextmanager
async def forked(
    server: ForkServer, client: Recorder, tmp: Path, argv: list[str], script: dict[str, Any] | None = None
) -> AsyncIterator[tuple[Any, int]]:
    """An initialized SDK connection to a forked `hybrid-agent acp`; (connection, pid)."""
    from acp import connect_to_agent

    pid, fin, fout = server.start(tmp, argv, script)
    writer, reader = await pipes(fin, fout)
    conn = connect_to_agent(client, writer, reader)
    try:
        answer = await asyncio.wait_for(
            conn.initialize(protocol_version=1, client_capabilities=client.capabilities()), 30
        )
        assert answer.protocol_version == 1 and answer.agent_capabilities.load_session
        yield conn, pid
    finally:
        writer.close()  # the server reads EOF and exits
        await conn.close()
