"""The fused one-token step (`DecodeEngine(fuse=True)`, the default with the attention kernel): the
model's T == 1 arithmetic with fewer, larger launches (see model/decode/engine.py's module doc):
concatenated projections, kernels.gdn_decode_prep, kernels.attn_decode_prep, residual + RMSNorm fused,
SiLU x up, kernels.gemv for the one-token matmuls on CUDA, and the greedy advance at the end.
"""

from __future__ import annotations

import math
from collections.abc import Collection
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from hybrid_agent.kernels import GemvConfig, gated_delta_rule_step, rms_norm
from hybrid_agent.kernels.attention_decode import DecodeConfig, attention_decode
from hybrid_agent.kernels.attn_decode_prep import attn_decode_prep
from hybrid_agent.kernels.gdn_decode_prep import gdn_decode_prep
from hybrid_agent.kernels.gemv import gemv as gemv_op
from hybrid_agent.kernels.mla_decode import mla_decode
from hybrid_agent.kernels.residual_rms_norm import residual_rms_norm
from hybrid_agent.kernels.silu_mul import silu_mul
from hybrid_agent.model.attention import Attention
from hybrid_agent.model.decode.buffers import StaticState
from hybrid_agent.model.errors import ModelError
from hybrid_agent.model.hybrid import HybridLM
from hybrid_agent.model.layers import rope_cos_sin, rotate
from hybrid_agent.model.mla import MLA
from hybrid_agent.model.state import LayerState
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
    (None: kernels.attention_decode's own choice for the shape)."""

    gemv_roles: frozenset[str] = frozenset()
    gemv_cfg: dict[tuple[int, int], GemvConfig] = field(default_factory=dict)
    attn_prep: bool = True
    attn_config: DecodeConfig | None = None

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


class FusedStep:
    """The fused step over `buf` (see the module doc); `plans[i]` holds block i's concatenated weights."""

    def __init__(self, model: HybridLM, buf: StaticState, kernels: StepKernels, align: int) -> None:
        self.model, self.buf, self.kernels = model, buf, kernels
        self.plans = self._fuse_weights(align)

    @torch.no_grad()
    def _fuse_weights(self, align: int) -> list[dict[str, object]]:
        """Per block, the concatenated weights the fused step multiplies by (see the module doc)."""
        share = self.buf.device.type == "cuda"  # rebind the model's weights as views: no memory doubled
        plans: list[dict[str, object]] = []
        for block in self.model.layers:
            plan: dict[str, object] = {}
            a = block.mixer
            if isinstance(a, Attention):
                plan["w_in"], plan["b_in"] = _concat([a.q_proj, a.k_proj, a.v_proj], share, align)
            elif block.kind == "gated_deltanet":
                lins = [a.q_proj, a.k_proj, a.v_proj, a.a_proj, a.b_proj, a.g_proj]
                plan["w_in"], _ = _concat(lins, share, align)
                plan["a_off"] = 2 * a.key_dim + a.value_dim
                plan["b_off"] = plan["a_off"] + a.n_v_heads
                plan["g_off"] = plan["b_off"] + a.n_v_heads
            elif isinstance(a, MLA) and a.q_proj is not None and a.kv_a_proj_with_mqa.bias is None:
                plan["w_in"], _ = _concat([a.q_proj, a.kv_a_proj_with_mqa], share, align)
            if block.mlp is not None and block.mlp.gate_proj is not None:
                # [gate | up] exactly (silu_mul splits the row in halves): no alignment rows
                plan["w_gu"], plan["b_gu"] = _concat([block.mlp.gate_proj, block.mlp.up_proj], share, align=1)
            plans.append(plan)
        return plans

    def __call__(self) -> None:
        m, buf = self.model, self.buf
        x, eps = buf.x, m.config.norm_eps
        x.copy_(m.embed_tokens(buf.tok))
        pending: list[tuple[Tensor, Tensor | None]] = []  # the last sub-layer's output, not yet added to x

        def settle(w_out: Tensor | None) -> Tensor:
            """Add the pending output to x (normalised first for post-norm), then norm x by w_out."""
            if not pending:
                return x if w_out is None else rms_norm(x, w_out, eps)
            y, w_y = pending.pop()
            out = residual_rms_norm(x, y, w_y, w_out, eps)
            return x if out is None else out

        rope: dict[str, Tensor] = {}  # cos/sin at this position
        for block, ls, plan in zip(m.layers, buf.state.layers, self.plans, strict=True):
            post = block.post_norm
            if block.mixer is not None:
                h = settle(None if post else block.mixer_norm.weight)
                if block.kind == "gated_deltanet":
                    y = self._gdn(block.mixer, ls, h, plan)
                elif block.kind == "attention":
                    y = self._attention(block.mixer, ls, h, plan, rope)
                elif block.kind == "mla":
                    y = mla_step(block.mixer, ls, h, plan.get("w_in"), buf.pos)  # type: ignore[arg-type]
                else:
                    y = block.mixer(h, ls, buf.state)  # mamba2: the model's T == 1 path
                pending.append((y, block.mixer_norm.weight if post else None))
            if block.mlp is not None:
                h = settle(None if post else block.mlp_norm.weight)
                if "w_gu" in plan:
                    z = silu_mul(self.kernels.mm("gate_up", h, plan["w_gu"], plan["b_gu"]))  # type: ignore[arg-type]
                    down = block.mlp.down_proj
                    y = self.kernels.mm("down", z, down.weight, down.bias)
                else:
                    y = block.mlp(h)
                pending.append((y, block.mlp_norm.weight if post else None))
        h = settle(m.norm.weight)
        weight = m.embed_tokens.weight if m.lm_head is None else m.lm_head.weight
        buf.logits.copy_(self.kernels.mm("head", h, weight)[:, 0])
        buf.advance()

    def _gdn(self, a: nn.Module, ls: LayerState, h: Tensor, plan: dict[str, object]) -> Tensor:
        B = h.shape[0]
        proj = self.kernels.mm("gdn_in", h.view(B, -1), plan["w_in"])  # type: ignore[arg-type]  # (B, q|k|v|a|b|g)
        q, k, v, g, beta = gdn_decode_prep(
            proj, ls.recurrent["conv"], a.conv1d.weight.squeeze(1), a.conv1d.bias, a.A_log, a.dt_bias,
            Hk=a.n_heads, Dk=a.head_k_dim, Hv=a.n_v_heads, Dv=a.head_v_dim, a_off=plan["a_off"],
            b_off=plan["b_off"], allow_neg_eigval=a.allow_neg_eigval,
        )  # fmt: skip
        o = gated_delta_rule_step(ls.recurrent["recurrent"], q, k, v, g, beta)  # (B, Hv, Dv)
        g_off = int(plan["g_off"])  # type: ignore[call-overload]
        gate = proj[:, g_off : g_off + a.value_dim].view(B, a.n_v_heads, a.head_v_dim)
        o = a.o_norm(o, gate)  # (B, Hv, Dv)
        o = o.reshape(B, 1, a.value_dim).to(h.dtype)
        return self.kernels.mm("gdn_out", o, a.o_proj.weight, a.o_proj.bias)

    def _attend(self, q: Tensor, ls: LayerState, Dh: int) -> Tensor:
        """kernels.attention_decode over the layer's buffers, up to the device-side position."""
        k, v = ls.storage["k"], ls.storage["v"]
        return attention_decode(
            q, k, v, self.buf.pos, scale=1.0 / math.sqrt(Dh), config=self.kernels.attn_config
        )

    def _attention(
        self, a: Attention, ls: LayerState, h: Tensor, plan: dict[str, object], rope: dict[str, Tensor]
    ) -> Tensor:
        B, H, Hkv, Dh = h.shape[0], a.n_heads, a.n_kv_heads, a.head_dim
        qkv = self.kernels.mm("attn_in", h, plan["w_in"], plan["b_in"])  # type: ignore[arg-type]  # (B, 1, (H + 2 Hkv) Dh)
        q, k, v = (
            qkv[..., : H * Dh],
            qkv[..., H * Dh : (H + Hkv) * Dh],
            qkv[..., (H + Hkv) * Dh : (H + 2 * Hkv) * Dh],
        )
        if a.inv_freq is not None and not rope:  # every attention layer has the config's inv_freq
            rope["cos"], rope["sin"] = rope_cos_sin(self.buf.pos, a.inv_freq)  # (1, 1, 1, R) each
        G = H // Hkv
        if self.kernels.attn_prep:  # QK-norm, RoPE and both cache writes: one kernels.attn_decode_prep launch
            cos, sin = (rope["cos"].view(-1), rope["sin"].view(-1)) if rope else (None, None)
            norm = a.qk_norm if a.qk_norm in ("full", "head") else "none"
            q_w, k_w = (a.q_norm.weight, a.k_norm.weight) if norm != "none" else (None, None)
            eps = a.q_norm.eps if norm != "none" else 0.0
            q = attn_decode_prep(
                qkv.view(B, -1), q_w, k_w, cos, sin, self.buf.pos, ls.storage["k"], ls.storage["v"],
                ls.storage["pos"], H=H, Hkv=Hkv, Dh=Dh, eps=eps, qk_norm=norm,
            )  # fmt: skip  # (B, H, Dh)
            qg = q.view(B, Hkv, G, Dh)  # heads kvh * G + g: (B, Hkv, G, Dh) is (B, H, Dh)
            out = self._attend(qg, ls, Dh)
            return self.kernels.mm("attn_out", out.reshape(B, 1, H * Dh), a.o_proj.weight, a.o_proj.bias)
        if a.qk_norm == "full":
            q, k = a.q_norm(q), a.k_norm(k)
        q, k, v = q.view(B, 1, H, Dh), k.view(B, 1, Hkv, Dh), v.view(B, 1, Hkv, Dh)
        if a.qk_norm == "head":
            q, k = a.q_norm(q), a.k_norm(k)
        if a.inv_freq is not None:
            q, k = rotate(q, rope["cos"], rope["sin"]), rotate(k, rope["cos"], rope["sin"])
        self.buf.write_kv(ls.storage, k, v)
        qg = q.view(B, Hkv, G, Dh) if G == 1 or B == 1 else q.transpose(1, 2).reshape(B, Hkv, G, Dh)
        out = self._attend(qg, ls, Dh)
        # (B, Hkv, G, Dh) is (B, H, Dh) in head order
        out = out.reshape(B, 1, H * Dh)  # (B, Hkv, G, Dh) is (B, H, Dh) in head order
        return self.kernels.mm("attn_out", out, a.o_proj.weight, a.o_proj.bias)  # (B, 1, D)


def mla_step(a: MLA, ls: LayerState, h: Tensor, w_in: Tensor | None, pos: Tensor) -> Tensor:
    """MLA.forward for T == 1 in the absorbed form over the latent cache, at the device-side
    position: (B, 1, D) -> (B, 1, D). `w_in`: q_proj and kv_a_proj_with_mqa concatenated (or None)."""
    B, H, C, R, dn = h.shape[0], a.n_heads, a.kv_lora_rank, a.rope_dim, a.nope_dim
    qd = H * (dn + R)
    if w_in is not None:
        both = F.linear(h, w_in)  # (B, 1, H*(dn+R) + C + R)
        q, kv = both[..., :qd], both[..., qd : qd + C + R]  # (alignment rows past the end)
    else:
        q = a.q_proj(h) if a.q_proj is not None else a.q_b_proj(a.q_a_layernorm(a.q_a_proj(h)))
        kv = a.kv_a_proj_with_mqa(h)
    q_nope, q_rope = q.view(B, 1, H, dn + R).split((dn, R), dim=-1)  # (B, 1, H, dn), (B, 1, H, R)
    latent, k_rope = kv.split((C, R), dim=-1)  # (B, 1, C), (B, 1, R)
    latent = a.kv_a_layernorm(latent)
    q_rope = a._rope(q_rope, pos)
    k_rope = a._rope(k_rope[:, :, None], pos)[:, :, 0]  # (B, 1, R)
    store = ls.storage
    store["latent"].index_copy_(1, pos, latent.to(store["latent"].dtype))  # (B, max_context, C)
    store["k_rope"].index_copy_(1, pos, k_rope.to(store["k_rope"].dtype))
    store["pos"].index_copy_(0, pos, pos)
    w = a.kv_b_proj.weight.view(H, dn + a.v_dim, C)  # (H, dn + dv, C)
    q_lat = torch.bmm((q_nope[:, 0] * a.scale).transpose(0, 1), w[:, :dn])  # (H, B, C)
    q_rot = q_rope[:, 0] * a.scale  # (B, H, R)
    ctx = mla_decode(q_lat.transpose(0, 1), q_rot, store["latent"], store["k_rope"], pos)  # (B, H, C)
    out = torch.bmm(ctx.transpose(0, 1), w[:, dn:].transpose(1, 2))  # (H, B, dv)
    return a.o_proj(out.transpose(0, 1).reshape(B, 1, H * a.v_dim))  # (B, 1, D)


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
