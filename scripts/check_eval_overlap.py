"""How much of the held-out eval's request text occurs in the training data: word n-gram overlap.

    python scripts/check_eval_overlap.py [--episodes 2000] [--n 8] [--out bench/results/eval_overlap.json]

The training side: every user request of `--episodes` episodes of the training mix (make_agent_data.py
with --wide 0.5 --voices 0.7 --projects 0.5 --shapes 0.5), plus every template of scripts/agent_voices.py,
scripts/agent_wordings.py, scripts/agent_focus.py and scripts/agent_copying.py as written. The eval side:
every request bench/eval_default_model.py sends (24 per category, its seed).
Words are lower-cased runs of letters, digits, `_`, `.`, `/` and `-`; an eval n-gram found in the
training set counts as overlap. The name pools are compared too: no package, module, function,
constant or fact key of the eval may be a training pool's word (scripts/agent_copying.py's pools too).
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))
sys.path.insert(0, str(ROOT / "bench"))

TRAIN_MIX = {"wide": 0.5, "voices": 0.7, "projects": 0.5, "shapes": 0.5}
_WORD = re.compile(r"[a-z0-9_./-]+")
_USER = re.compile(r"<\|user\|>(.*?)<\|end\|>", re.S)


def ngrams(text: str, n: int) -> set[tuple[str, ...]]:
    words = _WORD.findall(text.lower())
    return {tuple(words[i : i + n]) for i in range(len(words) - n + 1)}


def training_requests(episodes: int, seed: int = 0) -> list[str]:
    import agent_copying
    import agent_focus
    import agent_wordings
    import make_agent_data as gen
    from agent_voices import FACT_ASK, FACT_SAY, VOICES

    texts = [t for voice in VOICES.values() for group in voice for t in group] + [*FACT_SAY, *FACT_ASK]
    texts += agent_wordings.templates() + agent_focus.templates() + agent_copying.templates()
    for i in range(episodes):
        texts += _USER.findall(gen.make_episode(seed, i, **TRAIN_MIX).text())
    return texts


def eval_requests(per_category: int = 24) -> list[str]:
    import eval_heldout

    seed = 10**6  # bench/eval_default_model.py's EVAL_SEED
    templates = [t for voice in eval_heldout.VOICES.values() for group in voice for t in group]
    return [*eval_heldout.all_prompts(per_category, seed), *templates]


def pool_clashes() -> list[str]:
    """Eval names that a training pool holds (as a word of one of its entries)."""
    import agent_copying
    import agent_names
    import agent_projects
    import agent_shapes
    import agent_tasks
    import agent_voices
    import agent_workspaces as aw
    import eval_heldout as ev

    train_words: set[str] = set()
    pools = [aw.VERBS, aw.NOUNS, aw.ARGS, aw.CONSTS, aw.CONFIG_KEYS, aw.WORDS, aw.FOLDERS]
    pools += [agent_projects.PACKAGES, agent_projects.MODULES, agent_projects.OBJECTS]
    pools += [agent_projects.FUNC_VERBS, agent_projects.SETTINGS, agent_projects.PEOPLE]
    pools += [agent_tasks.FACT_KEYS, agent_voices.FACT_KEYS]
    pools += [agent_names.PLAIN, agent_names.CODE_VERBS, agent_names.CODE_NOUNS, agent_names.FACT_NOUNS]
    pools += [agent_names.FACT_OWNERS, agent_shapes.SETTINGS_STEMS, agent_shapes.KIND_WORDS]
    pools += [agent_shapes.PAGE_STEMS, [w for d in agent_shapes.DOC_FACTS for w in (d[3], *d[4])]]
    pools += agent_copying.pools()
    for pool in pools:
        for entry in pool:
            train_words |= set(_WORD.findall(entry.lower()))
    names = [*ev.PACKAGES, *ev.MODULES, *ev.CONSTANTS, *ev.FACT_VALUES, *ev.FUNC_OBJECTS]
    names += [f"{v}_{o}" for v in ev.FUNC_VERBS for o in ev.FUNC_OBJECTS]
    names += [k.split()[-1] for k in ev.FACT_KEYS]  # "the vendor contact" -> "contact"
    return sorted({n for n in names if n.lower() in train_words})


def overlap(train: list[str], evals: list[str], n: int) -> dict[str, object]:
    seen: set[tuple[str, ...]] = set()
    for t in train:
        seen |= ngrams(t, n)
    grams = set().union(*(ngrams(t, n) for t in evals))
    shared = sorted(" ".join(g) for g in grams & seen)
    return {"n": n, "eval_ngrams": len(grams), "shared": len(shared), "examples": shared[:10]}


def main(argv: list[str] | None = None) -> dict[str, object]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--episodes", type=int, default=2000)
    p.add_argument("--n", type=int, default=8)
    p.add_argument("--out", type=Path, default=None)
    a = p.parse_args(argv)
    train, evals = training_requests(a.episodes), eval_requests()
    result = {
        "training_requests": len(train),
        "eval_requests": len(evals),
        "training_mix": TRAIN_MIX,
        "overlap": [overlap(train, evals, n) for n in sorted({a.n, 5})],
        "pool_clashes": pool_clashes(),
    }
    if a.out is not None:
        a.out.write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(result, indent=1))
    return result


if __name__ == "__main__":
    main()
