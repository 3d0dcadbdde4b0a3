"""A small MCP server for the tests: `python mcp_echo_server.py` (stdio), or
`python mcp_echo_server.py --http PORT` (streamable HTTP on 127.0.0.1:PORT/mcp)."""

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
    if "--http" in sys.argv:
        app.run("streamable-http", host="127.0.0.1", port=int(sys.argv[sys.argv.index("--http") + 1]))
    else:
        app.run()
