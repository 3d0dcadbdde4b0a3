"""Tiny hybrid models for tests (like kernels/testing.py: helpers for checking, not part of any model
path). Shared by tests/model and tests/engine, so every layer kind is exercised at one set of toy sizes."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import torch
import torch.distributed as dist
from hybrid_agent.model.config import HybridConfig
from hybrid_agent.model.hybrid import HybridLM
from hybrid_agent.model.parallel import TensorParallel
from hybrid_agent.model.state import ModelState

TINY: dict[str, Any] = dict(
    vocab_size=267,
    d_model=32,
    attention={"n_heads": 4, "n_kv_heads": 2, "head_dim": 8},
    mamba2={"head_dim": 8, "d_state": 8, "chunk_size": 8},
    gated_deltanet={"n_heads": 2, "n_v_heads": 4, "head_k_dim": 8, "head_v_dim": 8, "chunk_size": 8},
    mlp={"hidden_dim": 64},
    # Large random weights: with the usual 0.02 every block is close to the identity and a wrong
    # state would hardly change the logits.
    init_std=0.3,
)


def tiny_config(layer_types: list[str], **overrides: object) -> HybridConfig:
    return HybridConfig.model_validate({**TINY, "layer_types": layer_types, **overrides})


def tiny_model(layer_types: list[str], seed: int = 0, **overrides: object) -> HybridLM:
    """A seeded model in eval mode: the same weights for the same arguments."""
    torch.manual_seed(seed)
    return HybridLM(tiny_config(layer_types, **overrides)).eval()


def run_in_pieces(
    model: HybridLM, ids: torch.Tensor, sizes: list[int], **state_kw: object
) -> tuple[torch.Tensor, ModelState]:
    """The logits (B, T, V) of `ids` fed in consecutive pieces of `sizes` tokens, and the state after."""
    state = model.new_state(ids.shape[0], **state_kw)
    out, start = [], 0
    for n in sizes:
        out.append(model(ids[:, start : start + n], state))
        start += n
    assert start == ids.shape[1] and state.n_tokens == start
    return torch.cat(out, dim=1), state


def random_sizes(total: int, gen: torch.Generator) -> list[int]:
    """Random piece sizes (1-11 tokens) that add up to `total`."""
    sizes = []
    while total:
        n = min(total, int(torch.randint(1, 12, (1,), generator=gen)))
        sizes.append(n)
        total -= n
    return sizes


def assert_close(a: torch.Tensor, b: torch.Tensor, rel: float = 1e-4) -> None:
    """Largest difference within `rel` of a's largest entry."""
    err = float((a - b).abs().max() / a.abs().max())
    assert err < rel, f"relative error {err:.2e}"


def thread_ranks(world: int, fn: Callable[[TensorParallel], Any], timeout: float = 120.0) -> list[Any]:
    """`fn(tp)` for every rank of a real gloo process group whose ranks are threads of this process
    (tensor-parallel tests without starting processes); returns the ranks' results in rank order and
    raises the first rank's exception. Build random models before: the threads share one generator."""
    store = dist.HashStore()
    results: list[Any] = [None] * world
    errors: list[BaseException] = []

    def rank(r: int) -> None:
        try:
            results[r] = fn(TensorParallel(r, world, dist.ProcessGroupGloo(store, r, world)))
        except BaseException as e:  # re-raised in the caller's thread
            errors.append(e)

    threads = [threading.Thread(target=rank, args=(r,), daemon=True) for r in range(world)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout)
    if any(t.is_alive() for t in threads):
        raise TimeoutError(f"a rank of {world} did not finish in {timeout} s")
    if errors:
        raise errors[0]
    return results
