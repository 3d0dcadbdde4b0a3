"""Held-out tasks for bench/eval_default_model.py: workspaces, names and wordings of their own.

Nothing here is drawn from the training generator (scripts/agent_workspaces.py, scripts/agent_tasks.py,
scripts/agent_voices.py): the project themes, module, function, constant and fact names, the docs'
facts and every request template are this file's own, so a model scores here only by reading the
tool results and copying from them, not by having seen the task. Only the typo rule is shared
(scripts/agent_voices.py's `typo`, with its stricter `spare_containing`). tests/default_model/
test_eval_overlap.py checks that no 8 words of a request here occur in the training data's requests
and that the name pools are disjoint.

Categories (each task: one request through the real agent, judged by a rule on the tool calls and on
the answer or the files after the turn):
lookup, find_definition, list_folder, answer_from_docs, create_file, edit_value,
refusal_missing_file, multi_step, and recall_resume (a fact, filler turns, then the question once
straight through and once after save, close, model reload and resume; judged on the resumed answer).
"""

from __future__ import annotations

import random
import re
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

_SCRIPTS = str(Path(__file__).resolve().parent.parent / "scripts")
if _SCRIPTS not in sys.path:  # as bench/eval_default_model.py reaches the training generator
    sys.path.insert(0, _SCRIPTS)

from agent_voices import typo  # noqa: E402

CATEGORIES = (
    "lookup",
    "find_definition",
    "list_folder",
    "answer_from_docs",
    "create_file",
    "edit_value",
    "refusal_missing_file",
    "multi_step",
    "recall_resume",
)

# ---- name pools (held out: the training generator has none of these) ------------------------------
PACKAGES = ("shopfront", "tallybook", "cartwheel", "ledgerly", "parcelpost", "greenhouse", "quillmark")
MODULES = (
    "billing", "shipping", "inventory", "payroll", "forecast", "ledger", "catalog", "checkout",
    "coupons", "warehouse", "receipts", "refunds", "subscriptions", "newsletter", "loyalty",
)  # fmt: skip
FUNC_VERBS = ("calculate", "issue", "refund", "estimate", "archive", "notify", "reconcile", "approve")
FUNC_OBJECTS = ("discount", "tax", "shipment", "payslip", "receipt", "coupon", "pallet", "voucher")
PARAMS = ("amount", "customer", "currency", "when", "lines", "rate", "dry_run", "region_code")
CONSTANTS = (
    "TAX_RATE", "FREE_SHIPPING_MIN", "SUPPORT_EMAIL", "CURRENCY", "RETRY_DELAY", "INVOICE_PREFIX",
    "WAREHOUSE_CODE", "MAX_CART_ITEMS", "REFUND_WINDOW_DAYS", "SMTP_PORT",
)  # fmt: skip
STRING_VALUES = ("EUR", "GBP", "WH-417", "INV-", "help@shop.test", "NL-22", "SE-9", "billing@corp.test")
DOC_FACTS = (  # (file stem, key phrase in the doc, question, answer phrase)
    ("deploy", "To deploy, run `{x}`.", "which command deploys the app",
     ("make release-{n}", "fab ship-{n}")),
    ("install", "Python {x} or newer is required.", "which Python version is required", ("3.{n}",)),
    ("support", "Questions go to {x} on chat.", "who answers support questions", ("Marguerite", "Tobias")),
    ("backups", "Backups run every night at {x} UTC.", "when the nightly backups run", ("0{n}:30",)),
)  # fmt: skip
FACT_KEYS = ("the vendor contact", "our sprint goal", "the wifi network", "the conference room", "my cat")
FACT_VALUES = ("Priya", "Okonkwo", "Blue Lagoon", "room 4B", "Biscuit", "Pemberton", "checkout-v2")
NOTE_TEXTS = ("call the courier before noon", "ship order {n} on monday", "renew the TLS cert", "pay {n} EUR")


@dataclass
class Workspace:
    root: Path
    files: dict[str, str] = field(default_factory=dict)
    functions: dict[str, str] = field(default_factory=dict)  # name -> relative path
    constants: dict[str, tuple[str, str]] = field(default_factory=dict)  # name -> (path, value text)
    docs: list[tuple[str, str, str]] = field(default_factory=list)  # (path, question, answer)
    package: str = ""


