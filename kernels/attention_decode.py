"""One-token attention over a preallocated KV buffer whose length lives on the device.

`attention_decode(q, k_buf, v_buf, pos, *, scale)`: q (B, Hkv, G, D) holds the G query heads that share
each KV head; k_buf, v_buf (B, Hkv, M, D) hold M >= L slots of which the first L = pos + 1 are valid
(`pos`: (1,) int64 on the device, the position of the newest key). Returns (B, Hkv, G, D) in q's dtype.

Why: `scaled_dot_product_attention` needs the length as a shape, so a decode step that calls it cannot
be one CUDA graph, and on the H100 the call itself cost ~40 ms of host time per token when the length
changes every step (bench/results/gpu_e2e_run1.json). Here the length is read by the kernel, so the
whole decode step is captured once and replayed at any context.

Triton: flash-decoding in two launches. (1) grid (B*Hkv, NSPLIT): each program takes one contiguous
share of the L keys, in blocks of BLOCK_N, and keeps a running max, sum of exponentials and weighted
sum of values in fp32 for its G query rows; (2) grid (B*Hkv,): the NSPLIT partial results are
combined with the usual log-sum-exp rescaling. NSPLIT is fixed (the grid of a captured graph cannot
change); splits past L do nothing.
"""

from __future__ import annotations

import math

import torch

from kernels._dispatch import interpreter_on, use_triton
from kernels.errors import KernelInputError


def _check(q: torch.Tensor, k_buf: torch.Tensor, v_buf: torch.Tensor, pos: torch.Tensor) -> None:
    if q.dim() != 4 or k_buf.dim() != 4 or k_buf.shape != v_buf.shape:
        raise KernelInputError(
            f"attention_decode wants q (B, Hkv, G, D) and equal k/v buffers (B, Hkv, M, D); got "
            f"{tuple(q.shape)}, {tuple(k_buf.shape)}, {tuple(v_buf.shape)}"
        )
    if q.shape[:2] != k_buf.shape[:2] or q.shape[3] != k_buf.shape[3]:
        raise KernelInputError(f"q {tuple(q.shape)} does not match the KV buffers {tuple(k_buf.shape)}")
    if pos.numel() != 1 or pos.dtype != torch.long:
        raise KernelInputError(f"pos must be one int64 (the newest key's slot); got {pos.dtype} {pos.shape}")


def attention_decode_ref(
    q: torch.Tensor, k_buf: torch.Tensor, v_buf: torch.Tensor, pos: torch.Tensor, *, scale: float
) -> torch.Tensor:
    """The definition (fp32 softmax over the first pos + 1 slots); reads `pos` on the host."""
    _check(q, k_buf, v_buf, pos)
    L = int(pos.reshape(())) + 1
    k, v = k_buf[:, :, :L].float(), v_buf[:, :, :L].float()  # (B, Hkv, L, D)
    scores = q.float() @ k.transpose(-1, -2) * scale  # (B, Hkv, G, L)
    return (scores.softmax(-1) @ v).to(q.dtype)  # (B, Hkv, G, D)


def attention_decode(
    q: torch.Tensor, k_buf: torch.Tensor, v_buf: torch.Tensor, pos: torch.Tensor, *, scale: float
) -> torch.Tensor:
    if use_triton(q):
        return _attention_decode_triton(q, k_buf, v_buf, pos, scale=scale)
    return attention_decode_ref(q, k_buf, v_buf, pos, scale=scale)


NSPLIT = 64  # programs per KV head: 30 heads x 64 = 1920 programs, ~15 per SM of an H100
BLOCK_N = 64

try:
    import triton
    import triton.language as tl
except ImportError:  # the reference still works
    triton = None

