"""Shared test set-up.

Triton kernels run on the CPU through its interpreter when no GPU is present; the switch must be set
before any kernel module is imported, so it lives here, at the very top of the test session.
"""

from __future__ import annotations

import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