def make_workspace(rng: random.Random, root: Path) -> Workspace:
    """A small project: README.md, a package with 2-4 modules and settings.py, docs/, tests/."""
    pkg = rng.choice(PACKAGES)
    ws = Workspace(root=Path(root), package=pkg)
    consts = rng.sample(CONSTANTS, rng.randint(3, 5))
    lines = [f'"""Settings of {pkg}."""', ""]
    for name in consts:
        value = rng.choice([str(rng.randint(2, 9999)), repr(rng.choice(STRING_VALUES))])
        lines.append(f"{name} = {value}")
        ws.constants[name] = (f"{pkg}/settings.py", value.strip("'"))
    ws.files[f"{pkg}/settings.py"] = "\n".join(lines) + "\n"
    funcs = rng.sample([f"{v}_{o}" for v in FUNC_VERBS for o in FUNC_OBJECTS], 6)
    for k, mod in enumerate(rng.sample(MODULES, rng.randint(2, 4))):
        rel = f"{pkg}/{mod}.py"
        body = [f'"""The {mod} part of {pkg}."""', "", f"from {pkg}.settings import {consts[0]}", ""]
        for fn in funcs[2 * k : 2 * k + 2] if k < 3 else []:
            args = rng.sample(PARAMS, rng.randint(1, 3))
            body += ["", f"def {fn}({', '.join(args)}):", f"    return {args[0]}", ""]
            ws.functions[fn] = rel
        ws.files[rel] = "\n".join(body).rstrip("\n") + "\n"
    ws.files[f"{pkg}/__init__.py"] = ""
    docs = rng.sample(DOC_FACTS, 2)
    readme = [f"# {pkg}", "", f"{pkg} is a small shop backend.", "", "See docs/ for details."]
    for stem, sentence, question, answers in docs:
        x = rng.choice(answers).format(n=rng.randint(2, 9))
        rel = f"docs/{stem}.md"
        ws.files[rel] = f"# {stem.capitalize()}\n\n{sentence.format(x=x)}\n"
        ws.docs.append((rel, question, x))
    ws.files["README.md"] = "\n".join(readme) + "\n"
    ws.files[f"tests/test_{rng.choice(MODULES)}.py"] = "def test_smoke():\n    assert True\n"
    for rel, text in ws.files.items():
        path = ws.root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    return ws


def entries(ws: Workspace, folder: str) -> list[str]:
    prefix = "" if folder == "." else folder + "/"
    names = {rel[len(prefix) :].split("/")[0] for rel in ws.files if rel.startswith(prefix)}
    return sorted(names)


# ---- wordings: four voices, a typo now and then -----------------------------------------------------
VOICES: dict[str, dict[str, tuple[str, ...]]] = {
    "lookup": (
        ("{c}? (in {p})", "quick one: {c} value from {p}", "need {c} from {p} pls"),
        ("Could you tell me which value {c} has in {p}, please?", "Would you mind checking {p} for {c}?"),
        ("hey, whats {c} over in {p}", "yo what did we put for {c} in {p}"),
        ("Please report the current {c} configured in {p}.", "I need the configured {c}; it lives in {p}."),
    ),
    "find_definition": (
        ("{f} - which file?", "file with def {f}?"),
        ("Could you find out which file contains the function {f}, please?",),
        ("where'd we put {f}", "hey where does {f} live"),
        ("Locate the source file that implements {f}.", "Identify the module in which {f} is written."),
    ),
    "list_folder": (
        ("ls {d}", "contents of {d}?"),
        ("Could you show me everything inside {d}, please?",),
        ("whats inside {d} again", "what've we got in {d}"),
        ("Enumerate the entries of the {d} directory.", "Provide a listing of {d}."),
    ),
    "answer_from_docs": (
        ("docs: {q}?", "per the docs, {q}?"),
        ("Could you check our documentation and tell me {q}, please?",),
        ("hey, the docs say somewhere {q} - what is it", "quick q from the docs: {q}"),
        ("Consult the project documentation and state {q}.",),
    ),
    "create_file": (
        ("new file {p}: {t}", "make {p} -> {t}"),
        ("Could you please create a file named {p} that contains just: {t}",),
        ("can u make a file {p} saying {t}", "throw '{t}' into a fresh file {p}"),
        ("Create the file {p}. Its sole content must be: {t}",),
    ),
    "edit_value": (
        ("{c} -> {v} in {p}", "bump {c} to {v} ({p})"),
        ("Could you please update {c} in {p} so that it becomes {v}?",),
        ("hey can u switch {c} to {v} in {p}", "make {c} be {v} over in {p}"),
        ("Modify {p}: {c} must now equal {v}.",),
    ),
    "refusal_missing_file": (
        ("open {p}", "contents of {p}?"),
        ("Could you please summarize what {p} says?",),
        ("whats in {p} lol", "peek at {p} for me"),
        ("Report the contents of {p}.",),
    ),
    "multi_step": (
        ("{c} lives somewhere - set it to {v}", "find {c}, make it {v}"),
        ("Could you locate wherever {c} is configured and change it to {v}, please?",),
        ("no idea which file has {c} but pls set it to {v}",),
        ("Search the project for {c} and assign it the value {v}.",),
    ),
}
INDIRECT = {  # how a request may name a file without its path
    "settings": ("the settings module", "our settings file", "the config module of {pkg}"),
    "docs": ("the {stem} doc", "the {stem} page in docs"),
}
FACT_SAY = (
    "Heads up: {k} is {v}.",
    "btw {k} = {v}",
    "For later: {k} happens to be {v}.",
    "Please memorise this - {k} is {v}.",
)
FACT_ASK = ("Quick memory check: {k}?", "what was {k} again", "Tell me {k}, as I said before.")
FILLER = ("ok cool", "Let me grab a coffee.", "The standup ran long today.", "sounds fine", "brb")


