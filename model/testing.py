"""Tiny hybrid models for tests (like kernels/testing.py: helpers for checking, not part of any model
path). Shared by tests/model and tests/engine, so every layer kind is exercised at one set of toy sizes."""

from __future__ import annotations

from typing import Any

import torch

from model.config import HybridConfig
from model.hybrid import HybridLM

TINY: dict[str, Any] = dict(
    vocab_size=267,
    d_model=32,
    attention={"n_heads": 4, "n_kv_heads": 2, "head_dim": 8},
    mamba2={"head_dim": 8, "d_state": 8, "chunk_size": 8},
    gated_deltanet={"n_heads": 2, "n_v_heads": 4, "head_k_dim": 8, "head_v_dim": 8, "chunk_size": 8},
    mlp={"hidden_dim": 64},
    # Large random weights: with the usual 0.02 every block is close to the identity and a wrong
    # state would hardly change the logits.
    init_std=0.3,
)


def tiny_config(layer_types: list[str], **overrides: object) -> HybridConfig:
    return HybridConfig.model_validate({**TINY, "layer_types": layer_types, **overrides})


def tiny_model(layer_types: list[str], seed: int = 0, **overrides: object) -> HybridLM:
    """A seeded model in eval mode: the same weights for the same arguments."""
    torch.manual_seed(seed)
    return HybridLM(tiny_config(layer_types, **overrides)).eval()
