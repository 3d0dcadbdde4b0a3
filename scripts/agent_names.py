"""Names and values that only copying gets right, for the shaped episodes (scripts/agent_shapes.py).

Design choices:
- Three sources of a word: pronounceable made-up syllables (agent_workspaces.made_up_word), random
  letter strings (`shpfrnt`, `qelx`: BPE pieces the model has rarely seen next to each other, so a
  name is reproduced piece by piece from the context, not completed from a prior), and plain English
  words of this file's pools (never the held-out eval's: scripts/check_eval_overlap.py compares them).
- Names join 1 to 3 words in one of several styles (snake_case, kebab-case, CamelCase, dotted,
  UPPER_SNAKE) and sometimes carry digits or a version; values are numbers, floats, versions, codes,
  e-mail addresses, hosts, durations and times.
- Everything is drawn from the `random.Random` it is given: the same seed gives the same names.
"""

from __future__ import annotations

import random
import string

from agent_workspaces import CODAS, ONSETS, VOWELS


def _pool(text: str) -> tuple[str, ...]:
    return tuple(text.split())


# Plain words for names, file stems and texts (training only; no word of bench/eval_heldout.py's pools).
PLAIN = _pool(
    """
    anchor arrow basket beacon blanket bottle bridge bucket button camera candle canvas carpet castle
    chalk cherry circle cloud comet copper cotton crystal dolphin dragon drum eagle engine feather
    fiddle forest fossil garden glacier goblet granite gravel hammer helmet honey island jacket jungle
    kettle ladder lemon magnet marble meteor mirror mitten monkey needle nickel noodle ocean olive
    onion paddle panda pebble pepper pillow planet pocket pony puzzle quartz rabbit rocket saddle
    sailor salmon sandal shadow shovel signal spider sponge spring statue stone sugar tablet thunder
    ticket tiger timber tomato torch tunnel turtle valley velvet walnut whistle window wizard yogurt
    zebra acorn bamboo cactus clover daisy fern ginger ivy lotus mango nutmeg orchid papaya poppy
    """
)
# Words that fit code names (verbs for functions, nouns for what they act on), training only.
CODE_VERBS = _pool(
    "wrap unwrap pack unpack tally stamp trim pad tag mark bind prune weigh crank mint spin fold "
    "stash shuffle probe pluck sweep brew harvest paint polish squash tune gather pour"
)
CODE_NOUNS = _pool(
    "widget gizmo bundle crate ticket parcel badge token blob chunk frame slot bucket ribbon "
    "sprocket gadget marker stub knot tile patch crumb spool"
)
_LETTERS = string.ascii_lowercase
_VOWELS = "aeiouy"


def syllables(rng: random.Random) -> str:
    """A pronounceable made-up word of 1 to 3 syllables (agent_workspaces' syllables): `tovem`, `kou`."""
    n = rng.choice([1, 2, 2, 3])
    return "".join(rng.choice(ONSETS) + rng.choice(VOWELS) + rng.choice(CODAS) for _ in range(n))


def letters_word(rng: random.Random) -> str:
    """A random string of 3 to 8 letters, vowels rarer than in English: `shpfrnt`, `kelq`, `tvazo`."""
    return "".join(
        rng.choice(_VOWELS) if rng.random() < 0.25 else rng.choice(_LETTERS) for _ in range(rng.randint(3, 8))
    )


def word(rng: random.Random) -> str:
    """One lower-case word: made-up syllables, random letters, a plain word, two plain words run
    together, or a plain word with a made-up tail."""
    r = rng.random()
    if r < 0.4:
        return syllables(rng)
    if r < 0.65:
        return letters_word(rng)
    if r < 0.85:
        return rng.choice(PLAIN)
    if r < 0.92:  # two plain words run together, as product names are: `pebbleforest`
        return rng.choice(PLAIN) + rng.choice(PLAIN)
    return rng.choice(PLAIN) + rng.choice([syllables(rng)[:4], letters_word(rng)[:3]])


def join(parts: list[str], style: str) -> str:
    """`parts` (lower-case words) joined in `style`: snake, kebab, camel, pascal, upper, dotted, flat."""
    if style == "snake":
        return "_".join(parts)
    if style == "kebab":
        return "-".join(parts)
    if style == "camel":
        return parts[0] + "".join(p.capitalize() for p in parts[1:])
    if style == "pascal":
        return "".join(p.capitalize() for p in parts)
    if style == "upper":
        return "_".join(parts).upper()
    if style == "dotted":
        return ".".join(parts)
    return "".join(parts)


def ident(rng: random.Random, style: str, n: tuple[int, int] = (1, 3), digits: float = 0.15) -> str:
    """A name of 1-3 words in `style`, sometimes with a number at the end (`crate_v2`, `tile-42`)."""
    name = join([word(rng) for _ in range(rng.randint(*n))], style)
    if rng.random() < digits:
        sep = "" if style in ("camel", "pascal", "flat") else {"upper": "_", "snake": "_"}.get(style, "-")
        name += sep + rng.choice(["v", "", ""]) + str(rng.randint(0, 99))
    return name


