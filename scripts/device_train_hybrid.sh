#!/usr/bin/env bash
# On the lent GPU machine: train the default hybrid alone on a corpus generated beforehand (here, at
# no device time), and pack its bf16 weights to come back (2 files of < 16 MiB).
# Usage (repo root there): bash scripts/device_train_hybrid.sh OUT MINUTES CORPUS_TGZ
#   CORPUS_TGZ: one or more scripts/make_agent_data.py folders made with one tokenizer (--tokenizer).
# Extra train.py flags go in TRAIN_ARGS (e.g. --tokens-per-batch 16384 for more optimizer steps).
set -euo pipefail
out=$1 minutes=$2 corpus=$3
start=$(date +%s)
source scripts/device_env.sh
mkdir -p /tmp/corpus && tar xzf "$corpus" -C /tmp/corpus
data=$(dirname $(ls /tmp/corpus/*/manifest.json))  # every corpus in the archive (one tokenizer)
python3 -m hybrid_agent.model.training.train --data $data --out /tmp/run-hybrid --arch hybrid --minutes "$minutes" \
  --max-steps 100000 --log-every 50 --checkpoint-minutes 0 ${TRAIN_ARGS:-} 2>&1 | grep -v '^{' || true
python3 scripts/bf16_weights.py /tmp/run-hybrid/model.safetensors  # the loader casts back to fp32
tar cf /tmp/hybrid.tar -C /tmp run-hybrid
split -b 15900000 /tmp/hybrid.tar "$out/hybrid.tar.part-"
ls -la "$out"; echo "total: $(( $(date +%s) - start )) s"
