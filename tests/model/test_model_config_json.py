"""A model's fingerprint hashes its config JSON, and sessions record the fingerprint: a config field
added later must not change the JSON of models that do not use it, or their sessions stop resuming."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hybrid_agent.model import HybridConfig
from hybrid_agent.model.config import PRESETS

DEFAULT = Path(__file__).resolve().parents[2] / "model" / "default" / "config.json"


def test_the_shipped_config_json_is_written_back_byte_for_byte() -> None:
    """model/default/config.json was written before the late fields existed."""
    assert HybridConfig.load(DEFAULT).to_json() + "\n" == DEFAULT.read_text()


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_late_fields_are_left_out_at_their_defaults(name: str) -> None:
    data = json.loads(HybridConfig.from_name(name).to_json())
    assert "output_gate" not in data["attention"]


def test_a_late_field_that_is_used_is_written_and_read_back() -> None:
    cfg = HybridConfig.from_name("tiny", attention={"output_gate": True})
    data = json.loads(cfg.to_json())
    assert data["attention"]["output_gate"] is True
    assert HybridConfig.model_validate(data) == cfg


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_moe_is_left_out_while_unused(name: str) -> None:
    assert "moe" not in json.loads(HybridConfig.from_name(name).to_json())


def test_a_used_moe_is_written_and_read_back() -> None:
    cfg = HybridConfig.from_name("tiny", moe={"n_experts": 4, "top_k": 2, "layers": [4]})
    data = json.loads(cfg.to_json())
    assert data["moe"]["n_experts"] == 4 and data["moe"]["hidden_dim"] == cfg.mlp.hidden_dim


def test_the_kda_sub_config_is_written_only_when_a_layer_uses_it() -> None:
    """Kimi delta attention (a late sub-config): absent from other models' JSON, spelt out with its
    derived sizes when used, and read back equal."""
    assert "kda" not in json.loads(HybridConfig.from_name("tiny").to_json())
    cfg = HybridConfig(vocab_size=97, d_model=32, layer_types=["kda", "mla"], mla={"rope_theta": None})
    data = json.loads(cfg.to_json())
    assert data["kda"]["n_heads"] == 2 and data["kda"]["head_dim"] == 16 and data["mla"]["rope_theta"] is None
    assert HybridConfig.model_validate(data) == cfg


def test_moe_latent_dim_is_left_out_unless_set() -> None:
    """`moe.latent_dim` (Nemotron 3 Super's latent experts) came after MoE configs were fingerprinted:
    an MoE without one writes the JSON it wrote before; set, it is written and read back."""
    plain = HybridConfig.from_name("tiny", moe={"n_experts": 4, "top_k": 2})
    assert "latent_dim" not in json.loads(plain.to_json())["moe"]
    latent = HybridConfig.from_name("tiny", moe={"n_experts": 4, "top_k": 2, "latent_dim": 16})
    data = json.loads(latent.to_json())
    assert data["moe"]["latent_dim"] == 16 and HybridConfig.model_validate(data) == latent


def test_moe_selection_fields_are_left_out_at_their_defaults() -> None:
    """`score_bias`, `n_groups`, `topk_groups` came after MoE configs were written (Qwen MoE checkpoints):
    a used MoE at their defaults writes the same JSON as before; set, they are written and read back."""
    cfg = HybridConfig.from_name("tiny", moe={"n_experts": 4, "top_k": 2})
    assert set(json.loads(cfg.to_json())["moe"]) == {
        "n_experts", "top_k", "hidden_dim", "shared_hidden_dim", "shared_gate", "scoring", "norm_topk_prob",
        "routed_scaling", "layers",
    }  # fmt: skip
    grouped = HybridConfig.from_name(
        "tiny", moe={"n_experts": 6, "top_k": 2, "score_bias": True, "n_groups": 3, "topk_groups": 2}
    )
    data = json.loads(grouped.to_json())["moe"]
    assert (data["score_bias"], data["n_groups"], data["topk_groups"]) == (True, 3, 2)
    assert HybridConfig.model_validate(json.loads(grouped.to_json())) == grouped
