"""`EngineOps`: the decode engine's side of model/ops.py, for its one-token step over preallocated
buffers (model/decode/buffers.py). The mixers run their own forward; these parts differ:
- the position is `buf.pos`, on the device, so a captured CUDA graph replays at any context;
- cache entries are written into the buffers at that position; attention reads them up to it on the
  device (kernels.attention_decode, kernels.mla_decode), or, with attention="sdpa" (the reference
  mode, never captured), with the model's SDPA call over the first L slots;
- fused (the default): projections that read the same input are one matmul over weights concatenated
  once (`plan_concat`), an attention layer's QK-norm, RoPE and cache writes are one
  kernels.attn_decode_prep launch (partial RoPE too), SwiGLU is kernels.silu_mul, and on CUDA the
  one-token matmuls run kernels.gemv (`StepKernels`);
- gated attention's output gate (Qwen3.5) is applied inside kernels.attention_decode's last step (a
  view of the stacked projection's gate columns; no extra launch);
- an MoE layer runs in four launches (model/decode/moe_step.py; `StepKernels.moe_fused=False` keeps
  the layer's own forward with these ops, the same-run baseline).
"""

from __future__ import annotations

import math
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from hybrid_agent.kernels import GemvConfig
from hybrid_agent.kernels.attention_decode import DecodeConfig, attention_decode
from hybrid_agent.kernels.attn_decode_prep import attn_decode_prep
from hybrid_agent.kernels.gemv import gemv as gemv_op
from hybrid_agent.kernels.mla_decode import mla_decode
from hybrid_agent.kernels.silu_mul import silu_mul
from hybrid_agent.model.attention import Attention
from hybrid_agent.model.cpu_rows import head_matmul, one_cpu_row
from hybrid_agent.model.decode.buffers import StaticState
from hybrid_agent.model.decode.moe_step import fusable, input_linears, moe_step
from hybrid_agent.model.decode.rows import write_rows
from hybrid_agent.model.errors import ModelError
from hybrid_agent.model.gated_deltanet import GatedDeltaNet
from hybrid_agent.model.hybrid import HybridLM
from hybrid_agent.model.layers import MLP
from hybrid_agent.model.mla import MLA
from hybrid_agent.model.moe import MoE, gathers
from hybrid_agent.model.ops import Ops, gated, sdpa
from hybrid_agent.model.state import LayerState, ModelState
from torch import Tensor, nn

# The fused step's one-token matmuls, by role; `gemv=` picks which run kernels.gemv (a bandwidth-bound
# Triton GEMV) instead of F.linear (cuBLAS on CUDA).
GEMV_ROLES = frozenset({"gate_up", "down", "gdn_in", "gdn_out", "attn_in", "attn_out", "head"})
# `gemv=None` turns all of them on when the engine is on CUDA: each was faster than cuBLAS at OLMo
# Hybrid 7B's shape in one run on the H100 (bench/results/gpu_gemv.json: 1.06-1.20x a call); decode at
# 1k context 166.6 vs 154.7 tok/s with gemv=False in the same run (bench/results/gpu_e2e_gemv.json).


@dataclass
class StepKernels:
    """Which kernels the one-token step calls, chosen explicitly per engine: the matmul roles that run
    kernels.gemv (and their launches by (N, K)), the attention prep fusion, the attention kernel's launch
    (None: kernels.attention_decode's own choice for the shape), the MoE layers' fused step."""

    gemv_roles: frozenset[str] = frozenset()
    gemv_cfg: dict[tuple[int, int], GemvConfig] = field(default_factory=dict)
    attn_prep: bool = True
    attn_config: DecodeConfig | None = None
    moe_fused: bool = True

    def set_gemv(self, gemv: bool | Collection[str] | None, device: torch.device) -> None:
        """Which of the fused step's matmuls (GEMV_ROLES) run kernels.gemv instead of F.linear: True all,
        False none, None the default (all on CUDA, none on the CPU), or a set of roles."""
        if gemv is None:
            roles = GEMV_ROLES if device.type == "cuda" else frozenset()
        elif isinstance(gemv, bool):
            roles = GEMV_ROLES if gemv else frozenset()
        else:
            roles = frozenset(gemv)
            if roles - GEMV_ROLES:
                raise ValueError(
                    f"unknown gemv roles {sorted(roles - GEMV_ROLES)}; known: {sorted(GEMV_ROLES)}"
                )
        self.gemv_roles = roles

    def mm(self, role: str, x: Tensor, w: Tensor, b: Tensor | None = None) -> Tensor:
        """x w^T + b for one of the fused step's matmuls: kernels.gemv where its role is on, else F.linear."""
        return gemv_op(x, w, b, self.gemv_cfg.get(w.shape)) if role in self.gemv_roles else F.linear(x, w, b)


