"""LFM2 (gated short convolutions + attention with per-head QK-norm): parity with transformers, chunked
prefill against token by token, the decode engine against the model's own forward, and how its
config.json is read (layer pattern, MLP width, old spellings)."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from hybrid_agent.model import load_model
from hybrid_agent.model.chat import ChatMessage
from hybrid_agent.model.checkpoints import lfm2
from hybrid_agent.model.checkpoints.tool_formats import Lfm2ToolCalls, format_class_for
from hybrid_agent.model.errors import CheckpointError
from hybrid_agent.model.testing import tiny_model

CONV, ATTN = "conv", "full_attention"

CASES: list[dict[str, Any]] = [
    {},  # tied head, the MLP width adjusted (2/3 of 96, rounded up to 16: 64)
    {"conv_bias": True, "tie_word_embeddings": False, "conv_L_cache": 4, "block_auto_adjust_ff_dim": False,
     "layer_types": [ATTN, CONV, ATTN], "num_hidden_layers": 3, "num_key_value_heads": 4},
    {"block_ffn_dim_multiplier": 1.5, "rope_parameters": {"rope_type": "default", "rope_theta": 5000.0}},
]  # fmt: skip


@pytest.mark.parametrize("kw", CASES, ids=["default", "bias-untied-width4", "multiplier-theta"])
def test_parity(checkpoint, check_parity, kw):
    folder, hf = checkpoint("lfm2", **kw)
    model, _, _ = load_model(folder)
    assert model.config.layer_types == [lfm2.LAYER_KINDS[t] for t in hf.config.layer_types]
    assert model.config.mlp.hidden_dim == hf.model.layers[0].feed_forward.w1.out_features
    check_parity(folder, hf)


@pytest.mark.slow
def test_parity_long_prompt(checkpoint, check_parity):
    """150 tokens: the conv state carried across many prefill chunks on our side."""
    folder, hf = checkpoint("lfm2", seed=2)
    check_parity(folder, hf, seed=2, prompt=150)


@pytest.mark.slow
def test_bfloat16_error_is_on_par_with_transformers_own(checkpoint):
    """Loaded in bf16, our logits are about as far from the fp32 reference as transformers' bf16 model's.
    Mean errors: the largest single error is noise at these sizes (0.87x to 1.5x of transformers' over
    three seeds and layer mixes, where the mean errors were 0.89x to 1.08x)."""
    import transformers

    folder, hf = checkpoint("lfm2")
    ids = torch.randint(0, 300, (1, 40), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        want = hf(input_ids=ids, use_cache=False).logits.float()
        theirs = transformers.AutoModelForCausalLM.from_pretrained(folder, dtype=torch.bfloat16).eval()
        got_theirs = theirs(input_ids=ids, use_cache=False).logits.float()
    ours, _, _ = load_model(folder, dtype=torch.bfloat16)
    err_theirs = float((got_theirs - want).abs().mean())
    err_ours = float((ours(ids, ours.new_state()).float() - want).abs().mean())
    assert err_ours <= 1.25 * err_theirs, f"bf16 mean error {err_ours:.3g} vs transformers' {err_theirs:.3g}"


def test_chunked_prefill_equals_token_by_token(checkpoint, chunked_equals_stepwise):
    folder, _ = checkpoint("lfm2")
    ref, _ = chunked_equals_stepwise(load_model(folder)[0], n_tokens=29, state_rtol=1e-5)
    assert "layers.0.conv" in ref


@pytest.mark.parametrize("attention", ["sdpa", "kernel"])
def test_engine_greedy_equals_model_forward(checkpoint, engine_equals_model, attention):
    """short_conv is a graphed kind: the engine's static step (fused with attention="kernel") runs the
    layers' own forwards through its ops and gives the model's greedy tokens."""
    folder, _ = checkpoint("lfm2")
    engine = engine_equals_model(load_model(folder)[0], steps=16, exact=False, attention=attention)
    assert engine.fused == (attention == "kernel")


def test_short_conv_layer_with_the_native_config():
    """A native model with short_conv layers: in pieces equals at once, its state has only `conv`."""
    model = tiny_model(["short_conv", "attention", "short_conv"], short_conv={"d_conv": 4, "bias": True})
    ids = torch.randint(0, 267, (1, 17), generator=torch.Generator().manual_seed(5))
    whole = model(ids, model.new_state())
    state = model.new_state()
    parts = torch.cat([model(ids[:, :9], state), model(ids[:, 9:10], state), model(ids[:, 10:], state)], 1)
    assert float((whole - parts).abs().max()) <= 1e-4 * float(whole.abs().max())
    conv = state.to_tensors()["layers.0.conv"]
    assert conv.shape == (1, 32, 3) and conv.dtype == torch.float32
    assert not any(k.startswith("layers.0.") and k != "layers.0.conv" for k in state.to_tensors())


def test_config_without_short_conv_keeps_its_json():
    """Models without short_conv layers serialise (and fingerprint) as before the kind existed."""
    plain = tiny_model(["attention"]).config
    assert "short_conv" not in plain.to_json()
    for conv in (
        tiny_model(["short_conv"]).config,
        tiny_model(["attention"], short_conv={"d_conv": 4}).config,
    ):
        assert '"short_conv"' in conv.to_json()  # used, or not at its defaults: spelt out
        assert type(conv).model_validate_json(conv.to_json()) == conv


BASE = {"model_type": "lfm2", "vocab_size": 64, "hidden_size": 32, "num_attention_heads": 4,
        "num_hidden_layers": 3}  # fmt: skip


def test_config_reading_old_spellings():
    cfg = lfm2.hybrid_config(
        {**BASE, "full_attn_idxs": [1], "block_ff_dim": 96, "block_multiple_of": 16, "tie_embedding": False,
         "tie_word_embeddings": True, "rope_theta": 20000.0}
    )  # fmt: skip
    assert cfg.layer_types == ["short_conv", "attention", "short_conv"]
    assert cfg.mlp.hidden_dim == 64 and not cfg.tie_embeddings
    assert cfg.attention.rope_theta == 20000.0 and cfg.attention.qk_norm == "head"
    # Neither layer_types nor full_attn_idxs: every layer attention; no theta: LFM2's 1e6.
    cfg = lfm2.hybrid_config(BASE)
    assert cfg.layer_types == ["attention"] * 3 and cfg.attention.rope_theta == 1e6
    assert cfg.mlp.hidden_dim == 8192  # 2/3 of 12288, already a multiple of 256


@pytest.mark.parametrize(
    ("extra", "error"),
    [
        ({"layer_types": ["conv", "sliding_attention", "conv"]}, "unknown layer types"),
        ({"layer_types": ["conv", "conv"]}, "num_hidden_layers=3"),
        ({"rope_parameters": {"rope_type": "yarn", "factor": 2.0}}, "RoPE scaling"),
    ],
)
def test_unsupported_configs_are_one_line_errors(extra, error):
    with pytest.raises(CheckpointError, match=error):
        lfm2.hybrid_config({**BASE, **extra})


# ---- tool calls ------------------------------------------------------------------------------------
# An LFM2-style template of our own: the tool list in the system turn, tool results wrapped in markers.
LFM2_TEMPLATE = (
    "{{ bos_token }}{% set ns = namespace(sys='') %}"
    "{% if messages[0]['role'] == 'system' %}{% set ns.sys = messages[0]['content'] %}"
    "{% set messages = messages[1:] %}{% endif %}"
    "{% if tools %}{% set ns.sys = ns.sys + '\\nList of tools: <|tool_list_start|>' + (tools | tojson)"
    " + '<|tool_list_end|>' %}{% endif %}"
    "{% if ns.sys %}<|im_start|>system\n{{ ns.sys }}<|im_end|>\n{% endif %}"
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n"
    "{% if m['role'] == 'tool' %}<|tool_response_start|>{{ m['content'] }}<|tool_response_end|>"
    "{% else %}{{ m['content'] }}{% endif %}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def test_pythonic_list_of_calls():
    chat = Lfm2ToolCalls(LFM2_TEMPLATE)
    text = (
        'Looking.<|tool_call_start|>[read_file(path="src/a.py", max_lines=-20), '
        "edit(path='b', new={\"k\": [1, 2.5, null]}, dry=true)]<|tool_call_end|>"
    )
    calls = chat.parse_tool_calls(text)
    assert [(c.name, c.arguments, c.error) for c in calls] == [
        ("read_file", {"path": "src/a.py", "max_lines": -20}, None),
        ("edit", {"path": "b", "new": {"k": [1, 2.5, None]}, "dry": True}, None),
    ]
    assert chat.visible_text(text) == "Looking."
    one = chat.parse_tool_calls("<|tool_call_start|>grep(pattern='x')<|tool_call_end|>")  # no list
    assert [(c.name, c.arguments) for c in one] == [("grep", {"pattern": "x"})]
    as_json = chat.parse_tool_calls(
        '<|tool_call_start|>[{"name": "grep", "arguments": {"pattern": "x"}}]<|tool_call_end|>'
    )
    assert [(c.name, c.arguments, c.error) for c in as_json] == [("grep", {"pattern": "x"}, None)]


@pytest.mark.parametrize(
    ("body", "error"),
    [
        ("[read_file('a.py')]", "by name"),
        ("[read_file(path=open('x').read())]", "literals"),
        ("[1 + 2]", "as a list"),
        ("[read_file(path=", "not valid syntax"),
        ("", "empty"),
        ("[]", "empty"),
        ('[{"name": 1}]', 'string "name"'),
    ],
)
def test_malformed_calls_become_errors_the_model_can_read(body, error):
    calls = Lfm2ToolCalls(LFM2_TEMPLATE).parse_tool_calls(f"<|tool_call_start|>{body}<|tool_call_end|>")
    assert len(calls) == 1 and calls[0].error is not None and error in calls[0].error


def test_load_model_reads_lfm2_tool_calls_and_renders_tool_results(checkpoint):
    folder, _ = checkpoint("lfm2")
    (folder / "chat_template.jinja").write_text(LFM2_TEMPLATE)
    _, _, chat = load_model(folder)
    assert isinstance(chat, Lfm2ToolCalls) and format_class_for(LFM2_TEMPLATE) is Lfm2ToolCalls
    tools = [{"name": "read_file", "description": "Read a file", "parameters": {"type": "object"}}]
    first = chat.segment([], [ChatMessage("user", "show a.py")], system="be brief", tools=tools)
    assert "<|tool_list_start|>" in first.text and '"read_file"' in first.text
    said = '<|tool_call_start|>[read_file(path="a.py")]<|tool_call_end|><|im_end|>'
    history = [ChatMessage("user", "show a.py"), ChatMessage("assistant", "", raw=said)]
    nxt = chat.segment(history, [ChatMessage("tool", "print(1)")], system="be brief", tools=tools)
    assert nxt.text == (
        "\n<|im_start|>tool\n<|tool_response_start|>print(1)<|tool_response_end|><|im_end|>\n"
        "<|im_start|>assistant\n"
    )
