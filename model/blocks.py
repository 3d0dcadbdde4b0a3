"""One residual block per layer, and the registry that maps each layer kind to its mixer.

A block is `x + mixer(norm(x))` then `x + mlp(norm(x))` (pre-norm), or with `norm_position="post"` on
the mixer's sub-config `x + norm(mixer(x))` then `x + norm(mlp(x))` (OLMo-2 style). Weight names:
`mixer_norm`, `mixer`, `mlp_norm`, `mlp` (absent for the mlp-only kind / when the MLP is off). The
`mlp` of the layers `cfg.moe` chooses (by index) is a mixture of experts (model/moe.py); it is called
like the MLP, `mlp(x, ops)`.

To add a layer kind: a mixer class `(cfg) -> nn.Module` with `forward(x, layer_state, model_state, ops)`
(model/ops.py),
an entry in `MIXERS` here, in `state.STATE_SPECS`, and in `config.LAYER_TYPES`.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from hybrid_agent.model.attention import Attention
from hybrid_agent.model.config import HybridConfig
from hybrid_agent.model.gated_deltanet import GatedDeltaNet
from hybrid_agent.model.kda import KimiDeltaAttention
from hybrid_agent.model.layers import MLP, RMSNorm
from hybrid_agent.model.mamba2 import Mamba2Mixer
from hybrid_agent.model.mla import MLA
from hybrid_agent.model.moe import MoE
from hybrid_agent.model.ops import Ops
from hybrid_agent.model.short_conv import ShortConv
from hybrid_agent.model.state import LayerState, ModelState
from torch import Tensor, nn


class ParallelMixer(nn.Module):
    """Attention (GQA, or MLA with `parallel_attention="mla"`) and Mamba-2 on the same input, fused by a
    learned per-channel gate.

    y = sigmoid(gate) * attention(x) + (1 - sigmoid(gate)) * mamba(x); `gate` (D,) starts at 0 (an even
    mix). Checkpoints that add the two with fixed multipliers (Falcon-H1) load by folding
    `multiplier / mix` into each branch's output projection.
    """

    def __init__(self, cfg: HybridConfig) -> None:
        super().__init__()
        self.attention = MLA(cfg) if cfg.parallel_attention == "mla" else Attention(cfg)
        self.mamba = Mamba2Mixer(cfg)
        self.gate = nn.Parameter(torch.zeros(cfg.d_model))

    def forward(self, x: Tensor, layer: LayerState, state: ModelState, ops: Ops | None = None) -> Tensor:
        ops = ops or Ops()
        mix = torch.sigmoid(self.gate.float()).to(x.dtype)  # (D,)
        return mix * self.attention(x, layer, state, ops) + (1 - mix) * self.mamba(
            x, layer, state, ops
        )  # (B, T, D)


MixerFactory = Callable[[HybridConfig], nn.Module]

MIXERS: dict[str, MixerFactory | None] = {
    "attention": Attention,
    "mamba2": Mamba2Mixer,
    "gated_deltanet": GatedDeltaNet,
    "parallel": ParallelMixer,
    "mlp": None,  # feed-forward only
    "mla": MLA,
    "short_conv": ShortConv,
    "kda": KimiDeltaAttention,
}

_SUBCONFIG = {
    "attention": "attention",
    "mamba2": "mamba2",
    "gated_deltanet": "gated_deltanet",
    "parallel": "mamba2",
    "mla": "mla",
    "short_conv": "short_conv",
    "kda": "kda",
}


def _same(x: Tensor) -> Tensor:
    return x


class Block(nn.Module):
    """`reduce` sums a sub-layer's output over the tensor-parallel ranks (model/parallel.py): each rank's
    mixer and MLP give the part of their row-parallel output projection that its heads hold."""

    def __init__(
        self, cfg: HybridConfig, kind: str, index: int = 0, reduce: Callable[[Tensor], Tensor] = _same
    ) -> None:
        super().__init__()
        self.kind, self.reduce = kind, reduce
        factory = MIXERS[kind]
        sub = _SUBCONFIG.get(kind)
        self.post_norm = sub is not None and getattr(cfg, sub).norm_position == "post"
        self.mixer_norm = RMSNorm(cfg.d_model, cfg.norm_eps) if factory else None
        self.mixer = factory(cfg) if factory else None
        has_mlp = cfg.mlp.enabled and (factory is None or cfg.mlp.in_mixer_layers)
        self.mlp_norm = RMSNorm(cfg.d_model, cfg.norm_eps) if has_mlp else None
        self.mlp: MLP | MoE | None = None
        if has_mlp:
            self.mlp = MoE(cfg) if cfg.moe.used_in(index) else MLP(cfg)

    def forward(self, x: Tensor, layer: LayerState, state: ModelState, ops: Ops | None = None) -> Tensor:
        ops = ops or Ops()
        if self.mixer is not None and self.mixer_norm is not None:
            if self.post_norm:
                x = x + self.mixer_norm(self.reduce(self.mixer(x, layer, state, ops)))
            else:
                x = x + self.reduce(self.mixer(self.mixer_norm(x), layer, state, ops))
        if self.mlp is not None and self.mlp_norm is not None:
            if self.post_norm:
                x = x + self.mlp_norm(self.reduce(self.mlp(x, ops)))
            else:
                x = x + self.reduce(self.mlp(self.mlp_norm(x), ops))
        return x  # (B, T, D)
