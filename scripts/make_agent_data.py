"""Generate the default model's training data: agent episodes with real tool calls and real results.

    python scripts/make_agent_data.py --out .data/agent --episodes 20000 --seed 0 [--tokenizer DIR]
        [--wide 0.5] [--voices 0.7] [--projects 0.5] [--shapes 0.5]

Design choices:
- Deterministic from `--seed`: episode i uses `random.Random(f"{seed}:{i}")` and a fresh temporary
  workspace, so shards can be generated in parallel and any episode can be regenerated alone.
- Tool results are never written by hand: every call runs through `ToolRegistry(workspace).call`,
  the same path the agent uses, and the plan's `expect` text must appear in the result.
- Rendering goes through `NativeChatFormat` (system segment with the registry's real tool schemas,
  user and tool-result segments), and each piece is tokenized on its own with `special=True` only for
  markup, exactly as `Segment.encode` does at inference. The assistant's text is split the same way
  (markup tokens special, the JSON and the answer plain), and only assistant tokens carry loss.
- Output: `tokens.bin` (uint16 ids), `docs.npy` (start offsets, one per episode, plus the end),
  `prefix.npy` (the system segment every chat episode starts with, stored once; `with_prefix.npy`
  says which episodes have it), `manifest.json` (counts per kind, seed, tokenizer sha256) and
  `tokenizer.json`. Which tokens carry loss is recomputed from the ids (model/training/data.py).
  The tokenizer is a byte-level BPE trained on the episodes' text with the native special tokens
  first, in `NATIVE_SPECIAL_TOKENS` order, unless `--tokenizer` names an existing one.
- `--wide P` (training data; 0, the eval's generator, by default): names and values are made-up
  words with probability P (agent_workspaces.WIDE), and the mix gains plain copy episodes ("Repeat
  after me: ...") and a larger share of memory episodes (38% against 35%).
- `--voices P` / `--projects P` (training data; 0 by default): a share P of requests re-worded by
  several voices with indirect file names and typos (scripts/agent_voices.py), with the kinds of
  scripts/agent_tasks_more.py (answers from the docs, two-call copies); a share P of workspaces
  project-like (scripts/agent_projects.py: README.md, a package with settings.py, docs/, tests/).
- `--shapes P` (training data; 0 by default): a share P of episodes shaped like the held-out eval's
  categories, with made-up names of every style and free wordings (scripts/agent_shapes.py).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import random
import re
import sys
import tempfile
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from multiprocessing import Pool
from pathlib import Path
from typing import Any, TypeVar

sys.path.insert(0, str(Path(__file__).resolve().parent))

import agent_shapes
import agent_tasks
import agent_workspaces
from agent_tasks import CHITCHAT, Fact, Task, make_facts, make_task
from agent_workspaces import WORDS, Workspace, made_up_word, make_workspace, pick
from hybrid_agent.model.chat import DEFAULT_SYSTEM_PROMPT, ChatMessage, NativeChatFormat
from hybrid_agent.model.tokenizer import NATIVE_SPECIAL_TOKENS, Tokenizer
from hybrid_agent.tools import ToolRegistry

FORMAT = NativeChatFormat()
_MARKUP = re.compile(r"(<\|tool_call\|>|<\|/tool_call\|>|<\|end\|>)")


class PlanMismatch(RuntimeError):
    """A planned tool result did not contain what the plan expected (a bug in a task generator)."""


@dataclass
class Episode:
    """A conversation as the state reads it: `pieces` are (text, markup, trained) triples."""

    kind: str
    pieces: list[tuple[str, bool, bool]] = field(default_factory=list)
    kinds: list[str] = field(default_factory=list)  # task kinds inside it

    def text(self) -> str:
        return "".join(t for t, _, _ in self.pieces)


_SCHEMAS: dict[tuple[str, ...], list[dict[str, Any]]] = {}


def tool_schemas(registry: ToolRegistry) -> list[dict[str, Any]]:
    """The registry's tool schemas, generated once per process for a set of tools (pydantic's schema
    generation was 40% of an episode's time; the built-in tools' schemas do not depend on the
    workspace, and main() checks that every episode got the same system segment)."""
    key = tuple(registry.names())
    if key not in _SCHEMAS:
        _SCHEMAS[key] = [s["function"] for s in registry.schemas()]
    return _SCHEMAS[key]


class EpisodeWriter:
    """Renders messages one segment at a time, the way the agent loop would feed them."""

    def __init__(self, registry: ToolRegistry, kind: str) -> None:
        self.registry = registry
        self.tools = tool_schemas(registry)
        self.history: list[ChatMessage] = []
        self.ep = Episode(kind)

    def _prefill(self, new: list[ChatMessage]) -> None:
        seg = FORMAT.segment(self.history, new, system=DEFAULT_SYSTEM_PROMPT, tools=self.tools)
        self.ep.pieces += [(t, m, False) for t, m in seg.pieces]
        self.history += new

    def _assistant(self, raw: str) -> None:
        for part in _MARKUP.split(raw):
            if part:
                self.ep.pieces.append((part, bool(_MARKUP.fullmatch(part)), True))
        self.history.append(ChatMessage("assistant", FORMAT.visible_text(raw), raw=raw))

    def chat(self, user: str, reply: str) -> None:
        self._prefill([ChatMessage("user", user)])
        self._assistant(reply + "<|end|>")

    def task(self, task: Task) -> None:
        self._prefill([ChatMessage("user", task.prompt)])
        for i, (name, args) in enumerate(task.calls):
            call = json.dumps({"name": name, "arguments": args}, ensure_ascii=False)
            self._assistant(f"<|tool_call|>{call}<|/tool_call|>")
            result = self.registry.call(name, dict(args))
            if i < len(task.expect) and task.expect[i] not in result.text:
                raise PlanMismatch(
                    f"{task.kind}: {name}({args}) gave {result.text!r}, expected {task.expect[i]!r}"
                )
            self._prefill([ChatMessage("tool", result.text, name=name)])
        self._assistant(task.answer + "<|end|>")
        self.ep.kinds.append(task.kind)


def refresh(ws: Workspace) -> None:
    """Re-read the files after a task changed them; drop constants whose line no longer holds."""
    ws.files = {
        str(p.relative_to(ws.root)): p.read_text(encoding="utf-8") for p in ws.root.rglob("*") if p.is_file()
    }
    kept = []
    for c in ws.constants:
        lines = ws.files.get(c.path, "").splitlines()
        if (
            len(lines) >= c.line
            and lines[c.line - 1].startswith(f"{c.name} =")
            and c.value in lines[c.line - 1]
        ):
            kept.append(c)
    ws.constants = kept
    ws.folders = sorted({str(Path(r).parent) for r in ws.files} - {"."})


def _memory_turns(rng: random.Random, w: EpisodeWriter, ws: Workspace, facts: list[Fact], gap: int) -> None:
    """State the facts, `gap` filler turns (chit-chat, distractor facts, small tasks), then ask."""
    target, distractors = facts[0], facts[1:]
    said, reply = target.statement(rng)
    w.chat(said, reply)
    slots = sorted(rng.sample(range(gap), min(len(distractors), gap))) if gap else []
    for i in range(gap):
        if i in slots:
            w.chat(*distractors[slots.index(i)].statement(rng))
        elif rng.random() < 0.08:
            w.task(make_task(rng, ws, ["list", "read_value", "find", "read_lines"]))
        else:
            w.chat(*rng.choice(CHITCHAT))
    asked = [target, *[d for j, d in enumerate(distractors) if j < len(slots) and rng.random() < 0.3]]
    for fact in asked:
        w.chat(*fact.question(rng))
    w.ep.kinds.append("memory")


COPY_ASKS = (
    "Repeat after me: {x}",
    "Say exactly this: {x}",
    "Echo '{x}'.",
    "Please repeat '{x}' back to me.",
    "Write {x}",
    'Copy this: "{x}"',
)


def copy_phrase(rng: random.Random) -> str:
    """1 to 6 made-up or pool words, numbers, identifiers and paths: nothing a prior can guess."""
    parts = []
    for _ in range(rng.randint(1, 6)):
        r = rng.random()
        if r < 0.5:
            parts.append(made_up_word(rng))
        elif r < 0.65:
            parts.append(str(rng.randint(0, 99999)))
        elif r < 0.8:
            parts.append(f"{pick(rng, WORDS)}_{made_up_word(rng)}")
        elif r < 0.9:
            folder, ext = rng.choice(["src", "lib", "docs"]), rng.choice(["py", "md"])
            parts.append(f"{folder}/{made_up_word(rng)}.{ext}")
        else:
            parts.append(rng.choice(WORDS))
    return " ".join(parts)


def _copy_turns(rng: random.Random, w: EpisodeWriter) -> None:
    for _ in range(rng.randint(2, 6)):
        x = copy_phrase(rng)
        w.chat(rng.choice(COPY_ASKS).format(x=x), x)
    w.ep.kinds.append("copy")


def make_episode(
    seed: int,
    index: int,
    workdir: Path | None = None,
    wide: float = 0.0,
    voices: float = 0.0,
    projects: float = 0.0,
    shapes: float = 0.0,
) -> Episode:
    """Episode `index` of `seed`. Its workspace is a temporary folder, or `workdir` (kept) if given;
    it is the first thing drawn from the episode's generator, so `make_workspace(episode_rng(seed,
    index), root)` rebuilds it as it was before the episode's tools ran (with the same `wide` and
    `projects`, `shapes`). `voices`: agent_tasks.VOICES; `projects`, `shapes`: agent_workspaces'."""
    aw = agent_workspaces
    before = aw.WIDE, agent_tasks.VOICES, aw.PROJECTS, aw.SHAPES
    aw.WIDE, agent_tasks.VOICES, aw.PROJECTS, aw.SHAPES = wide, voices, projects, shapes
    try:
        with tempfile.TemporaryDirectory(prefix="agent-ep-") as tmp:
            return _episode(episode_rng(seed, index), Path(workdir or tmp), wide > 0)
    finally:
        aw.WIDE, agent_tasks.VOICES, aw.PROJECTS, aw.SHAPES = before


def episode_rng(seed: int, index: int) -> random.Random:
    return random.Random(f"{seed}:{index}")


def _episode(rng: random.Random, root: Path, wide: bool = False) -> Episode:
    ws = make_workspace(rng, root)
    if ws.shaped:
        with ToolRegistry(workspace=ws.root, load_plugins=False) as registry:
            w = EpisodeWriter(registry, "shapes")
            agent_shapes.episode(rng, w, ws, refresh)
            return w.ep
    roll = rng.random()
    # Shares: text 5%, memory 35%, tasks 60%; wide: text 4%, copy 6%, memory 38%, tasks 52%.
    text_end, copy_end, memory_end = (0.04, 0.10, 0.48) if wide else (0.05, 0.05, 0.40)
    if roll < text_end:  # plain text: a file of the workspace, for fluency
        ep = Episode("text")
        ep.pieces.append(("<|bos|>", True, False))
        ep.pieces += [(t, False, True) for t in ws.files.values()]
        return ep
    with ToolRegistry(workspace=ws.root, load_plugins=False) as registry:
        if roll < copy_end:
            w = EpisodeWriter(registry, "copy")
            _copy_turns(rng, w)
            return w.ep
        if roll < memory_end:
            w = EpisodeWriter(registry, "memory")
            gap = rng.choice([rng.randint(1, 8), rng.randint(8, 30), rng.randint(30, 60)])
            _memory_turns(rng, w, ws, make_facts(rng, rng.randint(1, 4)), gap)
            return w.ep
        w = EpisodeWriter(registry, "tasks")
        facts = make_facts(rng, rng.randint(0, 2))
        turns: list[Any] = [None] * rng.randint(1, 6)
        for fact in facts:
            turns.insert(rng.randint(0, len(turns) // 2), fact)
        asked: list[Fact] = []
        for item in turns:
            if isinstance(item, Fact):
                w.chat(*item.statement(rng))
                asked.append(item)
            elif asked and rng.random() < 0.3:
                w.chat(*asked.pop(0).question(rng))
            elif rng.random() < 0.1:
                w.chat(*rng.choice(CHITCHAT))
            else:
                w.task(make_task(rng, ws))
                refresh(ws)
        for fact in asked:
            w.chat(*fact.question(rng))
        return w.ep


def _episode_args(args: tuple[int, int, float, float, float, float]) -> Episode:
    seed, index, wide, voices, projects, shapes = args
    return make_episode(seed, index, wide=wide, voices=voices, projects=projects, shapes=shapes)


_Job = TypeVar("_Job")
_Out = TypeVar("_Out")


def in_workers(fn: Callable[[_Job], _Out], jobs: list[_Job], workers: int) -> Iterator[_Out]:
    """fn over jobs, in order: in this process, or in a pool of `workers` processes."""
    if workers <= 1:
        yield from map(fn, jobs)
        return
    with Pool(workers) as pool:
        yield from pool.imap(fn, jobs, chunksize=32)


_MIX = ("wide", "voices", "projects", "shapes")  # the data mix's shares: make_episode's keywords


def episodes(
    seed: int, n: int, *, workers: int = 1, wide: float = 0.0, voices: float = 0.0, projects: float = 0.0,
    shapes: float = 0.0,
) -> Iterator[Episode]:  # fmt: skip
    jobs = [(seed, i, wide, voices, projects, shapes) for i in range(n)]
    yield from in_workers(_episode_args, jobs, workers)


def train_tokenizer(texts: list[str], vocab_size: int) -> Tokenizer:
    """Byte-level BPE with the native special tokens first (ids 0..10, in their fixed order), digits
    split one per token, and words never merged with the space or punctuation before them."""
    from tokenizers import Regex, decoders, models, pre_tokenizers, trainers
    from tokenizers import Tokenizer as HFTokenizer

    hf = HFTokenizer(models.BPE())
    # Pieces: a run of letters, one digit, a run of whitespace, a run of other characters. One token
    # per digit: a number is copied digit by digit with the same ten well-trained tokens wherever it
    # appears (the first model turned "7198" into "723" when copying it from a request into an edit).
    # Letters apart from the space before them: GPT-2's " vega" and "vega" (after a quote, a '(' or a
    # '"') are two unrelated tokens, so copying "vega" from `X = 'vega'` into "X is vega." was a
    # learned mapping for each word, not a copy; here a word, made-up or not, is the same tokens
    # everywhere. The cost: about one more token for each word of prose (the space).
    split = Regex(r"\p{L}+|\p{N}|\s+|[^\s\p{L}\p{N}]+")
    hf.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(split, behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    hf.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(NATIVE_SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    hf.train_from_iterator(texts, trainer=trainer)
    return Tokenizer(hf)


def tokenizer_texts(eps: list[Episode], repeats: int = 200) -> list[str]:
    """The content pieces of the episodes, with any one text (the system segment above all) counted
    at most `repeats` times: it still gets its merges, and training does not read it 24000 times."""
    seen: Counter[str] = Counter()
    texts = []
    for ep in eps:
        for text, markup, _ in ep.pieces:
            if not markup and seen[text] < repeats:
                seen[text] += 1
                texts.append(text)
    return texts


def encode_episode(
    ep: Episode, tok: Tokenizer, cache: dict[tuple[str, bool], list[int]] | None = None
) -> tuple[list[int], list[int]]:
    """ids and loss flags of an episode. `cache` keeps the ids of long pieces (the system segment)."""
    ids: list[int] = []
    mask: list[int] = []
    for text, markup, trained in ep.pieces:
        if cache is not None and len(text) > 1000:
            piece = cache.get((text, markup)) or cache.setdefault(
                (text, markup), tok.encode(text, special=markup)
            )
        else:
            piece = tok.encode(text, special=markup)
        ids += piece
        mask += [int(trained)] * len(piece)
    return ids, mask


def encode_for_corpus(
    ep: Episode, tok: Tokenizer, cache: dict[tuple[str, bool], list[int]]
) -> tuple[str, list[str], list[int], int]:
    """(kind, task kinds, ids, length of the system segment at their head: 0 for plain text)."""
    ids, _ = encode_episode(ep, tok, cache)
    head = 0
    if len(FORMAT.system_pieces("", [])) == 3 and ep.kind != "text":
        head = len(encode_episode(Episode(ep.kind, ep.pieces[:3]), tok, cache)[0])
    return ep.kind, ep.kinds, ids, head


_WORKER_TOK: dict[str, tuple[Tokenizer, dict[tuple[str, bool], list[int]]]] = {}


def _encoded_args(
    args: tuple[int, int, float, str, float, float, float],
) -> tuple[str, list[str], list[int], int] | None:
    """An episode made and encoded in a worker (with a tokenizer given, encoding runs in parallel too:
    in the main process alone it took as long as making the episodes on 16 cores). With made-up
    words (wide > 0) a plan that the tools contradict is skipped and counted rather than fatal: a
    collision of made-up names found after 60k episodes should not cost a whole training run."""
    seed, index, wide, tok_path, voices, projects, shapes = args
    if tok_path not in _WORKER_TOK:
        _WORKER_TOK[tok_path] = (Tokenizer.from_file(tok_path), {})
    tok, cache = _WORKER_TOK[tok_path]
    try:
        ep = make_episode(seed, index, wide=wide, voices=voices, projects=projects, shapes=shapes)
    except PlanMismatch:
        if not (wide or voices or projects or shapes):
            raise
        return None
    return encode_for_corpus(ep, tok, cache)


def main(argv: list[str] | None = None) -> None:
    import numpy as np

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--episodes", type=int, default=20000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--vocab-size", type=int, default=8192)
    p.add_argument("--tokenizer", type=Path, default=None, help="an existing tokenizer.json or its folder")
    p.add_argument("--wide", type=float, default=0.0, help="share of made-up names and values (training)")
    p.add_argument("--voices", type=float, default=0.0, help="share of re-worded requests (agent_voices.py)")
    p.add_argument("--projects", type=float, default=0.0, help="share of project-like workspaces")
    p.add_argument("--shapes", type=float, default=0.0, help="share of shaped episodes (agent_shapes.py)")
    a = p.parse_args(argv)
    a.out.mkdir(parents=True, exist_ok=True)

    if a.tokenizer is not None:
        tok = Tokenizer.from_file(a.tokenizer)
        tok.save(a.out)
        tok_file = str(a.out / "tokenizer.json")
        jobs = [(a.seed, i, a.wide, tok_file, a.voices, a.projects, a.shapes) for i in range(a.episodes)]
        encoded = list(in_workers(_encoded_args, jobs, a.workers))
        skipped = sum(e is None for e in encoded)
        encoded = [e for e in encoded if e is not None]
    else:
        eps = list(episodes(a.seed, a.episodes, workers=a.workers, **{k: getattr(a, k) for k in _MIX}))
        tok = train_tokenizer(tokenizer_texts(eps), a.vocab_size)
        tok.save(a.out)
        skipped = 0
        cache: dict[tuple[str, bool], list[int]] = {}
        encoded = [encode_for_corpus(ep, tok, cache) for ep in eps]
    prefix: list[int] | None = None
    chunks: list[np.ndarray] = []
    starts, with_prefix = [0], []
    for _kind, _kinds, ids, n in encoded:
        if n:
            # Every chat episode starts with the same system segment: store it once (train.py re-adds it).
            prefix = ids[:n] if prefix is None else prefix
            if ids[:n] != prefix:
                raise PlanMismatch("episodes do not share one system segment")
            ids = ids[n:]
        chunks.append(np.asarray(ids, dtype=np.uint16))
        starts.append(starts[-1] + len(ids))
        with_prefix.append(int(n > 0))
    assert tok.vocab_size <= 65536 and prefix is not None
    np.concatenate(chunks).tofile(a.out / "tokens.bin")
    np.save(a.out / "docs.npy", np.asarray(starts, dtype=np.int64))
    np.save(a.out / "with_prefix.npy", np.asarray(with_prefix, dtype=np.uint8))
    np.save(a.out / "prefix.npy", np.asarray(prefix, dtype=np.int64))
    lengths = np.diff(np.asarray(starts))
    manifest = {
        "seed": a.seed,
        "episodes": a.episodes,
        "wide": a.wide,
        "voices": a.voices,
        "projects": a.projects,
        "shapes": a.shapes,
        "skipped_plan_mismatch": skipped,
        "stored_tokens": int(starts[-1]),
        "tokens_with_prefix": int(starts[-1] + len(prefix) * sum(with_prefix)),
        "prefix_tokens": len(prefix),
        "episode_tokens": {
            "mean": float(lengths.mean()),
            "max": int(lengths.max()),
            "min": int(lengths.min()),
        },
        "episode_kinds": dict(Counter(e[0] for e in encoded)),
        "task_kinds": dict(Counter(k for e in encoded for k in e[1])),
        "vocab_size": tok.vocab_size,
        "tokenizer_sha256": hashlib.sha256((a.out / "tokenizer.json").read_bytes()).hexdigest(),
    }
    (a.out / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    print(json.dumps(manifest, indent=2))


if __name__ == "__main__":
    main()
