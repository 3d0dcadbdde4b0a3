"""Tensor parallelism over torch.distributed: the rank's context, the shard rules, and a model's shard.

Design choices (docs/design.md, "Tensor parallelism"):
- One forward for any layout. A rank builds `HybridLM` from a *local config* (`local_config`): the head
  counts, SSM widths, MLP and expert hidden sizes divided by the world size, so every mixer runs its
  one `forward(x, layer, state, ops)` on its own heads without knowing that others exist.
- Column-parallel input projections (each rank its heads' rows), row-parallel output projections (each
  rank its heads' columns); a block all-reduces its mixer's and its MLP's output (model/blocks.py),
  once per sub-layer. A row-parallel bias is kept by rank 0 only (zeros elsewhere), so the sum adds it
  once. Everything an output depends on linearly (the parallel mixer's gate, the MoE's routed and
  shared experts, the projection up from an MoE's latent space) sums correctly from partial outputs.
- Mamba-2 with a single group (Bamba, Falcon-H1): every rank keeps that group's B and C (replicated, as
  vLLM does); its gated norm spans all of d_inner, so the norm sums its squares over the ranks. So does
  attention's QK-norm over all heads (`qk_norm="full"`, OLMo).
- Embeddings and the LM head are vocab-parallel: rank r holds rows [r V', (r + 1) V') of the vocabulary
  padded to a multiple of the world (V' = ceil(V / world)); the embedding sums the ranks' lookups (a
  token's row is on one rank, zeros on the others), the head gathers the ranks' logits.
- Shard rules are data (`weight_rules`, `state_rules`): for each tensor name, the axis that splits and
  its segments (a size and whether it splits or is replicated). Weights and state use the same rules,
  so a state saved at one layout is gathered to the full layout and re-split for another (`gather_state`,
  `split_state`): pure copies, exact.
- The full model's fingerprint is the session's model identity; it does not depend on the layout
  (`shard_model` keeps the full model's).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from hybrid_agent.model.config import HybridConfig
from hybrid_agent.model.errors import ConfigError
from torch import Tensor

Seg = tuple[int, bool]  # (size along the split axis, split across the ranks (True) or replicated)


@dataclass(frozen=True)
class Split:
    """A tensor cut along `dim` into `segs`: each split segment gives every rank its 1/world share."""

    dim: int
    segs: tuple[Seg, ...]


FIRST = "first"  # a row-parallel bias: rank 0 keeps it, the others hold zeros
VOCAB = "vocab"  # rows of the vocabulary, padded to a multiple of the world
Rule = Split | str | None  # None: replicated


@dataclass(frozen=True)
class TensorParallel:
    """Where this process sits: `rank` of `world` in the process `group` (world 1: every call a no-op)."""

    rank: int = 0
    world: int = 1
    group: Any = None

    @classmethod
    def current(cls, group: Any = None) -> TensorParallel:
        """The context of an initialised default process group (or `group`); world 1 without one."""
        if not dist.is_available() or not dist.is_initialized():
            return cls()
        return cls(dist.get_rank(group), dist.get_world_size(group), group)

    def backend(self) -> str:
        """The group's backend ("gloo", "nccl"); "" at world 1."""
        if self.world == 1:
            return ""
        try:
            return str(dist.get_backend(self.group))
        except ValueError:  # a group made outside torch.distributed's registry (tests' thread ranks)
            return str(self.group.name())

    def all_reduce(self, x: Tensor) -> Tensor:
        """The sum of `x` over the ranks (in place when `x` is contiguous)."""
        if self.world == 1:
            return x
        x = x.contiguous()
        dist.all_reduce(x, group=self.group)
        return x

    def all_gather(self, x: Tensor, dim: int) -> Tensor:
        """The ranks' `x` side by side along `dim`, in rank order."""
        if self.world == 1:
            return x
        parts = [torch.empty_like(x) for _ in range(self.world)]
        dist.all_gather(parts, x.contiguous(), group=self.group)
        return torch.cat(parts, dim=dim)

    def vocab_rows(self, vocab: int) -> int:
        return -(-vocab // self.world)

    def embed(self, weight: Tensor, ids: Tensor) -> Tensor:
        """Vocab-parallel embedding: each token's row from the rank that holds it, summed over the ranks."""
        if self.world == 1:
            return torch.nn.functional.embedding(ids, weight)
        rows = weight.shape[0]
        local = ids - self.rank * rows
        inside = (local >= 0) & (local < rows)
        x = torch.nn.functional.embedding(local.clamp(0, rows - 1), weight) * inside.unsqueeze(-1)
        return self.all_reduce(x)

    def logits(self, x: Tensor, weight: Tensor, vocab: int, matmul: Any = None) -> Tensor:
        """The LM head: each rank's vocabulary rows, gathered (B, T, vocab). `matmul(x, weight)` computes
        the rank's part (F.linear by default; the decode engine's step passes its GEMV choice)."""
        out = (matmul or torch.nn.functional.linear)(x, weight)
        return out if self.world == 1 else self.all_gather(out, -1)[..., :vocab]


def local_config(cfg: HybridConfig, world: int) -> HybridConfig:
    """The sizes one rank of `world` computes with; raises ConfigError where a size does not divide."""
    if world == 1:
        return cfg
    out = cfg.model_copy(deep=True)
    kinds = set(cfg.layer_types)
    if "parallel" in kinds:
        kinds |= {"mamba2", "mla" if cfg.parallel_attention == "mla" else "attention"}

    def div(what: str, n: int | None) -> int:
        assert n is not None  # set by HybridConfig._derive
        if n % world:
            raise ConfigError(f"{what}={n} does not split over tp={world}; choose a tp that divides it")
        return n // world

    if "attention" in kinds:
        a = out.attention
        a.n_heads, a.n_kv_heads = (
            div("attention.n_heads", a.n_heads),
            div("attention.n_kv_heads", a.n_kv_heads),
        )
    if "mamba2" in kinds:
        m = out.mamba2
        m.d_inner = div("mamba2 heads", cfg.mamba2_heads) * (m.head_dim or 1)
        m.n_groups = 1 if m.n_groups == 1 else div("mamba2.n_groups", m.n_groups)
    if "gated_deltanet" in kinds:
        g = out.gated_deltanet
        g.n_heads, g.n_v_heads = div("gated_deltanet.n_heads", g.n_heads), div("n_v_heads", g.n_v_heads)
    if "mla" in kinds:
        out.mla.n_heads = div("mla.n_heads", out.mla.n_heads)
    if "kda" in kinds:
        out.kda.n_heads = div("kda.n_heads", out.kda.n_heads)
    if "short_conv" in kinds:
        out.short_conv.channels = div("d_model (short_conv channels)", cfg.d_model)
    if cfg.mlp.enabled:
        out.mlp.hidden_dim = div("mlp.hidden_dim", cfg.mlp.hidden_dim)
    if cfg.moe.n_experts:
        out.moe.hidden_dim = div("moe.hidden_dim", cfg.moe.hidden_dim)
        if cfg.moe.shared_hidden_dim:
            out.moe.shared_hidden_dim = div("moe.shared_hidden_dim", cfg.moe.shared_hidden_dim)
    return out


# ---- shard rules -------------------------------------------------------------------------------------
def _rows(*segs: Seg) -> Split:
    return Split(0, segs)


def _mixer_rules(cfg: HybridConfig, kind: str) -> dict[str, Rule]:
    """Rules of one mixer's weights by their names inside the mixer (unnamed ones are replicated)."""
    if kind == "attention":
        a = cfg.attention
        assert a.n_heads and a.n_kv_heads and a.head_dim
        q, kv = (a.n_heads * a.head_dim, True), (a.n_kv_heads * a.head_dim, True)
        return {
            **{f"{p}.{w}": _rows(q) for p in ("q_proj", "g_proj") for w in ("weight", "bias")},
            **{f"{p}.{w}": _rows(kv) for p in ("k_proj", "v_proj") for w in ("weight", "bias")},
            "o_proj.weight": Split(1, (q,)),
            "o_proj.bias": FIRST,
            **({"q_norm.weight": _rows(q), "k_norm.weight": _rows(kv)} if a.qk_norm == "full" else {}),
        }
    if kind == "mamba2":
        m = cfg.mamba2
        assert m.d_state
        e, h, bc = (
            (cfg.mamba2_d_inner, True),
            (cfg.mamba2_heads, True),
            (m.n_groups * m.d_state, m.n_groups > 1),
        )
        return {
            **{f"in_proj.{w}": _rows(e, e, bc, bc, h) for w in ("weight", "bias")},
            **{f"conv1d.{w}": _rows(e, bc, bc) for w in ("weight", "bias")},
            **{n: _rows(h) for n in ("dt_bias", "A_log", "D")},
            "norm.weight": _rows(e),
            "out_proj.weight": Split(1, (e,)),
            "out_proj.bias": FIRST,
        }
    if kind == "gated_deltanet":
        g = cfg.gated_deltanet
        assert g.n_v_heads
        k, v, h = (cfg.gdn_key_dim, True), (cfg.gdn_value_dim, True), (g.n_v_heads, True)
        return {
            "q_proj.weight": _rows(k),
            "k_proj.weight": _rows(k),
            "v_proj.weight": _rows(v),
            "g_proj.weight": _rows(v),
            "a_proj.weight": _rows(h),
            "b_proj.weight": _rows(h),
            **{f"conv1d.{w}": _rows(k, k, v) for w in ("weight", "bias")},
            "A_log": _rows(h),
            "dt_bias": _rows(h),
            "o_proj.weight": Split(1, (v,)),
        }
    if kind == "kda":
        c = cfg.kda
        assert c.n_heads and c.head_dim
        d, h = (c.n_heads * c.head_dim, True), (c.n_heads, True)
        return {
            **{f"{p}.weight": _rows(d) for p in ("q_proj", "k_proj", "v_proj", "f_b_proj", "g_b_proj")},
            "conv1d.weight": _rows(d, d, d),
            "b_proj.weight": _rows(h),
            "A_log": _rows(h),
            "dt_bias": _rows(d),
            "o_proj.weight": Split(1, (d,)),
        }
    if kind == "mla":
        la = cfg.mla
        assert la.n_heads and la.qk_nope_head_dim and la.qk_rope_head_dim and la.v_head_dim
        qk = (la.n_heads * (la.qk_nope_head_dim + la.qk_rope_head_dim), True)
        return {
            "q_proj.weight": _rows(qk),
            "q_b_proj.weight": _rows(qk),
            "kv_b_proj.weight": _rows((la.n_heads * (la.qk_nope_head_dim + la.v_head_dim), True)),
            "o_proj.weight": Split(1, ((la.n_heads * la.v_head_dim, True),)),
            "o_proj.bias": FIRST,
        }
    if kind == "short_conv":
        d = (cfg.d_model, True)
        return {
            **{f"in_proj.{w}": _rows(d, d, d) for w in ("weight", "bias")},
            **{f"conv1d.{w}": _rows(d) for w in ("weight", "bias")},
            "out_proj.weight": Split(1, (d,)),
            "out_proj.bias": FIRST,
        }
    if kind == "parallel":
        att = "mla" if cfg.parallel_attention == "mla" else "attention"
        return {
            **{f"attention.{n}": r for n, r in _mixer_rules(cfg, att).items()},
            **{f"mamba.{n}": r for n, r in _mixer_rules(cfg, "mamba2").items()},
        }
    return {}


def _mlp_rules(hidden: int | None) -> dict[str, Rule]:
    assert hidden is not None
    i = (hidden, True)
    return {
        **{f"{p}.{w}": _rows(i) for p in ("gate_proj", "up_proj") for w in ("weight", "bias")},
        "down_proj.weight": Split(1, (i,)),
        "down_proj.bias": FIRST,
    }


def weight_rules(cfg: HybridConfig) -> dict[str, Rule]:
    """The rule of every weight name of a model of `cfg` that is not replicated (full sizes)."""
    out: dict[str, Rule] = {"embed_tokens.weight": VOCAB, "lm_head.weight": VOCAB}
    for i, kind in enumerate(cfg.layer_types):
        out.update({f"layers.{i}.mixer.{n}": r for n, r in _mixer_rules(cfg, kind).items()})
        if cfg.moe.used_in(i):
            e = (cfg.moe.hidden_dim or 0, True)
            out[f"layers.{i}.mlp.experts.gate_proj"] = Split(1, (e,))
            out[f"layers.{i}.mlp.experts.up_proj"] = Split(1, (e,))
            out[f"layers.{i}.mlp.experts.down_proj"] = Split(2, (e,))
            # A latent space (moe.latent_dim): latent_in is replicated (every rank's experts read all of
            # it) and so is latent_out, linear in the ranks' partial sums; its bias is added once.
            out[f"layers.{i}.mlp.latent_out.bias"] = FIRST
            if cfg.moe.shared_hidden_dim:
                shared = _mlp_rules(cfg.moe.shared_hidden_dim).items()
                out.update({f"layers.{i}.mlp.shared_expert.{n}": r for n, r in shared})
        else:
            out.update({f"layers.{i}.mlp.{n}": r for n, r in _mlp_rules(cfg.mlp.hidden_dim).items()})
    return out


def state_rules(cfg: HybridConfig) -> dict[str, Rule]:
    """The rule of every state tensor name (`ModelState.to_tensors`) that is split (with the batch axis
    first, as the state holds them); the caches of MLA and the positions are replicated."""
    out: dict[str, Rule] = {}
    for i, kind in enumerate(cfg.layer_types):
        w = _mixer_rules(cfg, kind)
        conv = w.get("conv1d.weight") or w.get("mamba.conv1d.weight")
        if isinstance(conv, Split):
            out[f"layers.{i}.conv"] = Split(1, conv.segs)
        heads: Rule = None
        if kind in ("mamba2", "parallel"):
            heads = Split(1, ((cfg.mamba2_heads, True),))
            out[f"layers.{i}.ssm"] = heads
        elif kind in ("gated_deltanet", "kda"):
            n = cfg.gated_deltanet.n_v_heads if kind == "gated_deltanet" else cfg.kda.n_heads
            out[f"layers.{i}.recurrent"] = Split(1, ((n or 0, True),))
        attn = kind == "attention" or (kind == "parallel" and cfg.parallel_attention != "mla")
        if attn:
            kv = Split(1, ((cfg.attention.n_kv_heads or 0, True),))
            out[f"layers.{i}.k"] = out[f"layers.{i}.v"] = kv
    return out


def _padded_vocab(t: Tensor, world: int) -> Tensor:
    rows = -(-t.shape[0] // world) * world
    return t if rows == t.shape[0] else torch.cat((t, t.new_zeros(rows - t.shape[0], *t.shape[1:])))


def shard(t: Tensor, rule: Rule, rank: int, world: int) -> Tensor:
    """Rank `rank`'s part of the full tensor `t` under `rule` (a copy for split tensors)."""
    if world == 1 or rule is None:
        return t
    if rule == FIRST:
        return t if rank == 0 else torch.zeros_like(t)
    if rule == VOCAB:
        return _padded_vocab(t, world).chunk(world, 0)[rank].clone()
    assert isinstance(rule, Split)
    parts, start = [], 0
    for size, split in rule.segs:
        seg = t.narrow(rule.dim, start, size)
        parts.append(seg.chunk(world, rule.dim)[rank] if split else seg)
        start += size
    assert start == t.shape[rule.dim], f"shard rule covers {start} of {t.shape[rule.dim]}"
    return torch.cat(parts, dim=rule.dim).clone()


def gather(parts: list[Tensor], rule: Rule, full_rows: int | None = None) -> Tensor:
    """The full tensor from every rank's part (rank order): the inverse of `shard`."""
    world = len(parts)
    if world == 1 or rule is None or rule == FIRST:
        return parts[0]
    if rule == VOCAB:
        return torch.cat(parts)[:full_rows]
    assert isinstance(rule, Split)
    out, starts = [], [0] * world
    for size, split in rule.segs:
        local = size // world if split else size
        pieces = [p.narrow(rule.dim, s, local) for p, s in zip(parts, starts, strict=True)]
        out.extend(pieces if split else pieces[:1])
        starts = [s + local for s in starts]
    return torch.cat(out, dim=rule.dim)


def split_state(tensors: dict[str, Tensor], cfg: HybridConfig, rank: int, world: int) -> dict[str, Tensor]:
    """Rank `rank`'s state tensors from the full layout's (`ModelState.to_tensors` of a tp=1 state)."""
    rules = state_rules(cfg)
    return {n: shard(t, rules.get(n), rank, world) for n, t in tensors.items()}


def gather_state(parts: list[dict[str, Tensor]], cfg: HybridConfig) -> dict[str, Tensor]:
    """The full layout's state tensors from every rank's (rank order)."""
    rules = state_rules(cfg)
    return {n: gather([p[n] for p in parts], rules.get(n)) for n in parts[0]}


def env_world() -> int:
    """The world size torchrun set for this process (1 outside torchrun)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def launch(fn: Any, world: int, *args: Any, backend: str = "gloo") -> None:
    """Run `fn(tp, *args)` on `world` new processes joined in one process group (`backend` "gloo" on
    the CPU, "nccl" with a GPU per rank). `fn` must be importable (a module-level function). A rank's
    exception is raised here, with its traceback."""
    import tempfile

    import torch.multiprocessing as mp

    with tempfile.TemporaryDirectory() as folder:
        store = os.path.join(folder, "store")
        mp.spawn(_rank_main, args=(world, backend, store, fn, args), nprocs=world, join=True)


def _rank_main(rank: int, world: int, backend: str, store: str, fn: Any, args: tuple[Any, ...]) -> None:
    if backend == "nccl":
        torch.cuda.set_device(rank)
    else:
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // world))
    dist.init_process_group(backend, init_method=f"file://{store}", rank=rank, world_size=world)
    try:
        fn(TensorParallel.current(), *args)
    finally:
        dist.destroy_process_group()
