"""`hybrid-agent serve`: an OpenAI-compatible HTTP server (Starlette on uvicorn) whose conversations
resume from their saved states (agent/serve_prefix.py) on one model thread (agent/serve_scheduler.py).

Routes: `POST /v1/chat/completions` (JSON or SSE with `stream`), `GET /v1/models`, `GET /health`,
`GET /metrics` (Prometheus text). Every error is OpenAI's shape, `{"error": {"message", "type",
"param", "code"}}`, with 400 for a body that is not JSON or not a valid request (never a framework's
422), 401 without the API key (when one is set; compared in constant time), 404 for an unknown model,
429 when every slot and the queue are full, 413 for a body over `MAX_BODY_BYTES`. A client that goes
away cancels its request. A graceful shutdown (SIGINT, SIGTERM) finishes the running request and
writes every saved state to the database before the process exits.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import logging
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from hybrid_agent.agent.serve_api import (
    CachedEncoder,
    RequestError,
    forced_call,
    parse_request,
    render,
    sampling,
    tool_list,
)
from hybrid_agent.agent.serve_prefix import PrefixCache
from hybrid_agent.agent.serve_scheduler import Job, Metrics, Result, Scheduler
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
from starlette.routing import Route

log = logging.getLogger("hybrid_agent.serve")

MAX_BODY_BYTES = 64 << 20
DEFAULT_MEMORY_TIER_MB = 2048
DEFAULT_PREFIX_MAX_GB = 16.0  # agent/serve_command.py's default too
DEFAULT_JOIN_FEED_TOKENS = 32  # agent/serve_command.py's default too


@dataclass
class ServeOptions:
    max_concurrent: int = 8
    max_queue: int = 64
    # A joining request's unrestored prompt part of at most this many tokens is fed by the batch's step
    # instead of a prefill of its own (agent/serve_scheduler.py `Scheduler.begin`); 0: always prefilled.
    join_feed_tokens: int = DEFAULT_JOIN_FEED_TOKENS
    # Longer prompt parts of requests joining together are prefilled as one batch (agent/serve_together.py).
    join_together: bool = True
    max_prompt_tokens: int = 32768
    max_new_tokens: int = 1024
    temperature: float = 0.0
    api_key: str | None = None
    memory_tier_bytes: int = DEFAULT_MEMORY_TIER_MB << 20
    # The device tier in front of it (agent/serve_prefix.py): None sizes it from the device's free
    # memory at the first save (agent/serve_tiers.py `auto_device_bytes`; 0 on a CPU); 0: none.
    gpu_tier_bytes: int | None = None
    # Saved prefix states in the database (memory/prefix_retention.py): their bytes at most (least
    # recently used out first; None: no bound), and how long an unused one stays (None or 0: kept).
    prefix_max_bytes: int | None = int(DEFAULT_PREFIX_MAX_GB * 2**30)
    prefix_ttl_seconds: float | None = None


class Disconnected(Exception):
    pass


def _error(exc: RequestError) -> JSONResponse:
    return JSONResponse(exc.body(), status_code=exc.status)


def build_app(engine: Any, store: Any, options: ServeOptions) -> Starlette:
    """The server's app over a loaded engine and an open store (None: the memory tier only)."""
    metrics = Metrics()
    prefix = PrefixCache(
        store,
        fingerprint=engine.fingerprint,
        policy=f"window={engine.window},sinks={engine.sinks}",
        layout=engine.layout_metadata() if hasattr(engine, "layout_metadata") else None,
        memory_bytes=options.memory_tier_bytes,
        # The device tier needs states snapshotted on the device (agent/engine.py `snapshot_on_device`).
        device_bytes=options.gpu_tier_bytes if getattr(engine, "snapshot_on_device", None) else 0,
        device=getattr(engine, "device", None),
        max_bytes=options.prefix_max_bytes,
        ttl_seconds=options.prefix_ttl_seconds,
    )
    scheduler = Scheduler(
        engine,
        prefix,
        metrics,
        max_concurrent=options.max_concurrent,
        max_queue=options.max_queue,
        join_feed_tokens=options.join_feed_tokens,
        join_together=options.join_together,
    )
    model_id = engine.model_name
    key = options.api_key.encode() if options.api_key else None
    encoder = CachedEncoder(engine.tokenizer)  # a returning conversation's history: tokenized once

    def authorize(request: Request) -> None:
        if key is None:
            return
        given = request.headers.get("authorization", "")
        token = given[7:].encode() if given.lower().startswith("bearer ") else b""
        if not hmac.compare_digest(token, key):
            raise RequestError(
                401, "a valid API key is required (Authorization: Bearer KEY)", type="authentication_error"
            )

    async def health(request: Request) -> Response:
        return JSONResponse({"status": "ok", "model": model_id})

    async def models(request: Request) -> Response:
        authorize(request)
        card = {"id": model_id, "object": "model", "created": 0, "owned_by": "hybrid-agent"}
        return JSONResponse({"object": "list", "data": [card]})

    async def metrics_text(request: Request) -> Response:
        authorize(request)
        return PlainTextResponse(metrics.render(), media_type="text/plain; version=0.0.4")

    async def read_body(request: Request) -> bytes:
        size = request.headers.get("content-length")
        if size is not None and size.isdigit() and int(size) > MAX_BODY_BYTES:
            raise RequestError(413, f"the request body is over {MAX_BODY_BYTES >> 20} MiB")
        body = bytearray()
        async for chunk in request.stream():
            body += chunk
            if len(body) > MAX_BODY_BYTES:
                raise RequestError(413, f"the request body is over {MAX_BODY_BYTES >> 20} MiB")
        return bytes(body)

    async def completions(request: Request) -> Response:
        try:
            authorize(request)
            t0 = time.perf_counter()
            req = parse_request(await read_body(request))
            if req.model != model_id:
                err = RequestError(
                    404,
                    f"the model {req.model!r} does not exist; this server has {model_id!r}",
                    param="model",
                )
                err.code = "model_not_found"
                raise err
            tools, forced = tool_list(req), forced_call(req)
            rendered = await asyncio.to_thread(render, engine.chat, encoder, req.messages, tools)
            metrics.inc("render_seconds_total", time.perf_counter() - t0)
            if len(rendered.ids) > options.max_prompt_tokens:
                err = RequestError(
                    400,
                    f"the prompt is {len(rendered.ids)} tokens, over this server's limit of "
                    f"{options.max_prompt_tokens} (--max-prompt-tokens)",
                    param="messages",
                )
                err.code = "context_length_exceeded"
                raise err
            job = Job(
                ids=rendered.ids,
                boundaries=rendered.boundaries,
                max_new_tokens=req.max_completion_tokens or req.max_tokens or options.max_new_tokens,
                sampling=sampling(req, options.temperature),
                forced=forced,
                ignore_eos=req.ignore_eos,
                tools=bool(tools),
                loop=asyncio.get_running_loop(),
            )
            scheduler.submit(job)
        except RequestError as exc:
            metrics.inc("requests_total", code=str(exc.status))
            return _error(exc)
        rid, created = f"chatcmpl-{uuid.uuid4().hex}", int(time.time())
        headers = (
            {"x-session-id": request.headers["x-session-id"]} if "x-session-id" in request.headers else {}
        )
        if req.stream:
            metrics.inc("requests_total", code="200")
            usage = bool(req.stream_options and req.stream_options.include_usage)
            return StreamingResponse(
                _sse(job, rid, created, model_id, usage), media_type="text/event-stream", headers=headers
            )
        try:
            result = await _wait(job, request)
        except RequestError as exc:
            metrics.inc("requests_total", code=str(exc.status))
            return _error(exc)
        except Disconnected:
            metrics.inc("requests_total", code="499")
            return Response(status_code=499)
        metrics.inc("requests_total", code="200")
        body = {
            "id": rid,
            "object": "chat.completion",
            "created": created,
            "model": model_id,
            "choices": [
                {
                    "index": 0,
                    "message": _message(result, rid),
                    "finish_reason": result.finish_reason,
                    "logprobs": None if result.logprobs is None else {"content": result.logprobs},
                }
            ],
            "usage": _usage(result),
        }
        return JSONResponse(body, headers=headers)

    async def not_found(request: Request, exc: Exception) -> Response:
        status = exc.status_code if isinstance(exc, HTTPException) else 500
        return _error(
            RequestError(status, f"{request.method} {request.url.path}: {getattr(exc, 'detail', exc)}")
        )

    async def on_request_error(request: Request, exc: Exception) -> Response:
        if isinstance(exc, RequestError):
            return _error(exc)
        # A bug: the client still gets one line in OpenAI's shape, the log the traceback.
        log.error("%s %s failed", request.method, request.url.path, exc_info=exc)
        return _error(RequestError(500, f"internal error: {type(exc).__name__}: {exc}", type="server_error"))

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        try:
            yield
        finally:
            await asyncio.to_thread(shutdown)

    def shutdown() -> None:
        scheduler.stop()
        prefix.flush()  # every saved state reaches the database before the process ends
        prefix.close()

    app = Starlette(
        routes=[
            Route("/health", health),
            Route("/metrics", metrics_text),
            Route("/v1/models", models),
            Route("/v1/chat/completions", completions, methods=["POST"]),
        ],
        exception_handlers={
            HTTPException: not_found,
            RequestError: on_request_error,
            Exception: on_request_error,
        },
        lifespan=lifespan,
    )
    app.state.metrics, app.state.prefix, app.state.scheduler = metrics, prefix, scheduler
    app.state.shutdown = shutdown
    return app


