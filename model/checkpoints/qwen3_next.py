"""Qwen3-Next: the stack Qwen3.5 inherited (model/checkpoints/qwen3_5.py): Gated DeltaNet layers with
gated full attention every few layers, zero-centred norms, partial RoPE, and mixture-of-experts MLPs
(model/moe.py) on the layers `decoder_sparse_step` / `mlp_only_layers` choose (a dense SwiGLU of
`intermediate_size` elsewhere), with `norm_topk_prob` read from the config.

transformers: `Qwen3NextForCausalLM` (model_type "qwen3_next", weights under `model.`). What differs
from Qwen3.5 is only how a Gated DeltaNet layer stores its input projections, mapped at load (no new
math): per key head (Hk of them, r = Hv / Hk value heads each),
- `in_proj_qkvz` (Hk * (2 Dk + 2 r Dv), D) holds that head's rows [q (Dk) | k (Dk) | v (r Dv) | z (r Dv)];
  our q / k / v / g (the output gate z) projections gather them head after head;
- `in_proj_ba` (Hk * 2r, D) holds [b (r) | a (r)]; our b_proj / a_proj gather them likewise.
Value head j of key head h is value head h * r + j, as in our layer.
"""

from __future__ import annotations

from typing import Any

from hybrid_agent.model.checkpoints.plan import Source, get
from hybrid_agent.model.checkpoints.qwen3_5 import config_from_text, names, stack_sources
from hybrid_agent.model.config import HybridConfig
from torch import Tensor

FAMILY = "qwen3_next"


def hybrid_config(hf: dict[str, Any]) -> HybridConfig:
    return config_from_text(hf, tie=get(hf, "tie_word_embeddings", False))


def sources(cfg: HybridConfig, hf: dict[str, Any]) -> dict[str, Source]:
    return stack_sources(cfg, _interleaved_gdn)


def _per_key_head(name: str, hk: int, sizes: list[int], which: int) -> Source:
    """Rows `which` of each key head's block [sizes[0] | sizes[1] | ...] of `name`, head after head."""
    start = sum(sizes[:which])

    def pick(ts: list[Tensor]) -> Tensor:
        t = ts[0].reshape(hk, sum(sizes), -1)  # (Hk, block, D)
        return t[:, start : start + sizes[which]].reshape(hk * sizes[which], -1)

    return Source((names(name),), pick)


def _interleaved_gdn(cfg: HybridConfig, g: str, dst: str) -> dict[str, Source]:
    gd = cfg.gated_deltanet
    assert gd.n_heads and gd.n_v_heads and gd.head_k_dim and gd.head_v_dim  # set by HybridConfig
    hk, r, dk, dv = gd.n_heads, gd.n_v_heads // gd.n_heads, gd.head_k_dim, gd.head_v_dim
    qkvz, ba = f"{g}in_proj_qkvz.weight", f"{g}in_proj_ba.weight"
    big = [dk, dk, r * dv, r * dv]
    return {
        f"{dst}q_proj.weight": _per_key_head(qkvz, hk, big, 0),
        f"{dst}k_proj.weight": _per_key_head(qkvz, hk, big, 1),
        f"{dst}v_proj.weight": _per_key_head(qkvz, hk, big, 2),
        f"{dst}g_proj.weight": _per_key_head(qkvz, hk, big, 3),
        f"{dst}b_proj.weight": _per_key_head(ba, hk, [r, r], 0),
        f"{dst}a_proj.weight": _per_key_head(ba, hk, [r, r], 1),
    }
