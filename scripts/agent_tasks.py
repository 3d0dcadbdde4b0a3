"""Task kinds for the default model: a request, the tool calls that answer it, the final answer, and a
judge that checks the *outcome* (the workspace's files, or facts in the answer), never the wording.

Each task is planned from the workspace's metadata (scripts/agent_workspaces.py); the tool results
the model trains on come from running the real tools (scripts/make_agent_data.py), and `expect` lists
text each result must contain, so a plan that does not match what the tools really say fails loudly.
"""

from __future__ import annotations

import random
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from agent_workspaces import WORDS, Constant, Workspace, fresh_name, note_line, pick

Check = Callable[[Path, str], bool]


@dataclass
class Task:
    kind: str
    prompt: str
    calls: list[tuple[str, dict[str, object]]]
    answer: str
    check: Check
    expect: list[str] = field(default_factory=list)  # text that the i-th result must contain
    slots: dict[str, str] = field(default_factory=dict)  # what scripts/agent_voices.py may re-word


def _has_all(words: list[str]) -> Check:
    return lambda _root, answer: all(w in answer for w in words)


def _said_missing(answer: str) -> bool:
    return bool(re.search(r"\b(not|no|does not|doesn't|couldn't|cannot|can't)\b", answer.lower()))


def _file_is(rel: str, text: str) -> Check:
    def check(root: Path, _answer: str) -> bool:
        path = root / rel
        return path.is_file() and path.read_text(encoding="utf-8") == text

    return check


def list_task(rng: random.Random, ws: Workspace) -> Task:
    folder = rng.choice([*ws.folders, "."]) if ws.folders else "."
    entries = ws.entries(folder)
    where = "the project" if folder == "." else folder
    prompt = rng.choice(
        [
            f"What is in {where}?",
            f"List the files in {where}.",
            f"Show me what {where} contains.",
            f"What files are there in {where}?",
            f"Can you list {where} for me?",
        ]
    )
    names = ", ".join(entries)
    answer = f"{where[0].upper() + where[1:]} has {len(entries)} entries: {names}."
    if len(entries) == 1:
        answer = f"{where[0].upper() + where[1:]} has one entry: {names}."
    return Task(
        "list",
        prompt,
        [("list_dir", {"path": folder})],
        answer,
        _has_all(entries),
        [entries[0]],
        {"where": where},
    )


def find_def_task(rng: random.Random, ws: Workspace) -> Task:
    fn = rng.choice(ws.functions)
    prompt = rng.choice(
        [
            f"Where is {fn.name} defined?",
            f"Find the definition of {fn.name}.",
            f"Which file defines {fn.name}?",
            f"In which file is the function {fn.name}?",
            f"Where can I find {fn.name}?",
        ]
    )
    answer = f"{fn.name} is defined in {fn.path} at line {fn.line}."
    return Task(
        "find",
        prompt,
        [("grep", {"pattern": f"def {fn.name}"})],
        answer,
        _has_all([fn.path]),
        [fn.path],
        {"name": fn.name},
    )


def read_value_task(rng: random.Random, ws: Workspace) -> Task:
    c = rng.choice(ws.constants)
    prompt = rng.choice(
        [
            f"What is {c.name} set to in {c.path}?",
            f"What's the value of {c.name} in {c.path}?",
            f"Read {c.path} and tell me {c.name}.",
            f"Check {c.path}: what is {c.name}?",
        ]
    )
    answer = f"{c.name} is {c.value}."
    return Task(
        "read_value",
        prompt,
        [("read_file", {"path": c.path})],
        answer,
        _has_all([c.value]),
        [c.value],
        {"name": c.name, "path": c.path},
    )


