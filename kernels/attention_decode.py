"""One-token attention over a preallocated KV buffer whose length lives on the device.

`attention_decode(q, k_buf, v_buf, pos, *, scale)`: q (B, Hkv, G, D) holds the G query heads that share
each KV head; k_buf, v_buf (B, Hkv, M, D) hold M >= L slots of which the first L = pos + 1 are valid
(`pos`: (1,) int64 on the device, the position of the newest key; or (B,), one newest-key slot per row,
for a batch whose rows have different lengths: each row's programs read their own, and the slots
past it are never read). Returns (B, Hkv, G, D) in q's dtype.
With `gate` (q's shape and dtype, any strides but a contiguous last axis: gated attention's output gate
before its sigmoid, e.g. Qwen3.5's), the output is attn * sigmoid(gate), each factor rounded to q's
dtype as the model's `out * torch.sigmoid(gate)` rounds them, in the kernel's last step (no extra
launches).

Why: `scaled_dot_product_attention` needs the length as a shape, so a decode step that calls it cannot
be one CUDA graph, and on the H100 the call itself cost ~40 ms of host time per token when the length
changes every step (bench/results/gpu_e2e_run1.json). Here the length is read by the kernel, so the
whole decode step is captured once and replayed at any context.

Triton: flash-decoding in two launches. (1) Grid (B*Hkv, nsplit): each program takes one contiguous
share of the L keys, in blocks of BLOCK_N, and keeps running maxima, sums of exponentials and
weighted sums of values in fp32. With one query row per KV head (G == 1, multi-head attention) each
of the BLOCK_N slots of a block keeps its own running max (key j in slot j % BLOCK_N), so the loop
reduces only over D within a warp and never across warps, and the next block's K and V are loaded
before the current one is used; the slots are merged once at the end. With G > 1 the G rows share
one running max per row and the products are tl.dot. (2) Grid (B*Hkv,): the partial results of the
splits that hold keys are combined with the usual log-sum-exp rescaling. nsplit is fixed when the
call is made (the grid of a captured graph cannot change); splits past L exit at once.
`DecodeConfig` holds the launch choices; `config_for` picks them, and a caller may pass its own as
`config=` (bench/gpu_e2e.py's attn_sweep section measures candidates over the engine's own cache
buffers).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from hybrid_agent.kernels._dispatch import interpreter_on, use_triton
from hybrid_agent.kernels.errors import KernelInputError


def _check(
    q: torch.Tensor,
    k_buf: torch.Tensor,
    v_buf: torch.Tensor,
    pos: torch.Tensor,
    gate: torch.Tensor | None = None,
) -> None:
    if q.dim() != 4 or k_buf.dim() != 4 or k_buf.shape != v_buf.shape:
        raise KernelInputError(
            f"attention_decode wants q (B, Hkv, G, D) and equal k/v buffers (B, Hkv, M, D); got "
            f"{tuple(q.shape)}, {tuple(k_buf.shape)}, {tuple(v_buf.shape)}"
        )
    if q.shape[:2] != k_buf.shape[:2] or q.shape[3] != k_buf.shape[3]:
        raise KernelInputError(f"q {tuple(q.shape)} does not match the KV buffers {tuple(k_buf.shape)}")
    if pos.dim() != 1 or pos.numel() not in (1, q.shape[0]) or pos.dtype != torch.long:
        raise KernelInputError(
            f"pos must be (1,) or (B,) = ({q.shape[0]},) int64 (the newest key's slot, shared or per row); "
            f"got {pos.dtype} {tuple(pos.shape)}"
        )
    if gate is not None and (gate.shape != q.shape or gate.dtype != q.dtype):
        raise KernelInputError(
            f"the output gate must have q's shape and dtype {tuple(q.shape)} {q.dtype}; got "
            f"{tuple(gate.shape)} {gate.dtype}"
        )


def attention_decode_ref(
    q: torch.Tensor, k_buf: torch.Tensor, v_buf: torch.Tensor, pos: torch.Tensor, *, scale: float,
    gate: torch.Tensor | None = None,
) -> torch.Tensor:  # fmt: skip
    """The definition (fp32 softmax over the first pos + 1 slots of each row, then the gate as the
    model applies it); reads `pos` on the host."""
    _check(q, k_buf, v_buf, pos, gate)
    if pos.numel() > 1:  # per row: each row over its own first pos[b] + 1 slots
        rows = [
            attention_decode_ref(
                q[b : b + 1], k_buf[b : b + 1], v_buf[b : b + 1], pos[b : b + 1], scale=scale
            )
            for b in range(q.shape[0])
        ]
        out = torch.cat(rows)
        return out if gate is None else out * torch.sigmoid(gate)
    L = int(pos.reshape(())) + 1
    k, v = k_buf[:, :, :L].float(), v_buf[:, :, :L].float()  # (B, Hkv, L, D)
    scores = q.float() @ k.transpose(-1, -2) * scale  # (B, Hkv, G, L)
    out = (scores.softmax(-1) @ v).to(q.dtype)  # (B, Hkv, G, D)
    return out if gate is None else out * torch.sigmoid(gate)


def attention_decode(
    q: torch.Tensor, k_buf: torch.Tensor, v_buf: torch.Tensor, pos: torch.Tensor, *, scale: float,
    config: DecodeConfig | None = None, gate: torch.Tensor | None = None,
) -> torch.Tensor:  # fmt: skip
    """See the module doc; `config` replaces `config_for`'s launch choice (the Triton path only)."""
    if use_triton(q):
        return _attention_decode_triton(q, k_buf, v_buf, pos, scale=scale, config=config, gate=gate)
    return attention_decode_ref(q, k_buf, v_buf, pos, scale=scale, gate=gate)


