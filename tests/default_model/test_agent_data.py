"""The default model's data generator: deterministic, and its tool results are what the tools say."""

from __future__ import annotations

import json
import random
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "scripts"))

import make_agent_data as gen  # noqa: E402
from agent_workspaces import Workspace, make_workspace  # noqa: E402
from hybrid_agent.model.chat import NativeChatFormat  # noqa: E402
from hybrid_agent.model.tokenizer import NATIVE_SPECIAL_TOKENS, Tokenizer  # noqa: E402
from hybrid_agent.model.training.data import assistant_mask  # noqa: E402
from hybrid_agent.tools import ToolRegistry  # noqa: E402


def test_episodes_are_deterministic(tmp_path: Path) -> None:
    for i in range(6):
        a, b = gen.make_episode(7, i), gen.make_episode(7, i)
        assert a.pieces == b.pieces
        assert a.kinds == b.kinds
    assert gen.make_episode(7, 0).pieces != gen.make_episode(8, 0).pieces


def _calls_and_results(ep: gen.Episode) -> tuple[list[tuple[str, dict]], list[str]]:
    """Tool calls parsed back from what the assistant wrote, and the result texts that followed."""
    written = "".join(t for t, _, trained in ep.pieces if trained)
    parsed = NativeChatFormat().parse_tool_calls(written)
    assert all(c.error is None and c.name is not None for c in parsed)
    results = []
    for k, (t, markup, _) in enumerate(ep.pieces):
        if markup and t == "<|tool_result|>":
            results.append(ep.pieces[k + 1][0] if not ep.pieces[k + 1][1] else "")
    return [(str(c.name), c.arguments) for c in parsed], results


@pytest.mark.parametrize("index", range(12))
def test_tool_results_are_real(tmp_path: Path, index: int) -> None:
    """Replay the calls written in the episode on a fresh copy of its workspace, with a fresh registry:
    each result must be exactly the text the episode holds."""
    ep = gen.make_episode(3, index, workdir=tmp_path / "episode")
    calls, results = _calls_and_results(ep)
    assert len(calls) == len(results)
    replay_root = tmp_path / "replay"
    make_workspace(gen.episode_rng(3, index), replay_root)
    with ToolRegistry(workspace=replay_root, load_plugins=False) as registry:
        for (name, args), expected in zip(calls, results, strict=True):
            assert registry.call(name, args).text == expected

    # and the files end the same (edits replayed = edits made)
    def tree(root: Path) -> dict[str, bytes]:
        return {str(p.relative_to(root)): p.read_bytes() for p in root.rglob("*") if p.is_file()}

    if (tmp_path / "episode").exists():
        assert tree(replay_root) == tree(tmp_path / "episode")


def test_some_episodes_have_tool_calls_of_every_builtin_used() -> None:
    names = set()
    for i in range(60):
        calls, _ = _calls_and_results(gen.make_episode(0, i))
        names |= {n for n, _ in calls}
    assert {"read_file", "write_file", "edit_file", "list_dir", "grep"} <= names


def test_corpus_files_tokenizer_and_loss_mask(tmp_path: Path) -> None:
    out = tmp_path / "data"
    gen.main(["--out", str(out), "--episodes", "24", "--seed", "5", "--workers", "1", "--vocab-size", "600"])
    tok = Tokenizer.from_file(out / "tokenizer.json")
    # The native special tokens are ids 0..10 in their fixed order, and the format's markup is one token.
    assert [tok.token_id(t) for t in NATIVE_SPECIAL_TOKENS] == list(range(len(NATIVE_SPECIAL_TOKENS)))
    assert tok.encode("<|tool_call|>", special=True) == [tok.token_id("<|tool_call|>")]
    assert (
        tok.decode(tok.encode("def load_user(path):\n    return 1")) == "def load_user(path):\n    return 1"
    )
    manifest = json.loads((out / "manifest.json").read_text())
    starts, with_prefix, prefix = (np.load(out / f) for f in ("docs.npy", "with_prefix.npy", "prefix.npy"))
    tokens = np.fromfile(out / "tokens.bin", dtype=np.uint16)
    assert len(starts) == 25 and starts[-1] == len(tokens) == manifest["stored_tokens"]
    # Re-encode each episode and check the stored ids and the loss mask recomputed from ids alone.
    for i in range(24):
        ep = gen.make_episode(5, i)
        ids, trained = gen.encode_episode(ep, tok)
        stored = tokens[starts[i] : starts[i + 1]].astype(np.int64)
        full = np.concatenate([prefix, stored]) if with_prefix[i] else stored
        assert full.tolist() == ids
        mask = assistant_mask(full, tok)
        expected = np.array(trained, dtype=bool)
        if ep.kind == "text":
            expected[1:] = True  # plain text is trained on whole, bar the <|bos|>
        assert mask.tolist() == expected.tolist()


