"""One-row matmuls on the CPU (decode of one sequence, one token a call): the weights of the projections
that read the same input packed once into one matrix, in the layout the CPU's BLAS reads fastest.

Why: a one-token step of the shipped model (model/default) on a 2-core CPU spent ~2/3 of its time in
~40 F.linear calls whose fp32 weights (~58 MB) do not stay in the cache. x (1, K) times a weight kept
(N, K) ran at ~7 GB/s there, x times the same weight stored transposed, (K, N) contiguous, at ~13 GB/s
where N >= K (and slower where N < K); bench/cpu_decode.py measures the step (docs/results.md).

What: `linears_row` multiplies one row by the linears side by side (their outputs in order, as
`torch.cat([F.linear(x, lin.weight, lin.bias) for lin in linears], -1)`) by a packed copy of their
weights, built on first use and rebuilt when a weight or bias is replaced or changed in place (identity
and version counter: a copy never outlives its weights' values); `head_matmul` does the same for the LM
head. A pack of N >= K outputs is stored (K, N) and multiplied by `torch.mm`/`torch.addmm`; a narrower
group stays (N, K), stacked, through F.linear; a lone narrower linear is left to F.linear as it is. The
BLAS sums each output's K products in an order that depends on the layout and on N: the packed numbers
are F.linear's within fp32 rounding, not bit for bit (tests/model/test_cpu_rows.py holds the greedy
tokens equal and the logits within a tight bound of `Ops(cpu_rows=False)`'s, which multiplies by each
weight as it is).

Cost: a second fp32 copy of every packed weight (~40 MB for model/default), on the CPU only, made on the
first one-token call. The copies alive in the process together stay under `PACK_BUDGET_BYTES`: a larger
model (whose weights would double) packs what fits and multiplies the rest by F.linear as before. The
prefill (several rows), other dtypes, inference-mode weights (no version counter to tell a change) and
autograd keep F.linear.
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

# Bytes of packed copies alive in the process at most (model/default needs ~40 MB): a pack that would go
# past it is not made, and its linears run as F.linear.
PACK_BUDGET_BYTES = 256 << 20
_live = [0]  # bytes of the packs alive now (each gives its bytes back when it is freed)
_live_lock = threading.Lock()


def _give_back(nbytes: int) -> None:
    with _live_lock:
        _live[0] -= nbytes


# Where a module keeps its packs, {key: `_Pack`}: on the first module of the group (the MLP's gate_proj,
# attention's q_proj, ...; the head's owner), keyed by the group's modules (or the head's weight).
PACKS_ATTR = "_cpu_row_packs"


class _Pack:
    """A packed weight (and bias) with the tensors it was made from and their version counters."""

    __slots__ = ("__weakref__", "bias", "sources", "transposed", "versions", "weight")

    def __init__(self, weights: Sequence[Tensor], biases: Sequence[Tensor | None], nbytes: int) -> None:
        weakref.finalize(self, _give_back, nbytes)  # taken from the budget by `_packed`
        self.sources = [*weights, *(b for b in biases if b is not None)]
        self.versions = [t._version for t in self.sources]
        with torch.no_grad():
            w = torch.cat([t.detach() for t in weights]) if len(weights) > 1 else weights[0].detach()
            self.transposed = w.shape[0] >= w.shape[1]
            self.weight = w.t().contiguous() if self.transposed else w.contiguous()  # (K, N) or (N, K)
            self.bias = None
            if biases[0] is not None:
                self.bias = torch.cat([t.detach() for t in biases if t is not None]).contiguous()

    def fresh(self, sources: list[Tensor]) -> bool:
        """Whether `sources` are the tensors it was made from, none changed in place since."""
        if len(sources) != len(self.sources):
            return False
        for t, s, v in zip(sources, self.sources, self.versions, strict=True):
            if t is not s or t._version != v:
                return False
        return True

    def __call__(self, x: Tensor) -> Tensor:
        """x (..., K), one row, times the packed weight (+ bias): (..., N)."""
        if not self.transposed:
            return F.linear(x, self.weight, self.bias)
        row = x.reshape(1, x.shape[-1])
        out = torch.mm(row, self.weight) if self.bias is None else torch.addmm(self.bias, row, self.weight)
        return out.view(*x.shape[:-1], self.weight.shape[1])


def one_cpu_row(x: Tensor, weight: Tensor) -> bool:
    """Whether `x @ weight^T` takes the packed path: one fp32 row on the CPU, an fp32 weight with a
    version counter, no autograd graph asked for."""
    return (
        x.is_cpu
        and x.numel() == x.shape[-1]
        and x.dtype == torch.float32
        and weight.dtype == torch.float32
        and not weight.is_inference()
        and (
            torch.is_inference_mode_enabled()
            or not (torch.is_grad_enabled() and (x.requires_grad or weight.requires_grad))
        )
    )


def _packed(
    owner: nn.Module, key: object, weights: Sequence[Tensor], biases: Sequence[Tensor | None]
) -> _Pack | None:
    """The pack of `weights` (each (n_i, K)) and `biases` kept on `owner` under `key`, rebuilt when any of
    them is another tensor or has changed in place since it was made; None when a new one would take
    the packs alive past `PACK_BUDGET_BYTES`."""
    packs = owner.__dict__.get(PACKS_ATTR)
    if packs is None:
        packs = owner.__dict__[PACKS_ATTR] = {}
    got = packs.get(key)
    if got is None or not got.fresh([*weights, *(b for b in biases if b is not None)]):
        packs.pop(key, None)  # a stale pack gives its bytes back before a new one is counted
        got = None
        nbytes = sum(t.numel() * t.element_size() for t in [*weights, *(b for b in biases if b is not None)])
        with _live_lock:
            if _live[0] + nbytes > PACK_BUDGET_BYTES:
                return None
            _live[0] += nbytes
        got = packs[key] = _Pack(weights, biases, nbytes)
    return got


def linears_row(x: Tensor, linears: Sequence[nn.Linear]) -> Tensor | None:
    """x (..., K), one row (`one_cpu_row`), times the linears side by side, as
    `torch.cat([F.linear(x, lin.weight, lin.bias) for lin in linears], -1)` computes them, by their pack
    (kept on the first); None where they cannot share one (only some with a bias, another dtype or an
    inference-mode weight): the caller's own path runs."""
    params = [lin._parameters for lin in linears]
    weights = [p.get("weight") for p in params]
    biases = [p.get("bias") for p in params]
    with_bias = biases[0] is not None
    for w, b in zip(weights, biases, strict=True):
        if w is None or (b is not None) != with_bias or w.dtype != torch.float32 or w.is_inference():
            return None
    if len(weights) == 1 and weights[0].shape[0] < weights[0].shape[1]:
        return None  # a lone (N, K) weight with N < K: F.linear on it as it is (a copy would gain nothing)
    key = linears if type(linears) is tuple else tuple(linears)
    pack = _packed(linears[0], key, weights, biases)
    return None if pack is None else pack(x)


def head_matmul(owner: nn.Module, x: Tensor, weight: Tensor) -> Tensor:
    """The LM head's x weight^T (`weight` (V, D) is `owner`'s): packed for one CPU row, else F.linear."""
    if one_cpu_row(x, weight) and weight.shape[0] >= weight.shape[1]:
        pack = _packed(owner, "head", (weight,), (None,))
        if pack is not None:
            return pack(x)
    return F.linear(x, weight)


def drop_packs(module: nn.Module) -> None:
    """Forget the packs of `module` and its children (their weights moved or changed dtype)."""
    for m in module.modules():
        m.__dict__.pop(PACKS_ATTR, None)
