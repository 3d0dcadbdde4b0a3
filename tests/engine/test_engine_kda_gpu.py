"""The DecodeEngine's captured step on a tiny Kimi Linear stack (KDA, MLA, KDA; short convolutions,
kernels.kda_step, kernels.chunk_kda) on CUDA against the model's own forward (`pytest -m gpu`): on the
GPU both run the Triton kernels (prefill through kernels/triton_kda.py, decode through
kernels/triton_kda_step.py and triton_causal_conv1d.py's step), fp32 weights and activations.

Checked: the engine's logits after the prompt and at every teacher-forced step are the forward's within
float rounding, its free-running greedy tokens are the forward's, and its final state is the forward's
(tests/checkpoints/conftest.py `assert_engine_equals_model` is the CPU form of the same check).
"""

from __future__ import annotations

import pytest
import torch
from hybrid_agent.model.decode.engine import DecodeEngine
from hybrid_agent.model.decode.generate import prefill
from hybrid_agent.model.testing import tiny_model

pytestmark = pytest.mark.gpu

if not torch.cuda.is_available():  # collected on CPU machines too; skipped there
    pytest.skip("needs a CUDA device", allow_module_level=True)

KDA = {"n_heads": 4, "head_dim": 32, "chunk_size": 64}
MLA = {"kv_lora_rank": 16, "qk_rope_head_dim": 4, "qk_nope_head_dim": 8, "v_head_dim": 8, "n_heads": 4,
       "rope_theta": None}  # fmt: skip
STEPS = 24


@pytest.mark.parametrize("fuse", [True, False])
def test_kimi_engine_step_equals_model_forward_gpu(fuse: bool) -> None:
    model = tiny_model(["kda", "mla", "kda"], seed=3, d_model=64, kda=KDA, mla=MLA, init_std=0.1)
    model = model.to("cuda")
    gen = torch.Generator().manual_seed(6)
    prompt = torch.randint(0, model.config.vocab_size, (1, 150), generator=gen).cuda()  # 3 chunks, a tail

    state = model.new_state()
    logits = prefill(model, prompt, state, chunk_size=None)
    want, want_logits = [], [logits.clone()]
    for _ in range(STEPS):
        want.append(int(logits.argmax(-1)))
        logits = model(torch.tensor([[want[-1]]], device="cuda"), state)[:, -1]
        want_logits.append(logits.clone())

    engine = DecodeEngine(model, max_context=256, fuse=fuse)
    assert engine.static and engine.graphed
    got = [engine.prefill(prompt).clone()]
    got += [engine.step(t).clone() for t in want[:-1]]
    for i, (x, e) in enumerate(zip(got, want_logits, strict=False)):
        assert torch.allclose(x, e, rtol=1e-4, atol=1e-4), f"step {i}: {(x - e).abs().max():.3g}"
    engine.step(want[-1])
    for name, t in state.to_tensors().items():
        t, mine = t.float(), engine.state.to_tensors()[name].float()
        assert (mine - t).abs().max() <= 1e-4 * t.abs().max() + 1e-6, name

    engine.reset()
    engine.prefill(prompt)
    assert engine.generate_greedy(STEPS, sync_every=8) == want
