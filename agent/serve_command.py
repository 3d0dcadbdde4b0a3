"""`hybrid-agent serve`'s command line: its options (agent/cli.py adds them) and the command, which
starts reading the weights, binds the port, opens the store, builds the engine and runs the server
(agent/serve_app.py) on uvicorn.
Parsing imports nothing heavy (no torch, no server): `hybrid-agent --help` stays fast.
"""

from __future__ import annotations

import argparse
import os
import socket
import sys
from typing import Any

from hybrid_agent.agent.errors import AgentError

API_KEY_ENV = "HYBRID_AGENT_API_KEY"
DEFAULT_MEMORY_TIER_MB = 2048  # agent/serve_app.py's default too
DEFAULT_PREFIX_MAX_GB = 16.0  # agent/serve_app.py's default too
DEFAULT_JOIN_FEED_TOKENS = 32  # agent/serve_app.py's default too


def _whole(low: int, high: int) -> Any:
    """An argparse type: a whole number in [low, high], else argparse's one-line usage error."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"{text} is not a whole number from {low} to {high}")
        return value

    return parse


_COUNT, _POSITIVE, _PORT = _whole(0, 2**31 - 1), _whole(1, 2**31 - 1), _whole(0, 65535)


def _amount(what: str, low: float, high: float) -> Any:
    """An argparse type: a number of `what` in [low, high], else argparse's one-line usage error."""

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number of {what}") from None
        if not low <= value <= high:  # NaN fails too
            raise argparse.ArgumentTypeError(f"{text} is not a number of {what} from {low:g} to {high:g}")
        return value

    return parse


def add_parser(sub: Any, shared: argparse.ArgumentParser) -> None:
    """The `serve` command, on the subparsers `sub` of agent/cli.py's parser."""
    p = sub.add_parser(
        "serve", parents=[shared], help="an OpenAI-compatible HTTP server (state reuse by prefix)"
    )
    p.add_argument(
        "--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1, loopback only)"
    )
    p.add_argument(
        "--port", type=_PORT, default=8000, help="port to listen on (default: 8000; 0: any free port)"
    )
    p.add_argument(
        "--api-key", metavar="KEY", default=None, help=f"require this bearer key (or set ${API_KEY_ENV})"
    )
    p.add_argument(
        "--max-concurrent",
        type=_POSITIVE,
        metavar="N",
        default=8,
        help="requests admitted to run (default: 8)",
    )
    p.add_argument(
        "--max-queue",
        type=_COUNT,
        metavar="N",
        default=64,
        help="requests waiting beyond those; more get 429 (default: 64)",
    )
    p.add_argument(
        "--join-feed-tokens", type=_COUNT, metavar="K", default=DEFAULT_JOIN_FEED_TOKENS,
        help="a joining request's prompt part not restored from a saved state, when at most K tokens, is "
        "fed by the batch's decode steps instead of a prefill of its own that the batch waits for "
        f"(default: {DEFAULT_JOIN_FEED_TOKENS}; 0: always prefilled)",
    )  # fmt: skip
    p.add_argument(
        "--join-together", action=argparse.BooleanOptionalAction, default=True,
        help="requests joining the batch at once that start from the same saved state have their longer "
        "prompt parts (above --join-feed-tokens) prefilled as one batch instead of one prefill each "
        "(default: on; --no-join-together prefills each alone)",
    )  # fmt: skip
    p.add_argument(
        "--memory-tier-mb", type=_POSITIVE, metavar="MB", default=DEFAULT_MEMORY_TIER_MB,
        help=f"host memory for saved states, least recent out first (default: {DEFAULT_MEMORY_TIER_MB})",
    )  # fmt: skip
    p.add_argument(
        "--gpu-tier-mb", type=_COUNT, metavar="MB", default=None,
        help="memory on the model's GPU for saved states, in front of the host tier; least recent "
        "out first, to host memory (default: half the GPU memory free once the model is loaded and "
        "its buffers built; 0 on a CPU; 0: no GPU tier)",
    )  # fmt: skip
    p.add_argument(
        "--prefix-max-gb", type=_amount("GB", 0.0, 1e6), metavar="G", default=DEFAULT_PREFIX_MAX_GB,
        help="bytes of saved prefix states kept in the database, least recently used deleted first "
        f"(default: {DEFAULT_PREFIX_MAX_GB:g}; 0: none kept)",
    )  # fmt: skip
    p.add_argument(
        "--prefix-ttl-hours", type=_amount("hours", 0.0, 1e6), metavar="H", default=0.0,
        help="delete saved prefix states unused for this long (default: 0, kept until evicted)",
    )  # fmt: skip


