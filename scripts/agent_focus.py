"""Focus episodes: more of the three shapes the default model gets wrong most (docs/training.md).

A share `FOCUS` of the shaped episodes (scripts/agent_shapes.py, `--shapes P`) is one of these:

- f_docs: a docs question answered from the page that holds the fact. The folder has distractor
  pages; when no page name gives the topic away the plan lists docs/, reads a wrong page, sees the fact
  is not there and reads the right one (or greps a word of the question in docs/). A question never
  leads to an edit, and the answer starts with the exact value, then quotes the line it came from.
- f_multi: a setting changed without its file named: grep, then (often) read, then edit, the new
  value copied from the request after one or two tool results came in between.
- f_recall: facts told, several unrelated turns (fillers, another fact, now and then a small task),
  then the questions, answered from the conversation with no tool call.

Wordings are this file's own (never the held-out eval's: scripts/check_eval_overlap.py checks).
"""

from __future__ import annotations

import random
import re
from collections.abc import Callable
from typing import Any

import agent_shapes as sh
from agent_tasks import Task, _file_is, _has_all
from agent_wordings import ACKS, FILLERS, OPENERS, ask_fact, say_fact, styled
from agent_workspaces import Workspace

FOCUS = 0.35  # share of shaped episodes that are focus episodes

DOCS_ASKS = (
    "what does the documentation say about {q}?", "{q}? the answer is in docs/", "docs question: {q}",
    "Can you look up {q} in our docs?", "the docs folder explains {q}. what is it?",
    "I'd like to know {q}, going by the docs", "Find out from the docs {q}.", "read up on {q} in the docs",
    "what's written in the docs on {q}?", "somewhere in the docs: {q}. tell me", "{q} (per our docs)?",
    "Our documentation covers {q} - what does it say?", "check docs/ and tell me {q}",
    "look through the docs for {q}, don't change anything", "just tell me {q}, it's documented",
)  # fmt: skip
MULTI_ASKS = (
    "{c} is set somewhere; its new value is {v}", "give {c} the value {v}, wherever it is defined",
    "find the file with {c} and put {v} there", "I don't know where {c} is defined. Change it to {v}.",
    "{c} should now hold {v} - locate it first", "locate {c} in the code and set it to {v}",
    "{c}: new value {v} (file unknown)", "hunt down {c} and make its value {v}",
    "can you find {c} and then change it to {v}?", "somewhere there's {c}. update it to {v} please",
    "make {c} equal {v}; search for it first", "put {v} into {c}, whichever file has it",
    "we need {c} to be {v} now. no clue where it's set", "new value for {c}: {v}. find where it lives",
)  # fmt: skip
FACT_ASKS = (
    "{k} - what was it again?", "what did I say about {k} earlier?", "can you recall {k}?",
    "what's {k} again?", "hey, {k}: what did I tell you?", "from memory: {k}?", "remind me of {k}",
    "earlier I told you {k}. what was it?", "tell me {k} again", "what was {k} again? I forgot",
    "{k}, as I mentioned: which was it?", "do you still know {k}?", "what was it, {k}?",
    "you remember {k}? say it", "{k} again please", "what did I say {k} is?",
)  # fmt: skip
FACT_SAYS = (
    "for future reference, {k} is {v}", "note for later - {k} is {v}", "fyi: {k} = {v}",
    "quick note, {k} is {v}", "{k} is {v}, please remember", "keep in mind: {k} is {v}",
    "save this for later: {k} is {v}", "store this: {k} = {v}", "{k}? that's {v}",
    "good to know: {k} is {v}", "one fact for you: {k} is {v}", "{k} -> {v}",
)  # fmt: skip
MORE_FILLERS = (
    ("k", "Okay."), ("sure thing", "Okay."), ("afk a sec", "Sure."), ("let me check something", "Sure."),
    ("the call ran over", "Okay."), ("back", "Welcome back."), ("fine by me", "Good."), ("mhm", "Okay."),
    ("grabbing a tea", "Enjoy."), ("alright", "Okay."), ("all good", "Great."), ("hold on", "Sure."),
    ("meeting in ten", "Okay."), ("looks fine", "Good."), ("done with that", "Great."),
)  # fmt: skip
_STOP = {"which", "where", "what", "when", "that", "this", "with", "from", "does", "have", "long", "many"}


def _ask(rng: random.Random, templates: tuple[str, ...], protect: list[str], **slots: str) -> str:
    text = rng.choice(OPENERS) + rng.choice(templates).format(**slots)
    return styled(rng, text, protect, text[:1].islower() and not any(text.startswith(p) for p in protect))


def _keyword(question: str, sentence: str, fallback: str) -> str:
    """A word of the question that the docs sentence holds too (a grep a reader could guess)."""
    words = [w for w in re.findall(r"[A-Za-z]{4,}", question) if w.lower() not in _STOP]
    shared = [w for w in words if w.lower() in sentence.lower()]
    return max(shared, key=len).lower() if shared else fallback


