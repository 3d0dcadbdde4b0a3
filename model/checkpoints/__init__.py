"""model/checkpoints/: published hybrid checkpoints loaded into our own modules and `ModelState`.

`load_model(path_or_id, device=..., dtype=...) -> (HybridLM, tokenizer, chat format)`. One adapter module
per family (olmo_hybrid, mamba2, falcon_h1, nemotron_h, bamba, granitemoehybrid for Granite 4.0,
qwen3_5, lfm2) maps its config.json to a `HybridConfig` and names the checkpoint tensors behind each of
our weights (model/checkpoints/plan.py); the shared loader (model/checkpoints/loader.py) streams them in.
Renamed, split or fused weights and folded multipliers are handled there, so the model core does not
know which checkpoint it runs.
"""

from hybrid_agent.model.checkpoints.loader import ADAPTERS, family_of, load_model, resolve_checkpoint

__all__ = ["ADAPTERS", "family_of", "load_model", "resolve_checkpoint"]
