"""Shaped episodes: the task shapes a person asks of a workspace, with names only copying gets right.

`agent_workspaces.SHAPES` (0 by default: no extra draw, the generator as it was) is the share of
episodes whose workspace is written here and whose turns are these kinds (`make_agent_data.py
--shapes P`). The shapes are the held-out eval's categories (bench/eval_heldout.py) with content of
this file and scripts/agent_names.py / agent_wordings.py only:

- s_lookup: a setting's value: read the named file, or grep the name when the file is named by
  what it is ("the config module") rather than by its path;
- s_find: which file defines a function or class (grep `def NAME` / `class NAME`);
- s_list: the entries of a folder (list_dir);
- s_docs: a fact of the docs asked by its topic: list docs/ and read the page (the pages in turn when
  no name gives it away), grep a keyword in docs/, or read README.md;
- s_create: a new file with the given text (folders, separators and extensions of every kind);
- s_edit: one value changed (read then edit, or grep then edit when the file is not named);
- s_missing: a file that is not there: read it, glob its name or list its folder, then say so;
- s_multi: a setting changed without its file named (grep, maybe read, edit);
- s_recall: facts told in free wordings, filler turns and tasks, then asked (s_recall episodes, and
  facts asked inside task episodes, so a question about a told fact is answered without tools).

Every answer copies its names and values from the request or from a tool result, character for
character; the tool results themselves come from running the tools (make_agent_data.EpisodeWriter).
"""

from __future__ import annotations

import random
from collections.abc import Callable
from pathlib import Path
from typing import Any

import agent_names as nm
from agent_tasks import Task, _file_is, _has_all, _said_missing
from agent_wordings import FILLERS, ask, ask_fact, greeting, say_fact
from agent_workspaces import Constant, Function, Workspace, written

SETTINGS_STEMS = ("settings", "settings", "settings", "config", "conf", "defaults", "constants", "options")
KIND_WORDS = ("settings", "config", "configuration", "constants", "defaults", "options")
SUFFIXES = ("", "", "", "_URL", "_MS", "_LIMIT", "_NAME", "_PORT", "_PATH", "_TTL", "_MODE", "_ID")
EXTS = (".txt", ".txt", ".md", ".cfg", ".yaml", ".csv", ".log", ".ini", ".rst")
# Facts of docs pages: (sentence, questions, value maker, grep keyword, page stems that give it away).
DOC_FACTS = (
    ("Lint the code with `{x}`.", ("which command lints the code", "how to run the linter"), "cmd", "lint",
     ("lint", "linting")),
    ("The staging site is at {x}.", ("the address of the staging site", "where staging is hosted"), "host",
     "staging", ("staging",)),
    ("Tickets are triaged by {x}.", ("who triages tickets", "the person who sorts new tickets"), "person",
     "triage", ("triage",)),
    ("The minimum Node version is {x}.", ("which Node version we need", "the lowest Node version allowed"),
     "version", "node", ("node",)),
    ("Log files are kept for {x}.", ("how long log files are kept", "the log retention period"), "duration",
     "log", ("logs", "logging")),
    ("The design review is at {x} every Wednesday.", ("when the design review is", "the design review time"),
     "time", "review", ("reviews",)),
    ("Build the documentation with `{x}`.", ("how to build the documentation", "the docs build command"),
     "cmd", "build", ("building", "build")),
    ("The database listens on port {x}.", ("the database port", "which port the database listens on"),
     "num", "port", ("database", "ports")),
    ("Feature flags are kept in {x}.", ("where feature flags are kept", "the file that holds feature flags"),
     "path", "flag", ("flags",)),
    ("Write to {x} to reach the maintainers.", ("how to reach the maintainers", "the maintainers' address"),
     "email", "maintainers", ("maintainers", "community")),
    ("A pull request needs {x} approvals.", ("how many approvals a pull request needs",), "small",
     "approvals", ("contributing",)),
    ("The cache is flushed every {x}.", ("how often the cache is flushed", "the cache flush interval"),
     "duration", "cache", ("cache", "caching")),
    ("Report security problems to {x}.", ("where to report security problems", "the security address"),
     "email", "security", ("security",)),
    ("The API allows {x} requests per minute.", ("the API rate limit", "how many API requests a minute"),
     "num", "requests", ("api", "limits")),
    ("Seed the database with `{x}`.", ("how to seed the database", "the command that seeds the database"),
     "cmd", "seed", ("seeding",)),
    ("Code freeze starts on {x}.", ("when code freeze starts", "the start of the code freeze"), "day",
     "freeze", ("freeze", "calendar")),
    ("The default branch is {x}.", ("which branch is the default one", "the name of the default branch"),
     "word", "branch", ("branches", "git")),
    ("Images are pushed to {x}.", ("where images are pushed", "the image registry"), "host", "images",
     ("images", "containers")),
    ("Run the benchmarks with `{x}`.", ("how to run the benchmarks", "the benchmark command"), "cmd",
     "benchmarks", ("benchmarks", "perf")),
    ("The project is licensed under {x}.", ("which license the project uses", "the project's license"),
     "word", "licensed", ("license", "legal")),
    ("New team members are added by {x}.", ("who adds new team members", "who handles onboarding"),
     "person", "members", ("onboarding", "team")),
    ("Translations are refreshed with `{x}`.", ("how translations are refreshed",), "cmd", "translations",
     ("translations", "i18n")),
)  # fmt: skip
PAGE_STEMS = ("guide", "handbook", "faq", "overview", "howto", "notes", "reference", "intro")
DOC_TOOLS = (
    "make",
    "just",
    "npm run",
    "tox -e",
    "nox -s",
    "cargo run --bin",
    "./scripts/run.sh",
    "poetry run",
)


