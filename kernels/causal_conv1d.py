"""Causal depthwise conv1d with a carried state (the short convolution of Mamba-2 and Gated DeltaNet).

Channel-last: x (b,t,d), weight (d,w), bias (d,) or None. The state (b,d,w-1) holds the last w-1 inputs,
oldest first, so that a sequence fed in pieces gives the same output as in one call:

    y_t[c] = act(bias[c] + sum_{i<w} weight[c, i] * xs[c, t + i]),   xs = concat(state, x) along time

`activation` is "silu" or None. Outputs are in x's dtype, the arithmetic is fp32. The returned state has
x's dtype (it is made of inputs; keeping the dtype makes a round trip through it exact).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from hybrid_agent.kernels._cast import as_dtype, as_f32
from hybrid_agent.kernels._dispatch import backend, use_triton
from hybrid_agent.kernels.checks import check_conv_state, check_conv_weight, check_conv_x, conv_silu


def _act(y: torch.Tensor, activation: str | None) -> torch.Tensor:
    return F.silu(y) if conv_silu(activation) else y


def causal_conv1d_ref(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    *,
    initial_state: torch.Tensor | None = None,
    activation: str | None = "silu",
) -> tuple[torch.Tensor, torch.Tensor]:
    check_conv_x(x, step=False)
    b, _, d = x.shape
    w = check_conv_weight(d, weight, bias)
    f32 = torch.float32
    if initial_state is None:
        initial_state = x.new_zeros((b, d, w - 1))
    check_conv_state(initial_state, b, d, w)
    xs = torch.cat([initial_state.to(f32), x.to(f32).transpose(1, 2)], dim=2)  # (b, d, w-1+t)
    y = F.conv1d(xs, weight.to(f32).unsqueeze(1), None if bias is None else bias.to(f32), groups=d)  # (b,d,t)
    final_state = xs[:, :, xs.shape[2] - (w - 1) :].to(x.dtype)  # (b, d, w-1)
    return _act(y, activation).transpose(1, 2).to(x.dtype), final_state.contiguous()


def causal_conv1d_step_ref(
    x: torch.Tensor,
    state: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    *,
    activation: str | None = "silu",
) -> torch.Tensor:
    check_conv_x(x, step=True)
    b, d = x.shape
    w = check_conv_weight(d, weight, bias)
    check_conv_state(state, b, d, w)
    window = torch.cat([as_f32(state), as_f32(x).unsqueeze(-1)], dim=-1)  # (b, d, w)
    y = (window * as_f32(weight)).sum(-1)  # (b, d)
    if bias is not None:
        y = y + as_f32(bias)
    state.copy_(window[:, :, 1:])  # drop the oldest input, keep the newest w-1
    return as_dtype(_act(y, activation), x.dtype)


def causal_conv1d_step_cpu(
    x: torch.Tensor,
    state: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    *,
    activation: str | None = "silu",
) -> torch.Tensor:
    """`causal_conv1d_step_ref` for fp32 tensors without autograd, bit for bit: the same products and
    sums, with the window's product, the bias and the activation in place (decode on a small CPU is
    mostly per-call overhead)."""
    check_conv_x(x, step=True)
    b, d = x.shape
    check_conv_state(state, b, d, check_conv_weight(d, weight, bias))
    silu = conv_silu(activation)
    window = torch.cat([state, x.unsqueeze(-1)], dim=-1)  # (b, d, w)
    state.copy_(window[:, :, 1:])  # drop the oldest input, keep the newest w-1
    y = window.mul_(weight).sum(-1)  # (b, d)
    if bias is not None:
        y.add_(bias)
    return F.silu(y, inplace=True) if silu else y


def _cpu_fp32(*tensors: torch.Tensor | None) -> bool:
    """All given tensors fp32 and, under autograd, none requiring a gradient (the CPU forms work in place)."""
    grad = torch.is_grad_enabled()
    for t in tensors:
        if t is not None and (t.dtype != torch.float32 or (grad and t.requires_grad)):
            return False
    return True


def causal_conv1d(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    *,
    initial_state: torch.Tensor | None = None,
    activation: str | None = "silu",
) -> tuple[torch.Tensor, torch.Tensor]:
    """Full-sequence conv: (y (b,t,d), final_state (b,d,w-1)). See module doc."""
    if use_triton(x):
        from hybrid_agent.kernels.triton_causal_conv1d import causal_conv1d_triton

        return causal_conv1d_triton(x, weight, bias, initial_state=initial_state, activation=activation)
    return causal_conv1d_ref(x, weight, bias, initial_state=initial_state, activation=activation)


def causal_conv1d_step(
    x: torch.Tensor,
    state: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    *,
    activation: str | None = "silu",
) -> torch.Tensor:
    """One token: y (b,d); `state` (b,d,w-1) is shifted in place."""
    impl = backend(x)
    if impl == "triton":
        from hybrid_agent.kernels.triton_causal_conv1d import causal_conv1d_step_triton

        return causal_conv1d_step_triton(x, state, weight, bias, activation=activation)
    if impl == "cpu" and _cpu_fp32(x, state, weight, bias):
        return causal_conv1d_step_cpu(x, state, weight, bias, activation=activation)
    return causal_conv1d_step_ref(x, state, weight, bias, activation=activation)
