"""`DecodeEngine`: prefill and decode on preallocated buffers, the one-token step replayed as CUDA graphs.

Design choices (the model stays plain; speed tricks live here, as in gpt-fast):
- Static state. The engine owns one `ModelState` whose attention caches are views into buffers of
  `max_context` tokens allocated up front, and whose recurrent tensors never move. Prefill runs the
  model's own blocks on that state (appends land in the buffers without reallocating; the chunked
  kernels' new recurrent tensors are copied back into the fixed ones). `engine.state` is a real
  `ModelState` at every point between calls, so snapshots (`to_tensors`, `cache_range`) just work;
  `load_state` copies a state into the buffers; `load_parts` copies a snapshot's recurrent tensors and
  cache pages straight into them (no intermediate `ModelState`: on resume, no concatenated cache).
- The decode step (`attention="kernel"`, the default on CUDA) is captured as ONE CUDA graph and
  replayed at any context: the attention cores are `hybrid_agent.kernels.attention_decode` (GQA) and
  `hybrid_agent.kernels.mla_decode` (MLA, absorbed form over the latent cache), which read the cache length on
  the device, and the cache writes go to a device-side position. With `fuse=True` (the default) the step
  is the engine's own fused version of the model's T == 1 arithmetic, to cut the ~1,100 small kernels
  a token of OLMo Hybrid 7B's shape took (#8): one matmul for q/k/v/a/b/g of a Gated DeltaNet layer,
  for q/k/v of an attention layer, for gate/up of an MLP (the weights concatenated once, when the
  engine is built; on CUDA the model's own weights are rebound as views of the concatenation, so no
  memory is doubled and the model computes exactly what it did); `hybrid_agent.kernels`' fused ops for the
  Gated DeltaNet conv step + L2 norms + gates (one launch), an attention layer's QK-norm + RoPE + cache
  writes (one launch; `attn_prep=False` keeps the model's ops), SiLU x up, each residual add fused
  with the next RMSNorm, and the greedy argmax + position advance; on CUDA its one-token matmuls run
  `hybrid_agent.kernels.gemv` (a bandwidth-bound Triton GEMV, faster than cuBLAS at these shapes; `gemv=False`
  keeps F.linear). `fuse=False` keeps the model's
  modules (the same graph, more kernels: the baseline of bench/gpu_e2e.py).
  `attention="sdpa"` instead cuts the step at each attention core and runs the model's own
  `scaled_dot_product_attention` call (model.attention.sdpa: flash / memory-efficient on CUDA) eagerly
  over the first L keys between graphs: the kernels of `model(token, state)` (256 greedy tokens
  identical at OLMo Hybrid 7B's shape; not promised bit for bit, as graph capture may change cuBLAS'
  choices), with one host-side call per attention layer and token: the reference mode only.
- Greedy decoding never leaves the device: the last graph writes argmax(logits) into the input
  buffer of the next step and into a device history of token ids, which is read back every
  `sync_every` tokens (or every token when stop ids must be checked: the state must not run past a
  stop token, as in model/generate.py). Sampled decoding reads the logits buffer after each `step`.
  Greedy picks among the ids below `vocab_size` (the tokenizer's size when the model's vocabulary is
  padded past it), so it never yields an id without text.
- Supported in the graphed path: attention (full, no window), mla, gated_deltanet, mamba2 and mlp
  layers (with attention="sdpa" an MLA layer runs the model's own block eagerly between graphs).
  Anything else (a window, parallel layers) and every CPU run take the eager path: the same buffers,
  the segments called directly (CPU) or `model(token, state)` (unsupported layouts).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from hybrid_agent.kernels import GemvConfig, gated_delta_rule_step, rms_norm
from hybrid_agent.kernels.attention_decode import attention_decode
from hybrid_agent.kernels.attn_decode_prep import attn_decode_prep
from hybrid_agent.kernels.gdn_decode_prep import gdn_decode_prep
from hybrid_agent.kernels.gemv import gemv as gemv_op
from hybrid_agent.kernels.greedy_advance import greedy_advance
from hybrid_agent.kernels.mla_decode import mla_decode
from hybrid_agent.kernels.residual_rms_norm import residual_rms_norm
from hybrid_agent.kernels.silu_mul import silu_mul
from hybrid_agent.model.attention import Attention, sdpa
from hybrid_agent.model.errors import ModelError, StateMismatchError, TokenRangeError
from hybrid_agent.model.hybrid import HybridLM
from hybrid_agent.model.layers import rope_cos_sin, rotate
from hybrid_agent.model.mla import MLA
from hybrid_agent.model.state import TOKEN_AXIS, LayerState, ModelState
from torch import Tensor, nn

GRAPHED_KINDS = frozenset({"attention", "gated_deltanet", "mamba2", "mlp", "mla"})
# The fused step's one-token matmuls, by role; `gemv=` picks which run kernels.gemv (a bandwidth-bound
# Triton GEMV) instead of F.linear (cuBLAS on CUDA).
GEMV_ROLES = frozenset({"gate_up", "down", "gdn_in", "gdn_out", "attn_in", "attn_out", "head"})
# `gemv=None` turns all of them on when the engine is on CUDA: each was faster than cuBLAS at OLMo
# Hybrid 7B's shape in one run on the H100 (bench/results/gpu_gemv.json: 1.06-1.20x a call); decode at
# 1k context 166.6 vs 154.7 tok/s with gemv=False in the same run (bench/results/gpu_e2e_gemv.json).


class ContextFullError(ModelError, ValueError):
    """More tokens than the engine's `max_context`: build the engine with a larger one."""


