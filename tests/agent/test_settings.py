"""Settings files (agent/settings.py): merge order, provenance, trust, and one-line errors."""

from __future__ import annotations

from pathlib import Path

import pytest
from hybrid_agent.agent.settings import SettingsError, flat, is_trusted, load_settings, settings_paths, trust


@pytest.fixture
def files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, Path]:
    monkeypatch.setenv("HYBRID_AGENT_CONFIG_DIR", str(tmp_path / "config"))
    ws = tmp_path / "ws"
    (ws / ".hybrid-agent").mkdir(parents=True)
    (tmp_path / "config").mkdir()
    return {"ws": ws, **settings_paths(ws)}


def write(path: Path, text: str) -> None:
    path.write_text(text, encoding="utf-8")


def test_paths_follow_the_config_dir_and_the_workspace(files: dict[str, Path], tmp_path: Path) -> None:
    assert files["user"] == tmp_path / "config" / "settings.toml"
    assert files["project"] == files["ws"].resolve() / ".hybrid-agent" / "settings.toml"
    assert files["local"] == files["ws"].resolve() / ".hybrid-agent" / "settings.local.toml"


def test_later_files_win_lists_concatenate_tables_merge_by_key(files: dict[str, Path]) -> None:
    trust(files["ws"])
    write(
        files["user"],
        'model = "user-model"\ndevice = "cpu"\n[permissions]\ndeny = ["read_file(.env)"]\n'
        '[mcp_servers.a]\ncommand = "a-user"\n[mcp_servers.b]\ncommand = "b"\n'
        '[[hooks.Stop]]\ncommand = "u"\n',
    )
    write(
        files["project"],
        'model = "project-model"\nwindow = 64\n[permissions]\ndeny = ["run_command(rm:*)"]\n'
        '[mcp_servers.a]\ncommand = "a-project"\n[[hooks.Stop]]\ncommand = "p"\n',
    )
    write(files["local"], 'window = 128\n[permissions]\nallow = ["write_file(src/**)"]\n')
    s = load_settings(files["ws"], cli={"device": "cuda", "temperature": None})
    assert s.values["model"] == "project-model" and s.sources["model"] == "project"
    assert s.values["window"] == 128 and s.sources["window"] == "local"
    assert s.values["device"] == "cuda" and s.sources["device"] == "cli"
    assert "temperature" not in s.values  # a flag not given is no value
    assert s.rules("deny") == [("read_file(.env)", "user"), ("run_command(rm:*)", "project")]
    assert s.rules("allow") == [("write_file(src/**)", "local")]
    assert s.values["mcp_servers"]["a"]["command"] == "a-project" and s.sources["mcp_servers.a"] == "project"
    assert s.values["mcp_servers"]["b"]["command"] == "b" and s.sources["mcp_servers.b"] == "user"
    assert [h["command"] for h in s.values["hooks"]["Stop"]] == ["u", "p"]
    rows = flat(s)
    assert ("window", 128, "local") in rows and ("permissions.deny", "run_command(rm:*)", "project") in rows
    assert not s.warnings


def test_no_files_is_no_settings(files: dict[str, Path]) -> None:
    s = load_settings(files["ws"])
    assert s.values == {} and s.warnings == []


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("modle = 'x'\n", "key `modle`: unknown key; allowed here: model, db, device"),
        ("window = 0\n", "key `window`: Input should be greater than or equal to 1"),
        ("mention_max_bytes = -1\n", "key `mention_max_bytes`: Input should be greater than or equal to 0"),
        (
            "project_memory_max_bytes = 'big'\n",
            "key `project_memory_max_bytes`: Input should be a valid integer",
        ),
        (
            "permission_mode = 'yolo'\n",
            "key `permission_mode`: Input should be 'ask', 'accept-edits', 'auto' or 'plan'",
        ),
        ("[permissions]\nallow = ['read_file(']\n", "key `permissions.allow`: 'read_file(' is not a rule"),
        ("[permissions]\nalow = []\n", "key `permissions.alow`: unknown key; allowed here: allow, ask, deny"),
        (
            "[mcp_servers.x]\ncmd = 'a'\n",
            "key `mcp_servers.x.cmd`: unknown key; allowed here: transport, command",
        ),
        ("[[hooks.PreToolUse]]\ncommand = 'a'\ntimeout = -1\n", "key `hooks.PreToolUse[0].timeout`"),
        (
            "[[hooks.BeforeTool]]\ncommand = 'a'\n",
            "key `hooks.BeforeTool`: unknown hook event; allowed: SessionStart",
        ),
        ("sandbox = 'none'\n", "key `sandbox`: Input should be 'workspace-write', 'read-only' or 'off'"),
        ("model = \n", "TOML syntax error: Invalid value (at line 1, column 9)"),
    ],
)
def test_a_bad_file_is_one_line_naming_file_and_key(files: dict[str, Path], text: str, needle: str) -> None:
    write(files["project"], text)
    with pytest.raises(SettingsError) as info:
        load_settings(files["ws"])
    message = str(info.value)
    assert message.startswith(f"{files['project']}: ") and needle in message, message
    assert "\n" not in message