@dataclass(frozen=True)
class DecodeConfig:
    """nsplit programs per (batch, KV head), keys in blocks of block_n; for G == 1, `slots` (per-slot
    running maxima) and `prefetch` (the next block's K/V in flight while this one is used)."""

    nsplit: int = 64
    block_n: int = 32
    num_warps: int = 4
    slots: bool = True
    prefetch: bool = True


def config_for(bh: int, sms: int = 132) -> DecodeConfig:
    """The launch for bh = B * Hkv heads: enough splits that the programs fill the chip several times at
    long contexts (30 heads x 64 = 1920 programs on an H100's 132 SMs), blocks of 32 keys. Measured on
    the H100 (bench/results/gpu_e2e_s3_sweep.json, OLMo Hybrid 7B's 8 attention layers, G == 1):
    64 x 32 with slots and prefetch took 128 / 768 / 2699 us at 1k / 16k / 64k (2.98 TB/s at 64k)
    against 147 / 1254 / 4666 us with one running max per row (64 x 64); blocks of 64 keys
    were faster at 1k only (112 us without prefetch) and slower at 64k (3047 us).
    At most 64 splits for few KV heads too: at Qwen3.5-9B's shape (4 KV heads of 256) up to 256 splits
    decoded at 150.8 / 136.3 / 123.1 tok/s at 16k / 64k / 128k against 154.7 / 142.7 / 129.5 with 64
    (bench/results/gpu_families_s4.json, H100, the same run): more programs, but more partial results
    to merge and smaller shares of keys each."""
    nsplit = 1
    while bh * nsplit < 8 * sms and nsplit < 64:
        nsplit *= 2
    return DecodeConfig(nsplit=nsplit)


try:
    import triton
    import triton.language as tl
except ImportError:  # the reference still works
    triton = None

