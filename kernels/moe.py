"""The routed experts of a mixture-of-experts layer (model/moe.py), applied to the token-slots the router
chose: for token n and slot j (expert e = ids[n, j], routing weight w = weights[n, j])

    h      = silu(x_n gate_e^T) * (x_n up_e^T)     (SwiGLU; relu(x_n up_e^T)^2 when gate is None)
    out_n  = sum_j w_nj * (h down_e^T)

x (N, D); ids (N, k) integer expert ids on the device; weights (N, k) floating; gate, up (E, I, D), down
(E, D, I), stacked and contiguous, in x's dtype. Returns (N, D) in x's dtype.

Two ops, by the number of token-slots:
- `moe_gemv` (decode: N * k small): one program per (token-slot, block of I rows) reads only its
  expert's gate|up rows (no gathered copy of the chosen weights), fused with the activation; a second
  launch per (token, block of D rows) reads the k chosen experts' down rows, applies the routing weights
  and sums the k slots. Nothing is read back to the host, so the decode engine captures it in its CUDA
  graph (model/decode/graphs.py). `moe_gemv_ref` gathers the chosen weights by id and runs batched
  matmuls (also host-read free; the model's decode path before the kernel). With `shared` (a
  `SharedExpert`: the shared expert's pre-activations, down weight and sigmoid-gate logit) the layer's
  shared expert is added in the down launch, so the layer's output is written once:
      out_n += sigmoid(g_n) * (act(pre_n) down_s^T)        (without the gate: no sigmoid factor)
  The reference is the model's arithmetic (model/moe.py, model/layers.py `MLP`): act, down, gate, add.
- `moe_grouped_gemm` (prefill): the token-slots sorted by expert on the device (`align_by_expert` in
  kernels/triton_moe.py: a histogram, a stable sort, each expert's run padded to the block height),
  then one grouped GEMM launch for gate|up (+ activation) and one for down (+ routing weight) over all
  experts' blocks; the k weighted slot outputs of a token are summed in a fixed order (no atomics). The
  grid is sized by the bound on the padded blocks, so it needs no host read either.
  `moe_grouped_gemm_ref` is the per-expert loop (one host read of the per-expert counts).

`moe_gemv`'s launch config, when not passed: kernels/moe_tuned.py's measured entry for the shape and
batch bucket if it has one, else the rule of `heuristic_gemv_config` (`default_gemv_config`).

The Triton kernels accumulate in fp32 and round h and each slot's weighted output once to x's dtype; the
references round like the torch ops they call. Dispatch as every op: Triton on CUDA, the reference
elsewhere, `HYBRID_AGENT_KERNELS` overrides (kernels/_dispatch.py).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from hybrid_agent.kernels._dispatch import use_triton
from hybrid_agent.kernels.checks import MoeGemmConfig, MoeGemvConfig, SharedExpert, check_moe, check_shared
from hybrid_agent.kernels.moe_tuned import tuned_gemv_config

__all__ = [
    "MoeGemmConfig",
    "MoeGemvConfig",
    "SharedExpert",
    "default_gemm_config",
    "default_gemv_config",
    "heuristic_gemv_config",
    "moe_gemv",
    "moe_gemv_ref",
    "moe_grouped_gemm",
    "moe_grouped_gemm_ref",
]


def _hidden(up: torch.Tensor, gate: torch.Tensor | None) -> torch.Tensor:
    return F.relu(up).square() if gate is None else F.silu(gate) * up


def moe_gemv_ref(
    x: torch.Tensor, ids: torch.Tensor, weights: torch.Tensor,
    gate: torch.Tensor | None, up: torch.Tensor, down: torch.Tensor, shared: SharedExpert | None = None,
) -> torch.Tensor:  # fmt: skip
    """Each token-slot's expert weights gathered by id, then (N * k) small batched matmuls; the shared
    expert (if any) as the model computes it, added last."""
    check_moe(x, ids, weights, gate, up, down)
    N, k = ids.shape
    slots = ids.reshape(-1).long()  # (N*k,)
    xs = x.repeat_interleave(k, dim=0).unsqueeze(1)  # (N*k, 1, D)
    g = None if gate is None else torch.bmm(xs, gate[slots].transpose(1, 2))  # (N*k, 1, I)
    h = _hidden(torch.bmm(xs, up[slots].transpose(1, 2)), g)
    y = torch.bmm(h, down[slots].transpose(1, 2))  # (N*k, 1, D)
    out = (y.view(N, k, -1) * weights.to(y.dtype).unsqueeze(-1)).sum(1)  # (N, D)
    if shared is None:
        return out
    check_shared(x, shared, gate is not None)
    pre = shared.pre
    hs = shared.down.shape[1]
    h_s = _hidden(pre[:, hs:], pre[:, :hs]) if gate is not None else _hidden(pre, None)
    y_s = F.linear(h_s, shared.down)
    if shared.gate is not None:
        y_s = torch.sigmoid(shared.gate) * y_s
    return out + y_s


def moe_grouped_gemm_ref(
    x: torch.Tensor, ids: torch.Tensor, weights: torch.Tensor,
    gate: torch.Tensor | None, up: torch.Tensor, down: torch.Tensor,
) -> torch.Tensor:  # fmt: skip
    """Token-slots sorted by expert; each expert that has tokens runs once on them (reads the per-expert
    counts back to the host)."""
    check_moe(x, ids, weights, gate, up, down)
    k = ids.shape[1]
    flat_ids = ids.reshape(-1).long()  # (N*k,)
    order = flat_ids.argsort(stable=True)
    counts = torch.bincount(flat_ids, minlength=up.shape[0]).tolist()  # the one host read
    flat_w = weights.reshape(-1).to(x.dtype)
    out = torch.zeros_like(x)
    start = 0
    for expert, n in enumerate(counts):
        if n == 0:
            continue
        slots = order[start : start + n]
        start += n
        tokens = slots // k
        xe = x[tokens]  # (n, D)
        g = None if gate is None else F.linear(xe, gate[expert])
        h = _hidden(F.linear(xe, up[expert]), g)
        out.index_add_(0, tokens, F.linear(h, down[expert]) * flat_w[slots, None])
    return out


def default_gemv_config(n_tokens: int, top_k: int, d: int, i: int, sms: int = 132) -> MoeGemvConfig:
    """The measured config for this shape and batch bucket when kernels/moe_tuned.py's table has one (a
    sweep's pick, bench/gpu_moe.py `tune`), else `heuristic_gemv_config`."""
    return tuned_gemv_config(n_tokens, top_k, d, i) or heuristic_gemv_config(n_tokens, top_k, d, i, sms)