def func_name(rng: random.Random) -> str:
    """A function name: verb_object from the code pools or made up, snake_case or camelCase."""
    verb = rng.choice(CODE_VERBS) if rng.random() < 0.5 else word(rng)
    obj = rng.choice(CODE_NOUNS) if rng.random() < 0.4 else word(rng)
    parts = [verb, obj] if rng.random() < 0.8 else [verb, obj, word(rng)]
    return join(parts, "camel" if rng.random() < 0.15 else "snake")


def file_stem(rng: random.Random, python: bool = False) -> str:
    """A file name without extension; a Python module's stem is a valid identifier."""
    styles = ["snake", "flat"] if python else ["snake", "kebab", "flat", "dotted", "snake"]
    return ident(rng, rng.choice(styles), (1, 2))


def value(rng: random.Random) -> str:
    """A setting's value as text: number, float, version, code, address, host, duration, time, words."""
    r = rng.random()
    if r < 0.3:
        return str(rng.choice([rng.randint(0, 99), rng.randint(100, 99999)]))
    if r < 0.38:
        return f"{rng.randint(0, 9)}.{rng.randint(0, 99)}"
    if r < 0.48:
        v = ".".join(str(rng.randint(0, 20)) for _ in range(rng.randint(2, 3)))
        return rng.choice(["", "v", ""]) + v + rng.choice(["", "", "-rc1", "-beta"])
    if r < 0.58:
        head = "".join(rng.choice(string.ascii_uppercase) for _ in range(rng.randint(2, 3)))
        code = f"{head}{rng.choice(['-', '', '_'])}{rng.randint(1, 9999)}"
        return rng.choice([code, code, head, f"{head}-"])  # `QX-417`, `ZRK`, a prefix `TKT-`
    if r < 0.65:
        return f"{word(rng)}@{word(rng)}.{rng.choice(['test', 'example', 'local'])}"
    if r < 0.72:
        return f"{word(rng)}.{word(rng)}.{rng.choice(['internal', 'lan', 'test'])}"
    if r < 0.78:
        return f"{rng.randint(1, 90)}{rng.choice(['s', 'm', 'h', 'ms', 'd'])}"
    if r < 0.83:
        return f"{rng.randint(0, 23):02d}:{rng.choice([0, 15, 30, 45, rng.randint(0, 59)]):02d}"
    if r < 0.9:
        return f"/{word(rng)}/{word(rng)}.{rng.choice(['log', 'db', 'sock'])}"
    return ident(rng, rng.choice(["kebab", "snake", "flat"]), (1, 2), digits=0.4)


def display_value(rng: random.Random) -> str:
    """A value a person tells: a name, two capitalised words, a room-like code, a hyphenated tag."""
    r = rng.random()
    if r < 0.3:
        return word(rng).capitalize()
    if r < 0.5:
        return f"{word(rng).capitalize()} {word(rng).capitalize()}"
    if r < 0.65:
        place = rng.choice(["desk", "floor", "gate", "bay", "locker"])
        return f"{place} {rng.randint(1, 99)}{rng.choice('ABCDEFGH')}"
    if r < 0.8:
        return f"{word(rng)}-{rng.choice(['v', 'x', ''])}{rng.randint(1, 9)}"
    if r < 0.9:
        return str(rng.randint(10, 99999))
    return value(rng)


def text_line(rng: random.Random) -> str:
    """A line of free text for a new file: 2-8 words, numbers, codes and names in a sentence-like row."""
    out = []
    for _ in range(rng.randint(2, 8)):
        r = rng.random()
        if r < 0.35:
            out.append(rng.choice(_FILLERS))
        elif r < 0.6:
            out.append(word(rng))
        elif r < 0.75:
            out.append(str(rng.randint(1, 9999)))
        elif r < 0.85:
            out.append(rng.choice(PLAIN))
        else:
            out.append(value(rng))
    if rng.random() < 0.3:
        out[0] = out[0].capitalize()
    return " ".join(out)


_FILLERS = _pool(
    "buy fix ask move check send book paint water feed the a for at to on by with before after "
    "every all two three new old next"
)

# Keys of facts a person tells (training only: none is a word of the eval's fact keys).
FACT_OWNERS = (
    "my", "our", "the", "my sister's", "the team's", "our new", "my old", "the office", "my brother's",
)  # fmt: skip
FACT_NOUNS = (
    "dog", "parrot", "hamster", "goldfish", "tortoise", "pony", "neighbour", "dentist", "plumber",
    "landlord", "accountant", "lawyer", "barber", "car", "bike", "boat", "van", "locker code", "door code",
    "gym", "bakery", "favourite band", "favourite colour", "hotel", "train", "flight number",
    "meeting spot", "tailor", "cousin", "nephew", "godmother", "printer", "coffee machine", "laptop",
    "router", "password hint", "bus line", "parking spot", "budget code", "server nickname", "mascot",
    "radio station", "football club", "book club", "choir", "violin teacher", "garage",
)  # fmt: skip


def fact_key(rng: random.Random) -> str:
    """What a fact is about: `my parrot`, `the team's budget code`, now and then a made-up thing."""
    noun = rng.choice(FACT_NOUNS) if rng.random() < 0.85 else word(rng)
    return f"{rng.choice(FACT_OWNERS)} {noun}"
