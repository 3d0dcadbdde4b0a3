"""The copying episodes of scripts/agent_copying.py: names and texts of the request copied exactly."""

from __future__ import annotations

import itertools
import random
import sys
from collections import Counter
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "scripts"))
sys.path.insert(0, str(ROOT / "bench"))
sys.path.insert(0, str(Path(__file__).parent))  # episode_kit

import agent_copying as cp  # noqa: E402
import agent_shapes  # noqa: E402
import agent_workspaces as aw  # noqa: E402
import check_eval_overlap as overlap  # noqa: E402
import eval_heldout as ev  # noqa: E402
import make_agent_data as gen  # noqa: E402
from episode_kit import calls_and_results, replay  # noqa: E402
from hybrid_agent.model.tokenizer import Tokenizer  # noqa: E402
from hybrid_agent.tools import ToolRegistry  # noqa: E402

MIX = {"wide": 0.5, "voices": 0.7, "projects": 0.5, "shapes": 1.0}
PUNCT = ".?!,)"


@pytest.fixture(autouse=True)
def _every_workspace_has_a_family(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cp, "FAMILY", 1.0)


def _workspace(rng: random.Random, root: Path) -> tuple[agent_shapes.Workspace, cp.Family]:
    ws = agent_shapes.make_shaped_workspace(rng, root)
    assert isinstance(ws.family, cp.Family)
    return ws, ws.family


def _distance(a: str, b: str) -> int:
    """Edit distance (changed, dropped or added characters)."""
    row = list(range(len(b) + 1))
    for i, x in enumerate(a, 1):
        prev, row[0] = row[0], i
        for j, y in enumerate(b, 1):
            prev, row[j] = row[j], min(row[j] + 1, row[j - 1] + 1, prev + (x != y))
    return row[-1]


def _tasks(seed: int, tmp_path: Path, n: int = 4):
    rng = random.Random(f"copying:{seed}")
    ws, fam = _workspace(rng, tmp_path / f"w{seed}")
    for kind in [*cp.KINDS][:n] if seed % 2 else rng.sample(list(cp.KINDS), n):
        task = cp.KINDS[kind](rng, ws, fam)
        yield ws, fam, task
        if task.calls[-1][0] in ("write_file", "edit_file"):
            gen.refresh(ws)


def test_paths_are_copied_exactly_without_the_punctuation_after_them(tmp_path: Path) -> None:
    followed, kinds = Counter(), Counter()
    for seed in range(40):
        for ws, fam, task in _tasks(seed, tmp_path):
            kinds[task.kind] += 1
            path = str(task.calls[-1][1]["path"])
            assert all(str(a["path"]) == path for _, a in task.calls), task.calls
            assert path[-1] not in PUNCT and path in task.prompt and path in task.answer, task
            assert any(path == d or path.startswith(d + "/") for d in fam.dirs), (path, fam.dirs)
            after = task.prompt.split(path, 1)[1][:1]
            followed[after if after in PUNCT else "other"] += 1
            replay(ws, task)
            assert task.check(ws.root, task.answer), task
    assert set(kinds) == set(cp.KINDS), kinds
    assert sum(followed[p] for p in PUNCT) >= 25 and len([p for p in PUNCT if followed[p]]) >= 4, followed


def test_siblings_differ_only_in_their_letters_and_hold_other_values(tmp_path: Path) -> None:
    for seed in range(30):
        rng = random.Random(f"family:{seed}")
        ws, fam = _workspace(rng, tmp_path / f"w{seed}")
        names = [d.split("/")[-1] for d in fam.dirs]
        assert len(set(names)) == len(names) >= 2
        for a, b in itertools.pairwise(names):
            shared_head = a[:3] == b[:3]  # a head of 3+ letters, or one word a letter or two apart
            shared_tail = a[-3:] == b[-3:]
            assert shared_head or shared_tail or _distance(a, b) <= 2, names
        # the same settings module and constant names in every sibling
        keys = {frozenset(v) for v in fam.settings.values()}
        assert len(keys) == 1 and len(fam.settings) == len(fam.dirs)
        assert all(Path(p).name == fam.module and (ws.root / p).is_file() for p in fam.settings)


def test_a_lookup_answers_from_the_sibling_named_and_an_edit_changes_only_it(tmp_path: Path) -> None:
    for seed in range(20):
        rng = random.Random(f"values:{seed}")
        ws, fam = _workspace(rng, tmp_path / f"w{seed}")
        before = {p: (ws.root / p).read_text() for p in fam.settings}
        task = cp.lookup(rng, ws, fam)
        path = str(task.calls[0][1]["path"])
        result = replay(ws, task)[0]
        value = next(v for c, v in fam.settings[path].items() if c in task.prompt)
        assert value in task.answer and value in result
        task = cp.edit(rng, ws, fam)
        path = str(task.calls[0][1]["path"])
        replay(ws, task)
        new = str(task.calls[1][1]["new_string"]).split(" = ", 1)[1].strip("'\"")
        assert new in task.prompt and new in task.answer and new in (ws.root / path).read_text()
        assert all((ws.root / p).read_text() == t for p, t in before.items() if p != path)


