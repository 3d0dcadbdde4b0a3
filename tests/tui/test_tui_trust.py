"""The trust question (tui/screens/trust.py) through a pilot: the real CLI parsing, settings files,
trust record (agent/settings.py) and agent options (permission rules, hooks) the answer gives; the
agent is built on them with the scripted engine the other UI tests use (tui_testkit.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from hybrid_agent.agent.cli import parse_args
from hybrid_agent.agent.commands import tui_options
from hybrid_agent.agent.config_commands import trust_question
from hybrid_agent.agent.loop import Agent
from hybrid_agent.agent.settings import is_trusted
from hybrid_agent.memory import Store
from hybrid_agent.tui.app import HybridAgentApp
from hybrid_agent.tui.screens.trust import TrustScreen
from textual.widgets import Static
from tui_testkit import ScriptedEngine, ready, until


def scripted_factory_of(options: Any) -> Any:
    """The options' permission rules and hooks, the scripted engine instead of a model."""

    def factory(approval: Any) -> Agent:
        return Agent(
            ScriptedEngine(),
            Store(options["db"]),
            workspace=options["workspace"],
            approval=approval,
            permissions=options["permissions"],
            hooks=options["hooks"],
        )

    return factory


pytestmark = pytest.mark.anyio


@pytest.fixture
def folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    monkeypatch.setenv("HYBRID_AGENT_CONFIG_DIR", str(tmp_path / "config"))
    monkeypatch.setattr("hybrid_agent.agent.factory.resolve_model_dir", lambda path: "m")  # none opened
    ws = tmp_path / "ws"
    (ws / ".hybrid-agent").mkdir(parents=True)
    (ws / ".hybrid-agent" / "settings.toml").write_text(
        '[permissions]\nallow = ["write_file"]\n[[hooks.UserPromptSubmit]]\ncommand = "git status"\n'
    )
    args = parse_args(["--workspace", str(ws), "--db", str(tmp_path / "s.db")])
    options = tui_options(args)
    app = HybridAgentApp(scripted_factory_of(options), cursor_blink=False, system_clipboard=False)
    app.factory_of = scripted_factory_of  # type: ignore[method-assign]  # for the trusted options
    app.trust_question = trust_question(args, tui_options)
    return {"app": app, "ws": ws}


@pytest.mark.parametrize("key", ["y", "n"])
async def test_the_trust_question_comes_first_and_its_answer_decides(
    folder: dict[str, Any], key: str
) -> None:
    app, ws = folder["app"], folder["ws"]
    async with app.run_test(size=(110, 40)) as pilot:
        await until(pilot, lambda: isinstance(app.screen, TrustScreen), "the trust question")
        shown = "\n".join(str(w.render()) for w in app.screen.query(Static))
        assert "Trust this folder?" in shown and str(ws.resolve()) in shown
        assert "run the UserPromptSubmit hook `git status`" in shown
        assert "allow without asking: write_file" in shown
        assert app.bridge.agent is None  # nothing starts before the answer
        await pilot.press(key)
        await ready(pilot)
        agent = app.bridge.agent
        trusted = key == "y"
        assert is_trusted(ws) is trusted
        verdict = agent.permissions.check("write_file", {"path": "a.txt", "content": "x"})
        assert (verdict is not None and verdict.action == "allow") is trusted
        assert bool(agent.hooks.hooks["UserPromptSubmit"]) is trusted


async def test_no_question_in_a_trusted_folder(folder: dict[str, Any]) -> None:
    from hybrid_agent.agent.settings import trust

    trust(folder["ws"])
    args = parse_args(["--workspace", str(folder["ws"]), "--db", str(folder["ws"] / "s.db")])
    assert trust_question(args, tui_options) is None


async def test_the_buttons_answer_too(folder: dict[str, Any]) -> None:
    app, ws = folder["app"], folder["ws"]
    async with app.run_test(size=(110, 40)) as pilot:
        await until(pilot, lambda: isinstance(app.screen, TrustScreen), "the trust question")
        assert (
            app.screen.focused is not None and app.screen.focused.id == "trust-no"
        )  # enter is the safe answer
        await pilot.click("#trust-yes")
        await ready(pilot)
        assert is_trusted(ws)
