"""CUDA-graph capture of the engine's one-token step (model/decode/step.py)."""

from __future__ import annotations

from collections.abc import Callable

import torch
from hybrid_agent.model.decode.buffers import StaticState


def capture(step: Callable[[], None], buf: StaticState) -> torch.cuda.CUDAGraph:
    """The step as one graph. It is warmed up on a side stream first (Triton compiles, cuBLAS picks its
    kernels); the warm-up runs advance copies of the state, restored afterwards.

    The capture forbids unsafe CUDA calls on this thread only (`capture_error_mode="thread_local"`):
    with the default ("global") a copy or a stream sync made meanwhile by another thread of the
    process (`hybrid-agent serve`'s writer, copying a snapshot to host memory, agent/serve_tiers.py)
    fails, and so does the capture."""
    saved = [{n: t.clone() for n, t in f.items()} for f in buf.fixed]
    tok, pos, ids = buf.tok.clone(), buf.pos.clone(), buf.ids.clone()
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(2):
            buf.pos.copy_(pos)
            step()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph, capture_error_mode="thread_local"):
        step()
    for f, s in zip(buf.fixed, saved, strict=True):
        for n, t in f.items():
            t.copy_(s[n])
    buf.tok.copy_(tok)
    buf.pos.copy_(pos)
    buf.ids.copy_(ids)
    return graph
