"""hybrid-agent's own checkpoints (`HybridLM.save_pretrained`): config.json is a `HybridConfig`, and
every weight is stored under its own name. Loaded through the same streaming loader as the other
families, so they get the same peak memory and the fingerprint computed while reading."""

from __future__ import annotations

from typing import Any

import torch
from hybrid_agent.model.checkpoints.plan import Source, take
from hybrid_agent.model.config import HybridConfig
from hybrid_agent.model.hybrid import HybridLM

FAMILY = "hybrid-agent"


def hybrid_config(hf: dict[str, Any]) -> HybridConfig:
    return HybridConfig.model_validate(hf)


def sources(cfg: HybridConfig, hf: dict[str, Any]) -> dict[str, Source]:
    with torch.device("meta"):  # only the names are needed: nothing is allocated
        names = list(HybridLM(cfg).state_dict())
    return {name: take(name) for name in names}
