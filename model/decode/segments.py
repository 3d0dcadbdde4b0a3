"""The one-token step from the model's own modules (`DecodeEngine(fuse=False)`, or `attention="sdpa"`)
as segments: (callable, graph-safe) pairs. With the attention kernel the whole step is one graph-safe
segment; with attention="sdpa" each attention core is the model's own SDPA call, run eagerly between
graphs over the first L keys (and an MLA block runs the model's own block there).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from hybrid_agent.kernels.attention_decode import attention_decode
from hybrid_agent.model.attention import Attention, sdpa
from hybrid_agent.model.decode.buffers import StaticState
from hybrid_agent.model.decode.fused import StepKernels, mla_step
from hybrid_agent.model.hybrid import HybridLM
from hybrid_agent.model.state import LayerState
from torch import Tensor, nn

Segment = tuple[Callable[[], None], bool]


def head(model: HybridLM, h: Tensor) -> Tensor:
    """The final norm and the LM head: (B, t, D) -> (B, t, V)."""
    weight = model.embed_tokens.weight if model.lm_head is None else model.lm_head.weight
    return F.linear(model.norm(h), weight)


class ModuleStep:
    """Builds the segments over `buf`; attention layers' query and output rows live in per-layer buffers
    between segments."""

    def __init__(self, model: HybridLM, buf: StaticState, kernels: StepKernels, attention: str) -> None:
        self.model, self.buf, self.kernels, self.attention = model, buf, kernels, attention
        self.attn_q: dict[int, Tensor] = {}
        self.attn_out: dict[int, Tensor] = {}

    def build(self) -> list[Segment]:
        """The step as a list of (callable, graph-safe): with attention="sdpa" graph-safe parts
        alternate with attention cores (and MLA blocks); with "kernel" the whole step is one graph-safe
        part."""
        m, buf = self.model, self.buf
        st = buf.state
        parts: list[Segment] = []
        todo: list[Callable[[], None]] = [lambda: buf.x.copy_(m.embed_tokens(buf.tok))]

        def flush() -> None:
            ops = tuple(todo)

            def run() -> None:
                for op in ops:
                    op()

            parts.append((run, True))
            todo.clear()

        for i, (block, layer) in enumerate(zip(m.layers, st.layers, strict=True)):
            if block.kind == "mla" and self.attention == "kernel":
                todo.append(lambda b=block, ls=layer: buf.x.copy_(self.block_kernel(b, ls, buf.x)))
                continue
            if block.kind == "mla":  # the model's own block (host-side positions): eagerly, between graphs
                flush()
                parts.append((lambda b=block, ls=layer: buf.x.copy_(b(buf.x, ls, st)), False))
                continue
            if block.kind != "attention":
                todo.append(lambda b=block, ls=layer: buf.x.copy_(b(buf.x, ls, st)))
                continue
            self.attn_q[i] = torch.zeros(
                st.batch_size, block.mixer.n_kv_heads, block.mixer.n_heads // block.mixer.n_kv_heads,
                block.mixer.head_dim, dtype=m.dtype, device=buf.device,
            )  # fmt: skip
            self.attn_out[i] = torch.zeros_like(self.attn_q[i])
            todo.append(lambda i=i, b=block, ls=layer: self.attention_in(i, b, ls))
            core = lambda i=i, ls=layer, a=block.mixer: self.attention_core(i, ls, a)
            if self.attention == "kernel":
                todo.append(core)
            else:
                flush()
                parts.append((core, False))
            todo.append(lambda i=i, b=block: self.attention_out(i, b))

        def finish() -> None:
            buf.logits.copy_(head(m, buf.x)[:, 0])
            buf.advance()

        todo.append(finish)
        flush()
        return parts

    def attention_in(self, i: int, block: nn.Module, ls: LayerState) -> None:
        """Attention.forward up to the cache append, for T == 1 at the device-side position: the
        model's own `project` (projections, QK-norm, RoPE), then the cache write."""
        a: Attention = block.mixer  # type: ignore[assignment]
        x = self.buf.x if block.post_norm else block.mixer_norm(self.buf.x)  # type: ignore[operator]
        q, k, v = a.project(x, self.buf.pos)  # (B, 1, H, Dh), (B, 1, Hkv, Dh) x2
        self.buf.write_kv(ls.storage, k, v)
        B, G = x.shape[0], a.n_heads // a.n_kv_heads
        self.attn_q[i].copy_(q.transpose(1, 2).reshape(B, a.n_kv_heads, G, a.head_dim))

    def _write_kv(self, ls: LayerState, k: Tensor, v: Tensor) -> None:
        ls.storage["k"].index_copy_(2, self.buf.pos, k.transpose(1, 2))  # (B, Hkv, max_context, Dh)
        ls.storage["v"].index_copy_(2, self.buf.pos, v.transpose(1, 2))
        ls.storage["pos"].index_copy_(0, self.buf.pos, self.buf.pos)

    def attention_core(self, i: int, ls: LayerState, a: Attention) -> None:
        storage = ls.storage
        q, scale = self.attn_q[i], 1.0 / math.sqrt(a.head_dim)
        if self.attention == "kernel":  # reads the length (pos + 1) on the device
            cfg = self.kernels.attn_config
            self.attn_out[i].copy_(
                attention_decode(q, storage["k"], storage["v"], self.buf.pos, scale=scale, config=cfg)
            )
            return
        L = self.buf.n + 1  # the new token's key is in the buffer
        keys, values = storage["k"].narrow(2, 0, L), storage["v"].narrow(2, 0, L)  # (B, Hkv, L, Dh)
        out = sdpa(q, keys.to(q.dtype), values.to(q.dtype), None, scale)  # (B, Hkv, G, Dh), the model's call
        self.attn_out[i].copy_(out)

    def attention_out(self, i: int, block: nn.Module) -> None:
        a: Attention = block.mixer  # type: ignore[assignment]
        B = self.buf.x.shape[0]
        out = self.attn_out[i].view(B, a.n_heads, 1, a.head_dim)  # (B, H, 1, Dh)
        y = a.o_proj(out.transpose(1, 2).reshape(B, 1, -1))  # (B, 1, D)
        x = self.buf.x + (block.mixer_norm(y) if block.post_norm else y)  # type: ignore[operator]
        if block.mlp is not None:
            x = x + (block.mlp_norm(block.mlp(x)) if block.post_norm else block.mlp(block.mlp_norm(x)))  # type: ignore[operator]
        self.buf.x.copy_(x)

    def block_kernel(self, block: nn.Module, ls: LayerState, x: Tensor) -> Tensor:
        """One MLA block with the model's modules and the latent-cache kernel (fuse=False)."""
        h = x if block.post_norm else block.mixer_norm(x)  # type: ignore[operator]
        y = mla_step(block.mixer, ls, h, None, self.buf.pos)  # type: ignore[arg-type]
        x = x + (block.mixer_norm(y) if block.post_norm else y)  # type: ignore[operator]
        if block.mlp is not None:
            x = x + (block.mlp_norm(block.mlp(x)) if block.post_norm else block.mlp(block.mlp_norm(x)))  # type: ignore[operator]
        return x