class DecodeEngine:
    """Prefill and decode for one `HybridLM` on buffers of `max_context` tokens (see the module doc)."""

    def __init__(
        self,
        model: HybridLM,
        *,
        max_context: int,
        batch_size: int = 1,
        use_graphs: bool | None = None,
        prefill_chunk: int = 2048,
        attention: Literal["kernel", "sdpa"] | None = None,
        fuse: bool = True,
        align: int | None = None,
        gemv: bool | Collection[str] | None = None,
        attn_prep: bool = True,
        vocab_size: int | None = None,
    ) -> None:
        self.model = model
        self.cfg = model.config
        self.max_context = max_context
        self.prefill_chunk = prefill_chunk
        self.device = model.device
        self.static = set(self.cfg.layer_types) <= GRAPHED_KINDS and self.cfg.attention.sliding_window is None
        self.graphed = self.static and (self.device.type == "cuda" if use_graphs is None else use_graphs)
        # "kernel": kernels.attention_decode reads the length on the device, so the whole step is one
        # graph; "sdpa": the model's own SDPA call between graphs (bit-identical to model(token, state),
        # but one host-side call per attention layer and token).
        self.attention = attention or ("kernel" if self.graphed else "sdpa")
        self.fused = fuse and self.static and self.attention == "kernel"
        # Fused projections get zero rows up to a multiple of this (see _concat); 16 on CUDA, where
        # cuBLAS runs 16-aligned one-token matmuls ~2x faster (bench/results/gpu_e2e_final.json).
        self.align = align if align is not None else (16 if self.device.type == "cuda" else 1)
        self._plans = self._fuse_weights() if self.fused else []
        # fused step: an attention layer's QK-norm, RoPE and cache writes as one kernels.attn_decode_prep
        # launch (False: the model's own ops, ~19 small kernels a layer; the same-run baseline)
        self.attn_prep = attn_prep
        self.greedy_kernel = True  # _advance through kernels.greedy_advance (False: torch ops)
        self.gemv_cfg: dict[tuple[int, int], GemvConfig] = {}  # kernels.gemv launches by (N, K)
        self.set_gemv(gemv)
        with torch.inference_mode():
            self.state = self._allocate(batch_size)
            B, V = batch_size, self.cfg.vocab_size
            self._tok = torch.zeros(B, 1, dtype=torch.long, device=self.device)  # next input token
            self._pos = torch.zeros(1, dtype=torch.long, device=self.device)  # its position
            # By position; one column past the end holds the greedy next token of a step that fills
            # the last cache slot (it has no cache position until it is fed, which `_room` refuses).
            self._ids = torch.zeros(B, max_context + 1, dtype=torch.long, device=self.device)
            self._x = torch.zeros(B, 1, self.cfg.d_model, dtype=model.dtype, device=self.device)
            self._logits = torch.zeros(B, V, dtype=model.dtype, device=self.device)
            # What greedy picks from: the ids below `vocab_size` (the tokenizer's, when the model's
            # vocabulary is padded past it; padding ids have no text), a view of the logits buffer.
            self._greedy_logits = self._logits[:, : min(V, vocab_size or V)]
            self._attn_q: dict[int, Tensor] = {}
            self._attn_out: dict[int, Tensor] = {}
        self._n = 0  # tokens in the state (host copy of state.n_tokens, kept without syncing)
        self._segments = self._build_segments() if self.static else []
        self._graphs: dict[int, torch.cuda.CUDAGraph] | None = None

    def set_gemv(self, gemv: bool | Collection[str] | None) -> None:
        """Which of the fused step's matmuls (GEMV_ROLES) run kernels.gemv instead of F.linear: True all,
        False none, None the default (all on CUDA, none on the CPU), or a set of roles.
        Drops captured graphs, so the next step captures the new choice."""
        if gemv is None:
            roles = GEMV_ROLES if self.device.type == "cuda" else frozenset()
        elif isinstance(gemv, bool):
            roles = GEMV_ROLES if gemv else frozenset()
        else:
            roles = frozenset(gemv)
            if roles - GEMV_ROLES:
                raise ValueError(
                    f"unknown gemv roles {sorted(roles - GEMV_ROLES)}; known: {sorted(GEMV_ROLES)}"
                )
        self.gemv_roles = roles
        if getattr(self, "_graphs", None) is not None:
            self._graphs = None

    def _mm(self, role: str, x: Tensor, w: Tensor, b: Tensor | None = None) -> Tensor:
        """x w^T + b for one of the fused step's matmuls: kernels.gemv where its role is on, else F.linear."""
        return gemv_op(x, w, b, self.gemv_cfg.get(w.shape)) if role in self.gemv_roles else F.linear(x, w, b)

    # ---- buffers ---------------------------------------------------------------------------------------
    def _allocate(self, batch_size: int) -> ModelState:
        state = self.model.new_state(batch_size)
        for ls in state.layers:
            if ls.pos is None:
                continue
            for name, t in ls.cache.items():
                ax = ls.axes[name]
                shape = list(t.shape)
                shape[ax] = self.max_context
                ls.storage[name] = t.new_zeros(shape)  # (B, Hkv, max_context, Dh)
                ls.cache[name] = ls.storage[name].narrow(ax, 0, 0)
            ls.storage["pos"] = torch.zeros(self.max_context, dtype=torch.long, device=self.device)
            ls.pos = ls.storage["pos"].narrow(0, 0, 0)
        self._fixed = [dict(ls.recurrent) for ls in state.layers]  # the recurrent tensors that never move
        return state

    def _pin(self) -> None:
        """After an eager call: copy recurrent tensors that the chunked kernels replaced back into the
        fixed ones, and check that no cache outgrew its buffer (which would mean a reallocation)."""
        for ls, fixed in zip(self.state.layers, self._fixed, strict=True):
            for name, t in fixed.items():
                if ls.recurrent[name] is not t:
                    t.copy_(ls.recurrent[name])
                    ls.recurrent[name] = t
            for name, buf in ls.storage.items():
                view = ls.pos if name == "pos" else ls.cache[name]
                assert view is not None and view.data_ptr() == buf.data_ptr(), "cache left its buffer"

    def _set_views(self, n: int) -> None:
        for ls in self.state.layers:
            if ls.pos is None:
                continue
            for name in ls.cache:
                ls.cache[name] = ls.storage[name].narrow(ls.axes[name], 0, n)
            ls.pos = ls.storage["pos"].narrow(0, 0, n)
        self.state.n_tokens = self._n = n
        self._pos.fill_(n)

    @property
    def n_tokens(self) -> int:
        return self._n

    def reset(self) -> None:
        """Forget every token (the buffers stay; recurrent states are zeroed)."""
        with torch.inference_mode():
            for fixed in self._fixed:
                for t in fixed.values():
                    t.zero_()
            self._set_views(0)

    def set_length(self, n_tokens: int) -> None:
        """Declare that the first `n_tokens` of every cache buffer and the recurrent tensors were written
        by the caller (benchmarks build long states this way); positions become 0..n-1."""
        self._room(n_tokens, 0)
        with torch.inference_mode():
            for ls in self.state.layers:
                if ls.pos is not None:
                    ls.storage["pos"][:n_tokens] = torch.arange(n_tokens, device=self.device)
            self._set_views(n_tokens)

    def load_state(self, state: ModelState) -> None:
        """Copy `state` (e.g. restored from a snapshot, on any device) into the engine's buffers."""
        if state.layout != self.state.layout or state.batch_size != self.state.batch_size:
            raise StateMismatchError("this state belongs to another model or batch size than the engine's")
        if state.window is not None:
            raise StateMismatchError("the engine keeps full attention; load a state made with window=None")
        n = state.n_tokens
        self._room(n, 0)
        with torch.inference_mode():
            for ls, src, fixed in zip(self.state.layers, state.layers, self._fixed, strict=True):
                for name, t in fixed.items():
                    t.copy_(src.recurrent[name])
                if ls.pos is None or src.pos is None:
                    continue
                if len(src.pos) != n or not bool((src.pos.cpu() == torch.arange(n)).all()):
                    raise StateMismatchError("the state's cache does not hold every position 0..n-1")
                for name, t in src.cache.items():
                    ls.storage[name].narrow(ls.axes[name], 0, n).copy_(t)
                ls.storage["pos"][:n].copy_(src.pos)
            self._set_views(n)

    def check_parts(self, recurrent: dict[str, Tensor], pages: Sequence[PageLike]) -> int:
        """Validate a snapshot for `load_parts` without changing anything; returns its token count.
        (`load_parts` checks again; callers use this to size the engine before loading.)"""
        return self._plan_parts(recurrent, pages).n_tokens

    def load_parts(self, recurrent: dict[str, Tensor], pages: Sequence[PageLike]) -> None:
        """Load a snapshot given as `ModelState.recurrent_tensors()` and cache pages straight into the
        engine's buffers: the same result as `load_state(ModelState.from_parts(recurrent, pages, cfg))`
        without building that state (no concatenated cache, no gathered copy: each tensor of each page
        is copied once, into its slots; only pages that overlap others or hold scattered positions are
        gathered, a temporary of at most one page). The tensors may be on any device; dtypes convert as in
        `load_state`. Pages are `(start, end, tensors)` tuples (memory's `Page`) or objects with
        `start`/`end` (or `token_start`/`token_end`) and `tensors` (agent's `StatePage`).

        Semantics are from_parts' with `window=None` (the engine keeps full attention): pages in any
        order, positions read from each page's `layers.{i}.pos`, every position 0..n_tokens-1 must be
        present, a position held by several pages comes from the page with the smallest start (then the
        earliest entry), positions >= n_tokens are ignored. A snapshot saved under a window is refused.
        Everything is validated before the first write: on StateMismatchError / ContextFullError the
        engine is unchanged."""
        plan = self._plan_parts(recurrent, pages)
        n = plan.n_tokens
        self._room(n, 0)
        with torch.inference_mode():
            for fixed, src in plan.recurrent:
                fixed.copy_(src)
            for i, (ls, copies) in enumerate(zip(self.state.layers, plan.layers, strict=True)):
                if ls.pos is None:
                    continue
                for tensors, runs, scattered in copies:
                    for name in ls.cache:
                        ax, t, dst = ls.axes[name], tensors[f"layers.{i}.{name}"], ls.storage[name]
                        for dst_lo, src_lo, length in runs:  # one copy each, no temporary
                            dst.narrow(ax, dst_lo, length).copy_(t.narrow(ax, src_lo, length))
                        if scattered is not None:  # picks from overlapping pages: a temporary <= one page
                            slots, local = scattered
                            picked = t.index_select(ax, local.to(t.device)).to(dst.dtype)
                            dst.index_copy_(ax, slots.to(dst.device), picked)
                ls.storage["pos"][:n] = torch.arange(n, device=self.device)
            self._set_views(n)

    def _plan_parts(self, recurrent: dict[str, Tensor], pages: Sequence[PageLike]) -> _PartsPlan:
        """Every check of from_parts + load_state, and where each page's entries go (no tensor copied)."""
        layout, B = self.state.layout, self.state.batch_size
        if self.state.window is not None:
            raise StateMismatchError(
                f"this engine's model attends through a window ({self.state.window}); the DecodeEngine "
                "keeps full attention only: resume on the model's own path (ModelState.from_parts)"
            )
        if "n_tokens" not in recurrent:
            raise StateMismatchError("recurrent tensors lack 'n_tokens'; pass what recurrent_tensors() gave")
        n = int(recurrent["n_tokens"])
        if n < 0:
            raise StateMismatchError(f"n_tokens is {n}; the snapshot is corrupt")
        saved_window = int(recurrent["window"]) if "window" in recurrent else -1
        if saved_window >= 0:
            raise StateMismatchError(
                f"this snapshot was saved under a window of {saved_window} tokens "
                f"(+ {int(recurrent.get('sinks', torch.tensor(0)))} sinks); the DecodeEngine keeps full "
                "attention only: resume it on the model's own path (ModelState.from_parts with its window)"
            )
        # Names: exactly what from_tensors would accept once from_parts has filled in the caches.
        names = set(ModelState._names(layout))
        wanted = {"n_tokens"} | {f"layers.{i}.{r}" for i, (_, sp) in enumerate(layout) for r in sp.recurrent}
        missing, extra = sorted(wanted - set(recurrent)), sorted(set(recurrent) - names)
        if missing or extra:
            raise StateMismatchError(
                "these state tensors do not belong to this model's config "
                f"(missing: {missing[:6]}{'...' if len(missing) > 6 else ''}; "
                f"unexpected: {extra[:6]}{'...' if len(extra) > 6 else ''}); "
                "load the state with the model it was saved from"
            )
        rec: list[tuple[Tensor, Tensor]] = []
        for i, ((kind, spec), fixed) in enumerate(zip(layout, self._fixed, strict=True)):
            for r in spec.recurrent:
                t = recurrent[f"layers.{i}.{r}"]
                if tuple(t.shape) != tuple(fixed[r].shape) or not _is_float(t):
                    raise StateMismatchError(
                        f"state tensor layers.{i}.{r} ({kind}) is {t.dtype} {tuple(t.shape)}, but this "
                        f"engine needs floating point {tuple(fixed[r].shape)} (batch {B}); "
                        "load the state with the model it was saved from"
                    )
                rec.append((fixed[r], t))
        parsed = sorted((_page(p) for p in pages), key=lambda p: p[0])  # stable: from_parts' order
        layers: list[list[_Copies]] = []
        for i, ((kind, spec), ls) in enumerate(zip(layout, self.state.layers, strict=True)):
            if not spec.cache:
                layers.append([])
                continue
            parts = [t for _, _, t in parsed if f"layers.{i}.pos" in t]
            poss = [_check_page(i, kind, spec.cache, ls.axes, t, B) for t in parts]
            layers.append(_place(i, n, parts, poss))
        return _PartsPlan(n, rec, layers)

    def export_state(self) -> ModelState:
        """A deep copy of the current state (without the spare room), e.g. to keep a checkpoint."""
        return self.state.clone()

    def _room(self, n: int, extra: int) -> None:
        if n + extra > self.max_context:
            raise ContextFullError(
                f"{n} tokens in the state + {extra} new exceed max_context={self.max_context}; "
                "create the DecodeEngine with a larger max_context"
            )

    # ---- prefill ---------------------------------------------------------------------------------------
    @torch.inference_mode()
    def prefill(self, ids: Sequence[int] | Tensor) -> Tensor:
        """Feed `ids` (T,) or (B, T); returns the logits of the last token (B, V), in chunks of
        `prefill_chunk` tokens so activation memory stays bounded. Only the last chunk goes through
        the LM head."""
        x = torch.as_tensor(ids, dtype=torch.long, device=self.device)
        x = x.view(1, -1) if x.dim() == 1 else x  # (B, T)
        if x.shape[-1] == 0:
            raise TokenRangeError("the prompt is empty; pass at least one token to prefill")
        lo, hi = int(x.min()), int(x.max())
        if lo < 0 or hi >= self.cfg.vocab_size:
            raise TokenRangeError(f"token ids must be in [0, {self.cfg.vocab_size}); got [{lo}, {hi}]")
        self._room(self._n, x.shape[1])
        m, h = self.model, None
        for start in range(0, x.shape[1], self.prefill_chunk):
            chunk = x[:, start : start + self.prefill_chunk]  # (B, t)
            h = m.embed_tokens(chunk)  # (B, t, D)
            for block, layer in zip(m.layers, self.state.layers, strict=True):
                h = block(h, layer, self.state)  # (B, t, D)
            self.state.n_tokens += chunk.shape[1]
            self._pin()
            self._ids[:, self._n : self._n + chunk.shape[1]] = chunk
            self._n = self.state.n_tokens
        assert h is not None
        self._pos.fill_(self._n)
        # The head over the whole last chunk, as model.forward does: the same matmul shape gives the
        # same rounding, so the first decoded token matches the eager path exactly.
        self._logits.copy_(self._head(h)[:, -1])
        return self._logits

    def _head(self, h: Tensor) -> Tensor:
        m = self.model
        weight = m.embed_tokens.weight if m.lm_head is None else m.lm_head.weight
        return F.linear(m.norm(h), weight)  # (B, t, V)

    # ---- the decode step -------------------------------------------------------------------------------
    def _build_segments(self) -> list[tuple[Callable[[], None], bool]]:
        """The step as a list of (callable, graph-safe): with attention="sdpa" graph-safe parts
        alternate with attention cores (and MLA blocks); with "kernel" the whole step is one graph-safe
        part (fused or the model's modules)."""
        if self.fused:
            return [(self._fused_step, True)]
        m, st = self.model, self.state
        parts: list[tuple[Callable[[], None], bool]] = []
        todo: list[Callable[[], None]] = [lambda: self._x.copy_(m.embed_tokens(self._tok))]

        def flush() -> None:
            ops = tuple(todo)

            def run() -> None:
                for op in ops:
                    op()

            parts.append((run, True))
            todo.clear()

        for i, (block, layer) in enumerate(zip(m.layers, st.layers, strict=True)):
            if block.kind == "mla" and self.attention == "kernel":
                todo.append(lambda b=block, ls=layer: self._x.copy_(self._block_kernel(b, ls, self._x)))
                continue
            if block.kind == "mla":  # the model's own block (host-side positions): eagerly, between graphs
                flush()
                parts.append((lambda b=block, ls=layer: self._x.copy_(b(self._x, ls, st)), False))
                continue
            if block.kind != "attention":
                todo.append(lambda b=block, ls=layer: self._x.copy_(b(self._x, ls, st)))
                continue
            self._attn_q[i] = torch.zeros(
                st.batch_size, block.mixer.n_kv_heads, block.mixer.n_heads // block.mixer.n_kv_heads,
                block.mixer.head_dim, dtype=m.dtype, device=self.device,
            )  # fmt: skip
            self._attn_out[i] = torch.zeros_like(self._attn_q[i])
            todo.append(lambda i=i, b=block, ls=layer: self._attention_in(i, b, ls))
            core = lambda i=i, ls=layer, a=block.mixer: self._attention_core(i, ls, a)
            if self.attention == "kernel":
                todo.append(core)
            else:
                flush()
                parts.append((core, False))
            todo.append(lambda i=i, b=block: self._attention_out(i, b))

        def finish() -> None:
            self._logits.copy_(self._head(self._x)[:, 0])
            self._advance()

        todo.append(finish)
        flush()
        return parts

    def _advance(self) -> None:
        # greedy tok (`step` callers overwrite it), pos + 1, ids[:, pos] = tok (the next input's position);
        # kernels.greedy_advance: 3 launches instead of torch's single-block argmax (23 us) + 3 kernels
        if self.greedy_kernel:
            greedy_advance(self._greedy_logits, self._tok, self._pos, self._ids)
            return
        self._tok.copy_(self._greedy_logits.argmax(-1, keepdim=True))
        self._pos.add_(1)
        self._ids.index_copy_(1, self._pos, self._tok)

    def _attention_in(self, i: int, block: nn.Module, ls: LayerState) -> None:
        """Attention.forward up to the cache append, for T == 1 at the device-side position: the
        model's own `project` (projections, QK-norm, RoPE), then the cache write."""
        a: Attention = block.mixer  # type: ignore[assignment]
        x = self._x if block.post_norm else block.mixer_norm(self._x)  # type: ignore[operator]
        q, k, v = a.project(x, self._pos)  # (B, 1, H, Dh), (B, 1, Hkv, Dh) x2
        self._write_kv(ls, k, v)
        B, G = x.shape[0], a.n_heads // a.n_kv_heads
        self._attn_q[i].copy_(q.transpose(1, 2).reshape(B, a.n_kv_heads, G, a.head_dim))

    def _write_kv(self, ls: LayerState, k: Tensor, v: Tensor) -> None:
        ls.storage["k"].index_copy_(2, self._pos, k.transpose(1, 2))  # (B, Hkv, max_context, Dh)
        ls.storage["v"].index_copy_(2, self._pos, v.transpose(1, 2))
        ls.storage["pos"].index_copy_(0, self._pos, self._pos)

    def _attention_core(self, i: int, ls: LayerState, a: Attention) -> None:
        storage = ls.storage
        q, scale = self._attn_q[i], 1.0 / math.sqrt(a.head_dim)
        if self.attention == "kernel":  # reads the length (pos + 1) on the device
            self._attn_out[i].copy_(attention_decode(q, storage["k"], storage["v"], self._pos, scale=scale))
            return
        L = self._n + 1  # the new token's key is in the buffer
        keys, values = storage["k"].narrow(2, 0, L), storage["v"].narrow(2, 0, L)  # (B, Hkv, L, Dh)
        out = sdpa(q, keys.to(q.dtype), values.to(q.dtype), None, scale)  # (B, Hkv, G, Dh), the model's call
        self._attn_out[i].copy_(out)

    def _attention_out(self, i: int, block: nn.Module) -> None:
        a: Attention = block.mixer  # type: ignore[assignment]
        B = self._x.shape[0]
        out = self._attn_out[i].view(B, a.n_heads, 1, a.head_dim)  # (B, H, 1, Dh)
        y = a.o_proj(out.transpose(1, 2).reshape(B, 1, -1))  # (B, 1, D)
        x = self._x + (block.mixer_norm(y) if block.post_norm else y)  # type: ignore[operator]
        if block.mlp is not None:
            x = x + (block.mlp_norm(block.mlp(x)) if block.post_norm else block.mlp(block.mlp_norm(x)))  # type: ignore[operator]
        self._x.copy_(x)

    def _block_kernel(self, block: nn.Module, ls: LayerState, x: Tensor) -> Tensor:
        """One MLA block with the model's modules and the latent-cache kernel (fuse=False)."""
        h = x if block.post_norm else block.mixer_norm(x)  # type: ignore[operator]
        y = self._mla(block.mixer, ls, h, None)  # type: ignore[arg-type]
        x = x + (block.mixer_norm(y) if block.post_norm else y)  # type: ignore[operator]
        if block.mlp is not None:
            x = x + (block.mlp_norm(block.mlp(x)) if block.post_norm else block.mlp(block.mlp_norm(x)))  # type: ignore[operator]
        return x

    def _mla(self, a: MLA, ls: LayerState, h: Tensor, w_in: Tensor | None) -> Tensor:
        """MLA.forward for T == 1 in the absorbed form over the latent cache, at the device-side
        position: (B, 1, D) -> (B, 1, D). `w_in`: q_proj and kv_a_proj_with_mqa concatenated (or None)."""
        B, H, C, R, dn = h.shape[0], a.n_heads, a.kv_lora_rank, a.rope_dim, a.nope_dim
        qd = H * (dn + R)
        if w_in is not None:
            both = F.linear(h, w_in)  # (B, 1, H*(dn+R) + C + R)
            q, kv = both[..., :qd], both[..., qd : qd + C + R]  # (alignment rows past the end)
        else:
            q = a.q_proj(h) if a.q_proj is not None else a.q_b_proj(a.q_a_layernorm(a.q_a_proj(h)))
            kv = a.kv_a_proj_with_mqa(h)
        q_nope, q_rope = q.view(B, 1, H, dn + R).split((dn, R), dim=-1)  # (B, 1, H, dn), (B, 1, H, R)
        latent, k_rope = kv.split((C, R), dim=-1)  # (B, 1, C), (B, 1, R)
        latent = a.kv_a_layernorm(latent)
        q_rope = a._rope(q_rope, self._pos)
        k_rope = a._rope(k_rope[:, :, None], self._pos)[:, :, 0]  # (B, 1, R)
        store = ls.storage
        store["latent"].index_copy_(1, self._pos, latent.to(store["latent"].dtype))  # (B, max_context, C)
        store["k_rope"].index_copy_(1, self._pos, k_rope.to(store["k_rope"].dtype))
        store["pos"].index_copy_(0, self._pos, self._pos)
        w = a.kv_b_proj.weight.view(H, dn + a.v_dim, C)  # (H, dn + dv, C)
        q_lat = torch.bmm((q_nope[:, 0] * a.scale).transpose(0, 1), w[:, :dn])  # (H, B, C)
        q_rot = q_rope[:, 0] * a.scale  # (B, H, R)
        ctx = mla_decode(
            q_lat.transpose(0, 1), q_rot, store["latent"], store["k_rope"], self._pos
        )  # (B, H, C)
        out = torch.bmm(ctx.transpose(0, 1), w[:, dn:].transpose(1, 2))  # (H, B, dv)
        return a.o_proj(out.transpose(0, 1).reshape(B, 1, H * a.v_dim))  # (B, 1, D)

    # ---- the fused step (fuse=True) ----------------------------------------------------------------------
    @torch.no_grad()
    def _fuse_weights(self) -> list[dict[str, object]]:
        """Per block, the concatenated weights the fused step multiplies by (see the module doc)."""
        share = self.device.type == "cuda"  # rebind the model's weights as views: no memory doubled
        plans: list[dict[str, object]] = []
        for block in self.model.layers:
            plan: dict[str, object] = {}
            a = block.mixer
            if isinstance(a, Attention):
                plan["w_in"], plan["b_in"] = _concat([a.q_proj, a.k_proj, a.v_proj], share, self.align)
            elif block.kind == "gated_deltanet":
                lins = [a.q_proj, a.k_proj, a.v_proj, a.a_proj, a.b_proj, a.g_proj]
                plan["w_in"], _ = _concat(lins, share, self.align)
                plan["a_off"] = 2 * a.key_dim + a.value_dim
                plan["b_off"] = plan["a_off"] + a.n_v_heads
                plan["g_off"] = plan["b_off"] + a.n_v_heads
            elif isinstance(a, MLA) and a.q_proj is not None and a.kv_a_proj_with_mqa.bias is None:
                plan["w_in"], _ = _concat([a.q_proj, a.kv_a_proj_with_mqa], share, self.align)
            if block.mlp is not None and block.mlp.gate_proj is not None:
                # [gate | up] exactly (silu_mul splits the row in halves): no alignment rows
                plan["w_gu"], plan["b_gu"] = _concat([block.mlp.gate_proj, block.mlp.up_proj], share, align=1)
            plans.append(plan)
        return plans

    def _fused_step(self) -> None:
        m, st, x = self.model, self.state, self._x
        eps = self.cfg.norm_eps
        x.copy_(m.embed_tokens(self._tok))
        pending: list[tuple[Tensor, Tensor | None]] = []  # the last sub-layer's output, not yet added to x

        def settle(w_out: Tensor | None) -> Tensor:
            """Add the pending output to x (normalised first for post-norm), then norm x by w_out."""
            if not pending:
                return x if w_out is None else rms_norm(x, w_out, eps)
            y, w_y = pending.pop()
            out = residual_rms_norm(x, y, w_y, w_out, eps)
            return x if out is None else out

        rope: dict[str, Tensor] = {}  # cos/sin at this position
        for block, ls, plan in zip(m.layers, st.layers, self._plans, strict=True):
            post = block.post_norm
            if block.mixer is not None:
                h = settle(None if post else block.mixer_norm.weight)
                if block.kind == "gated_deltanet":
                    y = self._gdn_fused(block.mixer, ls, h, plan)
                elif block.kind == "attention":
                    y = self._attention_fused(block.mixer, ls, h, plan, rope)
                elif block.kind == "mla":
                    y = self._mla(block.mixer, ls, h, plan.get("w_in"))  # type: ignore[arg-type]
                else:
                    y = block.mixer(h, ls, st)  # mamba2: the model's T == 1 path
                pending.append((y, block.mixer_norm.weight if post else None))
            if block.mlp is not None:
                h = settle(None if post else block.mlp_norm.weight)
                if "w_gu" in plan:
                    z = silu_mul(self._mm("gate_up", h, plan["w_gu"], plan["b_gu"]))  # type: ignore[arg-type]
                    down = block.mlp.down_proj
                    y = self._mm("down", z, down.weight, down.bias)
                else:
                    y = block.mlp(h)
                pending.append((y, block.mlp_norm.weight if post else None))
        h = settle(m.norm.weight)
        weight = m.embed_tokens.weight if m.lm_head is None else m.lm_head.weight
        self._logits.copy_(self._mm("head", h, weight)[:, 0])
        self._advance()

    def _gdn_fused(self, a: nn.Module, ls: LayerState, h: Tensor, plan: dict[str, object]) -> Tensor:
        B = h.shape[0]
        proj = self._mm("gdn_in", h.view(B, -1), plan["w_in"])  # type: ignore[arg-type]  # (B, q|k|v|a|b|g)
        q, k, v, g, beta = gdn_decode_prep(
            proj, ls.recurrent["conv"], a.conv1d.weight.squeeze(1), a.conv1d.bias, a.A_log, a.dt_bias,
            Hk=a.n_heads, Dk=a.head_k_dim, Hv=a.n_v_heads, Dv=a.head_v_dim, a_off=plan["a_off"],
            b_off=plan["b_off"], allow_neg_eigval=a.allow_neg_eigval,
        )  # fmt: skip
        o = gated_delta_rule_step(ls.recurrent["recurrent"], q, k, v, g, beta)  # (B, Hv, Dv)
        g_off = int(plan["g_off"])  # type: ignore[call-overload]
        gate = proj[:, g_off : g_off + a.value_dim].view(B, a.n_v_heads, a.head_v_dim)
        o = a.o_norm(o, gate)  # (B, Hv, Dv)
        return self._mm("gdn_out", o.reshape(B, 1, a.value_dim).to(h.dtype), a.o_proj.weight, a.o_proj.bias)

    def _attention_fused(
        self, a: Attention, ls: LayerState, h: Tensor, plan: dict[str, object], rope: dict[str, Tensor]
    ) -> Tensor:
        B, H, Hkv, Dh = h.shape[0], a.n_heads, a.n_kv_heads, a.head_dim
        qkv = self._mm("attn_in", h, plan["w_in"], plan["b_in"])  # type: ignore[arg-type]  # (B, 1, (H + 2 Hkv) Dh)
        q, k, v = (
            qkv[..., : H * Dh],
            qkv[..., H * Dh : (H + Hkv) * Dh],
            qkv[..., (H + Hkv) * Dh : (H + 2 * Hkv) * Dh],
        )
        if a.inv_freq is not None and not rope:  # every attention layer has the config's inv_freq
            rope["cos"], rope["sin"] = rope_cos_sin(self._pos, a.inv_freq)  # (1, 1, 1, R) each
        G = H // Hkv
        if self.attn_prep:  # QK-norm, RoPE and both cache writes in one launch (kernels.attn_decode_prep)
            cos, sin = (rope["cos"].view(-1), rope["sin"].view(-1)) if rope else (None, None)
            norm = a.qk_norm if a.qk_norm in ("full", "head") else "none"
            q_w, k_w = (a.q_norm.weight, a.k_norm.weight) if norm != "none" else (None, None)
            eps = a.q_norm.eps if norm != "none" else 0.0
            q = attn_decode_prep(
                qkv.view(B, -1), q_w, k_w, cos, sin, self._pos, ls.storage["k"], ls.storage["v"],
                ls.storage["pos"], H=H, Hkv=Hkv, Dh=Dh, eps=eps, qk_norm=norm,
            )  # fmt: skip  # (B, H, Dh)
            qg = q.view(B, Hkv, G, Dh)  # heads kvh * G + g: (B, Hkv, G, Dh) is (B, H, Dh)
            out = attention_decode(qg, ls.storage["k"], ls.storage["v"], self._pos, scale=1.0 / math.sqrt(Dh))
            return self._mm("attn_out", out.reshape(B, 1, H * Dh), a.o_proj.weight, a.o_proj.bias)
        if a.qk_norm == "full":
            q, k = a.q_norm(q), a.k_norm(k)
        q, k, v = q.view(B, 1, H, Dh), k.view(B, 1, Hkv, Dh), v.view(B, 1, Hkv, Dh)
        if a.qk_norm == "head":
            q, k = a.q_norm(q), a.k_norm(k)
        if a.inv_freq is not None:
            q, k = rotate(q, rope["cos"], rope["sin"]), rotate(k, rope["cos"], rope["sin"])
        self._write_kv(ls, k, v)
        qg = q.view(B, Hkv, G, Dh) if G == 1 or B == 1 else q.transpose(1, 2).reshape(B, Hkv, G, Dh)
        out = attention_decode(qg, ls.storage["k"], ls.storage["v"], self._pos, scale=1.0 / math.sqrt(Dh))
        # (B, Hkv, G, Dh) is (B, H, Dh) in head order
        return self._mm("attn_out", out.reshape(B, 1, H * Dh), a.o_proj.weight, a.o_proj.bias)  # (B, 1, D)

    def _capture(self) -> dict[int, torch.cuda.CUDAGraph]:
        """Capture every graph-safe segment (attention cores with attention="sdpa" run eagerly). The
        segments are warmed up on a side stream first (Triton compiles, cuBLAS picks its kernels);
        the warm-up runs advance copies of the state, restored afterwards."""
        saved = [{n: t.clone() for n, t in f.items()} for f in self._fixed]
        tok, pos, ids = self._tok.clone(), self._pos.clone(), self._ids.clone()
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(2):
                self._pos.copy_(pos)
                for seg, _ in self._segments:
                    seg()
        torch.cuda.current_stream().wait_stream(side)
        graphs: dict[int, torch.cuda.CUDAGraph] = {}
        pool = None
        for j, (seg, safe) in enumerate(self._segments):
            if not safe:
                continue
            g = torch.cuda.CUDAGraph()
            with torch.cuda.graph(g, pool=pool):
                seg()
            pool = g.pool()
            graphs[j] = g
        for f, s in zip(self._fixed, saved, strict=True):
            for n, t in f.items():
                t.copy_(s[n])
        self._tok.copy_(tok)
        self._pos.copy_(pos)
        self._ids.copy_(ids)
        return graphs

    def _run_step(self) -> None:
        if self.graphed:
            if self._graphs is None:
                self._graphs = self._capture()
            for j, (seg, safe) in enumerate(self._segments):
                if safe:
                    self._graphs[j].replay()
                else:
                    seg()
        elif self.static:
            for seg, _ in self._segments:
                seg()
        else:
            self._logits.copy_(self.model(self._tok, self.state)[:, -1])
            self._advance()
            self._n = self.state.n_tokens
            return
        self._n += 1
        self._set_views_lazy()

    def _set_views_lazy(self) -> None:
        # Host-side bookkeeping only: the views are cheap narrow()s, the device counters are already right.
        for ls in self.state.layers:
            if ls.pos is not None:
                for name in ls.cache:
                    ls.cache[name] = ls.storage[name].narrow(ls.axes[name], 0, self._n)
                ls.pos = ls.storage["pos"].narrow(0, 0, self._n)
        self.state.n_tokens = self._n

    @torch.inference_mode()
    def step(self, token: Tensor | int) -> Tensor:
        """Feed one token per sequence ((B,) or (B, 1) on any device, or an int for B == 1); returns the
        logits (B, V) of the next token. The returned tensor is the engine's buffer: it is overwritten
        by the next call."""
        self._room(self._n, 1)
        if isinstance(token, int):
            self._tok.fill_(token)
        else:
            self._tok.copy_(token.view(-1, 1))
        self._ids.index_copy_(1, self._pos, self._tok)
        self._run_step()
        return self._logits

    @torch.inference_mode()
    def generate_greedy(
        self, max_new_tokens: int, *, stop_token_ids: Sequence[int] = (), sync_every: int = 64
    ) -> list[int]:
        """Greedy tokens after the last prefill/step (batch 1), each fed into the state as in
        model/generate.py (the stop token too). Reads tokens back every `sync_every` steps, or every
        step when stop ids are given (the state must not run past a stop)."""
        if self.state.batch_size != 1:
            raise StateMismatchError("generate_greedy decodes one sequence; use step() for batches")
        self._room(self._n, max_new_tokens)
        self._tok.copy_(self._greedy_logits.argmax(-1, keepdim=True))
        self._ids.index_copy_(1, self._pos, self._tok)
        every = 1 if stop_token_ids else max(1, sync_every)
        stops, first, out = set(stop_token_ids), self._n, []
        for i in range(max_new_tokens):
            self._run_step()
            if (i + 1) % every == 0 or i + 1 == max_new_tokens:
                new = self._ids[0, first + len(out) : self._n].tolist()  # one sync per `every` tokens
                for t in new:
                    out.append(t)
                    if t in stops:
                        return out
        return out


