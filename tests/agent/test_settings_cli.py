"""The settings on the command line (agent/config_commands.py): `config show`, `config path`, `trust`,
settings as the flags' defaults, `--permission-mode` and `--continue`, through the real entry point."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import pytest
from hybrid_agent.agent.errors import AgentError
from hybrid_agent.agent.settings import is_trusted, read_file

from hybrid_agent.cli import main

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def ws(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("HYBRID_AGENT_CONFIG_DIR", str(tmp_path / "config"))
    (tmp_path / "config").mkdir()
    folder = tmp_path / "ws"
    (folder / ".hybrid-agent").mkdir(parents=True)
    return folder


def call(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_config_path_show_and_trust(ws: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "config" / "settings.toml").write_text('device = "cpu"\ntemperature = 0.5\n')
    (ws / ".hybrid-agent" / "settings.toml").write_text(
        'temperature = 0.25\n[permissions]\nallow = ["run_command(pytest:*)"]\ndeny = ["read_file(.env)"]\n'
    )
    code, out, err = call(capsys, "config", "path", "--workspace", str(ws))
    assert code == 0 and err == ""
    assert out.splitlines() == [
        f"user     {tmp_path / 'config' / 'settings.toml'}",
        f"project  {ws / '.hybrid-agent' / 'settings.toml'}",
        f"local    {ws / '.hybrid-agent' / 'settings.local.toml'}",
    ]
    code, out, err = call(capsys, "config", "show", "--workspace", str(ws), "--window", "64")
    assert code == 0
    assert "# this folder is not trusted" in out
    assert 'device = "cpu"  # user' in out and "temperature = 0.25  # project" in out
    assert "window = 64  # cli" in out and 'permissions.deny = "read_file(.env)"  # project' in out
    assert "pytest:*" not in out  # an allow rule of an untrusted folder
    [warning] = err.splitlines()
    assert warning.startswith("hybrid-agent: warning: ") and "permissions.allow" in warning

    code, out, _ = call(capsys, "trust", str(ws))
    assert code == 0 and f"{ws} is now trusted" in out
    code, out, err = call(capsys, "config", "--json", "--workspace", str(ws))  # no action: show
    data = json.loads(out)
    assert code == 0 and err == "" and data["trusted"] is True
    assert data["files"]["local"] == {
        "path": str(ws / ".hybrid-agent" / "settings.local.toml"),
        "exists": False,
    }
    assert {"key": "permissions.allow", "value": "run_command(pytest:*)", "source": "project"} in data[
        "values"
    ]
    assert {"key": "temperature", "value": 0.25, "source": "project"} in data["values"]


def test_a_bad_settings_file_is_one_error_line(ws: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = ws / ".hybrid-agent" / "settings.local.toml"
    path.write_text("[permissions]\nallow = 'write_file'\n")
    for argv in (["config", "show"], ["run", "hi"], ["sessions", "list"]):
        code, out, err = call(capsys, *argv, "--workspace", str(ws))
        assert code == 1 and out == "", argv
        assert err.splitlines() == [
            f"hybrid-agent: error: {path}: key `permissions.allow`: Input should be a valid list"
        ]


def test_settings_are_the_defaults_and_flags_win(
    ws: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    (ws / ".hybrid-agent" / "settings.toml").write_text(
        'model = "some/model"\nmax_new_tokens = 7\npermission_mode = "accept-edits"\nenable_commands = true\n'
        "mention_max_bytes = 100\nproject_memory_max_bytes = 0\n"
        '[permissions]\ndeny = ["run_command(rm:*)"]\n'
    )
    seen: list[dict[str, Any]] = []

    def fake_open(cls: Any, **options: Any) -> Any:
        seen.append(options)
        raise AgentError("stopped here")

    monkeypatch.setattr("hybrid_agent.agent.factory.open_agent", fake_open)
    assert call(capsys, "run", "hi", "--workspace", str(ws), "--yes")[0] == 1
    assert (
        call(capsys, "run", "hi", "--workspace", str(ws), "--max-new-tokens", "3", "--model", "x/y")[0] == 1
    )
    assert call(capsys, "run", "hi", "--workspace", str(ws), "--permission-mode", "ask")[0] == 1
    first, second, third = seen
    assert (first["model"], first["max_new_tokens"], first["mode"], first["enable_commands"]) == (
        "some/model", 7, "auto", True)  # fmt: skip
    assert (first["sinks"], first["temperature"]) == (4, 0.0)  # the built-in defaults
    assert (first["mention_max_bytes"], first["project_memory_max_bytes"]) == (100, 0)
    verdict = first["permissions"].check("run_command", {"command": "rm -rf x"})
    assert (
        verdict is not None and verdict.action == "deny"
    )  # under --yes too (tests/agent/test_permissions.py)
    assert (second["model"], second["max_new_tokens"], second["mode"]) == ("x/y", 3, "accept-edits")
    assert third["mode"] == "ask"


def test_continue_resumes_the_workspaces_latest_session(
    ws: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from hybrid_agent.memory import Store

    db = str(tmp_path / "s.db")
    with Store(db) as store:
        store.create_session(workspace=str(tmp_path), model_fingerprint="f", title="elsewhere")
        older = store.create_session(workspace=str(ws), model_fingerprint="f", title="older").id
        newer = store.create_session(workspace=str(ws), model_fingerprint="f", title="newer").id
        store.rename_session(older, "touched last")  # most recent first: the last one updated
    import hybrid_agent.tui.app as app

    opened: list[dict[str, Any]] = []
    monkeypatch.setattr(app, "run_app", lambda options, **kw: opened.append({**options, **kw}) or 0)
    monkeypatch.setattr("hybrid_agent.agent.factory.resolve_model_dir", lambda path: "m")
    monkeypatch.setattr("hybrid_agent.agent.factory.check_device", lambda device: None)
    monkeypatch.setattr(sys.stdin, "isatty", lambda: True)
    monkeypatch.setattr(sys.stdout, "isatty", lambda: True)
    code, _, err = call(capsys, "--db", db, "--workspace", str(ws), "--continue", "--permission-mode", "auto")
    assert code == 0, err
    assert [(o["resume"], o["mode"]) for o in opened] == [(older, "auto")] and newer != older
    assert opened[0].get("pick_session", False) is False
    code, _, err = call(capsys, "--db", db, "--workspace", str(ws), "-c")  # the short form
    assert code == 0, err
    assert opened[-1]["resume"] == older
    code, _, err = call(capsys, "--db", db, "--workspace", str(ws), "--resume")  # no id: the picker
    assert code == 0, err
    assert (opened[-1].get("resume"), opened[-1]["pick_session"]) == (None, True)
    code, _, err = call(capsys, "--db", db, "--workspace", str(ws), "--resume", newer[:8])
    assert code == 0, err
    assert (opened[-1]["resume"], opened[-1].get("pick_session", False)) == (newer, False)
    code, out, err = call(capsys, "run", "hi", "--db", db, "--workspace", str(ws), "--resume")
    assert (code, out) == (1, "") and err.strip() == (
        "hybrid-agent: error: run --resume needs a session id: `hybrid-agent sessions list` shows them"
    )
    code, _, err = call(capsys, "run", "hi", "--db", db, "--workspace", str(ws), "-c", "--resume")
    assert code == 1 and "run --resume needs a session id" in err
    code, _, err = call(capsys, "--db", db, "--workspace", str(ws / ".hybrid-agent"), "--continue")
    assert code == 1 and "no saved session in" in err and "start one without --continue" in err
    code, _, err = call(capsys, "--db", db, "--workspace", str(ws), "--continue", "--resume", newer)
    assert code == 1 and "not both" in err


def test_the_installed_command_prints_the_paths(tmp_path: Path) -> None:
    env = {**os.environ, "HYBRID_AGENT_CONFIG_DIR": str(tmp_path)}
    out = subprocess.run(
        [sys.executable, "-m", "hybrid_agent", "config", "path", "--workspace", str(tmp_path)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines()[0] == f"user     {tmp_path / 'settings.toml'}"


def test_the_example_in_docs_is_valid() -> None:
    path = ROOT / "docs" / "settings.example.toml"
    data = read_file(path)
    assert data == tomllib.loads(path.read_text())
    assert {"permissions", "mcp_servers", "hooks", "sandbox", "sandbox_network", "sandbox_allow_read"} <= set(
        data
    )


@pytest.mark.parametrize("accept", [True, False])
def test_the_ui_asks_to_trust_a_folder_first(
    ws: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, accept: bool
) -> None:
    """The UI is handed the question (tui/screens/trust.py asks it: tests/tui/test_tui_trust.py): what
    each file would enable; accepting records the trust and gives options with those settings."""
    import hybrid_agent.tui.app as app

    (ws / ".hybrid-agent" / "settings.toml").write_text(
        '[permissions]\nallow = ["run_command(make:*)"]\ndeny = ["read_file(.env)"]\n'
        '[[hooks.Stop]]\ncommand = "make notify"\n[mcp_servers.gh]\ncommand = "gh-mcp"\nargs = ["--ro"]\n'
    )
    (ws / ".hybrid-agent" / "settings.local.toml").write_text(
        'sandbox = "off"\nsandbox_allow_read = ["~/x"]\n'
    )
    opened: list[tuple[dict[str, Any], Any]] = []
    monkeypatch.setattr(app, "run_app", lambda options, trust, **kw: opened.append((options, trust)) or 0)
    monkeypatch.setattr("hybrid_agent.agent.factory.resolve_model_dir", lambda path: "m")
    monkeypatch.setattr("hybrid_agent.agent.factory.check_device", lambda device: None)
    monkeypatch.setattr(sys.stdin, "isatty", lambda: True)
    monkeypatch.setattr(sys.stdout, "isatty", lambda: True)
    code, _, err = call(capsys, "--workspace", str(ws), "--db", str(ws / "s.db"))
    assert code == 0 and err == ""  # no terminal prompt, no warning lines: the UI asks
    [(options, question)] = opened
    assert question.folder == ws.resolve()
    assert [(p.name, items) for p, items in question.files] == [
        (
            "settings.toml",
            [
                "run the Stop hook `make notify`",
                "start the MCP server gh: `gh-mcp --ro`",
                "allow without asking: run_command(make:*)",
            ],
        ),
        (
            "settings.local.toml",
            ['run commands without the sandbox (sandbox = "off")', "let commands read ~/x"],
        ),
    ]
    if accept:
        options = question.accept()
    make = {"command": "make all"}
    assert (options["permissions"].check("run_command", make) is not None) is accept
    assert options["permissions"].check("read_file", {"path": ".env"}).action == "deny"  # either way
    assert bool(options["hooks"].hooks["Stop"]) is accept and bool(options["mcp_servers"]) is accept
    assert (options["sandbox"].mode == "off") is accept
    assert is_trusted(ws) is accept


def test_the_sandbox_settings_reach_run_command(ws: Path, tmp_path: Path) -> None:
    """`sandbox*` keys become the tool registry's SandboxPolicy (tools/sandbox.py) through the options
    `run` and the UI open the agent with; an untrusted folder cannot relax it."""
    from hybrid_agent.agent.cli import parse_args
    from hybrid_agent.agent.commands import _agent_options
    from hybrid_agent.agent.settings import trust

    (ws / ".hybrid-agent" / "settings.toml").write_text(
        'sandbox = "read-only"\nsandbox_network = true\nsandbox_allow_read = ["/opt/tools"]\n'
    )
    policy = _agent_options(parse_args(["run", "--workspace", str(ws), "hi"]))["sandbox"]
    assert (policy.mode, policy.network, tuple(policy.allow_read)) == ("read-only", False, ())
    trust(ws)
    policy = _agent_options(parse_args(["run", "--workspace", str(ws), "hi"]))["sandbox"]
    assert (policy.mode, policy.network, tuple(policy.allow_read)) == ("read-only", True, ("/opt/tools",))
