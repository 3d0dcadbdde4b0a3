"""`HybridConfig`: the typed description of a hybrid layer stack.

Design choices:
- One entry of `layer_types` per layer. Each layer is a pre-norm residual block (mixer, then a SwiGLU
  MLP unless `mlp.enabled` is off); `norm_position="post"` on a mixer's sub-config switches that
  layer kind to OLMo-2 style post-norm (norm on the sub-layer output), which OLMo Hybrid's attention
  layers use. With `moe.n_experts > 0`, the MLP of the layers `moe.layers` names (all by default) is a
  mixture of experts (model/moe.py).
- Every sub-config field left at `None` is derived from `d_model` when the config is built, so
  `HybridConfig(vocab_size=..., d_model=..., layer_types=[...])` alone is valid, and the saved
  `config.json` spells out every derived size (a checkpoint never depends on these heuristics).
- Layer kinds are a closed, extensible list (`LAYER_TYPES`); `model/blocks.py` holds the registry that
  builds the mixer and describes the state of each kind. Adding a kind = one entry in each.
- Errors raise `ConfigError` (not pydantic's `ValidationError`) with a message that says what to fix.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Literal

from hybrid_agent.model.errors import ConfigError
from pydantic import BaseModel, ConfigDict, Field

# Layer kinds a config may name. `model/blocks.py` must have a registry entry for each.
LAYER_TYPES: tuple[str, ...] = (
    "attention",
    "mamba2",
    "gated_deltanet",
    "parallel",
    "mlp",
    "mla",
    "short_conv",
    "kda",
)

CONFIG_FILE = "config.json"

# Added after models were fingerprinted (see `to_json`): sub-configs (named as their layer kind) left out
# while unused and at their defaults, and fields left out while at their defaults.
_LATE_SUBCONFIGS: tuple[str, ...] = ("short_conv", "moe", "kda")
_LATE_FIELDS: dict[str, tuple[str, ...]] = {
    "attention": ("output_gate",),
    "moe": ("score_bias", "n_groups", "topk_groups", "router_fp32", "latent_dim"),
    "short_conv": ("channels",),
}


def _head_size(d_model: int) -> int:
    """Default head size: 64 for real models, smaller for test-sized ones so heads still divide."""
    return 64 if d_model >= 256 else 16


class _Strict(BaseModel):
    # extra="forbid": a misspelt field in a hand-written config.json is an error, not silently ignored.
    model_config = ConfigDict(extra="forbid")


class AttentionConfig(_Strict):
    n_heads: int | None = None  # default d_model // head_dim
    n_kv_heads: int | None = None  # default n_heads // 4 when that divides, else n_heads (grouped-query)
    head_dim: int | None = None
    rope_theta: float | None = 10000.0  # None: no positional encoding (NoPE)
    rope_fraction: float = Field(1.0, gt=0.0, le=1.0)  # partial RoPE: rotate this share of a head (Bamba 0.5)
    qk_norm: Literal["none", "head", "full"] = "none"  # per head (Qwen3) or over all (OLMo)
    # An output gate (Qwen3-Next, Qwen3.5): out = o_proj(attn * sigmoid(g_proj(x))), g_proj (H*Dh, D).
    output_gate: bool = False
    bias: bool = False
    # A window the model was trained with (keys in (q - window, q] are seen), and sink tokens kept visible.
    # The runtime window of `HybridLM.new_state(window=, sinks=)` combines with these (smaller window wins).
    sliding_window: int | None = None
    sink_tokens: int = 0
    norm_position: Literal["pre", "post"] = "pre"


class Mamba2Config(_Strict):
    expand: int = 2
    d_inner: int | None = None  # SSM width (E); default expand * d_model (Falcon-H1, Nemotron-H set it)
    head_dim: int | None = None  # default 64
    d_state: int | None = None  # default 128
    n_groups: int = 1
    d_conv: int = 4
    chunk_size: int = 64
    conv_bias: bool = True
    bias: bool = False  # of in_proj / out_proj
    norm_before_gate: bool = False  # transformers' Mamba2 gates with silu(z) first, then normalises
    gated_norm: bool = True  # off: the output is y * silu(z) with no norm and no weight (Falcon-H1's option)
    dt_min: float = 0.001  # init range of dt (through dt_bias)
    dt_max: float = 0.1
    dt_init_floor: float = 1e-4
    dt_limit: tuple[float, float | None] = (0.0, None)  # clamp of dt after softplus; None = no upper bound
    norm_position: Literal["pre", "post"] = "pre"


class GatedDeltaNetConfig(_Strict):
    n_heads: int | None = None  # query/key heads; default 3/4 d_model // head_k_dim
    n_v_heads: int | None = None  # value heads, a multiple of n_heads; default n_heads
    head_k_dim: int | None = None  # default 64
    head_v_dim: int | None = None  # default 2 * head_k_dim
    d_conv: int = 4
    conv_bias: bool = False
    allow_neg_eigval: bool = False  # beta in (0, 2) instead of (0, 1)
    chunk_size: int = 64
    norm_eps: float = 1e-5  # of the gated output norm (FLA's default)
    a_init_range: tuple[float, float] = (1.0, 16.0)
    dt_min: float = 0.001
    dt_max: float = 0.1
    dt_init_floor: float = 1e-4
    norm_position: Literal["pre", "post"] = "pre"


class MLAConfig(_Strict):
    """Multi-head latent attention (DeepSeek-V2/V3; model/mla.py). Caches kv_lora_rank + qk_rope_head_dim
    numbers per token. Its layers follow the same window policy as `attention` (see state.attention_policy).
    """

    n_heads: int | None = None  # default d_model // qk_nope_head_dim
    q_lora_rank: int | None = None  # None: full-rank q_proj; else q_a_proj -> q_a_layernorm -> q_b_proj
    kv_lora_rank: int | None = None  # cached latent width; default 4 * qk_nope_head_dim (DeepSeek)
    qk_nope_head_dim: int | None = None  # default 64 (16 for test-sized models)
    qk_rope_head_dim: int | None = None  # shared RoPE key part; default qk_nope_head_dim // 2
    v_head_dim: int | None = None  # default qk_nope_head_dim
    rope_theta: float | None = 10000.0  # None: no RoPE (Kimi Linear); k_rope is then cached as is
    rope_interleave: bool = False  # DeepSeek checkpoints rotate (x0, x1), (x2, x3), ... pairs
    bias: bool = False  # of q_a_proj, kv_a_proj_with_mqa and o_proj (transformers' attention_bias)
    norm_eps: float = 1e-6  # of q_a_layernorm and kv_a_layernorm
    norm_position: Literal["pre", "post"] = "pre"


class ShortConvConfig(_Strict):
    """The gated short convolution (model/short_conv.py; LFM2's conv layers)."""

    d_conv: int = 3  # conv width (LFM2's conv_L_cache); the state keeps d_conv - 1 inputs
    bias: bool = False  # of in_proj, the conv and out_proj together (LFM2's conv_bias)
    channels: int | None = None  # conv channels; default d_model (fewer on a tensor-parallel rank)
    norm_position: Literal["pre", "post"] = "pre"


class KDAConfig(_Strict):
    """Kimi delta attention (model/kda.py; Kimi Linear's linear-attention layers)."""

    n_heads: int | None = None  # default d_model // head_dim
    head_dim: int | None = None  # of q, k and v alike; default 64 (16 for test-sized models)
    d_conv: int = 4  # width of the short convolutions on q, k and v
    chunk_size: int = 64
    norm_eps: float = 1e-5  # of the gated output norm
    a_init_range: tuple[float, float] = (1.0, 16.0)
    dt_min: float = 0.001
    dt_max: float = 0.1
    dt_init_floor: float = 1e-4
    norm_position: Literal["pre", "post"] = "pre"


class MLPConfig(_Strict):
    enabled: bool = True  # off: blocks are mixer-only (pure Mamba-2 stacks)
    in_mixer_layers: bool = True  # off: only 'mlp' layers have an MLP, mixer layers none (Nemotron-H)
    activation: Literal["swiglu", "relu2"] = "swiglu"  # relu2: down(relu(up(x))^2), no gate_proj (Nemotron-H)
    hidden_dim: int | None = None  # default 8/3 d_model rounded up to a multiple of 64
    bias: bool = False


class MoEConfig(_Strict):
    """A mixture-of-experts feed-forward (model/moe.py) in place of the MLP of chosen layers.

    Which layers: `layers` lists their indices; None means every layer that has an MLP. `n_experts=0`
    (the default) means no MoE anywhere. Each routed expert is an MLP of `hidden_dim` with `mlp.activation`
    (SwiGLU, or relu2 without a gate); the router scores experts by softmax or sigmoid of a linear map,
    keeps the `top_k` best, optionally renormalises their weights to sum to 1 (`norm_topk_prob`) and scales
    them by `routed_scaling`. DeepSeek-V3-style selection: with `score_bias` a learned per-expert bias is
    added to the scores for choosing only (the weights are the unbiased scores); with `n_groups` > 1 the
    experts are split into that many equal groups, each group scored by the sum of its two best (biased)
    scores, and only experts of the `topk_groups` best groups may be chosen. An optional shared expert
    (same activation, `shared_hidden_dim`, 0 = none) sees every token, optionally gated by
    sigmoid(linear(x)). `router_fp32`: the router's weight is kept in fp32 whatever the model's dtype and
    applied to x cast to fp32 (transformers' Nemotron-H and Kimi Linear keep `gate.weight` in fp32), so
    a bf16 model chooses the experts the checkpoint's own code chooses; otherwise the router runs in the
    model's dtype and only the scores are fp32 (Qwen, Granite, LFM2). `latent_dim` (Nemotron 3 Super's
    `moe_latent_size`; 0 = none): the routed experts work in a smaller space, x projected down to
    `latent_dim` before them (`latent_in`, D -> latent_dim) and their weighted sum projected back up after
    (`latent_out`); the router and the shared expert still read x itself.
    """

    n_experts: int = Field(0, ge=0)
    top_k: int = Field(1, ge=1)
    hidden_dim: int | None = None  # of each routed expert; default mlp.hidden_dim
    shared_hidden_dim: int = Field(0, ge=0)
    shared_gate: bool = False  # Qwen's shared_expert_gate: (D -> 1), sigmoid
    scoring: Literal["softmax", "sigmoid"] = "softmax"
    norm_topk_prob: bool = True
    routed_scaling: float = 1.0
    layers: list[int] | None = None
    score_bias: bool = False  # a per-expert bias (E,) on the scores, for choosing only
    n_groups: int = Field(1, ge=1)
    topk_groups: int = Field(1, ge=1)
    router_fp32: bool = False
    latent_dim: int = Field(0, ge=0)

    def used_in(self, layer: int) -> bool:
        """Whether layer `layer`'s MLP is an MoE."""
        return self.n_experts > 0 and (self.layers is None or layer in self.layers)


class HybridConfig(_Strict):
    vocab_size: int = Field(gt=0)
    d_model: int = Field(gt=0)
    layer_types: list[str] = Field(min_length=1)
    attention: AttentionConfig = Field(default_factory=AttentionConfig)
    mamba2: Mamba2Config = Field(default_factory=Mamba2Config)
    gated_deltanet: GatedDeltaNetConfig = Field(default_factory=GatedDeltaNetConfig)
    mla: MLAConfig = Field(default_factory=MLAConfig)
    parallel_attention: Literal["attention", "mla"] = "attention"  # the attention branch of `parallel`
    short_conv: ShortConvConfig = Field(default_factory=ShortConvConfig)
    kda: KDAConfig = Field(default_factory=KDAConfig)
    mlp: MLPConfig = Field(default_factory=MLPConfig)
    moe: MoEConfig = Field(default_factory=MoEConfig)
    norm_eps: float = 1e-5
    tie_embeddings: bool = True
    init_std: float = 0.02

    def model_post_init(self, context: object, /) -> None:
        self._check_layer_types()
        self._derive()
        self._check_sizes()

    @property
    def n_layers(self) -> int:
        return len(self.layer_types)

    # ----------------------------------------------------------------------------------------------
    def _check_layer_types(self) -> None:
        for i, kind in enumerate(self.layer_types):
            if kind not in LAYER_TYPES:
                raise ConfigError(
                    f"layer_types[{i}] is {kind!r}, which is not a known layer type; "
                    f"use one of {', '.join(LAYER_TYPES)}"
                )
        if "mlp" in self.layer_types and not self.mlp.enabled:
            raise ConfigError("layer type 'mlp' needs mlp.enabled=True; remove those layers or enable it")

    def _derive(self) -> None:
        d, head = self.d_model, _head_size(self.d_model)
        a = self.attention
        a.head_dim = a.head_dim or head
        a.n_heads = a.n_heads or max(1, d // a.head_dim)
        if a.n_kv_heads is None:
            a.n_kv_heads = a.n_heads // 4 if a.n_heads % 4 == 0 else a.n_heads
        m = self.mamba2
        m.d_inner = m.d_inner or d * m.expand
        m.head_dim = m.head_dim or head
        m.d_state = m.d_state or (128 if d >= 256 else 16)
        g = self.gated_deltanet
        g.head_k_dim = g.head_k_dim or head
        g.head_v_dim = g.head_v_dim or 2 * g.head_k_dim
        g.n_heads = g.n_heads or max(1, (3 * d // 4) // g.head_k_dim)
        g.n_v_heads = g.n_v_heads or g.n_heads
        la = self.mla
        la.qk_nope_head_dim = la.qk_nope_head_dim or head
        la.qk_rope_head_dim = la.qk_rope_head_dim or max(2, la.qk_nope_head_dim // 2)
        la.v_head_dim = la.v_head_dim or la.qk_nope_head_dim
        la.kv_lora_rank = la.kv_lora_rank or 4 * la.qk_nope_head_dim
        la.n_heads = la.n_heads or max(1, d // la.qk_nope_head_dim)
        kd = self.kda
        if "kda" in self.layer_types:  # unused, it stays at its defaults and out of config.json (to_json)
            kd.head_dim = kd.head_dim or head
            kd.n_heads = kd.n_heads or max(1, d // kd.head_dim)
        if self.mlp.hidden_dim is None:
            self.mlp.hidden_dim = -(-(8 * d // 3) // 64) * 64
        if self.moe.n_experts and self.moe.hidden_dim is None:
            self.moe.hidden_dim = self.mlp.hidden_dim

    def _check_sizes(self) -> None:
        a, m, g = self.attention, self.mamba2, self.gated_deltanet
        assert a.n_heads and a.n_kv_heads and m.head_dim and g.n_heads and g.n_v_heads  # set by _derive
        if a.n_heads % a.n_kv_heads:
            raise ConfigError(f"attention.n_heads={a.n_heads} is not a multiple of n_kv_heads={a.n_kv_heads}")
        if a.sliding_window is not None and a.sliding_window < 1:
            raise ConfigError("attention.sliding_window must be >= 1 or null (full attention)")
        if self.mamba2_d_inner % m.head_dim:
            raise ConfigError(
                f"mamba2: d_inner={self.mamba2_d_inner} is not a multiple of head_dim={m.head_dim}"
            )
        if self.mamba2_heads % m.n_groups:
            raise ConfigError(f"mamba2: {self.mamba2_heads} heads do not split into n_groups={m.n_groups}")
        if g.n_v_heads % g.n_heads:
            raise ConfigError(
                f"gated_deltanet.n_v_heads={g.n_v_heads} is not a multiple of n_heads={g.n_heads}"
            )
        if self.mla.qk_rope_head_dim and self.mla.qk_rope_head_dim % 2:
            raise ConfigError(
                f"mla.qk_rope_head_dim={self.mla.qk_rope_head_dim} must be even (RoPE rotates pairs)"
            )
        moe = self.moe
        if moe.n_experts and moe.top_k > moe.n_experts:
            raise ConfigError(f"moe.top_k={moe.top_k} is more than moe.n_experts={moe.n_experts}")
        if moe.n_experts and moe.n_experts % moe.n_groups:
            raise ConfigError(f"moe.n_experts={moe.n_experts} does not split into n_groups={moe.n_groups}")
        if moe.n_experts and moe.topk_groups > moe.n_groups:
            raise ConfigError(f"moe.topk_groups={moe.topk_groups} is more than n_groups={moe.n_groups}")
        if (
            moe.n_experts
            and moe.n_groups > 1
            and moe.top_k > moe.topk_groups * (moe.n_experts // moe.n_groups)
        ):
            raise ConfigError(
                f"moe.top_k={moe.top_k} is more than the experts in topk_groups={moe.topk_groups} groups"
            )
        if moe.layers is not None and any(not 0 <= i < self.n_layers for i in moe.layers):
            raise ConfigError(f"moe.layers {moe.layers} names a layer outside 0..{self.n_layers - 1}")
        widths = (
            ("mamba2", m.d_conv),
            ("gated_deltanet", g.d_conv),
            ("short_conv", self.short_conv.d_conv),
            ("kda", self.kda.d_conv),
        )
        for name, width in widths:
            if width < 2:
                raise ConfigError(f"{name}.d_conv must be >= 2 (got {width})")

    # ---- derived sizes used by the layers and the state ------------------------------------------
    @property
    def mamba2_d_inner(self) -> int:
        assert self.mamba2.d_inner is not None  # set by _derive
        return self.mamba2.d_inner

    @property
    def mamba2_heads(self) -> int:
        assert self.mamba2.head_dim is not None
        return self.mamba2_d_inner // self.mamba2.head_dim

    @property
    def mamba2_conv_dim(self) -> int:
        """Channels of the Mamba-2 conv: x, B and C side by side."""
        assert self.mamba2.d_state is not None
        return self.mamba2_d_inner + 2 * self.mamba2.n_groups * self.mamba2.d_state

    @property
    def gdn_key_dim(self) -> int:
        g = self.gated_deltanet
        assert g.n_heads and g.head_k_dim
        return g.n_heads * g.head_k_dim

    @property
    def gdn_value_dim(self) -> int:
        g = self.gated_deltanet
        assert g.n_v_heads and g.head_v_dim
        return g.n_v_heads * g.head_v_dim

    @property
    def gdn_conv_dim(self) -> int:
        """Channels of the Gated DeltaNet short conv: q, k and v side by side."""
        return 2 * self.gdn_key_dim + self.gdn_value_dim

    # ---- presets and files -------------------------------------------------------------------------
    @classmethod
    def from_name(cls, name: str, **overrides: object) -> HybridConfig:
        """A named preset (see `PRESETS`), with optional top-level field overrides."""
        if name not in PRESETS:
            raise ConfigError(f"unknown preset {name!r}; known presets: {', '.join(sorted(PRESETS))}")
        return cls.model_validate({**PRESETS[name], **overrides})

    def to_json(self) -> str:
        """The config as saved and fingerprinted. Sub-configs and fields added after models were
        fingerprinted are left out while unused and at their defaults (`_LATE_SUBCONFIGS`, `_LATE_FIELDS`),
        so existing models keep their fingerprints (and their sessions resume)."""
        late: dict[str, object] = {
            n: True
            for n in _LATE_SUBCONFIGS
            if n not in self.layer_types and getattr(self, n) == type(getattr(self, n))()
        }
        for section, fields in _LATE_FIELDS.items():
            sub = getattr(self, section)
            off = {f for f in fields if getattr(sub, f) == type(sub).model_fields[f].default}
            if off and section not in late:
                late[section] = off
        return self.model_dump_json(indent=2, exclude=late)

    def save(self, directory: str | Path) -> Path:
        path = Path(directory)
        path.mkdir(parents=True, exist_ok=True)
        (path / CONFIG_FILE).write_text(self.to_json() + "\n")
        return path / CONFIG_FILE

    @classmethod
    def load(cls, path: str | Path) -> HybridConfig:
        """Read `config.json` (a path to the file, or to the directory holding it)."""
        path = Path(path)
        if path.is_dir():
            path = path / CONFIG_FILE
        if not path.is_file():
            raise ConfigError(f"no {CONFIG_FILE} at {path}; pass a model directory saved by save_pretrained")
        try:
            data = json.loads(path.read_text())
        except json.JSONDecodeError as e:
            raise ConfigError(f"{path} is not valid JSON ({e}); fix or re-save it") from e
        return cls.model_validate(data)


# The byte tokenizer's vocabulary: 256 bytes + the 11 native special tokens (model/tokenizer.py).
BYTE_VOCAB_SIZE = 267

_MIXED_20M = ["mamba2", "gated_deltanet", "attention"] * 2
PRESETS: dict[str, dict[str, object]] = {
    # Every layer kind once, small enough for unit tests.
    "tiny": {
        "vocab_size": BYTE_VOCAB_SIZE,
        "d_model": 64,
        "layer_types": ["mamba2", "attention", "gated_deltanet", "parallel", "mlp"],
        "attention": {"n_heads": 4, "n_kv_heads": 2, "head_dim": 16},
        "mamba2": {"head_dim": 16, "d_state": 16, "chunk_size": 16},
        "gated_deltanet": {
            "n_heads": 2,
            "n_v_heads": 4,
            "head_k_dim": 16,
            "head_v_dim": 16,
            "chunk_size": 16,
        },
    },
    # ~20M parameters, 2 Mamba-2 : 2 Gated DeltaNet : 2 attention, for the CPU benchmark.
    "20m": {"vocab_size": BYTE_VOCAB_SIZE, "d_model": 512, "layer_types": _MIXED_20M},
    # The same width and about the same parameter count, attention only: the baseline.
    "20m-attn": {"vocab_size": BYTE_VOCAB_SIZE, "d_model": 512, "layer_types": ["attention"] * 7},
    # The shape of OLMo Hybrid 7B (transformers' default OlmoHybridConfig: 3 Gated DeltaNet : 1 attention,
    # post-norm attention with QK-norm over all heads, no RoPE): the GPU reference workload of
    # docs/design.md, with random weights. 7.43 B parameters.
    "olmo-hybrid-7b": {
        "vocab_size": 100352,
        "d_model": 3840,
        "layer_types": (["gated_deltanet"] * 3 + ["attention"]) * 8,
        "attention": {
            "n_heads": 30,
            "n_kv_heads": 30,
            "head_dim": 128,
            "rope_theta": None,
            "qk_norm": "full",
            "norm_position": "post",
        },
        "gated_deltanet": {
            "n_heads": 30,
            "head_k_dim": 96,
            "head_v_dim": 192,
            "allow_neg_eigval": True,
            "norm_eps": 1e-5,
        },
        "mlp": {"hidden_dim": 11008},
        "norm_eps": 1e-6,
        "tie_embeddings": False,
    },
}
# The same width and depth, attention layers only (the attention-only baseline of docs/design.md).
PRESETS["olmo-hybrid-7b-attn"] = {**PRESETS["olmo-hybrid-7b"], "layer_types": ["attention"] * 32}
