"""The agent's engine on tensor-parallel ranks: rank 0 runs the agent, the other ranks serve its model calls.

Rank 0's `LeaderEngine` is the `ModelEngine` (agent/engine.py) of its shard, and it owns the tokenizer,
sampling, tools and the store. Before each call that touches the model or its state (a fresh state,
prefill, snapshot, mark_saved, restore) it sends that command to the other ranks, whose `serve` loop runs
the same call on their own `ModelEngine`, so the shards' forwards meet in the same all-reduces. Every
rank holds the full logits; only rank 0 samples. Snapshots leave rank 0 in the full (tp=1) layout,
gathered from the ranks (model/sharding.py's rules), and a restore sends the full tensors to every rank,
which keeps its part: the store never sees the layout (docs/design.md, "Tensor parallelism").

Commands travel as JSON, tensors as their raw values; both by an all-reduce in which only rank 0 adds
anything (a broadcast that needs no source rank of the group, so it runs over any gloo or NCCL group).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import torch
from hybrid_agent.agent.engine import ModelEngine
from hybrid_agent.model.parallel import TensorParallel, shard, state_rules
from hybrid_agent.model.sharding import gather_tensors
from hybrid_agent.model.state import ModelState, Page
from torch import Tensor

STOP = "stop"


def _wire(tp: TensorParallel) -> torch.device:
    """Where the group's messages live: NCCL moves only CUDA tensors, gloo CPU ones."""
    return (
        torch.device("cuda", torch.cuda.current_device()) if tp.backend() == "nccl" else torch.device("cpu")
    )


def _send_bytes(tp: TensorParallel, data: bytes | None) -> bytes:
    """Rank 0's `data` on every rank (the others pass None)."""
    wire = _wire(tp)
    n = tp.all_reduce(torch.tensor([len(data) if data is not None else 0], dtype=torch.int64, device=wire))
    buf = torch.zeros(int(n), dtype=torch.int32)  # (bytes as int32: a sum of one value and zeros is exact)
    if data is not None:
        buf += torch.frombuffer(bytearray(data), dtype=torch.uint8).to(torch.int32)
    return bytes(tp.all_reduce(buf.to(wire)).to(torch.uint8).cpu().numpy().tobytes())


def _send_command(tp: TensorParallel, command: dict[str, Any] | None) -> dict[str, Any]:
    raw = None if command is None else json.dumps(command).encode()
    return dict(json.loads(_send_bytes(tp, raw)))


def _send_tensors(
    tp: TensorParallel, tensors: dict[str, Tensor] | None, specs: list[list[Any]]
) -> dict[str, Tensor]:
    """Rank 0's tensors (names, dtypes, shapes in `specs`, sent before) on every rank, exactly."""
    out = {}
    for name, dtype, shape in specs:
        dt = getattr(torch, dtype)
        t = torch.zeros(shape, dtype=dt) if tensors is None else tensors[name].detach().cpu().contiguous()
        wide = t.reshape(-1).view(torch.uint8).to(torch.int32)  # (bytes; summed with zeros: exact)
        out[name] = tp.all_reduce(wide.to(_wire(tp))).to(torch.uint8).cpu().view(dt).reshape(shape)
    return out


def _specs(tensors: dict[str, Tensor]) -> list[list[Any]]:
    return [[n, str(t.dtype).removeprefix("torch."), list(t.shape)] for n, t in tensors.items()]