def doc_value(rng: random.Random, how: str) -> str:
    if how == "cmd":
        return f"{rng.choice(DOC_TOOLS)} {nm.ident(rng, rng.choice(['kebab', 'snake', 'flat']), (1, 2))}"
    if how == "host":
        return f"{nm.word(rng)}.{nm.word(rng)}.{rng.choice(['test', 'internal', 'example'])}"
    if how == "person":
        return nm.word(rng).capitalize()
    if how == "version":
        return f"{rng.randint(8, 30)}.{rng.randint(0, 20)}"
    if how == "duration":
        return f"{rng.randint(2, 90)} {rng.choice(['days', 'hours', 'minutes', 'weeks'])}"
    if how == "time":
        return f"{rng.randint(7, 18):02d}:{rng.choice([0, 15, 30, 45]):02d}"
    if how == "num":
        return str(rng.randint(80, 65000))
    if how == "small":
        return str(rng.randint(1, 5))
    if how == "path":
        return f"{nm.word(rng)}/{nm.file_stem(rng)}.{rng.choice(['yaml', 'toml', 'json'])}"
    if how == "email":
        return f"{nm.word(rng)}@{nm.word(rng)}.test"
    if how == "day":
        return f"{rng.choice(['March', 'June', 'October', 'Friday the'])} {rng.randint(1, 28)}"
    return nm.ident(rng, rng.choice(["kebab", "flat", "snake"]), (1, 2), digits=0.3)


def _fresh(rng: random.Random, make: Callable[[], str], used: set[str]) -> str:
    """A name from `make` that is no part of a used one and holds none (a unique grep/edit anchor)."""
    for _ in range(50):
        name = make()
        if name and not any(name in u or u in name for u in used):
            used.add(name)
            return name
    raise RuntimeError("no fresh name")  # never in practice: the name space is millions wide


