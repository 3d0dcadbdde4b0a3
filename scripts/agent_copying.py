"""Copying episodes: names and texts of the request copied exactly into tool calls and answers.

The default model's most common error outside docs questions is rewriting a name it has never seen
into a familiar-looking one (a project folder `ab`+`cd` written as `ab`+a word seen often in training),
copying the punctuation after a name into a path, taking a word of the wording ("all") for the
folder, or paraphrasing a note's text (docs/training.md). A share `FAMILY` of the shaped
workspaces (scripts/agent_shapes.py) holds a family of 2-4 sibling folders whose names share a head
or a tail with words common in training, or differ by a letter or two (`notesvelk`, `notesarum`,
`kelq-notes`, `tovrek`/`tovrex`), each with the same settings module (same constant names, other
values) and files whose stems are confusable too (distractors for the other shaped tasks as well);
a share `COPYING` of the shaped episodes is then 1-4 tasks about it:

- c_list: a sibling's entries, the folder named in indirect wordings ("what lives inside X",
  "contents of X"), often followed by `.`, `?`, `!`, `,` or `)`: the path is X only;
- c_lookup: a constant read from one sibling's settings (the others hold other values);
- c_missing: a file of a sibling that is not there (its stem is another sibling's file, or one letter
  off one of its own): read it or list the folder, then say so, naming exactly the path asked for;
- c_create: a new file whose text is a multi-word phrase (after "saying", "with the text", quoted or
  not; amounts with units and currencies), written verbatim with no lookup first;
- c_edit: a constant of one sibling set to a new value copied from the request (read, then edit).

Wordings and name pools are this file's own (scripts/check_eval_overlap.py checks both).
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import agent_names as nm
import agent_shapes as sh
from agent_tasks import Task, _file_is, _has_all, _said_missing
from agent_wordings import OPENERS, styled
from agent_workspaces import FOLDERS, Workspace

FAMILY = 0.6  # share of shaped workspaces that hold a family of sibling folders (plant)
COPYING = 0.18  # share of shaped episodes that are copying episodes (after agent_focus.FOCUS's share)

# Words the generator uses often (folders, module stems, page stems, code nouns, wording words): a
# name that starts or ends with one tempts a model to finish it from its prior instead of copying.
HEADS = (
    *FOLDERS, *dict.fromkeys(sh.SETTINGS_STEMS), *sh.PAGE_STEMS, *nm.CODE_NOUNS, "tests", "src",
    "summary", "draft", "branch", "branches", "match", "report", "build", "batch", "queue", "cache",
)  # fmt: skip
END = ("", "", "", ".", ".", "?", "?", "!", "?!", "...", " ?", ", thanks", ", please", ", cheers")
MONEY = ("USD", "SEK", "CHF", "NOK", "DKK", "JPY", "CAD", "AUD", "PLN", "CZK", "dollars", "kroner")
UNITS = ("kg", "g", "km", "ml", "l", "cm", "hours", "minutes", "days", "%", "GB", "MB", "px", "pages")
TODO_VERBS = (
    "ring", "email", "text", "visit", "feed", "water", "collect", "return", "book", "print", "sign",
    "pick up", "drop off", "thank", "remind", "invite", "meet", "ask", "fix", "clean", "wrap",
)  # fmt: skip
PAY_VERBS = ("pay", "send", "transfer", "owe", "budget", "charge", "wire", "set aside", "tip")
WHEN = (
    "after lunch", "by friday", "on tuesday", "before 9", "at 16:30", "tonight", "next week",
    "tomorrow morning", "by the 14th", "on the 3rd", "this weekend", "after 5 pm", "before 10:15",
    "first thing", "at half past two", "before the holidays", "in March",
)  # fmt: skip

LIST_ASKS = (
    "what's in {d}{e}", "contents of {d}{e}", "what is inside {d}{e}",
    "I'd like the contents of {d}{e}", "list all of {d}{e}",
    "peek inside {d}{e}", "what lives inside {d}{e}", "tell me what's in {d}{e}", "entries of {d}{e}",
    "which files sit in {d}{e}", "a dir listing for {d}{e}", "the folder {d} - contents{e}",
    "everything that's in {d}{e}", "(folder {d}) what's there?", "open the folder {d} and list it{e}",
    "anything inside {d}{e}", "show the contents of {d}{e}", "What does {d} contain{e}",
    "all of {d}{e}", "let me see what's inside {d}{e}", "list {d} for me{e}",
)  # fmt: skip
LOOKUP_ASKS = (
    "what's {c} in {p}{e}", "{c} from {p}{e}", "read {c} out of {p}{e}", "the value of {c} in {p}{e}",
    "{c}, as set in {p}{e}", "tell me {c} (see {p})", "check {p}: what is {c}?", "in {p}, what's {c}?",
    "open {p}, tell me {c}{e}", "{c}? look in {p}{e}", "what does {p} set {c} to{e}",
    "value of {c} (file: {p})", "I need {c} from {p}, not from the others{e}",
)  # fmt: skip
MISSING_ASKS = (
    "open {p}{e}", "what's in {p}{e}", "contents of {p}{e}", "show me {p}{e}", "read out {p}{e}",
    "summarise {p}{e}", "what does {p} say{e}", "I'd like to see {p}{e}", "have a look at {p}{e}",
    "cat {p}{e}", "print {p}{e}", "(file {p}) what's in it?", "quick look at {p}, please",
    "what is written in {p}{e}", "display {p}{e}", "go through {p} and tell me what it says{e}",
)  # fmt: skip
CREATE_ASKS = (
    "add {p} saying {t}", "a new file {p}, saying {t}", "could you add a note at {p} saying {t}",
    "write a file {p} with the text {t}", "new note {p} with the text {t}", "make me {p} saying {t}",
    "put the words {t} in a new file {p}", "I'd like {p} created, saying {t}",
    '{p} (new) with the text "{t}"', "create {p} with the text '{t}'.", "jot '{t}' down in a new file {p}",
    'stick "{t}" in a brand-new file {p}', "drop '{t}' into a new file called {p}",
    "start {p}; it should say {t}", 'file {p}: "{t}"', "save the line '{t}' as {p}",
    "need a new file {p} with the text {t}", "{p} should be created with the text {t}",
    "note in {p}, saying {t}", 'write "{t}" to a new file {p}!', "add a file at {p}. Text: {t}",
    "create {p}. It says {t}", "a fresh note {p} with just '{t}' in it",
)  # fmt: skip
EDIT_ASKS = (
    "in {p}, {c} should become {v}", "set {c} in {p} to {v}", "{p}: make {c} equal {v}",
    "change {c} in {p} to {v}", "{c} in {p} is now {v}, update it", "over in {p}, put {v} as {c}",
    "{c} = {v} (only in {p})", "in {p}{e} {c} needs the value {v}", "make {c} {v} in {p}, not elsewhere",
)  # fmt: skip


def _end(rng: random.Random) -> str:
    return rng.choice(END)


def _ask(rng: random.Random, templates: tuple[str, ...], protect: list[str], **slots: str) -> str:
    template = rng.choice(templates)
    opener = rng.choice(OPENERS)
    end = _end(rng)
    if "{e}" in template and not template.endswith("{e}"):  # mid-sentence: a comma or a full stop
        end = rng.choice([",", ".", ":", ""])
    text = opener + template.format(e=end, **slots)
    return styled(rng, text, protect, bool(opener) or not template.startswith(("{", "(", '"', "'")))


def _tail(rng: random.Random) -> str:
    r = rng.random()
    if r < 0.4:
        return nm.syllables(rng)
    if r < 0.75:
        return nm.letters_word(rng)[: rng.randint(2, 6)]
    return rng.choice(nm.PLAIN)[: rng.randint(3, 6)]


def _mutate(rng: random.Random, base: str) -> str:
    """`base` one edit away: a letter changed, dropped, doubled or added, or a digit appended."""
    i = rng.randrange(1, len(base))
    r = rng.random()
    if r < 0.3:
        return base[:i] + rng.choice("abcdefghiklmnoprstuvxyz") + base[i + 1 :]
    if r < 0.45:
        return base[:i] + base[i + 1 :]
    if r < 0.6:
        return base[:i] + base[i] + base[i:]
    if r < 0.8:
        return base + rng.choice("aeiouxyzkrst")
    return base + str(rng.randint(1, 9))


def family(rng: random.Random, n: int, taken: set[str], python: bool = False) -> list[str]:
    """`n` distinct names that only their exact letters tell apart: a shared head (a common training
    word, whole or cut), a shared tail, or one word a letter apart; none of them in `taken`."""
    seps = ["", "", "_"] if python else ["", "", "", "-", "_", "."]
    r = rng.random()
    if r < 0.5:
        head = rng.choice(HEADS)
        head = head[: rng.randint(3, len(head))] if len(head) > 3 and rng.random() < 0.4 else head
        sep = rng.choice(seps)
        make = lambda: head + sep + _tail(rng)
    elif r < 0.75:
        tail, sep = rng.choice(HEADS), rng.choice(seps)
        make = lambda: _tail(rng) + sep + tail
    else:
        base = ""
        while len(base) < 4:
            base = nm.word(rng)
        make = lambda: _mutate(rng, base) if rng.random() < 0.8 else base
    names: list[str] = []
    for _ in range(200):
        name = make()
        if python and not name.isidentifier():
            continue
        if name not in names and name not in taken and name.lower() == name:
            names.append(name)
        if len(names) == n:
            return names
    raise RuntimeError("no family of names")  # not in practice: tails come from millions


@dataclass
class Family:
    """Sibling folders planted in a workspace and their settings modules' constants."""

    dirs: list[str]
    settings: dict[str, dict[str, str]] = field(default_factory=dict)  # path -> {NAME: value text}
    module: str = "settings.py"


