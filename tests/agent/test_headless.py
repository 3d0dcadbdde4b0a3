"""The headless protocol (agent/headless.py, agent/headless_schema.py): Claude Code's stream-json and
json objects from the agent's events, stream-json input, and docs/headless.md generated from the
models. The scripted engine (tests/agent/conftest.py) drives tool calls; a tiny real model drives the
command line in this process."""

from __future__ import annotations

import io
import json
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from hybrid_agent.agent.cli import main
from hybrid_agent.agent.headless import TurnWriter, init_message
from hybrid_agent.agent.headless_schema import (
    AssistantMessage,
    ResultMessage,
    SystemInit,
    SystemNotice,
    UserMessage,
    render_doc,
)
from hybrid_agent.model.config import HybridConfig
from hybrid_agent.model.hybrid import HybridLM

ROOT = Path(__file__).resolve().parents[2]
MODELS = {"assistant": AssistantMessage, "user": UserMessage, "result": ResultMessage, "system": SystemNotice}


def test_the_doc_is_generated_from_the_models() -> None:
    doc = (ROOT / "docs" / "headless.md").read_text(encoding="utf-8")
    assert doc == render_doc(), "regenerate: python -m hybrid_agent.agent.headless_schema > docs/headless.md"
    for name in (
        "SystemInit",
        "AssistantMessage",
        "UserMessage",
        "StreamEvent",
        "ResultMessage",
        "UserInput",
    ):
        assert f"## {name} (" in doc


def call_tool(name: str, **arguments: Any) -> str:
    return "<|tool_call|>" + json.dumps({"name": name, "arguments": arguments}) + "<|/tool_call|>"


def lines(text: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in text.splitlines()]


def test_tool_calls_results_and_denials_in_claude_codes_shapes(
    make_agent: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    replies = [
        "Let me look." + call_tool("read_file", path="a.txt"),
        call_tool("write_file", path="a.txt", content="x"),  # asks: no one approves it
        "It says hello.<|end|>",
    ]
    agent, _ = make_agent(replies)  # mode "ask", no approval callback
    init = init_message(agent)
    assert (
        init.permissionMode == "default" and "read_file" in init.tools and init.session_id == agent.session_id
    )
    writer = TurnWriter(agent, stream=True, partial=False)
    agent.send_sync("what is in a.txt?", on_event=writer)
    writer.finish()
    out = lines(capsys.readouterr().out)
    for obj in out:  # every line is one of the documented objects, exactly
        assert MODELS[obj["type"]].model_validate(obj).model_dump(mode="json") == obj
        # and begins with Claude Code's keys in its order (agent/headless_schema.py's envelopes)
        head = ["type", "subtype", "uuid", "session_id"] if obj["type"] in ("system", "result") else [
            "type", "uuid", "session_id", "parent_tool_use_id"]  # fmt: skip
        assert list(obj)[:4] == head
    assert list(init.model_dump())[:4] == ["type", "subtype", "uuid", "session_id"]
    progress = [o for o in out if o["type"] == "system"]  # reading the system prompt, in chunks
    assert {o["subtype"] for o in progress} <= {"prefill_progress"}
    out = [o for o in out if o["type"] != "system"]
    kinds = [(o["type"], [b["type"] for b in o["message"]["content"]]) if "message" in o else (o["type"], [])
             for o in out]  # fmt: skip
    assert kinds == [
        ("assistant", ["text"]), ("assistant", ["tool_use"]), ("user", ["tool_result"]),
        ("assistant", ["tool_use"]), ("user", ["tool_result"]), ("assistant", ["text"]), ("result", []),
    ]  # fmt: skip
    uses = [o["message"]["content"][0] for o in out if o["type"] == "assistant"][1:3]
    results = [o["message"]["content"][0] for o in out if o["type"] == "user"]
    assert [u["id"] for u in uses] == [r["tool_use_id"] for r in results]
    assert uses[0]["name"] == "read_file" and uses[0]["input"] == {"path": "a.txt"}
    assert "hello from a" in results[0]["content"] and results[1]["is_error"]
    result = out[-1]
    assert (result["subtype"], result["is_error"], result["result"]) == ("success", False, "It says hello.")
    assert result["num_turns"] == 3 and result["session_id"] == agent.session_id and result["turn"] == 1
    assert result["permission_denials"] == [
        {
            "tool_name": "write_file",
            "tool_use_id": uses[1]["id"],
            "tool_input": {"path": "a.txt", "content": "x"},
        }
    ]
    assert result["usage"]["input_tokens"] > 0 and result["usage"]["output_tokens"] > 0
    assert out[-2]["message"]["stop_reason"] == "end_turn"


def test_the_tool_round_limit_is_error_max_turns(make_agent: Any, capsys: pytest.CaptureFixture[str]) -> None:
    agent, _ = make_agent([call_tool("read_file", path="a.txt")] * 3, max_tool_rounds=1)
    writer = TurnWriter(agent, stream=False, partial=False)  # --output-format json: the result only
    agent.send_sync("loop", on_event=writer)
    writer.finish()
    (result,) = lines(capsys.readouterr().out)
    assert (result["subtype"], result["is_error"], result["stop_reason"]) == (
        "error_max_turns", True, "max_tool_rounds")  # fmt: skip


@pytest.fixture
def model_args(tmp_path: Path) -> list[str]:
    torch.manual_seed(1)
    cfg = HybridConfig(vocab_size=267, d_model=32, layer_types=["mamba2", "attention"])
    HybridLM(cfg).save_pretrained(tmp_path / "model")
    (tmp_path / "ws").mkdir()
    return ["--model", str(tmp_path / "model"), "--db", str(tmp_path / "s.db"), "--workspace",
            str(tmp_path / "ws"), "--max-new-tokens", "4"]  # fmt: skip


def stdin_of(monkeypatch: pytest.MonkeyPatch, data: bytes) -> None:
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(data), encoding="utf-8"))


