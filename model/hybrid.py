"""`HybridLM`: embeddings, a stack of blocks (model/blocks.py), a final norm and the LM head.

Design choices:
- The model holds no state: `model(input_ids, state)` reads and advances an explicit `ModelState`
  (model/state.py), so a state can be saved, restored, cloned and forked independently of the model.
- Inference only: `forward` runs in `torch.inference_mode`, so states never keep graphs alive. The
  state's tensors become inference tensors and are only changed in place inside inference mode
  (forward, `ModelState.evict`), so callers may use inference mode or not, as they like.
- Bad input is refused before the state changes. An exception inside the layers (out of memory, an
  interrupt) leaves the state partly advanced: keep a `clone()` or a snapshot to go back to.
- T == 1 takes each mixer's one-step kernels; T > 1 the chunked ones. Both give the same numbers.
- `fingerprint` = sha256 of the config JSON and, in name order, every weight's own sha256 (of its name,
  dtype, shape and bytes): computed on first use and cached until the weights change (load_state_dict,
  .to()). Per-weight digests let a checkpoint loader compute the same value while it streams the
  weights in, in any order and on several threads (model/checkpoints/), without reading them twice.
- Files: `config.json` + `model.safetensors` (never pickle). Tied embeddings are stored once.
- Tensor parallel (model/parallel.py): built with `tp`, the model holds one rank's shard: its layers are
  built from the rank's local config (`local_config`, and so is its state), its embedding and head hold
  the rank's vocabulary rows, and `config` stays the full model's (its fingerprint too).
- Weight names (for checkpoint adapters): `embed_tokens.weight`, `layers.{i}.*` (model/blocks.py),
  `norm.weight`, `lm_head.weight` (only without tied embeddings).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping
from functools import partial
from pathlib import Path
from typing import Any

import torch
from hybrid_agent.model.attention import Attention
from hybrid_agent.model.blocks import Block
from hybrid_agent.model.config import HybridConfig
from hybrid_agent.model.cpu_rows import drop_packs, head_matmul
from hybrid_agent.model.errors import CheckpointError, StateMismatchError, TokenRangeError
from hybrid_agent.model.layers import RMSNorm
from hybrid_agent.model.mamba2 import Mamba2Mixer
from hybrid_agent.model.ops import Ops
from hybrid_agent.model.parallel import TensorParallel, local_config
from hybrid_agent.model.state import ModelState, state_layout
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

WEIGHTS_FILE = "model.safetensors"


def weight_header(name: str, dtype: torch.dtype, shape: tuple[int, ...]) -> bytes:
    """What a weight's digest hashes before its bytes."""
    return f"{name}|{dtype}|{shape}|".encode()


def combine_fingerprint(config_json: str, digests: Mapping[str, str]) -> str:
    """The model fingerprint from the config and each weight's sha256 hex digest (by name)."""
    h = hashlib.sha256(config_json.encode())
    for name in sorted(digests):
        h.update(f"{name}={digests[name]}|".encode())
    return h.hexdigest()


