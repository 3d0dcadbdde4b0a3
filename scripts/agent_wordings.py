"""Wordings of the shaped episodes (scripts/agent_shapes.py): many ways to ask each task and to state
and ask a fact, put together from an opener, a core template and a closer, with a typo now and then.

Every template here is the training set's own; the held-out eval's (bench/eval_heldout.py) are
never copied, and scripts/check_eval_overlap.py checks that no 8-word run of them occurs here.
"""

from __future__ import annotations

import random

from agent_voices import typo

OPENERS = (
    "", "", "", "", "hey, ", "ok so ", "Quick thing: ", "Hi! ", "One more: ", "Next: ", "right, ",
    "So, ", "Alright - ", "Hello. ", "um ", "Okay, next task. ", "Hey there. ", "Another one: ",
)  # fmt: skip
CLOSERS = (
    "", "", "", "", " Thanks.", " thx", " please", " :)", " ty", " when you get a chance", "!",
    " - cheers", " Thank you!", " asap", " if you can",
)  # fmt: skip

ASKS: dict[str, tuple[str, ...]] = {
    "lookup": (
        "what is {c} in {p}?", "{c} in {p}?", "tell me the value of {c} from {p}",
        "Can you look at {p} and tell me what {c} is?", "I need to know {c}. It's set in {p}.",
        "what value does {p} give {c}?", "what did we set {c} to in {p}", "check {c} in {p}",
        "Please read {p} and report {c}.", "{p}: what's {c}?", "What number or text is {c} in {p}?",
        "how is {c} set in {p}", "Tell me {c} (it is in {p}).", "which value is {c} having in {p}?",
        "look up {c} in {p} for me", "Could you read off {c} from {p}?",
    ),
    "find": (
        "where is {f} defined?", "which file has {f}?", "find {f}", "{f}: which module?",
        "In which file does the function {f} live?", "where's the code for {f}",
        "Can you find where {f} is implemented?", "locate {f} please", "what file defines {f}",
        "I can't find {f}, where is it?", "Which source file holds def {f}?", "find me the file of {f}",
        "{f} is defined where?", "show me where {f} is written",
    ),
    "list": (
        "what's in {d}?", "list {d}", "list the folder {d}", "which files does {d} have?",
        "Can you show the contents of {d}?", "show {d}", "what do we have under {d}?",
        "Please list everything in the {d} folder.", "{d} - what files?", "files in {d}?",
        "give me a listing of {d}", "What does the folder {d} hold?", "tell me what lives in {d}",
    ),
    "docs": (
        "what do the docs say about {q}?", "{q}? check the docs", "look in the docs: {q}",
        "Can you find in the documentation {q}?", "the docs should tell {q}, what is it?",
        "According to our docs, {q}?", "I forgot {q}. It's written in the docs somewhere.",
        "search the docs for {q}", "Please read the docs, then answer: {q}.", "from the docs: {q}?",
        "{q} - see the documentation", "do the docs mention {q}?",
    ),
    "create": (
        "create {p} with: {t}", "make a file {p} containing {t}", "new file {p} with the text {t}",
        "Please write a new file at {p}. Content: {t}", "put '{t}' in a new file {p}",
        "{p} should say: {t}", "Can you create {p}? It should contain: {t}",
        "save this as {p}: {t}", "write {t} into {p} (new file)", "I need a file {p} that reads: {t}",
        "create the file {p} and write '{t}' in it", "start a file {p} with the line {t}",
    ),
    "edit": (
        "in {p}, set {c} to {v}", "change {c} in {p} to {v}", "{p}: {c} should be {v}",
        "Please change {c} in {p}: it should be {v}.", "update {c} to {v} ({p})", "in {p} make {c} {v}",
        "Can you set {c} = {v} in {p}?", "{c} needs to be {v} now, it's in {p}",
        "edit {p} so {c} is {v}", "replace the value of {c} in {p} with {v}", "{p}: {c} to {v} pls",
        "we need {c} at {v}; it is defined in {p}", "switch {c} over to {v} in {p}",
    ),
    "missing": (
        "show me {p}", "read {p}", "what's in {p}?", "open {p} please", "what does {p} say?",
        "Can you summarise {p}?", "print {p}", "I need what {p} contains.", "cat {p}",
        "tell me what {p} contains", "give me {p}", "how long is {p}?", "read {p} and sum it up",
    ),
    "multi": (
        "find {c} and set it to {v}", "{c} should be {v}, wherever it is set",
        "change {c} to {v}, I don't know which file", "search for {c} and make it {v}",
        "set {c} to {v} (it's somewhere in the code)", "look for {c} and change its value to {v}",
        "Can you track down {c} and update it to {v}?", "{c} -> {v}, find the file first",
        "update {c} to {v} in whatever file defines it", "grep for {c} and set it to {v}",
        "{c} must become {v}. Not sure where it lives.",
    ),
}  # fmt: skip

