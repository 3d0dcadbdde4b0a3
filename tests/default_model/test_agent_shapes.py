"""The shaped episodes (scripts/agent_shapes.py, agent_names.py, agent_wordings.py): every kind drawn,
tool calls valid for the real tools and their results real, answers made of what the request and the
tool results say, the same episodes for the same seed."""

from __future__ import annotations

import random
import re
import sys
from collections import Counter
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "scripts"))
sys.path.insert(0, str(Path(__file__).parent))  # episode_kit

import agent_names as nm  # noqa: E402
import agent_shapes  # noqa: E402
import agent_workspaces as aw  # noqa: E402
import make_agent_data as gen  # noqa: E402
from agent_wordings import GREETINGS, ask_fact, say_fact  # noqa: E402
from episode_kit import calls_and_results as _calls_and_results  # noqa: E402
from hybrid_agent.tools import ToolRegistry  # noqa: E402

MIX = {"wide": 0.5, "voices": 0.7, "projects": 0.5, "shapes": 1.0}
# The words an answer may hold besides those of its request and its tool results (the answer templates).
ANSWER_WORDS = {
    *("is", "defined", "in", "at", "line", "it", "done", "created", "wrote", "now", "contains", "the"),
    *("text", "according", "to", "says", "has", "entries", "entry", "there", "no", "file", "anywhere"),
    *("workspace", "does", "not", "exist", "named", "so", "project", "root", "="),
}


def test_every_shaped_kind_is_drawn_and_a_share_of_episodes_only() -> None:
    kinds: Counter[str] = Counter()
    for i in range(60):
        kinds.update(gen.make_episode(2, i, **MIX).kinds)
    assert set(agent_shapes.KINDS) | {"s_recall"} <= set(kinds), kinds
    half = Counter(gen.make_episode(2, i, **{**MIX, "shapes": 0.5}).kind for i in range(60))
    assert 15 < half["shapes"] < 45, half


@pytest.mark.parametrize("index", range(6))
def test_shaped_tool_calls_are_valid_and_their_results_real(tmp_path: Path, index: int) -> None:
    """Each call passes the tool's own argument validation; replayed on a rebuilt workspace with a
    fresh registry it gives the same result text, and the files end the same."""
    ep = gen.make_episode(5, index, workdir=tmp_path / "episode", **MIX)
    assert ep.kind == "shapes"
    calls, results = _calls_and_results(ep)
    assert len(calls) == len(results)
    aw.SHAPES = 1.0
    try:
        ws = aw.make_workspace(gen.episode_rng(5, index), tmp_path / "replay")
    finally:
        aw.SHAPES = 0.0
    assert ws.shaped
    with ToolRegistry(workspace=ws.root, load_plugins=False) as registry:
        for (name, args), expected in zip(calls, results, strict=True):
            registry.get(name).parse_arguments(args)
            assert registry.call(name, args).text == expected

    def tree(root: Path) -> dict[str, bytes]:
        return {str(p.relative_to(root)): p.read_bytes() for p in root.rglob("*") if p.is_file()}

    assert tree(ws.root) == tree(tmp_path / "episode")


def _words(text: str) -> set[str]:
    """Lower-case words, split at spaces and colons (a grep line is `path:line: text`)."""
    words = {w.strip(".,;()[]!?'\"`").lower() for w in re.split(r"[\s:]+", text)} - {""}
    return words | {part for w in words for part in w.split("/")}  # a file's name alone, from its path


@pytest.mark.parametrize("kind", sorted(agent_shapes.KINDS))
def test_answers_copy_what_the_request_and_results_say(tmp_path: Path, kind: str) -> None:
    """Run the task's calls through the real tools: the task's own judge accepts the outcome, and every
    word of the answer is a word of the request, of a tool result, or of the answer templates."""
    for i in range(8):
        rng = random.Random(f"copy:{kind}:{i}")
        ws = agent_shapes.make_shaped_workspace(rng, tmp_path / f"{kind}{i}")
        task = agent_shapes.KINDS[kind](rng, ws)
        with ToolRegistry(workspace=ws.root, load_plugins=False) as registry:
            results = [registry.call(name, dict(args)).text for name, args in task.calls]
        for expect, result in zip(task.expect, results, strict=False):
            assert expect in result, (task.prompt, expect, result)
        assert task.check(ws.root, task.answer), (task.prompt, task.answer)
        seen = _words(task.prompt) | set().union(*(_words(r) for r in results))
        assert _words(task.answer) - seen <= ANSWER_WORDS, (task.answer, _words(task.answer) - seen)
        assert len(task.calls) <= 3  # the eval's agent allows 4 tool rounds


