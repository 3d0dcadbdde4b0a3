#!/usr/bin/env bash
# On the lent GPU machine: train the default hybrid and the same-size attention-only and Mamba-2-only
# models at once (one process each on the one GPU, same corpus, seed, batches and step count: they
# agree on the step count after calibrating, see train.py --sync-dir), then pack what comes back.
# Usage (repo root there): bash scripts/device_train_compare.sh OUT MINUTES CORPUS_TGZ
#   CORPUS_TGZ: a tar.gz of one scripts/make_agent_data.py folder, generated beforehand (made here,
#   it costs no device time). What comes back (the files limit is 64 MiB together): the hybrid's and
#   the attention model's bf16 weights in OUT as parts of one tar (cat parts | tar x); the Mamba-2
#   model's stay packed in /tmp/pack-mamba2 for a second, immediate call to copy out
#   (`cp /tmp/pack-mamba2/* $OUT`); logs and a summary in OUT.
# A dry run at toy size: TRAIN_ARGS="--d-model 32 --n-layers 3 --device cpu" with a tiny corpus.
set -euo pipefail
out=$1 minutes=$2 corpus=$3
start=$(date +%s)
source scripts/device_env.sh
mkdir -p /tmp/corpus && tar xzf "$corpus" -C /tmp/corpus
data=$(dirname "$(ls /tmp/corpus/*/manifest.json | head -1)")
rm -rf /tmp/sync
pids=()
for arch in hybrid attention mamba2; do
  python3 -m hybrid_agent.model.training.train --data "$data" --out /tmp/run-$arch --arch $arch --minutes "$minutes" \
    --max-steps 100000 --sync-dir /tmp/sync --sync-n 3 --log-every 20 --checkpoint-minutes 0 \
    ${TRAIN_ARGS:-} > /tmp/run-$arch.txt 2>&1 &
  pids+=($!)
done
status=0
for p in "${pids[@]}"; do wait "$p" || status=1; done
for arch in hybrid attention mamba2; do echo "== $arch"; grep -v '^{' /tmp/run-$arch.txt | tail -6; done
echo "training done after $(( $(date +%s) - start )) s (status $status)"
python3 - "$out" <<'PY'
import json, sys
from pathlib import Path
import torch
from safetensors.torch import load_file, save_file
summary = {}
for arch in ("hybrid", "attention", "mamba2"):
    d = Path(f"/tmp/run-{arch}")
    if not (d / "log.json").exists():
        summary[arch] = None
        continue
    p = d / "model.safetensors"  # bf16 for the trip back (the loader casts to fp32 on the CPU)
    save_file({k: v.to(torch.bfloat16) for k, v in load_file(p).items()}, p, metadata={"format": "pt"})
    log = json.loads((d / "log.json").read_text())
    summary[arch] = {k: log.get(k) for k in ("params", "device", "total_steps", "tokens", "computed_tokens",
                                             "train_seconds", "val_loss", "ms_per_step_calibrated")}
    summary[arch]["layers"] = log["config"]["layer_types"]
(Path(sys.argv[1]) / "summary.json").write_text(json.dumps(summary, indent=1))
print(json.dumps(summary, indent=1))
PY
mkdir -p /tmp/pack-main /tmp/pack-mamba2
tar cf /tmp/pack-main/models.tar -C /tmp run-hybrid run-attention run-hybrid.txt run-attention.txt
split -b 15900000 /tmp/pack-main/models.tar "$out/models.tar.part-"
tar cf /tmp/pack-mamba2/mamba2.tar -C /tmp run-mamba2 run-mamba2.txt
split -b 15900000 /tmp/pack-mamba2/mamba2.tar /tmp/pack-mamba2/mamba2.tar.part-
rm /tmp/pack-mamba2/mamba2.tar
ls -la "$out" /tmp/pack-mamba2; echo "total: $(( $(date +%s) - start )) s"