def func_args_task(rng: random.Random, ws: Workspace) -> Task:
    fn = rng.choice(ws.functions)
    prompt = rng.choice(
        [
            f"What arguments does {fn.name} in {fn.path} take?",
            f"Which parameters does {fn.name} have? It is in {fn.path}.",
            f"Look at {fn.path}: what are the arguments of {fn.name}?",
        ]
    )
    if fn.args:
        answer = (
            f"{fn.name} takes {len(fn.args)} argument{'s' if len(fn.args) > 1 else ''}: {', '.join(fn.args)}."
        )
        check = _has_all(fn.args)
    else:
        answer = f"{fn.name} takes no arguments."
        check = lambda _r, a: _said_missing(a)
    calls: list[tuple[str, dict[str, object]]] = [("read_file", {"path": fn.path})]
    slots = {"name": fn.name, "path": fn.path}
    return Task("read_args", prompt, calls, answer, check, [f"def {fn.name}("], slots)


def line_count_task(rng: random.Random, ws: Workspace) -> Task:
    rel = rng.choice(sorted(ws.files))
    n = len(ws.files[rel].splitlines())
    prompt = rng.choice(
        [f"How many lines does {rel} have?", f"Count the lines in {rel}.", f"How long is {rel}, in lines?"]
    )
    return Task(
        "read_lines",
        prompt,
        [("read_file", {"path": rel})],
        f"{rel} has {n} lines.",
        lambda _r, a: re.search(rf"\b{n}\b", a) is not None,
        [f"of {n}]"],
        {"path": rel},
    )


def create_task(rng: random.Random, ws: Workspace) -> Task:
    rel = ""
    while not rel or rel in ws.files:  # a new file: "created", never "overwrote"
        folder = rng.choice([*ws.folders, "."])
        name = f"{rng.choice(['todo', 'notes', 'ideas', 'plan', 'draft', 'summary'])}_{pick(rng, WORDS)}.md"
        rel = name if folder == "." else f"{folder}/{name}"
    line = note_line(rng)
    text = line + "\n"
    prompt = rng.choice(
        [
            f"Create {rel} with the text: {line}",
            f"Make a new file {rel} containing '{line}'.",
            f"Write '{line}' to a new file called {rel}.",
        ]
    )
    return Task(
        "create",
        prompt,
        [("write_file", {"path": rel, "content": text})],
        f"Created {rel}.",
        _file_is(rel, text),
        ["created"],
        {"path": rel, "text": line},
    )


def append_task(rng: random.Random, ws: Workspace) -> Task:
    notes = [r for r in ws.files if r.endswith(".md")]
    rel = rng.choice(notes) if notes else rng.choice(sorted(ws.files))
    text = ws.files[rel]
    last = text.splitlines()[-1]
    line = f"- {note_line(rng)} ({pick(rng, WORDS)})"
    prompt = rng.choice(
        [
            f"Add the line '{line}' at the end of {rel}.",
            f"Append '{line}' to {rel}.",
            f"Put '{line}' at the bottom of {rel}.",
        ]
    )
    calls: list[tuple[str, dict[str, object]]] = [
        ("read_file", {"path": rel}),
        ("edit_file", {"path": rel, "old_string": last, "new_string": f"{last}\n{line}"}),
    ]
    new_text = text.rstrip("\n") + f"\n{line}\n"
    if text.count(last) != 1:  # the last line must be a unique anchor; else rewrite the whole file
        calls[1] = ("write_file", {"path": rel, "content": new_text})
    slots = {"path": rel, "line": line}
    return Task("append", prompt, calls, f"Added the line to {rel}.", _file_is(rel, new_text), [last], slots)


