"""The engine's one-token step: `buf.tok` in, `buf.logits` and the greedy advance out, every layer
through its own forward with the engine's ops (model/decode/ops.py). One callable, so the whole step is
one CUDA graph.

Fused (the default with the attention kernel): each residual add is fused with the next RMSNorm
(kernels.residual_rms_norm; the block structure of model/blocks.py, pre- or post-norm), and the LM head
runs through the step's matmul choice. Otherwise the model's own blocks run as they are.

Tensor parallel (model/parallel.py): the step is a rank's; each mixer's and MLP's output goes through
the block's own `reduce` (the ranks' all-reduce) before its residual add, the embedding and head are the
model's vocab-parallel ones (`tp.embed`, `tp.logits`: every rank holds the full logits, so every rank's
greedy advance picks the same token). No host read: with NCCL the collectives are captured in the graph.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

from hybrid_agent.kernels import rms_norm
from hybrid_agent.kernels.residual_rms_norm import residual_rms_norm
from hybrid_agent.model.cpu_rows import head_matmul
from hybrid_agent.model.decode.buffers import StaticState
from hybrid_agent.model.decode.ops import EngineOps
from hybrid_agent.model.hybrid import HybridLM
from torch import Tensor


def head(model: HybridLM, h: Tensor) -> Tensor:
    """The final norm and the LM head: (B, t, D) -> (B, t, V) (gathered over tensor-parallel ranks)."""
    return logits(model, model.norm(h))


def logits(model: HybridLM, h: Tensor, matmul: Callable[[Tensor, Tensor], Tensor] | None = None) -> Tensor:
    """The LM head of normed `h`: the rank's vocabulary rows by `matmul`, gathered over the ranks."""
    owner = model.embed_tokens if model.lm_head is None else model.lm_head
    matmul = matmul or partial(head_matmul, owner)  # as the model's own forward (model/cpu_rows.py)
    return model.tp.logits(h, owner.weight, model.config.vocab_size, matmul)


def embed(model: HybridLM, ids: Tensor) -> Tensor:
    """The vocab-parallel embedding of `ids` (B, t) -> (B, t, D), summed over the ranks."""
    return model.tp.embed(model.embed_tokens.weight, ids)


class Step:
    def __init__(self, model: HybridLM, buf: StaticState, ops: EngineOps) -> None:
        self.model, self.buf, self.ops = model, buf, ops

    def __call__(self) -> None:
        m, buf, ops = self.model, self.buf, self.ops
        ops.begin()
        if not ops.fused:
            h = embed(m, buf.tok)  # (B, 1, D)
            for block, ls in zip(m.layers, buf.state.layers, strict=True):
                h = block(h, ls, buf.state, ops)
            buf.logits.copy_(head(m, h)[:, 0])
            buf.advance()
            return
        x, eps = buf.x, m.config.norm_eps
        x.copy_(embed(m, buf.tok))
        pending: list[tuple[Tensor, Tensor | None]] = []  # the last sub-layer's output, not yet added to x

        def settle(w_out: Tensor | None) -> Tensor:
            """Add the pending output to x (normalised first for post-norm), then norm x by w_out."""
            if not pending:
                return x if w_out is None else rms_norm(x, w_out, eps)
            y, w_y = pending.pop()
            out = residual_rms_norm(x, y, w_y, w_out, eps)
            return x if out is None else out

        for block, ls in zip(m.layers, buf.state.layers, strict=True):
            post = block.post_norm
            if block.mixer is not None:
                h = settle(None if post else block.mixer_norm.weight)
                y = block.reduce(block.mixer(h, ls, buf.state, ops))
                pending.append((y, block.mixer_norm.weight if post else None))
            if block.mlp is not None:
                h = settle(None if post else block.mlp_norm.weight)
                y = block.reduce(block.mlp(h, ops))
                pending.append((y, block.mlp_norm.weight if post else None))
        h = settle(m.norm.weight)
        owner = m.embed_tokens if m.lm_head is None else m.lm_head
        buf.logits.copy_(logits(m, h, partial(ops.head_mm, owner))[:, 0])
        buf.advance()