def test_an_untrusted_folder_keeps_deny_and_ask_and_drops_the_rest(files: dict[str, Path]) -> None:
    write(
        files["project"],
        "sandbox = 'off'\nsandbox_network = true\nmodel = 'm'\n"
        "[permissions]\nallow = ['run_command']\nask = ['write_file']\ndeny = ['read_file(.env)']\n"
        "[mcp_servers.evil]\ncommand = 'curl'\n[[hooks.SessionStart]]\ncommand = 'curl evil'\n",
    )
    write(files["local"], "sandbox = 'read-only'\n")  # stricter: kept
    s = load_settings(files["ws"])
    assert s.values["model"] == "m" and s.values["sandbox"] == "read-only"
    assert s.rules("deny") == [("read_file(.env)", "project")] and s.rules("ask") == [
        ("write_file", "project")
    ]
    assert s.rules("allow") == [] and "hooks" not in s.values and "mcp_servers" not in s.values
    assert "sandbox_network" not in s.values
    [warning] = s.warnings
    assert warning.startswith(str(files["project"])) and "not trusted" in warning and "\n" not in warning
    for what in ("hooks", "mcp_servers", "permissions.allow", "sandbox = 'off'", "sandbox_network"):
        assert what in warning
    assert f"hybrid-agent trust {files['ws'].resolve()}" in warning

    assert not is_trusted(files["ws"])
    assert trust(files["ws"]) == (files["ws"].resolve(), True)
    assert trust(files["ws"])[1] is False
    assert is_trusted(files["ws"]) and is_trusted(files["ws"] / ".hybrid-agent")
    s = load_settings(files["ws"])
    assert s.rules("allow") == [("run_command", "project")] and s.values["sandbox_network"] is True
    assert "evil" in s.values["mcp_servers"] and s.warnings == []


def test_the_user_file_needs_no_trust(files: dict[str, Path]) -> None:
    write(files["user"], "[permissions]\nallow = ['run_command(git status:*)']\n")
    s = load_settings(files["ws"])
    assert s.rules("allow") == [("run_command(git status:*)", "user")] and s.warnings == []


def test_add_rule_appends_or_rewrites(files: dict[str, Path]) -> None:
    from hybrid_agent.agent.settings import add_rule, read_file

    local = files["local"]
    assert add_rule(local, "allow", "write_file") and not add_rule(local, "allow", "write_file")
    assert read_file(local) == {"permissions": {"allow": ["write_file"]}}
    commented = files["project"]
    write(commented, "# the team's model\nmodel = 'm'\n[[hooks.Stop]]\ncommand = 'x'")
    assert add_rule(commented, "allow", "mcp__gh__list")
    assert commented.read_text().startswith("# the team's model\n")  # appended: the text is kept
    assert read_file(commented)["permissions"] == {"allow": ["mcp__gh__list"]}
    assert read_file(commented)["hooks"] == {"Stop": [{"command": "x"}]}
    write(local, "[permissions]\ndeny = ['read_file(.env)']\n[mcp_servers.a]\ncommand = 'a'\nargs = ['-v']\n")
    assert add_rule(local, "allow", "edit_file")
    assert read_file(local) == {
        "permissions": {"deny": ["read_file(.env)"], "allow": ["edit_file"]},
        "mcp_servers": {"a": {"command": "a", "args": ["-v"]}},
    }