def _usage(result: Result) -> dict[str, Any]:
    return {
        "prompt_tokens": result.prompt_tokens,
        "completion_tokens": result.completion_tokens,
        "total_tokens": result.prompt_tokens + result.completion_tokens,
        "prompt_tokens_details": {"cached_tokens": result.cached_tokens},
    }


def _calls(result: Result, rid: str) -> list[dict[str, Any]]:
    return [
        {
            "id": f"call_{rid[-12:]}_{i}",
            "type": "function",
            "function": {"name": name, "arguments": json.dumps(args, ensure_ascii=False)},
        }
        for i, (name, args) in enumerate(result.calls)
    ]


def _message(result: Result, rid: str) -> dict[str, Any]:
    msg: dict[str, Any] = {"role": "assistant", "content": result.content or (None if result.calls else "")}
    if result.calls:
        msg["tool_calls"] = _calls(result, rid)
    return msg


async def _wait(job: Job, request: Request) -> Result:
    """The job's result; a client that disconnects meanwhile cancels it."""
    checked = time.monotonic()
    try:
        while True:
            try:
                kind, data = await asyncio.wait_for(job.events.get(), 0.25)
            except TimeoutError:
                kind, data = "", None
            if kind == "error":
                raise data
            if kind == "done":
                return data  # type: ignore[no-any-return]
            if time.monotonic() - checked >= 0.25:  # text keeps coming: look at the client now and then
                checked = time.monotonic()
                if await request.is_disconnected():
                    raise Disconnected
    finally:
        job.cancelled.set()  # nothing if it finished; otherwise its slot is freed at the next token


