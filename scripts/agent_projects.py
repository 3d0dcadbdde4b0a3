"""Project-like workspaces for the default model's training episodes (`agent_workspaces.PROJECTS`).

A project: README.md, a package folder with modules that import each other and a `settings.py` of
constants, `docs/` pages that each state a fact, `tests/`, sometimes `scripts/` and a `.toml`. The
names come from pools of their own (never the held-out eval's, bench/eval_heldout.py: tests/
default_model/test_eval_overlap.py checks it), mixed with made-up words at the `WIDE` rate so that
copying, not a prior over the pools, gives the right name.
"""

from __future__ import annotations

import random
from pathlib import Path

from agent_workspaces import (
    ARGS,
    VERBS,
    Constant,
    Function,
    Workspace,
    _wide_names,
    made_up_word,
    pick,
    written,
)

PACKAGES = (
    "trailmap", "beacon", "harvest", "pocketbook", "studio", "relay", "gardenlog", "clinic",
    "bookshelf", "fleet", "kiosk", "orchard", "lantern", "compass",
)  # fmt: skip
MODULES = (
    "auth", "users", "orders", "payments", "reports", "search", "emails", "scheduler", "uploads",
    "sessions", "notifications", "exports", "profiles", "audit", "pricing", "routing", "storage",
    "webhooks", "permissions", "metrics",
)  # fmt: skip
OBJECTS = ("password", "email", "token", "upload", "webhook", "report", "session", "avatar", "invite")
FUNC_VERBS = ("send", "verify", "rotate", "queue", "hash", "sign", "purge", "retry", "charge", "enroll")
SETTINGS = (
    "SESSION_TIMEOUT", "MAX_UPLOAD_MB", "DEFAULT_LOCALE", "ADMIN_EMAIL", "API_VERSION", "CACHE_SECONDS",
    "WORKER_COUNT", "QUEUE_URL", "RETRY_LIMIT", "DB_POOL_SIZE", "LOG_FORMAT", "TIME_ZONE",
)  # fmt: skip
DOCS = (  # (stem, sentence with {x}, the question's topic, value makers)
    ("setup", "Run `{x}` to set up a dev machine.", "how to set up a dev machine", "cmd"),
    ("release", "Releases are cut every {x}.", "how often releases are cut", "day"),
    ("testing", "Run the test suite with `{x}`.", "the command that runs the tests", "cmd"),
    ("access", "Ask {x} for access to production.", "who grants production access", "person"),
    ("ports", "The dev server listens on port {x}.", "the dev server's port", "num"),
    ("oncall", "The on-call rota is kept by {x}.", "who keeps the on-call rota", "person"),
    ("style", "Lines are at most {x} characters long.", "the maximum line length", "num"),
)
PEOPLE = ("Amara", "Jonas", "Keiko", "Rafael", "Ingrid", "Dmitri", "Leilani", "Osei", "Valentina", "Hugo")
DAYS = ("monday", "tuesday", "two weeks", "sprint", "month", "thursday")


def _doc_value(rng: random.Random, how: str) -> str:
    if how == "cmd":
        tool = rng.choice(["make", "just", "npm run", "tox -e"])
        return f"{tool} {pick(rng, list(MODULES))}-{made_up_word(rng)}"
    if how == "person":
        return rng.choice(PEOPLE) if rng.random() < 0.6 else made_up_word(rng).capitalize()
    if how == "day":
        return rng.choice(DAYS)
    return str(rng.randint(80, 9999))


def _setting_value(rng: random.Random, name: str) -> str:
    if name.endswith(("EMAIL",)):
        return repr(f"{made_up_word(rng)}@{rng.choice(PACKAGES)}.test")
    if name.endswith(("URL", "FORMAT", "LOCALE", "ZONE", "VERSION")):
        return repr(f"{made_up_word(rng)}-{rng.randint(1, 99)}")
    return str(rng.randint(2, 9999))


def make_project(rng: random.Random, root: Path) -> Workspace:
    """Write a project under `root` and describe it (functions, constants, docs' facts)."""
    ws = Workspace(root=Path(root))
    pkg = pick(rng, list(PACKAGES))
    used: set[str] = set()
    names = _wide_names(rng, rng.sample(SETTINGS, rng.randint(3, 6)), upper=True, used=used)
    lines = [f'"""Settings of {pkg}."""', ""]
    for name in names:
        if name in used:
            continue
        used.add(name)
        value = _setting_value(rng, name)
        lines.append(f"{name} = {value}")
        ws.constants.append(Constant(name, value.strip("'"), f"{pkg}/settings.py", len(lines)))
    ws.files[f"{pkg}/settings.py"] = "\n".join(lines) + "\n"
    ws.files[f"{pkg}/__init__.py"] = f'"""{pkg}."""\n'
    for mod in rng.sample(MODULES, rng.randint(2, 5)):
        rel = f"{pkg}/{mod}.py"
        body = [f'"""{mod.capitalize()} for {pkg}."""', ""]
        if ws.constants and rng.random() < 0.6:
            body += [f"from {pkg}.settings import {rng.choice(ws.constants).name}", ""]
        for _ in range(rng.randint(1, 3)):
            name = f"{rng.choice(FUNC_VERBS + tuple(VERBS))}_{pick(rng, list(OBJECTS))}"
            if name in used or any(u.startswith(name) or name.startswith(u) for u in used):
                continue
            used.add(name)
            args = _wide_names(rng, rng.sample(ARGS, rng.randint(0, 3)))
            body += ["", f"def {name}({', '.join(args)}):"]
            ws.functions.append(Function(name, args, rel, len(body)))
            body.append(f"    return {args[0] if args else repr(made_up_word(rng))}")
        ws.files[rel] = "\n".join(body) + "\n"
    readme = [f"# {pkg}", "", f"{pkg} handles {rng.choice(MODULES)} and {rng.choice(MODULES)}.", ""]
    for stem, sentence, topic, how in rng.sample(DOCS, rng.randint(1, 3)):
        x = _doc_value(rng, how)
        rel = f"docs/{stem}.md" if rng.random() < 0.8 else "README.md"
        if rel == "README.md":
            readme.append(sentence.format(x=x))
        else:
            ws.files[rel] = f"# {stem.capitalize()}\n\n{sentence.format(x=x)}\n"
        ws.docs.append((rel, topic, x))
    ws.files["README.md"] = "\n".join(readme) + "\n"
    for mod in rng.sample(MODULES, rng.randint(0, 2)):
        ws.files[f"tests/test_{mod}.py"] = f"def test_{mod}():\n    assert True\n"
    return written(ws)
