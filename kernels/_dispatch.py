"""Where each public op picks its implementation.

Triton on CUDA tensors, the pure-torch reference everywhere else. `HYBRID_AGENT_KERNELS` overrides it,
read on every call so tests can flip it with `monkeypatch.setenv`:

- `auto` (default): Triton when the tensor is on CUDA and Triton imports; on the CPU the ops that
  have one run a faster torch implementation of the reference's arithmetic (`*_cpu`, tested equal to
  the `*_ref`), the others the reference.
- `ref`: always the reference (useful to bisect a numerical difference on the GPU).
- `triton`: always Triton; on the CPU that only works under `TRITON_INTERPRET=1` (how the default test
  run checks every kernel against its reference without a GPU).
"""

from __future__ import annotations

import os
from functools import cache

import torch
from hybrid_agent.kernels.errors import KernelInputError

ENV_VAR = "HYBRID_AGENT_KERNELS"


@cache
def triton_available() -> bool:
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return True


def interpreter_on() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def use_triton(x: torch.Tensor) -> bool:
    """True when the op should run its Triton kernel for an input living where `x` lives."""
    mode = os.environ.get(ENV_VAR, "auto")
    if mode == "ref":
        return False
    if mode == "triton":
        if not triton_available():
            raise KernelInputError(f"{ENV_VAR}=triton but Triton is not installed; pip install triton")
        if not x.is_cuda and not interpreter_on():
            raise KernelInputError(
                f"{ENV_VAR}=triton on a CPU tensor needs TRITON_INTERPRET=1 set before Triton is imported"
            )
        return True
    if mode != "auto":
        raise KernelInputError(f"{ENV_VAR} must be one of auto, ref, triton (got {mode!r})")
    return x.is_cuda and triton_available()


# os.environ's own dict (bytes keys on POSIX): reading it costs one lookup where `os.environ.get` makes
# four Python calls, and the decode hot path asks ~25 times a token. It is the dict that
# os.environ's item assignment (and pytest's monkeypatch.setenv) writes, so every call still sees
# the current value.
_ENV_DATA: dict | None = getattr(os.environ, "_data", None)
_ENV_KEY = os.environ.encodekey(ENV_VAR) if hasattr(os.environ, "encodekey") else None


def _mode() -> str:
    if _ENV_DATA is None or _ENV_KEY is None:
        return os.environ.get(ENV_VAR, "auto")
    raw = _ENV_DATA.get(_ENV_KEY)
    return "auto" if raw is None else os.environ.decodevalue(raw)


def backend(x: torch.Tensor) -> str:
    """ "triton", "cpu" (the op's `*_cpu` implementation) or "ref", for an op that has all three; reads
    the environment once (the decode hot path calls these ops ~20 times a token)."""
    mode = _mode()
    if mode == "auto" and not x.is_cuda and x.device.type == "cpu":
        return "cpu"
    return "triton" if use_triton(x) else "ref"