def user_line(text: str) -> bytes:
    return json.dumps({"type": "user", "message": {"role": "user", "content": text}}).encode() + b"\n"


def test_stream_json_input_runs_each_line_as_a_turn_and_stops_at_a_bad_line(
    model_args: list[str], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    content = [{"type": "text", "text": "two"}]
    blocks = json.dumps(
        {"type": "user", "session_id": "ignored", "message": {"role": "user", "content": content}}
    )
    stdin_of(monkeypatch, user_line("one") + b"\n" + blocks.encode() + b"\n{not json\n" + user_line("never"))
    code = main(["run", "--input-format", "stream-json", "--output-format", "stream-json", *model_args])
    out = lines(capsys.readouterr().out)
    assert code == 1
    init = SystemInit.model_validate(out[0])
    results = [ResultMessage.model_validate(o) for o in out if o["type"] == "result"]
    assert [(r.subtype, r.turn) for r in results] == [
        ("success", 1), ("success", 2), ("error_during_execution", None)]  # fmt: skip
    assert {r.session_id for r in results} == {init.session_id}
    assert results[2].errors[0].startswith("stdin line 4 is not a user message")
    main(["sessions", "show", init.session_id, *model_args[2:4]])
    shown = capsys.readouterr().out
    assert "[1] user: one" in shown and "[2] user: two" in shown and "never" not in shown


def test_json_prints_the_result_only_and_bad_combinations_are_refused(
    model_args: list[str], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["run", "hello", "--output-format", "json", *model_args]) == 0
    (result,) = lines(capsys.readouterr().out)
    assert result["type"] == "result" and result["subtype"] == "success" and result["turn"] == 1
    for argv, says in [
        (["--input-format", "stream-json"], "needs --output-format stream-json"),
        (["hi", "--input-format", "stream-json", "--json"], "give no prompt"),
        (["hi", "--include-partial-messages"], "needs --output-format stream-json"),
    ]:
        assert main(["run", *argv, *model_args]) == 1
        err = capsys.readouterr().err
        assert says in err and len(err.splitlines()) == 1, err
    stdin_of(monkeypatch, b"\xff\xfe\n")
    assert main(["run", "--input-format", "stream-json", "--json", *model_args]) == 1
    out = lines(capsys.readouterr().out)
    assert out[-1]["errors"] == ["stdin line 1 is not UTF-8 text (byte 0: invalid start byte)"]
