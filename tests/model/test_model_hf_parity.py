"""Our mixers load transformers' weights by name and compute the same outputs (fp32, CPU).

References: `Mamba2Mixer` (Mamba-2 / Bamba / Falcon-H1 / Nemotron-H family), `OlmoHybridGatedDeltaNet`
(OLMo Hybrid), `Qwen3Attention` (GQA + RoPE + per-head QK-norm).
"""

from __future__ import annotations

import pytest
import torch
from hybrid_agent.model import HybridConfig, ModelState
from hybrid_agent.model.attention import Attention
from hybrid_agent.model.gated_deltanet import GatedDeltaNet
from hybrid_agent.model.mamba2 import Mamba2Mixer

transformers = pytest.importorskip("transformers")

T = 21  # three chunks of 8, ragged


def randomize(module: torch.nn.Module) -> None:
    torch.manual_seed(0)
    for p in module.parameters():
        torch.nn.init.normal_(p, std=0.3)


def run_ours(mixer: torch.nn.Module, cfg: HybridConfig, x: torch.Tensor) -> torch.Tensor:
    state = ModelState.empty(cfg, x.shape[0])
    with torch.no_grad():
        return mixer(x, state.layers[0], state)


def assert_same(ref: torch.Tensor, got: torch.Tensor) -> None:
    assert float((ref - got).abs().max() / ref.abs().max()) < 1e-5


def test_mamba2_matches_transformers():
    from transformers.models.mamba2.modeling_mamba2 import Mamba2Config
    from transformers.models.mamba2.modeling_mamba2 import Mamba2Mixer as HFMixer

    hf_cfg = Mamba2Config(
        hidden_size=32, num_heads=8, head_dim=8, state_size=8, n_groups=2, conv_kernel=4, expand=2,
        chunk_size=8, use_conv_bias=True, use_bias=False, layer_norm_epsilon=1e-5, num_hidden_layers=1,
    )  # fmt: skip
    hf = HFMixer(hf_cfg, 0)
    randomize(hf)
    cfg = HybridConfig(
        vocab_size=10, d_model=32, layer_types=["mamba2"],
        mamba2={"head_dim": 8, "d_state": 8, "n_groups": 2, "chunk_size": 8},
    )  # fmt: skip
    ours = Mamba2Mixer(cfg)
    ours.load_state_dict(hf.state_dict())  # same names, same shapes
    x = torch.randn(2, T, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ref = hf(x)
    assert_same(ref, run_ours(ours, cfg, x))


@pytest.mark.parametrize("neg", [False, True])
def test_gated_deltanet_matches_olmo_hybrid(neg):
    from transformers.models.olmo_hybrid.modeling_olmo_hybrid import (
        OlmoHybridConfig,
        OlmoHybridGatedDeltaNet,
    )

    hf_cfg = OlmoHybridConfig(
        hidden_size=32, num_attention_heads=4, num_key_value_heads=4, linear_num_key_heads=2,
        linear_num_value_heads=4, linear_key_head_dim=8, linear_value_head_dim=12,
        linear_allow_neg_eigval=neg,
        num_hidden_layers=2, layer_types=["linear_attention", "full_attention"], vocab_size=10,
        intermediate_size=64, pad_token_id=None, eos_token_id=None, bos_token_id=None,
    )  # fmt: skip
    hf = OlmoHybridGatedDeltaNet(hf_cfg, 0)
    randomize(hf)
    cfg = HybridConfig(
        vocab_size=10, d_model=32, layer_types=["gated_deltanet"],
        gated_deltanet={
            "n_heads": 2, "n_v_heads": 4, "head_k_dim": 8, "head_v_dim": 12, "chunk_size": 8,
            "allow_neg_eigval": neg,
        },
    )  # fmt: skip
    ours = GatedDeltaNet(cfg)
    ours.load_state_dict(hf.state_dict())
    x = torch.randn(2, T, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ref = hf(x)
    assert_same(ref, run_ours(ours, cfg, x))


def test_attention_matches_qwen3():
    from transformers.models.qwen3.modeling_qwen3 import Qwen3Attention, Qwen3Config, Qwen3RotaryEmbedding

    hf_cfg = Qwen3Config(
        hidden_size=32, num_attention_heads=4, num_key_value_heads=2, head_dim=8, rms_norm_eps=1e-5,
        rope_theta=10000.0, vocab_size=10, num_hidden_layers=1,
    )  # fmt: skip
    hf_cfg._attn_implementation = "eager"
    hf = Qwen3Attention(hf_cfg, 0)
    randomize(hf)
    cfg = HybridConfig(
        vocab_size=10, d_model=32, layer_types=["attention"],
        attention={"n_heads": 4, "n_kv_heads": 2, "head_dim": 8, "qk_norm": "head"},
    )  # fmt: skip
    ours = Attention(cfg)
    ours.load_state_dict(hf.state_dict())
    x = torch.randn(2, T, 32, generator=torch.Generator().manual_seed(1))
    cos, sin = Qwen3RotaryEmbedding(hf_cfg)(x, torch.arange(T)[None].expand(2, -1))
    causal = torch.full((T, T), float("-inf")).triu(1)[None, None].expand(2, 1, T, T)
    with torch.no_grad():
        ref, _ = hf(x, (cos, sin), causal)
    assert_same(ref, run_ours(ours, cfg, x))