def make_shaped_workspace(rng: random.Random, root: Path) -> Workspace:
    """A project: a package (sometimes under src/) with a settings-like module and 2-4 modules,
    docs/ pages and README.md that state facts, tests/, sometimes a notes folder. All names made up."""
    ws = Workspace(root=Path(root), shaped=True)
    used: set[str] = set()
    pkg = _fresh(rng, lambda: nm.ident(rng, rng.choice(["snake", "flat"]), (1, 2), digits=0.05), used)
    base = f"src/{pkg}" if rng.random() < 0.2 else pkg
    ws.package = base
    settings = f"{base}/{rng.choice(SETTINGS_STEMS)}.py"
    lines = [f'"""{rng.choice(["Settings", "Configuration", "Constants"])} of {pkg}."""', ""]
    for _ in range(rng.randint(3, 6)):
        name = _fresh(rng, lambda: nm.ident(rng, "upper", (1, 2), digits=0.1) + rng.choice(SUFFIXES), used)
        val = nm.value(rng)
        bare = val.replace(".", "", 1).isdigit()
        q = '"' if rng.random() < 0.25 else "'"
        lines.append(f"{name} = {val if bare else q + val + q}")
        ws.constants.append(Constant(name, val, settings, len(lines)))
    ws.files[settings] = "\n".join(lines) + "\n"
    ws.files[f"{base}/__init__.py"] = ""
    for _ in range(rng.randint(2, 4)):
        rel = f"{base}/{_fresh(rng, lambda: nm.file_stem(rng, python=True), used)}.py"
        body = [f'"""{nm.word(rng).capitalize()} of {pkg}."""', ""]
        if rng.random() < 0.5:
            body += [f"from {pkg}.{Path(settings).stem} import {rng.choice(ws.constants).name}", ""]
        for _ in range(rng.randint(1, 3)):
            if rng.random() < 0.2:
                cls = _fresh(rng, lambda: nm.ident(rng, "pascal", (1, 2)), used)
                body += ["", f"class {cls}:"]
                ws.functions.append(Function(cls, [], rel, len(body)))
                body += ["    pass", ""]
                continue
            fn = _fresh(rng, lambda: nm.func_name(rng), used)
            args = list(dict.fromkeys(nm.ident(rng, "snake", (1, 2), 0.0) for _ in range(rng.randint(0, 3))))
            body += ["", f"def {fn}({', '.join(args)}):"]
            ws.functions.append(Function(fn, args, rel, len(body)))
            body += [f"    return {args[0] if args else repr(nm.word(rng))}", ""]
        ws.files[rel] = "\n".join(body).rstrip("\n") + "\n"
    readme = [
        f"# {pkg}",
        "",
        f"{pkg} {rng.choice(['keeps', 'tracks', 'sorts', 'serves'])} {nm.word(rng)}s.",
        "",
    ]
    for sentence, questions, how, key, stems in rng.sample(DOC_FACTS, rng.randint(2, 4)):
        x = doc_value(rng, how)
        text = sentence.format(x=x)
        if rng.random() < 0.2:
            readme.append(text)
            ws.docs.append(("README.md", rng.choice(questions), x))
            continue
        stem = (
            rng.choice(stems)
            if rng.random() < 0.6
            else rng.choice(PAGE_STEMS) + rng.choice(["", "-2", "_v1"])
        )
        rel = f"docs/{stem}.md"
        if rel in ws.files:
            continue
        intro = rng.choice(["", f"Last updated {rng.randint(1, 28)} May.\n", f"Owner: {nm.word(rng)}.\n"])
        ws.files[rel] = f"# {stem.capitalize()}\n\n{intro}{text}\n"
        ws.docs.append((rel, rng.choice(questions), x))
        ws.doc_keys[rel] = (key, stem in stems)
    ws.files["README.md"] = "\n".join(readme) + "\n"
    for _ in range(rng.randint(0, 2)):
        ws.files[f"tests/test_{nm.file_stem(rng, python=True)}.py"] = "def test_it():\n    assert True\n"
    if rng.random() < 0.4:
        folder = nm.ident(rng, rng.choice(["kebab", "snake", "flat", "dotted"]), (1, 2))
        for _ in range(rng.randint(1, 3)):
            ws.files[f"{folder}/{nm.file_stem(rng)}{rng.choice(EXTS)}"] = nm.text_line(rng) + "\n"
    import agent_copying  # here: agent_copying builds on this module

    if rng.random() < agent_copying.FAMILY:  # sibling folders only their exact names tell apart
        ws.family = agent_copying.plant(rng, ws)
    return written(ws)


