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
from hybrid_agent.kernels.errors import KernelInputError


def _act(y: torch.Tensor, activation: str | None) -> torch.Tensor:
    if activation is None:
        return y
    if activation == "silu":
        return F.silu(y)
    raise KernelInputError(f"causal_conv1d: activation must be 'silu' or None, got {activation!r}")


def _check_weight(d: int, weight: torch.Tensor, bias: torch.Tensor | None) -> int:
    if weight.dim() != 2 or weight.shape[0] != d:
        raise KernelInputError(f"causal_conv1d: weight must be (d, w) with d={d}, got {tuple(weight.shape)}")
    if bias is not None and bias.shape != (d,):
        raise KernelInputError(f"causal_conv1d: bias must be (d,) = ({d},), got {tuple(bias.shape)}")
    return weight.shape[1]


def _check_state(state: torch.Tensor, b: int, d: int, w: int) -> None:
    if state.shape != (b, d, w - 1):
        raise KernelInputError(
            f"causal_conv1d: state must be (b, d, w-1) = {(b, d, w - 1)}, got {tuple(state.shape)}"
        )


def causal_conv1d_ref(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    *,
    initial_state: torch.Tensor | None = None,
    activation: str | None = "silu",
) -> tuple[torch.Tensor, torch.Tensor]:
    if x.dim() != 3:
        raise KernelInputError(f"causal_conv1d: x must be (b, t, d) channel-last, got {tuple(x.shape)}")
    b, _, d = x.shape
    w = _check_weight(d, weight, bias)
    f32 = torch.float32
    if initial_state is None:
        initial_state = x.new_zeros((b, d, w - 1))
    _check_state(initial_state, b, d, w)
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
    if x.dim() != 2:
        raise KernelInputError(f"causal_conv1d_step: x must be (b, d), got {tuple(x.shape)}")
    b, d = x.shape
    w = _check_weight(d, weight, bias)
    _check_state(state, b, d, w)
    window = torch.cat([as_f32(state), as_f32(x).unsqueeze(-1)], dim=-1)  # (b, d, w)
    y = (window * as_f32(weight)).sum(-1)  # (b, d)
    if bias is not None:
        y = y + as_f32(bias)
    state.copy_(window[:, :, 1:])  # drop the oldest input, keep the newest w-1
    return as_dtype(_act(y, activation), x.dtype)


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
    return causal_conv1d_step_ref(x, state, weight, bias, activation=activation)
