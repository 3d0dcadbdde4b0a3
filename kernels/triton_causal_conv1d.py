"""Triton causal depthwise conv1d (full sequence and one-token step), same contract as the refs in
`kernels.causal_conv1d`. Channel-last tiles (time x channels) so loads are contiguous in channels;
the conv width W is a compile-time constant and its loop is unrolled. x is read at its own batch and
token strides (Gated DeltaNet's q|k|v, a column block of its stacked input projection, is not copied).
Inputs before t = 0 come from the carried state. The final state of the full op is the last w-1
inputs, gathered in torch (`last_inputs`).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from hybrid_agent.kernels.checks import check_conv_state, check_conv_weight, check_conv_x, conv_silu


@triton.jit
def _conv_kernel(
    x_ptr, w_ptr, bias_ptr, s_ptr, y_ptr,
    T, D, SXB, SXT,
    W: tl.constexpr, HAS_BIAS: tl.constexpr, HAS_STATE: tl.constexpr, SILU: tl.constexpr,
    BT: tl.constexpr, BD: tl.constexpr,
):  # fmt: skip
    bi = tl.program_id(0).to(tl.int64)
    offs_t = tl.program_id(1) * BT + tl.arange(0, BT)
    offs_d = tl.program_id(2) * BD + tl.arange(0, BD)
    md = offs_d < D
    acc = tl.zeros((BT, BD), dtype=tl.float32)
    for i in tl.static_range(W):
        pos = offs_t + (i - (W - 1))  # input time read by tap i
        xv = tl.load(
            x_ptr + bi * SXB + pos[:, None].to(tl.int64) * SXT + offs_d[None, :],
            mask=(pos[:, None] >= 0) & (pos[:, None] < T) & md[None, :],
            other=0.0,
        ).to(tl.float32)
        if HAS_STATE:  # pos in [-(W-1), 0) reads state[:, :, W-1+pos]
            sv = tl.load(
                s_ptr + (bi * D + offs_d[None, :]) * (W - 1) + (W - 1 + pos[:, None]),
                mask=(pos[:, None] < 0) & (pos[:, None] >= -(W - 1)) & md[None, :],
                other=0.0,
            ).to(tl.float32)
            xv += sv
        wv = tl.load(w_ptr + offs_d * W + i, mask=md, other=0.0).to(tl.float32)
        acc += xv * wv[None, :]
    if HAS_BIAS:
        acc += tl.load(bias_ptr + offs_d, mask=md, other=0.0).to(tl.float32)[None, :]
    if SILU:
        acc = acc * tl.sigmoid(acc)
    tl.store(
        y_ptr + (bi * T + offs_t[:, None]) * D + offs_d[None, :],
        acc.to(y_ptr.dtype.element_ty),
        mask=(offs_t[:, None] < T) & md[None, :],
    )


@triton.jit
def _conv_step_kernel(
    x_ptr, s_ptr, w_ptr, bias_ptr, y_ptr,
    D,
    W: tl.constexpr, WP: tl.constexpr, HAS_BIAS: tl.constexpr, SILU: tl.constexpr, BD: tl.constexpr,
):  # fmt: skip
    bi = tl.program_id(0).to(tl.int64)
    offs_d = tl.program_id(1) * BD + tl.arange(0, BD)
    offs_j = tl.arange(0, WP)  # state columns, padded to a power of two
    md = offs_d < D
    x = tl.load(x_ptr + bi * D + offs_d, mask=md, other=0.0)
    acc = x.to(tl.float32) * tl.load(w_ptr + offs_d * W + (W - 1), mask=md, other=0.0).to(tl.float32)
    s_rows = s_ptr + (bi * D + offs_d[:, None]) * (W - 1)
    m_old = md[:, None] & (offs_j[None, :] < W - 1)
    old = tl.load(s_rows + offs_j[None, :], mask=m_old, other=0.0)  # (BD, WP)
    wts = tl.load(w_ptr + offs_d[:, None] * W + offs_j[None, :], mask=m_old, other=0.0).to(tl.float32)
    acc += tl.sum(old.to(tl.float32) * wts, axis=1)
    # New state = old shifted left by one, x appended. Both loads precede the store.
    shifted = tl.load(s_rows + offs_j[None, :] + 1, mask=md[:, None] & (offs_j[None, :] < W - 2), other=0.0)
    new = tl.where(offs_j[None, :] == W - 2, x[:, None].to(shifted.dtype), shifted)
    tl.store(s_rows + offs_j[None, :], new, mask=m_old)
    if HAS_BIAS:
        acc += tl.load(bias_ptr + offs_d, mask=md, other=0.0).to(tl.float32)
    if SILU:
        acc = acc * tl.sigmoid(acc)
    tl.store(y_ptr + bi * D + offs_d, acc.to(y_ptr.dtype.element_ty), mask=md)


def causal_conv1d_triton(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    *,
    initial_state: torch.Tensor | None = None,
    activation: str | None = "silu",
) -> tuple[torch.Tensor, torch.Tensor]:
    check_conv_x(x, step=False)
    b, t, d = x.shape
    w = check_conv_weight(d, weight, bias)
    silu = conv_silu(activation)
    if initial_state is not None:
        check_conv_state(initial_state, b, d, w)
    if x.stride(2) != 1:  # rows of unit channel stride read in place (a column block of a wider projection)
        x = x.contiguous()
    weight = weight.contiguous()
    y = torch.empty((b, t, d), device=x.device, dtype=x.dtype)
    s0 = initial_state.contiguous() if initial_state is not None else x
    BT, BD = 32, min(128, triton.next_power_of_2(d))
    grid = (b, triton.cdiv(t, BT), triton.cdiv(d, BD))
    _conv_kernel[grid](
        x, weight, bias if bias is not None else weight, s0, y, t, d, x.stride(0), x.stride(1),
        W=w, HAS_BIAS=bias is not None, HAS_STATE=initial_state is not None, SILU=silu, BT=BT, BD=BD,
    )  # fmt: skip
    return y, last_inputs(x, initial_state, w)


def last_inputs(x: torch.Tensor, initial_state: torch.Tensor | None, w: int) -> torch.Tensor:
    """The final state: the last w-1 inputs of concat(state, x) along time, (b, d, w-1) in x's dtype,
    reaching back into the initial state only when t < w-1. Only those columns are read: concatenating
    all of x first (a transposed, uncoalesced copy of the whole input) took 1.06 ms a call at 8,192
    tokens x 11,520 channels on the H100 (bench/results/gpu_prefill_profile_h100_s8.json, the
    non-vectorised `CatArrayBatchedCopy`)."""
    b, t, d = x.shape
    if t >= w - 1:
        return x[:, t - (w - 1) :].transpose(1, 2).contiguous()
    prev = initial_state.to(x.dtype) if initial_state is not None else x.new_zeros((b, d, w - 1))
    return torch.cat([prev[:, :, t:], x.transpose(1, 2)], dim=2)


def causal_conv1d_step_triton(
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
    silu = conv_silu(activation)
    if not state.is_contiguous():  # a packed copy, written back: the same in-place contract as the reference
        packed = state.contiguous()
        y = causal_conv1d_step_triton(x, packed, weight, bias, activation=activation)
        state.copy_(packed)
        return y
    x = x.contiguous()
    y = torch.empty_like(x)
    BD = min(256, triton.next_power_of_2(d))
    _conv_step_kernel[(b, triton.cdiv(d, BD))](
        x, state, weight.contiguous(), bias if bias is not None else weight, y, d,
        W=w, WP=max(1, triton.next_power_of_2(w - 1)), HAS_BIAS=bias is not None, SILU=silu, BD=BD,
    )  # fmt: skip
    return y
