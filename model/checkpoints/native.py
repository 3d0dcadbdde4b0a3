"""hybrid-agent's own checkpoints (`HybridLM.save_pretrained`): config.json is a `HybridConfig`, and
every weight is stored under its own name. Loaded through the same streaming loader as the other
families, so they get the same peak memory and the fingerprint computed while reading."""

from __future__ import annotations

from typing import Any

from hybrid_agent.model.checkpoints.plan import Source, take
from hybrid_agent.model.config import HybridConfig
from hybrid_agent.model.skeleton import skeleton

FAMILY = "hybrid-agent"


def hybrid_config(hf: dict[str, Any]) -> HybridConfig:
    return HybridConfig.model_validate(hf)


def sources(cfg: HybridConfig, hf: dict[str, Any]) -> dict[str, Source]:
    names = list(skeleton(cfg).state_dict())  # only the names are needed: nothing large is allocated
    return {name: take(name) for name in names}
