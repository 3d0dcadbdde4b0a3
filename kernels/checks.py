"""Input checks and small shared types of the kernels: what a wrapper (kernels/X.py, the torch
reference and the dispatch) and its Triton file (kernels/triton_X.py) both need.

A leaf: it imports torch and kernels/errors.py only, so no Triton file has to import its wrapper (the
wrapper imports the Triton file when it dispatches to it; the reverse edge would be an import cycle,
tests/kernels/test_kernels_imports.py). Each check raises KernelInputError with a one-line message.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import NamedTuple

import torch
from hybrid_agent.kernels.errors import KernelInputError

# q, k (B, Hv, Dk), v (B, Hv, Dv) in proj's dtype, g and beta (B, Hv) fp32: gdn_decode_prep's result
GdnPrep = tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]


@dataclass(frozen=True)
class GemvConfig:
    """One program computes `block_n` outputs over a 1/`split_k` share of K, `block_k` columns at a time,
    `unroll` tiles per loop trip (loads in flight per thread: block_n * block_k * unroll * 2 bytes /
    (32 num_warps))."""

    block_n: int = 16
    block_k: int = 256
    split_k: int = 1
    num_warps: int = 4
    unroll: int = 2


def next_pow2(n: int) -> int:
    """The smallest power of two at least n (1 for n <= 1): the widest block a launch needs on an
    axis of n, and the MoE config table's batch bucket (kernels/moe_tuned.py)."""
    return 1 << max(0, n - 1).bit_length()


def check_rms_weight(x: torch.Tensor, weight: torch.Tensor) -> None:
    if weight.shape != (x.shape[-1],):
        raise KernelInputError(f"rms_norm: weight must be ({x.shape[-1]},), got {tuple(weight.shape)}")


def rms_group_size(d: int, group_size: int | None) -> int:
    """The channels normalised together: all d when group_size is None, else group_size (dividing d)."""
    gs = d if group_size is None else group_size
    if gs <= 0 or d % gs != 0:
        raise KernelInputError(f"rms_norm: group_size={group_size} must divide the last dimension {d}")
    return gs


def check_rms_gate(x: torch.Tensor, z: torch.Tensor | None) -> None:
    if z is not None and z.shape != x.shape:
        raise KernelInputError(
            f"gated_rms_norm: z must have x's shape {tuple(x.shape)}, got {tuple(z.shape)}"
        )


def check_conv_weight(d: int, weight: torch.Tensor, bias: torch.Tensor | None) -> int:
    """The conv width w of a (d, w) weight."""
    if weight.dim() != 2 or weight.shape[0] != d:
        raise KernelInputError(f"causal_conv1d: weight must be (d, w) with d={d}, got {tuple(weight.shape)}")
    if bias is not None and bias.shape != (d,):
        raise KernelInputError(f"causal_conv1d: bias must be (d,) = ({d},), got {tuple(bias.shape)}")
    return weight.shape[1]


def check_conv_state(state: torch.Tensor, b: int, d: int, w: int) -> None:
    if state.shape != (b, d, w - 1):
        raise KernelInputError(
            f"causal_conv1d: state must be (b, d, w-1) = {(b, d, w - 1)}, got {tuple(state.shape)}"
        )


def check_conv_x(x: torch.Tensor, *, step: bool) -> None:
    """x is (b, t, d) channel-last for the full op, (b, d) for the one-token step."""
    if step and x.dim() != 2:
        raise KernelInputError(f"causal_conv1d_step: x must be (b, d), got {tuple(x.shape)}")
    if not step and x.dim() != 3:
        raise KernelInputError(f"causal_conv1d: x must be (b, t, d) channel-last, got {tuple(x.shape)}")


def conv_silu(activation: str | None) -> bool:
    """True for "silu", False for None; anything else is refused."""
    if activation not in ("silu", None):
        raise KernelInputError(f"causal_conv1d: activation must be 'silu' or None, got {activation!r}")
    return activation == "silu"