class EngineOps(Ops):
    """The engine's parts (see the module doc). `concat` maps a tuple of linears' ids to their stacked
    weight and bias (`plan_concat`); `fused` turns on the prep and SwiGLU kernels."""

    def __init__(
        self,
        buf: StaticState,
        kernels: StepKernels,
        *,
        concat: dict[tuple[int, ...], tuple[Tensor, Tensor | None]],
        fused: bool,
        attention: str,
    ) -> None:
        super().__init__()
        self.buf, self.kernels, self.concat = buf, kernels, concat
        self.fused, self.attention = fused, attention

    def positions(self, state: ModelState, T: int, device: torch.device) -> Tensor:
        assert T == 1, "the engine's step feeds one token"
        return self.buf.pos

    def rope(self, pos: Tensor, inv_freq: Tensor, theta: float) -> tuple[Tensor, Tensor]:
        cos, sin = super().rope(pos, inv_freq, theta)  # (1, T, 1, R)
        if self.buf.per_row:  # pos (B,): one token per row, each at its own position -> (B, 1, 1, R)
            return cos.transpose(0, 1), sin.transpose(0, 1)
        return cos, sin

    def cpu_row(self, role: str, x: Tensor, weight: Tensor) -> bool:
        """One CPU row of a matmul that no GEMV kernel takes: the model's own packed path
        (model/cpu_rows.py), so the engine's step on the CPU computes the model's numbers."""
        return self.cpu_rows and role not in self.kernels.gemv_roles and one_cpu_row(x, weight)

    def head_mm(self, owner: nn.Module, x: Tensor, weight: Tensor) -> Tensor:
        """The LM head's matmul in the fused step: `head_matmul` for one CPU row, else the step's choice."""
        if self.cpu_row("head", x, weight):
            return head_matmul(owner, x, weight)
        return self.kernels.mm("head", x, weight)

    def project(self, role: str, x: Tensor, linears: Sequence[nn.Linear]) -> Tensor:
        if self.cpu_row(role, x, linears[0].weight):
            return super().project(role, x, linears)
        stacked = self.concat.get(tuple(id(lin) for lin in linears))
        if stacked is not None:
            return self.kernels.mm(role, x, *stacked)
        if len(linears) == 1:
            return self.kernels.mm(role, x, linears[0].weight, linears[0].bias)
        return super().project(role, x, linears)

    def gated(self, x: Tensor, gate: nn.Linear, up: nn.Linear) -> Tensor:
        stacked = self.concat.get((id(gate), id(up)))
        if not self.fused or stacked is None or self.cpu_row("gate_up", x, gate.weight):
            return super().gated(x, gate, up)
        return silu_mul(self.kernels.mm("gate_up", x, *stacked))  # [gate | up] -> silu(gate) * up

    def moe_step(self, moe: nn.Module, flat: Tensor) -> Tensor | None:
        assert isinstance(moe, MoE)
        on = self.fused and self.kernels.moe_fused and gathers(moe.cfg, flat.shape[0]) and fusable(moe)
        return moe_step(self, moe, flat) if on else None

    def write(self, layer: LayerState, state: ModelState, new: dict[str, Tensor], pos: Tensor) -> None:
        store = layer.storage
        for name, t in new.items():  # (B, ..., 1, ...) at the cache's token axis
            if self.buf.per_row:  # row b at its own slot pos[b]
                write_rows(store[name], layer.axes[name], t, pos)
                continue
            store[name].index_copy_(layer.axes[name], pos, t.to(store[name].dtype))
        store["pos"].index_copy_(0, pos, pos)

    def attention_in(
        self, mixer: Attention, layer: LayerState, state: ModelState, qkv: Tensor, pos: Tensor
    ) -> Tensor:
        # a QK-norm over all heads split across tensor-parallel ranks sums its squares over them (the
        # model's RMSNorm `span`), which the one-launch prep does not: the model's ops run it then
        spans = mixer.qk_norm == "full" and getattr(mixer.q_norm.span, "world", 1) > 1
        if not (self.fused and self.kernels.attn_prep) or spans:
            return super().attention_in(mixer, layer, state, qkv, pos)
        B, H, Hkv, Dh = qkv.shape[0], mixer.n_heads, mixer.n_kv_heads, mixer.head_dim
        cos = sin = None
        if mixer.inv_freq is not None:
            cos, sin = self.rope(pos, mixer.inv_freq, mixer.rope_theta)
            # (R,) each at one position; per row (B, R), unless B == 1 (then pos is (1,) as ever)
            cos, sin = (t.reshape(B, -1) if pos.numel() > 1 else t.reshape(-1) for t in (cos, sin))
        norm = mixer.qk_norm if mixer.qk_norm in ("full", "head") else "none"
        q_w, k_w = (mixer.q_norm.weight, mixer.k_norm.weight) if norm != "none" else (None, None)
        eps = mixer.q_norm.eps if norm != "none" else 0.0
        q = attn_decode_prep(
            qkv.view(B, -1), q_w, k_w, cos, sin, pos, layer.storage["k"], layer.storage["v"],
            layer.storage["pos"], H=H, Hkv=Hkv, Dh=Dh, eps=eps, qk_norm=norm,
        )  # fmt: skip  # (B, H, Dh)
        return q.view(B, 1, H, Dh)

    def attend(
        self, mixer: Attention, layer: LayerState, state: ModelState, q: Tensor, pos: Tensor,
        gate: Tensor | None = None,
    ) -> Tensor:  # fmt: skip
        B, _, H, Dh = q.shape
        Hkv = mixer.n_kv_heads
        G = H // Hkv
        qg = q.reshape(B, Hkv, G, Dh)  # heads kvh * G + g: (B, 1, H, Dh) is (B, Hkv, G, Dh)
        k, v, scale = layer.storage["k"], layer.storage["v"], 1.0 / math.sqrt(Dh)
        if self.attention == "kernel":  # reads the length (pos + 1) on the device
            # the output gate (a view of the stacked projection's columns) applied in the kernel's last step;
            # a gate with non-contiguous channels (never from `project`) is applied after, as the model does
            fuse_gate = gate is not None and gate.stride(-1) == 1
            g = gate.view(B, Hkv, G, Dh) if fuse_gate else None  # type: ignore[union-attr]
            out = attention_decode(qg, k, v, pos, scale=scale, config=self.kernels.attn_config, gate=g)
            out = out.reshape(B, 1, H * Dh)  # (B, Hkv, G, Dh) is (B, H, Dh) in head order
            return out if fuse_gate else gated(out, gate)
        # the model's SDPA call over the first L slots (the new token's key is in the buffer)
        L = self.buf.n + 1
        out = sdpa(
            qg, k[:, :, :L].to(q.dtype), v[:, :, :L].to(q.dtype), None, scale, restrict=self.restrict_sdpa
        )  # (B, Hkv, G, Dh)
        return gated(out.reshape(B, 1, H * Dh), gate)

    def attend_latent(
        self, mixer: MLA, layer: LayerState, state: ModelState, q_nope: Tensor, q_rope: Tensor, pos: Tensor
    ) -> Tensor:
        latent, k_rope = layer.storage["latent"], layer.storage["k_rope"]  # (B, max_context, C | R)
        if self.attention != "kernel":
            L = self.buf.n + 1
            lat, rope = latent[:, :L].to(q_nope.dtype), k_rope[:, :L].to(q_nope.dtype)
            return mixer.attend_absorbed(q_nope, q_rope, lat, rope, None)
        q_lat = mixer.absorb_query(q_nope)[:, :, 0]  # (B, H, C)
        ctx = mla_decode(q_lat, q_rope[:, 0] * mixer.scale, latent, k_rope, pos)  # (B, H, C)
        return mixer.absorb_output(ctx[:, :, None])  # (B, 1, H, dv)