def _const_value(rng: random.Random, numeric: bool) -> str:
    return str(rng.randint(0, 99999)) if numeric else nm.value(rng).replace("'", "")


def plant(rng: random.Random, ws: Workspace) -> Family:
    """Add 2-4 sibling folders (under the root, the package, or another folder) to `ws.files`, before
    agent_shapes.make_shaped_workspace writes them: a workspace is rebuilt from its seed alone."""
    parent = rng.choice([".", ".", ".", ws.package, rng.choice(["src", "apps", "sites", "projects"])])
    taken = {e.rstrip("/") for e in ws.entries(parent)}
    names = family(rng, rng.randint(2, 4), taken)
    dirs = [n if parent == "." else f"{parent}/{n}" for n in names]
    fam = Family(dirs, module=rng.choice(sh.SETTINGS_STEMS) + ".py")
    used = {c.name for c in ws.constants} | {f.name for f in ws.functions}
    const = lambda: nm.ident(rng, "upper", (1, 2), 0.1) + rng.choice(sh.SUFFIXES)
    consts = [(sh._fresh(rng, const, used), rng.random() < 0.4) for _ in range(rng.randint(1, 3))]
    stems = family(rng, rng.randint(3, 5), set(), python=True)
    for d in dirs:
        path = f"{d}/{fam.module}"
        values = {c: _const_value(rng, numeric) for c, numeric in consts}
        q = rng.choice(["'", '"'])
        lines = [f'"""Settings of {d.split("/")[-1]}."""', ""]
        lines += [f"{c} = {v if v.isdigit() else q + v + q}" for c, v in values.items()]
        ws.files[path] = "\n".join(lines) + "\n"
        fam.settings[path] = values
        for stem in rng.sample(stems, rng.randint(1, len(stems) - 1)):
            ext = rng.choice([".py", ".py", *sh.EXTS])
            ws.files[f"{d}/{stem}{ext}"] = nm.text_line(rng) + "\n"
    return fam