Calls = list[tuple[str, dict[str, object]]]


def _indirect(rng: random.Random, ws: Workspace) -> str:
    """The settings-like module named by what it is, not by its path."""
    name = f"{rng.choice(['the', 'our', 'my'])} {rng.choice(KIND_WORDS)} {rng.choice(['module', 'file'])}"
    pkg = ws.package.split("/")[-1]
    return name + (rng.choice([f" for {pkg}", f" in {pkg}"]) if rng.random() < 0.3 else "")


def _grep_line(c: Constant) -> str:
    return f"{c.path}:{c.line}: {c.name} ="


def lookup(rng: random.Random, ws: Workspace) -> Task:
    c = rng.choice(ws.constants)
    if rng.random() < 0.35:
        p = _indirect(rng, ws)
        calls: Calls = [("grep", {"pattern": f"^{c.name} ="})]
        expect = [_grep_line(c)]
    else:
        p, calls, expect = c.path, [("read_file", {"path": c.path})], [c.value]
    answer = rng.choice(
        [f"{c.name} is {c.value}.", f"{c.name} is {c.value} (in {c.path}).", f"It is {c.value}."]
    )
    prompt = ask(rng, "lookup", [c.name, p], c=c.name, p=p)
    return Task("s_lookup", prompt, calls, answer, _has_all([c.value]), expect)


def find(rng: random.Random, ws: Workspace) -> Task:
    fn = rng.choice(ws.functions)
    word = "def" if fn.args or not fn.name[0].isupper() else "class"
    prompt = ask(rng, "find", [fn.name], f=fn.name)
    answer = rng.choice(
        [f"{fn.name} is defined in {fn.path} at line {fn.line}.", f"In {fn.path}, line {fn.line}."]
    )
    return Task(
        "s_find", prompt, [("grep", {"pattern": f"{word} {fn.name}"})], answer, _has_all([fn.path]), [fn.path]
    )


def listing(rng: random.Random, ws: Workspace) -> Task:
    folder = rng.choice([ws.package, ws.package, "docs", "tests", ".", *ws.folders])
    names = ws.entries(folder)
    if not names:
        folder, names = ".", ws.entries(".")
    where = "the project root" if folder == "." else folder
    prompt = ask(rng, "list", [folder], d=where)
    count = "1 entry" if len(names) == 1 else f"{len(names)} entries"
    answer = f"{'The project root' if folder == '.' else folder} has {count}: {', '.join(names)}."
    return Task("s_list", prompt, [("list_dir", {"path": folder})], answer, _has_all(names), [names[0]])


def docs(rng: random.Random, ws: Workspace) -> Task:
    rel, question, x = rng.choice(ws.docs)
    line = next(t for t in ws.files[rel].splitlines() if x in t)
    calls: Calls = []
    expect: list[str] = []
    if rel == "README.md":
        calls, expect = [("read_file", {"path": rel})], [x]
    else:
        key, named = ws.doc_keys[rel]
        pages = sorted(r for r in ws.files if r.startswith("docs/"))
        order = [rel] if named else pages[: pages.index(rel) + 1]
        if rng.random() < 0.35 or len(order) > 2:
            calls, expect = [("grep", {"pattern": key, "path": "docs", "ignore_case": True})], [x]
        else:
            calls = [("list_dir", {"path": "docs"})] + [("read_file", {"path": r}) for r in order]
            expect = [rel.split("/")[1], *[r for r in order[:-1]], x]
    answer = rng.choice([f"According to {rel}: {line}", f"{x} ({rel} says: {line})", f"{rel} says: {line}"])
    return Task("s_docs", ask(rng, "docs", [], q=question), calls, answer, _has_all([x]), expect)


