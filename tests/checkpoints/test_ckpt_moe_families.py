"""Mixture-of-experts variants of families whose dense models load elsewhere (model/moe.py through each
family's adapter): Granite 4.0-H MoE, Nemotron-H MoE layers (Nemotron 3 Nano; Nemotron 3 Super's latent
experts), Kimi Linear, LFM2-MoE.
Parity
with transformers (tests/checkpoints/test_ckpt_parity.py's `check_parity`), what the adapters map,
chunked prefill equal to token by token, and the CPU decode engine equal to the model's own forward."""

from __future__ import annotations

import json
from typing import Any

import pytest
import torch
from hybrid_agent.model import load_model
from hybrid_agent.model.moe import MoE
from safetensors.torch import load_file, save_file

pytest.importorskip("transformers")

GRANITE_MULTIPLIERS = {"embedding_multiplier": 2.0, "logits_scaling": 1.7, "residual_multiplier": 0.6,
                       "attention_multiplier": 0.2}  # fmt: skip
# Each case: (transformers family, config overrides). Experts: decode steps (1 token, top_k * 1 <= E) take
# the gathered path, prefill the per-expert one (model/moe.py).
CASES: dict[str, tuple[str, dict[str, Any]]] = {
    "granite-moe": ("granitemoehybrid", {
        "num_local_experts": 4, "num_experts_per_tok": 2, "intermediate_size": 16,
        "position_embedding_type": "rope", **GRANITE_MULTIPLIERS,
    }),
    "granite-moe-nope-top1": ("granitemoehybrid", {
        "num_local_experts": 6, "num_experts_per_tok": 1, "intermediate_size": 24,
        "layer_types": ["attention", "mamba"], "num_hidden_layers": 2, "tie_word_embeddings": True,
    }),
    # Nemotron-H: sigmoid scores, choice-only bias, 2 of 4 groups, routed scaling, relu2 experts.
    "nemotron-h-moe": ("nemotron_h", {
        "layers_block_type": ["linear_attention", "moe", "full_attention", "moe", "mlp"],
        "n_routed_experts": 8, "num_experts_per_tok": 3, "moe_intermediate_size": 16,
        "moe_shared_expert_intermediate_size": 24, "n_group": 4, "topk_group": 2,
        "routed_scaling_factor": 2.5,
    }),
    "nemotron-h-moe-ungrouped": ("nemotron_h", {
        "layers_block_type": ["moe", "linear_attention", "moe"], "mlp_bias": True,
        "n_routed_experts": 6, "num_experts_per_tok": 2, "moe_intermediate_size": 16,
        "moe_shared_expert_intermediate_size": 24, "norm_topk_prob": False,
    }),
    # Nemotron 3 Super: the routed experts in a latent space (moe_latent_size), with and without biases.
    "nemotron-h-latent-moe": ("nemotron_h", {
        "layers_block_type": ["linear_attention", "moe", "full_attention", "moe"], "moe_latent_size": 12,
        "n_routed_experts": 8, "num_experts_per_tok": 3, "moe_intermediate_size": 16,
        "moe_shared_expert_intermediate_size": 24, "n_group": 4, "topk_group": 2,
        "routed_scaling_factor": 2.5,
    }),
    "nemotron-h-latent-moe-bias": ("nemotron_h", {
        "layers_block_type": ["moe", "linear_attention", "moe"], "mlp_bias": True, "moe_latent_size": 20,
        "n_routed_experts": 6, "num_experts_per_tok": 2, "moe_intermediate_size": 16,
        "moe_shared_expert_intermediate_size": 24, "norm_topk_prob": False,
    }),
    # Kimi Linear: DeepSeek-V3 selection with SwiGLU experts, on the sparse layers only.
    "kimi-linear-moe": ("kimi_linear", {
        "mlp_layer_types": ["dense", "sparse", "sparse", "dense"], "num_local_experts": 8,
        "num_experts_per_tok": 2, "moe_intermediate_size": 16, "n_shared_experts": 2, "n_group": 4,
        "topk_group": 2, "routed_scaling_factor": 2.5,
    }),
    "kimi-linear-moe-ungrouped": ("kimi_linear", {
        "mlp_layer_types": ["sparse"] * 4, "num_local_experts": 6, "num_experts_per_tok": 3,
        "moe_intermediate_size": 16, "norm_topk_prob": False, "n_group": 1, "topk_group": 1,
    }),
    # LFM2-MoE: sigmoid scores, a choice-only expert bias, no groups, no shared expert.
    "lfm2-moe": ("lfm2_moe", {"routed_scaling_factor": 1.5}),
    "lfm2-moe-no-bias": ("lfm2_moe", {
        "use_expert_bias": False, "norm_topk_prob": False, "num_dense_layers": 2,
        "tie_word_embeddings": False,
    }),
}  # fmt: skip


