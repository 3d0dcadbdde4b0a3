"""One-token multi-head latent attention (absorbed form) over a preallocated latent cache whose length
lives on the device.

`mla_decode(q_lat, q_rot, lat_buf, rope_buf, pos)`: q_lat (B, H, C) is each head's query folded into
the latent space (q_nope W_uk, softmax scale included), q_rot (B, H, R) its RoPE part (scale
included); lat_buf (B, M, C) and rope_buf (B, M, R) hold M >= L cached latents / RoPE keys of which
the first L = pos + 1 are valid (`pos`: (1,) int64 on the device, or (B,): each row's own newest
slot). Returns ctx (B, H, C) in q_lat's dtype: sum_j softmax_j(q_lat . c_j + q_rot . r_j) c_j. The
caller applies W_uv and o_proj.

Why: every head shares one key (latent | k_rope) and one value (the latent), so this is multi-query
attention with key width C + R and value width C: one pass over the cache serves all H heads, and,
like kernels/attention_decode.py, the length is read on the device so the decode step is one CUDA
graph at any context.

Triton: flash-decoding in two launches. (1) grid (B, NSPLIT): each program takes one contiguous share
of the L keys in blocks of BLOCK_N and keeps, for all H heads at once (padded to >= 16 rows so the
products run on tensor cores), a running max, sum of exponentials and weighted sum of latents in
fp32; (2) grid (B, H, C / 64): the partials of the splits that hold keys are combined (log-sum-exp rescaling).
"""

from __future__ import annotations

import torch
from hybrid_agent.kernels._dispatch import interpreter_on, use_triton
from hybrid_agent.kernels.errors import KernelInputError


def _check(
    q_lat: torch.Tensor, q_rot: torch.Tensor, lat: torch.Tensor, rope: torch.Tensor, pos: torch.Tensor
) -> None:
    if q_lat.dim() != 3 or q_rot.dim() != 3 or lat.dim() != 3 or rope.dim() != 3:
        raise KernelInputError(
            "mla_decode wants q_lat (B, H, C), q_rot (B, H, R), lat_buf (B, M, C), rope_buf (B, M, R); got "
            f"{tuple(q_lat.shape)}, {tuple(q_rot.shape)}, {tuple(lat.shape)}, {tuple(rope.shape)}"
        )
    B, H, C = q_lat.shape
    R = q_rot.shape[2]
    if q_rot.shape[:2] != (B, H) or lat.shape[0] != B or lat.shape[2] != C:
        raise KernelInputError(f"mla_decode: q_lat {tuple(q_lat.shape)} does not match {tuple(lat.shape)}")
    if rope.shape != (B, lat.shape[1], R):
        raise KernelInputError(
            f"mla_decode: rope_buf must be {(B, lat.shape[1], R)}, got {tuple(rope.shape)}"
        )
    if pos.dim() != 1 or pos.numel() not in (1, B) or pos.dtype != torch.long:
        raise KernelInputError(
            f"mla_decode: pos must be (1,) or (B,) = ({B},) int64 (the newest key's slot, shared or "
            f"per row); got {pos.dtype} {tuple(pos.shape)}"
        )


def mla_decode_ref(
    q_lat: torch.Tensor, q_rot: torch.Tensor, lat_buf: torch.Tensor, rope_buf: torch.Tensor, pos: torch.Tensor
) -> torch.Tensor:
    """The definition (fp32 scores and softmax over the first pos + 1 slots); reads `pos` on the host."""
    _check(q_lat, q_rot, lat_buf, rope_buf, pos)
    if pos.numel() > 1:  # per row: each row over its own first pos[b] + 1 slots
        parts = [
            mla_decode_ref(q_lat[b : b + 1], q_rot[b : b + 1], lat_buf[b : b + 1], rope_buf[b : b + 1],
                           pos[b : b + 1])
            for b in range(q_lat.shape[0])
        ]  # fmt: skip
        return torch.cat(parts)
    L = int(pos.reshape(())) + 1
    lat, rope = lat_buf[:, :L].float(), rope_buf[:, :L].float()  # (B, L, C), (B, L, R)
    scores = q_lat.float() @ lat.transpose(1, 2) + q_rot.float() @ rope.transpose(1, 2)  # (B, H, L)
    return (scores.softmax(-1) @ lat).to(q_lat.dtype)  # (B, H, C)


def mla_decode(
    q_lat: torch.Tensor, q_rot: torch.Tensor, lat_buf: torch.Tensor, rope_buf: torch.Tensor, pos: torch.Tensor
) -> torch.Tensor:
    if use_triton(q_lat):
        return _mla_decode_triton(q_lat, q_rot, lat_buf, rope_buf, pos)
    return mla_decode_ref(q_lat, q_rot, lat_buf, rope_buf, pos)


NSPLIT = 128  # at 64k keys: 512 keys a program, ~one wave on an H100's 132 SMs
BLOCK_N = 32


def _mla_decode_triton(
    q_lat: torch.Tensor, q_rot: torch.Tensor, lat_buf: torch.Tensor, rope_buf: torch.Tensor, pos: torch.Tensor
) -> torch.Tensor:
    import triton
    from hybrid_agent.kernels.triton_mla_decode import _mla_combine_kernel, _mla_partial_kernel

    _check(q_lat, q_rot, lat_buf, rope_buf, pos)
    if any(t.stride(-1) != 1 for t in (q_lat, q_rot, lat_buf, rope_buf)):
        raise KernelInputError("mla_decode needs the last dimension contiguous in every input")
    B, H, C = q_lat.shape
    R = q_rot.shape[2]
    BH, BC, BR = (
        max(16, triton.next_power_of_2(H)),
        triton.next_power_of_2(C),
        max(16, triton.next_power_of_2(R)),
    )
    rows = B * NSPLIT * BH
    m = torch.empty(rows, device=q_lat.device, dtype=torch.float32)
    denom = torch.empty_like(m)
    acc = torch.empty(rows, BC, device=q_lat.device, dtype=torch.float32)
    out = torch.empty_like(q_lat)
    ieee = q_lat.dtype == torch.float32 or interpreter_on()
    per_row = pos.numel() > 1  # (1,) with B > 1 broadcasts, as before
    if per_row and pos.stride(0) != 1:
        raise KernelInputError("mla_decode needs per-row positions contiguous")
    _mla_partial_kernel[(B, NSPLIT)](
        q_lat, q_rot, lat_buf, rope_buf, pos, m, denom, acc, H, C, R,
        q_lat.stride(0), q_lat.stride(1), q_rot.stride(0), q_rot.stride(1),
        lat_buf.stride(0), lat_buf.stride(1), rope_buf.stride(0), rope_buf.stride(1),
        NSPLIT=NSPLIT, BLOCK_N=BLOCK_N, BH=BH, BC=BC, BR=BR, IEEE=ieee, PER_ROW=per_row,
        num_warps=8 if BC >= 256 else 4, num_stages=2,
    )  # fmt: skip
    BCB = min(64, BC)
    _mla_combine_kernel[(B, H, triton.cdiv(C, BCB))](
        m, denom, acc, pos, out, C, out.stride(0), out.stride(1),
        NSPLIT=NSPLIT, BLOCK_N=BLOCK_N, BH=BH, BC=BC, BCB=BCB, PER_ROW=per_row, num_warps=4,
    )  # fmt: skip
    return out
