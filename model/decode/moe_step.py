"""The decode engine's step of an MoE layer (model/moe.py `MoE`): the layer's own forward takes ~17
launches on a step's few tokens (router matmul, seven for the routing, the experts' two, the shared
expert's gate|up, SwiGLU and down, its gate's matmul, sigmoid, product and the sum); here it takes four:

1. one matmul of x by the stacked [router | shared expert's gate | up | shared-expert gate] rows
   (`input_linears`, stacked once by ops.py `plan_concat`; with `moe.router_fp32` the router stays its
   own fp32 matmul, as the model computes it);
2. kernels.moe_route on the router's columns (scores, choice bias, top-k, normalisation, scaling and the
   cast to the model's dtype); a grouped selection (n_groups > 1) runs the model's `MoE.route` instead;
3. and 4. kernels.moe_gemv: the chosen experts' gate|up launch, then the down launch, which also adds
   the shared expert (its hidden row from the stacked matmul's columns, its down rows, times the sigmoid
   of its gate column): the layer's output is written once.

The same numbers as the layer's forward up to rounding (tests/engine/test_engine_moe_step.py). Nothing
is read back to the host, so the step stays one CUDA graph. The engine's ops take this path when the
step is fused with `StepKernels.moe_fused` on (the default), the step's token-slots take the gathered
path (`gathers`), no linear of the layer has a bias and it has no latent space (`fusable`); otherwise
the layer's own forward runs with the engine's ops (still one CUDA graph: the gathered path reads
nothing back to the host).
"""

from __future__ import annotations

from hybrid_agent.kernels.moe import SharedExpert, moe_gemv
from hybrid_agent.kernels.moe_route import moe_route
from hybrid_agent.model.moe import MoE
from hybrid_agent.model.ops import Ops
from torch import Tensor, nn


def input_linears(moe: MoE) -> list[nn.Linear]:
    """The linears of `moe` that read its input, in the order of the stacked matmul's columns."""
    lins = [] if moe.router_fp32 else [moe.router]
    s = moe.shared_expert
    if s is not None:
        lins += [s.up_proj] if s.gate_proj is None else [s.gate_proj, s.up_proj]
        if moe.shared_expert_gate is not None:
            lins.append(moe.shared_expert_gate)
    return lins


def fusable(moe: MoE) -> bool:
    """Whether the layer's step can run here: no bias on its input linears or the shared expert's down
    (the down launch adds no bias), and no latent space (`moe.latent_dim`: the routed experts' sum is
    projected up before the shared expert's output joins it, which the down launch does not do)."""
    if moe.latent_in is not None:
        return False
    s = moe.shared_expert
    lins = [*input_linears(moe), *(() if s is None else (s.down_proj,))]
    return all(lin.bias is None for lin in lins)


def moe_step(ops: Ops, moe: MoE, flat: Tensor) -> Tensor:
    """The layer on its tokens `flat` (N, D) -> (N, D), in the launches of the module doc."""
    lins = input_linears(moe)
    stacked = ops.project("gate_up", flat, lins) if lins else flat  # (N, E + 2 I_s + 1 [+ pad])
    if moe.router_fp32:
        logits, off = moe.logits(flat, ops), 0
    else:
        logits, off = stacked[:, : moe.n_experts], moe.n_experts
    shared = None
    s = moe.shared_expert
    if s is not None:
        width = s.up_proj.out_features * (1 if s.gate_proj is None else 2)
        gate = stacked[:, off + width : off + width + 1] if moe.shared_expert_gate is not None else None
        shared = SharedExpert(stacked[:, off : off + width], s.down_proj.weight, gate)
    if moe.n_groups == 1:
        weights, ids = moe_route(
            logits, moe.top_k, scoring=moe.scoring, bias=moe.score_bias, norm=moe.norm_topk_prob,
            scaling=moe.routed_scaling, out_dtype=flat.dtype,
        )  # fmt: skip
    else:
        w, ids = moe.route(logits)
        weights = w.to(flat.dtype)
    e = moe.experts
    return moe_gemv(flat, ids, weights, e.gate_proj, e.up_proj, e.down_proj, shared=shared)