def create(rng: random.Random, ws: Workspace) -> Task:
    rel = ""
    while not rel or rel in ws.files or any(r.startswith(rel + "/") for r in ws.files):
        folder = rng.choice([*ws.folders, ".", nm.ident(rng, rng.choice(["kebab", "snake", "flat"]), (1, 2))])
        rel = f"{nm.file_stem(rng)}{rng.choice(EXTS)}"
        rel = rel if folder == "." else f"{folder}/{rel}"
    text = nm.text_line(rng)
    prompt = ask(rng, "create", [rel, *text.split()], p=rel, t=text)
    answer = rng.choice([f"Created {rel}.", f"Done: {rel} now contains the text.", f"Wrote {rel}."])
    calls: Calls = [("write_file", {"path": rel, "content": text + "\n"})]
    return Task("s_create", prompt, calls, answer, _file_is(rel, text + "\n"), ["created"])


def _new_value(rng: random.Random, c: Constant) -> str:
    while True:
        bare = c.value.replace(".", "", 1).isdigit()
        new = str(rng.randint(0, 99999)) if bare and "." not in c.value else nm.value(rng)
        if bare and "." in c.value:
            new = f"{rng.randint(0, 9)}.{rng.randint(0, 99)}"
        if new != c.value and new.replace(".", "", 1).isdigit() == bare:
            return new


def _edit_calls(rng: random.Random, ws: Workspace, c: Constant, new: str) -> tuple[Calls, str, str]:
    old_line = ws.files[c.path].splitlines()[c.line - 1]
    head, _, rhs = old_line.partition(" = ")
    q = rhs[0] if rhs[:1] in ("'", '"') else ""
    new_line = f"{head} = {q}{new}{q}"
    new_text = ws.files[c.path].replace(old_line, new_line, 1)
    return (
        [("edit_file", {"path": c.path, "old_string": old_line, "new_string": new_line})],
        old_line,
        new_text,
    )


def edit(rng: random.Random, ws: Workspace, multi: bool = False) -> Task:
    c = rng.choice(ws.constants)
    new = _new_value(rng, c)
    calls, old_line, new_text = _edit_calls(rng, ws, c, new)
    grep: Calls = [("grep", {"pattern": f"^{c.name} ="})]
    if multi:
        prompt = ask(rng, "multi", [c.name, new], c=c.name, v=new)
        before, expect = (grep, [c.path])
        if rng.random() < 0.4:  # and read the file before the edit
            before, expect = [*grep, ("read_file", {"path": c.path})], [c.path, old_line]
    else:
        p = _indirect(rng, ws) if rng.random() < 0.3 else c.path
        prompt = ask(rng, "edit", [c.name, new, p], c=c.name, v=new, p=p)
        before = grep if p != c.path else [("read_file", {"path": c.path})]
        expect = [old_line]
    answer = rng.choice([f"{c.name} is now {new} in {c.path}.", f"Done: {c.name} = {new} in {c.path}."])
    kind = "s_multi" if multi else "s_edit"
    return Task(kind, prompt, before + calls, answer, _file_is(c.path, new_text), [*expect, "edited"])


def missing(rng: random.Random, ws: Workspace) -> Task:
    folder = rng.choice([ws.package, *ws.folders])
    ext = ".md" if folder == "docs" else rng.choice([".py", ".py", *EXTS])
    rel, name = "", ""
    while not rel or any(Path(r).name == name for r in ws.files):
        name = f"{nm.file_stem(rng, python=ext == '.py')}{ext}"
        rel = f"{folder}/{name}"
    prompt = ask(rng, "missing", [rel], p=rel)
    r = rng.random()
    if r < 0.55:
        calls: Calls = [("read_file", {"path": rel})]
        expect, answer = (
            ["does not exist"],
            rng.choice([f"{rel} does not exist.", f"There is no file {rel}."]),
        )
    elif r < 0.8:
        calls, expect = [("glob", {"pattern": f"**/{name}"})], ["no files match"]
        answer = rng.choice(
            [
                f"There is no {name} anywhere in the workspace.",
                f"{rel} does not exist: no file is named {name}.",
            ]
        )
    else:
        calls, expect = [("list_dir", {"path": folder})], [""]
        answer = f"{folder} has no {name}, so {rel} does not exist."
    check = lambda root, a: _said_missing(a) and not (root / rel).exists()
    return Task("s_missing", prompt, calls, answer, check, expect)