@pytest.mark.parametrize("kind", sorted(agent_shapes.KINDS))
def test_calls_copy_names_from_the_request_or_an_earlier_result(tmp_path: Path, kind: str) -> None:
    """Paths, searched names, new text and edited lines in the calls are copied exactly, never changed."""
    for i in range(8):
        rng = random.Random(f"calls:{kind}:{i}")
        ws = agent_shapes.make_shaped_workspace(rng, tmp_path / f"{kind}{i}")
        task = agent_shapes.KINDS[kind](rng, ws)
        seen = task.prompt
        with ToolRegistry(workspace=ws.root, load_plugins=False) as registry:
            for name, args in task.calls:
                path = Path(str(args.get("path", ".")))
                listed = any(t == "list_dir" and a.get("path") == str(path.parent) for t, a in task.calls)
                if str(path) not in ("docs", ".", "README.md"):  # a page listed before: folder and name
                    assert str(path) in seen or (listed and path.name in seen), (task.prompt, name, args)
                if "pattern" in args and kind != "s_docs":  # a docs search word comes from the topic
                    target = re.sub(r"^(\^|def |class |\*\*/)", "", str(args["pattern"])).removesuffix(" =")
                    assert target in task.prompt, (task.prompt, args)
                if "content" in args:
                    assert str(args["content"]).strip() in task.prompt
                if "old_string" in args:
                    assert args["old_string"] in seen
                    value = str(args["new_string"]).split(" = ", 1)[1].strip("'\"")
                    assert value in task.prompt
                seen += "\n" + registry.call(name, dict(args)).text


def test_lookup_and_docs_answers_hold_the_exact_value_from_a_tool_result(tmp_path: Path) -> None:
    for i in range(20):
        rng = random.Random(f"value:{i}")
        ws = agent_shapes.make_shaped_workspace(rng, tmp_path / f"w{i}")
        for c in ws.constants:  # the metadata is what the file says
            line = ws.files[c.path].splitlines()[c.line - 1]
            assert line.startswith(f"{c.name} = ") and c.value in line
        lookup, docs = agent_shapes.lookup(rng, ws), agent_shapes.docs(rng, ws)
        (c,) = [c for c in ws.constants if c.name in lookup.prompt]
        (x,) = {x for _, _, x in ws.docs if x in docs.answer}
        for task, value in ((lookup, c.value), (docs, x)):
            with ToolRegistry(workspace=ws.root, load_plugins=False) as registry:
                results = "\n".join(registry.call(n, dict(a)).text for n, a in task.calls)
            assert value in results and value in task.answer, (task.prompt, results, task.answer)


def test_recall_answers_repeat_the_told_value_in_any_wording() -> None:
    rng = random.Random(3)
    said, asked = set(), set()
    for _ in range(300):
        (key, value), *_ = agent_shapes.facts(rng, 1)
        statement, ack = say_fact(rng, key, value)
        question, answer = ask_fact(rng, key, value)
        assert value in statement and value in answer and value in ack
        said.add(statement.replace(key, "K").replace(value, "V"))
        asked.add(question.replace(key, "K"))
    assert len(said) > 100 and len(asked) > 60  # free wordings, not a handful of phrasings


def test_names_come_in_many_styles_and_are_deterministic() -> None:
    rng = random.Random(0)
    styles = ("snake", "kebab", "camel", "pascal", "upper", "dotted") * 30
    names = [nm.ident(rng, style) for style in styles]
    assert any("-" in n for n in names) and any("." in n for n in names) and any("_" in n for n in names)
    assert any(re.search(r"[a-z][A-Z]", n) for n in names) and any(n.isupper() for n in names)
    assert len(set(names)) > 0.9 * len(names)
    again = random.Random(0)
    assert names == [nm.ident(again, style) for style in styles]


def test_shaped_episodes_are_deterministic_per_seed() -> None:
    for i in range(4):
        a, b = gen.make_episode(9, i, **MIX), gen.make_episode(9, i, **MIX)
        assert a.pieces == b.pieces and a.kinds == b.kinds
    assert gen.make_episode(9, 0, **MIX).pieces != gen.make_episode(10, 0, **MIX).pieces


def test_shapes_zero_is_the_generator_as_it_was() -> None:
    mix = {k: v for k, v in MIX.items() if k != "shapes"}
    for i in range(4):
        assert gen.make_episode(4, i, **mix).pieces == gen.make_episode(4, i, **mix, shapes=0.0).pieces
        assert gen.make_episode(4, i, **mix).kind != "shapes"


def test_some_episodes_open_with_a_greeting_answered_in_words() -> None:
    """A greeting alone gets words and no tool call (scripts/agent_wordings.py `GREETINGS`); the
    episode's tasks come after it."""
    said = {g.lower().rstrip("!. :)") for g, _ in GREETINGS}
    opened = 0
    for i in range(80):
        turns = gen.make_episode(11, i, **MIX).text().split("<|user|>")[1:]
        first = turns[0].split("<|assistant|>", 1)
        if first[0].removesuffix("<|end|>").strip().lower().rstrip("!. :)") not in said:
            continue
        opened += 1
        assert "<|tool_call|>" not in first[1] and first[1].strip().removesuffix("<|end|>") in {
            r for _, r in GREETINGS
        }
        assert len(turns) > 1  # something to do after it
    assert 3 <= opened <= 30, opened
