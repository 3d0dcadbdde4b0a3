"""The engine: what the agent loop needs from a model, at the level of tokens.

Design choices:
- The loop talks to an `Engine`, not to `HybridLM`, so that its logic (tool rounds, approvals,
  cancellation, snapshots) can be tested with a scripted engine that emits chosen tokens, and so that
  the real engine is the only place that knows about tensors and devices.
- Every generated token is fed back into the state as soon as it is chosen (the stop token too), so
  the state always holds exactly the text the model wrote and the next segment starts cleanly.
- Snapshots are append-only: `ModelState.keep_from` pins every token since the last snapshot in the
  cache (even those that left the attention window), so the next snapshot can save them as one page;
  the window's masking does not depend on what is held, so pinning does not change any number.
- Long prefills are split in chunks of a fixed size: the same segment is always cut the same way, so a
  resumed session runs exactly the operations the uninterrupted one ran.
- On CUDA (full attention) the real engine drives the `DecodeEngine` (model/decode/): preallocated
  caches, prefill in chunks, and each generated token fed back through the captured one-token step (one CUDA
  graph) instead of a Python forward; resume copies the snapshot's recurrent tensors and pages
  straight into its buffers (`load_parts`: no intermediate state, no concatenated cache). Snapshots
  read its state directly (`recurrent_tensors` + `cache_range` of the new tokens): `export_state`
  would copy the whole cache for a page of it. With a window (the engine keeps full attention only)
  and on the CPU the model's own forward runs, as before. Both paths are exact with themselves across
  a save and a resume; they are not bit-identical to each other on the GPU (other kernels).
  `HYBRID_AGENT_DECODE_ENGINE=1|0` forces the choice (tests run the engine on CPU).
- Calls are not thread-safe; the agent runs all of them on its one model thread.
- `fingerprint` is the model's (config + weights) and its tokenizer's digest, `MODEL:TOKENIZER`
  (model/tokenizer.py): a session resumes only with both as they were (`check_fingerprint`).
"""

from __future__ import annotations

import base64
from collections.abc import Sequence
from typing import Any, Protocol

import torch
from hybrid_agent.agent.errors import AgentError
from hybrid_agent.model.chat import ChatFormat, Segment
from hybrid_agent.model.state import Page
from hybrid_agent.model.switches import env_switch
from hybrid_agent.model.tokenizer import fingerprint_with_tokenizer
from torch import Tensor

PREFILL_CHUNK = 2048  # tokens per forward call during prefill (bounds the attention matrix)
DECODE_ENGINE_ENV = "HYBRID_AGENT_DECODE_ENGINE"  # auto (default: on CUDA) | 1 | 0
MIN_CONTEXT = 8192  # the DecodeEngine's first buffers, in tokens; grown whenever a session outgrows them


def want_decode_engine(arg: bool | None, device: torch.device) -> bool:
    """Whether to run on the `DecodeEngine` (model/decode/): `arg` if given, else the environment,
    else CUDA."""
    if arg is not None:
        return arg
    env = env_switch(DECODE_ENGINE_ENV)
    return device.type == "cuda" if env is None else env


def check_fingerprint(session_id: str, stored: str, current: str) -> None:
    """Refuse to continue a session with another model or another tokenizer than it was made with.

    Fingerprints are `MODEL:TOKENIZER`; one without the tokenizer part was stored before tokenizers
    were recorded, and is checked on the model alone (there is nothing else to check it against)."""
    if stored == current:
        return
    model_then, _, tokenizer_then = stored.partition(":")
    model_now, _, tokenizer_now = current.partition(":")
    if model_then != model_now:
        raise AgentError(
            f"session {session_id} was made with another model ({model_then[:12]}); "
            f"the model loaded now is {model_now[:12]}: pass the model it was made with"
        )
    if tokenizer_then:
        raise AgentError(
            f"session {session_id} was made with this model but another tokenizer ({tokenizer_then[:12]}); "
            f"the tokenizer loaded now is {tokenizer_now[:12] or 'unknown'}: put back the tokenizer.json "
            "the session was made with, or start a new session"
        )


class TextStream(Protocol):
    def push(self, token_id: int) -> str: ...
    def flush(self) -> str: ...