def _replace_plan(rng: random.Random, ws: Workspace, c: Constant) -> tuple[str, Task]:
    text = ws.files[c.path]
    old_line = text.splitlines()[c.line - 1]
    quoted = old_line.endswith("'")
    new_value = pick(rng, WORDS) if quoted else str(rng.randint(2, 9999))
    new_line = old_line.split("=")[0] + "= " + (repr(new_value) if quoted else new_value)
    prompt = rng.choice(
        [
            f"Set {c.name} to {new_value} in {c.path}.",
            f"Change {c.name} in {c.path} to {new_value}.",
            f"In {c.path}, replace the value of {c.name} with {new_value}.",
        ]
    )
    new_text = text.replace(old_line, new_line, 1)
    calls: list[tuple[str, dict[str, object]]] = [
        ("read_file", {"path": c.path}),
        ("edit_file", {"path": c.path, "old_string": old_line, "new_string": new_line}),
    ]
    answer = f"{c.name} is now {new_value} in {c.path}."
    slots = {"name": c.name, "value": new_value, "path": c.path}
    task = Task("replace", prompt, calls, answer, _file_is(c.path, new_text), [old_line, "edited"], slots)
    return new_value, task


def replace_task(rng: random.Random, ws: Workspace) -> Task:
    return _replace_plan(rng, ws, rng.choice(ws.constants))[1]


def multi_step_task(rng: random.Random, ws: Workspace) -> Task:
    """Find where a constant is defined (grep), read that file, then edit it."""
    c = rng.choice(ws.constants)
    new_value, task = _replace_plan(rng, ws, c)
    prompt = rng.choice(
        [
            f"Find where {c.name} is set and change it to {new_value}.",
            f"Somewhere in the project {c.name} is defined; set it to {new_value}.",
            f"Look up {c.name} and update it to {new_value}.",
        ]
    )
    calls = [("grep", {"pattern": f"^{c.name} ="}), *task.calls]
    slots = {"name": c.name, "value": new_value}
    return Task("multi_step", prompt, calls, task.answer, task.check, [c.path, *task.expect], slots)


def missing_task(rng: random.Random, ws: Workspace) -> Task:
    taken = {f.name for f in ws.functions}
    choice = rng.random()
    if choice < 0.4:
        name = fresh_name(rng, taken)
        prompt = rng.choice([f"Where is {name} defined?", f"Find the definition of {name}."])
        return Task(
            "missing",
            prompt,
            [("grep", {"pattern": f"def {name}"})],
            f"{name} is not defined anywhere in the project.",
            lambda _r, a: _said_missing(a),
            ["no matches"],
            {"target": f"the definition of {name}"},
        )
    folder = rng.choice([*ws.folders, "."])
    stem = f"{pick(rng, WORDS)}_{rng.choice(['notes.md', 'config.toml', 'main.py'])}"
    rel = stem if folder == "." else f"{folder}/{stem}"
    prompt = rng.choice(
        [
            f"What does {rel} contain?",
            f"Read {rel} for me.",
            f"Show me {rel}.",
            f"How many lines does {rel} have?",
        ]
    )
    return Task(
        "missing",
        prompt,
        [("read_file", {"path": rel})],
        f"{rel} does not exist.",
        lambda root, a: _said_missing(a) and not (root / rel).exists(),
        ["does not exist"],
        {"target": rel},
    )


TASKS: dict[str, Callable[[random.Random, Workspace], Task]] = {
    "list": list_task,
    "find": find_def_task,
    "read_value": read_value_task,
    "read_args": func_args_task,
    "read_lines": line_count_task,
    "create": create_task,
    "append": append_task,
    "replace": replace_task,
    "multi_step": multi_step_task,
    "missing": missing_task,
}


# How often each kind is drawn, relative to the others: the kinds that copy exact values (from a tool
# result or from the request into a call) were the held-out eval's weak ones with equal weights.
WEIGHTS: dict[str, float] = {
    "read_value": 1.5,
    "read_args": 2.0,
    "append": 2.0,
    "replace": 2.0,
    "multi_step": 2.0,
}


VOICES = 0.0  # share of requests re-worded by scripts/agent_voices.py; 0: the generator as it was


