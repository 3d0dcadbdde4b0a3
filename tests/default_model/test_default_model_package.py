"""The packaged default model: found where the agent looks, small, and it writes a valid tool call for
a simple request on a workspace it has never seen."""

from __future__ import annotations

import random
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "scripts"))

from agent_workspaces import make_workspace  # noqa: E402
from hybrid_agent.agent.factory import default_model_dir, resolve_model_dir  # noqa: E402
from hybrid_agent.model import load_model  # noqa: E402
from hybrid_agent.model.chat import DEFAULT_SYSTEM_PROMPT, ChatMessage  # noqa: E402
from hybrid_agent.model.decode.generate import generate  # noqa: E402
from hybrid_agent.model.decode.sampling import SamplingParams  # noqa: E402
from hybrid_agent.model.tokenizer import NATIVE_SPECIAL_TOKENS  # noqa: E402
from hybrid_agent.tools import ToolRegistry  # noqa: E402


def test_default_model_is_packaged_and_small() -> None:
    root = default_model_dir()
    assert root == ROOT / "model" / "default"
    assert resolve_model_dir(None) == str(root)
    assert (root / "model.safetensors").stat().st_size <= 60 * 2**20
    model, tok, chat = load_model(root)
    assert model.num_parameters() <= 30_000_000
    assert chat.name == "native"
    assert [tok.token_id(t) for t in NATIVE_SPECIAL_TOKENS] == list(range(len(NATIVE_SPECIAL_TOKENS)))
    kinds = model.config.layer_types
    assert "attention" in kinds and "mamba2" in kinds and kinds.count("attention") < kinds.count("mamba2")


def _first_call(request: str, root: Path) -> tuple[str, object]:
    model, tok, chat = load_model(default_model_dir())
    with ToolRegistry(workspace=root, load_plugins=False) as registry:
        tools = [s["function"] for s in registry.schemas()]
        seg = chat.segment([], [ChatMessage("user", request)], system=DEFAULT_SYSTEM_PROMPT, tools=tools)
        gen = generate(
            model, tok, model.new_state(), seg.encode(tok), max_new_tokens=60,
            sampling=SamplingParams(temperature=0.0), stop_strings=(chat.tool_call_close, *chat.stop_strings),
        )  # fmt: skip
        for _ in gen:
            pass
        calls = chat.parse_tool_calls(gen.raw_text)
        assert len(calls) == 1 and calls[0].error is None, gen.raw_text
        call = calls[0]
        assert call.name in registry
        registry.get(call.name).parse_arguments(call.arguments)  # raises if the arguments are invalid
        return str(call.name), registry.call(call.name, call.arguments)


def test_default_model_lists_a_folder_of_an_unseen_workspace(tmp_path: Path) -> None:
    ws = make_workspace(random.Random("held-out:package-test"), tmp_path)
    folder = ws.folders[0]
    name, result = _first_call(f"What is in {folder}?", tmp_path)
    assert name == "list_dir"
    assert not result.is_error and all(e in result.text for e in ws.entries(folder))


@pytest.mark.slow
def test_default_model_finds_a_definition_through_the_agent(tmp_path: Path) -> None:
    """A whole turn through the real Agent: grep, then an answer that names the right file."""
    from hybrid_agent.agent import Agent

    ws = make_workspace(random.Random("held-out:agent-test"), tmp_path / "ws")
    fn = ws.functions[0]
    agent = Agent.open(db=str(tmp_path / "s.db"), workspace=ws.root, mode="auto")
    try:
        text = "".join(getattr(ev, "text", "") for ev in agent.send_sync(f"Where is {fn.name} defined?")
                       if ev.kind == "text")  # fmt: skip
    finally:
        agent.close()
    assert fn.path in text
