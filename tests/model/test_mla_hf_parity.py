"""MLA against transformers' DeepseekV3Attention (fp32, CPU, random weights loaded by name).

The reference is the standalone transformers module with its own rotary embedding and an explicit
additive mask (causal, or our window policy), recomputed over the whole prefix: our layer must give
the same outputs whether the sequence arrives in one call, in chunks or token by token, and in both
the absorbed and the decompressed form.
"""

from __future__ import annotations

import pytest
import torch
from hybrid_agent.model import HybridConfig, ModelState
from hybrid_agent.model.mla import MLA
from hybrid_agent.model.ops import visible

transformers = pytest.importorskip("transformers")
from transformers.models.deepseek_v3.configuration_deepseek_v3 import DeepseekV3Config  # noqa: E402
from transformers.models.deepseek_v3.modeling_deepseek_v3 import (  # noqa: E402
    DeepseekV3Attention,
    DeepseekV3RotaryEmbedding,
)

T = 19
SIZES = dict(n_heads=4, kv_lora_rank=16, qk_nope_head_dim=8, qk_rope_head_dim=4, v_head_dim=6)


def build_pair(q_lora_rank: int | None, interleave: bool, bias: bool):
    hf_cfg = DeepseekV3Config(
        hidden_size=32, num_attention_heads=4, num_key_value_heads=4, q_lora_rank=q_lora_rank,
        kv_lora_rank=16, qk_nope_head_dim=8, qk_rope_head_dim=4, v_head_dim=6,
        rope_interleave=interleave, attention_bias=bias, num_hidden_layers=1, vocab_size=10,
        rope_parameters={"rope_type": "default", "rope_theta": 10000.0},
    )  # fmt: skip
    hf_cfg._attn_implementation = "eager"  # takes our explicit additive mask as is
    hf = DeepseekV3Attention(hf_cfg, 0).eval()
    torch.manual_seed(0)
    for p in hf.parameters():
        torch.nn.init.normal_(p, std=0.3)  # the norms' weights too
    cfg = HybridConfig(
        vocab_size=10, d_model=32, layer_types=["mla"],
        mla={**SIZES, "q_lora_rank": q_lora_rank, "rope_interleave": interleave, "bias": bias},
    )  # fmt: skip
    ours = MLA(cfg)
    ours.load_state_dict(hf.state_dict())  # same names, same shapes, nothing missing or extra
    return hf, DeepseekV3RotaryEmbedding(hf_cfg), ours, cfg


def hf_reference(hf, rotary, x: torch.Tensor, window: int | None = None, sinks: int = 0) -> torch.Tensor:
    """transformers' output for every position, attending under our window policy."""
    pos = torch.arange(x.shape[1])
    mask = torch.zeros(x.shape[1], x.shape[1]).masked_fill(~visible(pos, pos, window, sinks), float("-inf"))
    with torch.no_grad():
        return hf(x, rotary(x, pos[None]), mask[None, None])[0]  # (B, T, D)


def run_ours(ours: MLA, cfg: HybridConfig, x: torch.Tensor, sizes: list[int], **state_kw: object):
    state = ModelState.empty(cfg, x.shape[0], **state_kw)
    out, start = [], 0
    with torch.no_grad():
        for n in sizes:
            out.append(ours(x[:, start : start + n], state.layers[0], state))
            state.n_tokens += n
            state.evict(0)
            start += n
    return torch.cat(out, dim=1), state


def rel_err(ref: torch.Tensor, got: torch.Tensor) -> float:
    return float((ref - got).abs().max() / ref.abs().max())


CASES = [(None, False, False), (12, False, True), (None, True, False), (12, True, True)]
IDS = ["q-full", "q-lora+bias", "interleave", "q-lora+interleave+bias"]


