"""`load_model(path_or_id)`: a checkpoint folder or Hub id -> (HybridLM, tokenizer, chat format).

Design choices:
- The family comes from `model_type` in config.json; its adapter (one module per family) gives our
  `HybridConfig` and a `Source` for every weight. A config.json without `model_type` is one of ours
  (`HybridLM.save_pretrained`, model/checkpoints/native.py), streamed in the same way.
- The model is built on the meta device (no memory, no random init: model/skeleton.py), given real
  storage in the target dtype and device with `to_empty`, then filled one tensor at a time from the
  shards (model/checkpoints/shards.py): host memory peaks at the model plus about one tensor.
- The fingerprint is `HybridLM.fingerprint`'s own definition (config + each weight's sha256), fed with
  each of our weights' final bytes as they are filled in (hashed on worker threads, model/checkpoints/
  digests.py): the weights are read once, never re-hashed, and the value is the one the model would
  compute itself (so it survives `.to()`, and does not depend on how the checkpoint is sharded).
  It is remembered per (files, dtype, loader code) in the user cache dir (model/checkpoints/
  fingerprint_cache.py): a later start of the same files only reads the weights, hashing nothing.
- A Hub id is fetched with `huggingface_hub.snapshot_download` (weights, configs, tokenizer files
  only); offline, a clear error says how to point at a local folder.
"""

from __future__ import annotations

import json
import os
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any, cast

import torch
from hybrid_agent.model.chat import ChatFormat, NativeChatFormat
from hybrid_agent.model.checkpoints import (
    bamba,
    falcon_h1,
    granitemoehybrid,
    kimi_linear,
    lfm2,
    mamba2,
    native,
    nemotron_h,
    olmo_hybrid,
    qwen3_5,
    qwen3_next,
)
from hybrid_agent.model.checkpoints.digests import TensorDigests
from hybrid_agent.model.checkpoints.fingerprint_cache import (
    FingerprintCache,
    cache_key,
    file_stats,
    settled,
)
from hybrid_agent.model.checkpoints.plan import Adapter, Source
from hybrid_agent.model.checkpoints.shards import INDEX_FILE, ShardSet
from hybrid_agent.model.checkpoints.tool_formats import format_class_for
from hybrid_agent.model.config import HybridConfig
from hybrid_agent.model.errors import CheckpointError
from hybrid_agent.model.hybrid import HybridLM, combine_fingerprint, weight_header
from hybrid_agent.model.parallel import TensorParallel, local_config, shard, weight_rules
from hybrid_agent.model.skeleton import skeleton, to_empty
from hybrid_agent.model.tokenizer import ByteTokenizer, Tokenizer, load_tokenizer
from torch import Tensor

# Each family module is an `Adapter` (model/checkpoints/plan.py): FAMILY, hybrid_config, sources.
ADAPTERS: dict[str, Adapter] = {
    m.FAMILY: cast(Adapter, m)
    for m in (
        olmo_hybrid,
        mamba2,
        falcon_h1,
        nemotron_h,
        bamba,
        granitemoehybrid,
        qwen3_5,
        qwen3_next,
        lfm2,
        kimi_linear,
    )
}
# Qwen3.5's text model alone, and its MoE variants.
ADAPTERS |= {k: cast(Adapter, qwen3_5) for k in (qwen3_5.TEXT_FAMILY, *qwen3_5.MOE_FAMILIES)}
ADAPTERS[lfm2.MOE_FAMILY] = cast(Adapter, lfm2)
# state-spaces Mamba-2 checkpoints have no model_type; their config is recognised by its keys.
_STATE_SPACES_KEYS = ("d_model", "n_layer", "ssm_cfg")
HUB_PATTERNS = ["*.json", "*.safetensors", "*.jinja", "tokenizer.model", "*.txt"]
PROGRESS_MIN_BYTES = 256 << 20  # no progress bar for loads that take well under a second