# A cache page as callers hold one: (start, end, tensors) (memory's Page is such a tuple) or an object
# with start/end (or token_start/token_end) and tensors (agent's StatePage).
PageLike = object
# One page's part of a layer's cache: its tensors, contiguous runs (first slot, first entry, length)
# each copied with one narrow copy, and scattered picks (slots, entries) or None.
_Copies = tuple[dict[str, Tensor], list[tuple[int, int, int]], "tuple[Tensor, Tensor] | None"]
_MAX_RUNS = 4  # runs per page before its picks are gathered instead (only overlapping pages get here)


@dataclass
class _PartsPlan:
    n_tokens: int
    recurrent: list[tuple[Tensor, Tensor]]  # (the engine's fixed tensor, its source)
    layers: list[list[_Copies]]  # per layer, per page that fills some of its slots


def _is_float(t: Tensor) -> bool:
    return t.dtype.is_floating_point


def _page(p: object) -> tuple[int, int, dict[str, Tensor]]:
    if isinstance(p, tuple) and len(p) == 3:
        start, end, tensors = p
    elif hasattr(p, "tensors"):
        start = p.start if hasattr(p, "start") else p.token_start  # type: ignore[attr-defined]
        end = p.end if hasattr(p, "end") else p.token_end  # type: ignore[attr-defined]
        tensors = p.tensors  # type: ignore[attr-defined]
    else:
        raise StateMismatchError(
            f"a cache page must be (start, end, tensors) or a Page; got {type(p).__name__}"
        )
    if not isinstance(tensors, dict):
        raise StateMismatchError(f"a cache page's tensors must be a dict; got {type(tensors).__name__}")
    return int(start), int(end), tensors