def _randomize_choice_bias(folder: Any, hf: Any) -> None:
    """transformers keeps `e_score_correction_bias` (LFM2-MoE: `expert_bias`) as a buffer (zeros, untouched
    by the conftest's randomize): give the reference values large enough to change which experts are
    chosen, and save it again."""
    g = torch.Generator().manual_seed(7)
    biases = [b for n, b in hf.named_buffers() if n.endswith(("e_score_correction_bias", "expert_bias"))]
    with torch.no_grad():
        for buf in biases:
            buf.copy_(0.3 * torch.randn(buf.shape, generator=g))
    if biases:
        hf.save_pretrained(folder)


def moe_checkpoint(checkpoint: Any, case: str, **kw: Any) -> tuple[Any, Any]:
    family, base = CASES[case]
    folder, hf = checkpoint(family, **{**base, **kw})
    _randomize_choice_bias(folder, hf)  # (Granite has none)
    return folder, hf


@pytest.mark.parametrize("case", list(CASES))
def test_parity(checkpoint, check_parity, case):
    folder, hf = moe_checkpoint(checkpoint, case)
    model, _, _ = load_model(folder)
    assert any(isinstance(b.mlp, MoE) for b in model.layers)
    check_parity(folder, hf)


def test_granite_adapter_maps_router_experts_and_shared_mlp(checkpoint):
    family, kw = CASES["granite-moe"]
    folder, hf = checkpoint(family, **kw)
    model, _, _ = load_model(folder)
    m = model.config.moe
    assert (m.n_experts, m.top_k, m.hidden_dim, m.shared_hidden_dim) == (4, 2, 16, 64)
    assert m.scoring == "softmax" and m.norm_topk_prob and not m.shared_gate and m.layers is None
    ref, ours = hf.model.layers[0], model.layers[0].mlp
    assert torch.equal(ours.router.weight, ref.block_sparse_moe.router.weight)
    gate_up = ref.block_sparse_moe.experts.gate_up_proj
    assert torch.equal(ours.experts.gate_proj, gate_up[:, :16]) and torch.equal(
        ours.experts.up_proj, gate_up[:, 16:]
    )
    r = kw["residual_multiplier"]
    assert torch.allclose(ours.experts.down_proj, r * ref.block_sparse_moe.experts.down_proj)
    assert torch.allclose(ours.shared_expert.down_proj.weight, r * ref.shared_mlp.output_linear.weight)


def test_granite_both_expert_spellings_load_the_same_model(checkpoint):
    """The Hub's names (`input_linear`, `output_linear`, `router.layer`) and transformers 5's
    (`experts.gate_up_proj`, `experts.down_proj`, `router.weight`) give the same weights."""
    family, kw = CASES["granite-moe"]
    folder, _ = checkpoint(family, **kw)
    want, _, _ = load_model(folder)
    tensors = load_file(folder / "model.safetensors")
    renames = {"input_linear.weight": "experts.gate_up_proj", "output_linear.weight": "experts.down_proj",
               "router.layer.weight": "router.weight"}  # fmt: skip
    moe_names = [n for n in tensors if ".block_sparse_moe." in n]
    assert moe_names
    for name in moe_names:
        for old, new in renames.items():
            for a, b in ((old, new), (new, old)):
                if name.endswith(f"block_sparse_moe.{a}"):
                    tensors[name[: -len(a)] + b] = tensors.pop(name)
    save_file(tensors, folder / "model.safetensors", metadata={"format": "pt"})
    got, _, _ = load_model(folder)
    assert all(torch.equal(t, got.state_dict()[n]) for n, t in want.state_dict().items())