def note_text(rng: random.Random) -> str:
    """A note's text: a to-do with a time, an amount with a currency, a quantity with a unit, or free
    words; sometimes two joined."""

    def one() -> str:
        r = rng.random()
        who = rng.choice(nm.FACT_NOUNS) if rng.random() < 0.6 else nm.word(rng).capitalize()
        the = "" if who[0].isupper() else rng.choice(["the ", "my ", "our "])
        if r < 0.3:
            return f"{rng.choice(TODO_VERBS)} {the}{who} {rng.choice(WHEN)}"
        if r < 0.55:
            n = rng.choice([str(rng.randint(2, 999)), f"{rng.randint(1, 99)}.{rng.randint(10, 99)}"])
            rest = rng.choice(
                ["", f" to {nm.word(rng).capitalize()}", f" for {the}{who}", f" {rng.choice(WHEN)}"]
            )
            return f"{rng.choice(PAY_VERBS)} {n} {rng.choice(MONEY)}{rest}"
        if r < 0.75:
            amount = f"{rng.randint(1, 500)} {rng.choice(UNITS)}"
            return rng.choice(
                [
                    f"{amount} of {rng.choice(nm.PLAIN)}",
                    f"order {amount} of {nm.word(rng)}",
                    f"{rng.choice(nm.CODE_VERBS)} {amount}",
                    f"keep {amount} free",
                ]
            )
        return nm.text_line(rng)

    text = one() if rng.random() < 0.8 else f"{one()}{rng.choice([', then ', ' and ', '; '])}{one()}"
    return text[0].upper() + text[1:] if rng.random() < 0.2 else text