@pytest.mark.parametrize(("q_lora_rank", "interleave", "bias"), CASES, ids=IDS)
@pytest.mark.parametrize("absorb", [None, True, False], ids=["auto", "absorbed", "decompressed"])
def test_prefill_chunks_and_steps_match_transformers(q_lora_rank, interleave, bias, absorb):
    hf, rotary, ours, cfg = build_pair(q_lora_rank, interleave, bias)
    ours.absorb = absorb
    x = torch.randn(2, T, 32, generator=torch.Generator().manual_seed(1))
    ref = hf_reference(hf, rotary, x)
    for sizes in ([T], [5, 1, 8, 5], [1] * T):
        got, state = run_ours(ours, cfg, x, sizes)
        assert rel_err(ref, got) < 1e-5, sizes
        assert state.layers[0].cache["latent"].shape == (2, T, 16)
        assert state.layers[0].cache["k_rope"].shape == (2, T, 4)


@pytest.mark.parametrize("absorb", [True, False], ids=["absorbed", "decompressed"])
def test_window_and_sinks_match_transformers_with_the_same_mask(absorb):
    hf, rotary, ours, cfg = build_pair(None, True, False)
    ours.absorb = absorb
    x = torch.randn(1, T, 32, generator=torch.Generator().manual_seed(2))
    ref = hf_reference(hf, rotary, x, window=5, sinks=2)
    for sizes in ([T], [3, 7, 1, 8], [1] * T):
        got, state = run_ours(ours, cfg, x, sizes, window=5, sinks=2)
        assert rel_err(ref, got) < 1e-5, sizes
        assert state.layers[0].pos is not None
        assert state.layers[0].pos.tolist() == [0, 1, *range(T - 5, T)]  # sinks + window, rest evicted
    assert rel_err(ref, hf_reference(hf, rotary, x)) > 1e-3  # the window does change what is seen


def test_cached_latent_is_what_transformers_caches():
    """transformers' cache receives the normalised latent and the rotated RoPE key: ours holds the same."""
    hf, rotary, ours, cfg = build_pair(12, True, True)
    x = torch.randn(1, T, 32, generator=torch.Generator().manual_seed(3))
    seen: dict[str, torch.Tensor] = {}

    class Capture:
        def update(self, kv_nope, k_rot, layer_idx, **kwargs):  # the Cache.update signature it calls
            seen["latent"], seen["k_rope"] = kv_nope[:, 0], k_rot[:, 0]  # (B, T, C), (B, T, R)
            return kv_nope, k_rot

    pos = torch.arange(T)
    mask = torch.zeros(T, T).masked_fill(~visible(pos, pos, None, 0), float("-inf"))
    with torch.no_grad():
        hf(x, rotary(x, pos[None]), mask[None, None], cache=Capture())
    _, state = run_ours(ours, cfg, x, [7, 12])
    for name in ("latent", "k_rope"):
        assert rel_err(seen[name], state.layers[0].cache[name]) < 1e-6, name


def test_auto_mode_absorbs_decode_and_decompresses_long_prefill():
    _, _, ours, _ = build_pair(None, False, False)
    assert ours.absorbs(1, 2) and ours.absorbs(1, 100_000) and ours.absorbs(4, 4096)
    assert not ours.absorbs(512, 512)


def test_decode_matches_transformers_own_cache():
    """Token by token through transformers' DynamicCache (its incremental path) == ours, absorbed."""
    from transformers import DynamicCache

    hf, rotary, ours, cfg = build_pair(12, True, True)
    x = torch.randn(2, T, 32, generator=torch.Generator().manual_seed(4))
    cache = DynamicCache(config=hf.config)
    with torch.no_grad():
        ref = torch.cat(
            [
                hf(x[:, t : t + 1], rotary(x[:, t : t + 1], torch.tensor([[t]])), None, cache=cache)[0]
                for t in range(T)
            ],
            dim=1,
        )  # (B, T, D)
    got, state = run_ours(ours, cfg, x, [1] * T)
    assert rel_err(ref, got) < 1e-5
    assert rel_err(cache.layers[0].keys[:, 0], state.layers[0].cache["latent"]) < 1e-6  # (B, T, C)