def resolve_checkpoint(path_or_id: str | Path) -> Path:
    """A local folder as is; else a Hub id (`org/name`), downloaded or taken from the local Hub cache."""
    path = Path(path_or_id).expanduser()
    if path.is_dir():
        return path
    text = str(path_or_id)
    if path.exists() or text.count("/") != 1 or text.startswith((".", "/", "~")):
        raise CheckpointError(
            f"{text} is not a model folder; pass a folder holding config.json and *.safetensors, "
            "or a Hugging Face Hub id like 'org/name'"
        )
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(text, allow_patterns=HUB_PATTERNS))
    except Exception as e:  # offline, unknown repo, gated repo, network: all end the same way for the user
        offline = os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes", "on")
        why = "the Hub is offline (HF_HUB_OFFLINE is set)" if offline else f"the download failed ({e})"
        raise CheckpointError(
            f"cannot load {text!r}: it is not a local folder and {why}. Download it first "
            f"(`hybrid-agent pull {text}`, then --model {text} finds it offline), or pass a folder "
            "that holds it: load_model('DIR') or --model DIR"
        ) from e


def read_config(root: Path) -> dict[str, Any]:
    path = root / "config.json"
    if not path.is_file():
        raise CheckpointError(f"no config.json in {root}; pass the folder a checkpoint was saved to")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{path} is not valid JSON ({e}); re-download it") from e
    if not isinstance(data, dict):
        raise CheckpointError(f"{path} does not hold a JSON object; re-download it")
    return data


def family_of(hf: dict[str, Any]) -> str | None:
    """The adapter's name, or None for a native HybridLM checkpoint."""
    kind = hf.get("model_type")
    if kind is None and all(k in hf for k in _STATE_SPACES_KEYS):
        return mamba2.FAMILY
    if kind is None:
        return None
    if kind not in ADAPTERS:
        raise CheckpointError(
            f"model_type {kind!r} is not supported; supported families: {', '.join(sorted(ADAPTERS))} "
            "(and hybrid-agent's own checkpoints)"
        )
    return str(kind)


def _resolve(src: Source, shards: ShardSet) -> tuple[list[str], Source] | None:
    """The checkpoint names `src` will read (first spelling found for each), or None if one is missing."""
    found = [next((n for n in alts if n in shards), None) for alts in src.names]
    if all(n is not None for n in found):
        return [n for n in found if n is not None], src
    return _resolve(src.fallback, shards) if src.fallback is not None else None


def _missing(family: str, target: str, src: Source, shards: ShardSet) -> CheckpointError:
    tried = [alts for alts in src.names if not any(n in shards for n in alts)]
    if src.fallback is not None:
        tried += [alts for alts in src.fallback.names if not any(n in shards for n in alts)]
    spelt = "; ".join(" or ".join(alts) for alts in tried)
    return CheckpointError(
        f"{family} checkpoint in {shards.root} lacks the tensor {spelt} (needed for our {target}); "
        "the download may be incomplete, or this is a variant the adapter does not know"
    )