def _check_page(
    i: int, kind: str, cache: dict[str, tuple[int, ...]], axes: dict[str, int], t: dict[str, Tensor], B: int
) -> Tensor:
    """One page's tensors of layer i against the layout; returns its positions (CPU int64)."""
    pos = t[f"layers.{i}.pos"]
    if pos.dim() != 1 or pos.dtype.is_floating_point or pos.dtype.is_complex or pos.dtype == torch.bool:
        raise StateMismatchError(
            f"page tensor layers.{i}.pos is {pos.dtype} {tuple(pos.shape)}; positions are (tokens,) int64"
        )
    for name, want in cache.items():
        key = f"layers.{i}.{name}"
        if key not in t:
            raise StateMismatchError(f"a cache page holds layers.{i}.pos but not {key}; the page is corrupt")
        got, ax = tuple(t[key].shape), axes[name]
        full = (B, *(len(pos) if d == TOKEN_AXIS else d for d in want))
        if got != full or not _is_float(t[key]):
            dims = ", ".join("tokens" if d == TOKEN_AXIS else str(d) for d in want)
            raise StateMismatchError(
                f"page tensor {key} ({kind}) is {t[key].dtype} {got} with {len(pos)} positions, but this "
                f"engine needs floating point (batch {B}, {dims}) with tokens on axis {ax}; "
                "load the state with the model it was saved from"
            )
    return pos.cpu().long()


