"""Training checkpoints that a later run continues from exactly (model/training/train.py --resume).

A checkpoint is a folder `ckpt/` inside the run's output folder:
- `config.json` + `model.safetensors`: the fp32 weights (`save_pretrained`);
- `optimizer.safetensors`: AdamW's state per parameter, by parameter name (`NAME.exp_avg`,
  `NAME.exp_avg_sq`, `NAME.step`): safetensors, never pickle;
- `train_state.json`: where the run was (step, schedule length, epoch and batch within it, tokens seen,
  seconds trained, the log so far).
It is written to `ckpt.tmp/` and renamed into place, so a run killed while saving leaves the previous
checkpoint whole. The batch order is a function of the seed and the epoch (model/training/data.py
`make_batches`), so the step after a resume sees the batch it would have seen without the pause.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import torch
from hybrid_agent.model.hybrid import HybridLM
from safetensors.torch import load_file, save_file

CKPT = "ckpt"
STATE_FILE = "train_state.json"
OPT_FILE = "optimizer.safetensors"


def save_checkpoint(out: Path, model: HybridLM, opt: torch.optim.Optimizer, state: dict[str, Any]) -> Path:
    tmp, final = out / f"{CKPT}.tmp", out / CKPT
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    model.save_pretrained(tmp)
    names = {p: n for n, p in model.named_parameters()}
    tensors: dict[str, torch.Tensor] = {}
    for group in opt.param_groups:
        for p in group["params"]:
            for key, value in opt.state.get(p, {}).items():
                t = value if torch.is_tensor(value) else torch.tensor(float(value))
                tensors[f"{names[p]}.{key}"] = t.detach().cpu().contiguous()
    save_file(tensors, str(tmp / OPT_FILE))
    (tmp / STATE_FILE).write_text(json.dumps(state) + "\n")
    old = out / f"{CKPT}.old"
    shutil.rmtree(old, ignore_errors=True)
    if final.exists():
        final.rename(old)
    tmp.rename(final)
    shutil.rmtree(old, ignore_errors=True)
    return final


def has_checkpoint(out: Path) -> bool:
    return (out / CKPT / STATE_FILE).is_file()


def load_checkpoint(out: Path, model: HybridLM, opt: torch.optim.Optimizer) -> dict[str, Any]:
    """Weights and optimizer state into `model` and `opt` (built as the first run built them); returns
    the saved train state. A checkpoint of another shape is an error that says so."""
    ckpt = out / CKPT
    saved = HybridLM.from_pretrained(ckpt)
    if saved.config.to_json() != model.config.to_json():
        raise ValueError(
            f"{ckpt} holds a model of another config; use the first run's arguments or a new --out"
        )
    model.load_state_dict({k: v.float() for k, v in saved.state_dict().items()})
    tensors = load_file(str(ckpt / OPT_FILE))
    names = {p: n for n, p in model.named_parameters()}
    by_param: dict[str, dict[str, torch.Tensor]] = {}
    for key, t in tensors.items():
        name, _, field = key.rpartition(".")
        by_param.setdefault(name, {})[field] = t
    for group in opt.param_groups:
        on_device = bool(group.get("fused") or group.get("capturable"))  # their step lives on the GPU
        for p in group["params"]:
            saved_state = by_param.get(names[p])
            if saved_state:
                opt.state[p] = {
                    k: v.to(p.device) if k != "step" or on_device else v.float()
                    for k, v in saved_state.items()
                }
    return json.loads((ckpt / STATE_FILE).read_text())
