"""`Ops`: the parts of a forward that depend on where the state lives and which kernels run, passed to
every mixer explicitly (`mixer(x, layer, state, ops)`), so each mixer's math is written once.

The model's own path (`HybridLM.forward`) runs the plain `Ops`: positions from the host-side token
count, caches that grow by `ModelState.append_cache` (windows and sinks included), attention over them
with torch's SDPA and a mask, or, for a prefill chunk of plain causal attention on CUDA, with SDPA's
causal kernel and no mask (`Ops.plain_causal`, `causal_sdpa`). The decode engine (model/decode/ops.py)
subclasses it for its one-token step over preallocated buffers: a position on the device (a captured
CUDA graph reads it), cache writes at that position, the attention kernels that read the length on the
device, concatenated projections and kernels.gemv. What a mixer computes from these parts is the same
on both paths.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Sequence

import torch
import torch.nn.functional as F
from hybrid_agent.model.cpu_rows import linears_row, one_cpu_row
from hybrid_agent.model.rope import rope_cos_sin
from hybrid_agent.model.state import LayerState, ModelState
from hybrid_agent.model.switches import env_switch
from torch import Tensor, nn
from torch.nn.attention import SDPBackend, sdpa_kernel

# CUDA prefill chunks take SDPA's causal kernel without a mask unless this is "0" (or false/no/off): on
# the H100 it was 3-9% faster over the whole prefill than the masked call at 16k and 64k tokens
# (docs/results.md, "Chunked prefill kernels"); the CPU keeps the mask. Read when an `Ops` is made.
CAUSAL_PREFILL_ENV = "HYBRID_AGENT_CAUSAL_PREFILL"


def causal_prefill_default() -> bool:
    """Whether prefill chunks may take the unmasked causal path (`CAUSAL_PREFILL_ENV`, on unless "0")."""
    return env_switch(CAUSAL_PREFILL_ENV) is not False


class Ops:
    """The model's own path. It keeps the positions and RoPE values that the layers of one call share
    (`begin` starts a call). `mixer` arguments are the calling layer (model/attention.py's
    `Attention`, model/mla.py's `MLA`), typed as modules because those files import this one."""

    def __init__(
        self,
        *,
        restrict_sdpa: bool = True,
        causal_prefill: bool | None = None,
        causal_devices: Collection[str] = ("cuda",),
        stacked_devices: Collection[str] = ("cuda",),
        cpu_rows: bool = True,
    ) -> None:
        # Unmasked CUDA attention through flash / memory-efficient only (`sdpa`); False times the
        # default choice (bench/gpu_e2e.py).
        self.restrict_sdpa = restrict_sdpa
        # Prefill chunks of plain causal attention through `causal_sdpa` (None: `causal_prefill_default`),
        # on these device types only (the CPU keeps the mask; tests pass "cpu" to check the arithmetic).
        self.causal_prefill = causal_prefill_default() if causal_prefill is None else causal_prefill
        self.causal_devices = frozenset(causal_devices)
        # Projections whose weights lie stacked in one tensor (`stacked_weights`) run as one matmul on
        # these device types. The engine stacks them on CUDA only; on the CPU a stacked weight keeps one
        # matmul per projection, whose fp32 numbers do not depend on the stacking (the CPU's matmul
        # blocks a wider output otherwise; tests pass "cpu" to check the stacked path's arithmetic).
        self.stacked_devices = frozenset(stacked_devices)
        # One fp32 row on the CPU (decode of one sequence) multiplies by packed copies of the weights
        # (model/cpu_rows.py): within fp32 rounding of F.linear's numbers; False keeps F.linear.
        self.cpu_rows = cpu_rows
        self._pos: dict[tuple[int, int, torch.device], Tensor] = {}
        self._rope: dict[tuple[int, int, float], tuple[Tensor, Tensor]] = {}

    def begin(self) -> None:
        """A new call: forget the last one's positions and RoPE values."""
        self._pos.clear()
        self._rope.clear()

    def positions(self, state: ModelState, T: int, device: torch.device) -> Tensor:
        """Absolute positions (T,) of the new tokens (one tensor per call: the layers share it)."""
        key = (state.n_tokens, T, device)
        pos = self._pos.get(key)
        if pos is None:
            pos = self._pos[key] = torch.arange(state.n_tokens, state.n_tokens + T, device=device)
        return pos

    def rope(self, pos: Tensor, inv_freq: Tensor, theta: float) -> tuple[Tensor, Tensor]:
        """cos, sin (1, T, 1, R) at `pos` for the table of `theta` (`rope_cos_sin`), computed once per
        call for the layers that share it."""
        key = (id(pos), inv_freq.shape[0], theta)
        got = self._rope.get(key)
        if got is None:
            got = self._rope[key] = rope_cos_sin(pos, inv_freq)
        return got

    def project(self, role: str, x: Tensor, linears: Sequence[nn.Linear]) -> Tensor:
        """`x` through `linears` side by side: (..., sum of their outputs), in their order. `role` names
        the matmul for the engine's kernel choice (model/decode/ops.py). One fp32 row on the CPU (decode)
        multiplies by the linears' packed weights (model/cpu_rows.py)."""
        if self.cpu_rows and one_cpu_row(x, linears[0].weight):
            out = linears_row(x, linears)
            if out is not None:
                return out
        if len(linears) == 1:
            return F.linear(x, linears[0].weight, linears[0].bias)
        if x.numel() > x.shape[-1]:  # several rows: one matmul if stacked, else each writes its columns
            stacked = stacked_weights(linears) if x.device.type in self.stacked_devices else None
            if stacked is not None and _plain(x, linears):
                return project_stacked(x, *stacked)
            return project_cols(x, linears)
        return torch.cat([F.linear(x, lin.weight, lin.bias) for lin in linears], dim=-1)

    def gated(self, x: Tensor, gate: nn.Linear, up: nn.Linear) -> Tensor:
        """SwiGLU's hidden layer: silu(gate(x)) * up(x); one CPU row through gate|up packed as one
        matmul (model/cpu_rows.py)."""
        if self.cpu_rows and one_cpu_row(x, gate.weight):
            both = linears_row(x, (gate, up))
            if both is not None:
                h = both[..., : gate.out_features]
                return F.silu(h) * both[..., gate.out_features :]
        return F.silu(F.linear(x, gate.weight, gate.bias)) * F.linear(x, up.weight, up.bias)

    def moe_step(self, moe: nn.Module, flat: Tensor) -> Tensor | None:
        """An MoE layer (model/moe.py `MoE`) on its flattened tokens (N, D) by the decode engine's fused
        kernels (model/decode/moe_step.py), or None: the layer runs its own forward (always here)."""
        return None

    def write(self, layer: LayerState, state: ModelState, new: dict[str, Tensor], pos: Tensor) -> None:
        """Append the new tokens' cache entries (B, ..., T, ...) at positions `pos`."""
        state.append_cache(layer, new, pos, state.n_tokens if self.own_positions(state, pos) else None)

    def own_positions(self, state: ModelState, pos: Tensor) -> bool:
        """Whether `pos` is this call's `positions` (n_tokens, n_tokens + 1, ...): known by identity,
        on the host."""
        return self._pos.get((state.n_tokens, len(pos), pos.device)) is pos

    def plain_causal(self, layer: LayerState, state: ModelState, pos: Tensor) -> bool:
        """Whether attending the T > 1 queries at `pos` over the layer's cache is plain causal attention
        with the queries the cache's last T entries: no window (sinks count only with one, as in
        `visible`), the cache's positions 0..L-1 in order (`LayerState.dense`), `pos` this call's own
        positions. Host facts only: nothing is read from the device."""
        T, key_pos = len(pos), layer.pos
        return (
            T > 1
            and state.window is None
            and layer.dense
            and key_pos is not None
            and len(key_pos) == state.n_tokens + T
            and self.own_positions(state, pos)
        )

    def attention_in(
        self, mixer: nn.Module, layer: LayerState, state: ModelState, qkv: Tensor, pos: Tensor
    ) -> Tensor:
        """From the stacked q|k|v projection (B, T, (H + 2 Hkv) Dh): QK-norm and RoPE (`mixer.prep`),
        the keys and values written to the cache; returns q (B, T, H, Dh)."""
        q, k, v = mixer.prep(qkv, pos, self)
        self.write(layer, state, {"k": k.transpose(1, 2), "v": v.transpose(1, 2)}, pos)  # (B, Hkv, T, Dh)
        return q

    def attend(
        self, mixer: nn.Module, layer: LayerState, state: ModelState, q: Tensor, pos: Tensor,
        gate: Tensor | None = None,
    ) -> Tensor:  # fmt: skip
        """Softmax attention of q (B, T, H, Dh) over the layer's cache: (B, T, H * Dh); with `gate`
        (B, T, H * Dh, gated attention's output gate before its sigmoid) times sigmoid(gate)."""
        B, T, H, Dh = q.shape
        keys, values, key_pos = layer.cache["k"], layer.cache["v"], layer.pos  # (B, Hkv, L, Dh), (L,)
        assert key_pos is not None
        keys = keys if keys.dtype == q.dtype else keys.to(q.dtype)  # skip the no-op casts' dispatch
        values = values if values.dtype == q.dtype else values.to(q.dtype)
        if (
            self.causal_prefill
            and q.device.type in self.causal_devices
            and self.plain_causal(layer, state, pos)
        ):
            out = causal_sdpa(q.transpose(1, 2), keys, values, 1.0 / math.sqrt(Dh))  # (B, H, T, Dh)
            return gated(out.transpose(1, 2).reshape(B, T, H * Dh), gate)
        # Grouped-query attention without copying K/V per query head: the G = H / Hkv query heads that
        # share a KV head become G * T query rows of that head (head h reads KV head h // G).
        Hkv = keys.shape[1]
        G = H // Hkv
        q = q.transpose(1, 2).reshape(B, Hkv, G * T, Dh)  # (B, Hkv, G*T, Dh)
        mask = None
        if T > 1 or state.window is not None:
            mask = visible(pos, key_pos, state.window, state.sinks)  # (T, L)
            mask = mask.repeat(G, 1) if G > 1 else mask  # (G*T, L)
        out = sdpa(
            q, keys, values, mask, 1.0 / math.sqrt(Dh), restrict=self.restrict_sdpa
        )  # (B, Hkv, G*T, Dh)
        # reshape, not view: CUDA's flash SDPA may hand back this output non-contiguous.
        return gated(out.reshape(B, H, T, Dh).transpose(1, 2).reshape(B, T, H * Dh), gate)

    def attend_latent(
        self,
        mixer: nn.Module,
        layer: LayerState,
        state: ModelState,
        q_nope: Tensor,
        q_rope: Tensor,
        pos: Tensor,
    ) -> Tensor:
        """MLA's attention of q_nope (B, T, H, dn) and q_rope (B, T, H, R) over the layer's latent cache:
        absorbed or decompressed, whichever costs less (`mixer.absorbs`). Returns (B, T, H, dv)."""
        T = q_nope.shape[1]
        latents, keys_rope, key_pos = layer.cache["latent"], layer.cache["k_rope"], layer.pos  # (B, L, C|R)
        assert key_pos is not None
        mask = None
        if T > 1 or state.window is not None:
            mask = visible(pos, key_pos, state.window, state.sinks)  # (T, L)
        latents, keys_rope = latents.to(q_nope.dtype), keys_rope.to(q_nope.dtype)
        if mixer.absorbs(T, len(key_pos)):
            return mixer.attend_absorbed(q_nope, q_rope, latents, keys_rope, mask)
        return mixer.attend_decompressed(q_nope, q_rope, latents, keys_rope, mask)


def stacked_weights(linears: Sequence[nn.Linear]) -> tuple[Tensor, Tensor | None] | None:
    """The weights (and biases) of `linears` as one (sum of outputs, D) matrix without a copy, where they
    already lie one after another in one tensor (the decode engine's `plan_concat` rebinds them so on
    CUDA: model/decode/ops.py `_concat`), else None. Found from the parameters as they are on each call,
    so weights loaded, sharded or rebound since are never read from a stale stacked copy: tensors that
    are no longer adjacent views simply take `project_cols`."""
    first = linears[0].weight
    if first.dim() != 2 or first.stride() != (first.shape[1], 1):
        return None
    with_bias = linears[0].bias is not None
    ptr, n = first.data_ptr(), 0
    for lin in linears:
        w, b = lin.weight, lin.bias
        if (b is not None) != with_bias or w.dtype != first.dtype or w.device != first.device:
            return None
        if w.data_ptr() != ptr + n * first.shape[1] * first.element_size():
            return None
        if w.dim() != 2 or w.shape[1] != first.shape[1] or w.stride() != first.stride():
            return None
        n += w.shape[0]
    # the span lies inside the first weight's storage (adjacent memory there is the others' own)
    if first.storage_offset() + n * first.shape[1] > first.untyped_storage().nbytes() // first.element_size():
        return None
    weight = first.detach().as_strided((n, first.shape[1]), first.stride())  # (N, D) view
    if not with_bias:
        return weight, None
    b0 = linears[0].bias
    assert b0 is not None
    pos = b0.data_ptr()
    for lin in linears:
        b = lin.bias
        assert b is not None
        if b.dim() != 1 or b.stride() != (1,) or b.dtype != b0.dtype or b.data_ptr() != pos:
            return None
        pos += b.shape[0] * b.element_size()
    if b0.storage_offset() + n > b0.untyped_storage().nbytes() // b0.element_size():
        return None
    return weight, b0.detach().as_strided((n,), (1,))


def project_stacked(x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
    """x (..., D) times the stacked `weight` (N, D) (+ `bias`) as one matmul: (..., N), the N columns
    of an output whose rows are padded to a multiple of 8 values (16 bytes in 16-bit dtypes), so the
    matmul's output rows stay aligned whatever N is (Gated DeltaNet's q|k|v|a|b|g has 17,340 columns
    at OLMo Hybrid 7B's shape; `_concat` pads its decode weight for the same reason). The callers take
    views of the columns."""
    rows = x.reshape(-1, x.shape[-1])  # (R, D)
    N = weight.shape[0]
    out = _aligned_rows(rows, N)  # (R, N)
    if bias is None:
        torch.mm(rows, weight.t(), out=out)
    else:
        torch.addmm(bias, rows, weight.t(), out=out)
    return out.view(*x.shape[:-1], N)


def _aligned_rows(rows: Tensor, n: int) -> Tensor:
    """An empty (R, n) output like `rows`, its row stride n rounded up to a multiple of 8 values."""
    return rows.new_empty((rows.shape[0], -(-n // 8) * 8))[:, :n]


def _plain(x: Tensor, linears: Sequence[nn.Linear]) -> bool:
    """`project_cols`' test for writing into an output (`out=`): F.linear's own route is a matmul of the
    flattened rows, and no autograd graph is asked for."""
    plain = x.dim() == 2 or (x.dim() == 3 and x.is_contiguous()) or all(lin.bias is None for lin in linears)
    grad = torch.is_grad_enabled() and (
        x.requires_grad or any(p.requires_grad for lin in linears for p in lin.parameters())
    )
    return plain and not grad


def project_cols(x: Tensor, linears: Sequence[nn.Linear]) -> Tensor:
    """`torch.cat([F.linear(x, lin.weight, lin.bias) for lin in linears], dim=-1)`, the same numbers,
    with each matmul writing its own block of columns of one (rows, sum of outputs) tensor: the matmul
    takes an output with a row stride wider than its columns, so nothing is copied after it (a prefill
    chunk's concatenation was one more pass over its q|k|v activations); the output's rows are padded to
    a multiple of 8 values, as `project_stacked`'s. F.linear's own route where
    it is not a plain matmul of the flattened rows (a bias on a non-contiguous or >3-d input: matmul,
    then add) and under autograd (`out=` does not record a graph) keeps the concatenation."""
    D = x.shape[-1]
    if not _plain(x, linears):
        return torch.cat([F.linear(x, lin.weight, lin.bias) for lin in linears], dim=-1)
    rows = x.reshape(-1, D)  # (N, D)
    out = _aligned_rows(rows, sum(lin.out_features for lin in linears))  # (N, sum of outputs)
    col = 0
    for lin in linears:
        dst = out[:, col : col + lin.out_features]  # (N, n): row stride = all the outputs
        if lin.bias is None:
            torch.mm(rows, lin.weight.t(), out=dst)
        else:
            torch.addmm(lin.bias, rows, lin.weight.t(), out=dst)
        col += lin.out_features
    return out.view(*x.shape[:-1], col)


def gated(out: Tensor, gate: Tensor | None) -> Tensor:
    """Gated attention's output: out * sigmoid(gate) (out as is without a gate)."""
    return out if gate is None else out * torch.sigmoid(gate)


def visible(q_pos: Tensor, k_pos: Tensor, window: int | None, sinks: int) -> Tensor:
    """(Tq, Tk) bool: key j is seen by query q iff j <= q and (j > q - window or j < sinks)."""
    q, k = q_pos[:, None], k_pos[None, :]  # (Tq, 1), (1, Tk)
    mask = k <= q
    if window is not None:
        mask &= (k > q - window) | (k < sinks)
    return mask


# Unmasked calls on CUDA (decode: one query row per head, no window): flash or memory-efficient only.
# With the default backend list, torch 2.11 spent ~59 ms of host time in a call whose key length
# differs from the last one's (every decode step; bench/results/gpu_e2e.json, sdpa_overhead), against
# ~0.1 ms with these two. Masked calls (prefill, windows) keep the default choice.
_DECODE_BACKENDS = [SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION]


def sdpa(
    q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None, scale: float, *, restrict: bool = True
) -> Tensor:
    """`F.scaled_dot_product_attention`, restricted to flash / memory-efficient for unmasked CUDA calls
    (`restrict=False`: torch's default choice)."""
    if mask is None and q.is_cuda and restrict and q.shape[-1] <= 256 and q.dtype != torch.float64:
        with sdpa_kernel(_DECODE_BACKENDS):
            return F.scaled_dot_product_attention(q, k, v, scale=scale)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scale)


def causal_sdpa(q: Tensor, k: Tensor, v: Tensor, scale: float) -> Tensor:
    """Causal attention of q (B, H, T, Dh) at positions L-T..L-1 over k, v (B, Hkv, L, Dh) at positions
    0..L-1: (B, H, T, Dh), what the masked call computes with `visible`'s causal mask, without the mask.
    Grouped-query attention by SDPA's `enable_gqa` (query head h reads KV head h // (H / Hkv); K/V are
    not repeated). L == T: `is_causal` (SDPA's own backend choice); L > T: the lower-right causal bias,
    which torch runs by flash attention where it can and otherwise with a mask it materialises
    (torch's `CausalBias._dispatch`). The causal kernels skip the fully masked blocks that a masked call
    computes."""
    T, L = q.shape[-2], k.shape[-2]
    gqa = q.shape[1] != k.shape[1]
    if T == L:
        return F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=scale, enable_gqa=gqa)
    # Imported here: torch.nn.attention.bias imports Triton, which a start's import of the model does
    # not pay for (tests/engine/test_mla_decode.py).
    from torch.nn.attention.bias import causal_lower_right

    bias = causal_lower_right(T, L)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=bias, scale=scale, enable_gqa=gqa)
