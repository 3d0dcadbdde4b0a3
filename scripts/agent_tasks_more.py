"""Task kinds that join the mix with `agent_tasks.VOICES` > 0: answering from the docs, and tasks of
two tool calls where the second copies a name or value from the first one's result.

- docs: list docs/ (or not, for README.md), read the page, answer with the sentence that holds the fact;
- copy_value: read a constant and write its value into a new file;
- find_args: grep for a function nobody located, read that file, answer with its parameters.
"""

from __future__ import annotations

import random
from collections.abc import Callable

from agent_tasks import Task, _file_is, _has_all, _said_missing
from agent_workspaces import Workspace


def docs_task(rng: random.Random, ws: Workspace) -> Task:
    rel, topic, value = rng.choice(ws.docs)
    line = next(x for x in ws.files[rel].splitlines() if value in x)
    prompt = rng.choice([f"What do the docs say about {topic}?", f"Check the docs: {topic}?"])
    calls: list[tuple[str, dict[str, object]]] = [("read_file", {"path": rel})]
    expect = [value]
    if rel != "README.md":
        calls.insert(0, ("list_dir", {"path": "docs"}))
        expect.insert(0, rel.split("/")[1])
    return Task("docs", prompt, calls, f"{rel} says: {line}", _has_all([value]), expect, {"topic": topic})


def copy_value_task(rng: random.Random, ws: Workspace) -> Task:
    c = rng.choice(ws.constants)
    dest = ""
    while not dest or dest in ws.files:
        dest = f"{rng.choice(['notes', 'tmp', 'out'])}/{c.name.lower()}_{rng.randint(1, 99)}.txt"
    prompt = rng.choice(
        [f"Save {c.name} from {c.path} into {dest}.", f"Put the value of {c.name} ({c.path}) in {dest}."]
    )
    calls: list[tuple[str, dict[str, object]]] = [
        ("read_file", {"path": c.path}),
        ("write_file", {"path": dest, "content": c.value + "\n"}),
    ]
    slots = {"name": c.name, "path": c.path, "dest": dest}
    answer = f"Wrote {c.value} to {dest}."
    return Task(
        "copy_value", prompt, calls, answer, _file_is(dest, c.value + "\n"), [c.value, "created"], slots
    )


def find_args_task(rng: random.Random, ws: Workspace) -> Task:
    fn = rng.choice(ws.functions)
    prompt = rng.choice([f"What parameters does {fn.name} take?", f"Find {fn.name} and list its arguments."])
    calls: list[tuple[str, dict[str, object]]] = [
        ("grep", {"pattern": f"def {fn.name}"}),
        ("read_file", {"path": fn.path}),
    ]
    if fn.args:
        answer = f"{fn.name} in {fn.path} takes: {', '.join(fn.args)}."
        check = _has_all(fn.args)
    else:
        answer = f"{fn.name} in {fn.path} takes no arguments."
        check = lambda _r, a: _said_missing(a)
    return Task("find_args", prompt, calls, answer, check, [fn.path, f"def {fn.name}("], {"name": fn.name})


MORE_TASKS: dict[str, Callable[[random.Random, Workspace], Task]] = {
    "docs": docs_task,
    "copy_value": copy_value_task,
    "find_args": find_args_task,
}
MORE_WEIGHTS = {"docs": 3.0, "copy_value": 1.5, "find_args": 1.5, "missing": 2.0}


def can_pose(kind: str, ws: Workspace) -> bool:
    return kind != "docs" or bool(ws.docs)
