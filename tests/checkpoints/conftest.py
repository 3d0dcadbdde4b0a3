"""Tiny random transformers checkpoints of every supported family, saved the way the Hub has them.

Each folder holds config.json + model.safetensors (save_pretrained), a byte-level BPE tokenizer.json,
tokenizer_config.json with a ChatML chat template, and generation_config.json with the end-of-turn id,
so `load_model` runs its whole path. Weights are re-drawn larger than transformers' init (std 0.02
makes every block nearly the identity, and a wrong layer would hardly move the logits).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch

transformers = pytest.importorskip("transformers")

VOCAB = 300  # model vocabulary; the tokenizer uses 256 bytes + the specials below
SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<tool_call>", "</tool_call>"]
CHATML = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

# Multimodal wrappers whose language model we load: the family of the text config and a tiny vision tower.
_MULTIMODAL: dict[str, tuple[str, dict[str, Any]]] = {
    "qwen3_5": ("qwen3_5_text", dict(
        depth=1, hidden_size=16, intermediate_size=32, num_heads=2, out_hidden_size=32, patch_size=4,
        spatial_merge_size=1, temporal_patch_size=1, num_position_embeddings=16,
    )),
}  # fmt: skip
_MULTIMODAL["qwen3_5_moe"] = ("qwen3_5_moe_text", _MULTIMODAL["qwen3_5"][1])

_COMMON: dict[str, Any] = {"vocab_size": VOCAB, "pad_token_id": 0, "bos_token_id": None, "eos_token_id": 258}


def hf_config(family: str, **kw: Any) -> Any:
    """A transformers config of `family` with test-sized defaults, overridden by `kw` (for a multimodal
    wrapper, `kw` overrides its text config)."""
    if family in _MULTIMODAL:
        text, vision = _MULTIMODAL[family]
        wrapper = transformers.AutoConfig.for_model(family).__class__
        return wrapper(text_config=hf_config(text, **kw).to_dict(), vision_config=vision)
    base: dict[str, dict[str, Any]] = {
        "olmo_hybrid": dict(
            hidden_size=32, intermediate_size=64, num_attention_heads=4, num_key_value_heads=2,
            linear_num_key_heads=2, linear_num_value_heads=4, linear_key_head_dim=8, linear_value_head_dim=8,
            layer_types=["linear_attention", "linear_attention", "full_attention"], num_hidden_layers=3,
        ),
        "mamba2": dict(
            hidden_size=32, num_heads=8, head_dim=8, state_size=8, n_groups=2, num_hidden_layers=2,
            chunk_size=8,
        ),
        "falcon_h1": dict(
            hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, mamba_d_ssm=48, mamba_n_heads=6, mamba_d_state=8, mamba_n_groups=2,
            mamba_chunk_size=8,
        ),
        "nemotron_h": dict(
            hidden_size=32,
            layers_block_type=["linear_attention", "full_attention", "mlp", "linear_attention"],
            num_attention_heads=4, num_key_value_heads=2, head_dim=8, intermediate_size=64, ssm_state_size=8,
            mamba_num_heads=6, mamba_head_dim=8, n_groups=2, chunk_size=8,
        ),
        "bamba": dict(
            hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=4,
            num_key_value_heads=2, attn_layer_indices=[1], mamba_n_heads=8, mamba_d_state=8,
            mamba_n_groups=2, mamba_chunk_size=8,
        ),
        "granitemoehybrid": dict(
            hidden_size=32, shared_intermediate_size=64, num_hidden_layers=3, num_attention_heads=4,
            num_key_value_heads=2, layer_types=["mamba", "attention", "mamba"], num_local_experts=0,
            mamba_n_heads=8, mamba_d_state=8, mamba_n_groups=2, mamba_chunk_size=8,
        ),
        "qwen3_5_text": dict(
            hidden_size=32, intermediate_size=64, num_attention_heads=4, num_key_value_heads=2, head_dim=16,
            linear_num_key_heads=2, linear_num_value_heads=4, linear_key_head_dim=8, linear_value_head_dim=8,
            layer_types=["linear_attention", "full_attention", "linear_attention"], num_hidden_layers=3,
        ),
        "qwen3_5_moe_text": dict(
            hidden_size=32, num_attention_heads=4, num_key_value_heads=2, head_dim=16,
            linear_num_key_heads=2, linear_num_value_heads=4, linear_key_head_dim=8, linear_value_head_dim=8,
            layer_types=["linear_attention", "full_attention", "linear_attention"], num_hidden_layers=3,
            num_experts=8, num_experts_per_tok=2, moe_intermediate_size=16,
            shared_expert_intermediate_size=24,
        ),
        "qwen3_next": dict(
            hidden_size=32, intermediate_size=40, num_attention_heads=4, num_key_value_heads=2, head_dim=16,
            linear_num_key_heads=2, linear_num_value_heads=4, linear_key_head_dim=8, linear_value_head_dim=8,
            layer_types=["linear_attention", "full_attention", "linear_attention", "linear_attention"],
            num_hidden_layers=4, num_experts=8, num_experts_per_tok=2, moe_intermediate_size=16,
            shared_expert_intermediate_size=24, mlp_only_layers=[2],
        ),
        "lfm2": dict(
            hidden_size=32, intermediate_size=96, block_multiple_of=16, num_attention_heads=4,
            num_key_value_heads=2, num_hidden_layers=4,
            layer_types=["conv", "full_attention", "conv", "conv"],
        ),
        "lfm2_moe": dict(
            hidden_size=32, intermediate_size=48, moe_intermediate_size=16, num_attention_heads=4,
            num_key_value_heads=2, num_hidden_layers=4,
            layer_types=["conv", "full_attention", "conv", "conv"], num_dense_layers=1,
            num_experts=8, num_experts_per_tok=2,
        ),
        "kimi_linear": dict(
            hidden_size=32, intermediate_size=64, num_hidden_layers=4, num_attention_heads=4,
            num_key_value_heads=4, kv_lora_rank=16, q_lora_rank=None, qk_rope_head_dim=8, qk_nope_head_dim=8,
            v_head_dim=8, linear_head_dim=8, linear_num_heads=4, mlp_layer_types=["dense"] * 4,
            layer_types=["linear_attention", "full_attention", "linear_attention", "linear_attention"],
        ),
    }  # fmt: skip
    cls = transformers.AutoConfig.for_model(family).__class__
    return cls(**{**_COMMON, **base[family], **kw})


def randomize(model: torch.nn.Module, seed: int) -> None:
    """Projections ~ N(0, 0.2), norm weights 1 + N(0, 0.2); SSM parameters keep their meaningful init
    but are jittered so that no two heads are alike."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=g)
            if name.endswith(("A_log", "dt_bias", ".D")):
                p.add_(0.3 * noise)
            elif p.dim() == 1:
                p.copy_(1.0 + 0.2 * noise if "norm" in name else 0.2 * noise)
            else:
                p.copy_(0.2 * noise)


