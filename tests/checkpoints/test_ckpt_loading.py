"""load_model beyond parity: tokenizer and chat format, fingerprint, dtypes, shards, the state-spaces
Mamba-2 format, native checkpoints, and the errors a user meets (bad folder, offline Hub id, unknown
model_type, missing tensor, config that does not match the weights)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hybrid_agent.model import CheckpointError, HybridConfig, HybridLM, load_model
from hybrid_agent.model.chat import ChatMessage, NativeChatFormat
from hybrid_agent.model.chat_jinja import JinjaChatFormat
from hybrid_agent.model.tokenizer import ByteTokenizer, Tokenizer
from safetensors.torch import load_file, save_file

REPO = Path(__file__).resolve().parents[2]
IDS = torch.tensor([[5, 77, 123, 250, 9, 31, 64, 200, 17, 3, 99]])


def logits_of(model: HybridLM) -> torch.Tensor:
    return model(IDS, model.new_state())


def test_tokenizer_and_chat_format_come_with_the_model(checkpoint):
    folder, _ = checkpoint("mamba2")
    _, tok, chat = load_model(folder)
    assert isinstance(tok, Tokenizer)
    assert isinstance(chat, JinjaChatFormat)
    # generation_config.json's eos_token_id [256, 258] are the end-of-turn tokens.
    assert set(chat.stop_strings) == {"<|endoftext|>", "<|im_end|>"}
    seg = chat.segment([], [ChatMessage("user", "hi <|im_end|>")], system="be brief")
    assert seg.text == (
        "<|im_start|>system\nbe brief<|im_end|>\n<|im_start|>user\nhi <|im_end|><|im_end|>\n"
        "<|im_start|>assistant\n"
    )
    ids = seg.encode(tok)
    assert ids.count(tok.token_id("<|im_start|>")) == 3
    assert ids.count(tok.token_id("<|im_end|>")) == 2  # the user's own "<|im_end|>" stays plain text
    # The next segment follows the assistant's raw text, which ends with its stop token.
    nxt = chat.segment(
        [ChatMessage("user", "hi <|im_end|>"), ChatMessage("assistant", "ok", raw="ok<|im_end|>")],
        [ChatMessage("user", "more")],
        system="be brief",
    )
    assert nxt.text == "\n<|im_start|>user\nmore<|im_end|>\n<|im_start|>assistant\n"


def test_fingerprint_is_set_while_loading_and_tracks_weights_not_shards(checkpoint, tmp_path):
    folder, hf = checkpoint("falcon_h1")
    a, _, _ = load_model(folder)
    assert a._fingerprint is not None  # computed during the single read of the weights
    b, _, _ = load_model(folder)
    assert a.fingerprint == b.fingerprint

    sharded = tmp_path / "sharded"
    hf.save_pretrained(sharded, max_shard_size="20KB")
    (sharded / "tokenizer.json").write_bytes((folder / "tokenizer.json").read_bytes())
    assert (sharded / "model.safetensors.index.json").is_file()
    c, _, _ = load_model(sharded)
    assert c.fingerprint == a.fingerprint
    assert torch.equal(logits_of(c), logits_of(a))

    weights = load_file(str(folder / "model.safetensors"))
    weights["model.final_layernorm.weight"][0] += 1.0
    save_file(weights, str(folder / "model.safetensors"), metadata={"format": "pt"})
    d, _, _ = load_model(folder)
    assert d.fingerprint != a.fingerprint

    e, _, _ = load_model(sharded, dtype=torch.bfloat16)
    assert e.fingerprint != a.fingerprint  # a state computed in bf16 is not the fp32 model's


def test_fingerprint_is_the_models_own_definition(checkpoint):
    """What the loader computes while streaming equals what HybridLM computes from its weights, so a
    model moved or cast afterwards keeps a consistent identity."""
    folder, _ = checkpoint("falcon_h1", embedding_multiplier=2.0, mamba_rms_norm=True)  # folded weights too
    model, _, _ = load_model(folder)
    streamed = model.fingerprint
    model._fingerprint = None
    assert model.fingerprint == streamed
    half, _, _ = load_model(folder, dtype=torch.bfloat16)
    assert model.to(torch.bfloat16).fingerprint == half.fingerprint


def test_bfloat16_load_keeps_states_in_fp32(checkpoint):
    folder, _ = checkpoint("bamba")
    ref, _, _ = load_model(folder)
    model, _, _ = load_model(folder, dtype="bfloat16")
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}
    with pytest.raises(CheckpointError, match="dtype 'int8' is not supported"):
        load_model(folder, dtype="int8")
    state = model.new_state()
    out = model(IDS, state)
    assert {t.dtype for ls in state.layers for t in ls.recurrent.values()} == {torch.float32}
    want = logits_of(ref)
    assert float((out.float() - want).abs().max()) < 0.05 * float(want.abs().max())


def test_state_spaces_mamba2_format(checkpoint, tmp_path):
    """The original mamba_ssm layout: d_model / n_layer / ssm_cfg and `backbone.embedding`."""
    folder, hf = checkpoint("mamba2")
    c = hf.config
    ss = tmp_path / "state-spaces"
    ss.mkdir()
    (ss / "config.json").write_text(json.dumps({
        "d_model": c.hidden_size, "n_layer": c.num_hidden_layers, "vocab_size": c.vocab_size,
        "d_intermediate": 0, "rms_norm": True, "residual_in_fp32": True, "fused_add_norm": True,
        "pad_vocab_size_multiple": 1, "tie_embeddings": False, "attn_layer_idx": [],
        "ssm_cfg": {"layer": "Mamba2", "d_state": c.state_size, "headdim": c.head_dim, "ngroups": c.n_groups,
                    "chunk_size": c.chunk_size, "expand": c.expand},
    }))  # fmt: skip
    weights = load_file(str(folder / "model.safetensors"))
    weights["backbone.embedding.weight"] = weights.pop("backbone.embeddings.weight")
    save_file(weights, str(ss / "model.safetensors"))
    with pytest.raises(CheckpointError, match=r"no tokenizer\.json; copy the tokenizer files"):
        load_model(ss)  # state-spaces folders ship without one
    (ss / "tokenizer.json").write_bytes((folder / "tokenizer.json").read_bytes())
    model, tok, chat = load_model(ss)
    assert isinstance(tok, Tokenizer) and isinstance(chat, NativeChatFormat)  # a tokenizer, no template
    with torch.no_grad():
        want = hf(input_ids=IDS, use_cache=False).logits
    got = logits_of(model)
    assert float((got - want).abs().max()) <= 1e-4 * float(want.abs().max())


def test_native_checkpoint_loads_through_load_model(tmp_path):
    cfg = HybridConfig(vocab_size=267, d_model=32, layer_types=["mamba2", "attention"], init_std=0.2,
                       attention={"n_heads": 4, "n_kv_heads": 2, "head_dim": 8},
                       mamba2={"head_dim": 8, "d_state": 8}, mlp={"hidden_dim": 64})  # fmt: skip
    torch.manual_seed(0)
    ours = HybridLM(cfg).eval()
    ours.save_pretrained(tmp_path)
    model, tok, chat = load_model(tmp_path)
    assert isinstance(tok, ByteTokenizer) and isinstance(chat, NativeChatFormat)
    assert torch.equal(logits_of(model), logits_of(ours))
    assert model.fingerprint == ours.fingerprint  # computed while streaming, same definition
    weights = load_file(str(tmp_path / "model.safetensors"))
    del weights["layers.0.mixer.A_log"]
    save_file(weights, str(tmp_path / "model.safetensors"))
    with pytest.raises(
        CheckpointError, match=r"hybrid-agent checkpoint .* lacks the tensor layers\.0\.mixer\.A_log"
    ):
        load_model(tmp_path)


# ---- errors -------------------------------------------------------------------------------------------
def test_tokenizer_of_another_model_is_refused(checkpoint):
    folder, _ = checkpoint("mamba2")
    from tokenizers import Tokenizer as HFTokenizer

    tok = HFTokenizer.from_file(str(folder / "tokenizer.json"))
    tok.add_special_tokens([f"<extra_{i}>" for i in range(100)])  # 361 tokens > the model's 300
    tok.save(str(folder / "tokenizer.json"))
    with pytest.raises(CheckpointError, match="has 361 tokens but the model only 300"):
        load_model(folder)


def test_missing_folder_says_what_to_pass(tmp_path):
    with pytest.raises(CheckpointError, match="not a model folder"):
        load_model(tmp_path / "nowhere" / "deeper")
    with pytest.raises(CheckpointError, match=r"no config\.json"):
        load_model(tmp_path)


def test_hub_id_offline_says_how_to_use_a_local_folder(tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf")}
    code = (
        "from hybrid_agent.model import load_model, CheckpointError\n"
        "try:\n    load_model('some-org/some-model')\n"
        "except CheckpointError as e:\n    print('ERR', e)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, cwd=REPO, capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("ERR cannot load 'some-org/some-model'")
    assert "offline" in out.stdout and "hybrid-agent pull" in out.stdout and "load_model('DIR')" in out.stdout


def test_unsupported_model_type_names_it_and_the_supported_ones(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "llama", "hidden_size": 8}))
    from hybrid_agent.model.checkpoints import ADAPTERS

    with pytest.raises(CheckpointError, match=r"'llama' is not supported.*bamba, falcon_h1, ") as info:
        load_model(tmp_path)
    assert ", ".join(sorted(ADAPTERS)) in str(info.value)  # every family, in order


def test_missing_tensor_names_family_and_tensor(checkpoint):
    folder, _ = checkpoint("nemotron_h")
    weights = load_file(str(folder / "model.safetensors"))
    del weights["backbone.layers.1.mixer.k_proj.weight"]
    save_file(weights, str(folder / "model.safetensors"))
    name = "layers.1.mixer.k_proj.weight"
    with pytest.raises(
        CheckpointError, match=rf"nemotron_h checkpoint .* lacks the tensor backbone\.{name} or model\.{name}"
    ):
        load_model(folder)


def test_config_that_does_not_match_the_weights(checkpoint):
    folder, _ = checkpoint("olmo_hybrid")
    cfg = json.loads((folder / "config.json").read_text())
    cfg["intermediate_size"] = 48
    (folder / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match=r"olmo_hybrid: tensor .*mlp.* has shape .* does not match"):
        load_model(folder)


def test_truncated_shard(checkpoint):
    folder, _ = checkpoint("mamba2")
    data = (folder / "model.safetensors").read_bytes()
    (folder / "model.safetensors").write_bytes(data[: len(data) - 100])
    with pytest.raises(CheckpointError, match="truncated"):
        load_model(folder)


def test_hub_id_found_in_the_local_hub_cache_loads_offline(checkpoint, tmp_path, monkeypatch):
    from huggingface_hub import constants

    folder, _ = checkpoint("bamba")
    snapshot = tmp_path / "hf" / "hub" / "models--some-org--tiny-bamba" / "snapshots" / ("0" * 40)
    snapshot.mkdir(parents=True)
    for f in folder.iterdir():
        (snapshot / f.name).write_bytes(f.read_bytes())
    (snapshot.parents[1] / "refs").mkdir()
    (snapshot.parents[1] / "refs" / "main").write_text("0" * 40)
    # HF_HUB_OFFLINE=1 and HF_HOME, as huggingface_hub reads them when it is imported (its requests
    # then fail at once instead of reaching the network)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hf" / "hub"))
    model, _, chat = load_model("some-org/tiny-bamba")
    assert model.fingerprint == load_model(folder)[0].fingerprint
    assert type(chat).__name__ == "JinjaChatFormat"


def test_progress_bar_for_long_loads(checkpoint, monkeypatch, capsys):
    from hybrid_agent.model.checkpoints import loader

    folder, _ = checkpoint("mamba2")
    load_model(folder)
    assert "loading weights" not in capsys.readouterr().err  # small: no bar
    monkeypatch.setattr(loader, "PROGRESS_MIN_BYTES", 0)
    load_model(folder)
    assert "loading weights" in capsys.readouterr().err
    load_model(folder, progress=False)
    assert "loading weights" not in capsys.readouterr().err


def test_nemotron_h_legacy_layer_pattern(checkpoint):
    """Older Nemotron-H configs spell the layers as `hybrid_override_pattern` ("M*-M")."""
    folder, hf = checkpoint("nemotron_h")
    cfg = json.loads((folder / "config.json").read_text())
    kinds = cfg.pop("layers_block_type")
    letters = {"linear_attention": "M", "full_attention": "*", "mlp": "-"}
    cfg["hybrid_override_pattern"] = "".join(letters[k] for k in kinds)
    assert cfg["hybrid_override_pattern"] == "M*-M"
    (folder / "config.json").write_text(json.dumps(cfg))
    model, _, _ = load_model(folder)
    assert model.config.layer_types == ["mamba2", "attention", "mlp", "mamba2"]
    with torch.no_grad():
        want = hf(input_ids=IDS, use_cache=False).logits
    assert float((logits_of(model) - want).abs().max()) <= 1e-4 * float(want.abs().max())


def test_olmo_hybrid_other_spellings_load_the_same_model(checkpoint, tmp_path):
    """save_pretrained writes OLMo-core's names (split q/k/v convs, attention_layer_norm, ...); the
    transformers names (fused conv1d, input_layernorm, ...) and out_proj/norm must give the same model."""
    folder, _ = checkpoint("olmo_hybrid")
    weights = load_file(str(folder / "model.safetensors"))
    renamed = {}
    for name, t in weights.items():
        for old, new in (
            ("attention_layer_norm", "input_layernorm"),
            ("feedforward_layer_norm", "post_attention_layernorm"),
            ("linear_attn.o_proj", "linear_attn.out_proj"),
            ("linear_attn.o_norm", "linear_attn.norm"),
        ):
            name = name.replace(old, new)
        renamed[name] = t
    for i in (0, 1):  # the linear-attention layers: one fused depthwise conv
        g = f"model.layers.{i}.linear_attn."
        parts = [renamed.pop(f"{g}{p}_conv1d.weight") for p in ("q", "k", "v")]
        renamed[f"{g}conv1d.weight"] = torch.cat(parts, dim=0)
    other = tmp_path / "other"
    other.mkdir()
    save_file(renamed, str(other / "model.safetensors"))
    for f in ("config.json", "tokenizer.json", "tokenizer_config.json", "generation_config.json"):
        (other / f).write_bytes((folder / f).read_bytes())
    a, _, _ = load_model(folder)
    b, _, _ = load_model(other)
    assert b.fingerprint == a.fingerprint  # the same weights in our model
    assert torch.equal(logits_of(b), logits_of(a))