class _Progress:
    def __init__(self, total: int, enabled: bool) -> None:
        self.bar: Any = None
        if enabled and total >= PROGRESS_MIN_BYTES:
            from tqdm.auto import tqdm

            self.bar = tqdm(total=total, unit="B", unit_scale=True, desc="loading weights", leave=False)

    def update(self, n: int) -> None:
        if self.bar is not None:
            self.bar.update(n)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def load_weights(
    root: Path,
    adapter: Adapter,
    hf: dict[str, Any],
    *,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
    progress: bool = True,
    cache_fingerprint: bool = True,
    tp: TensorParallel | None = None,
    stop: threading.Event | None = None,
) -> HybridLM:
    """Build our model for a checkpoint read by `adapter` and stream its weights in (module docstring).
    `cache_fingerprint=False` hashes the weights and neither reads nor writes the fingerprint cache.
    `tp` (world > 1): the rank's shard; each full weight is read into a host buffer, hashed (the
    fingerprint is the full model's), and only the rank's part kept (model/parallel.py's rules).
    `stop`: once set, the load ends before the next tensor with a CheckpointError (a start that failed
    elsewhere no longer needs the model: agent/factory.py `ModelPreload`)."""
    family: str = adapter.FAMILY
    cfg: HybridConfig = adapter.hybrid_config(hf)
    plan: dict[str, Source] = adapter.sources(cfg, hf)
    shards = ShardSet(root)
    tp = tp or TensorParallel()
    model = to_empty(skeleton(cfg, tp), device, dtype)
    full_shapes = {n: tuple(t.shape) for n, t in skeleton(cfg).state_dict().items()} if tp.world > 1 else {}
    rules = weight_rules(cfg)
    params = model.state_dict(keep_vars=True)
    if set(params) != set(plan):  # a bug in an adapter, not a bad checkpoint
        unplanned, extra = sorted(set(params) - set(plan)), sorted(set(plan) - set(params))
        raise AssertionError(f"{family} adapter: no source for {unplanned}; sources for unknown {extra}")
    _restore_buffers(model)

    resolved: dict[str, tuple[list[str], Source]] = {}
    for target, src in plan.items():
        hit = _resolve(src, shards)
        if hit is None and not src.optional:
            raise _missing(family, target, src, shards)
        resolved[target] = hit if hit is not None else ([], Source((), lambda ts: torch.zeros(())))
    # Read in file order: one sequential pass over each shard.
    order = sorted(resolved, key=lambda t: _position(resolved[t][0], shards))
    cache = FingerprintCache() if cache_fingerprint else None
    stats = _fingerprint_inputs(root, adapter, shards)
    key = cache_key(stats, dtype=str(dtype))
    known = cache.get(key) if cache is not None else None
    hashes = TensorDigests() if known is None else None
    used = {n for names, _ in resolved.values() for n in names}
    bar = _Progress(sum(shards.entries[n].nbytes for n in used), progress)
    try:
        for target in order:
            if stop is not None and stop.is_set():
                raise CheckpointError(f"loading {root} was cancelled")
            names, src = resolved[target]
            data = params[target].data
            if tp.world > 1:  # the full weight on the host, then the rank's part
                dtype_of = data.dtype  # (an MoE router kept in fp32 stays fp32)
                data = torch.empty(full_shapes[target], dtype=dtype_of)
                final = _fill(data, names, src, shards, family, target, True)
                params[target].data.copy_(shard(final, rules.get(target), tp.rank, tp.world))
            else:
                final = _fill(data, names, src, shards, family, target, hashes is not None)
            if hashes is not None:
                hashes(target, weight_header(target, data.dtype, tuple(data.shape)), _bytes(final))
            bar.update(sum(shards.entries[n].nbytes for n in names if n in used))
            used.difference_update(names)  # a tensor read twice (a tied head) counts once
        shards.sync()  # the uploads still in flight
        if hashes is not None:
            known = combine_fingerprint(cfg.to_json(), hashes.digests())
            # Stored only if no file changed while it was read (the key would not match the bytes).
            if cache is not None and settled(stats) and _fingerprint_inputs(root, adapter, shards) == stats:
                cache.put(key, known)
    finally:
        if hashes is not None:
            hashes.close()
        bar.close()
        shards.close()
    model.eval()
    model._fingerprint = known  # `model.fingerprint`, not re-read
    return model


def _fingerprint_inputs(root: Path, adapter: Adapter, shards: ShardSet) -> list[list[str | int]]:
    """The files the fingerprint of a load depends on besides the dtype (model/checkpoints/
    fingerprint_cache.py): the checkpoint's files and the code that turns them into our weights."""
    inputs = [root / "config.json", *([root / INDEX_FILE] if (root / INDEX_FILE).is_file() else [])]
    inputs += sorted({e.file for e in shards.entries.values()})
    code = [Path(__file__), Path(getattr(adapter, "__file__", __file__))]
    for cls in (HybridLM, HybridConfig):  # the fingerprint's definition, the config's JSON
        code.append(Path(sys.modules[cls.__module__].__file__ or __file__))
    return file_stats(inputs + code)


def _position(names: list[str], shards: ShardSet) -> tuple[str, int]:
    if not names:
        return ("", -1)
    e = shards.entries[names[0]]
    return (str(e.file), e.start)


