"""Measured launch configs of kernels.moe_gemv, for the shapes where a sweep found one faster than the
rule in kernels/moe.py (`heuristic_gemv_config`). `default_gemv_config` returns the entry for a call's
shape when there is one, else the rule, so a measured choice takes effect without a code change.

Keys are (d, i, top_k, batch bucket): the model's hidden size, the experts' hidden size, the experts a
token uses, and the step's token count rounded up to a power of two (`batch_bucket`: 1, 2, 4, 8, ...).
Entries come from bench/gpu_moe.py's `tune` section (bench/gpu_moe_tune.py), which prints the line to
paste for each shape and batch it swept, with the card and the times beside it. The table holds no entry
until such a sweep has been run on the device.
"""

from __future__ import annotations

from hybrid_agent.kernels.checks import MoeGemvConfig, next_pow2

GEMV_TUNED: dict[tuple[int, int, int, int], MoeGemvConfig] = {}


def batch_bucket(n_tokens: int) -> int:
    """The table's batch key: the smallest power of two at least `n_tokens` (1 for 0 or 1)."""
    return next_pow2(n_tokens)


def tuned_gemv_config(n_tokens: int, top_k: int, d: int, i: int) -> MoeGemvConfig | None:
    """The table's config for this call's shape, or None."""
    return GEMV_TUNED.get((d, i, top_k, batch_bucket(n_tokens)))