def write_tokenizer_files(folder: Path) -> None:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from tokenizers.pre_tokenizers import ByteLevel

    alphabet = ByteLevel.alphabet()
    vocab = {ch: i for i, ch in enumerate(sorted(alphabet))}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens(SPECIALS)  # ids 256.. in this order
    tok.save(str(folder / "tokenizer.json"))
    (folder / "tokenizer_config.json").write_text(
        json.dumps({"chat_template": CHATML, "eos_token": "<|im_end|>", "bos_token": None})
    )
    (folder / "generation_config.json").write_text(json.dumps({"eos_token_id": [256, 258]}))


def save_checkpoint(family: str, folder: Path, *, seed: int = 0, **kw: Any) -> Any:
    """A random `family` model saved to `folder` with tokenizer files; returns the transformers model."""
    torch.manual_seed(seed)
    auto = transformers.AutoModelForCausalLM
    if family in _MULTIMODAL:
        auto = transformers.AutoModelForImageTextToText
    model = auto.from_config(hf_config(family, **kw)).float().eval()
    randomize(model, seed)
    model.save_pretrained(folder)
    write_tokenizer_files(folder)
    # The reference is what transformers builds from the saved folder (its config round trip included).
    return auto.from_pretrained(folder, dtype=torch.float32).eval()