def make_task(rng: random.Random, ws: Workspace, kinds: Sequence[str] | None = None) -> Task:
    """A task of one of `kinds` (any kind when None, drawn by WEIGHTS) that this workspace can pose.
    With VOICES > 0 the kinds of scripts/agent_tasks_more.py join in and requests may be re-worded."""
    from agent_tasks_more import MORE_TASKS, MORE_WEIGHTS, can_pose

    table = {**TASKS, **MORE_TASKS} if VOICES else TASKS
    weights = {**WEIGHTS, **MORE_WEIGHTS} if VOICES else WEIGHTS
    allowed = [k for k in (kinds or table) if ws.functions or k not in ("find", "read_args", "find_args")]
    allowed = [
        k for k in allowed if ws.constants or k not in ("read_value", "replace", "multi_step", "copy_value")
    ]
    allowed = [k for k in allowed if can_pose(k, ws)]
    allowed = allowed or ["list", "read_lines"]
    kind = rng.choices(allowed, weights=[weights.get(k, 1.0) for k in allowed])[0]
    task = table[kind](rng, ws)
    if VOICES and rng.random() < VOICES:
        from agent_voices import voice

        task = voice(rng, task, ws.files)
    return task


# ---- memory: facts told early, asked later ------------------------------------------------------
FACT_KEYS = (
    "the staging server",
    "the database host",
    "the release branch",
    "my team's channel",
    "the project codename",
    "the build machine",
    "the backup bucket",
    "the test account",
    "the on-call engineer",
    "the deploy region",
    "the api gateway",
    "the cache cluster",
    "my manager",
    "the demo day",
    "the main customer",
)
CHITCHAT = (
    ("Thanks!", "You're welcome."),
    ("Good morning.", "Good morning! What can I do?"),
    ("I'll be back after lunch.", "Okay, see you then."),
    ("Let's keep going.", "Sure. What next?"),
    ("That looks right.", "Good."),
    ("I'm working on the login page today.", "Okay."),
    ("The tests passed on my machine.", "Great."),
    ("Give me a minute.", "Take your time."),
    ("Nice work.", "Thanks."),
    ("I pushed the branch.", "Okay."),
    ("The meeting moved to three.", "Noted."),
    ("Coffee first.", "Enjoy."),
    ("Hmm, let me think.", "Sure."),
    ("We can ship this tomorrow.", "Sounds good."),
)


@dataclass
class Fact:
    key: str
    value: str

    def statement(self, rng: random.Random) -> tuple[str, str]:
        said = rng.choice(
            [
                f"Remember that {self.key} is {self.value}.",
                f"Just so you know, {self.key} is {self.value}.",
                f"Note: {self.key} is {self.value}.",
                f"FYI {self.key} is {self.value}.",
                f"Keep in mind that {self.key} is called {self.value}.",
            ]
        )
        if VOICES and rng.random() < VOICES:
            from agent_voices import FACT_SAY

            said = rng.choice(FACT_SAY).format(k=self.key, v=self.value)
            said = said[0].upper() + said[1:]
        return said, f"Got it: {self.key} is {self.value}."

    def question(self, rng: random.Random) -> tuple[str, str]:
        asked = rng.choice(
            [
                f"What is {self.key}?",
                f"Remind me, what is {self.key}?",
                f"What did I say {self.key} was?",
                f"Which one is {self.key} again?",
            ]
        )
        if VOICES and rng.random() < VOICES:
            from agent_voices import FACT_ASK

            asked = rng.choice(FACT_ASK).format(k=self.key)
            asked = asked[0].upper() + asked[1:]
        key = self.key[0].upper() + self.key[1:]
        return asked, f"{key} is {self.value}."


def make_facts(rng: random.Random, n: int) -> list[Fact]:
    if VOICES:
        from agent_voices import FACT_KEYS as MORE_KEYS

        keys = rng.sample(FACT_KEYS + MORE_KEYS, n)
    else:
        keys = rng.sample(FACT_KEYS, n)
    values = [
        rng.choice([pick(rng, WORDS), f"{pick(rng, WORDS)}-{rng.randint(1, 99)}", str(rng.randint(10, 9999))])
        for _ in keys
    ]
    return [Fact(k, v) for k, v in zip(keys, values, strict=True)]
