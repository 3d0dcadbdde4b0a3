"""Run in a fresh process: load a checkpoint one way and print the peak resident memory it added.

`python ckpt_peak_rss.py MODE FOLDER` with MODE one of
- `ours`: `model.load_model` (reads each tensor's bytes straight into the empty-initialised model);
- `safe_open`: the same empty model filled through safetensors' memory-mapped `safe_open`;
- `transformers`: `AutoModelForCausalLM.from_pretrained`, the reference implementation's loader.
Prints JSON: resident memory before (after every import), the peak during the load (VmHWM, reset
just before), and the bytes of the loaded parameters.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path


def status_kb(key: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    raise KeyError(key)


def main() -> None:
    mode, folder = sys.argv[1], Path(sys.argv[2])
    import torch
    import tqdm.auto  # noqa: F401  (imported before measuring, as a long-running process would have)
    from hybrid_agent.model import HybridLM, load_model
    from hybrid_agent.model.checkpoints.loader import ADAPTERS, read_config

    if mode == "transformers":
        import transformers  # noqa: F401

    # The first model built on the meta device imports torch's meta kernels (~150 MB, once per process,
    # whatever the model's size): done before measuring, as in any process that loaded a model before.
    from hybrid_agent.model import HybridConfig

    with torch.device("meta"):
        HybridLM(HybridConfig(vocab_size=8, d_model=32, layer_types=["mamba2"], mlp={"enabled": False}))

    base = status_kb("VmRSS")
    Path(f"/proc/{os.getpid()}/clear_refs").write_text("5")  # reset VmHWM to the current RSS
    if mode == "ours":
        model, _, _ = load_model(folder, progress=False)
    elif mode == "safe_open":
        from safetensors import safe_open

        hf = read_config(folder)
        adapter = ADAPTERS[hf["model_type"]]
        cfg = adapter.hybrid_config(hf)
        with torch.device("meta"):
            model = HybridLM(cfg)
        model = model.to_empty(device="cpu")
        params = model.state_dict(keep_vars=True)
        with safe_open(str(folder / "model.safetensors"), framework="pt") as f:
            for target, src in adapter.sources(cfg, hf).items():
                params[target].data.copy_(f.get_tensor(src.names[0][0]))
    else:
        from transformers import AutoModelForCausalLM

        model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    peak = status_kb("VmHWM")
    nbytes = sum(p.nbytes for p in model.parameters())
    print(json.dumps({"base_kb": base, "peak_kb": peak, "model_bytes": nbytes}))


if __name__ == "__main__":
    main()