def wording(rng: random.Random, category: str, protect: list[str], **slots: str) -> str:
    text = rng.choice(rng.choice(VOICES[category])).format(**slots)
    # a word containing a name to copy is spared too (it may be the name with a suffix)
    return typo(rng, text, protect, spare_containing=True) if rng.random() < 0.25 else text


# ---- tasks -----------------------------------------------------------------------------------------
Calls = list[tuple[str, dict]]
Rule = Callable[[Path, str, Calls], bool]


@dataclass
class EvalTask:
    category: str
    prompt: str
    rule: Rule
    solution: Calls = field(default_factory=list)  # one right way (tests: the rule accepts it)
    answer: str = ""


_MISSING = re.compile(r"\b(not|no|doesn't|does not|cannot|can't|couldn't|missing|unable)\b", re.I)


def _called(calls: Calls, tools: tuple[str, ...]) -> bool:
    return any(t in tools for t, _ in calls)


def _file_is(rel: str, text: str) -> Callable[[Path], bool]:
    def check(root: Path) -> bool:
        p = root / rel
        return p.is_file() and p.read_text(encoding="utf-8").strip() == text.strip()

    return check


def _settings_ref(rng: random.Random, ws: Workspace) -> str:
    rel = f"{ws.package}/settings.py"
    return rng.choice(INDIRECT["settings"]).format(pkg=ws.package) if rng.random() < 0.4 else rel


