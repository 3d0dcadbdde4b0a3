"""Fixtures for model tests: tiny configs with weights large enough that every layer matters."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch

from model import HybridConfig, HybridLM

TINY = dict(
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


@pytest.fixture
def make_model() -> Callable[..., HybridLM]:
    def make(layer_types: list[str], seed: int = 0, **overrides: object) -> HybridLM:
        torch.manual_seed(seed)
        return HybridLM(tiny_config(layer_types, **overrides)).eval()

    return make
