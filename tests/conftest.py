"""Shared test set-up.

Triton kernels run on the CPU through its interpreter when no GPU is present; the switch must be set
before any kernel module is imported, so it lives here, at the very top of the test session.
"""

from __future__ import annotations

import importlib
import os
import sys
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

# `python -m pytest` puts the working directory on sys.path; from the repository root that makes its
# folders importable under their bare names, and `kernels/` would then shadow Hugging Face's `kernels`
# that transformers imports. The code is imported as `hybrid_agent.*` only, so the root is not needed.
_REPO = Path(__file__).resolve().parents[1]
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _REPO]

# OpenMP's idle threads sleep instead of spinning (read when torch loads its OpenMP runtime, below). On
# a machine whose cores other processes share, a spinning thread waits out whole time slices for a
# descheduled partner at every parallel op: the default run took 5.6 min instead of 3.0 on 2 shared
# cores, and one CPU training test 3 to 35 s. Subprocesses the tests start inherit it.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

# The settings files of the person running the tests (agent/settings.py) must not change what the tests
# see: the user config dir is an empty folder of this run (subprocesses inherit it).
if "HYBRID_AGENT_CONFIG_DIR" not in os.environ:
    import tempfile

    os.environ["HYBRID_AGENT_CONFIG_DIR"] = tempfile.mkdtemp(prefix="hybrid-agent-config-")
# Likewise the user cache dir (model fingerprints, model/checkpoints/fingerprint_cache.py).
if "HYBRID_AGENT_CACHE_DIR" not in os.environ:
    import tempfile

    os.environ["HYBRID_AGENT_CACHE_DIR"] = tempfile.mkdtemp(prefix="hybrid-agent-cache-")

import pytest  # noqa: E402
import torch  # noqa: E402

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


@pytest.fixture
def bench_script(monkeypatch: pytest.MonkeyPatch) -> Callable[[str], ModuleType]:
    """Import a script of bench/ by its module name, with bench/ on sys.path for this test only."""
    monkeypatch.syspath_prepend(str(_REPO / "bench"))
    return importlib.import_module


@pytest.fixture
def dev(monkeypatch: pytest.MonkeyPatch) -> str:
    """The device the Triton kernels run on here (CUDA, else the CPU under TRITON_INTERPRET=1, set
    above), with dispatch forced to Triton."""
    from hybrid_agent.kernels._dispatch import interpreter_on

    if torch.cuda.is_available():
        device = "cuda"
    elif interpreter_on():
        device = "cpu"
    else:
        pytest.skip("needs CUDA or TRITON_INTERPRET=1 set before Triton is imported")
    monkeypatch.setenv("HYBRID_AGENT_KERNELS", "triton")
    return device