def assert_facts_match_files(ws: Workspace, root: Path) -> None:
    """Every function and constant the workspace records is on the line it says, as it says."""
    for fn in ws.functions:
        line = (root / fn.path).read_text().splitlines()[fn.line - 1]
        assert line == f"def {fn.name}({', '.join(fn.args)}):"
    for c in ws.constants:
        line = (root / c.path).read_text().splitlines()[c.line - 1]
        assert line.startswith(f"{c.name} = ") and c.value in line


def test_workspace_facts_match_the_files(tmp_path: Path) -> None:
    assert_facts_match_files(make_workspace(random.Random(11), tmp_path), tmp_path)


def test_digits_are_tokens_of_their_own(tmp_path: Path) -> None:
    """Numbers are copied digit by digit: no token of a trained tokenizer holds a digit and anything
    else, and a number encodes the same wherever it stands."""
    out = tmp_path / "data"
    gen.main(["--out", str(out), "--episodes", "20", "--seed", "6", "--workers", "1", "--vocab-size", "800"])
    tok = Tokenizer.from_file(out / "tokenizer.json")
    pieces = [tok.decode([i]) for i in range(tok.vocab_size)]
    assert not [p for p in pieces if any(c.isdigit() for c in p) and len(p) > 1]
    digits = [tok.token_id(d) for d in "7198"]
    for text in ("PORT = 7198", "set it to 7198.", '{"new_string": "x = 7198"}', "lines 1-7198 of 7198]"):
        ids = tok.encode(text)
        assert any(ids[i : i + 4] == digits for i in range(len(ids))), text


def test_note_lines_vary_and_copy_heavy_kinds_are_drawn_more() -> None:
    from collections import Counter

    from agent_tasks import WEIGHTS, make_task
    from agent_workspaces import NOTE_LINES, note_line

    rng = random.Random(0)
    lines = [note_line(rng) for _ in range(400)]
    assert len(set(lines)) > 250 and sum(line in NOTE_LINES for line in lines) < 160
    counts: Counter[str] = Counter()
    for i in range(40):
        with tempfile.TemporaryDirectory() as tmp:
            ws = make_workspace(random.Random(i), Path(tmp))
            if ws.functions and ws.constants:
                counts.update(make_task(random.Random(f"{i}:{j}"), ws).kind for j in range(25))
    heavy = sum(counts[k] for k in WEIGHTS) / len(WEIGHTS)
    light = sum(v for k, v in counts.items() if k not in WEIGHTS) / max(1, len(set(counts) - set(WEIGHTS)))
    assert heavy > 1.4 * light, counts


def test_wide_zero_is_the_eval_generator_and_wide_draws_made_up_words(tmp_path: Path) -> None:
    """--wide 0 (the eval's generator) only uses the word pools; --wide 0.5 makes up names and values
    (arguments, constants, fact values) that no pool holds, and its workspace metadata still matches
    the files."""
    import agent_workspaces as aw
    from agent_tasks import make_facts

    def names(ws: aw.Workspace) -> tuple[set[str], set[str]]:
        return {a for f in ws.functions for a in f.args}, {c.name for c in ws.constants}

    def pooled(value: str) -> bool:
        return value.isdigit() or value.split("-")[0] in aw.WORDS

    pools = set(aw.ARGS), set(aw.CONSTS) | set(aw.CONFIG_KEYS)
    seen_args: set[str] = set()
    for i in range(30):
        args, consts = names(make_workspace(random.Random(i), tmp_path / f"n{i}"))
        assert args <= pools[0] and consts <= pools[1]
        assert all(pooled(f.value) for f in make_facts(random.Random(i), 3))
    assert aw.WIDE == 0
    aw.WIDE = 0.5
    try:
        values = []
        for i in range(30):
            root = tmp_path / f"w{i}"
            ws = make_workspace(random.Random(i), root)
            args, _ = names(ws)
            seen_args |= args - pools[0]
            assert_facts_match_files(ws, root)
            values += [f.value for f in make_facts(random.Random(i), 3)]
    finally:
        aw.WIDE = 0.0
    assert len(seen_args) > 10
    made_up = [v for v in values if not pooled(v)]
    assert 0.1 * len(values) < len(made_up) < 0.6 * len(values)


@pytest.mark.parametrize("index", range(6))
def test_wide_tool_results_are_real(tmp_path: Path, index: int) -> None:
    import agent_workspaces as aw

    ep = gen.make_episode(4, index, workdir=tmp_path / "episode", wide=0.5)
    calls, results = _calls_and_results(ep)
    aw.WIDE = 0.5
    try:
        make_workspace(gen.episode_rng(4, index), tmp_path / "replay")
    finally:
        aw.WIDE = 0.0
    with ToolRegistry(workspace=tmp_path / "replay", load_plugins=False) as registry:
        for (name, args), expected in zip(calls, results, strict=True):
            assert registry.call(name, args).text == expected
    assert gen.make_episode(4, index, wide=0.5).pieces == ep.pieces