if triton is not None:

    from kernels.triton_common import dot as _dot

    @triton.jit
    def _partial_kernel(
        q_ptr, k_ptr, v_ptr, pos_ptr, m_ptr, l_ptr, acc_ptr,
        Hkv, G, D, scale_log2,
        sqb, sqh, sqg, skb, skh, skn, svb, svh, svn,
        NSPLIT: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_G: tl.constexpr, BLOCK_D: tl.constexpr,
        USE_DOT: tl.constexpr, IEEE: tl.constexpr,
    ):  # fmt: skip
        pid_bh = tl.program_id(0)
        split = tl.program_id(1)
        b = pid_bh // Hkv
        h = pid_bh % Hkv
        L = tl.load(pos_ptr) + 1
        per = tl.cdiv(tl.cdiv(L, NSPLIT), BLOCK_N) * BLOCK_N  # keys per split, whole blocks
        lo = split * per
        hi = tl.minimum(lo + per, L)
        offs_g = tl.arange(0, BLOCK_G)
        offs_d = tl.arange(0, BLOCK_D)
        mg, md = offs_g < G, offs_d < D
        q = tl.load(
            q_ptr + b * sqb + h * sqh + offs_g[:, None] * sqg + offs_d[None, :],
            mask=mg[:, None] & md[None, :],
            other=0.0,
        )  # (BLOCK_G, BLOCK_D)
        if not USE_DOT:
            q = q.to(tl.float32)
        m_i = tl.full((BLOCK_G,), -1.0e30, tl.float32)
        l_i = tl.zeros((BLOCK_G,), tl.float32)
        acc = tl.zeros((BLOCK_G, BLOCK_D), tl.float32)
        k_base = k_ptr + b.to(tl.int64) * skb + h.to(tl.int64) * skh
        v_base = v_ptr + b.to(tl.int64) * svb + h.to(tl.int64) * svh
        for start in range(lo, hi, BLOCK_N):
            offs_n = start + tl.arange(0, BLOCK_N)
            mn = offs_n < hi
            kv_mask = mn[:, None] & md[None, :]
            k = tl.load(
                k_base + offs_n[:, None].to(tl.int64) * skn + offs_d[None, :], mask=kv_mask, other=0.0
            )
            v = tl.load(
                v_base + offs_n[:, None].to(tl.int64) * svn + offs_d[None, :], mask=kv_mask, other=0.0
            )
            if USE_DOT:  # grouped queries: tensor-core products (the broadcast form spills registers)
                s = _dot(q.to(k.dtype), tl.trans(k), IEEE) * scale_log2  # (BLOCK_G, BLOCK_N)
            else:
                s = tl.sum(q[:, None, :] * k.to(tl.float32)[None, :, :], axis=2) * scale_log2
            s = tl.where(mn[None, :], s, -1.0e30)
            m_new = tl.maximum(m_i, tl.max(s, axis=1))
            alpha = tl.exp2(m_i - m_new)
            p = tl.exp2(s - m_new[:, None])
            l_i = l_i * alpha + tl.sum(p, axis=1)
            if USE_DOT:
                acc = acc * alpha[:, None] + _dot(p.to(v.dtype), v, IEEE)
            else:
                acc = acc * alpha[:, None] + tl.sum(p[:, :, None] * v.to(tl.float32)[None, :, :], axis=1)
            m_i = m_new
        row = (pid_bh * NSPLIT + split) * G + offs_g
        tl.store(m_ptr + row, m_i, mask=mg)
        tl.store(l_ptr + row, l_i, mask=mg)
        tl.store(acc_ptr + row[:, None] * D + offs_d[None, :], acc, mask=mg[:, None] & md[None, :])

    @triton.jit
    def _combine_kernel(
        m_ptr, l_ptr, acc_ptr, o_ptr, Hkv, G, D, sob, soh, sog,
        NSPLIT: tl.constexpr, BLOCK_G: tl.constexpr, BLOCK_D: tl.constexpr,
    ):  # fmt: skip
        pid_bh = tl.program_id(0)
        b = pid_bh // Hkv
        h = pid_bh % Hkv
        offs_s = tl.arange(0, NSPLIT)
        offs_d = tl.arange(0, BLOCK_D)
        md = offs_d < D
        for g in range(0, G):
            row = (pid_bh * NSPLIT + offs_s) * G + g  # (NSPLIT,)
            m = tl.load(m_ptr + row)
            denom = tl.load(l_ptr + row)
            m_max = tl.max(m, axis=0)
            w = tl.exp2(m - m_max)  # empty splits: m = -1e30, weight 0
            acc = tl.load(acc_ptr + row[:, None] * D + offs_d[None, :], mask=md[None, :], other=0.0)
            out = tl.sum(acc * w[:, None], axis=0) / tl.sum(denom * w, axis=0)
            tl.store(o_ptr + b * sob + h * soh + g * sog + offs_d, out.to(o_ptr.dtype.element_ty), mask=md)


def _attention_decode_triton(
    q: torch.Tensor, k_buf: torch.Tensor, v_buf: torch.Tensor, pos: torch.Tensor, *, scale: float
) -> torch.Tensor:
    _check(q, k_buf, v_buf, pos)
    if k_buf.stride(3) != 1 or v_buf.stride(3) != 1 or q.stride(3) != 1:
        raise KernelInputError("attention_decode needs the head dimension contiguous in q, k_buf and v_buf")
    B, Hkv, G, D = q.shape
    rows = B * Hkv * NSPLIT * G
    m = torch.empty(rows, device=q.device, dtype=torch.float32)
    denom = torch.empty_like(m)
    acc = torch.empty(rows, D, device=q.device, dtype=torch.float32)
    out = torch.empty_like(q)
    # G == 1 (multi-head): a broadcast product; G > 1: tl.dot over G rows padded to 16 (the smallest
    # tensor-core tile). The broadcast form with G = 12 ran at 1-14% of the copy bandwidth on the H100
    # (bench/results/gpu_mla_run1.json, gqa-24/2) because its (G, BLOCK_N, D) product spills.
    use_dot = G > 1 and D >= 16
    BLOCK_G = max(16, triton.next_power_of_2(G)) if use_dot else max(1, triton.next_power_of_2(G))
    BLOCK_D = triton.next_power_of_2(D)
    _partial_kernel[(B * Hkv, NSPLIT)](
        q, k_buf, v_buf, pos, m, denom, acc, Hkv, G, D, scale * math.log2(math.e),
        q.stride(0), q.stride(1), q.stride(2), k_buf.stride(0), k_buf.stride(1), k_buf.stride(2),
        v_buf.stride(0), v_buf.stride(1), v_buf.stride(2),
        NSPLIT=NSPLIT, BLOCK_N=BLOCK_N, BLOCK_G=BLOCK_G, BLOCK_D=BLOCK_D, num_warps=4,
        USE_DOT=use_dot, IEEE=q.dtype == torch.float32 or interpreter_on(),
    )  # fmt: skip
    _combine_kernel[(B * Hkv,)](
        m, denom, acc, out, Hkv, G, D, out.stride(0), out.stride(1), out.stride(2),
        NSPLIT=NSPLIT, BLOCK_G=BLOCK_G, BLOCK_D=BLOCK_D, num_warps=4,
    )  # fmt: skip
    return out
