"""Measured launch configs of kernels.moe_gemv, for the shapes where a sweep found one faster than the
rule in kernels/moe.py (`heuristic_gemv_config`). `default_gemv_config` returns the entry for a call's
shape when there is one, else the rule, so a measured choice takes effect without a code change.

Keys are (d, i, top_k, batch bucket): the model's hidden size, the experts' hidden size, the experts a
token uses, and the step's token count rounded up to a power of two (`batch_bucket`: 1, 2, 4, 8, ...).
Entries come from bench/gpu_moe.py's `tune` section (bench/gpu_moe_tune.py), which prints the line to
paste for each shape and batch it swept, with the card and the times beside it. The entries below are
from one sweep on an NVIDIA H100 80GB HBM3 (bench/results/gpu_moe_tune_h100_s8.json; docs/results.md
"Qwen3.5 shapes"): Qwen3.5-35B-A3B's experts (2048 -> 512, top 8) and Nemotron 3 Nano's (2688 -> 1856,
top 6), at 1 and 4 tokens a step.
"""

from __future__ import annotations

from hybrid_agent.kernels.checks import MoeGemvConfig, next_pow2

GEMV_TUNED: dict[tuple[int, int, int, int], MoeGemvConfig] = {
    # NVIDIA H100 80GB HBM3: 22.5 us, 26.0 us for the rule's config
    (2048, 512, 8, 1): MoeGemvConfig(block_i=1, block_d_in=2048, block_d=2, block_i_in=512, num_warps=2),
    # NVIDIA H100 80GB HBM3: 73.5 us, 95.9 us for the rule's config
    (2048, 512, 8, 4): MoeGemvConfig(block_i=32, block_d_in=128, block_d=32, block_i_in=128, num_warps=8),
    # NVIDIA H100 80GB HBM3: 47.0 us, 52.5 us for the rule's config
    (2688, 1856, 6, 1): MoeGemvConfig(block_i=2, block_d_in=512, block_d=4, block_i_in=512, num_warps=2),
    # NVIDIA H100 80GB HBM3: 159.0 us, 183.9 us for the rule's config
    (2688, 1856, 6, 4): MoeGemvConfig(block_i=2, block_d_in=1024, block_d=2, block_i_in=1024, num_warps=4),
}


def batch_bucket(n_tokens: int) -> int:
    """The table's batch key: the smallest power of two at least `n_tokens` (1 for 0 or 1)."""
    return next_pow2(n_tokens)


def tuned_gemv_config(n_tokens: int, top_k: int, d: int, i: int) -> MoeGemvConfig | None:
    """The table's config for this call's shape, or None."""
    return GEMV_TUNED.get((d, i, top_k, batch_bucket(n_tokens)))
