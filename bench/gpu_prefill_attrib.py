"""Where one profiled prefill's time goes, for bench/gpu_prefill_profile.py: profiler labels put around
each decoder layer's parts from the outside (forward hooks on the model's modules and wrappers around
the engine's embed / head functions, removed afterwards; the model package is not changed), and the
device time of the run grouped by kernel name and by the label around the op that launched it.

Labels (record_function names, prefix `pp:`): `<kind>.residual` the whole block (what is left there
is the residual adds), `<kind>.mixer`, `<kind>.mlp`, `<kind>.norm` (the block's two norms), `embed`,
`head`, and `prefill` around the whole call (`other`: the engine's bookkeeping between the layers).

On a GPU a kernel's time goes to the label around the CPU op that launched it (torch.profiler links
them by correlation id; Triton kernels launched from Python belong to the label itself). On the CPU
(`--tiny`) each op's self time stands in for kernel time. Each op is also given a class by the ops
between it and its label: `gemm` (mm / addmm / linear ...), `attention` (scaled_dot_product_*),
`aten` (other torch ops: the small ops around the GEMMs), `kernel` (launched by no aten op: Triton
kernels started from Python, or a custom op).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any

from torch.autograd import DeviceType
from torch.profiler import record_function

PREFIX = "pp:"
GEMM = {"aten::mm", "aten::addmm", "aten::bmm", "aten::baddbmm", "aten::matmul", "aten::linear"}


@contextlib.contextmanager
def labels(model: Any) -> Iterator[None]:
    """Profiler labels around the model's blocks, mixers, MLPs and norms and around the engine's embed
    and head (model/decode/engine.py calls them by these module-level names)."""
    import hybrid_agent.model.decode.engine as eng

    open_: list[Any] = []
    handles = []

    def enter(name: str) -> Callable[..., None]:
        def pre(_m: Any, _args: Any) -> None:
            open_.append(record_function(PREFIX + name).__enter__())

        return pre

    def leave(_m: Any, _args: Any, _out: Any) -> None:
        open_.pop().__exit__(None, None, None)

    for block in model.layers:
        parts = [(block, "residual"), (block.mixer, "mixer"), (block.mlp, "mlp")]
        parts += [(block.mixer_norm, "norm"), (block.mlp_norm, "norm")]
        for mod, part in parts:
            if mod is not None:
                handles.append(mod.register_forward_pre_hook(enter(f"{block.kind}.{part}")))
                handles.append(mod.register_forward_hook(leave))
    saved = {name: getattr(eng, name) for name in ("embed", "head")}

    def wrap(name: str, fn: Callable[..., Any]) -> Callable[..., Any]:
        def run(*args: Any) -> Any:
            with record_function(PREFIX + name):
                return fn(*args)

        return run

    try:
        for name, fn in saved.items():
            setattr(eng, name, wrap(name, fn))
        yield
    finally:
        for name, fn in saved.items():
            setattr(eng, name, fn)
        for h in handles:
            h.remove()
        while open_:  # a forward that raised never reached its post hook
            open_.pop().__exit__(None, None, None)


def _is_label(e: Any) -> bool:
    return e.name.startswith(PREFIX)


def _is_device(e: Any) -> bool:
    """A device activity (kernel, copy, set), not the device-side copy of a label."""
    return (
        e.device_type != DeviceType.CPU and not _is_label(e) and not getattr(e, "is_user_annotation", False)
    )


def _owner(e: Any, cache: dict[int, tuple[str | None, str]]) -> tuple[str | None, str]:
    """(label, class) of a CPU event: its innermost label (None outside all) and its op class."""
    key = id(e)
    if key in cache:
        return cache[key]
    chain, node = [], e
    while node is not None and not _is_label(node):
        chain.append(node.name)
        node = node.cpu_parent
    label = None if node is None else node.name[len(PREFIX) :]
    if any("scaled_dot_product" in n or "flash_attention" in n for n in chain):
        cls = "attention"
    elif any(n in GEMM for n in chain):
        cls = "gemm"
    elif chain and chain[0].startswith("aten::"):
        cls = "aten"
    else:
        cls = "kernel"
    cache[key] = (label if label != "prefill" else "other", cls)
    return cache[key]


def _leaves(events: Any, device: bool) -> tuple[list[tuple[str, float, Any]], list[tuple[str, float]]]:
    """The timed activities: (name, us, the CPU event that owns it) through the CPU events, and
    (name, us) of every activity straight from the event list (the independent total)."""
    cpu = [e for e in events if e.device_type == DeviceType.CPU and not getattr(e, "is_async", False)]
    if device:
        # a label's own device-side span (gpu_user_annotation) may be linked to it like a kernel: skipped
        kernels = ((k, e) for e in cpu for k in getattr(e, "kernels", []))
        owned = [(k.name, float(k.duration), e) for k, e in kernels if not k.name.startswith(PREFIX)]
        flat = [(e.name, float(e.time_range.end - e.time_range.start)) for e in events if _is_device(e)]
        return owned, flat
    ops = [e for e in cpu if not _is_label(e)]
    return [(e.name, float(e.self_cpu_time_total), e) for e in ops], [
        (e.name, float(e.self_cpu_time_total)) for e in ops
    ]


def attribute(events: Any, device: bool, top: int = 25) -> dict[str, Any]:
    """Device time (CPU self time without a device) of a profiled run by kernel name and by label."""
    owned, flat = _leaves(events, device)
    cache: dict[int, tuple[str | None, str]] = {}
    by_kind: dict[str, dict[str, Any]] = {}
    for _name, us, ev in owned:
        label, cls = _owner(ev, cache)
        row = by_kind.setdefault(label or "unattributed", {"us": 0.0, "count": 0, "classes": {}})
        row["us"] += us
        row["count"] += 1
        row["classes"][cls] = row["classes"].get(cls, 0.0) + us
    # linear calls by label: checks the labels against the model's structure (tests/bench/). A linear is
    # an aten::linear, or an mm / addmm issued directly (model/ops.py `project_cols` writes stacked
    # projections' column blocks with them), not one inside another matmul op.
    linears: dict[str, int] = {}
    for e in events:
        parent = e.cpu_parent.name if e.cpu_parent is not None else ""
        direct = e.name in ("aten::mm", "aten::addmm") and parent not in GEMM
        if e.device_type == DeviceType.CPU and (e.name == "aten::linear" or direct):
            label = _owner(e, cache)[0] or "unattributed"
            linears[label] = linears.get(label, 0) + 1
    by_name: dict[str, list[float]] = {}
    for name, us in flat:
        by_name.setdefault(name[:120], []).append(us)
    total_us = sum(us for _, us in flat)
    # activities no CPU event owns (no correlation to a launching op): named, so a gap can be traced
    owned_us: dict[str, float] = {}
    for name, us, _ev in owned:
        owned_us[name[:120]] = owned_us.get(name[:120], 0.0) + us
    gaps = sorted(((sum(v) - owned_us.get(k, 0.0), k) for k, v in by_name.items()), reverse=True)
    names = sorted(((sum(v), len(v), k) for k, v in by_name.items()), reverse=True)
    kinds = {}
    for kind, row in sorted(by_kind.items(), key=lambda kv: -kv[1]["us"]):
        kinds[kind] = {
            "ms": row["us"] / 1e3,
            "share": row["us"] / total_us if total_us else 0.0,
            "count": row["count"],
            "linear_calls": linears.get(kind, 0),
            "classes_ms": {c: v / 1e3 for c, v in sorted(row["classes"].items(), key=lambda kv: -kv[1])},
        }
    return {
        "total_ms": total_us / 1e3,
        "attributed_ms": sum(r["us"] for r in by_kind.values()) / 1e3,
        "activities": len(flat),
        "by_kind": kinds,
        "unowned": [{"name": k, "ms": us / 1e3} for us, k in gaps[:10] if us > 1.0],
        "top_kernels": [
            {"name": k, "count": n, "ms": t / 1e3, "share": t / total_us if total_us else 0.0}
            for t, n, k in names[:top]
        ],
    }


def busy_ms(events: Any) -> float | None:
    """The union of the device activities' intervals (ms): device time with overlaps counted once."""
    spans = sorted((e.time_range.start, e.time_range.end) for e in events if _is_device(e))
    if not spans:
        return None
    busy, (lo, hi) = 0.0, spans[0]
    for s, t in spans[1:]:
        if s > hi:
            busy, lo, hi = busy + hi - lo, s, t
        else:
            hi = max(hi, t)
    return (busy + hi - lo) / 1e3