def test_granite_without_experts_key_has_transformers_default_experts(checkpoint):
    """transformers' default num_local_experts is 8: a config.json without the key is an MoE model."""
    family, kw = CASES["granite-moe"]
    folder, _ = checkpoint(family, **{**kw, "num_local_experts": 8})
    cfg = json.loads((folder / "config.json").read_text())
    cfg.pop("num_local_experts")
    (folder / "config.json").write_text(json.dumps(cfg))
    model, _, _ = load_model(folder)
    assert model.config.moe.n_experts == 8


@pytest.mark.parametrize("case", list(CASES))
def test_chunked_prefill_equals_token_by_token(checkpoint, chunked_equals_stepwise, case):
    folder, _ = moe_checkpoint(checkpoint, case)
    chunked_equals_stepwise(load_model(folder)[0])


@pytest.mark.parametrize("case", list(CASES))
def test_engine_greedy_equals_model_forward(checkpoint, engine_equals_model, case):
    folder, _ = moe_checkpoint(checkpoint, case)
    engine_equals_model(load_model(folder)[0])


def test_nemotron_h_adapter_maps_moe_layers(checkpoint):
    folder, hf = moe_checkpoint(checkpoint, "nemotron-h-moe")
    model, _, _ = load_model(folder)
    m = model.config.moe
    assert model.config.layer_types == ["mamba2", "mlp", "attention", "mlp", "mlp"] and m.layers == [1, 3]
    assert [type(b.mlp).__name__ for b in model.layers] == ["NoneType", "MoE", "NoneType", "MoE", "MLP"]
    assert (m.n_experts, m.top_k, m.n_groups, m.topk_groups, m.routed_scaling) == (8, 3, 4, 2, 2.5)
    assert m.scoring == "sigmoid" and m.score_bias and m.shared_hidden_dim == 24
    ref, ours = hf.model.layers[1].mixer, model.layers[1].mlp
    assert torch.equal(ours.router.weight, ref.gate.weight)
    assert torch.equal(ours.score_bias, ref.gate.e_score_correction_bias) and ours.score_bias.abs().sum() > 0
    assert ours.experts.gate_proj is None and torch.equal(ours.experts.up_proj, ref.experts.up_proj)
    assert torch.equal(ours.experts.down_proj, ref.experts.down_proj)
    assert torch.equal(ours.shared_expert.up_proj.weight, ref.shared_experts.up_proj.weight)


def test_nemotron_h_stacked_experts_load_the_same_model(checkpoint):
    """Per-expert weights (the Hub's, and what save_pretrained writes) and transformers 5's stacked
    `mixer.experts.up_proj` / `down_proj` give the same model."""
    folder, _ = moe_checkpoint(checkpoint, "nemotron-h-moe")
    want, _, _ = load_model(folder)
    tensors = load_file(folder / "model.safetensors")
    prefix = next(n for n in tensors if n.endswith("experts.0.up_proj.weight")).split("layers.")[0]
    for i in (1, 3):
        p = f"{prefix}layers.{i}.mixer.experts."
        for proj in ("up_proj", "down_proj"):
            tensors[f"{p}{proj}"] = torch.stack([tensors.pop(f"{p}{e}.{proj}.weight") for e in range(8)])
    save_file(tensors, folder / "model.safetensors", metadata={"format": "pt"})
    got, _, _ = load_model(folder)
    assert all(torch.equal(t, got.state_dict()[n]) for n, t in want.state_dict().items())


