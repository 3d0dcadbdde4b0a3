"""A loaded checkpoint drives the agent's real engine: its chat format renders a turn, the engine
prefills and decodes greedily, snapshots (recurrent tensors + cache pages), and a fresh engine restored
from that snapshot continues the next turn with exactly the tokens and logits of the uninterrupted one."""

from __future__ import annotations

import pytest
import torch
from hybrid_agent.agent.engine import ModelEngine
from hybrid_agent.model import load_model
from hybrid_agent.model.chat import ChatMessage


def decode(engine: ModelEngine, n: int) -> tuple[list[int], list[torch.Tensor]]:
    tokens, logits = [], []
    for _ in range(n):
        tokens.append(engine.next_token())
        logits.append(engine._logits.clone())
        engine.prefill([tokens[-1]])
    return tokens, logits


# Nemotron 3 Super's MoE: routed experts in a latent space (moe_latent_size), beside Mamba-2 and attention;
# also on the DecodeEngine (model/decode/), where its MoE layers take the layer's own forward.
NEMOTRON_LATENT = {
    "layers_block_type": ["linear_attention", "moe", "full_attention", "moe"], "moe_latent_size": 12,
    "n_routed_experts": 8, "num_experts_per_tok": 2, "moe_intermediate_size": 16,
    "moe_shared_expert_intermediate_size": 24, "n_group": 2, "topk_group": 1,
}  # fmt: skip
CASES: dict[str, tuple[str, dict[str, object], bool]] = {  # family, config overrides, decode engine
    "olmo_hybrid": ("olmo_hybrid", {}, False),
    "bamba": ("bamba", {}, False),
    "granitemoehybrid": ("granitemoehybrid", {}, False),
    "lfm2": ("lfm2", {}, False),
    "nemotron_h_latent_moe": ("nemotron_h", NEMOTRON_LATENT, False),
    "nemotron_h_latent_moe_decode_engine": ("nemotron_h", NEMOTRON_LATENT, True),
}


@pytest.mark.parametrize("case", list(CASES))
def test_engine_on_a_loaded_checkpoint_resumes_exactly(checkpoint, case):
    family, kw, decode_engine = CASES[case]
    folder, _ = checkpoint(family, **kw)
    model, tok, chat = load_model(folder)
    engine = ModelEngine(model, tok, chat, window=None, model_name=family, decode_engine=decode_engine)
    assert engine.fingerprint == f"{model.fingerprint}:{tok.digest[:32]}"  # the model's and its tokenizer's
    first = [ChatMessage("user", "list the files")]
    ids = engine.encode(chat.segment([], first, system="be brief"))
    assert ids[0] == tok.token_id("<|im_start|>")
    engine.prefill(ids)
    assert engine.uses_decode_engine == decode_engine
    said, _ = decode(engine, 6)
    recurrent, pages = engine.snapshot(since=0)
    assert pages and (pages[0].start, pages[0].end) == (0, engine.n_tokens)

    # The next turn, rendered after what the model said (its raw text, as the loop keeps it).
    history = [*first, ChatMessage("assistant", tok.decode(said), raw=tok.decode(said))]
    nxt = engine.encode(chat.segment(history, [ChatMessage("user", "and now?")], system="be brief"))
    engine.prefill(nxt)
    want_tokens, want_logits = decode(engine, 8)

    resumed = ModelEngine(model, tok, chat, window=None, model_name=family, decode_engine=decode_engine)
    resumed.restore(recurrent, pages)
    assert resumed.uses_decode_engine == decode_engine
    assert resumed.n_tokens == len(ids) + 6
    resumed.prefill(nxt)
    got_tokens, got_logits = decode(resumed, 8)
    assert got_tokens == want_tokens
    for a, b in zip(got_logits, want_logits, strict=True):
        assert torch.equal(a, b)