KINDS: dict[str, Callable[[random.Random, Workspace], Task]] = {
    "s_lookup": lookup, "s_find": find, "s_list": listing, "s_docs": docs, "s_create": create,
    "s_edit": edit, "s_missing": missing, "s_multi": lambda rng, ws: edit(rng, ws, multi=True),
}  # fmt: skip
GREETING = 0.15  # share of the task and recall episodes (not focus or copying) that open with a greeting
WEIGHTS = {"s_lookup": 1.5, "s_find": 1.5, "s_list": 1.0, "s_docs": 2.0, "s_create": 1.5, "s_edit": 1.5,
           "s_missing": 1.5, "s_multi": 1.5}  # fmt: skip


def shaped_task(rng: random.Random, ws: Workspace) -> Task:
    kinds = [
        k
        for k in KINDS
        if (ws.constants or k not in ("s_lookup", "s_edit", "s_multi")) and (ws.docs or k != "s_docs")
    ]
    return KINDS[rng.choices(kinds, weights=[WEIGHTS[k] for k in kinds])[0]](rng, ws)


def facts(rng: random.Random, n: int) -> list[tuple[str, str]]:
    keys: list[str] = []
    while len(keys) < n:  # no two about the same thing ("my pony", "the pony")
        k = nm.fact_key(rng)
        if not any(k.split()[-1] == o.split()[-1] for o in keys):
            keys.append(k)
    return [(k, nm.display_value(rng)) for k in keys]


def episode(rng: random.Random, w: Any, ws: Workspace, refresh: Callable[[Workspace], None]) -> None:
    """A focus episode (scripts/agent_focus.py, a share FOCUS), a copying episode
    (scripts/agent_copying.py, a share COPYING), a recall episode (30% of the rest:
    facts, filler turns and a few tasks, then the questions) or a task episode (1-5 tasks, sometimes
    a fact told and asked between them). `w` is an EpisodeWriter."""
    import agent_copying  # here: both build on this module's tasks
    import agent_focus

    roll = rng.random()  # one draw: the focus episodes stay as they were, copying takes from the rest
    if roll < agent_focus.FOCUS:
        agent_focus.episode(rng, w, ws, refresh)
        return
    if ws.family is not None and roll < agent_focus.FOCUS + agent_copying.COPYING / agent_copying.FAMILY:
        agent_copying.episode(rng, w, ws, refresh)
        return
    if rng.random() < GREETING:  # a greeting first, answered in words; the tasks come after it
        w.chat(*greeting(rng))
    told = facts(rng, rng.randint(1, 3) if rng.random() < 0.3 else rng.choice([0, 0, 1]))
    recall = bool(told) and rng.random() < 0.6
    turns: list[Any] = [None] * (rng.randint(1, 8) if recall else rng.randint(1, 5))
    for f in told:
        turns.insert(rng.randint(0, len(turns) // 2 if recall else len(turns)), f)
    asked: list[tuple[str, str]] = []
    for item in turns:
        if isinstance(item, tuple):
            w.chat(*say_fact(rng, *item))
            asked.append(item)
        elif recall and rng.random() < 0.7:
            w.chat(*rng.choice(FILLERS))
        else:
            task = shaped_task(rng, ws)
            w.task(task)
            if any(name in ("write_file", "edit_file") for name, _ in task.calls):
                refresh(ws)  # re-read the files only when the task changed them
    rng.shuffle(asked)
    for k, v in asked:
        w.chat(*ask_fact(rng, k, v))
    if told:
        w.ep.kinds.append("s_recall")