def _files(ws: Workspace, d: str) -> list[str]:
    return [e for e in ws.entries(d) if not e.endswith("/")]


def listing(rng: random.Random, ws: Workspace, fam: Family) -> Task:
    d = rng.choice(fam.dirs)
    names = ws.entries(d)
    count = "1 entry" if len(names) == 1 else f"{len(names)} entries"
    answer = rng.choice([f"{d} has {count}: {', '.join(names)}.", f"In {d}: {', '.join(names)}."])
    prompt = _ask(rng, LIST_ASKS, [d], d=d)
    return Task("c_list", prompt, [("list_dir", {"path": d})], answer, _has_all([d, *names]), [names[0]])


def lookup(rng: random.Random, ws: Workspace, fam: Family) -> Task:
    p = rng.choice(sorted(fam.settings))
    c, v = rng.choice(sorted(fam.settings[p].items()))
    line = next(t for t in ws.files[p].splitlines() if t.startswith(f"{c} ="))
    answer = rng.choice([f"{c} is {v} in {p}.", f"In {p}, {c} is {v}.", f"{v} ({c} in {p})."])
    prompt = _ask(rng, LOOKUP_ASKS, [c, p], c=c, p=p)
    return Task("c_lookup", prompt, [("read_file", {"path": p})], answer, _has_all([v, p]), [line])


def missing(rng: random.Random, ws: Workspace, fam: Family) -> Task:
    d = rng.choice(fam.dirs)
    here = set(_files(ws, d))
    elsewhere = sorted({f for o in fam.dirs if o != d for f in _files(ws, o)} - here)
    name = rng.choice(elsewhere) if elsewhere and rng.random() < 0.6 else ""
    while not name or name in here:  # one letter off a file that is there
        stem, dot, ext = rng.choice(sorted(here)).rpartition(".")
        name = f"{_mutate(rng, stem)}{dot}{ext}" if stem and len(stem) > 1 else f"{nm.file_stem(rng)}.md"
    rel = f"{d}/{name}"
    prompt = _ask(rng, MISSING_ASKS, [rel], p=rel)
    if rng.random() < 0.75:
        calls: sh.Calls = [("read_file", {"path": rel})]
        expect = [f"{rel} does not exist"]
        answer = rng.choice(
            [f"{rel} does not exist.", f"There is no file {rel}.", f"I can't open {rel}: it is not there."]
        )
    else:
        calls, expect = [("list_dir", {"path": d})], [sorted(here)[0]]
        answer = rng.choice(
            [f"{d} has no {name}, so {rel} does not exist.", f"There is no {rel}: {d} holds no {name}."]
        )
    check = lambda root, a: _said_missing(a) and rel in a and not (root / rel).exists()
    return Task("c_missing", prompt, calls, answer, check, expect)