class Engine(Protocol):
    """A model, its tokenizer, its chat format and one live state."""

    chat: ChatFormat
    model_name: str
    device: str
    fingerprint: str
    window: int | None
    sinks: int

    @property
    def n_tokens(self) -> int: ...
    @property
    def state_bytes(self) -> int: ...

    def encode(self, segment: Segment) -> list[int]: ...
    def text_stream(self) -> TextStream:
        """Turns generated ids into text, special tokens written out (stop detection needs them)."""
        ...

    def reset(self) -> None:
        """An empty state (a new session)."""
        ...

    def prefill(self, ids: Sequence[int]) -> None:
        """Advance the state over `ids`; the next token is chosen from the last one's logits."""
        ...

    def next_token(self) -> int: ...
    def snapshot(self, since: int) -> tuple[dict[str, Tensor], list[Page]]:
        """The recurrent tensors (whole) and the cache pages for tokens [since, n_tokens), as CPU
        copies that share no memory with the live state (the serve memory tier keeps them as they are)."""
        ...

    def mark_saved(self) -> None:
        """The state up to now is in the database: tokens before it may leave memory."""
        ...

    def restore(self, recurrent: dict[str, Tensor], pages: Sequence[Page]) -> None:
        """Rebuild the state from a snapshot. The given tensors are only read: the engine copies them
        into its own state and keeps no reference (the serve memory tier hands over its own tensors)."""
        ...

    # Optional (the loop looks them up with getattr): `sampler_state() -> str | None`,
    # `set_sampler_state(s)`, `layout_metadata() -> dict[str, str]`, how each state tensor is laid
    # out (model.state_layout.layout_metadata), stored with every snapshot and checked on resume, and
    # `set_attention_policy(window, sinks)`, so that a session resumes under the window it was made with,
    # and `snapshot_on_device(since)`, `snapshot` with its copies left on the model's device (serve's
    # device tier, agent/serve_prefix.py; an engine without it gets no device tier).


def state_snapshot(
    state: Any, since: int, *, on_device: bool = False
) -> tuple[dict[str, Tensor], list[Page]]:
    """A `ModelState`'s recurrent tensors (whole) and its cache pages for tokens [since, n_tokens), as
    CPU copies, or copies left on the state's device (`on_device`). Never views of the live state:
    recurrent_tensors() clones and cache_range() gathers."""

    def move(t: Tensor) -> Tensor:
        return t.detach() if on_device else t.detach().cpu()

    recurrent = {k: move(v) for k, v in state.recurrent_tensors().items()}
    end = int(state.n_tokens)
    pages = []
    if end > since:
        tensors = {k: move(v) for k, v in state.cache_range(since, end).items()}
        if tensors:  # a model without attention has no cache pages
            pages.append(Page(since, end, tensors))
    return recurrent, pages


