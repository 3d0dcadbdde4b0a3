"""`greedy_advance(logits, tok, pos, ids)`: the end of a greedy decode step on the device (model/decode/):
tok (B, 1) <- argmax(logits (B, V)) (the first index of the maximum, a NaN counting as the maximum, as
torch.argmax), pos (1,) += 1, ids[:, pos] <- tok. Two launches (block maxima, then one program) instead
of torch's single-block argmax (23 us at V = 100,352 on the H100) and three small kernels.
`greedy_advance_ref` is the definition; Triton on CUDA (kernels/triton_greedy_advance.py).
"""

from __future__ import annotations

import torch
from hybrid_agent.kernels._dispatch import use_triton
from hybrid_agent.kernels.checks import check_greedy_advance


def greedy_advance_ref(logits: torch.Tensor, tok: torch.Tensor, pos: torch.Tensor, ids: torch.Tensor) -> None:
    """The engine's greedy step end (model/decode/engine.py `_advance`), in torch."""
    tok.copy_(logits.argmax(-1, keepdim=True))
    pos.add_(1)
    ids.index_copy_(1, pos, tok)


def greedy_advance(logits: torch.Tensor, tok: torch.Tensor, pos: torch.Tensor, ids: torch.Tensor) -> None:
    check_greedy_advance(logits, tok, ids)
    if use_triton(logits):
        from hybrid_agent.kernels.triton_greedy_advance import greedy_advance_triton

        greedy_advance_triton(logits, tok, pos, ids)
        return
    greedy_advance_ref(logits, tok, pos, ids)