def docs(rng: random.Random, ws: Workspace) -> Task:
    rel, question, x = rng.choice(ws.docs)
    line = next(t for t in ws.files[rel].splitlines() if x in t)
    pages = sorted(r for r in ws.files if r.startswith("docs/"))
    others = [p for p in pages if p != rel]
    calls: sh.Calls
    if rel == "README.md":
        calls, expect = [("read_file", {"path": rel})], [x]
    elif rng.random() < 0.3:
        key = _keyword(question, line, ws.doc_keys[rel][0])
        calls, expect = [("grep", {"pattern": key, "path": "docs", "ignore_case": True})], [x]
    elif ws.doc_keys[rel][1] or not others:  # the page's name gives the topic away
        calls = [("list_dir", {"path": "docs"}), ("read_file", {"path": rel})]
        expect = [rel.split("/")[1], x]
    else:  # a wrong page first: the fact is not there, so the next page is read
        wrong = rng.choice(others)
        calls = [("list_dir", {"path": "docs"}), ("read_file", {"path": wrong}), ("read_file", {"path": rel})]
        expect = [rel.split("/")[1], ws.files[wrong].splitlines()[0], x]
    answer = rng.choice(
        [f"{x}. {rel} says: {line}", f"{x} (from {rel}: {line})", f"According to {rel}, {x}: {line}"]
    )
    return Task("f_docs", _ask(rng, DOCS_ASKS, [], q=question), calls, answer, _has_all([x]), expect)


def multi(rng: random.Random, ws: Workspace) -> Task:
    c = rng.choice(ws.constants)
    new = sh._new_value(rng, c)
    edit, old_line, new_text = sh._edit_calls(rng, ws, c, new)
    calls: sh.Calls = [("grep", {"pattern": f"^{c.name} ="})]
    expect = [c.path]
    if rng.random() < 0.6:
        calls.append(("read_file", {"path": c.path}))
        expect.append(old_line)
    answer = rng.choice([f"{c.name} is now {new} in {c.path}.", f"Set {c.name} to {new} in {c.path}."])
    prompt = _ask(rng, MULTI_ASKS, [c.name, new], c=c.name, v=new)
    return Task("f_multi", prompt, calls + edit, answer, _file_is(c.path, new_text), [*expect, "edited"])


def _say(rng: random.Random, key: str, value: str) -> tuple[str, str]:
    if rng.random() < 0.5:
        return say_fact(rng, key, value)
    text = rng.choice(FACT_SAYS).format(k=key, v=value)
    text = text[0].upper() + text[1:] if rng.random() < 0.5 else text
    return text, rng.choice(ACKS).format(k=key, v=value)


def _asked(rng: random.Random, key: str, value: str) -> tuple[str, str]:
    if rng.random() < 0.4:
        return ask_fact(rng, key, value)
    text = rng.choice(FACT_ASKS).format(k=key)
    text = text[0].upper() + text[1:] if rng.random() < 0.5 else text
    cap = key[0].upper() + key[1:]
    return text, rng.choice(
        [f"{cap} is {value}.", f"You said {key} is {value}.", f"It is {value}.", f"{value}."]
    )


def recall(rng: random.Random, w: Any, ws: Workspace, refresh: Callable[[Workspace], None]) -> None:
    """Facts told, 2-10 unrelated turns (one of them another fact), then the questions."""
    told = sh.facts(rng, rng.randint(2, 4))
    targets, others = told[: rng.randint(1, len(told) - 1)], told[len(told) - 1 :]
    for k, v in targets:
        w.chat(*_say(rng, k, v))
    middle: list[Any] = [None] * rng.randint(2, 10)
    for f in others:
        middle.insert(rng.randint(0, len(middle)), f)
    for item in middle:
        if isinstance(item, tuple):
            w.chat(*_say(rng, *item))
        elif rng.random() < 0.15:
            task = sh.shaped_task(rng, ws)
            w.task(task)
            if any(name in ("write_file", "edit_file") for name, _ in task.calls):
                refresh(ws)
        else:
            w.chat(*rng.choice(FILLERS + MORE_FILLERS))
    asked = [*targets, *[f for f in others if rng.random() < 0.3]]
    rng.shuffle(asked)
    for k, v in asked:
        w.chat(*_asked(rng, k, v))
    w.ep.kinds.append("f_recall")


def episode(rng: random.Random, w: Any, ws: Workspace, refresh: Callable[[Workspace], None]) -> None:
    """A recall episode (40%), or 1-4 tasks, most of them f_docs or f_multi, some other shaped ones;
    in a third of those a fact is told first and asked after the tasks (a question after tool turns
    is still answered from the conversation)."""
    if rng.random() < 0.4:
        recall(rng, w, ws, refresh)
        return
    told = sh.facts(rng, 1) if rng.random() < 0.33 else []
    for k, v in told:
        w.chat(*_say(rng, k, v))
    for _ in range(rng.randint(1, 4)):
        r = rng.random()
        if r < 0.45 and ws.docs:
            task = docs(rng, ws)
        elif r < 0.85 and ws.constants:
            task = multi(rng, ws)
        else:
            task = sh.shaped_task(rng, ws)
        w.task(task)
        if any(name in ("write_file", "edit_file") for name, _ in task.calls):
            refresh(ws)
    for k, v in told:
        w.chat(*_asked(rng, k, v))
        w.ep.kinds.append("f_recall")


def templates() -> list[str]:
    """Every template of this file as written (for scripts/check_eval_overlap.py)."""
    return [*DOCS_ASKS, *MULTI_ASKS, *FACT_ASKS, *FACT_SAYS, *(f for f, _ in MORE_FILLERS)]
