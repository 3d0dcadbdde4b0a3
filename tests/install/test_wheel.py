"""The built wheel on a clean machine (`make test-install`; CI runs it after the default suite).

Each test makes a throwaway venv and installs into it from the package index, as a new user would:
- the wheel alone (no dev extras), pinned by requirements.lock: `hybrid-agent --version` and one
  headless turn with the shipped default model;
- the wheel beside the newest `transformers` and Hugging Face's `kernels` distribution, whose top-level
  name `kernels` this project's folder `kernels/` once shadowed: all three import and the CLI runs.

HYBRID_AGENT_TEST_PYTHONS (interpreters separated by ':') adds Python versions to the clean-venv test;
CI passes 3.12 and 3.13 there.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest

# Each test installs torch into a new venv (for a Python whose CPU wheel the index lacks, its ~3 GB CUDA
# build), far longer than the suite's default per-test limit.
pytestmark = [pytest.mark.install, pytest.mark.timeout(2400)]

REPO = Path(__file__).resolve().parents[2]
LOCK = REPO / "requirements.lock"
PIP_TIMEOUT_S = 1200  # torch's CUDA build for Python versions whose CPU wheel the index lacks is ~3 GB
EXTRA_PYTHONS = [p for p in os.environ.get("HYBRID_AGENT_TEST_PYTHONS", "").split(":") if p]


def _run(cmd: list[str], *, cwd: Path, timeout: float = 300, env: dict[str, str] | None = None) -> str:
    out = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=timeout, env=env)
    assert out.returncode == 0, f"{' '.join(map(str, cmd))} -> {out.returncode}\n{out.stdout}\n{out.stderr}"
    return out.stdout


def _source_files() -> list[str]:
    """The files a clean clone has: tracked ones plus new ones git does not ignore (no build/ leftovers)."""
    out = _run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=REPO)
    return [f for f in out.split("\0") if f and (REPO / f).is_file()]


@pytest.fixture(scope="session")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if shutil.which("git") is None or not (REPO / ".git").exists():
        pytest.skip("building the wheel from a clean copy needs a git checkout")
    src = tmp_path_factory.mktemp("src")
    for rel in _source_files():
        (src / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO / rel, src / rel)
    dist = tmp_path_factory.mktemp("dist")
    build = [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation"]
    _run([*build, "-w", str(dist), str(src)], cwd=src, timeout=600)
    (found,) = dist.glob("hybrid_agent-*.whl")
    return found


def _venv(where: Path, python: str) -> Path:
    _run([python, "-m", "venv", str(where)], cwd=where.parent)
    return where / "bin"


def _pip(bin_dir: Path, *args: str) -> None:
    _run([str(bin_dir / "python"), "-m", "pip", "install", "-q", *args], cwd=bin_dir, timeout=PIP_TIMEOUT_S)


def _locked_version(name: str) -> str:
    found = re.search(rf"^{re.escape(name)}==([^\s;]+)", LOCK.read_text(), re.M)
    assert found, f"{name} is not pinned in {LOCK.name}"
    return found[1]


def test_the_wheel_installs_one_import_name_with_its_data(wheel: Path) -> None:
    names = zipfile.ZipFile(wheel).namelist()
    top = {n.split("/", 1)[0] for n in names}
    dist_info = {t for t in top if t.endswith(".dist-info")}
    assert top - dist_info == {"hybrid_agent"}
    for data in (
        "hybrid_agent/model/default/model.safetensors",
        "hybrid_agent/model/default/tokenizer.json",
        "hybrid_agent/model/default/config.json",
        "hybrid_agent/tui/app.tcss",
        "hybrid_agent/memory/migrations/script.py.mako",
        "hybrid_agent/memory/migrations/versions/0001_initial.py",
        "hybrid_agent/kernels/triton_gemv.py",
    ):
        assert data in names, f"{data} is missing from {wheel.name}"
    assert not [n for n in names if n.startswith(("tests/", "bench/", "scripts/")) or "__pycache__" in n]
    (entry_points,) = [n for n in names if n.endswith(".dist-info/entry_points.txt")]
    text = zipfile.ZipFile(wheel).read(entry_points).decode()
    assert "hybrid-agent = hybrid_agent.cli:main" in text
    assert "builtin = hybrid_agent.tools.builtins:BUILTIN_TOOLS" in text


def _pythons() -> Iterator[str]:
    yield sys.executable
    yield from EXTRA_PYTHONS


@pytest.mark.parametrize("python", list(_pythons()), ids=lambda p: Path(p).name)
def test_a_clean_venv_without_dev_extras_runs_a_turn(wheel: Path, tmp_path: Path, python: str) -> None:
    bin_dir = _venv(tmp_path / "venv", python)
    _pip(bin_dir, "-c", str(LOCK), "pip", "setuptools")
    _pip(bin_dir, "-c", str(LOCK), str(wheel))
    installed = _run([str(bin_dir / "python"), "-m", "pip", "list", "--format=json"], cwd=tmp_path)
    names = {d["name"].lower() for d in json.loads(installed)}
    assert "hybrid-agent" in names and "pytest" not in names and "transformers" not in names

    # Outside the repository, so nothing of the checkout can be imported by accident.
    work = tmp_path / "project"
    work.mkdir()
    (work / "notes.txt").write_text("the answer is 42\n")
    version = _run([str(bin_dir / "hybrid-agent"), "--version"], cwd=work)
    assert version.strip() == f"hybrid-agent {wheel.name.split('-')[1]}"
    where = _run([str(bin_dir / "python"), "-c", "import hybrid_agent as h; print(h.__file__)"], cwd=work)
    assert Path(where.strip()).is_relative_to(tmp_path / "venv")

    env = {**os.environ, "XDG_DATA_HOME": str(tmp_path / "data"), "HOME": str(tmp_path)}
    env.pop("HYBRID_AGENT_DEFAULT_MODEL", None)
    cmd = [str(bin_dir / "hybrid-agent"), "run", "What is in notes.txt?", "--json", "--yes"]
    cmd += ["--max-new-tokens", "48", "--db", str(tmp_path / "s.db")]
    out = _run(cmd, cwd=work, env=env, timeout=600)
    events = [json.loads(line) for line in out.splitlines()]
    assert events, "no events"
    assert events[0]["type"] == "system" and events[-1]["type"] == "result", events[-1]
    cmd = [str(bin_dir / "hybrid-agent"), "sessions", "--json", "--db", str(tmp_path / "s.db")]
    listed = _run(cmd, cwd=work)
    (session,) = [json.loads(line) for line in listed.splitlines()]
    assert session["turns"] == 1


def test_beside_the_newest_transformers_and_kernels(wheel: Path, tmp_path: Path) -> None:
    bin_dir = _venv(tmp_path / "venv", sys.executable)
    # Only torch is held to the lock (its CPU build where the index serves one); the rest is the newest.
    torch_pin = tmp_path / "torch.txt"
    torch_pin.write_text(f"torch=={_locked_version('torch')}\n")
    _pip(bin_dir, "-c", str(torch_pin), "--upgrade", str(wheel), "transformers", "kernels")
    check = """
import importlib.metadata as md, pathlib, sys
import hybrid_agent, kernels, transformers
from hybrid_agent.kernels import rms_norm            # ours, by its full name
from transformers.integrations import hub_kernels    # imports `kernels`: theirs
site = pathlib.Path(hybrid_agent.__file__).parents[1]
assert pathlib.Path(kernels.__file__).parent == site / "kernels", kernels.__file__
assert 'kernels/__init__.py' in {str(f) for f in md.distribution('kernels').files}
assert hasattr(kernels, 'get_kernel'), dir(kernels)
print(transformers.__version__, md.version('kernels'))
"""
    out = _run([str(bin_dir / "python"), "-c", check], cwd=tmp_path)
    transformers_version, _kernels_version = out.split()
    newest = _run([str(bin_dir / "python"), "-m", "pip", "index", "versions", "transformers"], cwd=tmp_path)
    assert f"transformers ({transformers_version})" in newest, newest
    version = _run([str(bin_dir / "hybrid-agent"), "--version"], cwd=tmp_path)
    assert version.startswith("hybrid-agent ")
