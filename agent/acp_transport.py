"""JSON-RPC messages over stdio, one a line, for `hybrid-agent acp` (agent/acp_server.py).

An `acp` SDK `Transport` (the message-level seam of its `Connection`). It reads lines itself, because
the SDK's own reader drops a line that is not JSON without a word: here such a line is answered with
a JSON-RPC error (`-32700` parse error, `id: null`; `-32600` for JSON that is not a request or a
response), and the server goes on reading. A line longer than MAX_LINE_BYTES is dropped as it is read
and answered the same way, so one bad line costs bounded memory.

Reading and writing run in threads of their own, so that stdin and stdout may be pipes, files or a
terminal, and a client that reads slowly never blocks the event loop the turns' cancels are read on.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
import os
import threading
from typing import Any

MAX_LINE_BYTES = 64 << 20  # one JSON-RPC message: far beyond any prompt an editor sends
_TOO_LONG = object()


def error_message(request_id: Any, code: int, message: str) -> dict[str, Any]:
    return {"jsonrpc": "2.0", "id": request_id, "error": {"code": code, "message": message}}


class LineTransport:
    """Newline-delimited JSON-RPC on the file descriptors `in_fd` and `out_fd`."""

    def __init__(self, in_fd: int, out_fd: int, *, max_line_bytes: int = MAX_LINE_BYTES) -> None:
        self._in_fd = in_fd
        self._out_fd = out_fd
        self._max = max_line_bytes
        self._lines: asyncio.Queue[Any] = asyncio.Queue()
        self._loop = asyncio.get_running_loop()
        # One writer thread: messages leave in the order they were sent.
        self._writer = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="acp-stdout")
        self._closed = False
        threading.Thread(target=self._read_lines, name="acp-stdin", daemon=True).start()

    # ---- reading -------------------------------------------------------------------------------------
    def _put(self, items: list[Any]) -> None:
        # The lines of one read arrive together: a prompt and the cancel right behind it are both
        # queued before either is handled.
        self._loop.call_soon_threadsafe(lambda: [self._lines.put_nowait(i) for i in items])

    def _read_lines(self) -> None:
        pieces: list[bytes] = []  # the line being read, so far
        size = 0
        skipping = False  # inside a line over the limit: dropped up to its end
        try:
            while chunk := os.read(self._in_fd, 1 << 16):
                *complete, rest = chunk.split(b"\n")
                items: list[Any] = []
                for piece in complete:
                    too_long = skipping or size + len(piece) > self._max
                    items.append(_TOO_LONG if too_long else b"".join([*pieces, piece]))
                    pieces, size, skipping = [], 0, False
                if rest and not skipping:
                    pieces.append(rest)
                    size += len(rest)
                    if size > self._max:
                        pieces, size, skipping = [], 0, True
                if items:
                    self._put(items)
        except OSError:
            pass
        finally:
            last = b"".join(pieces)
            self._put([last, None] if last.strip() and not skipping else [None])

    async def receive(self) -> dict[str, Any] | None:
        while True:
            line = await self._lines.get()
            if line is None:
                return None
            if line is _TOO_LONG:
                await self.send(error_message(None, -32700, f"Parse error: a line over {self._max} bytes"))
                continue
            if not line.strip():
                continue
            try:
                message = json.loads(line)
            except ValueError as exc:
                await self.send(error_message(None, -32700, f"Parse error: not JSON ({exc})"))
                continue
            problem = _invalid(message)
            if problem is None:
                return message  # type: ignore[no-any-return]
            request_id = message.get("id") if isinstance(message, dict) else None
            if not isinstance(request_id, (str, int)) or isinstance(request_id, bool):
                request_id = None
            await self.send(error_message(request_id, -32600, f"Invalid request: {problem}"))

    # ---- writing -------------------------------------------------------------------------------------
    def _write(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            view = view[os.write(self._out_fd, view) :]

    async def send(self, message: dict[str, Any]) -> None:
        if self._closed:
            raise ConnectionError("the connection is closed")
        data = (json.dumps(message, ensure_ascii=False, separators=(",", ":")) + "\n").encode("utf-8")
        await self._loop.run_in_executor(self._writer, self._write, data)

    async def close(self) -> None:
        self._closed = True
        self._writer.shutdown(wait=False)


def _invalid(message: Any) -> str | None:
    """Why `message` is not a JSON-RPC request, notification or response; None when it is one."""
    if not isinstance(message, dict):
        return f"a message is a JSON object, not {type(message).__name__}"
    if "id" in message and not (message["id"] is None or isinstance(message["id"], (str, int))):
        return "id must be a string, a number or null"
    if "method" in message:
        if not isinstance(message["method"], str):
            return "method must be a string"
        return None
    if "id" in message and ("result" in message or "error" in message):
        return None
    return "neither a request (method) nor a response (id with result or error)"
