"""Random small project folders for the default model's training and evaluation episodes.

Design choices:
- Deterministic from a `random.Random`: the same seed writes the same files, byte for byte.
- Every identifier (function, constant, config key) is unique inside one workspace, so a question
  about it has exactly one right answer, and the generator knows that answer (`Workspace` metadata).
- Names come from word pools combined at random, so the model must read them from tool results rather
  than memorise them; values are random numbers and words for the same reason.
- `WIDE` (0 by default, the eval's setting) is the share of names and values drawn instead from
  made-up words (`made_up_word`: a space of millions), for training data: with a pool of 46 words a
  model can answer from a prior ("falcon") instead of copying, and v3 did; with made-up words only
  copying works. At 0 no extra random number is drawn, so the same seed writes the same files as before.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from pathlib import Path


def _words(text: str) -> list[str]:
    return text.split()


VERBS = _words(
    "load parse save build render fetch compute validate send read write update merge format "
    "check create delete sync scan open close resolve encode decode filter sort split join "
    "count group apply reset start stop publish"
)
NOUNS = _words(
    "user config order invoice report cache session token file record message event payload "
    "table image queue price account profile item batch request response header entry note task "
    "job metric log page route schema"
)
ARGS = _words(
    "path name data items limit timeout user_id verbose retries key value count options size "
    "url text rows mode level prefix target source depth callback encoding"
)
CONSTS = _words(
    "MAX_RETRIES TIMEOUT PORT BATCH_SIZE CACHE_TTL LOG_LEVEL API_URL WORKERS BUFFER_SIZE REGION "
    "MAX_USERS PAGE_SIZE DB_NAME QUEUE_NAME RATE_LIMIT VERSION HOST DEBUG_LEVEL CHUNK_SIZE "
    "MAX_DEPTH"
)
CONFIG_KEYS = _words(
    "timeout port host workers log_level region cache_size retries theme language backend "
    "max_connections batch_size interval owner"
)
WORDS = _words(
    "kestrel falcon heron osprey plover wren finch raven otter badger lynx marten cedar maple "
    "birch willow aspen alder juniper hazel cobalt amber crimson indigo saffron teal violet "
    "slate copper silver orion vega lyra atlas nova zephyr delta gamma sigma tundra canyon "
    "meadow harbor summit"
)
FOLDERS = _words("src lib app core utils api services web tools notes docs config scripts data")
# Syllables of made-up words: pronounceable, so a BPE splits them into a few pieces like real words.
ONSETS = _words("b c d f g h j k l m n p r s t v w z br ch dr fl gr kr pl sh st tr th")
VOWELS = _words("a e i o u ai ea ou y")
CODAS = ("", "", "", "n", "r", "l", "s", "t", "m", "x", "nd", "rk")

WIDE = 0.0  # share of made-up names and values (training data; the eval keeps 0)
PROJECTS = 0.0  # share of project-like workspaces (scripts/agent_projects.py); 0: no extra draw
SHAPES = 0.0  # share of shaped workspaces and episodes (scripts/agent_shapes.py); 0: no extra draw


def made_up_word(rng: random.Random) -> str:
    """A pronounceable non-word of 1 to 4 syllables, e.g. "tovemi", "brailnd", "kou"."""
    return "".join(
        rng.choice(ONSETS) + rng.choice(VOWELS) + rng.choice(CODAS) for _ in range(rng.randint(1, 4))
    )


def pick(rng: random.Random, pool: list[str]) -> str:
    """rng.choice(pool), or with probability WIDE a made-up word (no extra draw when WIDE is 0)."""
    if WIDE and rng.random() < WIDE:
        return made_up_word(rng)
    return rng.choice(pool)


NOTE_LINES = (
    "fix the login bug",
    "write tests for the parser",
    "ask about the deploy window",
    "update the changelog",
    "review the open pull requests",
    "clean up old branches",
    "check the nightly build",
    "rename the cache module",
    "measure the startup time",
    "move the docs to the wiki",
    "talk to the design team",
    "upgrade the database driver",
    "remove the unused flags",
    "add retries to the uploader",
    "profile the report job",
    "split the settings file",
)
# Templates for fresh note lines (tasks that write a line must copy it, not recall one of a few).
NOTE_TEMPLATES = (
    "{verb} the {noun} {noun2}s",
    "ask {word} about the {noun} {noun2}",
    "move the {noun} code to {folder}",
    "{verb} {noun}s before {word} ships",
    "bump the {noun} limit to {num}",
    "{verb} the {word} {noun} by friday",
    "check why {noun} {num} fails",
    "{verb} and {verb2} the {noun} table",
    "rename {noun}_{noun2} to {word}_{noun2}",
    "set up {num} {word} workers",
)


def note_line(rng: random.Random) -> str:
    """A to-do line: one of the fixed NOTE_LINES a quarter of the time, else a fresh combination of
    the word pools (with a number now and then), so that copying it is the only way to get it right."""
    if WIDE and rng.random() < WIDE / 2:  # no template at all: 2 to 7 words and numbers
        return " ".join(
            str(rng.randint(1, 9999)) if rng.random() < 0.15 else pick(rng, WORDS + NOUNS + VERBS)
            for _ in range(rng.randint(2, 7))
        )
    if rng.random() < 0.25:
        return rng.choice(NOTE_LINES)
    return rng.choice(NOTE_TEMPLATES).format(
        verb=rng.choice(VERBS), verb2=rng.choice(VERBS), noun=pick(rng, NOUNS), noun2=pick(rng, NOUNS),
        word=pick(rng, WORDS), folder=rng.choice(FOLDERS), num=rng.randint(2, 9999),
    )  # fmt: skip


@dataclass
class Function:
    name: str
    args: list[str]
    path: str
    line: int


@dataclass
class Constant:
    name: str
    value: str
    path: str
    line: int


@dataclass
class Workspace:
    """What was written: relative paths and their text, and the facts questions are asked about."""

    root: Path
    files: dict[str, str] = field(default_factory=dict)
    functions: list[Function] = field(default_factory=list)
    constants: list[Constant] = field(default_factory=list)
    folders: list[str] = field(default_factory=list)
    docs: list[tuple[str, str, str]] = field(default_factory=list)  # (path, topic, value) of a doc's fact
    shaped: bool = False  # written by scripts/agent_shapes.py: its episodes are the shaped kinds
    package: str = ""  # the package folder of a shaped workspace
    doc_keys: dict[str, tuple[str, bool]] = field(default_factory=dict)  # page -> (grep word, named)
    family: object = None  # sibling folders of scripts/agent_copying.py (a shaped workspace's, or None)

    def entries(self, folder: str) -> list[str]:
        """The names list_dir shows for `folder` (sub-folders end with '/')."""
        prefix = "" if folder == "." else folder + "/"
        names: set[str] = set()
        for rel in self.files:
            if rel.startswith(prefix):
                head, _, rest = rel[len(prefix) :].partition("/")
                names.add(head + "/" if rest else head)
        return sorted(names)


def _value(rng: random.Random) -> str:
    kind = rng.random()
    if kind < 0.5:
        return str(rng.choice([rng.randint(2, 99), rng.randint(100, 9999)]))
    if kind < 0.8:
        return repr(pick(rng, WORDS))
    return repr(f"{pick(rng, WORDS)}-{rng.randint(1, 99)}")


def _wide_names(
    rng: random.Random, names: list[str], upper: bool = False, used: set[str] | None = None
) -> list[str]:
    """`names` with each one replaced by a made-up word with probability WIDE (none when 0). A made-up
    name inside or around a name in `used` ("ra" and "bra") is dropped: `ra = 5` would not be a unique
    anchor for an edit of a file that also says `bra = 5`."""
    if not WIDE:
        return names
    out = []
    for name in names:
        if rng.random() < WIDE:
            name = made_up_word(rng)
            name = name.upper() + rng.choice(["", "_SIZE", "_NAME", "_LIMIT"]) if upper else name
            if any(name in u or u in name for u in used or ()):
                continue
        out.append(name)
    return list(dict.fromkeys(out))  # a made-up name could repeat a drawn one


def _python_file(rng: random.Random, ws: Workspace, rel: str, used: set[str]) -> str:
    lines: list[str] = [f'"""{rng.choice(VERBS).capitalize()} {pick(rng, NOUNS)}s for the project."""', ""]
    for _ in range(rng.randint(0, 2)):
        drawn = _wide_names(rng, [rng.choice(CONSTS)], upper=True, used=used)
        if not drawn or drawn[0] in used:
            continue
        name = drawn[0]
        used.add(name)
        value = _value(rng)
        lines.append(f"{name} = {value}")
        ws.constants.append(Constant(name, value.strip("'"), rel, len(lines)))
    for _ in range(rng.randint(1, 3)):
        name = f"{rng.choice(VERBS)}_{pick(rng, NOUNS)}"
        if name in used:
            continue
        used.add(name)
        args = _wide_names(rng, rng.sample(ARGS, rng.randint(0, 3)))
        lines += ["", ""]
        lines.append(f"def {name}({', '.join(args)}):")
        ws.functions.append(Function(name, args, rel, len(lines)))
        body = args[0] if args else repr(pick(rng, WORDS))
        if rng.random() < 0.5:
            lines.append(f'    """{name.replace("_", " ").capitalize()}."""')
        lines.append(f"    return {body}")
    return "\n".join(lines) + "\n"


def _config_file(rng: random.Random, ws: Workspace, rel: str, used: set[str]) -> str:
    lines = [f"# settings for {pick(rng, WORDS)}"]
    for key in _wide_names(rng, rng.sample(CONFIG_KEYS, rng.randint(2, 5)), used=used):
        if key in used:
            continue
        used.add(key)
        value = _value(rng).strip("'")
        lines.append(f"{key} = {value}")
        ws.constants.append(Constant(key, value, rel, len(lines)))
    return "\n".join(lines) + "\n"


def _notes_file(rng: random.Random) -> str:
    title = f"# {rng.choice(['Todo', 'Notes', 'Ideas', 'Plan', 'Log'])}"
    items = list(dict.fromkeys(note_line(rng) for _ in range(rng.randint(2, 6))))  # unique lines
    return "\n".join([title, "", *(f"- {item}" for item in items)]) + "\n"


def make_workspace(rng: random.Random, root: Path) -> Workspace:
    """Write 3 to 9 files in 1 to 4 folders (some nested) under `root` and describe them; or, with
    probability SHAPES a shaped project (scripts/agent_shapes.py), else with probability PROJECTS a
    project-like tree (scripts/agent_projects.py)."""
    if SHAPES and rng.random() < SHAPES:
        from agent_shapes import make_shaped_workspace

        return make_shaped_workspace(rng, root)
    if PROJECTS and rng.random() < PROJECTS:
        from agent_projects import make_project

        return make_project(rng, root)
    ws = Workspace(root=Path(root))
    used: set[str] = set()
    folders = rng.sample(FOLDERS, rng.randint(1, 4))
    if rng.random() < 0.4:
        folders.append(f"{folders[0]}/{rng.choice(FOLDERS)}")
    for _ in range(rng.randint(3, 9)):
        folder = rng.choice([*folders, "."]) if rng.random() < 0.9 else "."
        kind = rng.random()
        if kind < 0.55:
            stem, text_of = f"{pick(rng, NOUNS)}{rng.choice(['', 's', '_utils', '_io'])}.py", "py"
        elif kind < 0.75:
            stem, text_of = f"{rng.choice(['settings', 'app', 'deploy', 'local'])}.toml", "cfg"
        else:
            stem, text_of = f"{rng.choice(['todo', 'notes', 'ideas', 'plan', 'readme'])}.md", "md"
        rel = stem if folder == "." else f"{folder}/{stem}"
        if rel in ws.files:
            continue
        if text_of == "py":
            text = _python_file(rng, ws, rel, used)
        elif text_of == "cfg":
            text = _config_file(rng, ws, rel, used)
        else:
            text = _notes_file(rng)
        ws.files[rel] = text
    return written(ws)


def written(ws: Workspace) -> Workspace:
    """`ws` with its files written under its root and its folder list made from them."""
    for rel, text in ws.files.items():
        path = ws.root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    ws.folders = sorted({str(Path(rel).parent) for rel in ws.files} - {"."})
    return ws


def fresh_name(rng: random.Random, taken: set[str]) -> str:
    """A function-like name that does not occur in the workspace, nor begins a name that does (a grep
    for `def close_re` finds `def close_request`; only made-up nouns can be such prefixes)."""
    while True:
        name = f"{rng.choice(VERBS)}_{pick(rng, NOUNS)}"
        if name not in taken and not any(t.startswith(name) for t in taken):
            return name
