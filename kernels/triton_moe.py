"""Triton versions of kernels/moe.py's ops (same contract; see that module's doc). The experts' hidden
size, I there, is H here.

Decode (`moe_gemv_triton`), two launches:
- `_moe_up_kernel`, grid (N * k, I / block_i): the program of slot s reads its expert id from the device,
  streams that expert's (block_i, D) rows of up (and gate) against x's token row, fp32 products kept in a
  (block_i, block_d_in) accumulator reduced once at the end (as kernels/triton_gemv.py), applies the
  activation and writes h (N * k, I). Rows past I are clamped (loads need no row mask).
- `_moe_down_kernel`, grid (D / block_d, N): for each of the token's k slots, that expert's (block_d, I)
  rows of down against the slot's h, times the routing weight, summed over the slots in order in fp32;
  with a shared expert (SHARED), then its (block_d, I_s) down rows against its hidden row (the
  activation of its pre-activations, recomputed by every program: I_s values, rounded to the dtype as
  the MLP's h is), times sigmoid(gate logit) when gated, added; the sum rounded once.
Prefill (`moe_grouped_gemm_triton`): `align_by_expert` (below) lists the slots by expert in
blocks of block_m; `_moe_gg_up_kernel` (grid: bound on the blocks x I / block_n) gathers each block's x
rows and multiplies them by its expert's gate|up tile with tl.dot (+ activation) into h, one row per
padded place; `_moe_gg_down_kernel` multiplies h by the expert's down tile, scales each row by its
slot's routing weight and writes it to the slot's row of y (N * k, D); the token's k rows are summed in
fp32 afterwards. Blocks past the last expert's exit at once.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from hybrid_agent.kernels._dispatch import interpreter_on
from hybrid_agent.kernels.checks import MoeGemmConfig, MoeGemvConfig, SharedExpert
from hybrid_agent.kernels.triton_common import dot


@triton.jit
def _act(u, g, GATED: tl.constexpr):
    """silu(g) * u, or relu(u)^2 without a gate (fp32 in, fp32 out)."""
    if GATED:
        return g * tl.sigmoid(g) * u
    r = tl.maximum(u, 0.0)
    return r * r


@triton.jit
def _moe_up_kernel(
    x_ptr, ids_ptr, wg_ptr, wu_ptr, h_ptr, D, H, stride_x, stride_we, stride_wr,
    TOP_K: tl.constexpr, GATED: tl.constexpr, BLOCK_I: tl.constexpr, BLOCK_D: tl.constexpr,
    EVEN_D: tl.constexpr,
):  # fmt: skip
    s = tl.program_id(0)  # token-slot
    offs_i = tl.program_id(1) * BLOCK_I + tl.arange(0, BLOCK_I)
    e = tl.load(ids_ptr + s).to(tl.int64)
    rows = tl.minimum(offs_i, H - 1).to(tl.int64)  # clamped: every weight load is in bounds
    w_rows = e * stride_we + rows[:, None] * stride_wr  # (BLOCK_I, 1)
    x_row = x_ptr + (s // TOP_K).to(tl.int64) * stride_x
    offs_d = tl.arange(0, BLOCK_D)
    acc_u = tl.zeros((BLOCK_I, BLOCK_D), tl.float32)
    acc_g = tl.zeros((BLOCK_I, BLOCK_D), tl.float32)
    for d in range(0, D, BLOCK_D):
        cols = d + offs_d
        if EVEN_D:
            xv = tl.load(x_row + cols).to(tl.float32)[None, :]
            acc_u += tl.load(wu_ptr + w_rows + cols[None, :]).to(tl.float32) * xv
            if GATED:
                acc_g += tl.load(wg_ptr + w_rows + cols[None, :]).to(tl.float32) * xv
        else:
            m = cols < D
            xv = tl.load(x_row + cols, mask=m, other=0.0).to(tl.float32)[None, :]
            acc_u += tl.load(wu_ptr + w_rows + cols[None, :], mask=m[None, :], other=0.0).to(tl.float32) * xv
            if GATED:
                acc_g += (
                    tl.load(wg_ptr + w_rows + cols[None, :], mask=m[None, :], other=0.0).to(tl.float32) * xv
                )
    h = _act(tl.sum(acc_u, axis=1), tl.sum(acc_g, axis=1), GATED)
    tl.store(h_ptr + s.to(tl.int64) * H + offs_i, h.to(h_ptr.dtype.element_ty), mask=offs_i < H)


@triton.jit
def _moe_down_kernel(
    h_ptr, ids_ptr, rw_ptr, wd_ptr, out_ptr, D, H, stride_de, stride_dr,
    sp_ptr, sd_ptr, sg_ptr, HS, stride_sp, stride_sd, stride_sg,
    TOP_K: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_I: tl.constexpr, EVEN_I: tl.constexpr,
    SHARED: tl.constexpr, SHARED_GATE: tl.constexpr, GATED: tl.constexpr,
):  # fmt: skip
    offs_d = tl.program_id(0) * BLOCK_D + tl.arange(0, BLOCK_D)
    t = tl.program_id(1).to(tl.int64)  # token
    rows = tl.minimum(offs_d, D - 1).to(tl.int64)
    offs_i = tl.arange(0, BLOCK_I)
    y = tl.zeros((BLOCK_D,), tl.float32)
    for j in tl.static_range(TOP_K):
        s = t * TOP_K + j
        e = tl.load(ids_ptr + s).to(tl.int64)
        w_rows = e * stride_de + rows[:, None] * stride_dr  # (BLOCK_D, 1)
        acc = tl.zeros((BLOCK_D, BLOCK_I), tl.float32)
        for i in range(0, H, BLOCK_I):
            cols = i + offs_i
            if EVEN_I:
                hv = tl.load(h_ptr + s * H + cols).to(tl.float32)
                acc += tl.load(wd_ptr + w_rows + cols[None, :]).to(tl.float32) * hv[None, :]
            else:
                m = cols < H
                hv = tl.load(h_ptr + s * H + cols, mask=m, other=0.0).to(tl.float32)
                acc += (
                    tl.load(wd_ptr + w_rows + cols[None, :], mask=m[None, :], other=0.0).to(tl.float32)
                    * hv[None, :]
                )
        y += tl.load(rw_ptr + s).to(tl.float32) * tl.sum(acc, axis=1)
    if SHARED:  # the shared expert: its hidden row from the pre-activations, then its down rows
        s_rows = rows[:, None] * stride_sd  # (BLOCK_D, 1)
        pre = sp_ptr + t * stride_sp
        acc = tl.zeros((BLOCK_D, BLOCK_I), tl.float32)
        for i in range(0, HS, BLOCK_I):
            cols = i + offs_i
            m = cols < HS
            if GATED:  # [gate | up]
                g = tl.load(pre + cols, mask=m, other=0.0).to(tl.float32)
                u = tl.load(pre + HS + cols, mask=m, other=0.0).to(tl.float32)
            else:
                u = tl.load(pre + cols, mask=m, other=0.0).to(tl.float32)
                g = u
            hv = _act(u, g, GATED).to(h_ptr.dtype.element_ty).to(tl.float32)  # rounded as the MLP's h
            acc += (
                tl.load(sd_ptr + s_rows + cols[None, :], mask=m[None, :], other=0.0).to(tl.float32)
                * hv[None, :]
            )
        ys = tl.sum(acc, axis=1)
        if SHARED_GATE:
            ys = ys * tl.sigmoid(tl.load(sg_ptr + t * stride_sg).to(tl.float32))
        y += ys
    tl.store(out_ptr + t * D + offs_d, y.to(out_ptr.dtype.element_ty), mask=offs_d < D)


def expert_weights(
    gate: torch.Tensor | None, up: torch.Tensor, down: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The stacked expert weights as the kernels read them: rows contiguous, any expert and row strides
    (the kernels take them), so a view such as the gate and up halves of a fused (E, 2I, D) tensor is
    read in place; a copy of every expert's weights per call would cost more than the call. gate and up
    share their strides (one pair is passed); without a gate, up stands in for it (never read)."""

    def rows(w: torch.Tensor) -> torch.Tensor:
        return w if w.stride(-1) == 1 else w.contiguous()

    up, down = rows(up), rows(down)
    if gate is None:
        return up, up, down
    gate = rows(gate)
    if gate.stride() != up.stride():
        gate, up = gate.contiguous(), up.contiguous()
    return gate, up, down


