"""The models the GPU benchmarks run, at OLMo Hybrid 7B's shape (or toy shapes on a CPU): transformers'
`OlmoHybridForCausalLM` with its own random init, ours built from its state dict through the olmo_hybrid
adapter (sharing the weight tensors, so both fit one card), and a same-size attention-only model.

Used by bench/gpu_e2e.py and bench/gpu_resume.py, which import it from the bench/ folder.
"""

from __future__ import annotations

from typing import Any

import torch
from hybrid_agent.model import HybridConfig, HybridLM
from hybrid_agent.model.attention import Attention
from hybrid_agent.model.checkpoints import olmo_hybrid
from hybrid_agent.model.checkpoints.plan import Source
from hybrid_agent.model.rope import rope_inv_freq

TINY_HF = dict(
    vocab_size=512, hidden_size=64, intermediate_size=128, num_hidden_layers=4, num_attention_heads=4,
    num_key_value_heads=4, linear_num_key_heads=2, linear_num_value_heads=2, linear_key_head_dim=16,
    linear_value_head_dim=32, pad_token_id=0, eos_token_id=1, bos_token_id=None,
)  # fmt: skip


def hf_config(tiny: bool) -> Any:
    from transformers import OlmoHybridConfig

    return OlmoHybridConfig(**TINY_HF) if tiny else OlmoHybridConfig()


def build_hf(cfg: Any, device: torch.device, dtype: torch.dtype) -> Any:
    """transformers' model with its own random init, built directly on the device."""
    from transformers import OlmoHybridForCausalLM

    torch.manual_seed(0)
    with torch.device(device):
        hf = OlmoHybridForCausalLM._from_config(cfg, attn_implementation="sdpa", dtype=dtype)
    return hf.eval()


def _resolve(src: Source, sd: dict[str, torch.Tensor]) -> torch.Tensor:
    names = [next((n for n in spellings if n in sd), None) for spellings in src.names]
    if None in names:
        if src.fallback is None:
            raise KeyError(f"no tensor for {src.names}")
        return _resolve(src.fallback, sd)
    if src.build is None:
        return sd[names[0]]  # shared with transformers' model: no copy
    return src.build([sd[n].float() for n in names]).to(sd[names[0]].dtype)


def adopt_weights(hf: Any) -> HybridLM:
    """Our HybridLM through the olmo_hybrid adapter's plan, reading transformers' tensors in place."""
    hfd = hf.config.to_dict()
    cfg = olmo_hybrid.hybrid_config(hfd)
    sd = dict(hf.state_dict())
    with torch.device("meta"):
        model = HybridLM(cfg)
    model.load_state_dict({n: _resolve(s, sd) for n, s in olmo_hybrid.sources(cfg, hfd).items()}, assign=True)
    _rope_buffers(model, sd["lm_head.weight"].device)
    model._fingerprint = "bench-random-olmo-hybrid"  # hashing 15 GB of random weights would cost ~10 s
    return model.eval()


def _rope_buffers(model: HybridLM, device: torch.device) -> None:
    theta = model.config.attention.rope_theta
    for m in model.modules():
        if isinstance(m, Attention) and theta is not None:
            m.register_buffer("inv_freq", rope_inv_freq(m.rope_dim, theta).to(device), persistent=False)


def attention_only(model: HybridLM) -> HybridLM:
    """The same width and depth with attention in every layer; every weight whose name and shape match
    the hybrid's is shared (embeddings, head, MLPs, norms, the hybrid's own attention layers)."""
    cfg = HybridConfig.model_validate(
        {**model.config.model_dump(), "layer_types": ["attention"] * model.config.n_layers}
    )
    with torch.device("meta"):
        attn = HybridLM(cfg)
    have = model.state_dict()
    dev, dtype = model.device, model.dtype
    new = {}
    for name, t in attn.state_dict().items():
        if name in have and have[name].shape == t.shape:
            new[name] = have[name]
        elif name.endswith("norm.weight"):
            new[name] = torch.ones(t.shape, device=dev, dtype=dtype)
        else:
            new[name] = torch.empty(t.shape, device=dev, dtype=dtype).normal_(0.0, 0.02)
    attn.load_state_dict(new, assign=True)
    _rope_buffers(attn, dev)
    attn._fingerprint = "bench-attention-only"
    return attn.eval()
