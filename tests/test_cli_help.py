import subprocess
import sys


def test_help_works() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "hybrid_agent", "--help"], capture_output=True, text=True, check=True
    )
    assert "hybrid-agent" in out.stdout
    assert "run" in out.stdout and "sessions" in out.stdout


def test_version_names_the_installed_distribution() -> None:
    from importlib import metadata

    out = subprocess.run([sys.executable, "-m", "hybrid_agent", "--version"], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == f"hybrid-agent {metadata.version('hybrid-agent')}"


def _no_ui(stdin: int | None, stdout: int | None, *args: str) -> subprocess.CompletedProcess[str]:
    """`hybrid-agent` without a subcommand; the timeout is the hang this guards against."""
    return subprocess.run(
        [sys.executable, "-m", "hybrid_agent", *args],
        stdin=stdin,
        stdout=stdout,
        stderr=subprocess.PIPE,
        text=True,
        timeout=60,
    )


def test_no_terminal_on_stdin_says_use_run_and_exits_2() -> None:
    out = _no_ui(subprocess.DEVNULL, subprocess.PIPE)
    assert out.returncode == 2
    assert out.stdout == ""
    assert out.stderr.splitlines() == [
        "hybrid-agent: the terminal UI needs a terminal on stdin and stdout; without one, use "
        '`hybrid-agent run "PROMPT"`'
    ]


def test_no_terminal_on_stdout_alone_exits_2_too() -> None:
    import os
    import pty

    leader, follower = pty.openpty()  # stdin is a terminal, stdout a pipe
    try:
        out = _no_ui(follower, subprocess.PIPE, "--resume", "abc")
    finally:
        os.close(leader)
        os.close(follower)
    assert out.returncode == 2
    assert "hybrid-agent run" in out.stderr and len(out.stderr.splitlines()) == 1
