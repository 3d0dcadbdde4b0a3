"""kernels/: one op per module. Each has a pure-torch `*_ref` (the definition) and a public function
that dispatches by device (Triton on CUDA, the reference elsewhere; see kernels/_dispatch.py).
Signatures are fixed by docs/interfaces.md. kernels/ imports nothing else of ours."""

from hybrid_agent.kernels.attn_decode_prep import attn_decode_prep
from hybrid_agent.kernels.causal_conv1d import causal_conv1d, causal_conv1d_step
from hybrid_agent.kernels.checks import GemvConfig
from hybrid_agent.kernels.errors import KernelInputError
from hybrid_agent.kernels.gated_delta_rule import chunk_gated_delta_rule
from hybrid_agent.kernels.gated_delta_rule_step import gated_delta_rule_step
from hybrid_agent.kernels.gdn_decode_prep import gdn_decode_prep
from hybrid_agent.kernels.gdn_gates import gdn_gates
from hybrid_agent.kernels.gemv import gemv
from hybrid_agent.kernels.greedy_advance import greedy_advance
from hybrid_agent.kernels.kda import chunk_kda
from hybrid_agent.kernels.kda_step import kda_step
from hybrid_agent.kernels.l2_norm import l2_norm
from hybrid_agent.kernels.mla_decode import mla_decode
from hybrid_agent.kernels.moe import moe_gemv, moe_grouped_gemm
from hybrid_agent.kernels.moe_route import moe_route
from hybrid_agent.kernels.residual_rms_norm import residual_rms_norm
from hybrid_agent.kernels.rms_norm import gated_rms_norm, rms_norm
from hybrid_agent.kernels.silu_mul import silu_mul
from hybrid_agent.kernels.ssd_scan import ssd_scan
from hybrid_agent.kernels.ssm_step import ssm_step

__all__ = [
    "GemvConfig",
    "KernelInputError",
    "attn_decode_prep",
    "causal_conv1d",
    "causal_conv1d_step",
    "chunk_gated_delta_rule",
    "chunk_kda",
    "gated_delta_rule_step",
    "gated_rms_norm",
    "gdn_decode_prep",
    "gdn_gates",
    "gemv",
    "greedy_advance",
    "kda_step",
    "l2_norm",
    "mla_decode",
    "moe_gemv",
    "moe_grouped_gemm",
    "moe_route",
    "residual_rms_norm",
    "rms_norm",
    "silu_mul",
    "ssd_scan",
    "ssm_step",
]