def heuristic_gemv_config(n_tokens: int, top_k: int, d: int, i: int, sms: int = 132) -> MoeGemvConfig:
    """Enough programs to keep every SM streaming: the gate|up launch has N * k * I / block_i programs
    and the down launch N * D / block_d; each block shrinks (16 -> 4 rows) until there are ~4 a SM, and
    the column block widens so a tile stays 2048 elements (two 16-byte loads a thread for 4 warps, all
    issued before the tile's products: more bytes in flight per program)."""

    def rows(outputs: int) -> int:
        r = 16
        while r > 4 and outputs // r < 4 * sms:
            r //= 2
        return r

    bi, bd = rows(n_tokens * top_k * i), rows(n_tokens * d)
    return MoeGemvConfig(
        block_i=bi, block_d_in=max(64, 2048 // bi), block_d=bd, block_i_in=max(64, 2048 // bd)
    )


def default_gemm_config(n_slots: int, n_experts: int) -> MoeGemmConfig:
    """64-row blocks, or 16 / 32 when the slots per expert are few (less padding)."""
    per_expert = n_slots / max(1, n_experts)
    bm = 16 if per_expert <= 16 else 32 if per_expert <= 32 else 64
    return MoeGemmConfig(block_m=bm)


def moe_gemv(
    x: torch.Tensor, ids: torch.Tensor, weights: torch.Tensor,
    gate: torch.Tensor | None, up: torch.Tensor, down: torch.Tensor, config: MoeGemvConfig | None = None,
    shared: SharedExpert | None = None,
) -> torch.Tensor:  # fmt: skip
    """The experts applied slot by slot, reading only the chosen experts' rows, plus the shared expert
    when given (see the module doc)."""
    check_moe(x, ids, weights, gate, up, down)
    if use_triton(x):
        from hybrid_agent.kernels.triton_moe import moe_gemv_triton

        if shared is not None:
            check_shared(x, shared, gate is not None)
        N, k = ids.shape
        cfg = config or default_gemv_config(N, k, up.shape[2], up.shape[1])
        return moe_gemv_triton(x, ids, weights, gate, up, down, cfg, shared)
    return moe_gemv_ref(x, ids, weights, gate, up, down, shared)


def moe_grouped_gemm(
    x: torch.Tensor, ids: torch.Tensor, weights: torch.Tensor,
    gate: torch.Tensor | None, up: torch.Tensor, down: torch.Tensor, config: MoeGemmConfig | None = None,
) -> torch.Tensor:  # fmt: skip
    """The experts applied as one grouped GEMM over the slots sorted by expert (see the module doc)."""
    check_moe(x, ids, weights, gate, up, down)
    if use_triton(x):
        from hybrid_agent.kernels.triton_moe import moe_grouped_gemm_triton

        cfg = config or default_gemm_config(ids.numel(), up.shape[0])
        return moe_grouped_gemm_triton(x, ids, weights, gate, up, down, cfg)
    return moe_grouped_gemm_ref(x, ids, weights, gate, up, down)
