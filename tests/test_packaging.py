"""The distribution's layout: one top-level import name, `hybrid_agent`, whose subpackages are the
repository's top-level folders (pyproject.toml's package-dir), every one of them listed."""

from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SETUPTOOLS = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]


def _folder(package: str) -> Path:
    """Where package-dir puts `package` (the longest mapped prefix wins, as in setuptools)."""
    dirs = SETUPTOOLS["package-dir"]
    head = max((k for k in dirs if package == k or package.startswith(k + ".")), key=len)
    return REPO / dirs[head] / Path(*package[len(head) + 1 :].split(".") if package != head else ())


def test_every_package_folder_is_listed_and_nothing_else() -> None:
    listed = set(SETUPTOOLS["packages"])
    assert all(name == "hybrid_agent" or name.startswith("hybrid_agent.") for name in listed)
    found = set()
    for name, folder in SETUPTOOLS["package-dir"].items():
        for init in (REPO / folder).rglob("__init__.py"):
            rel = init.parent.relative_to(REPO / folder)
            found.add(".".join((name, *rel.parts)))
    assert found == listed
    for package in listed:
        assert (_folder(package) / "__init__.py").is_file(), package


def test_entry_points_name_the_namespace() -> None:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    assert project["scripts"]["hybrid-agent"] == "hybrid_agent.cli:main"
    assert project["entry-points"]["hybrid_agent.tools"]["builtin"].startswith("hybrid_agent.tools.")


def test_import_hybrid_agent_is_light_and_exposes_the_public_names(tmp_path: Path) -> None:
    code = (
        "import sys, hybrid_agent; assert 'torch' not in sys.modules, 'import hybrid_agent loaded torch'\n"
        "from hybrid_agent import Agent, Store, load_model, tool, HybridConfig, HybridLM, ModelState\n"
        "print(Agent.__module__, Store.__module__, load_model.__module__, tool.__module__)"
    )
    cmd = [sys.executable, "-c", code]
    out = subprocess.run(cmd, capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == [
        "hybrid_agent.agent.loop",
        "hybrid_agent.memory.store",
        "hybrid_agent.model.checkpoints.loader",
        "hybrid_agent.tools.base",
    ]
