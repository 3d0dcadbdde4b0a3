"""model/decode/: making tokens. `DecodeEngine` (static buffers, page loading, the fused step, CUDA
graphs; model/decode/engine.py's module doc) for the agent's fast path, and `generate` / `prefill` /
`sample` (the model's own token loop over any `ModelState`)."""
