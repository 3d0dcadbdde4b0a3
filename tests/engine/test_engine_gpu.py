"""DecodeEngine on the GPU (run on the device machine: pytest -m gpu tests/engine): the CUDA-graph decode
gives exactly the tokens of the eager path (`model(token, state)` per token) over 256 greedy steps, in
bf16, at a mid-size OLMo-Hybrid-like shape. The 7B-shape check runs in bench/gpu_e2e.py."""

from __future__ import annotations

import pytest
import torch

from model import HybridConfig, HybridLM
from model.engine import DecodeEngine
from model.generate import prefill

pytestmark = pytest.mark.gpu

if not torch.cuda.is_available():  # collected on CPU machines too; skipped there
    pytest.skip("needs a CUDA device", allow_module_level=True)


def olmo_like(layer_types: list[str]) -> HybridLM:
    cfg = HybridConfig.from_name("olmo-hybrid-7b", d_model=1024, layer_types=layer_types, vocab_size=4096)
    cfg = cfg.model_copy(update={"init_std": 0.05})
    torch.manual_seed(0)
    return HybridLM(cfg).to(device="cuda", dtype=torch.bfloat16).eval()


@pytest.mark.parametrize("layers", [["gated_deltanet"] * 3 + ["attention"], ["attention", "mamba2", "mlp"]])
def test_graphed_greedy_matches_eager(layers: list[str]) -> None:
    model = olmo_like(layers * 2)
    prompt = torch.randint(0, 4096, (1, 300), device="cuda", generator=torch.Generator("cuda").manual_seed(0))
    state = model.new_state()
    logits = prefill(model, prompt, state)
    want = []
    for _ in range(256):
        tok = int(logits.argmax(-1))
        want.append(tok)
        logits = model(torch.tensor([[tok]], device="cuda"), state)[:, -1]
    engine = DecodeEngine(model, max_context=1024)
    assert engine.graphed
    engine.prefill(prompt)
    got = engine.generate_greedy(256, sync_every=32)
    assert got == want
    for name, t in state.to_tensors().items():
        assert torch.equal(engine.state.to_tensors()[name], t), name