def create(rng: random.Random, ws: Workspace, fam: Family) -> Task:
    rel = ""
    while not rel or rel in ws.files or (ws.root / rel).exists():
        d = rng.choice(fam.dirs)
        stem = (
            nm.file_stem(rng) if rng.random() < 0.5 else _mutate(rng, rng.choice(_files(ws, d)).split(".")[0])
        )
        rel = f"{d}/{stem}{rng.choice(sh.EXTS)}"
    text = note_text(rng)
    prompt = _ask(rng, CREATE_ASKS, [rel, *text.split()], p=rel, t=text)
    answer = rng.choice([f"Created {rel}.", f"Wrote {rel}.", f"Done: {rel} says {text}."])
    calls: sh.Calls = [("write_file", {"path": rel, "content": text + "\n"})]
    return Task("c_create", prompt, calls, answer, _file_is(rel, text + "\n"), ["created"])


def edit(rng: random.Random, ws: Workspace, fam: Family) -> Task:
    p = rng.choice(sorted(fam.settings))
    c, old = rng.choice(sorted(fam.settings[p].items()))
    new = old
    while new == old:
        new = _const_value(rng, old.isdigit()) if rng.random() < 0.7 else note_text(rng).replace("'", "")
        new = new if new.isdigit() == old.isdigit() else old
    old_line = next(t for t in ws.files[p].splitlines() if t.startswith(f"{c} ="))
    q = old_line.split(" = ", 1)[1][:1] if not old.isdigit() else ""
    new_line = f"{c} = {q}{new}{q}"
    new_text = ws.files[p].replace(old_line, new_line, 1)
    fam.settings[p][c] = new
    prompt = _ask(rng, EDIT_ASKS, [c, p, *new.split()], c=c, p=p, v=new)
    calls: sh.Calls = [
        ("read_file", {"path": p}),
        ("edit_file", {"path": p, "old_string": old_line, "new_string": new_line}),
    ]
    answer = rng.choice([f"{c} is now {new} in {p}.", f"Done: {c} = {new} in {p}."])
    return Task("c_edit", prompt, calls, answer, _file_is(p, new_text), [old_line, "edited"])


KINDS: dict[str, Callable[[random.Random, Workspace, Family], Task]] = {
    "c_list": listing, "c_lookup": lookup, "c_missing": missing, "c_create": create, "c_edit": edit,
}  # fmt: skip
WEIGHTS = (1.0, 0.8, 1.2, 1.4, 0.8)


def copy_task(rng: random.Random, ws: Workspace, fam: Family) -> Task:
    return KINDS[rng.choices(list(KINDS), weights=WEIGHTS)[0]](rng, ws, fam)


def episode(rng: random.Random, w: Any, ws: Workspace, refresh: Callable[[Workspace], None]) -> None:
    """1-4 tasks about the workspace's family of sibling folders, now and then a shaped task of
    agent_shapes between them."""
    fam = ws.family
    assert isinstance(fam, Family), "a copying episode needs a workspace with a family (plant)"
    for _ in range(rng.randint(1, 4)):
        task = copy_task(rng, ws, fam) if rng.random() < 0.85 else sh.shaped_task(rng, ws)
        w.task(task)
        if any(name in ("write_file", "edit_file") for name, _ in task.calls):
            refresh(ws)


def templates() -> list[str]:
    """Every template of this file as written (for scripts/check_eval_overlap.py)."""
    return [*LIST_ASKS, *LOOKUP_ASKS, *MISSING_ASKS, *CREATE_ASKS, *EDIT_ASKS]


def pools() -> list[tuple[str, ...]]:
    """This file's word pools (for scripts/check_eval_overlap.py's name check)."""
    return [HEADS, MONEY, UNITS, TODO_VERBS, PAY_VERBS, WHEN]