def check_ssd_inputs(
    x: torch.Tensor,
    dt: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: torch.Tensor | None,
    initial_state: torch.Tensor | None,
) -> None:
    if x.dim() != 4:
        raise KernelInputError(f"ssd_scan: x must be (b, t, h, p), got shape {tuple(x.shape)}")
    b, t, h, p = x.shape
    if dt.shape != (b, t, h):
        raise KernelInputError(f"ssd_scan: dt must be (b, t, h) = {(b, t, h)}, got {tuple(dt.shape)}")
    if A.shape != (h,):
        raise KernelInputError(f"ssd_scan: A must be (h,) = ({h},), got {tuple(A.shape)}")
    if B.dim() != 4 or B.shape[:2] != (b, t) or B.shape != C.shape:
        raise KernelInputError(
            f"ssd_scan: B and C must both be (b, t, g, n) with b, t = {(b, t)}; "
            f"got B {tuple(B.shape)}, C {tuple(C.shape)}"
        )
    g, n = B.shape[2], B.shape[3]
    if h % g != 0:
        raise KernelInputError(f"ssd_scan: the number of groups g={g} must divide the heads h={h}")
    if D is not None and D.shape != (h,):
        raise KernelInputError(f"ssd_scan: D must be (h,) = ({h},) or None, got {tuple(D.shape)}")
    if initial_state is not None and initial_state.shape != (b, h, p, n):
        raise KernelInputError(
            f"ssd_scan: initial_state must be (b, h, p, n) = {(b, h, p, n)}, got {tuple(initial_state.shape)}"
        )


def check_ssm_step_inputs(
    state: torch.Tensor,
    x: torch.Tensor,
    dt: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: torch.Tensor | None,
) -> None:
    if x.dim() != 3:
        raise KernelInputError(f"ssm_step: x must be (b, h, p), got shape {tuple(x.shape)}")
    b, h, p = x.shape
    if B.dim() != 3 or B.shape != C.shape or B.shape[0] != b or h % B.shape[1] != 0:
        raise KernelInputError(
            f"ssm_step: B and C must be (b, g, n) with g dividing h={h}; "
            f"got {tuple(B.shape)}, {tuple(C.shape)}"
        )
    n = B.shape[2]
    if state.shape != (b, h, p, n) or state.dtype != torch.float32:
        raise KernelInputError(
            f"ssm_step: state must be fp32 (b, h, p, n) = {(b, h, p, n)}, "
            f"got {state.dtype} {tuple(state.shape)}"
        )
    if dt.shape != (b, h) or A.shape != (h,) or (D is not None and D.shape != (h,)):
        raise KernelInputError(f"ssm_step: dt must be (b, h) = {(b, h)} and A, D (h,) = ({h},)")


def _split_by_decay(
    per_channel: bool, q: torch.Tensor, k: torch.Tensor, g: torch.Tensor, beta: torch.Tensor
) -> tuple[str, list[torch.Tensor], str, list[torch.Tensor]]:
    """The delta rule's operands by shape: (names, tensors) shaped like q, then those shaped like beta.
    The decay g is per key channel with `per_channel` (KDA: q's shape), else one per head (beta's)."""
    if per_channel:
        return "q, k and g", [q, k, g], "beta", [beta]
    return "q and k", [q, k], "g and beta", [g, beta]


def _shapes(tensors: list[torch.Tensor]) -> str:
    return ", ".join(str(tuple(a.shape)) for a in tensors)


def check_delta_inputs(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    g: torch.Tensor,
    beta: torch.Tensor,
    initial_state: torch.Tensor | None,
    *,
    per_channel: bool,
) -> None:
    """The chunked delta rule's inputs: q, k (b, t, h, dk), v (b, t, h, dv), beta (b, t, h), the
    log-decay g (b, t, h) (gated delta rule) or (b, t, h, dk) with `per_channel` (KDA), and an
    optional key-first initial state (b, h, dk, dv)."""
    op = "chunk_kda" if per_channel else "chunk_gated_delta_rule"
    keyed, keyed_t, gated, gated_t = _split_by_decay(per_channel, q, k, g, beta)
    if q.dim() != 4 or any(a.shape != q.shape for a in keyed_t):
        raise KernelInputError(f"{op}: {keyed} must all be (b, t, h, dk); got {_shapes(keyed_t)}")
    b, t, h, dk = q.shape
    if v.dim() != 4 or v.shape[:3] != (b, t, h):
        raise KernelInputError(
            f"{op}: v must be (b, t, h, dv) with (b, t, h) = {(b, t, h)}, got {tuple(v.shape)}"
        )
    if any(a.shape != (b, t, h) for a in gated_t):
        raise KernelInputError(f"{op}: {gated} must be (b, t, h) = {(b, t, h)}; got {_shapes(gated_t)}")
    dv = v.shape[3]
    if initial_state is not None and initial_state.shape != (b, h, dk, dv):
        raise KernelInputError(
            f"{op}: initial_state must be key-first (b, h, dk, dv) = {(b, h, dk, dv)}, "
            f"got {tuple(initial_state.shape)}"
        )