def _bytes(t: Tensor) -> memoryview:
    return memoryview(t.view(-1).view(torch.uint8).numpy()) if t.numel() else memoryview(b"")


def _fill(
    data: Tensor, names: list[str], src: Source, shards: ShardSet, family: str, target: str, hashed: bool
) -> Tensor:
    """Fill the parameter `data`; returns a contiguous CPU tensor with its final bytes (`data` itself
    on the CPU) when `hashed`. Casts happen on the CPU, so the bytes hashed are exactly the bytes the
    device gets. Unhashed, a CUDA weight stored in its own dtype is uploaded through pinned buffers,
    its reads overlapping the copies (`ShardSet.upload_into`), and `data` itself is returned."""
    if src.build is None and names:
        e = shards.entries[names[0]]
        if tuple(e.shape) != tuple(data.shape):
            raise CheckpointError(
                f"{family}: tensor {names[0]} has shape {e.shape} but our {target} needs "
                f"{tuple(data.shape)}; config.json does not match the weights"
            )
        if data.device.type == "cpu" and data.dtype == e.dtype and data.is_contiguous():
            return shards.read_into(names[0], data)  # straight into the parameter: no extra copy
        if not hashed and data.device.type == "cuda" and data.dtype == e.dtype and data.is_contiguous():
            return shards.upload_into(names[0], data)
        value = shards.read(names[0])
    else:
        build: Callable[[list[Tensor]], Tensor] = src.build or (lambda ts: torch.zeros(()))
        value = build([shards.read(n).float() for n in names])  # multipliers folded in fp32, cast once
        if value.dim() == 0:
            value = value.expand(data.shape)
        if tuple(value.shape) != tuple(data.shape):
            raise CheckpointError(
                f"{family}: tensors {names} give shape {tuple(value.shape)} but our {target} needs "
                f"{tuple(data.shape)}; config.json does not match the weights"
            )
    if data.device.type == "cpu":
        data.copy_(value)
        return data
    final = value.to(data.dtype).contiguous()
    data.copy_(final)
    return final


def _restore_buffers(model: HybridLM) -> None:
    """`to_empty` leaves non-persistent buffers uninitialised (no checkpoint holds them): every module
    that has one recomputes it from its config with `reset_buffers` (the RoPE frequencies of
    `Attention` and `MLA`)."""
    for name, module in model.named_modules():
        if not any(module._buffers.get(b) is not None for b in module._non_persistent_buffers_set):
            continue
        reset = getattr(module, "reset_buffers", None)
        if reset is None:  # a new module kind without one: a bug in the model, not a bad checkpoint
            raise AssertionError(
                f"{type(module).__name__} at {name!r} has unsaved buffers but no reset_buffers"
            )
        reset()


def load_chat_format(root: Path, tokenizer: Tokenizer | ByteTokenizer) -> ChatFormat:
    """The checkpoint's jinja template, stopping at the end-of-turn tokens of generation_config.json,
    reading tool calls in the syntax the template teaches (model/checkpoints/tool_formats.py)."""
    config = {}
    if (root / "tokenizer_config.json").is_file():
        config = json.loads((root / "tokenizer_config.json").read_text(encoding="utf-8"))
    template = config.get("chat_template")
    if (root / "chat_template.jinja").is_file():
        template = (root / "chat_template.jinja").read_text(encoding="utf-8")
    if not template:
        return NativeChatFormat()
    cls = format_class_for(json.dumps(template))  # (a list of named templates is searched too)
    return cls.from_pretrained(root, stop_strings=end_of_turn_strings(root, tokenizer))


def end_of_turn_strings(root: Path, tokenizer: Tokenizer | ByteTokenizer) -> list[str]:
    """The text of every `eos_token_id` in generation_config.json (an int or a list)."""
    path = root / "generation_config.json"
    if not path.is_file():
        return []
    ids = json.loads(path.read_text(encoding="utf-8")).get("eos_token_id")
    ids = [ids] if isinstance(ids, int) else list(ids or [])
    return [s for s in (tokenizer.decode([i]) for i in ids if 0 <= i < tokenizer.vocab_size) if s]


