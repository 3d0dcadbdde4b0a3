"""Train a small native model on the corpus of scripts/make_agent_data.py.

    python -m model.training.train --data .data/agent --out out/default --arch hybrid --minutes 6

Design choices:
- `--data` may name several corpora made with one tokenizer; `--init` continues from saved weights.
- AdamW (no weight decay on norms, biases and SSM scalars), linear warmup then cosine decay to
  `min_lr_frac` of the peak; bf16 autocast on CUDA, fp32 elsewhere; gradient clipping at 1.0.
- A wall-clock budget (`--minutes`) as well as `--max-steps`: after `--calibrate` steps the step time
  is measured and the schedule's length fixed, so a run on a lent GPU ends on time with a fully
  decayed learning rate.
- `--arch hybrid | attention | mamba2` builds the layer stack; the baselines get as many layers as
  bring their parameter count closest to the hybrid's, so comparisons are at (about) equal size.
- Logged to `log.json` (written as it goes): per step the tokens seen (non-padding), the loss over
  the assistant's tokens, the learning rate; and a held-out loss at the end. Checkpoints
  (`save_pretrained` + tokenizer.json) every `--checkpoint-minutes` and at the end.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from model.config import HybridConfig
from model.hybrid import HybridLM
from model.training.data import Corpus, collate, make_batches
from model.training.forward import train_forward

ARCHS = ("hybrid", "attention", "mamba2")


def layer_types(arch: str, n_layers: int) -> list[str]:
    if arch == "attention":
        return ["attention"] * n_layers
    if arch == "mamba2":
        return ["mamba2"] * n_layers
    # Every third layer attention, the rest Mamba-2 (6 layers: M M A M M A).
    return ["attention" if i % 3 == 2 else "mamba2" for i in range(n_layers)]


def build_config(arch: str, vocab_size: int, d_model: int, n_layers: int) -> HybridConfig:
    head = min(64, d_model // 4)  # 64 at real sizes; toy sizes keep 4 heads
    return HybridConfig(
        vocab_size=vocab_size,
        d_model=d_model,
        layer_types=layer_types(arch, n_layers),
        mamba2={"head_dim": head, "d_state": 64, "chunk_size": 64},
        attention={"head_dim": head, "n_kv_heads": 2},
    )


def matched_config(arch: str, vocab_size: int, d_model: int, hybrid_layers: int) -> HybridConfig:
    """The config of `arch` whose parameter count is closest to the hybrid's."""
    target = HybridLM(build_config("hybrid", vocab_size, d_model, hybrid_layers)).num_parameters()
    best = min(
        range(1, 3 * hybrid_layers),
        key=lambda n: abs(HybridLM(build_config(arch, vocab_size, d_model, n)).num_parameters() - target),
    )
    return build_config(arch, vocab_size, d_model, best)


def param_groups(model: HybridLM, weight_decay: float) -> list[dict]:
    decay, plain = [], []
    for name, p in model.named_parameters():
        (decay if p.dim() >= 2 and "conv1d" not in name else plain).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": plain, "weight_decay": 0.0}]