class HybridLM(nn.Module):
    def __init__(self, cfg: HybridConfig, tp: TensorParallel | None = None) -> None:
        super().__init__()
        self.tp = tp or TensorParallel()
        self.config = cfg
        self.local_config = local = local_config(cfg, self.tp.world)  # `cfg` itself at world 1
        vocab = self.tp.vocab_rows(cfg.vocab_size)
        self.embed_tokens = nn.Embedding(vocab, cfg.d_model)
        reduce = self.tp.all_reduce
        self.layers = nn.ModuleList(Block(local, kind, i, reduce) for i, kind in enumerate(cfg.layer_types))
        self.norm = RMSNorm(cfg.d_model, cfg.norm_eps)
        self.lm_head = None if cfg.tie_embeddings else nn.Linear(cfg.d_model, vocab, bias=False)
        if self.tp.world > 1:
            self._span_norms()
        self._layout = state_layout(local)
        self._fingerprint: str | None = None
        self._init_weights()

    def _span_norms(self) -> None:
        """Norms over an axis split across the ranks sum their squares over them (model/parallel.py):
        single-group Mamba-2's gated norm, attention's QK-norm over all heads."""
        for block in self.layers:
            mixers = [block.mixer] if block.kind != "parallel" else [block.mixer.attention, block.mixer.mamba]
            for m in mixers:
                if isinstance(m, Mamba2Mixer) and m.norm is not None and self.config.mamba2.n_groups == 1:
                    m.norm.span = self.tp
                if isinstance(m, Attention) and m.qk_norm == "full":
                    m.q_norm.span = m.k_norm.span = self.tp

    @torch.no_grad()
    def _init_weights(self) -> None:
        """Normal(0, init_std) for projections and embeddings; the mixers set their own SSM parameters."""
        for m in self.modules():
            if isinstance(m, nn.Linear | nn.Embedding):
                nn.init.normal_(m.weight, std=self.config.init_std)
            if isinstance(m, nn.Linear) and m.bias is not None:
                nn.init.zeros_(m.bias)

    @property
    def device(self) -> torch.device:
        return self.embed_tokens.weight.device

    @property
    def dtype(self) -> torch.dtype:
        return self.embed_tokens.weight.dtype

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    # ---- state -------------------------------------------------------------------------------------
    def new_state(self, batch_size: int = 1, *, window: int | None = None, sinks: int = 0) -> ModelState:
        """An empty state. `window=None`: exact full attention; else keep `sinks` + the last `window`."""
        return ModelState.empty(
            self.local_config, batch_size, window=window, sinks=sinks, device=self.device, dtype=self.dtype
        )

    def _check(self, input_ids: Tensor, state: ModelState) -> None:
        if not isinstance(input_ids, Tensor) or input_ids.dim() != 2 or input_ids.dtype.is_floating_point:
            got = (
                type(input_ids).__name__
                if not isinstance(input_ids, Tensor)
                else f"{input_ids.dtype} {input_ids.shape}"
            )
            raise TokenRangeError(f"input_ids must be an integer tensor of shape (batch, tokens); got {got}")
        if input_ids.shape[1] == 0:
            raise TokenRangeError("input_ids has no tokens; pass at least one token per call")
        if input_ids.numel() == 1:  # decode: one read instead of aminmax + stack
            lo = hi = int(input_ids.item())
        else:
            lo, hi = (int(v) for v in torch.stack(torch.aminmax(input_ids)).tolist())  # one device sync
        if lo < 0 or hi >= self.config.vocab_size:
            raise TokenRangeError(
                f"token ids must be in [0, {self.config.vocab_size}) for this model; got ids in "
                f"[{lo}, {hi}]. Use the tokenizer that belongs to this model"
            )
        if not isinstance(state, ModelState):
            raise StateMismatchError(
                f"state must be a ModelState (from model.new_state()); got {type(state).__name__}"
            )
        if state.layout != self._layout:
            raise StateMismatchError(
                "this state was made for a model with another config (layer kinds or sizes differ); "
                "create one with model.new_state() or load it with ModelState.from_tensors(t, model.config)"
            )
        first = next((t for ls in state.layers for t in (*ls.recurrent.values(), *ls.cache.values())), None)
        if first is None:  # an all-MLP model: the state holds only the token count
            return
        if first.shape[0] != input_ids.shape[0]:
            raise StateMismatchError(
                f"input_ids has batch {input_ids.shape[0]} but the state has batch {first.shape[0]}; "
                "use model.new_state(batch_size=...) with the input's batch size"
            )
        if first.device != self.device:
            raise StateMismatchError(
                f"the state is on {first.device} but the model is on {self.device}; call state.to(device)"
            )

    # ---- forward -----------------------------------------------------------------------------------
    @torch.inference_mode()
    def forward(self, input_ids: Tensor, state: ModelState, ops: Ops | None = None) -> Tensor:
        """Logits (B, T, V) for `input_ids` (B, T) following what `state` has seen; advances `state` by T.
        `ops`: how the layers run (model/ops.py; a fresh `Ops()`, the model's own path, by default)."""
        self._check(input_ids, state)
        T = input_ids.shape[1]
        x = self.tp.embed(self.embed_tokens.weight, input_ids.to(self.device))  # (B, T, D)
        ops = ops or Ops()  # shared by the layers of this call (positions, RoPE)
        ops.begin()
        for block, layer in zip(self.layers, state.layers, strict=True):
            x = block(x, layer, state, ops)  # (B, T, D)
        x = self.norm(x)  # (B, T, D)
        state.n_tokens += T
        if state.window is not None:  # nothing to evict without a window
            for i in range(len(state.layers)):
                state.evict(i)
        head = self.embed_tokens if self.lm_head is None else self.lm_head
        matmul = partial(head_matmul, head) if ops.cpu_rows else None  # model/cpu_rows.py
        return self.tp.logits(x, head.weight, self.config.vocab_size, matmul)  # (B, T, V)

    # ---- identity and files --------------------------------------------------------------------------
    @property
    def fingerprint(self) -> str:
        if self._fingerprint is None:
            if self.tp.world > 1:
                raise CheckpointError(
                    "a tensor-parallel shard knows its fingerprint only from its full model"
                )
            digests = {}
            for name, t in self.state_dict().items():
                h = hashlib.sha256(weight_header(name, t.dtype, tuple(t.shape)))
                h.update(t.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
                digests[name] = h.hexdigest()
            self._fingerprint = combine_fingerprint(self.config.to_json(), digests)
        return self._fingerprint

    def load_state_dict(
        self, state_dict: Mapping[str, Any], strict: bool = True, assign: bool = False
    ) -> Any:
        self._fingerprint = None
        return super().load_state_dict(state_dict, strict=strict, assign=assign)

    def _apply(self, fn: Callable[[Tensor], Tensor], recurse: bool = True) -> HybridLM:
        dtypes = [p.dtype for p in self.parameters()]
        out = super()._apply(fn, recurse)
        drop_packs(self)  # the CPU decode's packed copies (model/cpu_rows.py) of the weights before
        if [p.dtype for p in self.parameters()] != dtypes:
            self._fingerprint = None  # .to(dtype) changes the weights' bytes; a move to a device does not
        return out

    def save_pretrained(self, directory: str | Path) -> Path:
        path = Path(directory)
        self.config.save(path)
        tensors = {n: t.detach().cpu().contiguous() for n, t in self.state_dict().items()}
        save_file(tensors, str(path / WEIGHTS_FILE), metadata={"format": "pt"})
        return path

    @classmethod
    def from_pretrained(
        cls,
        directory: str | Path,
        *,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> HybridLM:
        path = Path(directory)
        weights = path / WEIGHTS_FILE
        if not weights.is_file():
            raise CheckpointError(f"no {WEIGHTS_FILE} in {path}; pass a directory written by save_pretrained")
        model = cls(HybridConfig.load(path))
        tensors = load_file(str(weights))
        try:
            missing, unexpected = model.load_state_dict(tensors, strict=False)
        except RuntimeError as e:  # a tensor of the wrong shape
            raise CheckpointError(f"{weights} does not match its config.json: {e}") from e
        if missing or unexpected:
            raise CheckpointError(
                f"{weights} does not match its config.json (missing: {sorted(missing)[:6]}, "
                f"unexpected: {sorted(unexpected)[:6]}); re-save the model with save_pretrained"
            )
        return model.to(device=device, dtype=dtype).eval()