def _shared_args(
    shared: SharedExpert | None, x: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The down kernel's shared-expert pointers: pre-activations, down weight (rows contiguous) and gate
    logit, each read through its row stride; x stands in for any that is absent (never read)."""
    if shared is None:
        return x, x, x
    pre = shared.pre if shared.pre.stride(-1) == 1 else shared.pre.contiguous()
    down = shared.down if shared.down.stride(-1) == 1 else shared.down.contiguous()
    return pre, down, x if shared.gate is None else shared.gate


def moe_gemv_triton(
    x: torch.Tensor, ids: torch.Tensor, weights: torch.Tensor,
    gate: torch.Tensor | None, up: torch.Tensor, down: torch.Tensor, cfg: MoeGemvConfig,
    shared: SharedExpert | None = None,
) -> torch.Tensor:  # fmt: skip
    N, k = ids.shape
    _, H, D = up.shape
    if x.stride(-1) != 1:
        x = x.contiguous()
    ids, weights = ids.contiguous(), weights.contiguous()
    gated = gate is not None
    gate, up, down = expert_weights(gate, up, down)
    h = torch.empty(N * k, H, dtype=x.dtype, device=x.device)
    out = torch.empty(N, D, dtype=x.dtype, device=x.device)
    if N == 0:
        return out
    c = cfg.clamped(D, H)
    bi, bdi = c.block_i, c.block_d_in
    _moe_up_kernel[(N * k, triton.cdiv(H, bi))](
        x, ids, gate, up, h, D, H, x.stride(0), up.stride(0), up.stride(1), TOP_K=k, GATED=gated,
        BLOCK_I=bi, BLOCK_D=bdi,
        EVEN_D=D % bdi == 0, num_warps=cfg.num_warps,
    )  # fmt: skip
    bd, bii = c.block_d, c.block_i_in
    sp, sd, sg = _shared_args(shared, x)
    _moe_down_kernel[(triton.cdiv(D, bd), N)](
        h, ids, weights, down, out, D, H, down.stride(0), down.stride(1),
        sp, sd, sg, sd.shape[-1], sp.stride(0), sd.stride(0), sg.stride(0),
        TOP_K=k, BLOCK_D=bd, BLOCK_I=bii, EVEN_I=H % bii == 0, SHARED=shared is not None,
        SHARED_GATE=shared is not None and shared.gate is not None, GATED=gated, num_warps=cfg.num_warps,
    )  # fmt: skip
    return out


@triton.jit
def _moe_gg_up_kernel(
    x_ptr, slots_ptr, bexp_ptr, wg_ptr, wu_ptr, h_ptr, S, D, H, stride_x, stride_we, stride_wr,
    TOP_K: tl.constexpr, GATED: tl.constexpr, BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr,
    IEEE: tl.constexpr,
):  # fmt: skip
    pid_m = tl.program_id(0)
    e = tl.load(bexp_ptr + pid_m).to(tl.int64)
    if e < 0:  # past the last expert's blocks
        return
    offs_m = pid_m * BM + tl.arange(0, BM)
    slot = tl.load(slots_ptr + offs_m)
    valid = slot < S
    tok = tl.where(valid, slot // TOP_K, 0).to(tl.int64)
    offs_n = tl.program_id(1) * BN + tl.arange(0, BN)
    cols_w = e * stride_we + tl.minimum(offs_n, H - 1).to(tl.int64)[None, :] * stride_wr  # (1, BN): W^T tiles
    offs_k = tl.arange(0, BK)
    acc_u = tl.zeros((BM, BN), tl.float32)
    acc_g = tl.zeros((BM, BN), tl.float32)
    for k in range(0, D, BK):
        kk = k + offs_k
        mk = kk < D
        a = tl.load(
            x_ptr + tok[:, None] * stride_x + kk[None, :], mask=valid[:, None] & mk[None, :], other=0.0
        )
        bu = tl.load(wu_ptr + cols_w + kk[:, None], mask=mk[:, None], other=0.0)  # (BK, BN)
        acc_u += dot(a, bu, IEEE)
        if GATED:
            bg = tl.load(wg_ptr + cols_w + kk[:, None], mask=mk[:, None], other=0.0)
            acc_g += dot(a, bg, IEEE)
    h = _act(acc_u, acc_g, GATED)
    dst = h_ptr + offs_m.to(tl.int64)[:, None] * H + offs_n[None, :]
    tl.store(dst, h.to(h_ptr.dtype.element_ty), mask=(offs_n < H)[None, :])


@triton.jit
def _moe_gg_down_kernel(
    h_ptr, slots_ptr, bexp_ptr, wd_ptr, rw_ptr, y_ptr, S, D, H, stride_de, stride_dr,
    BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr, IEEE: tl.constexpr,
):  # fmt: skip
    pid_m = tl.program_id(0)
    e = tl.load(bexp_ptr + pid_m).to(tl.int64)
    if e < 0:
        return
    offs_m = pid_m * BM + tl.arange(0, BM)
    slot = tl.load(slots_ptr + offs_m)
    valid = slot < S
    offs_n = tl.program_id(1) * BN + tl.arange(0, BN)
    cols_w = e * stride_de + tl.minimum(offs_n, D - 1).to(tl.int64)[None, :] * stride_dr  # (1, BN)
    h_rows = h_ptr + offs_m.to(tl.int64)[:, None] * H
    offs_k = tl.arange(0, BK)
    acc = tl.zeros((BM, BN), tl.float32)
    for k in range(0, H, BK):
        kk = k + offs_k
        mk = kk < H
        a = tl.load(h_rows + kk[None, :], mask=mk[None, :], other=0.0)
        b = tl.load(wd_ptr + cols_w + kk[:, None], mask=mk[:, None], other=0.0)  # (BK, BN)
        acc += dot(a, b, IEEE)
    rw = tl.load(rw_ptr + slot, mask=valid, other=0.0).to(tl.float32)
    dst = y_ptr + tl.where(valid, slot, 0).to(tl.int64)[:, None] * D + offs_n[None, :]
    tl.store(dst, (acc * rw[:, None]).to(y_ptr.dtype.element_ty), mask=valid[:, None] & (offs_n < D)[None, :])


def moe_grouped_gemm_triton(
    x: torch.Tensor, ids: torch.Tensor, weights: torch.Tensor,
    gate: torch.Tensor | None, up: torch.Tensor, down: torch.Tensor, cfg: MoeGemmConfig,
) -> torch.Tensor:  # fmt: skip
    N, k = ids.shape
    E, H, D = up.shape
    S = N * k
    if N == 0:
        return torch.zeros_like(x)
    if x.stride(-1) != 1:
        x = x.contiguous()
    gated = gate is not None
    gate, up, down = expert_weights(gate, up, down)
    bm = cfg.block_m
    slots, block_expert = align_by_expert(ids, E, bm)
    n_blocks = block_expert.shape[0]
    ieee = x.dtype == torch.float32 or interpreter_on()
    h = torch.empty(n_blocks * bm, H, dtype=x.dtype, device=x.device)
    common = dict(BM=bm, BN=cfg.block_n, BK=cfg.block_k, IEEE=ieee, num_warps=cfg.num_warps,
                  num_stages=cfg.num_stages)  # fmt: skip
    _moe_gg_up_kernel[(n_blocks, triton.cdiv(H, cfg.block_n))](
        x,
        slots,
        block_expert,
        gate,
        up,
        h,
        S,
        D,
        H,
        x.stride(0),
        up.stride(0),
        up.stride(1),
        TOP_K=k,
        GATED=gated,
        **common,
    )
    y = torch.empty(S, D, dtype=x.dtype, device=x.device)
    _moe_gg_down_kernel[(n_blocks, triton.cdiv(D, cfg.block_n))](
        h,
        slots,
        block_expert,
        down,
        weights.reshape(-1).contiguous(),
        y,
        S,
        D,
        H,
        down.stride(0),
        down.stride(1),
        **common,
    )
    return y.view(N, k, D).sum(1, dtype=torch.float32).to(x.dtype)


def align_by_expert(ids: torch.Tensor, n_experts: int, block_m: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The token-slots (flattened ids, S = N * k) grouped by expert in blocks of `block_m`, all on the
    device: `slots` (n_blocks * block_m,) int32 lists expert 0's slots (ascending), padded with S up to a
    multiple of block_m, then expert 1's, ...; `block_expert` (n_blocks,) int32 is the expert of each
    block, -1 past the last. n_blocks = (S + E (block_m - 1)) // block_m bounds the padded total, so the
    sizes are known without reading the counts."""
    flat = ids.reshape(-1).long()
    S, dev = flat.numel(), flat.device
    counts = torch.zeros(n_experts, dtype=torch.long, device=dev).scatter_add_(0, flat, torch.ones_like(flat))
    padded = (counts + block_m - 1) // block_m * block_m
    pad_end = padded.cumsum(0)
    order = flat.argsort(stable=True)
    by_expert = flat[order]
    rank = torch.arange(S, device=dev) - (counts.cumsum(0) - counts)[by_expert]  # place within its expert
    n_blocks = (S + n_experts * (block_m - 1)) // block_m
    slots = torch.full((n_blocks * block_m,), S, dtype=torch.int32, device=dev)
    slots[(pad_end - padded)[by_expert] + rank] = order.to(torch.int32)
    starts = torch.arange(n_blocks, device=dev) * block_m
    block_expert = torch.searchsorted(pad_end, starts, right=True)  # first expert whose run ends past it
    block_expert = torch.where(block_expert < n_experts, block_expert, -1).to(torch.int32)
    return slots, block_expert
