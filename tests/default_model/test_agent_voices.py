"""The training mix with voices and project workspaces (scripts/agent_voices.py, agent_projects.py,
agent_tasks_more.py): real tool results, the new kinds drawn, indirect names resolved by a call."""

from __future__ import annotations

import json
import random
import re
import sys
from collections import Counter
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "scripts"))
sys.path.insert(0, str(Path(__file__).parent))  # episode_kit

import agent_tasks  # noqa: E402
import agent_workspaces as aw  # noqa: E402
import make_agent_data as gen  # noqa: E402
from agent_projects import make_project  # noqa: E402
from agent_voices import typo  # noqa: E402
from episode_kit import calls_and_results as _calls_and_results  # noqa: E402
from hybrid_agent.tools import ToolRegistry  # noqa: E402

MIX = {"wide": 0.5, "voices": 0.7, "projects": 0.5}


@pytest.mark.parametrize("index", range(8))
def test_tool_results_are_real_in_the_new_mix(tmp_path: Path, index: int) -> None:
    """Replay the episode's calls on a rebuilt workspace: the same results and the same files."""
    ep = gen.make_episode(11, index, workdir=tmp_path / "episode", **MIX)
    calls, results = _calls_and_results(ep)
    before = aw.WIDE, aw.PROJECTS
    aw.WIDE, aw.PROJECTS = MIX["wide"], MIX["projects"]
    try:
        aw.make_workspace(gen.episode_rng(11, index), tmp_path / "replay")
    finally:
        aw.WIDE, aw.PROJECTS = before
    with ToolRegistry(workspace=tmp_path / "replay", load_plugins=False) as registry:
        for (name, args), expected in zip(calls, results, strict=True):
            assert registry.call(name, args).text == expected

    def tree(root: Path) -> dict[str, bytes]:
        return {str(p.relative_to(root)): p.read_bytes() for p in root.rglob("*") if p.is_file()}

    if (tmp_path / "episode").exists():
        assert tree(tmp_path / "replay") == tree(tmp_path / "episode")


def test_new_kinds_and_indirect_names_are_drawn() -> None:
    kinds: Counter[str] = Counter()
    globbed = 0
    for i in range(40):
        ep = gen.make_episode(2, i, **MIX)
        kinds.update(ep.kinds)
        text = ep.text()
        for m in re.finditer(
            r'"name": "glob", "arguments": (\{.*?\})\}<\|/tool_call\|><\|tool_result\|>(.*?)<', text
        ):
            globbed += 1
            assert json.loads(m.group(1))["pattern"].endswith(m.group(2).split("/")[-1])
    assert {"docs", "copy_value", "find_args", "missing", "multi_step"} <= set(kinds)
    assert globbed > 0


def test_voices_zero_is_the_generator_as_it_was() -> None:
    """--voices 0 --projects 0 draws nothing extra: the same episodes as before these options."""
    for i in range(4):
        assert gen.make_episode(9, i).pieces == gen.make_episode(9, i, voices=0.0, projects=0.0).pieces
    assert agent_tasks.VOICES == 0 and aw.PROJECTS == 0


def test_project_metadata_matches_its_files(tmp_path: Path) -> None:
    for i in range(20):
        ws = make_project(random.Random(i), tmp_path / f"p{i}")
        for c in ws.constants:
            assert ws.files[c.path].splitlines()[c.line - 1].startswith(f"{c.name} = ")
            assert c.value in ws.files[c.path].splitlines()[c.line - 1]
        for f in ws.functions:
            assert ws.files[f.path].splitlines()[f.line - 1].startswith(f"def {f.name}(")
        for rel, _topic, value in ws.docs:
            assert value in (ws.root / rel).read_text()


def test_typo_swaps_two_letters_of_a_plain_word_only() -> None:
    rng = random.Random(1)
    text = "Would you please change PAGE_SIZE to 7 in beacon/settings.py?"
    changed = 0
    for _ in range(100):
        out = typo(rng, text, ["PAGE_SIZE", "7", "beacon/settings.py"])
        assert "PAGE_SIZE" in out and "beacon/settings.py" in out and sorted(out) == sorted(text)
        changed += out != text
    assert changed == 100


def test_typo_spares_words_containing_a_name_only_with_spare_containing() -> None:
    """The training rule spares only words inside a protected name; the held-out eval's
    (bench/eval_heldout.py, `spare_containing`) also those that contain one."""
    text = "please rename loader"
    strict = [typo(random.Random(i), text, ["load"], spare_containing=True) for i in range(60)]
    loose = [typo(random.Random(i), text, ["load"]) for i in range(60)]
    assert all(out.endswith(" loader") for out in strict) and len(set(strict)) > 1
    assert any(not out.endswith(" loader") for out in loose)
