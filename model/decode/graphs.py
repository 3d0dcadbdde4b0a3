"""CUDA-graph capture of the step's graph-safe segments (model/decode/segments.py's pairs)."""

from __future__ import annotations

import torch
from hybrid_agent.model.decode.buffers import StaticState
from hybrid_agent.model.decode.segments import Segment


def capture(segments: list[Segment], buf: StaticState) -> dict[int, torch.cuda.CUDAGraph]:
    """A graph per graph-safe segment, by index (attention cores with attention="sdpa" run eagerly). The
    segments are warmed up on a side stream first (Triton compiles, cuBLAS picks its kernels); the
    warm-up runs advance copies of the state, restored afterwards."""
    saved = [{n: t.clone() for n, t in f.items()} for f in buf.fixed]
    tok, pos, ids = buf.tok.clone(), buf.pos.clone(), buf.ids.clone()
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(2):
            buf.pos.copy_(pos)
            for seg, _ in segments:
                seg()
    torch.cuda.current_stream().wait_stream(side)
    graphs: dict[int, torch.cuda.CUDAGraph] = {}
    pool = None
    for j, (seg, safe) in enumerate(segments):
        if not safe:
            continue
        g = torch.cuda.CUDAGraph()
        with torch.cuda.graph(g, pool=pool):
            seg()
        pool = g.pool()
        graphs[j] = g
    for f, s in zip(buf.fixed, saved, strict=True):
        for n, t in f.items():
            t.copy_(s[n])
    buf.tok.copy_(tok)
    buf.pos.copy_(pos)
    buf.ids.copy_(ids)
    return graphs