class _Ranked:
    """What leader and follower do alike on their own shard."""

    engine: ModelEngine
    tp: TensorParallel

    def run(self, command: dict[str, Any], tensors: dict[str, Tensor] | None = None) -> Any:
        e, op = self.engine, command["op"]
        if op == "reset":
            e._window_arg, e._sinks_arg = command["window"], command["sinks"]
            ModelEngine._fresh_state(e)
        elif op == "prefill":
            ModelEngine.prefill(e, command["ids"])
        elif op == "mark_saved":
            ModelEngine.mark_saved(e)
        elif op == "snapshot":
            recurrent, pages = ModelEngine.snapshot(e, command["since"])
            rules = state_rules(e.model.config)
            full = [
                Page(p.start, p.end, gather_tensors(self.tp, p.tensors, rules, _wire(self.tp))) for p in pages
            ]
            return gather_tensors(self.tp, recurrent, rules, _wire(self.tp)), full
        elif op == "restore":
            assert tensors is not None
            rules = state_rules(e.model.config)
            mine = {  # names are "r:<state name>" (recurrent) and "p<start>:<state name>" (a page's)
                n: shard(t, rules.get(n.split(":", 1)[1]), self.tp.rank, self.tp.world)
                for n, t in tensors.items()
            }
            recurrent = {n[2:]: t for n, t in mine.items() if n.startswith("r:")}
            pages = []
            for start, end in command["pages"]:
                prefix = f"p{start}:"
                pages.append(
                    (start, end, {n[len(prefix) :]: t for n, t in mine.items() if n.startswith(prefix)})
                )
            if e._on_decoder:  # straight into the DecodeEngine's buffers, as one process does
                ModelEngine.restore(e, recurrent, [Page(s, t, d) for s, t, d in pages])
                return None
            dev = e._device
            state = ModelState.from_parts(
                {k: v.to(dev) for k, v in recurrent.items()},
                [(s, t, {k: v.to(dev) for k, v in d.items()}) for s, t, d in pages],
                e.model.local_config,
                window=e._window_arg,
                sinks=e._sinks_arg,
            )
            e._state = state
            e._state.keep_from = e.n_tokens
            e._logits = None
        return None


class LeaderEngine(ModelEngine, _Ranked):
    """Rank 0's engine (see the module docstring); the other ranks run `serve`."""

    def __init__(self, model: Any, *args: Any, **kwargs: Any) -> None:
        self.tp = model.tp
        self.engine = self
        super().__init__(model, *args, **kwargs)

    def _command(self, command: dict[str, Any], tensors: dict[str, Tensor] | None = None) -> Any:
        if tensors is not None:
            command = {**command, "specs": _specs(tensors)}
        _send_command(self.tp, command)
        if tensors is not None:
            _send_tensors(self.tp, tensors, command["specs"])
        return self.run(command, tensors)

    def _fresh_state(self) -> None:
        self._command({"op": "reset", "window": self._window_arg, "sinks": self._sinks_arg})

    def prefill(self, ids: Sequence[int]) -> None:
        if ids:
            self._command({"op": "prefill", "ids": [int(i) for i in ids]})

    def mark_saved(self) -> None:
        self._command({"op": "mark_saved"})

    def snapshot(self, since: int) -> tuple[dict[str, Tensor], list[Page]]:
        out: tuple[dict[str, Tensor], list[Page]] = self._command({"op": "snapshot", "since": int(since)})
        return out

    # A snapshot gathers every rank's shard to the host (`snapshot`): the leader's own state is one
    # shard, so there are no device snapshots, and serve keeps no device tier (agent/serve_app.py).
    snapshot_on_device = None

    def restore(self, recurrent: dict[str, Tensor], pages: Sequence[Page]) -> None:
        tensors = {f"r:{n}": t for n, t in recurrent.items()}
        for p in pages:
            tensors.update({f"p{p.start}:{n}": t for n, t in p.tensors.items()})
        self._command({"op": "restore", "pages": [[p.start, p.end] for p in pages]}, tensors)

    def layout_metadata(self) -> dict[str, str]:
        from hybrid_agent.model.state_layout import layout_metadata

        return layout_metadata(self.model.config, self.tp.world)

    def close_ranks(self) -> None:
        """Let the other ranks' `serve` return."""
        _send_command(self.tp, {"op": STOP})


class _Follower(_Ranked):
    def __init__(self, engine: ModelEngine, tp: TensorParallel) -> None:
        self.engine, self.tp = engine, tp


def serve(engine: ModelEngine, tp: TensorParallel) -> None:
    """A rank > 0: run rank 0's commands on this rank's `engine` until rank 0's `close_ranks`. A call
    that raises here raised on rank 0 too (the same checks run on the same input), so it goes on."""
    follower = _Follower(engine, tp)
    while True:
        command = _send_command(tp, None)
        if command["op"] == STOP:
            return
        tensors = _send_tensors(tp, None, command["specs"]) if "specs" in command else None
        try:
            follower.run(command, tensors)
        except Exception:  # rank 0 raised it too, and reports it
            continue
