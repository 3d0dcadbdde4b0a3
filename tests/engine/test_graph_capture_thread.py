"""The engine's step captured while another thread of the process copies device memory to the host and
waits on its own stream, as `hybrid-agent serve`'s writer does (agent/serve_tiers.py): on an H200 the
returning-conversation benchmark's capture failed with `operation not permitted when stream is
capturing` (bench/results/gpu_serve_returning_h200_s9.log), and so did the writer's copy. The capture
now forbids unsafe calls on its own thread only (model/decode/graphs.py)."""

from __future__ import annotations

import threading

import pytest
import torch
from hybrid_agent.model import HybridConfig, HybridLM
from hybrid_agent.model.decode.engine import DecodeEngine

pytestmark = pytest.mark.gpu

if not torch.cuda.is_available():  # collected on CPU machines too; skipped there
    pytest.skip("needs a CUDA device", allow_module_level=True)


def test_capture_while_another_thread_copies_to_the_host() -> None:
    cfg = HybridConfig.from_name(
        "olmo-hybrid-7b", d_model=512, layer_types=["gated_deltanet", "attention"], vocab_size=1024
    )
    torch.manual_seed(0)
    model = HybridLM(cfg).to(device="cuda", dtype=torch.bfloat16).eval()
    prompt = torch.randint(0, 1024, (1, 64), device="cuda")
    plain = DecodeEngine(model, max_context=256, use_graphs=False)
    want = [plain.prefill(prompt)[0].float().clone()]
    tokens = []
    for _ in range(8):
        tokens.append(int(want[-1].argmax()))
        want.append(plain.step(tokens[-1])[0].float().clone())

    src = torch.randn(64 << 20, device="cuda", dtype=torch.bfloat16)  # 128 MB a copy
    dst = torch.empty(src.shape, dtype=src.dtype, pin_memory=True)
    stop, copies, errors = threading.Event(), [0], []

    def writer() -> None:
        stream = torch.cuda.Stream()
        try:
            while not stop.is_set():
                with torch.cuda.stream(stream):
                    dst.copy_(src, non_blocking=True)
                stream.synchronize()
                copies[0] += 1
        except Exception as exc:  # reported below: the test fails on it
            errors.append(exc)

    thread = threading.Thread(target=writer)
    thread.start()
    try:
        while copies[0] == 0 and not errors:  # the writer is copying before the capture starts
            pass
        engine = DecodeEngine(model, max_context=256)  # graphed: the first step captures
        got = [engine.prefill(prompt)[0].float().clone()]
        got += [engine.step(t)[0].float().clone() for t in tokens]  # the same tokens fed
    finally:
        stop.set()
        thread.join()
    assert not errors, f"the writer's copy failed during the capture: {errors[0]}"
    assert copies[0] > 1
    for i, (w, g) in enumerate(zip(want, got, strict=True)):
        assert float((w - g).abs().max()) <= 0.05 * float(w.abs().max()), f"step {i}"
