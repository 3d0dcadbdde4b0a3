"""The packed one-row matmuls of CPU decode (model/cpu_rows.py) against F.linear on each weight as it is
(`Ops(cpu_rows=False)`): the same greedy tokens and logits within fp32 rounding, on tiny random configs
and on the shipped model; packs that follow the weights when they change; the engine's CPU step on the
same path (tests/engine/test_engine_cpu.py compares its logits with the model's bit for bit)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from hybrid_agent.model import HybridLM
from hybrid_agent.model import cpu_rows as cr
from hybrid_agent.model.ops import Ops
from hybrid_agent.model.testing import TINY, tiny_model

DEFAULT_DIR = Path(__file__).resolve().parents[2] / "model" / "default"

BIASED = {
    "tie_embeddings": False,
    "attention": {**TINY["attention"], "bias": True, "output_gate": True},
    "mlp": {"hidden_dim": 64, "bias": True},
    "mamba2": {**TINY["mamba2"], "bias": True},
}


def greedy(model: HybridLM, prompt: list[int], n: int, cpu_rows: bool) -> tuple[torch.Tensor, list[int]]:
    """Prefill `prompt`, then `n` one-token calls: every call's last logits (n + 1, V) and the tokens."""
    ops, state = Ops(cpu_rows=cpu_rows), model.new_state()
    logits = model(torch.tensor([prompt]), state, ops)[:, -1]
    outs, toks = [logits], []
    for _ in range(n):
        toks.append(int(logits.argmax(-1)))
        logits = model(torch.tensor([[toks[-1]]]), state, ops)[:, -1]
        outs.append(logits)
    return torch.cat(outs), toks


def packs(model: HybridLM) -> list[cr._Pack]:
    return [p for m in model.modules() for p in m.__dict__.get(cr.PACKS_ATTR, {}).values()]


def assert_near(got: torch.Tensor, want: torch.Tensor, rel: float) -> None:
    """Within `rel` of the logits' scale: fp32 in another summation order, not another computation."""
    err, scale = float((got - want).abs().max()), float(want.abs().max())
    assert err <= rel * scale, f"logits differ by {err:.3e} (scale {scale:.3f})"


@pytest.mark.parametrize(
    ("layers", "over"),
    [(["mamba2", "attention", "gated_deltanet", "mlp"], {}), (["attention", "mamba2", "mla"], BIASED)],
)
def test_tiny_packed_decode_matches_unpacked(layers: list[str], over: dict) -> None:
    model = tiny_model(layers, seed=1, **over)
    want, want_toks = greedy(model, list(range(1, 12)), 12, cpu_rows=False)
    assert not packs(model)
    got, toks = greedy(model, list(range(1, 12)), 12, cpu_rows=True)
    made = packs(model)
    assert any(p.transposed for p in made), "no projection took the packed (K, N) path"
    assert toks == want_toks
    assert torch.equal(got[0], want[0])  # the prefill (several rows) keeps F.linear
    assert_near(got, want, 3e-5)


def test_pack_order_and_bias() -> None:
    """Each linear's outputs in its own columns, biases added: a pack that swapped or mis-split them,
    or dropped a bias, would be off by O(1)."""
    torch.manual_seed(0)
    for sizes, k, bias in [((48, 16, 16), 32, False), ((40, 24), 32, True), ((7, 5, 3), 64, True)]:
        lins = [torch.nn.Linear(k, n, bias=bias) for n in sizes]
        x = torch.randn(1, 1, k)
        with torch.inference_mode():
            want = torch.cat([F.linear(x, lin.weight, lin.bias) for lin in lins], dim=-1)
            got = cr.linears_row(x, lins)
        assert got is not None and got.shape == want.shape
        torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-6)
        assert lins[0].__dict__[cr.PACKS_ATTR][tuple(lins)].transposed == (sum(sizes) >= k)


