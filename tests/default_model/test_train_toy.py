"""The training loop at toy size on the CPU: a few steps on generated episodes lower the loss, and the
saved folder loads back as a model the agent can use."""

from __future__ import annotations

import itertools
import json
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "scripts"))

import make_agent_data as gen  # noqa: E402
from hybrid_agent.model import load_model  # noqa: E402
from hybrid_agent.model.training.forward import train_forward  # noqa: E402
from hybrid_agent.model.training.train import build_config, lr_at, main  # noqa: E402


def test_train_forward_matches_inference() -> None:
    from hybrid_agent.model.hybrid import HybridLM

    torch.manual_seed(0)
    model = HybridLM(build_config("hybrid", 300, 64, 3)).eval()
    ids = torch.randint(0, 300, (2, 70))
    expected = model(ids, model.new_state(batch_size=2))
    torch.testing.assert_close(train_forward(model, ids), expected, rtol=1e-5, atol=1e-5)
    model.train()
    train_forward(model, ids).logsumexp(-1).mean().backward()
    assert all(p.grad is not None for p in model.parameters())


def test_schedule_warms_up_then_decays_to_the_floor() -> None:
    lrs = [lr_at(s, 100, 1e-3, 10, 0.1) for s in range(100)]
    assert lrs[0] == 1e-4 and max(lrs) == lrs[9] == 1e-3
    assert all(a >= b for a, b in itertools.pairwise(lrs[10:]))
    assert abs(lr_at(100, 100, 1e-3, 10, 0.1) - 1e-4) < 1e-12


def test_toy_training_lowers_the_loss(tmp_path: Path) -> None:
    data, out = tmp_path / "data", tmp_path / "run"
    gen.main(["--out", str(data), "--episodes", "12", "--seed", "2", "--workers", "1", "--vocab-size", "400"])
    main(
        ["--data", str(data), "--out", str(out), "--d-model", "32", "--n-layers", "3", "--max-steps", "12",
         "--tokens-per-batch", "1000", "--lr", "1e-2", "--warmup", "2", "--log-every", "1",
         "--val-fraction", "0.1", "--device", "cpu"]
    )  # fmt: skip
    log = json.loads((out / "log.json").read_text())
    losses = [s["loss"] for s in log["steps"]]
    assert len(losses) == 12
    assert sum(losses[-4:]) / 4 < sum(losses[:4]) / 4 - 0.5  # starts near ln(400) ~ 6.0
    assert log["config"]["layer_types"] == ["mamba2", "mamba2", "attention"]
    model, tokenizer, chat = load_model(out)
    assert chat.name == "native" and tokenizer.vocab_size == model.config.vocab_size


def test_shared_prefix_gives_the_full_episodes_loss_and_gradients(tmp_path: Path) -> None:
    """The system segment run once and broadcast (and logits only where loss is taken) vs every row
    run whole from an empty state: same loss, same gradients."""
    import numpy as np
    from hybrid_agent.model.hybrid import HybridLM
    from hybrid_agent.model.training.data import Corpus, collate, make_batches
    from hybrid_agent.model.training.train import batch_loss, to_device

    data = tmp_path / "data"
    gen.main(["--out", str(data), "--episodes", "10", "--seed", "4", "--workers", "1", "--vocab-size", "400"])
    corpus = Corpus.load(data)
    chat = np.flatnonzero(corpus.with_prefix)[:2]
    assert len(chat) == 2
    torch.manual_seed(0)
    model = HybridLM(build_config("hybrid", corpus.tokenizer.vocab_size, 32, 3)).train()
    results, widths = [], []
    for shared in (False, True):
        (batch,) = make_batches(corpus, chat, 10**6, np.random.default_rng(0), shared_prefix=shared)
        ids, where, prefix = to_device(collate(corpus, batch, shared_prefix=shared), torch.device("cpu"))
        assert (prefix is not None) == shared
        widths.append(ids.shape[1])  # shared: rows hold only what follows the system segment
        model.zero_grad()
        loss = batch_loss(model, ids, where, False, prefix)
        loss.backward()
        results.append((loss.item(), {n: p.grad.clone() for n, p in model.named_parameters()}))
    (full, g_full), (shared_loss, g_shared) = results
    assert widths[1] <= widths[0] - len(corpus.prefix) + 64
    assert abs(full - shared_loss) < 1e-5 * abs(full)
    for name, g in g_full.items():
        torch.testing.assert_close(g_shared[name], g, rtol=1e-3, atol=1e-6, msg=name)


@pytest.mark.slow
def test_two_resumed_runs_equal_one_straight_run(tmp_path: Path) -> None:
    """4 steps in one run against 2 + resume + 2 (run-steps budget, checkpoint with optimizer state
    and data position): the same losses and the same final weights."""
    from safetensors.torch import load_file

    data = tmp_path / "data"
    gen.main(["--out", str(data), "--episodes", "8", "--seed", "5", "--workers", "1", "--vocab-size", "400"])
    common = ["--data", str(data), "--d-model", "32", "--n-layers", "3", "--max-steps", "4",
              "--tokens-per-batch", "600", "--lr", "1e-2", "--warmup", "2", "--log-every", "1",
              "--val-fraction", "0.1", "--device", "cpu", "--checkpoint-minutes", "0"]  # fmt: skip
    main([*common, "--out", str(tmp_path / "straight")])
    main([*common, "--out", str(tmp_path / "split"), "--resume", "--run-steps", "2"])
    first = json.loads((tmp_path / "split" / "log.json").read_text())
    assert first["finished"] is False and first["step"] == 2
    assert not (tmp_path / "split" / "model.safetensors").exists()  # only the checkpoint so far
    main([*common, "--out", str(tmp_path / "split"), "--resume", "--run-steps", "2"])
    logs = [json.loads((tmp_path / d / "log.json").read_text()) for d in ("straight", "split")]
    assert logs[1]["finished"] is True and [r["from_step"] for r in logs[1]["runs"]] == [0, 2]
    assert [s["loss"] for s in logs[1]["steps"]] == pytest.approx(
        [s["loss"] for s in logs[0]["steps"]], rel=1e-5
    )
    a, b = (load_file(str(tmp_path / d / "model.safetensors")) for d in ("straight", "split"))
    for name, t in a.items():
        torch.testing.assert_close(b[name], t, rtol=1e-5, atol=1e-6, msg=name)