LISTEN_BACKLOG = 2048  # uvicorn's default backlog


def listening_socket(host: str, port: int) -> socket.socket:
    """A TCP socket bound to host:port, for uvicorn (`Server.run(sockets=...)`). It is made with its
    protocol named (IPPROTO_TCP): asyncio turns Nagle's algorithm off (TCP_NODELAY) only on connections
    of such a socket, and without that a response written in two pieces (headers, then body) waited
    for the client's delayed ACK, ~40 ms on Linux, before its body left. It listens at once: the
    "serving" line is printed before uvicorn's start-up (the batch's warm-up) ends and it takes
    connections, and a client connecting meanwhile waits in the backlog instead of being refused.
    OSError when it cannot bind."""
    sock = socket.socket(
        socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP
    )
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(LISTEN_BACKLOG)
    except OSError:
        sock.close()
        raise
    return sock


def cmd_serve(args: argparse.Namespace) -> int:
    sock, engine, store, options = open_server(args)
    try:
        import uvicorn  # both imported by open_server, while the weights were read
        from hybrid_agent.agent.serve_app import build_app

        app = build_app(engine, store, options)
        host, bound = sock.getsockname()[:2]
        where = f"[{host}]" if ":" in host else host
        print(
            f"hybrid-agent: serving {engine.model_name} on http://{where}:{bound}/v1",
            file=sys.stderr,
            flush=True,
        )
        config = uvicorn.Config(app, log_level="warning", lifespan="on", timeout_graceful_shutdown=30)
        uvicorn.Server(config).run(sockets=[sock])
    finally:
        sock.close()
        store.close()
    return 0


def open_server(args: argparse.Namespace) -> tuple[socket.socket, Any, Any, Any]:
    """The bound socket, the model's engine, the open store and the server's options of `serve`.

    The weights are read on a thread from the first line (agent/factory.py `ModelPreload`: the
    command line alone names the model and device) while the server's modules are imported, the port
    bound and the database opened; the engine takes the model when it is built. Anything that fails
    before stops the read and waits for its thread, so the error line comes at once and no thread is
    left behind."""
    from hybrid_agent.agent.factory import ModelPreload, load_engine, preloading
    from hybrid_agent.agent.startup import mark

    model, device, seed = (
        getattr(args, "model", None),
        getattr(args, "device", None),
        getattr(args, "seed", None),
    )
    sock: socket.socket | None = None
    store: Any = None
    try:
        # A path that is not a model fails at the start, in one line; whatever fails after it stops the
        # read first (`preloading`), then the port and the database are closed.
        with preloading(lambda: ModelPreload(model, device, seed)) as preload:
            # The server's modules (cmd_serve's too), imported while the weights are read.
            import uvicorn  # noqa: F401
            from hybrid_agent.agent.serve_app import ServeOptions, build_app  # noqa: F401
            from hybrid_agent.memory import Store

            mark("imports")
            sock = _bind(args.host, int(args.port))
            options = ServeOptions(
                max_concurrent=args.max_concurrent,
                max_queue=args.max_queue,
                join_feed_tokens=args.join_feed_tokens,
                join_together=args.join_together,
                max_prompt_tokens=getattr(args, "max_prompt_tokens", None) or 32768,
                max_new_tokens=getattr(args, "max_new_tokens", None) or 1024,
                temperature=getattr(args, "temperature", None) or 0.0,
                api_key=args.api_key or os.environ.get(API_KEY_ENV) or None,
                memory_tier_bytes=args.memory_tier_mb << 20,
                gpu_tier_bytes=None if args.gpu_tier_mb is None else args.gpu_tier_mb << 20,
                prefix_max_bytes=int(args.prefix_max_gb * 2**30),
                prefix_ttl_seconds=args.prefix_ttl_hours * 3600.0,
            )
            store = Store(getattr(args, "db", None))
            mark("store-open")
            engine = load_engine(
                model,
                device=device,
                window=getattr(args, "window", None),
                sinks=getattr(args, "sinks", None) or 4,
                seed=seed,
                preload=preload,
            )
            mark("engine-ready")
            return sock, engine, store, options
    except BaseException:
        if store is not None:
            store.close()
        if sock is not None:
            sock.close()
        raise


def _bind(host: str, port: int) -> socket.socket:
    try:
        return listening_socket(host, port)
    except OSError as exc:
        raise AgentError(
            f"cannot listen on {host}:{port} ({exc.strerror}); pick another --port or --host"
        ) from None