def _place(i: int, n: int, parts: list[dict[str, Tensor]], poss: list[Tensor]) -> list[_Copies]:
    """Which entry of which page fills each of the n slots of layer i: from_parts' choice (pages sorted
    by start, concatenated; per slot the first entry holding its position), as copies per page. The
    arithmetic runs on the positions only (8 bytes a token), never on the cache tensors."""
    need = torch.arange(n)
    pos = torch.cat(poss) if poss else torch.zeros(0, dtype=torch.long)
    order = torch.argsort(pos, stable=True)
    sorted_pos = pos[order]
    where = torch.searchsorted(sorted_pos, need).clamp(max=max(len(pos) - 1, 0))  # (n,)
    covered = n == 0 or (len(pos) > 0 and bool((sorted_pos[where] == need).all()))
    if not covered:
        raise StateMismatchError(
            f"the cache pages do not cover the {n} tokens layer {i} needs "
            f"(of positions 0..{n - 1}); pass every page overlapping the sinks and the window"
        )
    idx = order[where]  # (n,) slot -> entry of the concatenated pages
    starts = torch.tensor([0] + [len(p) for p in poss]).cumsum(0)  # (pages + 1,)
    owner = torch.searchsorted(starts, idx, right=True) - 1  # (n,) page of each slot
    out: list[_Copies] = []
    for j, t in enumerate(parts):
        slots = (owner == j).nonzero().squeeze(1)  # (m,) increasing
        if len(slots) == 0:
            continue
        local = idx[slots] - starts[j]  # (m,) entries of page j
        # Runs contiguous in both slot and entry: one for each page of a plain snapshot.
        cuts = ((slots.diff() != 1) | (local.diff() != 1)).nonzero().squeeze(1) + 1
        bounds = [0, *cuts.tolist(), len(slots)]
        if len(bounds) - 1 <= _MAX_RUNS:
            runs = [(int(slots[a]), int(local[a]), b - a) for a, b in itertools.pairwise(bounds)]
            out.append((t, runs, None))
        else:
            out.append((t, [], (slots, local)))
    return out


