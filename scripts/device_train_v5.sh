#!/usr/bin/env bash
# Train the next default model on the lent GPU machine in several calls of <= 10 minutes each.
# Usage (repo root there): bash scripts/device_train_v5.sh OUT [EPISODES] [TOTAL_MINUTES] [SIZE]
#   Every call: make the corpus in .train/data if it is not there yet (ignored, so a warm machine keeps
#   it between calls), then train for what is left of 9 minutes, resuming the checkpoint in .train/run
#   (weights, optimizer state, data position: model/training/checkpoint.py). TOTAL_MINUTES is the
#   schedule's budget over all calls; call again until log.json says "finished": true, then the
#   weights come back in bf16 under OUT. SIZE: D_MODELxN_LAYERS (docs/training.md says why 384x7).
# Data: the held-out eval's names and wordings are not in it (scripts/check_eval_overlap.py). SHAPES
#   (0.5 unless set) is make_agent_data.py's --shapes share; SHAPES=0 makes the v5 model's corpus.
set -euo pipefail
out=$1 episodes=${2:-120000} total=${3:-30} size=${4:-384x7}
start=$(date +%s)
source scripts/device_env.sh
data=.train/data run=.train/run
workers=$(( $(nproc) > 1 ? $(nproc) - 1 : 1 ))
if [ ! -f $data/manifest.json ]; then
  python3 scripts/make_agent_data.py --out $data --episodes "$episodes" --seed 0 --workers "$workers" \
    --wide 0.5 --voices 0.7 --projects 0.5 --shapes "${SHAPES:-0.5}" --tokenizer model/default/tokenizer.json \
    > /dev/null
  echo "data: $(( $(date +%s) - start )) s"
fi
cp $data/manifest.json "$out/manifest.json"
minutes=$(python3 -c "print(max(0.5, (540 - $(date +%s) + $start) / 60))")
python3 -m hybrid_agent.model.training.train --data $data --out $run --d-model "${size%x*}" \
  --n-layers "${size#*x}" --minutes "$total" --max-steps 1000000 --resume --run-minutes "$minutes" \
  --checkpoint-minutes 3 --log-every 50 ${TRAIN_ARGS:-} 2>&1 | grep -v '^{' || true
cp $run/log.json "$out/log.json"
if python3 -c "import json,sys; sys.exit(0 if json.load(open('$run/log.json'))['finished'] else 1)"; then
  cp $run/model.safetensors $run/config.json $run/tokenizer.json /tmp/
  python3 scripts/bf16_weights.py /tmp/model.safetensors  # the loader casts back to fp32
  split -b 15900000 /tmp/model.safetensors "$out/model.safetensors.part-"  # the returned-file limit
  cp /tmp/config.json /tmp/tokenizer.json "$out/"
fi
ls -la "$out"; echo "total: $(( $(date +%s) - start )) s"