def check_split(path_or_id: str | Path, tp: int) -> None:
    """Raise ConfigError, before any weight is read, if the checkpoint's sizes do not split over `tp`
    ranks (model/parallel.py's `local_config`)."""
    root = resolve_checkpoint(path_or_id)
    hf = read_config(root)
    family = family_of(hf)
    adapter = cast(Adapter, native) if family is None else ADAPTERS[family]
    local_config(adapter.hybrid_config(hf), tp)


def load_model(
    path_or_id: str | Path,
    *,
    device: torch.device | str | None = None,
    dtype: torch.dtype | str | None = None,
    progress: bool = True,
    cache_fingerprint: bool = True,
    tp: int = 1,
    stop: threading.Event | None = None,
) -> tuple[HybridLM, Tokenizer | ByteTokenizer, ChatFormat]:
    """Load a checkpoint (see the module docstring). Default device: cpu; default dtype: float32 on CPU,
    bfloat16 on CUDA (`dtype` may be spelt "bfloat16", "float16", "float32"). `cache_fingerprint`:
    see `load_weights`. `tp` > 1: this process's tensor-parallel shard, in an initialised process group
    of `tp` ranks (torchrun, or model/parallel.py's `launch`); the tokenizer and chat format are whole.
    Under NCCL the default device is the rank's current card (`torch.cuda.set_device` first).
    `stop`: see `load_weights`."""
    ctx = TensorParallel.current()
    if tp < 1 or ctx.world != tp:
        raise CheckpointError(
            f"tp={tp} needs a process group of {tp} ranks (this process is in one of {ctx.world}); "
            f"run under torchrun --nproc-per-node {tp}, or pass tp={ctx.world}"
        )
    if isinstance(dtype, str):
        if dtype not in ("bfloat16", "float16", "float32"):
            raise CheckpointError(f"dtype {dtype!r} is not supported; use bfloat16, float16 or float32")
        dtype = getattr(torch, dtype)
    root = resolve_checkpoint(path_or_id)
    hf = read_config(root)
    dev = torch.device(device or ("cuda" if ctx.world > 1 and ctx.backend() == "nccl" else "cpu"))
    if dev.type == "cuda" and dev.index is None and ctx.world > 1:
        dev = torch.device("cuda", torch.cuda.current_device())  # the rank's card (torchrun's LOCAL_RANK)
    dt = dtype or (torch.bfloat16 if dev.type == "cuda" else torch.float32)
    family = family_of(hf)
    if family is not None and not (root / "tokenizer.json").is_file():
        # Only our own models speak the byte tokenizer; any other model would read garbage.
        raise CheckpointError(
            f"{family} checkpoint in {root} has no tokenizer.json; copy the tokenizer files of the model "
            "into that folder (state-spaces Mamba-2 models use EleutherAI/gpt-neox-20b's tokenizer)"
        )
    tokenizer = load_tokenizer(root)
    adapter = cast(Adapter, native) if family is None else ADAPTERS[family]
    model = load_weights(
        root, adapter, hf, device=dev, dtype=dt, progress=progress and ctx.rank == 0,
        cache_fingerprint=cache_fingerprint, tp=ctx, stop=stop,
    )  # fmt: skip
    if tokenizer.vocab_size > model.config.vocab_size:
        raise CheckpointError(
            f"the tokenizer in {root} has {tokenizer.vocab_size} tokens but the model only "
            f"{model.config.vocab_size}; the tokenizer belongs to another model"
        )
    if tokenizer.vocab_size < model.config.vocab_size:  # a padded vocabulary: common, and harmless
        n, v = tokenizer.vocab_size, model.config.vocab_size
        print(f"note: {root.name} has {v} token ids but its tokenizer {n}; ids {n}.. are never sampled",
              file=sys.stderr, flush=True)  # fmt: skip
    return model, tokenizer, load_chat_format(root, tokenizer)