def _concat(linears: list[nn.Linear], share: bool, align: int = 1) -> tuple[Tensor, Tensor | None]:
    """The weights (and biases) of `linears` stacked along the output axis (then zero rows up to a multiple
    of `align`), for one matmul whose first outputs are the linears' in order. With `share`
    the linears' own parameters become views of the stacked tensors (same values, names and shapes; no
    memory doubled); a later engine over the same model finds them stacked already and reuses them."""
    key = (*(id(lin) for lin in linears), align)
    done = getattr(linears[0], "_engine_concat", None)
    if done is not None and done[0] == key:
        w, b = done[1], done[2]
        if all(lin.weight.data_ptr() == v.data_ptr() for lin, v in zip(linears, done[3], strict=True)):
            return w, b
    biases = [lin.bias for lin in linears]
    with_bias = all(b is not None for b in biases)
    if not with_bias and any(b is not None for b in biases):
        raise ModelError("cannot fuse projections where only some have a bias")
    sizes = [lin.out_features for lin in linears]
    # Zero rows up to a multiple of `align` outputs (16-byte rows): OLMo Hybrid's GDN q|k|v|a|b|g, 17,340
    # outputs, ran as cuBLAS' gemvx kernel at ~1.4 TB/s on the H100, where the projections whose outputs
    # are multiples of 16 ran as nvjet kernels at 2.6-2.9 TB/s (bench/results/gpu_e2e_fused.json,
    # profile). Padding to 16 (the CUDA default) took OLMo-7B-shaped decode at 1k from 133.9 to 155.3
    # tok/s in one run on the H100 (bench/results/gpu_e2e_final.json, decode_ours vs decode_aligned).
    pad = -sum(sizes) % align
    first = linears[0].weight
    w = torch.cat([lin.weight.detach() for lin in linears] + [first.new_zeros(pad, first.shape[1])], dim=0)
    b = None
    if with_bias:
        b = torch.cat([lin.bias.detach() for lin in linears] + [first.new_zeros(pad)], dim=0)  # type: ignore[union-attr]
    if share:
        for lin, view in zip(linears, w.split([*sizes, pad], dim=0), strict=False):
            lin.weight = nn.Parameter(view, requires_grad=False)
        if b is not None:
            for lin, view in zip(linears, b.split([*sizes, pad], dim=0), strict=False):
                lin.bias = nn.Parameter(view, requires_grad=False)
        linears[0]._engine_concat = (key, w, b, [lin.weight for lin in linears])  # type: ignore[assignment]
    return w, b
