"""save_pretrained / from_pretrained, config files and presets, the fingerprint, bad checkpoints."""

from __future__ import annotations

import json

import pytest
import torch
from hybrid_agent.model import CheckpointError, ConfigError, HybridConfig, HybridLM, load_model
from hybrid_agent.model.config import LAYER_TYPES
from safetensors.torch import load_file, save_file

MIXED = ["mamba2", "attention", "gated_deltanet", "parallel", "mlp"]
MLA_SIZES = {"n_heads": 4, "kv_lora_rank": 12, "qk_nope_head_dim": 8, "qk_rope_head_dim": 4, "v_head_dim": 8}
# Every layer kind (LAYER_TYPES, so a new kind is covered when it is added), and `parallel` with MLA.
KIND_CASES = [(kind, "attention") for kind in LAYER_TYPES] + [("parallel", "mla")]


def test_save_and_load_round_trip(make_model, tmp_path):
    model = make_model(MIXED)
    model.save_pretrained(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.json", "model.safetensors"]
    loaded = HybridLM.from_pretrained(tmp_path)
    assert loaded.config == model.config
    assert loaded.fingerprint == model.fingerprint
    ids = torch.randint(0, model.config.vocab_size, (1, 19), generator=torch.Generator().manual_seed(0))
    assert torch.equal(loaded(ids, loaded.new_state()), model(ids, model.new_state()))


def test_untied_head_is_saved(make_model, tmp_path):
    model = make_model(["attention"], tie_embeddings=False)
    model.save_pretrained(tmp_path)
    assert "lm_head.weight" in load_file(tmp_path / "model.safetensors")
    assert torch.equal(HybridLM.from_pretrained(tmp_path).lm_head.weight, model.lm_head.weight)


def test_fingerprint_follows_config_and_weights(make_model):
    a, b = make_model(["mamba2"], seed=0), make_model(["mamba2"], seed=0)
    assert a.fingerprint == b.fingerprint and len(a.fingerprint) == 64
    c = make_model(["mamba2"], seed=1)
    assert c.fingerprint != a.fingerprint
    fp = b.fingerprint
    with torch.no_grad():
        b.load_state_dict({**b.state_dict(), "norm.weight": b.norm.weight * 2})
    assert b.fingerprint != fp
    d = make_model(["mamba2"], seed=0, norm_eps=1e-6)  # same weights, another config
    assert d.fingerprint != a.fingerprint
    a._fingerprint = "f" * 64  # what a checkpoint loader sets from the files' digests
    a.to("cpu")  # a device move keeps it
    assert a.fingerprint == "f" * 64
    a.to(torch.float64)  # new bytes: hashed again
    assert a.fingerprint not in ("f" * 64, b.fingerprint)


def test_config_save_load_and_defaults(tmp_path):
    cfg = HybridConfig(vocab_size=100, d_model=256, layer_types=["mamba2", "gated_deltanet", "attention"])
    assert cfg.attention.head_dim == 64 and cfg.attention.n_heads == 4 and cfg.attention.n_kv_heads == 1
    assert cfg.mamba2.head_dim == 64 and cfg.mamba2.d_state == 128 and cfg.mamba2_heads == 8
    assert cfg.mlp.hidden_dim == 704  # 8/3 * 256 rounded up to 64
    cfg.save(tmp_path)
    assert HybridConfig.load(tmp_path) == cfg
    saved = json.loads((tmp_path / "config.json").read_text())
    assert saved["gated_deltanet"]["n_heads"] == 3  # derived sizes are written out
    for name in ("tiny", "20m", "20m-attn"):
        assert HybridConfig.from_name(name).n_layers > 0


def test_presets_are_the_advertised_sizes():
    mixed = HybridLM(HybridConfig.from_name("20m")).num_parameters()
    attn = HybridLM(HybridConfig.from_name("20m-attn")).num_parameters()
    assert 18e6 < mixed < 23e6 and 18e6 < attn < 23e6
    assert abs(mixed - attn) / mixed < 0.1


def test_olmo_hybrid_shape_preset_has_its_parameter_count():
    with torch.device("meta"):  # shapes only: 7.4 B parameters are not allocated
        hybrid = HybridLM(HybridConfig.from_name("olmo-hybrid-7b"))
        attn = HybridLM(HybridConfig.from_name("olmo-hybrid-7b-attn"))
    assert hybrid.num_parameters() == 7_430_870_688  # docs/design.md: 7.43 B
    assert hybrid.config.layer_types.count("attention") == 8 and attn.config.n_layers == 32


def test_config_errors_say_what_to_fix(tmp_path):
    with pytest.raises(ConfigError, match=r"'mla2'.*not a known layer type"):
        HybridConfig(vocab_size=10, d_model=32, layer_types=["attention", "mla2"])
    with pytest.raises(ConfigError, match="n_kv_heads"):
        HybridConfig(
            vocab_size=10, d_model=32, layer_types=["attention"], attention={"n_heads": 4, "n_kv_heads": 3}
        )
    with pytest.raises(ConfigError, match="unknown preset"):
        HybridConfig.from_name("nope")
    with pytest.raises(ConfigError, match=r"no config\.json"):
        HybridConfig.load(tmp_path)
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(ConfigError, match="not valid JSON"):
        HybridConfig.load(tmp_path)


def test_bad_checkpoints_are_refused(make_model, tmp_path):
    with pytest.raises(CheckpointError, match=r"no model\.safetensors"):
        HybridLM.from_pretrained(tmp_path)
    model = make_model(["mamba2", "attention"])
    model.save_pretrained(tmp_path)
    weights = load_file(tmp_path / "model.safetensors")
    del weights["layers.1.mixer.q_proj.weight"]
    save_file(weights, tmp_path / "model.safetensors")
    with pytest.raises(CheckpointError, match=r"missing.*q_proj"):
        HybridLM.from_pretrained(tmp_path)
    weights["layers.1.mixer.q_proj.weight"] = torch.zeros(3, 3)
    save_file(weights, tmp_path / "model.safetensors")
    with pytest.raises(CheckpointError, match="does not match"):
        HybridLM.from_pretrained(tmp_path)


def test_every_layer_type_has_a_mixer_and_a_state_layout():
    from hybrid_agent.model.blocks import MIXERS
    from hybrid_agent.model.config import LAYER_TYPES
    from hybrid_agent.model.state import STATE_SPECS

    assert set(LAYER_TYPES) == set(MIXERS) == set(STATE_SPECS)


@pytest.mark.parametrize("kind, parallel", KIND_CASES, ids=[f"{k}-{p}" for k, p in KIND_CASES])
def test_every_buffer_is_rebuilt_when_a_saved_model_loads(make_model, tmp_path, kind, parallel):
    """Buffers are not saved (RoPE frequencies): both loaders must rebuild every one, bit for bit.
    load_model builds on the meta device and `to_empty`s, which leaves them uninitialised."""
    model = make_model([kind, kind], mla=MLA_SIZES, parallel_attention=parallel, tie_embeddings=False)
    model.save_pretrained(tmp_path)
    ids = torch.randint(0, model.config.vocab_size, (1, 19), generator=torch.Generator().manual_seed(0))
    want = model(ids, model.new_state())
    buffers = dict(model.named_buffers())
    for loaded in (load_model(tmp_path, progress=False)[0], HybridLM.from_pretrained(tmp_path)):
        got = dict(loaded.named_buffers())
        assert sorted(got) == sorted(buffers)
        for name, buf in buffers.items():
            assert got[name].dtype == buf.dtype and torch.equal(got[name], buf), f"buffer {name} differs"
        assert torch.equal(loaded(ids, loaded.new_state()), want)