@torch.no_grad()
def plan_concat(
    model: HybridLM, *, share: bool, align: int
) -> dict[tuple[int, ...], tuple[Tensor, Tensor | None]]:
    """The stacked weights of the projections that read the same input, by their linears' ids: an
    attention layer's q|k|v (|g with an output gate), a Gated DeltaNet layer's q|k|v|a|b|g, MLA's
    q|kv_a (without a bias), an MLP's gate|up (exactly, no alignment rows: silu_mul splits the row in
    halves), an MoE's router|shared gate|shared up|shared-expert gate (model/decode/moe_step.py
    `input_linears`), whose shared gate|up rows are also the entry of that pair (a view: the layer's own
    forward with the engine's ops multiplies by it)."""
    groups: list[tuple[list[nn.Linear], int]] = []
    moes: list[MoE] = []
    for block in model.layers:
        a = block.mixer
        if isinstance(a, Attention | GatedDeltaNet):
            groups.append((list(a.in_projs), align))
        elif isinstance(a, MLA) and a.q_proj is not None and a.kv_a_proj_with_mqa.bias is None:
            groups.append(([a.q_proj, a.kv_a_proj_with_mqa], align))
        if isinstance(block.mlp, MoE) and fusable(block.mlp) and len(input_linears(block.mlp)) > 1:
            moes.append(block.mlp)
            continue
        mlp = getattr(block.mlp, "shared_expert", block.mlp)  # an MoE's shared expert is an MLP
        if isinstance(mlp, MLP) and mlp.gate_proj is not None:
            groups.append(([mlp.gate_proj, mlp.up_proj], 1))
    out = {tuple(id(lin) for lin in lins): _concat(lins, share, al) for lins, al in groups}
    for moe in moes:
        lins = input_linears(moe)
        w, _ = out[tuple(id(lin) for lin in lins)] = _concat(lins, share, align)
        s = moe.shared_expert
        if s is not None and s.gate_proj is not None:
            start = 0 if moe.router_fp32 else moe.n_experts
            out[(id(s.gate_proj), id(s.up_proj))] = (w[start : start + 2 * s.up_proj.out_features], None)
    return out


