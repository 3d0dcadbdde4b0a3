"""Many phrasings of the training tasks: several voices, indirect file references, typos.

`agent_tasks.VOICES` (0 by default: the generator as it was, no extra random draw) is the share of
tasks whose request is re-worded here. A voice is a way of asking (terse, polite, chatty, formal,
non-native); each has its own templates per task kind, with the task's slots ({name}, {path}, ...).
With probability INDIRECT a path in the project's package (settings, a module, a doc page) is named
by what it is ("the settings module", "the setup doc") instead, and the plan gains a `glob` call
that finds it, so the model learns to look the path up and copy it from the result. With
probability TYPO one plain word of the request has two letters swapped (never a name to copy).

These templates are the training set's own; the held-out eval's are in bench/eval_heldout.py, and
tests/default_model/test_eval_overlap.py checks that no 8-word run of one occurs in the other.
"""

from __future__ import annotations

import random
from pathlib import PurePosixPath
from typing import Any

INDIRECT = 0.3
TYPO = 0.15

VOICES: dict[str, tuple[tuple[str, ...], ...]] = {
    "list": (
        ("{where}: files?", "list {where}"),
        ("Would you please list the contents of {where}?", "Please tell me which files live in {where}."),
        ("what's sitting in {where} right now?", "gimme a look at {where}"),
        ("I would like an overview of the files in {where}.",),
        ("Please you show the files of {where}.",),
    ),
    "find": (
        ("def {name} location?", "{name}: where?"),
        ("Would you please tell me the file where {name} is defined?",),
        ("hmm where did {name} end up", "which file's got {name} in it?"),
        ("I am looking for the definition of the function {name}.",),
        ("In what file the function {name} is?",),
    ),
    "read_value": (
        ("{name} in {path}?", "value of {name}, {path}"),
        ("Would you please look up {name} in {path} for me?",),
        ("so what's {name} in {path} these days?", "peek at {path}, what's {name}"),
        ("Kindly report the value assigned to {name} in {path}.",),
        ("Which value has {name} in the file {path}?",),
    ),
    "read_args": (
        ("args of {name} ({path})?",),
        ("Would you please list the parameters that {name} in {path} accepts?",),
        ("what does {name} take as args? it's in {path}",),
        ("State the parameters of the function {name} defined in {path}.",),
    ),
    "read_lines": (
        ("line count of {path}?",),
        ("Would you please count how many lines {path} has?",),
        ("how many lines is {path} anyway",),
    ),
    "create": (
        ("{path} <- {text}",),
        ("Would you please create {path} and put this in it: {text}",),
        ("pop a new file at {path} with: {text}",),
        ("Kindly write a new file {path} whose content is: {text}",),
    ),
    "append": (
        ("append to {path}: {line}",),
        ("Would you please add '{line}' as the last line of {path}?",),
        ("stick '{line}' on the end of {path}",),
    ),
    "replace": (
        ("{path}: {name}={value}", "set {name} {value} in {path}"),
        ("Would you please change {name} to {value} in {path}?",),
        ("can we make {name} {value} in {path}?", "flip {name} to {value} in {path} pls"),
        ("Please update the value of {name} in {path} to {value}.",),
        ("Make please {name} equal {value} in the file {path}.",),
    ),
    "multi_step": (
        ("{name}={value}, wherever it is",),
        ("Would you please find the file that sets {name} and change it to {value}?",),
        ("not sure where {name} lives, but make it {value}",),
        ("Locate the definition of {name} and update its value to {value}.",),
    ),
    "missing": (
        ("{target}?",),
        ("Would you please show me {target}?",),
        ("got a sec to open {target}?",),
    ),
    "docs": (
        ("docs say {topic}?", "{topic}, from the docs"),
        ("Would you please look in the docs for {topic}?", "What do our docs say about {topic}?"),
        ("what's {topic} again? should be in the docs", "the docs mention {topic} somewhere, what is it"),
        ("Per the project documentation, state {topic}.",),
        ("In docs, what is {topic}?",),
    ),
    "copy_value": (
        ("copy {name} from {path} into {dest}",),
        ("Would you please write the value of {name} from {path} into a new file {dest}?",),
        ("grab {name} out of {path} and save it to {dest}",),
    ),
    "find_args": (
        ("{name} args?",),
        ("Would you please find {name} and tell me its parameters?",),
        ("what params does {name} want? no idea which file it's in",),
    ),
}
KIND_NAMES = {"settings": ("the settings module", "the settings file", "our settings")}


def typo(rng: random.Random, text: str, protect: list[str], *, spare_containing: bool = False) -> str:
    """Two inner letters of one plain word (5+ letters, not part of any protected name) swapped. With
    `spare_containing` a word that contains a protected name is spared too (the held-out eval's rule,
    bench/eval_heldout.py, which shares this helper)."""
    words = text.split(" ")
    ok = [
        i
        for i, w in enumerate(words)
        if len(w) >= 5 and w.isalpha() and not any(w in p or (spare_containing and p in w) for p in protect)
    ]
    if not ok:
        return text
    i = rng.choice(ok)
    w = words[i]
    j = rng.randint(1, len(w) - 3)
    words[i] = w[:j] + w[j + 1] + w[j] + w[j + 2 :]
    return " ".join(words)


def indirect_name(rng: random.Random, path: str) -> str | None:
    """What a project file is called without its path (None if it has no such name)."""
    p = PurePosixPath(path)
    if len(p.parts) != 2 or p.suffix not in (".py", ".md"):
        return None
    if p.name == "settings.py":
        return rng.choice(KIND_NAMES["settings"])
    if p.parts[0] == "docs":
        return rng.choice([f"the {p.stem} doc", f"the {p.stem} page of the docs"])
    if p.name != "__init__.py":
        return rng.choice([f"the {p.stem} module", f"the {p.stem} code"])
    return None


def voice(rng: random.Random, task: Any, files: dict[str, str]) -> Any:
    """`task` asked in a random voice (its calls and answer unchanged, but for a `glob` call first
    when the request names its file indirectly). Only kinds with templates and slots are re-worded."""
    templates = VOICES.get(task.kind)
    if not templates or not task.slots:
        return task
    slots = dict(task.slots)
    path = slots.get("path")
    indirect = None
    if path and task.kind in ("read_value", "read_args", "replace") and rng.random() < INDIRECT:
        name = PurePosixPath(path).name
        unique = sum(PurePosixPath(r).name == name for r in files) == 1
        indirect = indirect_name(rng, path) if unique else None
    if indirect:
        slots["path"] = indirect
    prompt = rng.choice(rng.choice(templates)).format(**slots)
    protect = [str(v) for k, v in task.slots.items()]
    if rng.random() < TYPO:
        prompt = typo(rng, prompt, protect)
    task.prompt = prompt
    if indirect:
        task.calls = [("glob", {"pattern": f"**/{PurePosixPath(path).name}"}), *task.calls]
        task.expect = [path, *task.expect]
    return task


# Facts to remember (agent_tasks.Fact with VOICES > 0): more keys and more ways to state and ask.
FACT_KEYS = ("my dog", "the printer", "the lunch spot", "the standup time", "the bug tracker", "my landlord")
FACT_SAY = (
    "{k} is called {v}, remember that.",
    "Don't forget: {k} is {v}.",
    "fyi, {k} = {v}",
    "Make a note that {k} is {v}.",
    "Something to keep: {k} is {v}.",
)
FACT_ASK = (
    "Do you remember {k}?",
    "{k} - what was it?",
    "What's {k} called again?",
    "Tell me {k} once more.",
)