# Facts told in the conversation: the core of the statement and of the question, around the key.
SAY_OPENERS = (
    "", "", "", "by the way, ", "oh and ", "fyi ", "Note that ", "Remember: ", "For the record, ",
    "keep this in mind: ", "One thing to remember: ", "just so you know, ", "Small detail: ",
    "Also, ", "Don't forget that ", "Write this down: ", "Before I forget, ", "psst, ",
)  # fmt: skip
SAY_CORES = (
    "{k} is {v}", "{k} is called {v}", "{k} = {v}", "{k}: {v}", "{k}'s name is {v}",
    "{k} is named {v}", "we call {k} {v}", "{k} is actually {v}", "{k} will be {v}",
    "{k} has been {v} for a while", "{k} is set to {v}", "{k} goes by {v}",
)  # fmt: skip
SAY_CLOSERS = ("", ".", ".", "!", ", ok?", " - remember it.", ". Got that?", " :)", ". thanks")
ASK_OPENERS = (
    "", "", "", "hey, ", "so ", "quick question: ", "remind me, ", "Sorry, ", "hmm, ", "one sec, ",
    "Tell me again: ", "ok, ", "From earlier: ",
)  # fmt: skip
ASK_CORES = (
    "what is {k}?", "what's {k}?", "what is {k} called?", "{k}?", "do you remember {k}?",
    "what did I say {k} was?", "what was {k}?", "which one is {k}?", "I forgot {k}, what is it?",
    "what name did I give for {k}?", "can you tell me {k}?", "{k} was what again?",
    "what did I tell you about {k}?", "who or what is {k}?",
)  # fmt: skip
ACKS = ("Got it: {k} is {v}.", "Noted: {k} is {v}.", "Okay, {k} is {v}.", "I'll remember that {k} is {v}.")

# Filler turns between a fact and its question (what a person says that needs no tool).
FILLERS = (
    ("ok", "Okay."), ("nice", "Thanks."), ("one moment", "Sure."), ("back in five", "Okay."),
    ("that worked", "Good."), ("hmm", "Take your time."), ("lunch now", "Enjoy."),
    ("cool, thanks", "You're welcome."),
    ("the build is green", "Great."), ("gonna reboot", "Okay."), ("I'm back", "Welcome back."),
    ("nothing for now", "Okay."), ("good progress today", "Agreed."), ("wait", "Sure."),
    ("my laptop is slow today", "That's annoying."), ("got it", "Good."), ("yep", "Okay."),
)  # fmt: skip


# A greeting alone is answered in words, never taken for a task (the v6 model listed a folder called
# `hello`: docs/results.md); episodes of scripts/agent_shapes.py sometimes open with one.
GREETINGS = (
    ("hello", "Hello! What can I do for you in this project?"), ("hi", "Hi! What should I look at?"),
    ("hey", "Hey! What do you need?"), ("good morning", "Good morning! What can I do for you?"),
    ("hi there", "Hi! What can I help with?"), ("hey, how are you?", "Fine, thanks. What can I do for you?"),
    ("yo", "Hi! What do you need?"), ("morning", "Morning! What's first?"),
    ("hello there", "Hello! What should I do?"), ("are you there?", "Yes. What can I do for you?"),
    ("good evening", "Good evening! What can I do for you?"), ("howdy", "Hi! What do you need?"),
    ("hi, ready to work?", "Ready. What's the task?"), ("hello again", "Hello again! What's next?"),
)  # fmt: skip


def greeting(rng: random.Random) -> tuple[str, str]:
    """A greeting turn (user, reply), capitalised or punctuated now and then."""
    user, reply = rng.choice(GREETINGS)
    if rng.random() < 0.4:
        user = _cap(user)
    if rng.random() < 0.3 and user[-1].isalpha():
        user += rng.choice(("!", ".", " :)"))
    return user, reply


def _cap(text: str) -> str:
    return text[0].upper() + text[1:] if text else text


def ask(rng: random.Random, kind: str, protect: list[str], **slots: str) -> str:
    """A request of `kind` with `slots`: opener, a core template, closer; a typo in 15% (never in a
    word that holds a name to copy)."""
    template, opener = rng.choice(ASKS[kind]), rng.choice(OPENERS)
    text = opener + template.format(**slots)
    if not template.endswith("{t}"):  # after a text to copy, a closer would read as part of it
        text += rng.choice(CLOSERS)
    return styled(rng, text, protect, bool(opener) or not template.startswith("{"))  # never a name's letter


def styled(rng: random.Random, text: str, protect: list[str], cap_ok: bool) -> str:
    """A request's casual touches: capitalised in half (where `cap_ok`: not a name's first letter), a
    typo in 15% (never in a word that holds a name of `protect`)."""
    if rng.random() < 0.5 and cap_ok:
        text = _cap(text)
    if rng.random() < 0.15:
        text = typo(rng, text, protect, spare_containing=True)
    return text


def say_fact(rng: random.Random, key: str, value: str) -> tuple[str, str]:
    """(statement, acknowledgement) of a fact, in a free wording."""
    core = rng.choice(SAY_CORES).format(k=key, v=value)
    text = rng.choice(SAY_OPENERS) + core + rng.choice(SAY_CLOSERS)
    if rng.random() < 0.6:
        text = _cap(text)
    if rng.random() < 0.1:
        text = typo(rng, text, [key, value], spare_containing=True)
    return text, rng.choice(ACKS).format(k=key, v=value)


def ask_fact(rng: random.Random, key: str, value: str) -> tuple[str, str]:
    """(question, answer) about a fact stated earlier: the answer repeats the value exactly."""
    text = rng.choice(ASK_OPENERS) + rng.choice(ASK_CORES).format(k=key)
    if rng.random() < 0.5:
        text = _cap(text)
    if rng.random() < 0.1:
        text = typo(rng, text, [key], spare_containing=True)
    return text, f"{_cap(key)} is {value}."


def templates() -> list[str]:
    """Every template of this file as written (for scripts/check_eval_overlap.py)."""
    out = [t for group in ASKS.values() for t in group]
    out += [*SAY_CORES, *ASK_CORES, *ACKS, *(f for f, _ in FILLERS), *(g for g, _ in GREETINGS)]
    out += [o + c for o in SAY_OPENERS for c in SAY_CORES] + [o + c for o in ASK_OPENERS for c in ASK_CORES]
    return out
