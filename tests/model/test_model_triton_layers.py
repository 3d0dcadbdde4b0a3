"""Kimi Linear's KDA layers and LFM2's gated short convolutions through the Triton kernels equal the
same model through the torch references, prefill (chunked: kernels/triton_kda.py, the conv's full
kernel) and decode (one token: kernels/triton_kda_step.py, the conv step with activation=None for the
short convolution, silu for KDA's).

On CUDA this is the path the model takes by default; without a GPU, Triton's CPU interpreter
(tests/conftest.py sets TRITON_INTERPRET=1) runs the same kernels.
"""

from __future__ import annotations

import pytest
import torch
from hybrid_agent.kernels._dispatch import interpreter_on
from hybrid_agent.model.testing import run_in_pieces, tiny_model


@pytest.mark.parametrize(
    "layers, over",
    [
        (["kda"], {"kda": {"n_heads": 2, "head_dim": 8}}),
        (["short_conv", "mlp"], {"short_conv": {"bias": True}}),
        (["short_conv"], {"short_conv": {"d_conv": 4}}),
    ],
)
def test_triton_layers_equal_reference(
    monkeypatch: pytest.MonkeyPatch, layers: list[str], over: dict
) -> None:
    device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cpu" and not interpreter_on():
        pytest.skip("needs CUDA or TRITON_INTERPRET=1 set before Triton is imported")
    model = tiny_model(layers, seed=2, **over).to(device)
    ids = torch.randint(0, model.config.vocab_size, (1, 44), generator=torch.Generator().manual_seed(9))
    ids = ids.to(device)
    sizes = [40, 1, 1, 2]  # a prefill (one padded 64-token chunk), two decode steps, a short piece
    monkeypatch.setenv("HYBRID_AGENT_KERNELS", "ref")
    want, want_state = run_in_pieces(model, ids, sizes)
    monkeypatch.setenv("HYBRID_AGENT_KERNELS", "triton")
    got, got_state = run_in_pieces(model, ids, sizes)
    assert torch.allclose(got, want, rtol=1e-4, atol=1e-4), float((got - want).abs().max())
    for name, t in want_state.to_tensors().items():
        mine = got_state.to_tensors()[name]
        assert torch.allclose(mine.float(), t.float(), rtol=1e-4, atol=1e-5), name
