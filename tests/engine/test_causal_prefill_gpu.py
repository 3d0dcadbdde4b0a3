"""The unmasked causal prefill path on the GPU (run on the device machine: pytest -m gpu tests/engine),
bf16, a mid-size OLMo-Hybrid-like model: prefill chunks of plain causal attention through SDPA's causal
kernel (model/ops.py `causal_sdpa`; the first chunk by `is_causal`, later ones by the lower-right bias)
against the masked call (`HYBRID_AGENT_CAUSAL_PREFILL=0`), the model's own path and the engine's, and
the chunked prefill against token by token (one-token calls never take it). Logits within bf16
rounding; greedy tokens equal, or the first divergence a near-tie of the reference's logits."""

from __future__ import annotations

import pytest
import torch
from hybrid_agent.model import HybridConfig, HybridLM
from hybrid_agent.model import ops as ops_mod
from hybrid_agent.model.decode.engine import DecodeEngine
from hybrid_agent.model.decode.generate import prefill
from hybrid_agent.model.ops import CAUSAL_PREFILL_ENV

pytestmark = pytest.mark.gpu

if not torch.cuda.is_available():  # collected on CPU machines too; skipped there
    pytest.skip("needs a CUDA device", allow_module_level=True)

PROMPT, CHUNK, STEPS = 700, 256, 8
ATTENTION = {
    "olmo": {},  # the preset's: 30 heads, no grouping, head dim 128, no RoPE
    "G2-64": {"n_heads": 16, "n_kv_heads": 8, "head_dim": 64, "rope_theta": 10000.0},
    "G4-256-gated": {
        "n_heads": 8,
        "n_kv_heads": 2,
        "head_dim": 256,
        "rope_theta": 10000.0,
        "output_gate": True,
    },
}


def olmo_like(attention: dict[str, object]) -> HybridLM:
    preset = HybridConfig.from_name("olmo-hybrid-7b").attention.model_dump()
    layers = (["gated_deltanet"] * 3 + ["attention"]) * 2
    cfg = HybridConfig.from_name(
        "olmo-hybrid-7b", d_model=1024, layer_types=layers, vocab_size=4096, attention={**preset, **attention}
    )
    cfg = cfg.model_copy(update={"init_std": 0.05})
    torch.manual_seed(0)
    return HybridLM(cfg).to(device="cuda", dtype=torch.bfloat16).eval()


def prompt() -> torch.Tensor:
    return torch.randint(
        0, 4096, (1, PROMPT), device="cuda", generator=torch.Generator("cuda").manual_seed(0)
    )


def greedy(model: HybridLM, state, logits: torch.Tensor) -> tuple[list[int], list[torch.Tensor]]:
    """STEPS greedy tokens by one-token calls after a prefill's last logits, and the logits they came from."""
    toks, seen = [], []
    for _ in range(STEPS):
        seen.append(logits.float())
        toks.append(int(logits.argmax()))
        logits = model(torch.tensor([[toks[-1]]], device="cuda"), state)[0, -1]
    return toks, seen


def check(want: tuple[list[int], list[torch.Tensor]], got: tuple[list[int], list[torch.Tensor]]) -> None:
    """Logits within bf16 rounding up to the first step whose greedy tokens differ (after it the two
    runs feed different tokens, so their logits are not comparable), and that divergence a near-tie."""
    same = next((i for i, (a, b) in enumerate(zip(want[0], got[0], strict=True)) if a != b), STEPS)
    for i, (e, x) in enumerate(zip(want[1][: same + 1], got[1][: same + 1], strict=True)):
        noise = float((e - x).abs().max())
        assert noise <= 0.05 * float(e.abs().max()), f"step {i}: logits differ by {noise}"
    if same < STEPS:
        e, x = want[1][same], got[1][same]
        noise = float((e - x).abs().max())
        assert float(e[want[0][same]] - e[got[0][same]]) <= 2 * noise, (
            f"greedy diverges at {same} outside noise"
        )


def spy(monkeypatch: pytest.MonkeyPatch) -> list[tuple[int, int]]:
    calls: list[tuple[int, int]] = []
    real = ops_mod.causal_sdpa

    def counted(q, k, v, scale):
        calls.append((q.shape[-2], k.shape[-2]))
        return real(q, k, v, scale)

    monkeypatch.setattr(ops_mod, "causal_sdpa", counted)
    return calls


@pytest.mark.parametrize("attention", list(ATTENTION.values()), ids=list(ATTENTION))
def test_causal_prefill_matches_the_masked_one(monkeypatch, attention) -> None:
    model, ids = olmo_like(attention), prompt()
    calls = spy(monkeypatch)
    runs = {}
    for switch in ("0", "1"):
        monkeypatch.setenv(CAUSAL_PREFILL_ENV, switch)
        state = model.new_state()
        runs[switch] = greedy(model, state, prefill(model, ids, state, chunk_size=CHUNK)[0])
    starts = range(0, PROMPT, CHUNK)
    assert calls == [(min(CHUNK, PROMPT - s), min(s + CHUNK, PROMPT)) for s in starts for _ in range(2)]
    check(runs["0"], runs["1"])
    # chunked (causal path) against token by token (never on it)
    state = model.new_state()
    for t in range(PROMPT):
        logits = model(ids[:, t : t + 1], state)[0, -1]
    check(greedy(model, state, logits), runs["1"])


def test_engine_prefill_both_paths(monkeypatch) -> None:
    model, ids = olmo_like({}), prompt()
    calls = spy(monkeypatch)
    engine = DecodeEngine(model, max_context=1024, prefill_chunk=CHUNK)
    out = {}
    for switch in ("0", "1"):
        monkeypatch.setenv(CAUSAL_PREFILL_ENV, switch)
        engine.reset()
        first = engine.prefill(ids)[0].float().clone()
        out[switch] = first, engine.generate_greedy(STEPS, sync_every=STEPS)
    assert len(calls) == 2 * len(range(0, PROMPT, CHUNK))  # two attention layers, the causal run only
    noise = float((out["0"][0] - out["1"][0]).abs().max())
    assert noise <= 0.05 * float(out["0"][0].abs().max())
    state = model.new_state()
    want = greedy(model, state, prefill(model, ids, state, chunk_size=CHUNK)[0])
    same = next((i for i, (a, b) in enumerate(zip(want[0], out["1"][1], strict=True)) if a != b), STEPS)
    if same < STEPS:  # the engine's graphed steps against eager ones: a divergence only at a near-tie
        e = want[1][same]
        assert float(e[want[0][same]] - e[out["1"][1][same]]) <= 2 * noise + 0.05 * float(e.abs().max())
