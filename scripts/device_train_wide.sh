#!/usr/bin/env bash
# On the lent GPU machine: generate the training corpus there (16 cores: episodes made and encoded in
# parallel with a tokenizer trained here beforehand), train the hybrid on it, pack bf16 weights back.
# Usage (repo root there): bash scripts/device_train_wide.sh OUT SECONDS EPISODES SEED TOKENIZER [INIT]
#   SECONDS bounds the whole script: training gets what generation leaves, less 50 s to evaluate and
#   pack. INIT: a save_pretrained folder to continue from (same tokenizer). Data: --wide 0.5.
# Extra train.py flags go in TRAIN_ARGS.
set -euo pipefail
out=$1 seconds=$2 episodes=$3 seed=$4 tok=$5 init=${6:-}
start=$(date +%s)
source scripts/device_env.sh
workers=$(( $(nproc) > 1 ? $(nproc) - 1 : 1 ))
python3 scripts/make_agent_data.py --out /tmp/agent-data --episodes "$episodes" --seed "$seed" \
  --workers "$workers" --wide 0.5 --tokenizer "$tok" > "$out/manifest.json"
echo "data: $(( $(date +%s) - start )) s"
minutes=$(python3 -c "print(max(0.5, ($seconds - $(date +%s) + $start - 50) / 60))")
python3 -m hybrid_agent.model.training.train --data /tmp/agent-data --out /tmp/run-hybrid --arch hybrid \
  --minutes "$minutes" --max-steps 100000 --log-every 50 --checkpoint-minutes 0 \
  ${init:+--init "$init"} ${TRAIN_ARGS:-} 2>&1 | grep -v '^{' || true
python3 scripts/bf16_weights.py /tmp/run-hybrid/model.safetensors  # the loader casts back to fp32
tar cf /tmp/hybrid.tar -C /tmp run-hybrid
split -b 15900000 /tmp/hybrid.tar "$out/hybrid.tar.part-"
ls -la "$out"; echo "total: $(( $(date +%s) - start )) s"