def test_copy_episodes_answer_with_the_request_text() -> None:
    found = 0
    for i in range(80):
        ep = gen.make_episode(1, i, wide=0.5)
        if ep.kind != "copy":
            continue
        found += 1
        users = [ep.pieces[k + 1][0] for k, (t, m, _) in enumerate(ep.pieces) if m and t == "<|user|>"]
        replies = [t for t, m, trained in ep.pieces if trained and not m]
        assert len(users) == len(replies) >= 2
        assert all(r in u for u, r in zip(users, replies, strict=True))
    assert found >= 2


def test_words_encode_the_same_in_every_context(tmp_path: Path) -> None:
    """A word (or made-up word) is the same tokens after a space, a quote, a '(' or a '"', so copying
    it from a file or a request into an answer or a call is a plain copy of ids."""
    out = tmp_path / "data"
    gen.main(["--out", str(out), "--episodes", "30", "--seed", "6", "--workers", "1", "--vocab-size", "900",
              "--wide", "0.5"])  # fmt: skip
    tok = Tokenizer.from_file(out / "tokenizer.json")
    for word in ("heron", "encoding", "tovemi", "user_id", "brailnd"):
        word_ids = tok.encode(word)
        for text in (f"is {word}.", f"X = '{word}'", f"f({word}, x)", f'{{"content": "{word}\\n"}}'):
            ids = tok.encode(text)
            n = len(word_ids)
            assert any(ids[i : i + n] == word_ids for i in range(len(ids))), (word, text)


def test_encoding_in_workers_equals_encoding_in_main(tmp_path: Path) -> None:
    first, second = tmp_path / "a", tmp_path / "b"
    gen.main(["--out", str(first), "--episodes", "20", "--seed", "8", "--workers", "1", "--vocab-size", "700",
              "--wide", "0.5"])  # fmt: skip
    gen.main(["--out", str(second), "--episodes", "20", "--seed", "8", "--workers", "2", "--wide", "0.5",
              "--tokenizer", str(first / "tokenizer.json")])  # fmt: skip
    for name in ("tokens.bin", "tokenizer.json"):
        assert (first / name).read_bytes() == (second / name).read_bytes()
    for name in ("docs.npy", "with_prefix.npy", "prefix.npy"):
        assert np.array_equal(np.load(first / name), np.load(second / name))


def test_made_up_names_are_no_prefix_of_taken_ones() -> None:
    """A grep for a missing `def close_re` must not find `def close_request`."""
    import agent_workspaces as aw

    aw.WIDE = 1.0
    try:
        rng = random.Random(0)
        # every one-syllable made-up noun without a coda begins a taken name: ~8% of made-up draws
        taken = {f"{v}_{o}{u}qq" for v in aw.VERBS for o in aw.ONSETS for u in aw.VOWELS}
        for _ in range(300):
            name = aw.fresh_name(rng, taken)
            assert not any(t.startswith(name) for t in taken)
    finally:
        aw.WIDE = 0.0


def test_corpus_system_segment_is_what_the_agent_feeds(tmp_path: Path) -> None:
    """Every training episode starts with the system segment (system prompt + the built-in tools'
    schemas) a new session of the real Agent reads first: a tool added, renamed or re-described
    without regenerating the data would show here, not as a model that quietly stops calling tools."""
    from hybrid_agent.agent import Agent
    from hybrid_agent.agent.factory import load_engine
    from hybrid_agent.memory import Store
    from hybrid_agent.model.chat import ChatMessage

    out = tmp_path / "data"
    tokenizer = ROOT / "model" / "default" / "tokenizer.json"
    gen.main(
        ["--out", str(out), "--episodes", "6", "--seed", "3", "--workers", "1", "--tokenizer", str(tokenizer)]
    )
    prefix = np.load(out / "prefix.npy").tolist()
    ws = tmp_path / "ws"
    ws.mkdir()
    agent = Agent(load_engine(None, device="cpu"), Store(str(tmp_path / "s.db")), workspace=ws, mode="auto")
    try:
        system = agent.current_memory().prompt(agent.system_prompt)
        segment = agent.engine.chat.segment(
            [], [ChatMessage("user", "Hello.")], system=system, tools=agent._offered_tools()
        )
        ids = agent.engine.encode(segment)
    finally:
        agent.close()
    assert len(ids) > len(prefix) and ids[: len(prefix)] == prefix
