"""`hybrid-agent serve`'s listening socket (agent/serve_command.py `listening_socket`): its connections
have Nagle's algorithm off, as asyncio sets it for sockets made with IPPROTO_TCP named, so an answer's
body is not held back for the client's delayed ACK (~40 ms a request on Linux)."""

from __future__ import annotations

import asyncio
import socket

from hybrid_agent.agent.serve_command import listening_socket


def _nodelay_of_accepted(sock: socket.socket) -> int:
    """TCP_NODELAY on the server side of a connection accepted through asyncio (what uvicorn runs)."""

    async def run() -> int:
        got: asyncio.Future[int] = asyncio.get_running_loop().create_future()

        class Proto(asyncio.Protocol):
            def connection_made(self, transport: asyncio.BaseTransport) -> None:
                conn = transport.get_extra_info("socket")
                got.set_result(conn.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))
                transport.close()

        server = await asyncio.get_running_loop().create_server(Proto, sock=sock)
        port = sock.getsockname()[1]
        _, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            return await asyncio.wait_for(got, 10)
        finally:
            writer.close()
            server.close()

    return asyncio.run(run())


def test_served_connections_have_nagle_off() -> None:
    assert _nodelay_of_accepted(listening_socket("127.0.0.1", 0)) != 0
    # A socket made without naming its protocol (as before) gets no TCP_NODELAY from asyncio.
    plain = socket.socket(socket.AF_INET)
    plain.bind(("127.0.0.1", 0))
    assert _nodelay_of_accepted(plain) == 0


def test_a_client_connecting_before_the_server_runs_waits_instead_of_being_refused() -> None:
    """`hybrid-agent serve` prints its "serving ... on URL" line before uvicorn's start-up (the batch's
    warm-up) ends; the socket already listens, so a client that connects on seeing that line is queued
    in the backlog and answered once the server runs."""
    sock = listening_socket("127.0.0.1", 0)
    try:
        client = socket.create_connection(sock.getsockname()[:2], timeout=5)  # refused if not listening
        client.close()
    finally:
        sock.close()