class ModelEngine:
    """The real engine: a `HybridLM` (or adapted checkpoint) with its tokenizer and chat format."""

    def __init__(
        self,
        model: Any,
        tokenizer: Any,
        chat: ChatFormat,
        *,
        window: int | None = None,
        sinks: int = 4,
        temperature: float = 0.0,
        seed: int | None = None,
        model_name: str = "model",
        decode_engine: bool | None = None,
        max_context: int = MIN_CONTEXT,
    ) -> None:
        self.model = model
        self.tokenizer = tokenizer
        # Only ids the tokenizer has are sampled (a model's vocabulary is often padded past it).
        self._vocab_size: int | None = getattr(tokenizer, "vocab_size", None)
        self.chat = chat
        self.model_name = model_name
        param = next(iter(model.parameters()), None)
        self._device = param.device if param is not None else torch.device("cpu")
        self.device = str(self._device)
        self.fingerprint: str = fingerprint_with_tokenizer(model.fingerprint, tokenizer)
        from hybrid_agent.model.decode.sampling import SamplingParams, make_generator

        self.sampling = SamplingParams(temperature=temperature)
        self._seed = seed
        self._generator = make_generator(seed, self._device)
        self._window_arg, self._sinks_arg = window, sinks
        self._want_engine = want_decode_engine(decode_engine, self._device)
        self._min_context = max(1, int(max_context))
        self._decoder: Any = None  # the DecodeEngine, built on first use and kept (its buffers are big)
        self._on_decoder = False  # whether the live state is the DecodeEngine's
        self._state: Any = None
        self._logits: Tensor | None = None
        self._fresh_state()
        # The effective policy (a model trained with a sliding window brings its own).
        self.window: int | None = self.state.window
        self.sinks: int = self.state.sinks

    @property
    def state(self) -> Any:
        """The live `ModelState` (the DecodeEngine's, whose caches are views into its buffers, or ours)."""
        return self._decoder.state if self._on_decoder else self._state

    @property
    def uses_decode_engine(self) -> bool:
        """Whether the live state runs on the `DecodeEngine` (model/decode/) (CUDA graphs on CUDA)."""
        return self._on_decoder

    def _fresh_state(self) -> None:
        """An empty state under the current policy, on the DecodeEngine when it can hold it."""
        state = self.model.new_state(window=self._window_arg, sinks=self._sinks_arg)
        self._on_decoder = self._want_engine and state.window is None
        if self._on_decoder:
            self._decoder_for(0).reset()
            self._state = None
        else:
            state.keep_from = 0
            self._state = state

    def _decoder_for(self, n_tokens: int) -> Any:
        """The DecodeEngine, with buffers for at least `n_tokens` (grown geometrically; the live state
        moves into the new buffers, so growing changes no number)."""
        from hybrid_agent.model.decode.engine import DecodeEngine

        old = self._decoder
        if old is not None and n_tokens <= old.max_context:
            return old
        # 1.5x the old buffers (amortised growth token by token), at least 1.25x what is needed now
        # (a resumed 64k session gets ~80k, not the next power of two), in whole 1024-token blocks.
        size = max(
            self._min_context, n_tokens + n_tokens // 4, 0 if old is None else old.max_context * 3 // 2
        )
        size = -(-size // 1024) * 1024 if size > 1024 else size
        new = DecodeEngine(
            self.model, max_context=size, prefill_chunk=PREFILL_CHUNK, vocab_size=self._vocab_size
        )
        if old is not None and self._on_decoder and old.n_tokens:
            new.load_state(old.state)
        self._decoder = old = None
        if self._device.type == "cuda":
            torch.cuda.empty_cache()  # the old buffers go back before the next big allocation
        self._decoder = new
        return new

    @property
    def n_tokens(self) -> int:
        return int(self.state.n_tokens)

    def layout_metadata(self) -> dict[str, str]:
        """How each state tensor is laid out (key- or value-first, conv width, dtype), by tensor name."""
        from hybrid_agent.model.state_layout import layout_metadata

        tp = getattr(self.model, "tp", None)  # a tensor-parallel rank's model: the layout it was split in
        return layout_metadata(self.model.config, tp.world if tp is not None else 1)

    @property
    def state_bytes(self) -> int:
        return int(self.state.nbytes)

    def encode(self, segment: Segment) -> list[int]:
        return segment.encode(self.tokenizer)

    def text_stream(self) -> TextStream:
        stream: TextStream = self.tokenizer.stream_decoder()
        return stream

    def reset(self) -> None:
        from hybrid_agent.model.decode.sampling import make_generator

        self._fresh_state()
        self._logits = None
        self._generator = make_generator(self._seed, self._device)  # each session starts from the seed

    def set_attention_policy(self, window: int | None, sinks: int) -> None:
        """Run with this window policy from now on (a resumed session's own): an empty state under it;
        `restore` or `reset` follows. `window` / `sinks` then say the effective policy."""
        self._window_arg, self._sinks_arg = window, sinks
        self.reset()
        self.window, self.sinks = self.state.window, self.state.sinks

    def sampler_state(self) -> str | None:
        """The random generator's state (base64), saved with each snapshot so that a resumed session
        samples exactly what the uninterrupted one would; None when decoding is greedy."""
        if self.sampling.greedy:
            return None
        return base64.b64encode(self._generator.get_state().numpy().tobytes()).decode("ascii")

    def set_sampler_state(self, encoded: str) -> None:
        raw = bytearray(base64.b64decode(encoded))
        self._generator.set_state(torch.frombuffer(raw, dtype=torch.uint8))

    def prefill(self, ids: Sequence[int]) -> None:
        from hybrid_agent.model.decode.generate import prefill

        if not ids:
            return
        if not self._on_decoder:
            self._logits = prefill(self.model, list(ids), self.state, chunk_size=PREFILL_CHUNK)  # (1, V)
            return
        # One spare slot: the engine's step writes the next position's id past the new token.
        dec = self._decoder_for(self.n_tokens + len(ids) + 1)
        with torch.inference_mode():
            if len(ids) == 1 and dec.n_tokens > 0:  # a generated token fed back: the graphed step
                self._logits = dec.step(int(ids[0]))  # (1, V), the engine's buffer
            else:
                self._logits = dec.prefill(list(ids))  # (1, V)

    @property
    def last_logits(self) -> Tensor:
        """The logits (1, V) the next token is chosen from (after the last prefill); read them before
        the next prefill, which may overwrite them in place."""
        if self._logits is None:
            raise RuntimeError("last_logits before any prefill")
        return self._logits

    def next_token(self) -> int:
        from hybrid_agent.model.decode.sampling import sample

        if self._logits is None:
            raise RuntimeError("next_token() before any prefill")
        return int(sample(self._logits, self.sampling, self._generator, vocab_size=self._vocab_size)[0])

    def snapshot(self, since: int) -> tuple[dict[str, Tensor], list[Page]]:
        return self._snapshot(since, on_device=False)

    def snapshot_on_device(self, since: int) -> tuple[dict[str, Tensor], list[Page]]:
        """`snapshot`, its copies left on the model's device (no host copy, no sync: the serve device
        tier, agent/serve_prefix.py, copies them to the host off the model thread)."""
        return self._snapshot(since, on_device=True)

    def _snapshot(self, since: int, *, on_device: bool) -> tuple[dict[str, Tensor], list[Page]]:
        if self._on_decoder:  # a slice of its buffers, positions made on the host: no device read
            from hybrid_agent.model.decode.pages import snapshot_parts

            return snapshot_parts(self._decoder.buf, since, on_device=on_device)
        return state_snapshot(self.state, since, on_device=on_device)

    def mark_saved(self) -> None:
        if self._on_decoder:  # full attention: nothing leaves memory
            return
        self.state.keep_from = self.n_tokens
        for i in range(len(self.state.layers)):
            self.state.evict(i)

    def restore(self, recurrent: dict[str, Tensor], pages: Sequence[Page]) -> None:
        """Rebuild the state from a snapshot; everything is checked before the live state changes.

        On the DecodeEngine the tensors go straight into its buffers from wherever they are (the store
        puts them on the GPU when the model is there): no state is assembled first, so no concatenated
        or moved copy of the cache exists beside the buffers. On the model's own path the tensors go
        to the model's device first, so reassembling the pages runs there, not in host memory (and
        `from_parts` builds new tensors: the state never aliases the given ones)."""
        from hybrid_agent.model import ModelState

        if self._on_decoder:
            # Checked and planned once (refused before anything changes), then copied; planned again only
            # on buffers grown for it. The plan reads positions alone, on the host where the pages hold
            # them (the engine's snapshots do): restoring a state kept on the device reads nothing back.
            dec = self._decoder
            plan = dec.plan_parts(recurrent, pages)
            if plan.n_tokens + 1 > dec.max_context:
                dec.reset()  # replaced anyway: growing need not carry the old tokens over
                dec = self._decoder_for(plan.n_tokens + 1)
                plan = dec.plan_parts(recurrent, pages)
            dec.load_plan(plan)
            self._logits = None
            return
        dev = self._device
        state = ModelState.from_parts(
            {k: v.to(dev, non_blocking=True) for k, v in recurrent.items()},
            [
                (p.start, p.end, {k: v.to(dev, non_blocking=True) for k, v in p.tensors.items()})
                for p in pages
            ],
            self.model.config,
            window=self._window_arg,
            sinks=self._sinks_arg,
        )
        self._state = state.to(dev)
        self._state.keep_from = self.n_tokens
        self._logits = None
