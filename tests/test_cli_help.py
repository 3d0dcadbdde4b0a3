import subprocess
import sys


def test_help_works() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "agent.cli", "--help"], capture_output=True, text=True, check=True
    )
    assert "hybrid-agent" in out.stdout
    assert "run" in out.stdout and "sessions" in out.stdout