def test_pack_follows_weight_changes() -> None:
    """New weights loaded in place (version counter), a weight replaced (identity): the next call
    packs them again; a move to another dtype drops the packs and takes F.linear."""
    model = tiny_model(["mamba2", "attention", "mlp"], seed=2)
    other = tiny_model(["mamba2", "attention", "mlp"], seed=3)
    prompt = list(range(3, 10))
    greedy(model, prompt, 2, cpu_rows=True)
    model.load_state_dict(other.state_dict())
    got, toks = greedy(model, prompt, 6, cpu_rows=True)
    want, want_toks = greedy(other, prompt, 6, cpu_rows=False)
    assert toks == want_toks
    assert_near(got, want, 3e-5)
    with torch.no_grad():
        up = model.layers[2].mlp.up_proj
        up.weight = torch.nn.Parameter(up.weight * 2)
    got, _ = greedy(model, prompt, 3, cpu_rows=True)
    want, _ = greedy(model, prompt, 3, cpu_rows=False)
    assert_near(got, want, 3e-5)
    model.to(torch.float64)
    assert not packs(model)
    greedy(model, prompt, 2, cpu_rows=True)
    assert not packs(model)  # fp64: F.linear


def test_engine_cpu_step_uses_packs() -> None:
    from hybrid_agent.model.decode.engine import DecodeEngine

    model = tiny_model(["mamba2", "attention", "mlp"], seed=4)
    prompt = list(range(5, 14))
    _, want_toks = greedy(model, prompt, 6, cpu_rows=True)
    for layer in model.modules():
        layer.__dict__.pop(cr.PACKS_ATTR, None)
    engine = DecodeEngine(model, max_context=32, prefill_chunk=8)
    engine.prefill(prompt)
    assert engine.generate_greedy(6) == want_toks
    assert any(p.transposed for p in packs(model))


@pytest.mark.skipif(not (DEFAULT_DIR / "model.safetensors").is_file(), reason="no model/default")
def test_default_model_packed_decode_matches_unpacked() -> None:
    model = HybridLM.from_pretrained(DEFAULT_DIR, device="cpu")
    assert model.dtype == torch.float32
    torch.manual_seed(0)
    prompt = torch.randint(0, model.config.vocab_size, (24,)).tolist()
    want, want_toks = greedy(model, prompt, 16, cpu_rows=False)
    got, toks = greedy(model, prompt, 16, cpu_rows=True)
    # attention's q|k|v and o_proj (384 x 384: N >= K), each Mamba-2 in_proj, each gate|up, the head:
    # all (K, N); Mamba-2's out_proj and the MLPs' down_proj (N < K) stay F.linear on their own weights
    made = packs(model)
    assert len(made) == 2 * 2 + 5 + 7 + 1 and all(p.transposed for p in made)
    assert toks == want_toks
    assert_near(got, want, 1e-5)


def test_packs_stay_under_the_budget_and_give_their_bytes_back(monkeypatch: pytest.MonkeyPatch) -> None:
    """The packed copies alive together stay under `PACK_BUDGET_BYTES`: a pack that would go past it is
    not made and its linears run as F.linear (bit for bit the unpacked numbers when none fits); a freed
    model's packs give their bytes back."""
    import gc

    layers = ["mamba2", "attention", "gated_deltanet", "mlp"]
    gc.collect()
    before = cr._live[0]
    model = tiny_model(layers, seed=1)
    want, want_toks = greedy(model, list(range(1, 12)), 4, cpu_rows=False)
    monkeypatch.setattr(cr, "PACK_BUDGET_BYTES", before)  # no room for any pack
    got, toks = greedy(model, list(range(1, 12)), 4, cpu_rows=True)
    assert not packs(model) and cr._live[0] == before
    assert toks == want_toks and torch.equal(got, want)
    monkeypatch.setattr(cr, "PACK_BUDGET_BYTES", before + 10**9)
    greedy(model, list(range(1, 12)), 2, cpu_rows=True)
    made = packs(model)
    used = cr._live[0] - before
    assert made and used >= sum(p.weight.numel() * p.weight.element_size() for p in made)
    some = used // 2  # room for part of them: a new model packs some and leaves the rest to F.linear
    other = tiny_model(layers, seed=2)
    monkeypatch.setattr(cr, "PACK_BUDGET_BYTES", cr._live[0] + some)
    greedy(other, list(range(1, 12)), 2, cpu_rows=True)
    assert 0 < len(packs(other)) < len(made) and cr._live[0] <= cr.PACK_BUDGET_BYTES
    del model, other, made
    gc.collect()
    assert cr._live[0] == before