def check_delta_step_inputs(
    state: torch.Tensor,
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    g: torch.Tensor,
    beta: torch.Tensor,
    *,
    per_channel: bool,
) -> None:
    """The one-token delta rule's inputs: as `check_delta_inputs` without the time axis, and the fp32
    state (b, h, dk, dv) that the step updates in place."""
    op = "kda_step" if per_channel else "gated_delta_rule_step"
    keyed, keyed_t, gated, gated_t = _split_by_decay(per_channel, q, k, g, beta)
    if q.dim() != 3 or any(a.shape != q.shape for a in keyed_t) or v.dim() != 3 or v.shape[:2] != q.shape[:2]:
        raise KernelInputError(
            f"{op}: {keyed} must be (b, h, dk) and v (b, h, dv); got {_shapes([*keyed_t, v])}"
        )
    b, h, dk = q.shape
    dv = v.shape[2]
    if any(a.shape != (b, h) for a in gated_t):
        raise KernelInputError(f"{op}: {gated} must be (b, h) = {(b, h)}; got {_shapes(gated_t)}")
    if state.shape != (b, h, dk, dv) or state.dtype != torch.float32:
        raise KernelInputError(
            f"{op}: state must be fp32 (b, h, dk, dv) = {(b, h, dk, dv)}, "
            f"got {state.dtype} {tuple(state.shape)}"
        )


def check_gemv(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None) -> None:
    if w.dim() != 2 or x.shape[-1] != w.shape[1]:
        raise KernelInputError(
            f"gemv: x {tuple(x.shape)} and w {tuple(w.shape)} do not multiply (w is (N, K))"
        )
    if b is not None and (b.dim() != 1 or b.shape[0] != w.shape[0]):
        raise KernelInputError(f"gemv: bias {tuple(b.shape)} must be ({w.shape[0]},)")
    if x.dtype != w.dtype or (b is not None and b.dtype != w.dtype):
        raise KernelInputError(f"gemv: x, w and b must share a dtype (got {x.dtype}, {w.dtype})")


def check_gdn_prep(proj: torch.Tensor, conv_state: torch.Tensor, Hk: int, Dk: int, Hv: int, Dv: int,
                   a_off: int, b_off: int) -> int:  # fmt: skip
    C = 2 * Hk * Dk + Hv * Dv
    if proj.dim() != 2 or proj.shape[1] < max(C, a_off + Hv, b_off + Hv) or Hv % Hk:
        raise KernelInputError(
            f"gdn_decode_prep: proj {tuple(proj.shape)} too narrow for the layout, or Hv % Hk"
        )
    if (
        conv_state.dim() != 3
        or conv_state.shape[:2] != (proj.shape[0], C)
        or conv_state.dtype != torch.float32
    ):
        raise KernelInputError(
            f"gdn_decode_prep: conv_state must be fp32 (B, {C}, W-1), got {tuple(conv_state.shape)}"
        )
    return C


def check_gdn_gates(a: torch.Tensor, b: torch.Tensor, A_log: torch.Tensor, dt_bias: torch.Tensor) -> None:
    """`gdn_gates`' input rules: a, b (B, T, H) alike, A_log and dt_bias (H,)."""
    H = a.shape[-1] if a.dim() else 0
    if a.dim() != 3 or b.shape != a.shape or A_log.shape != (H,) or dt_bias.shape != (H,):
        raise KernelInputError(
            f"gdn_gates: a, b (B, T, H) and A_log, dt_bias (H,); got {tuple(a.shape)}, {tuple(b.shape)}, "
            f"{tuple(A_log.shape)}, {tuple(dt_bias.shape)}"
        )