def test_nemotron_h_adapter_maps_the_latent_projections(checkpoint):
    """`moe_latent_size`: the routed experts read and write the latent size; fc1/fc2_latent_proj (and
    their biases with mlp_bias) are the layer's latent_in / latent_out; router and shared expert read x."""
    folder, hf = moe_checkpoint(checkpoint, "nemotron-h-latent-moe-bias")
    model, _, _ = load_model(folder)
    assert model.config.moe.latent_dim == 20 and model.config.moe.layers == [0, 2]
    ref, ours = hf.model.layers[2].mixer, model.layers[2].mlp
    assert ours.experts.up_proj.shape == (6, 16, 20) and ours.experts.down_proj.shape == (6, 20, 16)
    assert torch.equal(ours.experts.up_proj, ref.experts.up_proj)
    for mine, theirs in ((ours.latent_in, ref.fc1_latent_proj), (ours.latent_out, ref.fc2_latent_proj)):
        assert torch.equal(mine.weight, theirs.weight) and torch.equal(mine.bias, theirs.bias)
    assert ours.router.weight.shape == (6, 32) and ours.shared_expert.up_proj.in_features == 32


def test_nemotron_h_latent_moe_config_round_trips(checkpoint):
    """The loaded model's config JSON (what sessions fingerprint) spells latent_dim out and reads back."""
    folder, _ = moe_checkpoint(checkpoint, "nemotron-h-latent-moe")
    model, _, _ = load_model(folder)
    data = json.loads(model.config.to_json())
    assert data["moe"]["latent_dim"] == 12
    assert type(model.config).model_validate(data) == model.config


@pytest.mark.parametrize("bad", [0, -4, 2.5, "8", True])
def test_nemotron_h_bad_latent_size_is_refused_in_one_line(checkpoint, bad):
    from hybrid_agent.model.errors import CheckpointError

    folder, _ = moe_checkpoint(checkpoint, "nemotron-h-moe-ungrouped")
    cfg = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**cfg, "moe_latent_size": bad}))
    with pytest.raises(CheckpointError, match="moe_latent_size") as e:
        load_model(folder)
    assert "\n" not in str(e.value)


def test_kimi_linear_adapter_maps_sparse_layers(checkpoint):
    folder, hf = moe_checkpoint(checkpoint, "kimi-linear-moe")
    model, _, _ = load_model(folder)
    m = model.config.moe
    assert m.layers == [1, 2] and [type(b.mlp).__name__ for b in model.layers] == ["MLP", "MoE", "MoE", "MLP"]
    assert (m.n_experts, m.top_k, m.hidden_dim, m.shared_hidden_dim, m.n_groups, m.topk_groups) == (
        8, 2, 16, 32, 4, 2,
    )  # fmt: skip
    ref, ours = hf.model.layers[2].mlp, model.layers[2].mlp
    assert torch.equal(ours.router.weight, ref.gate.weight) and torch.equal(
        ours.score_bias, ref.gate.e_score_correction_bias
    )
    gate_up = ref.experts.gate_up_proj
    assert torch.equal(ours.experts.gate_proj, gate_up[:, :16]) and torch.equal(
        ours.experts.up_proj, gate_up[:, 16:]
    )
    assert torch.equal(ours.experts.down_proj, ref.experts.down_proj)
    assert torch.equal(ours.shared_expert.gate_proj.weight, ref.shared_experts.gate_proj.weight)