def test_note_texts_are_written_verbatim_with_no_lookup_first(tmp_path: Path) -> None:
    texts = []
    for seed in range(40):
        rng = random.Random(f"create:{seed}")
        ws, fam = _workspace(rng, tmp_path / f"w{seed}")
        task = cp.create(rng, ws, fam)
        assert [n for n, _ in task.calls] == ["write_file"]
        text = str(task.calls[0][1]["content"]).removesuffix("\n")
        assert text in task.prompt and len(text.split()) >= 2, task.prompt
        replay(ws, task)
        assert task.check(ws.root, task.answer)
        texts.append(text)
    units = (*cp.MONEY, *cp.UNITS)
    assert sum(any(f" {u}" in t for u in units) for t in texts) >= 8, texts
    assert len(set(texts)) == len(texts)


def test_a_missing_file_is_a_near_miss_and_the_refusal_names_the_path_asked(tmp_path: Path) -> None:
    near = 0
    for seed in range(40):
        rng = random.Random(f"missing:{seed}")
        ws, fam = _workspace(rng, tmp_path / f"w{seed}")
        task = cp.missing(rng, ws, fam)
        rel = max((w.rstrip(".,:") for w in task.answer.split() if "/" in w), key=len)
        assert rel in task.prompt and not (ws.root / rel).exists()
        replay(ws, task)
        assert task.check(ws.root, task.answer) and not task.check(ws.root, task.answer.replace(rel, "x"))
        d, name = rel.rsplit("/", 1)
        others = {p.name for o in fam.dirs for p in (ws.root / o).iterdir()}
        near += name in others or any(_distance(name, f.name) == 1 for f in (ws.root / d).iterdir())
    assert near >= 36


def test_names_are_rare_token_sequences_and_never_the_evals() -> None:
    tok = Tokenizer.from_file(ROOT / "model" / "default")
    names = (*ev.PACKAGES, *ev.MODULES, *ev.FUNC_OBJECTS, *ev.FUNC_VERBS)
    held_out = [n.lower() for n in names if len(n) >= 5]  # `tax` is a piece of random letters too
    pieces = []
    for seed in range(300):
        rng = random.Random(f"names:{seed}")
        for name in cp.family(rng, rng.randint(2, 4), set()):
            assert not any(h in name for h in held_out), name
            pieces.append(len(tok.encode(name)))
    assert sum(p >= 3 for p in pieces) / len(pieces) > 0.6, Counter(pieces)


def test_copying_episodes_replay_on_the_workspace_rebuilt_from_their_seed(tmp_path: Path) -> None:
    """The family is part of the workspace its seed builds: every call of a whole copying episode,
    replayed with a fresh registry on a rebuilt workspace, gives the same result, and the files end
    the same."""
    replayed = 0
    for i in range(40):
        ep = gen.make_episode(11, i, workdir=tmp_path / f"ep{i}", **MIX)
        if not any(k.startswith("c_") for k in ep.kinds):
            continue
        calls, results = calls_and_results(ep)
        aw.SHAPES = 1.0
        try:
            ws = aw.make_workspace(gen.episode_rng(11, i), tmp_path / f"replay{i}")
        finally:
            aw.SHAPES = 0.0
        with ToolRegistry(workspace=ws.root, load_plugins=False) as registry:
            for (name, args), expected in zip(calls, results, strict=True):
                registry.get(name).parse_arguments(args)
                assert registry.call(name, args).text == expected
        tree = lambda root: {str(p.relative_to(root)): p.read_bytes() for p in root.rglob("*") if p.is_file()}
        assert tree(ws.root) == tree(tmp_path / f"ep{i}")
        replayed += 1
    assert replayed >= 3


def test_no_eval_5gram_in_the_templates_and_the_share_of_copying_episodes(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.undo()  # the generator's own share of workspaces with a family
    assert overlap.overlap(cp.templates(), overlap.eval_requests(6), 5)["shared"] == 0
    kinds = Counter(k for i in range(50) for k in gen.make_episode(5, i, **MIX).kinds)
    copying = sum(v for k, v in kinds.items() if k.startswith("c_"))
    assert {"c_list", "c_missing", "c_create"} <= set(kinds) and {"f_docs", "s_lookup"} <= set(kinds), kinds
    assert 0.05 < copying / sum(kinds.values()) < 0.3, kinds
    a, b = gen.make_episode(5, 3, **MIX), gen.make_episode(5, 3, **MIX)
    assert a.pieces == b.pieces