def lr_at(step: int, total: int, peak: float, warmup: int, min_frac: float) -> float:
    if step < warmup:
        return peak * (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return peak * (min_frac + (1 - min_frac) * 0.5 * (1 + math.cos(math.pi * progress)))


def batch_loss(model: HybridLM, ids: torch.Tensor, tmask: torch.Tensor, autocast: bool) -> torch.Tensor:
    with torch.autocast("cuda", dtype=torch.bfloat16, enabled=autocast):
        logits = train_forward(model, ids)  # (B, T, V)
    targets = ids[:, 1:]  # (B, T-1)
    loss = F.cross_entropy(
        logits[:, :-1].float().reshape(-1, logits.shape[-1]), targets.reshape(-1), reduction="none"
    )  # (B*(T-1),)
    m = tmask[:, :-1].reshape(-1).float()
    return (loss * m).sum() / m.sum().clamp(min=1)


@torch.no_grad()
def evaluate(model: HybridLM, corpus: Corpus, batches: list[np.ndarray], device: torch.device) -> float:
    model.eval()
    total, count = 0.0, 0.0
    for b in batches:
        ids, tmask = (torch.from_numpy(a).to(device) for a in collate(corpus, b))
        n = float(tmask.sum())
        total += float(batch_loss(model, ids, tmask, device.type == "cuda")) * n
        count += n
    model.train()
    return total / max(count, 1.0)


def train(a: argparse.Namespace) -> dict:
    if torch.cuda.is_available():
        os.environ.setdefault("HYBRID_AGENT_KERNELS", "ref")  # Triton kernels are forward-only
        torch.backends.cuda.matmul.allow_tf32 = True
    torch.manual_seed(a.seed)
    device = torch.device(a.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    corpus = Corpus.concat([Corpus.load(d) for d in a.data])
    vocab = corpus.tokenizer.vocab_size
    cfg = (
        build_config("hybrid", vocab, a.d_model, a.n_layers)
        if a.arch == "hybrid"
        else matched_config(a.arch, vocab, a.d_model, a.n_layers)
    )
    model = HybridLM(cfg)
    if a.init is not None:  # continue from saved weights (same config), with a fresh schedule
        init = HybridLM.from_pretrained(a.init)
        if init.config.layer_types != cfg.layer_types or init.config.d_model != cfg.d_model:
            raise ValueError(f"--init {a.init} has another shape than --arch/--d-model/--n-layers")
        model.load_state_dict({k: v.float() for k, v in init.state_dict().items()})
    model = model.to(device).train()
    rng = np.random.default_rng(a.seed)
    perm = rng.permutation(len(corpus))
    n_val = max(1, int(len(corpus) * a.val_fraction))
    val_idx, train_idx = perm[:n_val], perm[n_val:]
    val_batches = make_batches(corpus, val_idx, a.tokens_per_batch, np.random.default_rng(0))
    opt = torch.optim.AdamW(
        param_groups(model, a.weight_decay), lr=a.lr, betas=(0.9, 0.95), eps=1e-8, fused=device.type == "cuda"
    )
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    log: dict = {
        "arch": a.arch,
        "config": json.loads(cfg.to_json()),
        "params": model.num_parameters(),
        "device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu",
        "args": json.loads(json.dumps(vars(a), default=str)),
        "corpus": corpus.manifest,
        "steps": [],
    }
    print(f"{a.arch}: {log['params'] / 1e6:.2f}M params, layers {cfg.layer_types}", flush=True)
    total_steps, step, tokens, epoch = a.max_steps, 0, 0, 0
    start = last_ckpt = time.perf_counter()
    calib_t0: float | None = None
    while step < total_steps:
        for b in make_batches(corpus, train_idx, a.tokens_per_batch, np.random.default_rng(a.seed + epoch)):
            if step >= total_steps:
                break
            ids_np, tmask_np = collate(corpus, b)
            ids, tmask = torch.from_numpy(ids_np).to(device), torch.from_numpy(tmask_np).to(device)
            lr = lr_at(step, total_steps, a.lr, a.warmup, a.min_lr_frac)
            for g in opt.param_groups:
                g["lr"] = lr
            loss = batch_loss(model, ids, tmask, device.type == "cuda")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            tokens += int((ids_np != corpus.tokenizer.token_id("<|pad|>")).sum())
            step += 1
            if step == 3:
                calib_t0 = time.perf_counter()  # the first steps include allocator and kernel warm-up
            if step == 3 + a.calibrate and calib_t0 is not None and a.minutes:
                per_step = (time.perf_counter() - calib_t0) / a.calibrate
                left = a.minutes * 60 - (time.perf_counter() - start)
                total_steps = min(a.max_steps, step + int(left / per_step))
                print(f"{per_step * 1000:.0f} ms/step: schedule set to {total_steps} steps", flush=True)
            if step % a.log_every == 0 or step == total_steps:
                entry = {"step": step, "tokens": tokens, "loss": float(loss.detach()), "lr": lr,
                         "seconds": round(time.perf_counter() - start, 1)}  # fmt: skip
                log["steps"].append(entry)
                print(json.dumps(entry), flush=True)
            if a.checkpoint_minutes and time.perf_counter() - last_ckpt > a.checkpoint_minutes * 60:
                model.save_pretrained(out)
                last_ckpt = time.perf_counter()
        epoch += 1
    log["total_steps"], log["tokens"], log["epochs_started"] = step, tokens, epoch
    log["train_seconds"] = round(time.perf_counter() - start, 1)
    log["val_loss"] = evaluate(model, corpus, val_batches, device)
    print(f"held-out loss {log['val_loss']:.4f} after {tokens} tokens", flush=True)
    model.float().save_pretrained(out)
    corpus.tokenizer.save(out)
    (out / "log.json").write_text(json.dumps(log, indent=1) + "\n")
    return log


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description="Train a small native model on agent episodes.")
    p.add_argument(
        "--data", type=Path, nargs="+", required=True, help="folders of scripts/make_agent_data.py"
    )
    p.add_argument(
        "--init", type=Path, default=None, help="start from these weights (save_pretrained folder)"
    )
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--arch", choices=ARCHS, default="hybrid")
    p.add_argument("--d-model", type=int, default=384)
    p.add_argument("--n-layers", type=int, default=6, help="of the hybrid; baselines are matched in size")
    p.add_argument("--minutes", type=float, default=0.0, help="wall-clock budget (0: --max-steps only)")
    p.add_argument("--max-steps", type=int, default=1000)
    p.add_argument("--calibrate", type=int, default=10)
    p.add_argument("--tokens-per-batch", type=int, default=65536)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--min-lr-frac", type=float, default=0.05)
    p.add_argument("--warmup", type=int, default=60)
    p.add_argument("--weight-decay", type=float, default=0.1)
    p.add_argument("--val-fraction", type=float, default=0.02)
    p.add_argument("--log-every", type=int, default=10)
    p.add_argument("--checkpoint-minutes", type=float, default=2.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default=None)
    return p


def main(argv: list[str] | None = None) -> None:
    train(parser().parse_args(argv))


if __name__ == "__main__":
    main()