def chunk_head(rid: str, created: int, model_id: str) -> str:
    """The fields every chunk of one streamed answer starts with, as JSON without its closing brace."""
    body = {"id": rid, "object": "chat.completion.chunk", "created": created, "model": model_id}
    return json.dumps(body)[:-1]


def text_chunk(head: str, text: str) -> str:
    """A chunk carrying only `text` (no log probabilities), the same bytes as the general form in
    `_sse` gives, without building and dumping the whole body for each token: a batched step makes one
    per row, on the thread the model's thread shares the interpreter lock with."""
    return (
        f'data: {head}, "choices": [{{"index": 0, "delta": {{"content": {json.dumps(text)}}}, '
        '"finish_reason": null, "logprobs": null}]}\n\n'
    )


async def _sse(job: Job, rid: str, created: int, model_id: str, usage: bool) -> AsyncIterator[str]:
    pending: list[dict[str, Any]] = []  # logprobs of tokens whose text has not been sent yet
    head = chunk_head(rid, created, model_id)

    def chunk(delta: dict[str, Any], finish: str | None = None, **extra: Any) -> str:
        logprobs = {"content": pending[:]} if pending and delta is not None else None
        if delta is not None:
            pending.clear()
        choice = {"index": 0, "delta": delta, "finish_reason": finish, "logprobs": logprobs}
        rest = json.dumps({"choices": [choice] if delta is not None else [], **extra})
        return f"data: {head}, {rest[1:]}\n\n"

    def render(kind: str, data: Any, out: list[str]) -> bool:
        """Append the chunks of one event to `out`; True when the answer ends with it."""
        if kind == "delta":
            out.append(chunk({"content": data}) if pending else text_chunk(head, data))
        elif kind == "logprobs":
            pending.extend(data)
        elif kind == "error":
            out.append(f"data: {json.dumps(data.body())}\n\n")
            return True
        else:
            if data.calls:
                calls = [{"index": i, **c} for i, c in enumerate(_calls(data, rid))]
                out.append(chunk({"tool_calls": calls}))
            out.append(chunk({}, data.finish_reason))
            if usage:
                out.append(chunk(None, usage=_usage(data)))  # type: ignore[arg-type]
            return True
        return False

    try:
        yield chunk({"role": "assistant", "content": ""})
        ended = False
        while not ended:
            out: list[str] = []
            ended = render(*await job.events.get(), out)
            # Events that came meanwhile (a slow reader falls behind the steps) go out in one write.
            while not ended and not job.events.empty():
                ended = render(*job.events.get_nowait(), out)
            if out:
                yield "".join(out)
        yield "data: [DONE]\n\n"
    finally:
        job.cancelled.set()  # the client went away (the response task is cancelled) or it is done
