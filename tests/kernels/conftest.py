"""Fixtures for the Triton kernel tests."""

from __future__ import annotations

import pytest
import torch
from hybrid_agent.kernels._dispatch import interpreter_on


@pytest.fixture
def dev(monkeypatch: pytest.MonkeyPatch) -> str:
    """The device the Triton kernels run on here (CUDA, else the CPU under TRITON_INTERPRET=1, which
    tests/conftest.py sets), with dispatch forced to Triton."""
    if torch.cuda.is_available():
        device = "cuda"
    elif interpreter_on():
        device = "cpu"
    else:
        pytest.skip("needs CUDA or TRITON_INTERPRET=1 set before Triton is imported")
    monkeypatch.setenv("HYBRID_AGENT_KERNELS", "triton")
    return device
