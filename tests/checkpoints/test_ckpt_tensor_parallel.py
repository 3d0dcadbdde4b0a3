"""`load_model(path, tp=N)`'s loading (`load_weights(..., tp=)`) for every checkpoint family, two ranks
over gloo on the CPU: each rank reads only its part of each weight, the logits equal the whole model's to
fp32 rounding, greedy continuations are identical, and the fingerprint does not depend on the layout."""

from __future__ import annotations

import pytest
import torch
from hybrid_agent.model import load_model
from hybrid_agent.model.checkpoints.loader import ADAPTERS, family_of, load_weights, read_config
from hybrid_agent.model.errors import CheckpointError
from hybrid_agent.model.parallel import TensorParallel
from hybrid_agent.model.testing import thread_ranks
from safetensors import safe_open
from safetensors.torch import load_file, save_file

pytest.importorskip("transformers")

FAMILIES: dict[str, dict[str, object]] = {
    "mamba2": {},
    "falcon_h1": {},
    "bamba": {},
    "bamba_one_group": {"mamba_n_groups": 1},  # B/C replicated on every rank; the gated norm spans them
    "nemotron_h": {},
    "nemotron_h_latent_moe": {  # latent_in / latent_out replicated, latent_out's bias on rank 0 only
        "layers_block_type": ["moe", "linear_attention", "moe"],
        "mlp_bias": True,
        "moe_latent_size": 12,
        "n_routed_experts": 6,
        "num_experts_per_tok": 2,
        "moe_intermediate_size": 16,
        "moe_shared_expert_intermediate_size": 24,
    },
    "granitemoehybrid": {},
    "qwen3_next": {},
    "lfm2": {},
    "lfm2_moe": {},
    "kimi_linear": {},
    "qwen3_5": {},
    "olmo_hybrid": {},
}


def _greedy(model, ids, n=5):
    state = model.new_state()
    out, logits = [], model(ids, state)
    first = logits
    for _ in range(n):
        nxt = logits[:, -1].argmax(-1, keepdim=True)
        out.append(int(nxt))
        logits = model(nxt, state)
    return first, out


@pytest.mark.parametrize("case", list(FAMILIES))
def test_tp2_load_equals_tp1(checkpoint, case):
    family = case.removesuffix("_one_group").removesuffix("_latent_moe")
    folder, _ = checkpoint(family, **FAMILIES[case])
    whole, _, _ = load_model(folder, progress=False, cache_fingerprint=False)
    ids = torch.randint(0, whole.config.vocab_size, (1, 9), generator=torch.Generator().manual_seed(0))
    want_logits, want = _greedy(whole, ids)
    hf = read_config(folder)
    adapter = ADAPTERS[family_of(hf)]

    def rank(tp: TensorParallel):
        model = load_weights(folder, adapter, hf, progress=False, cache_fingerprint=False, tp=tp)
        logits, got = _greedy(model, ids)
        return model.fingerprint, logits, got

    for fingerprint, logits, got in thread_ranks(2, rank):
        assert fingerprint == whole.fingerprint
        err = (logits - want_logits).abs().max().item()
        assert err <= 1e-4 * max(1.0, want_logits.abs().max().item()), f"{case}: logits differ by {err}"
        assert got == want


def test_tp_without_a_process_group_is_refused_in_one_line(checkpoint):
    folder, _ = checkpoint("lfm2")
    with pytest.raises(CheckpointError, match="torchrun --nproc-per-node 2") as e:
        load_model(folder, tp=2, progress=False)
    assert "\n" not in str(e.value)


def _load_on_rank(tp: TensorParallel, folder: str, out: str) -> None:
    """A rank started by `launch`: `load_model(path, tp=2)` as a torchrun rank calls it."""
    model, _, _ = load_model(folder, tp=tp.world, progress=False, cache_fingerprint=False)
    ids = torch.arange(3, 12)[None]
    logits, got = _greedy(model, ids)
    if tp.rank == 0:
        tensors = {"logits": logits.contiguous(), "greedy": torch.tensor(got)}
        save_file(tensors, out, metadata={"fingerprint": model.fingerprint})


@pytest.mark.slow
def test_load_model_tp2_in_two_processes(checkpoint, tmp_path, monkeypatch):
    """Two processes over gloo (model/parallel.py's `launch`), each calling `load_model(path, tp=2)`."""
    import sys
    from pathlib import Path

    from hybrid_agent.model.parallel import launch

    monkeypatch.setattr(sys, "path", [*sys.path, str(Path(__file__).resolve().parents[2])])
    folder, _ = checkpoint("bamba", mamba_n_groups=1)
    whole, _, _ = load_model(folder, progress=False, cache_fingerprint=False)
    want_logits, want = _greedy(whole, torch.arange(3, 12)[None])
    out = tmp_path / "out.safetensors"
    launch(_load_on_rank, 2, str(folder), str(out))
    got = load_file(out)
    with safe_open(out, "pt") as f:
        assert f.metadata()["fingerprint"] == whole.fingerprint
    assert got["greedy"].tolist() == want
    assert (got["logits"] - want_logits).abs().max().item() <= 1e-4 * max(1.0, want_logits.abs().max().item())
