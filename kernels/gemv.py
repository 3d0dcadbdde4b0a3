"""`gemv(x, w, b)`: y = x w^T (+ b) for one row of x, the one-token matmul of a batch-1 decode step.

At batch 1 a decode step's matmuls are matrix-vector products: every weight byte is read once and used
for one multiply-add, so they are bound by memory bandwidth alone. cuBLAS runs them as nvjet / splitK
kernels at ~2.6-2.7 TB/s on the H100 (bench/results/gpu_e2e_final.json, profile), under the ~3.0 TB/s
of a device-to-device copy; `kernels/triton_gemv.py` streams W with wide loads and many programs over N
(split over K, with a deterministic second pass, where N alone gives too few programs).

- x (..., K), w (N, K) row-major and contiguous, b (N,) or None, all of one floating dtype; returns
  (..., N) in that dtype, accumulated in fp32 and rounded once (as cuBLAS does).
- `gemv_ref` is the definition (F.linear). Dispatch: Triton on CUDA (kernels/_dispatch.py) for one row;
  more rows go to the reference (cuBLAS), which reads W once for all of them. Why no few-rows form of
  the kernel: a (rows, N, K) product tile held in registers forces K blocks of 32-64 elements, and the
  batched engine's step at 8 rows through such a form took 73 ms against 20 ms at 32 rows through
  cuBLAS on the H100 (bench/results/gpu_serve_h100_s7.json; docs/results.md, "`hybrid-agent serve` on
  the GPU").
- Block shapes: `gemv_config` picks them per (N, K), from the read-only `CONFIGS` (measured on the
  device: bench/gpu_gemv.py) or from `default_config` for shapes not in the table; a caller may pass
  its own as `config=` (the engine's `gemv_configs`, the benchmarks' sweeps).
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType

import torch
import torch.nn.functional as F
from hybrid_agent.kernels._dispatch import use_triton
from hybrid_agent.kernels.checks import GemvConfig, check_gemv

MAX_ROWS = 1  # more rows than this: cuBLAS (see the module doc)


# (N, K) -> config: the fastest of bench/gpu_gemv.py's candidates per shape in one device run (NVIDIA
# H100 80GB HBM3, triton 3.6, bf16, 1 row; bench/results/gpu_gemv.json), at OLMo Hybrid 7B's one-token
# matmuls; in () the time vs cuBLAS in the same run. Shapes not listed use default_config.
CONFIGS: Mapping[tuple[int, int], GemvConfig] = MappingProxyType({
    (22016, 3840): GemvConfig(16, 256, 1, 4, 4),  # MLP gate|up: 57.3 us, 2949 GB/s (cuBLAS 65.3 us)
    (3840, 11008): GemvConfig(16, 256, 2, 4, 2),  # MLP down: 31.2 us, 2707 GB/s (34.5 us)
    (17344, 3840): GemvConfig(16, 256, 1, 4, 2),  # GDN q|k|v|a|b|g, 16-aligned: 45.1 us, 2955 GB/s (47.9 us)
    (3840, 5760): GemvConfig(8, 512, 1, 4, 2),  # GDN out: 16.9 us, 2612 GB/s (20.3 us)
    (11520, 3840): GemvConfig(16, 256, 1, 4, 4),  # attention q|k|v: 32.1 us, 2758 GB/s (34.4 us)
    (3840, 3840): GemvConfig(8, 512, 1, 4, 2),  # attention out: 11.9 us, 2488 GB/s (12.7 us)
    (100352, 3840): GemvConfig(8, 512, 1, 4, 2),  # LM head: 246.4 us, 3128 GB/s (269.0 us)
})  # fmt: skip


def default_config(n: int, k: int, sms: int = 132) -> GemvConfig:
    """Enough programs to fill the chip several times over: 16 rows each, split over K when N / 16 alone
    gives fewer than ~4 programs per SM (the down projection: N = 3840 -> 240 programs)."""
    programs = -(-n // 16)
    split = 1
    while programs * split < 4 * sms and split < 8 and k // (2 * split) >= 1024:
        split *= 2
    return GemvConfig(16, 256, split, 4, 2)


def gemv_config(device: torch.device, shape: tuple[int, int], dtype: torch.dtype) -> GemvConfig:
    """The launch for a weight of `shape` (N, K): the table's entry, else `default_config`'s (one
    choice for every device and dtype; the table was measured in bf16 on the H100)."""
    del device, dtype  # no choice depends on them yet
    n, k = shape
    return CONFIGS.get((n, k)) or default_config(n, k)


def gemv_ref(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None = None) -> torch.Tensor:
    check_gemv(x, w, b)
    return F.linear(x, w, b)


def gemv(
    x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None = None, config: GemvConfig | None = None
) -> torch.Tensor:
    """y = x w^T + b (see the module doc); `config` overrides the table (benchmarks sweep it)."""
    check_gemv(x, w, b)
    rows = x.numel() // max(1, x.shape[-1])
    if use_triton(x) and rows <= MAX_ROWS and w.is_contiguous():
        from hybrid_agent.kernels.triton_gemv import gemv_triton

        cfg = config or gemv_config(w.device, (w.shape[0], w.shape[1]), w.dtype)
        return gemv_triton(x, w, b, cfg)
    return F.linear(x, w, b)
