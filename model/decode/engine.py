"""`DecodeEngine`: prefill and decode on preallocated buffers, the one-token step replayed as a CUDA graph.

The model stays plain and every layer keeps one forward; what makes tokens fast lives in this folder,
as in gpt-fast: buffers.py (the static state and the step's buffers), pages.py (a snapshot straight
into the buffers), ops.py (the engine's side of model/ops.py: device position, cache writes into the
buffers, attention kernels, concatenated projections, fused prep kernels, GEMV), step.py (the step:
the layers' own forwards with those ops, residual + RMSNorm fused), graphs.py (capture), generate.py
and sampling.py (the model's own token loop, used off the engine's path).

- Static state. The engine owns one `ModelState` whose attention caches are views into buffers of
  `max_context` tokens allocated up front, and whose recurrent tensors never move. Prefill runs the
  model's own blocks on that state (appends land in the buffers without reallocating; the chunked
  kernels' new recurrent tensors are copied back into the fixed ones). `engine.state` is a real
  `ModelState` at every point between calls, so snapshots (`to_tensors`, `cache_range`) just work;
  `load_state` copies a state into the buffers; `load_parts` copies a snapshot's recurrent tensors and
  cache pages straight into them (no intermediate `ModelState`: on resume, no concatenated cache).
- The decode step (`attention="kernel"`, the default on CUDA) is captured as ONE CUDA graph and
  replayed at any context: the attention cores are `hybrid_agent.kernels.attention_decode` (GQA) and
  `hybrid_agent.kernels.mla_decode` (MLA, absorbed form over the latent cache), which read the cache
  length on the device, and the cache writes go to a device-side position. With `fuse=True` (the
  default) the step cuts the ~1,100 small kernels a token of OLMo Hybrid 7B's shape took (#8): one
  matmul for q/k/v/a/b/g of a Gated DeltaNet layer, for q/k/v of an attention layer, for gate/up of an
  MLP (the weights concatenated once, when the engine is built; on CUDA the model's own weights are
  rebound as views of the concatenation, so no memory is doubled and the model computes exactly what
  it did); `hybrid_agent.kernels`' fused ops for the Gated DeltaNet conv step + L2 norms + gates (one
  launch, which the model's own one-token path runs too), an attention layer's QK-norm + RoPE + cache
  writes (one launch; `attn_prep=False` keeps the model's ops), SiLU x up, each residual add fused
  with the next RMSNorm, and the greedy argmax + position advance; on CUDA its one-token matmuls run
  `hybrid_agent.kernels.gemv` (a bandwidth-bound Triton GEMV, faster than cuBLAS at these shapes;
  `gemv=False` keeps F.linear). `fuse=False` runs the model's blocks as they are (the same graph, more
  kernels: the baseline of bench/gpu_e2e.py). `attention="sdpa"` runs the model's own
  `scaled_dot_product_attention` call (model/ops.py `sdpa`: flash / memory-efficient on CUDA) over the
  first L keys, with a host-side length, so the step is not captured: the reference mode only.
- Greedy decoding never leaves the device: the step writes argmax(logits) into the input buffer of the
  next step and into a device history of token ids, which is read back every `sync_every` tokens (or
  every token when stop ids must be checked: the state must not run past a stop token, as in
  model/decode/generate.py). Sampled decoding reads the logits buffer after each `step`. Greedy picks
  among the ids below `vocab_size` (the tokenizer's size when the model's vocabulary is padded past
  it), so it never yields an id without text.
- Per-row positions (`per_row=True`, model/decode/rows.py): B slots, each with its own length, the
  same step (one graph) advancing every occupied slot by one token at its own position; requests are
  loaded into (`prefill_row`, `load_row`, `load_row_parts`) and exported from (`export_row`,
  `clear_row`) slots between steps without recapturing. The whole-batch calls (`prefill`,
  `generate_greedy`, `load_state`) refuse such an engine; a window refuses per-row mode.
- Supported in the step: attention (full, no window), mla, gated_deltanet, mamba2, short_conv, kda and mlp
  layers, and MoE feed-forwards (model/moe.py: kernels.moe_gemv reads the chosen experts on the
  device, no host read) while batch_size * top_k <= n_experts; fused, an MoE layer is four launches
  (model/decode/moe_step.py: one stacked matmul for the router and the shared expert's inputs, the
  routing in one kernel, the experts' two launches with the shared expert added in the second).
  Anything else (a window, parallel layers) runs `model(token, state)` on the same buffers; on the CPU
  the step runs without a graph.
- Tensor parallel (model/parallel.py): a rank's engine runs its shard; the step all-reduces each
  sub-layer's output through the block's `reduce` and uses the vocab-parallel embedding and head (see
  model/decode/step.py); over NCCL the collectives are inside the captured graph.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from typing import Literal

import torch
from hybrid_agent.kernels.attention_decode import DecodeConfig
from hybrid_agent.model.decode import pages as page_loading
from hybrid_agent.model.decode import rows
from hybrid_agent.model.decode.buffers import ContextFullError, StaticState
from hybrid_agent.model.decode.generate import prefill as prefill_model
from hybrid_agent.model.decode.graphs import capture
from hybrid_agent.model.decode.ops import GEMV_ROLES, EngineOps, StepKernels, plan_concat
from hybrid_agent.model.decode.step import Step, embed, head
from hybrid_agent.model.errors import StateMismatchError, TokenRangeError
from hybrid_agent.model.hybrid import HybridLM
from hybrid_agent.model.moe import gathers
from hybrid_agent.model.ops import Ops
from hybrid_agent.model.state import ModelState, Page
from torch import Tensor, nn

__all__ = ["GEMV_ROLES", "GRAPHED_KINDS", "ContextFullError", "DecodeEngine"]

# The layer kinds the step runs: each uses only its ops (model/decode/ops.py) and one-step kernels.
GRAPHED_KINDS = frozenset({"attention", "gated_deltanet", "mamba2", "mlp", "mla", "short_conv", "kda"})


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
        per_row: bool = False,
    ) -> None:
        self.model = model
        self.cfg = model.config
        self.max_context = max_context
        self.prefill_chunk = prefill_chunk
        self.device = model.device
        self.static = set(self.cfg.layer_types) <= GRAPHED_KINDS and self.cfg.attention.sliding_window is None
        # MoE layers (model/moe.py) read nothing back to the host when a step's token-slots take the
        # gathered path; a batch too large for it runs the model's forward instead of a graph.
        self.static = self.static and (not self.cfg.moe.n_experts or gathers(self.cfg, batch_size))
        self.graphed = self.static and (self.device.type == "cuda" if use_graphs is None else use_graphs)
        # "kernel": kernels.attention_decode reads the length on the device, so the whole step is one
        # graph; "sdpa": the model's own SDPA call over the first L slots, with a host-side length, so
        # the step is never captured (the reference mode).
        self.attention = attention or ("kernel" if self.graphed or per_row else "sdpa")
        self.per_row = per_row
        if per_row and not (self.static and self.attention == "kernel"):
            raise StateMismatchError(
                "per-row positions need the engine's own step (layers "
                f"{sorted(GRAPHED_KINDS)}, no sliding window, attention='kernel'); this model or setting "
                "has to decode its requests one at a time or through model/batch.py"
            )
        self.graphed = self.graphed and self.attention == "kernel"
        self.fused = fuse and self.static and self.attention == "kernel"
        # Fused projections get zero rows up to a multiple of this (ops.py `_concat`); 16 on CUDA, where
        # cuBLAS runs 16-aligned one-token matmuls ~2x faster (bench/results/gpu_e2e_final.json).
        self.align = align if align is not None else (16 if self.device.type == "cuda" else 1)
        self.buf = StaticState(model, max_context, batch_size, vocab_size, per_row=per_row)
        # fused step: an attention layer's QK-norm, RoPE and cache writes as one kernels.attn_decode_prep
        # launch (attn_prep=False: the model's own ops, ~19 small kernels a layer; the same-run baseline)
        self.kernels = StepKernels(attn_prep=attn_prep)
        self.kernels.set_gemv(gemv, self.device)
        # On CUDA the model's own weights are rebound as views of the concatenations (no memory doubled).
        concat = plan_concat(model, share=self.device.type == "cuda", align=self.align) if self.fused else {}
        self.ops = EngineOps(
            self.buf, self.kernels, concat=concat, fused=self.fused, attention=self.attention
        )
        self._step = Step(model, self.buf, self.ops)
        self._graphs: torch.cuda.CUDAGraph | None = None

    # ---- the step's kernel choices (each drops captured graphs: the next step captures the new choice)
    def set_gemv(self, gemv: bool | Collection[str] | None) -> None:
        """Which of the fused step's matmuls (GEMV_ROLES) run kernels.gemv instead of F.linear: True all,
        False none, None the default (all on CUDA, none on the CPU), or a set of roles."""
        self.kernels.set_gemv(gemv, self.device)
        self._graphs = None

    @property
    def gemv_roles(self) -> frozenset[str]:
        return self.kernels.gemv_roles

    @property
    def gemv_cfg(self) -> dict:
        """kernels.gemv launches by (N, K): entries set here apply from the next capture."""
        return self.kernels.gemv_cfg

    @gemv_cfg.setter
    def gemv_cfg(self, value: dict) -> None:
        self.kernels.gemv_cfg = dict(value)
        self._graphs = None

    @property
    def attn_prep(self) -> bool:
        return self.kernels.attn_prep

    @attn_prep.setter
    def attn_prep(self, value: bool) -> None:
        self.kernels.attn_prep = value
        self._graphs = None

    @property
    def moe_fused(self) -> bool:
        """MoE layers in the fused step's four launches (model/decode/moe_step.py; False: the layer's own
        forward with the engine's ops, the same-run baseline of bench/gpu_moe.py)."""
        return self.kernels.moe_fused

    @moe_fused.setter
    def moe_fused(self, value: bool) -> None:
        self.kernels.moe_fused = value
        self._graphs = None

    @property
    def attn_config(self) -> DecodeConfig | None:
        """kernels.attention_decode's launch (None: its own choice for the shape)."""
        return self.kernels.attn_config

    @attn_config.setter
    def attn_config(self, value: DecodeConfig | None) -> None:
        self.kernels.attn_config = value
        self._graphs = None

    @property
    def greedy_kernel(self) -> bool:
        """The greedy advance through kernels.greedy_advance (False: torch ops)."""
        return self.buf.greedy_kernel

    @greedy_kernel.setter
    def greedy_kernel(self, value: bool) -> None:
        self.buf.greedy_kernel = value
        self._graphs = None

    def stacked_weight(self, linears: Sequence[nn.Linear]) -> Tensor | None:
        """The concatenated weight the fused step multiplies by for these linears, if it has one."""
        got = self.ops.concat.get(tuple(id(lin) for lin in linears))
        return None if got is None else got[0]

    @property
    def _logits(self) -> Tensor:
        return self.buf.logits

    # ---- state -----------------------------------------------------------------------------------------
    @property
    def state(self) -> ModelState:
        return self.buf.state

    @property
    def n_tokens(self) -> int:
        return self.buf.n

    def reset(self) -> None:
        """Forget every token (the buffers stay; recurrent states are zeroed; per row: every slot empty)."""
        self.buf.reset()
        for b in range(self.buf.state.batch_size) if self.per_row else ():
            rows.clear_row(self.buf, b)

    def set_length(self, n_tokens: int) -> None:
        """Declare that the first `n_tokens` of every cache buffer and the recurrent tensors were written
        by the caller (benchmarks build long states this way); positions become 0..n-1."""
        self._whole_only("set_length")
        self.buf.set_length(n_tokens)

    def load_state(self, state: ModelState) -> None:
        """Copy `state` (e.g. restored from a snapshot, on any device) into the engine's buffers."""
        self._whole_only("load_state")
        self.buf.load_state(state)

    def check_parts(self, recurrent: dict[str, Tensor], pages: Sequence[Page]) -> int:
        """Validate a snapshot for `load_parts` without changing anything; returns its token count.
        (`load_parts` checks again; callers use this to size the engine before loading.)"""
        return page_loading.plan_parts(self.buf, recurrent, pages).n_tokens

    def load_parts(self, recurrent: dict[str, Tensor], pages: Sequence[Page]) -> None:
        """A snapshot (`ModelState.recurrent_tensors()` and cache pages) straight into the buffers; see
        model/decode/pages.py `load_parts`. On StateMismatchError / ContextFullError nothing changed."""
        self._whole_only("load_parts")
        page_loading.load_parts(self.buf, recurrent, pages)

    def plan_parts(self, recurrent: dict[str, Tensor], pages: Sequence[Page]) -> page_loading.PartsPlan:
        """Validate a snapshot and plan its copies into these buffers, changing nothing (`n_tokens` says
        its length); `load_plan` then copies without checking or planning again."""
        return page_loading.plan_parts(self.buf, recurrent, pages)

    def load_plan(self, plan: page_loading.PartsPlan) -> None:
        """`load_parts` of a snapshot planned by `plan_parts` on this engine."""
        self._whole_only("load_parts")
        page_loading.load_plan(self.buf, plan)

    def export_state(self) -> ModelState:
        """A deep copy of the current state (without the spare room), e.g. to keep a checkpoint."""
        return self.state.clone()

    # ---- prefill ---------------------------------------------------------------------------------------
    @torch.inference_mode()
    def prefill(self, ids: Sequence[int] | Tensor) -> Tensor:
        """Feed `ids` (T,) or (B, T); returns the logits of the last token (B, V), in chunks of
        `prefill_chunk` tokens so activation memory stays bounded. Only the last chunk goes through
        the LM head."""
        self._whole_only("prefill")
        x = torch.as_tensor(ids, dtype=torch.long, device=self.device)
        x = x.view(1, -1) if x.dim() == 1 else x  # (B, T)
        if x.shape[-1] == 0:
            raise TokenRangeError("the prompt is empty; pass at least one token to prefill")
        # Ids given on the host are checked there: no device read (a sync) before the forward.
        flat = ids if isinstance(ids, list) and all(isinstance(i, int) for i in ids) else None
        lo, hi = (min(flat), max(flat)) if flat else (int(x.min()), int(x.max()))
        if lo < 0 or hi >= self.cfg.vocab_size:
            raise TokenRangeError(f"token ids must be in [0, {self.cfg.vocab_size}); got [{lo}, {hi}]")
        buf = self.buf
        buf.room(buf.n, x.shape[1])
        m, h = self.model, None
        for start in range(0, x.shape[1], self.prefill_chunk):
            chunk = x[:, start : start + self.prefill_chunk]  # (B, t)
            h, ops = embed(m, chunk), Ops()  # (B, t, D); the model's own path
            for block, layer in zip(m.layers, buf.state.layers, strict=True):
                h = block(h, layer, buf.state, ops)  # (B, t, D)
            buf.state.n_tokens += chunk.shape[1]
            buf.pin()
            buf.ids[:, buf.n : buf.n + chunk.shape[1]] = chunk
            buf.n = buf.state.n_tokens
        assert h is not None
        buf.pos.fill_(buf.n)
        # The head over the whole last chunk, as model.forward does: the same matmul shape gives the
        # same rounding, so the first decoded token matches the eager path exactly.
        buf.logits.copy_(head(m, h)[:, -1])
        return buf.logits

    # ---- decode ----------------------------------------------------------------------------------------
    def _run_step(self) -> None:
        buf = self.buf
        if self.graphed:
            if self._graphs is None:
                self._graphs = capture(self._step, buf)
            self._graphs.replay()
        elif self.static:
            self._step()
        else:
            buf.logits.copy_(self.model(buf.tok, buf.state)[:, -1])
            buf.advance()
            buf.n = buf.state.n_tokens
            return
        buf.n += 1
        buf.narrow()

    @torch.inference_mode()
    def step(self, token: Tensor | int) -> Tensor:
        """Feed one token per sequence ((B,) or (B, 1) on any device, or an int for B == 1); returns the
        logits (B, V) of the next token. The returned tensor is the engine's buffer: it is overwritten
        by the next call."""
        buf = self.buf
        if self.per_row:
            return self._step_rows(token)
        buf.room(buf.n, 1)
        if isinstance(token, int):
            buf.tok.fill_(token)
        else:
            buf.tok.copy_(token.view(-1, 1))
        buf.ids.index_copy_(1, buf.pos, buf.tok)
        self._run_step()
        return buf.logits

    # ---- per-row positions (model/decode/rows.py) ---------------------------------------------------------
    def _step_rows(self, token: Tensor | int) -> Tensor:
        buf = self.buf
        live = [b for b, on in enumerate(buf.live) if on]
        for b in live:
            buf.room(buf.lens[b], 1)
        if isinstance(token, int):
            buf.tok.fill_(token)
        else:
            buf.tok.copy_(token.view(-1, 1))
        buf.ids.scatter_(1, buf.pos[:, None], buf.tok)
        if self.graphed:
            if self._graphs is None:
                self._graphs = capture(self._step, buf)
            self._graphs.replay()
        else:
            self._step()
        for b in live:
            buf.lens[b] += 1
        return buf.logits

    def _rows_only(self, what: str) -> None:
        if not self.per_row:
            raise StateMismatchError(f"{what} needs an engine built with per_row=True")

    def _whole_only(self, what: str) -> None:
        if self.per_row:
            raise StateMismatchError(f"{what} runs the whole batch at one length; with per_row=True use "
                                     "prefill_row / load_row / step")  # fmt: skip

    @property
    def row_lengths(self) -> list[int]:
        """Each slot's token count (0 for an empty slot); per_row engines."""
        return list(self.buf.lens)

    @property
    def free_rows(self) -> list[int]:
        """The slots that hold no request."""
        return [b for b in range(self.buf.state.batch_size) if not self.buf.live[b]]

    def load_row(self, b: int, state: ModelState) -> None:
        """A batch-1 state (a prefilled prompt, a restored snapshot) into slot b; the graph is kept."""
        self._rows_only("load_row")
        rows.load_row(self.buf, b, state)

    def load_row_parts(self, b: int, recurrent: dict[str, Tensor], pages: Sequence[Page]) -> None:
        """A batch-1 snapshot (`recurrent_tensors()` and cache pages, as `load_parts` takes) straight into
        slot b (model/decode/pages.py `load_plan`): one copy per page and tensor, no state assembled
        first; everything checked before the first write."""
        self._rows_only("load_row_parts")
        page_loading.load_plan(self.buf, page_loading.plan_parts(self.buf, recurrent, pages, row=True), b)

    def export_row(self, b: int) -> ModelState:
        """Slot b as a batch-1 state of its own (a copy)."""
        self._rows_only("export_row")
        return rows.export_row(self.buf, b)

    def view_row(self, b: int) -> ModelState:
        """Slot b as a batch-1 state of views into the buffers (no copy), valid until the next step."""
        self._rows_only("view_row")
        return rows.view_row(self.buf, b)

    def clear_row(self, b: int) -> None:
        """Empty slot b (it keeps running inside the step, harmlessly, until a row is loaded into it)."""
        self._rows_only("clear_row")
        rows.clear_row(self.buf, b)

    @torch.inference_mode()
    def prefill_row(self, b: int, ids: Sequence[int] | Tensor) -> Tensor:
        """Feed the prompt `ids` (T,) as a new request in slot b (the model's own forward on a batch-1
        state, then `load_row`); returns its next-token logits (V,)."""
        self._rows_only("prefill_row")
        x = torch.as_tensor(ids, dtype=torch.long, device=self.device).view(1, -1)
        if x.shape[1] == 0:
            raise TokenRangeError("the prompt is empty; pass at least one token to prefill")
        lo, hi = int(x.min()), int(x.max())
        if lo < 0 or hi >= self.cfg.vocab_size:
            raise TokenRangeError(f"token ids must be in [0, {self.cfg.vocab_size}); got [{lo}, {hi}]")
        self.buf.room(x.shape[1], 1)
        state = self.model.new_state(1)
        logits = prefill_model(self.model, x, state, chunk_size=self.prefill_chunk)  # (1, V)
        rows.load_row(self.buf, b, state)
        return logits[0]

    @torch.inference_mode()
    def generate_greedy(
        self, max_new_tokens: int, *, stop_token_ids: Sequence[int] = (), sync_every: int = 64
    ) -> list[int]:
        """Greedy tokens after the last prefill/step (batch 1), each fed into the state as in
        model/decode/generate.py (the stop token too). Reads tokens back every `sync_every` steps, or every
        step when stop ids are given (the state must not run past a stop)."""
        self._whole_only("generate_greedy")
        if self.state.batch_size != 1:
            raise StateMismatchError("generate_greedy decodes one sequence; use step() for batches")
        buf = self.buf
        buf.room(buf.n, max_new_tokens)
        buf.tok.copy_(buf.greedy_logits.argmax(-1, keepdim=True))
        buf.ids.index_copy_(1, buf.pos, buf.tok)
        every = 1 if stop_token_ids else max(1, sync_every)
        stops, first, out = set(stop_token_ids), buf.n, []
        for i in range(max_new_tokens):
            self._run_step()
            if (i + 1) % every == 0 or i + 1 == max_new_tokens:
                new = buf.ids[0, first + len(out) : buf.n].tolist()  # one sync per `every` tokens
                for t in new:
                    out.append(t)
                    if t in stops:
                        return out
        return out
