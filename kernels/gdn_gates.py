"""`gdn_gates(a, b, A_log, dt_bias, *, allow_neg_eigval)`: Gated DeltaNet's gates for a prefill chunk,
g = -exp(A_log) softplus(a + dt_bias) (the log-decay) and beta = sigmoid(b) (x2 with negative
eigenvalues allowed), fp32 (B, T, H) each, the inputs `chunk_gated_delta_rule` takes.

a and b (B, T, H) are the projection's raw outputs, read where they lie (column blocks of the stacked
q|k|v|a|b|g projection: channels at unit stride, tokens one row apart). `gdn_gates_ref` is the
definition, the model's torch arithmetic (about ten elementwise launches over (B, T, H) on CUDA);
Triton on CUDA computes both in one pass (kernels/triton_gdn_gates.py), with the formulas of the decode
step's `gdn_decode_prep` kernel (softplus through an accurate log(1 + e)).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from hybrid_agent.kernels._dispatch import use_triton
from hybrid_agent.kernels.checks import check_gdn_gates


def gdn_gates_ref(
    a: torch.Tensor, b: torch.Tensor, A_log: torch.Tensor, dt_bias: torch.Tensor, *, allow_neg_eigval: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    check_gdn_gates(a, b, A_log, dt_bias)
    # packed first: on the CPU torch's elementwise functions round differently on strided inputs (a scalar
    # loop) than on packed ones (vectorised), and the model's projections were packed
    a, b = a.float().contiguous(), b.float().contiguous()
    beta = b.sigmoid()  # (B, T, H)
    if allow_neg_eigval:
        beta = beta * 2.0
    g = -A_log.float().exp() * F.softplus(a + dt_bias.float())  # (B, T, H)
    return g, beta


def gdn_gates(
    a: torch.Tensor, b: torch.Tensor, A_log: torch.Tensor, dt_bias: torch.Tensor, *, allow_neg_eigval: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    """(g, beta), fp32 (B, T, H) each, contiguous. See the module doc."""
    if use_triton(a):
        from hybrid_agent.kernels.triton_gdn_gates import gdn_gates_triton

        return gdn_gates_triton(a, b, A_log, dt_bias, allow_neg_eigval=allow_neg_eigval)
    return gdn_gates_ref(a, b, A_log, dt_bias, allow_neg_eigval=allow_neg_eigval)