def check_attn_prep(
    qkv: torch.Tensor, q_w: torch.Tensor | None, k_w: torch.Tensor | None, k_buf: torch.Tensor,
    v_buf: torch.Tensor, pos_buf: torch.Tensor, H: int, Hkv: int, Dh: int, rope: int, qk_norm: str,
) -> None:  # fmt: skip
    """`attn_decode_prep`'s input rules, checked once before either implementation runs."""
    if qk_norm not in ("full", "head", "none"):
        raise KernelInputError(f"attn_decode_prep: qk_norm must be full, head or none; got {qk_norm!r}")
    if qk_norm != "none" and (q_w is None or k_w is None):
        raise KernelInputError("attn_decode_prep: QK-norm needs both weights")
    B = qkv.shape[0]
    if qkv.dim() != 2 or qkv.shape[1] < (H + 2 * Hkv) * Dh or H % Hkv:
        raise KernelInputError(
            f"attn_decode_prep: qkv {tuple(qkv.shape)} too narrow for H={H}, Hkv={Hkv}, Dh={Dh}"
        )
    if k_buf.dim() != 4 or k_buf.shape != v_buf.shape or tuple(k_buf.shape) != (B, Hkv, k_buf.shape[2], Dh):
        raise KernelInputError(
            f"attn_decode_prep: k/v buffers must be equal (B, Hkv, M, Dh) = ({B}, {Hkv}, M, {Dh}); "
            f"got {tuple(k_buf.shape)}, {tuple(v_buf.shape)}"
        )
    if pos_buf.dim() != 1 or pos_buf.shape[0] != k_buf.shape[2] or rope % 2 or rope > Dh:
        raise KernelInputError(f"attn_decode_prep: pos_buf {tuple(pos_buf.shape)} or rope width {rope} off")


def check_prep_positions(
    B: int, pos: torch.Tensor, cos: torch.Tensor | None, sin: torch.Tensor | None
) -> None:
    """`attn_decode_prep`'s positions: pos (1,) with cos/sin (R,), or per row pos (B,) with cos/sin (B, R)."""
    if pos.dim() != 1 or pos.numel() not in (1, B) or pos.dtype != torch.long:
        raise KernelInputError(
            f"attn_decode_prep: pos must be (1,) or (B,) = ({B},) int64; got {tuple(pos.shape)}"
        )
    want = (B, -1) if pos.numel() > 1 else (-1,)
    for t in (cos, sin):
        if t is not None and (t.dim() != len(want) or (len(want) == 2 and t.shape[0] != B)):
            raise KernelInputError(
                f"attn_decode_prep: cos/sin must be (R,) with one position or (B, R) with per-row ones; "
                f"got {tuple(t.shape)}"
            )


def check_residual(x: torch.Tensor, y: torch.Tensor) -> None:
    if y.shape != x.shape:
        raise KernelInputError(f"residual_rms_norm: y {tuple(y.shape)} must have x's shape {tuple(x.shape)}")


def check_greedy_advance(logits: torch.Tensor, tok: torch.Tensor, ids: torch.Tensor) -> None:
    if logits.dim() != 2 or tok.shape != (logits.shape[0], 1) or ids.shape[0] != logits.shape[0]:
        raise KernelInputError(
            f"greedy_advance: logits (B, V), tok (B, 1), ids (B, n); got {tuple(logits.shape)}, "
            f"{tuple(tok.shape)}, {tuple(ids.shape)}"
        )


@dataclass(frozen=True)
class MoeGemvConfig:
    """kernels.moe_gemv's launches: the gate|up kernel computes `block_i` hidden rows of one token-slot,
    `block_d_in` input columns at a time; the down kernel `block_d` outputs of one token over its k
    slots, `block_i_in` hidden columns at a time."""

    block_i: int = 16
    block_d_in: int = 128
    block_d: int = 16
    block_i_in: int = 128
    num_warps: int = 4

    def clamped(self, d: int, i: int) -> MoeGemvConfig:
        """The blocks the launches use at hidden size d and expert hidden size i: each at most the next
        power of two of the axis it tiles (a wider block only adds masked lanes). Two configs with the
        same clamped blocks launch the same kernels."""
        return replace(
            self,
            block_i=min(self.block_i, next_pow2(i)),
            block_d_in=min(self.block_d_in, next_pow2(d)),
            block_d=min(self.block_d, next_pow2(d)),
            block_i_in=min(self.block_i_in, next_pow2(i)),
        )