if triton is not None:
    from hybrid_agent.kernels.triton_common import dot as _dot

    @triton.jit
    def _combine(
        m_ptr, l_ptr, acc_ptr, o_ptr, g_ptr, pid_bh, n_act, b, h, G, D, sob, soh, sog, sgb, sgh, sgg,
        NSPLIT: tl.constexpr, BLOCK_D: tl.constexpr, CH: tl.constexpr, GATE: tl.constexpr,
    ):  # fmt: skip
        """Log-sum-exp merge of the n_act partial results of one head into o (G rows of D), the partial
        sums read CH splits at a time (the registers hold (CH, BLOCK_D), whatever NSPLIT is); with
        GATE, times sigmoid(gate), each factor rounded to o's dtype (the model's `out * sigmoid(gate)`)."""
        offs_s = tl.arange(0, NSPLIT)
        ms = offs_s < n_act
        offs_c = tl.arange(0, CH)
        offs_d = tl.arange(0, BLOCK_D)
        md = offs_d < D
        for g in range(0, G):
            row = (pid_bh * NSPLIT + offs_s) * G + g  # (NSPLIT,)
            m = tl.load(m_ptr + row, mask=ms, other=-1.0e30)
            denom = tl.load(l_ptr + row, mask=ms, other=0.0)
            m_max = tl.max(m, axis=0)
            total = tl.sum(denom * tl.where(ms, tl.exp2(m - m_max), 0.0), axis=0)
            num = tl.zeros((BLOCK_D,), tl.float32)
            for c in range(0, n_act, CH):
                mc = (c + offs_c) < n_act
                rc = (pid_bh * NSPLIT + c + offs_c) * G + g  # (CH,)
                wc = tl.where(mc, tl.exp2(tl.load(m_ptr + rc, mask=mc, other=-1.0e30) - m_max), 0.0)
                acc = tl.load(acc_ptr + rc[:, None] * D + offs_d[None, :], mask=mc[:, None] & md[None, :],
                              other=0.0)  # fmt: skip
                num += tl.sum(acc * wc[:, None], axis=0)
            out = num / total
            dt = o_ptr.dtype.element_ty
            if GATE:
                gv = tl.load(g_ptr + b * sgb + h * sgh + g * sgg + offs_d, mask=md, other=0.0).to(tl.float32)
                sig = (1.0 / (1.0 + tl.exp(-gv))).to(dt).to(tl.float32)
                out = out.to(dt).to(tl.float32) * sig
            tl.store(o_ptr + b * sob + h * soh + g * sog + offs_d, out.to(dt), mask=md)

    @triton.jit
    def _slots_partial(
        q_row, k_base, v_base, lo, hi, skn, svn, D, scale_log2,
        BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, PREFETCH: tl.constexpr,
    ):  # fmt: skip
        """One query row (G == 1) over keys lo..hi-1: each of the BLOCK_N slots of a block keeps its own
        running max, sum and (D,) weighted values (key j goes to slot j % BLOCK_N), so the loop has no
        reduction across warps (only the q.k sums over D, within a warp); the slots are merged once at
        the end. Returns m (1,), l (1,), acc (1, BLOCK_D), fp32."""
        offs_b = tl.arange(0, BLOCK_N)
        offs_d = tl.arange(0, BLOCK_D)
        md = offs_d < D
        q = tl.load(q_row + offs_d, mask=md, other=0.0).to(tl.float32)
        m_s = tl.full((BLOCK_N,), -1.0e30, tl.float32)
        l_s = tl.zeros((BLOCK_N,), tl.float32)
        acc = tl.zeros((BLOCK_N, BLOCK_D), tl.float32)
        mn = (lo + offs_b) < hi
        k = tl.load(k_base + (lo + offs_b)[:, None].to(tl.int64) * skn + offs_d[None, :],
                    mask=mn[:, None] & md[None, :], other=0.0)  # fmt: skip
        v = tl.load(v_base + (lo + offs_b)[:, None].to(tl.int64) * svn + offs_d[None, :],
                    mask=mn[:, None] & md[None, :], other=0.0)  # fmt: skip
        for start in range(lo, hi, BLOCK_N):
            mn = (start + offs_b) < hi
            if PREFETCH:  # the next block's K and V in flight while this one is used
                nxt = start + BLOCK_N + offs_b
                mx = nxt < hi
                k_next = tl.load(k_base + nxt[:, None].to(tl.int64) * skn + offs_d[None, :],
                                 mask=mx[:, None] & md[None, :], other=0.0)  # fmt: skip
                v_next = tl.load(v_base + nxt[:, None].to(tl.int64) * svn + offs_d[None, :],
                                 mask=mx[:, None] & md[None, :], other=0.0)  # fmt: skip
            else:
                k = tl.load(k_base + (start + offs_b)[:, None].to(tl.int64) * skn + offs_d[None, :],
                            mask=mn[:, None] & md[None, :], other=0.0)  # fmt: skip
                v = tl.load(v_base + (start + offs_b)[:, None].to(tl.int64) * svn + offs_d[None, :],
                            mask=mn[:, None] & md[None, :], other=0.0)  # fmt: skip
            s = tl.sum(k.to(tl.float32) * q[None, :], axis=1) * scale_log2  # (BLOCK_N,)
            m_new = tl.where(mn, tl.maximum(m_s, s), m_s)
            alpha = tl.exp2(m_s - m_new)
            p = tl.exp2(tl.where(mn, s - m_new, -1.0e30))  # masked slots: 0 (and no overflow)
            l_s = l_s * alpha + p
            acc = acc * alpha[:, None] + p[:, None] * v.to(tl.float32)
            m_s = m_new
            if PREFETCH:
                k = k_next
                v = v_next
        m = tl.max(m_s, axis=0)
        w = tl.exp2(m_s - m)  # slots that saw no key: m_s = -1e30, weight 0 (and l_s = 0, acc = 0)
        l_out = tl.sum(l_s * w, axis=0)
        acc_out = tl.sum(acc * w[:, None], axis=0)  # (BLOCK_D,)
        one = tl.zeros((1,), tl.float32)
        return one + m, one + l_out, acc_out[None, :]

    @triton.jit
    def _rows_partial(
        q_ptr, k_base, v_base, lo, hi, skn, svn, G, D, sqg, scale_log2,
        BLOCK_N: tl.constexpr, BLOCK_G: tl.constexpr, BLOCK_D: tl.constexpr, USE_DOT: tl.constexpr,
        IEEE: tl.constexpr,
    ):  # fmt: skip
        """G query rows over keys lo..hi-1 (a running max per row over blocks); G > 1 uses tl.dot. Returns
        m (BLOCK_G,), l (BLOCK_G,), acc (BLOCK_G, BLOCK_D), fp32."""
        offs_g = tl.arange(0, BLOCK_G)
        offs_d = tl.arange(0, BLOCK_D)
        mg, md = offs_g < G, offs_d < D
        q = tl.load(q_ptr + offs_g[:, None] * sqg + offs_d[None, :], mask=mg[:, None] & md[None, :],
                    other=0.0)  # fmt: skip
        if not USE_DOT:
            q = q.to(tl.float32)
        m_i = tl.full((BLOCK_G,), -1.0e30, tl.float32)
        l_i = tl.zeros((BLOCK_G,), tl.float32)
        acc = tl.zeros((BLOCK_G, BLOCK_D), tl.float32)
        for start in range(lo, hi, BLOCK_N):
            offs_n = start + tl.arange(0, BLOCK_N)
            mn = offs_n < hi
            kv_mask = mn[:, None] & md[None, :]
            rows = offs_n[:, None].to(tl.int64)
            k = tl.load(k_base + rows * skn + offs_d[None, :], mask=kv_mask, other=0.0)
            v = tl.load(v_base + rows * svn + offs_d[None, :], mask=kv_mask, other=0.0)
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
        return m_i, l_i, acc

    @triton.jit
    def _partial_kernel(
        q_ptr, k_ptr, v_ptr, pos_ptr, m_ptr, l_ptr, acc_ptr,
        Hkv, G, D, scale_log2,
        sqb, sqh, sqg, skb, skh, skn, svb, svh, svn,
        NSPLIT: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_G: tl.constexpr, BLOCK_D: tl.constexpr,
        USE_DOT: tl.constexpr, IEEE: tl.constexpr, SLOTS: tl.constexpr, PREFETCH: tl.constexpr,
        PER_ROW: tl.constexpr,
    ):  # fmt: skip
        pid_bh = tl.program_id(0)
        split = tl.program_id(1)
        b = pid_bh // Hkv
        h = pid_bh % Hkv
        if PER_ROW:  # this row's own length
            L = tl.load(pos_ptr + b) + 1
        else:
            L = tl.load(pos_ptr) + 1
        per = tl.cdiv(tl.cdiv(L, NSPLIT), BLOCK_N) * BLOCK_N  # keys per split, whole blocks
        lo = split * per  # splits past L hold no keys and exit at once (the combine skips them)
        if lo < L:
            hi = tl.minimum(lo + per, L)
            k_base = k_ptr + b.to(tl.int64) * skb + h.to(tl.int64) * skh
            v_base = v_ptr + b.to(tl.int64) * svb + h.to(tl.int64) * svh
            q_row = q_ptr + b * sqb + h * sqh
            if SLOTS:  # G == 1
                m_i, l_i, acc = _slots_partial(q_row, k_base, v_base, lo, hi, skn, svn, D, scale_log2,
                                               BLOCK_N, BLOCK_D, PREFETCH)  # fmt: skip
            else:
                m_i, l_i, acc = _rows_partial(q_row, k_base, v_base, lo, hi, skn, svn, G, D, sqg, scale_log2,
                                              BLOCK_N, BLOCK_G, BLOCK_D, USE_DOT, IEEE)  # fmt: skip
            offs_g = tl.arange(0, BLOCK_G)
            offs_d = tl.arange(0, BLOCK_D)
            mg, md = offs_g < G, offs_d < D
            row = (pid_bh * NSPLIT + split) * G + offs_g
            tl.store(m_ptr + row, m_i, mask=mg)
            tl.store(l_ptr + row, l_i, mask=mg)
            tl.store(acc_ptr + row[:, None] * D + offs_d[None, :], acc, mask=mg[:, None] & md[None, :])

    @triton.jit
    def _combine_kernel(
        m_ptr, l_ptr, acc_ptr, o_ptr, g_ptr, pos_ptr, Hkv, G, D, sob, soh, sog, sgb, sgh, sgg,
        NSPLIT: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, CH: tl.constexpr,
        GATE: tl.constexpr, PER_ROW: tl.constexpr,
    ):  # fmt: skip
        pid_bh = tl.program_id(0)
        if PER_ROW:
            L = tl.load(pos_ptr + pid_bh // Hkv) + 1
        else:
            L = tl.load(pos_ptr) + 1
        per = tl.cdiv(tl.cdiv(L, NSPLIT), BLOCK_N) * BLOCK_N
        _combine(m_ptr, l_ptr, acc_ptr, o_ptr, g_ptr, pid_bh, tl.cdiv(L, per), pid_bh // Hkv, pid_bh % Hkv, G,
                 D, sob, soh, sog, sgb, sgh, sgg, NSPLIT, BLOCK_D, CH, GATE)  # fmt: skip


def _attention_decode_triton(
    q: torch.Tensor, k_buf: torch.Tensor, v_buf: torch.Tensor, pos: torch.Tensor, *, scale: float,
    config: DecodeConfig | None = None, gate: torch.Tensor | None = None,
) -> torch.Tensor:  # fmt: skip
    _check(q, k_buf, v_buf, pos, gate)
    if k_buf.stride(3) != 1 or v_buf.stride(3) != 1 or q.stride(3) != 1:
        raise KernelInputError("attention_decode needs the head dimension contiguous in q, k_buf and v_buf")
    if gate is not None and gate.stride(3) != 1:
        raise KernelInputError("attention_decode needs the head dimension contiguous in the output gate")
    B, Hkv, G, D = q.shape
    if config is None:
        sms = torch.cuda.get_device_properties(q.device).multi_processor_count if q.is_cuda else 132
        config = config_for(B * Hkv, sms)
    NSPLIT = config.nsplit
    per_row = pos.numel() > 1  # (1,) with B > 1 broadcasts, as before
    if per_row and pos.stride(0) != 1:
        raise KernelInputError("attention_decode needs per-row positions contiguous")
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
        NSPLIT=NSPLIT, BLOCK_N=config.block_n, BLOCK_G=BLOCK_G, BLOCK_D=BLOCK_D, num_warps=config.num_warps,
        USE_DOT=use_dot, IEEE=q.dtype == torch.float32 or interpreter_on(),
        SLOTS=config.slots and G == 1, PREFETCH=config.prefetch, PER_ROW=per_row,
    )  # fmt: skip
    gs = (0, 0, 0) if gate is None else (gate.stride(0), gate.stride(1), gate.stride(2))
    _combine_kernel[(B * Hkv,)](
        m, denom, acc, out, out if gate is None else gate, pos, Hkv, G, D, out.stride(0), out.stride(1),
        out.stride(2), *gs, NSPLIT=NSPLIT, BLOCK_N=config.block_n, BLOCK_D=BLOCK_D,
        CH=min(NSPLIT, max(16, 8192 // BLOCK_D)), GATE=gate is not None, PER_ROW=per_row, num_warps=4,
    )  # fmt: skip
    return out