def make_task(rng: random.Random, ws: Workspace, category: str) -> EvalTask:
    if category == "lookup":
        c = rng.choice(sorted(ws.constants))
        _, value = ws.constants[c]
        prompt = wording(rng, category, [c], c=c, p=_settings_ref(rng, ws))
        rule: Rule = lambda r, a, k: value in a and _called(k, ("read_file", "grep"))
        return EvalTask(category, prompt, rule, [("read_file", {"path": f"{ws.package}/settings.py"})], value)
    if category == "find_definition":
        f = rng.choice(sorted(ws.functions))
        rel = ws.functions[f]
        prompt = wording(rng, category, [f], f=f)
        rule = lambda r, a, k: Path(rel).name in a and _called(k, ("grep", "read_file", "glob"))
        return EvalTask(category, prompt, rule, [("grep", {"pattern": f"def {f}"})], f"In {rel}.")
    if category == "list_folder":
        folder = rng.choice([ws.package, "docs", "tests"])
        names = entries(ws, folder)
        prompt = wording(rng, category, [folder], d=folder)
        rule = lambda r, a, k: all(n in a for n in names) and _called(k, ("list_dir",))
        return EvalTask(category, prompt, rule, [("list_dir", {"path": folder})], ", ".join(names))
    if category == "answer_from_docs":
        rel, question, x = rng.choice(ws.docs)
        prompt = wording(rng, category, [], q=question)
        rule = lambda r, a, k: x in a and _called(k, ("read_file", "grep"))
        return EvalTask(category, prompt, rule, [("read_file", {"path": rel})], x)
    if category == "create_file":
        rel = f"{rng.choice(['notes', 'ops', 'docs'])}/{rng.choice(['courier', 'release', 'renewal'])}.txt"
        text = rng.choice(NOTE_TEXTS).format(n=rng.randint(10, 999))
        prompt = wording(rng, category, [rel, *text.split()], p=rel, t=text)
        check = _file_is(rel, text)
        rule = lambda r, a, k: check(r) and _called(k, ("write_file",))
        return EvalTask(
            category, prompt, rule, [("write_file", {"path": rel, "content": text + "\n"})], "Done."
        )
    if category in ("edit_value", "multi_step"):
        c = rng.choice(sorted(ws.constants))
        rel, value = ws.constants[c]
        old_text = ws.files[rel]
        quoted = f"{c} = '{value}'" in old_text
        new = rng.choice(STRING_VALUES) if quoted else str(rng.randint(2, 9999))
        while new == value:
            new = str(rng.randint(10000, 99999))
        old_line = f"{c} = '{value}'" if quoted else f"{c} = {value}"
        accept = [old_text.replace(old_line, f"{c} = {q}{new}{q}", 1) for q in ("'", '"')] if quoted else []
        accept = accept or [old_text.replace(old_line, f"{c} = {new}", 1)]
        if category == "edit_value":
            prompt = wording(rng, category, [c, new], c=c, v=new, p=_settings_ref(rng, ws))
        else:
            prompt = wording(rng, category, [c, new], c=c, v=new)

        def edited(r: Path, a: str, k: Calls, rel: str = rel, accept: list[str] = accept) -> bool:
            p = r / rel
            done = p.is_file() and p.read_text(encoding="utf-8") in accept
            return done and (category == "edit_value" or len(k) >= 2)

        new_line = f"{c} = '{new}'" if quoted else f"{c} = {new}"
        solution: Calls = [("edit_file", {"path": rel, "old_string": old_line, "new_string": new_line})]
        if category == "multi_step":
            solution.insert(0, ("grep", {"pattern": f"^{c} ="}))
        return EvalTask(category, prompt, edited, solution, "Done.")
    if category == "refusal_missing_file":
        taken = {Path(rel).stem for rel in ws.files}
        stem = rng.choice([m for m in MODULES if m not in taken])
        rel = rng.choice([f"{ws.package}/{stem}.py", f"docs/{stem}.md"])
        prompt = wording(rng, category, [rel], p=rel)
        folder = str(Path(rel).parent)

        def refused(r: Path, a: str, k: Calls, rel: str = rel, folder: str = folder) -> bool:
            """Looked for that very file (read it, or listed its folder), said it is missing, made none."""
            looked = any(args.get("path") in (rel, folder) or tool == "glob" for tool, args in k)
            return (
                looked
                and bool(_MISSING.search(a))
                and not (r / rel).exists()
                and not _called(k, ("write_file",))
            )

        rule = refused
        return EvalTask(category, prompt, rule, [("read_file", {"path": rel})], f"{rel} does not exist.")
    raise ValueError(f"unknown category {category!r}")


@dataclass
class RecallScript:
    turns: list[str]
    question: str
    value: str


def make_recall(rng: random.Random, fillers: int) -> RecallScript:
    key, other = rng.sample(FACT_KEYS, 2)
    value, other_value = rng.sample(FACT_VALUES, 2)
    turns = [rng.choice(FACT_SAY).format(k=key, v=value)]
    middle = [rng.choice(FILLER) for _ in range(fillers)]
    middle.insert(rng.randint(0, len(middle)), rng.choice(FACT_SAY).format(k=other, v=other_value))
    return RecallScript(turns + middle, rng.choice(FACT_ASK).format(k=key), value)


def all_prompts(n_per_category: int, seed: int) -> list[str]:
    """Every request text the eval sends with these settings (for the overlap check)."""
    import tempfile

    texts = []
    with tempfile.TemporaryDirectory() as tmp:
        for cat in CATEGORIES:
            for i in range(n_per_category):
                rng = random.Random(f"heldout:{seed}:{cat}:{i}")
                if cat == "recall_resume":
                    s = make_recall(rng, 3)
                    texts += [*s.turns, s.question]
                    continue
                ws = make_workspace(rng, Path(tmp) / f"{cat}{i}")
                texts.append(make_task(rng, ws, cat).prompt)
    return texts