def test_kimi_linear_stacked_experts_load_the_same_model(checkpoint):
    """The Hub's per-expert w1 / w3 / w2 under `block_sparse_moe.` and transformers' in-memory
    `mlp.experts.gate_up_proj` / `down_proj` give the same model."""
    folder, _ = moe_checkpoint(checkpoint, "kimi-linear-moe")
    want, _, _ = load_model(folder)
    tensors = load_file(folder / "model.safetensors")
    for i in (1, 2):
        old, new = f"model.layers.{i}.block_sparse_moe.", f"model.layers.{i}.mlp."
        w = {
            n: torch.stack([tensors.pop(f"{old}experts.{e}.{n}.weight") for e in range(8)])
            for n in ("w1", "w2", "w3")
        }
        tensors[f"{new}experts.gate_up_proj"] = torch.cat((w["w1"], w["w3"]), dim=1)
        tensors[f"{new}experts.down_proj"] = w["w2"]
        for name in [n for n in tensors if n.startswith(old)]:
            tensors[new + name[len(old) :]] = tensors.pop(name)
    save_file(tensors, folder / "model.safetensors", metadata={"format": "pt"})
    got, _, _ = load_model(folder)
    assert all(torch.equal(t, got.state_dict()[n]) for n, t in want.state_dict().items())


def test_lfm2_moe_adapter_maps_sparse_layers(checkpoint):
    folder, hf = moe_checkpoint(checkpoint, "lfm2-moe")
    model, _, _ = load_model(folder)
    m = model.config.moe
    assert m.layers == [1, 2, 3] and type(model.layers[0].mlp).__name__ == "MLP"
    assert model.config.mlp.hidden_dim == 48  # intermediate_size as is (no LFM2 width adjustment)
    assert (m.n_experts, m.top_k, m.hidden_dim, m.shared_hidden_dim, m.routed_scaling) == (8, 2, 16, 0, 1.5)
    assert m.scoring == "sigmoid" and m.score_bias and m.n_groups == 1
    ref, ours = hf.model.layers[2].feed_forward, model.layers[2].mlp
    assert torch.equal(ours.router.weight, ref.gate.weight) and torch.equal(ours.score_bias, ref.expert_bias)
    assert ours.score_bias.abs().sum() > 0
    gate_up = ref.experts.gate_up_proj
    assert torch.equal(ours.experts.gate_proj, gate_up[:, :16]) and torch.equal(
        ours.experts.down_proj, ref.experts.down_proj
    )


def test_choice_bias_loads_unrounded_into_a_bfloat16_model(checkpoint):
    folder, hf = moe_checkpoint(checkpoint, "nemotron-h-moe")
    model, _, _ = load_model(folder, dtype="bfloat16")
    ours = model.layers[1].mlp
    assert ours.experts.up_proj.dtype == torch.bfloat16
    assert torch.equal(ours.score_bias, hf.model.layers[1].mixer.gate.e_score_correction_bias)


@pytest.mark.parametrize("case", ["nemotron-h-moe", "kimi-linear-moe"])
def test_bfloat16_router_runs_in_fp32_and_picks_transformers_experts(checkpoint, case):
    """Nemotron-H and Kimi Linear keep the router weight in fp32 in a bf16 model (transformers'
    `_keep_in_fp32_modules_strict`) and apply it to x in fp32: on the same bf16 hidden states our bf16
    model picks the experts (and weights) transformers' bf16 model picks."""
    import transformers
    from hybrid_agent.model.ops import Ops

    folder, _ = moe_checkpoint(checkpoint, case)
    theirs = transformers.AutoModelForCausalLM.from_pretrained(folder, dtype=torch.bfloat16).eval()
    ours, _, _ = load_model(folder, dtype="bfloat16")
    i = next(i for i, b in enumerate(ours.layers) if isinstance(b.mlp, MoE))
    mine = ours.layers[i].mlp
    ref = getattr(theirs.model.layers[i], "mixer" if case.startswith("nemotron") else "mlp").gate
    assert mine.router.weight.dtype == torch.float32 and torch.equal(mine.router.weight, ref.weight)
    x = torch.randn(64, ours.config.d_model, generator=torch.Generator().manual_seed(0)).bfloat16()
    weights, ids = mine.route(mine.logits(x, Ops()))
    with torch.no_grad():
        _, their_w, their_ids = ref(x)
    assert torch.equal(ids.sort(-1).values, their_ids.sort(-1).values)
    torch.testing.assert_close(
        weights.gather(-1, ids.argsort(-1)), their_w.float().gather(-1, their_ids.argsort(-1))
    )
