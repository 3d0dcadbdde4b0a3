"""A small MCP server (stdio) for the tests: `python mcp_echo_server.py`."""

from __future__ import annotations

import sys

from mcp.server.mcpserver import MCPServer
from mcp.types import ToolAnnotations

app = MCPServer("echo-test")


@app.tool(annotations=ToolAnnotations(read_only_hint=True))
def add(a: int, b: int) -> int:
    """Add two integers."""
    return a + b


@app.tool()
def shout(text: str) -> str:
    """Return the text in capitals."""
    return text.upper()


@app.tool()
def fail(message: str) -> str:
    """Always raises, to test error mapping."""
    raise ValueError(message)


@app.tool()
def nap(seconds: float) -> str:
    """Sleeps, to test call timeouts."""
    import time

    time.sleep(seconds)
    return "awake"


@app.tool()
def crash() -> str:
    """Kills the server process, to test a server that dies mid-session."""
    sys.stdout.flush()
    import os

    os._exit(3)


if __name__ == "__main__":
    app.run()