def _concat(linears: list[nn.Linear], share: bool, align: int = 1) -> tuple[Tensor, Tensor | None]:
    """The weights (and biases) of `linears` stacked along the output axis (then zero rows up to a multiple
    of `align`), for one matmul whose first outputs are the linears' in order. With `share`
    the linears' own parameters become views of the stacked tensors (same values, names and shapes; no
    memory doubled); a later engine over the same model finds them stacked already and reuses them."""
    key = (*(id(lin) for lin in linears), align)
    done = getattr(linears[0], "_engine_concat", None)
    if done is not None and done[0] == key:
        w, b = done[1], done[2]
        if all(lin.weight.data_ptr() == v.data_ptr() for lin, v in zip(linears, done[3], strict=True)):
            return w, b
    biases = [lin.bias for lin in linears]
    with_bias = all(b is not None for b in biases)
    if not with_bias and any(b is not None for b in biases):
        raise ModelError("cannot fuse projections where only some have a bias")
    sizes = [lin.out_features for lin in linears]
    # Zero rows up to a multiple of `align` outputs (16-byte rows): OLMo Hybrid's GDN q|k|v|a|b|g, 17,340
    # outputs, ran as cuBLAS' gemvx kernel at ~1.4 TB/s on the H100, where the projections whose outputs
    # are multiples of 16 ran as nvjet kernels at 2.6-2.9 TB/s (bench/results/gpu_e2e_fused.json,
    # profile). Padding to 16 (the CUDA default) took OLMo-7B-shaped decode at 1k from 133.9 to 155.3
    # tok/s in one run on the H100 (bench/results/gpu_e2e_final.json, decode_ours vs decode_aligned).
    pad = -sum(sizes) % align
    first = linears[0].weight
    w = torch.cat([lin.weight.detach() for lin in linears] + [first.new_zeros(pad, first.shape[1])], dim=0)
    b = None
    if with_bias:
        b = torch.cat([lin.bias.detach() for lin in linears] + [first.new_zeros(pad)], dim=0)  # type: ignore[union-attr]
    if share:
        for lin, view in zip(linears, w.split([*sizes, pad], dim=0), strict=False):
            lin.weight = nn.Parameter(view, requires_grad=False)
        if b is not None:
            for lin, view in zip(linears, b.split([*sizes, pad], dim=0), strict=False):
                lin.bias = nn.Parameter(view, requires_grad=False)
        linears[0]._engine_concat = (key, w, b, [lin.weight for lin in linears])  # type: ignore[assignment]
    return w, b