@dataclass(frozen=True)
class MoeGemmConfig:
    """kernels.moe_grouped_gemm's tiles: `block_m` token-slots of one expert by `block_n` outputs,
    `block_k` of the reduced axis at a time (the same for the gate|up and the down launch)."""

    block_m: int = 64
    block_n: int = 64
    block_k: int = 64
    num_warps: int = 4
    num_stages: int = 3


class SharedExpert(NamedTuple):
    """An MoE layer's shared expert for kernels.moe_gemv to add to the routed sum: its pre-activations
    `pre` (N, 2I_s) = [gate | up] (SwiGLU) or (N, I_s) = up (relu2), the same activation as the routed
    experts; its down weight `down` (D, I_s); `gate` (N, 1) the logit of its sigmoid gate, or None.
    Rows may be strided views (columns of the decode engine's stacked projection)."""

    pre: torch.Tensor
    down: torch.Tensor
    gate: torch.Tensor | None = None


def check_shared(x: torch.Tensor, shared: SharedExpert, gated: bool) -> None:
    """The shared expert's shapes against x (N, D), with the routed experts' activation (`gated`)."""
    N, D = x.shape
    if shared.down.dim() != 2 or shared.down.shape[0] != D:
        raise KernelInputError(
            f"moe: the shared expert's down must be ({D}, I_s), got {tuple(shared.down.shape)}"
        )
    hs = shared.down.shape[1]
    want = (N, 2 * hs if gated else hs)
    if tuple(shared.pre.shape) != want:
        raise KernelInputError(
            f"moe: the shared expert's pre-activations must be {want} ({'[gate | up]' if gated else 'up'}),"
            f" got {tuple(shared.pre.shape)}"
        )
    if shared.gate is not None and tuple(shared.gate.shape) != (N, 1):
        raise KernelInputError(
            f"moe: the shared expert's gate must be ({N}, 1), got {tuple(shared.gate.shape)}"
        )
    if shared.pre.dtype != x.dtype or shared.down.dtype != x.dtype:
        raise KernelInputError(f"moe: the shared expert's tensors must have x's dtype {x.dtype}")


def check_moe(
    x: torch.Tensor, ids: torch.Tensor, weights: torch.Tensor,
    gate: torch.Tensor | None, up: torch.Tensor, down: torch.Tensor,
) -> None:  # fmt: skip
    """x (N, D); ids, weights (N, k); gate (or None), up (E, I, D); down (E, D, I); x's dtype throughout."""
    if x.dim() != 2 or up.dim() != 3:
        raise KernelInputError(
            f"moe: x must be (N, D) and up (E, I, D), got {tuple(x.shape)}, {tuple(up.shape)}"
        )
    E, H, D = up.shape
    N = x.shape[0]
    if x.shape[1] != D:
        raise KernelInputError(f"moe: x has {x.shape[1]} features, the experts take {D}")
    if ids.dim() != 2 or ids.shape[0] != N or weights.shape != ids.shape:
        raise KernelInputError(
            f"moe: ids and weights must be (N, k) with N={N}, got {tuple(ids.shape)}, {tuple(weights.shape)}"
        )
    if ids.dtype.is_floating_point or ids.dtype == torch.bool or not weights.dtype.is_floating_point:
        raise KernelInputError(
            f"moe: ids must be integers and weights floating, got {ids.dtype}, {weights.dtype}"
        )
    if down.shape != (E, D, H) or (gate is not None and gate.shape != up.shape):
        raise KernelInputError(
            f"moe: gate/up must be (E, I, D) = {(E, H, D)} and down (E, D, I), got "
            f"{None if gate is None else tuple(gate.shape)}, {tuple(down.shape)}"
        )
    if any(w.dtype != x.dtype for w in (up, down, *(() if gate is None else (gate,)))):
        raise KernelInputError(f"moe: expert weights must have x's dtype {x.dtype}")