@pytest.fixture
def checkpoint(tmp_path: Path) -> Callable[..., tuple[Path, Any]]:
    def make(family: str, **kw: Any) -> tuple[Path, Any]:
        folder = tmp_path / family
        return folder, save_checkpoint(family, folder, **kw)

    return make


@pytest.fixture
def tokenizer_files() -> Callable[[Path], None]:
    """Writes tokenizer.json, tokenizer_config.json and generation_config.json into a folder."""
    return write_tokenizer_files


@pytest.fixture
def check_parity() -> Callable[..., None]:
    """tests/checkpoints/test_ckpt_parity.py's `check_parity`, which every family shares (pytest imports
    test files in importlib mode, so the sibling is loaded by its path)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(
        "_ckpt_parity", Path(__file__).with_name("test_ckpt_parity.py")
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.check_parity


def assert_chunked_equals_stepwise(
    model: Any, *, n_tokens: int = 21, chunk_size: int = 8, state_rtol: float = 1e-4, seed: int = 3
) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """A prompt prefilled in chunks of `chunk_size` ends with the logits and the state of the same
    prompt fed one token at a time (relative to each tensor's largest value). Returns both states'
    tensors (chunked, one at a time) for a family's own checks."""
    from hybrid_agent.model.decode.generate import prefill

    ids = torch.randint(
        0, model.config.vocab_size, (1, n_tokens), generator=torch.Generator().manual_seed(seed)
    )
    chunked, one = model.new_state(), model.new_state()
    got = prefill(model, ids, chunked, chunk_size=chunk_size)
    for t in range(ids.shape[1]):
        want = model(ids[:, t : t + 1], one)[:, -1]
    assert float((got - want).abs().max()) <= 1e-4 * float(want.abs().max())
    ref, new = chunked.to_tensors(), one.to_tensors()
    assert ref.keys() == new.keys()
    for name, t in new.items():
        c, t = ref[name].float(), t.float()
        assert (c - t).abs().max() <= state_rtol * t.abs().max() + 1e-6, name
    return ref, new


def assert_engine_equals_model(model: Any, *, steps: int = 12, exact: bool = True, **engine_kw: Any) -> Any:
    """The DecodeEngine (a static step; `engine_kw` picks attention / fuse) gives the model's own greedy
    tokens after the same prompt; with `exact`, also its logits bit for bit at every step (the step runs
    the same forwards and kernels on the CPU), else its final state within float rounding."""
    from hybrid_agent.model.decode.engine import DecodeEngine
    from hybrid_agent.model.decode.generate import prefill

    vocab = model.config.vocab_size
    prompt = torch.randint(0, vocab, (1, 13), generator=torch.Generator().manual_seed(4))
    state = model.new_state()
    logits = prefill(model, prompt, state, chunk_size=8)
    want, want_logits = [], [logits.clone()]
    for _ in range(steps):
        want.append(int(logits.argmax(-1)))
        logits = model(torch.tensor([[want[-1]]]), state)[:, -1]
        want_logits.append(logits.clone())
    engine = DecodeEngine(model, max_context=48, prefill_chunk=8, **engine_kw)
    assert engine.static
    if exact:
        assert torch.equal(engine.prefill(prompt), want_logits[0])
        for i in range(steps):
            assert torch.equal(engine.step(want[i]), want_logits[i + 1]), f"step {i}"
        return engine
    engine.prefill(prompt)
    assert engine.generate_greedy(steps, sync_every=5) == want
    for name, t in state.to_tensors().items():
        got = engine.state.to_tensors()[name].float()
        assert (got - t.float()).abs().max() <= 1e-4 * t.float().abs().max() + 1e-6, name
    return engine


@pytest.fixture
def chunked_equals_stepwise() -> Callable[..., Any]:
    return assert_chunked_equals_stepwise


@pytest.fixture
def engine_equals_model() -> Callable[..., Any]:
    return assert_engine_equals_model
