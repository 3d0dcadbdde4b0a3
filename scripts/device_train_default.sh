#!/usr/bin/env bash
# Generate the data, train the default model and pack what comes back, on the lent GPU machine.
# Usage (in the repo root there): bash scripts/device_train_default.sh OUT EPISODES SECONDS [WORKERS]
# SECONDS bounds the whole script: training gets what data generation leaves, less a minute to pack.
# The wheels of pydantic & co. (which that machine lacks) are expected in .data/whl (see README).
# This is session 1's recipe (pool words only, tokenizer trained on the device). The shipped v4 came
# from scripts/device_train_wide.sh: --wide 0.5 data, a tokenizer trained here beforehand, then a
# second call continuing from the first's weights (bench/results/default_model_training_v4.json).
set -euo pipefail
out=$1 episodes=$2 seconds=$3 workers=${4:-15}
if ls .data/whl/*.whl >/dev/null 2>&1 && ! python3 -c "import pydantic" 2>/dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .data/whl/*.whl
  export PYTHONPATH=/tmp/site:${PYTHONPATH:-}
fi
source scripts/device_env.sh
data=/tmp/agent-data run=/tmp/agent-run
start=$(date +%s)
python3 scripts/make_agent_data.py --out $data --episodes "$episodes" --workers "$workers" > $out/manifest.txt
echo "data: $(( $(date +%s) - start )) s"; tail -5 $out/manifest.txt
minutes=$(python3 -c "print(max(0.5, ($seconds - $(date +%s) + $start - 60) / 60))")
python3 -m hybrid_agent.model.training.train --data $data --out $run --minutes "$minutes" --log-every 20 \
  ${TRAIN_ARGS:-} 2>&1 | tee $out/train.txt
# Weights in bf16 (the loader casts to float32 on the CPU), split to fit the size of returned files.
python3 scripts/bf16_weights.py "$run/model.safetensors"
split -b 15M $run/model.safetensors $out/model.safetensors.part-
cp $run/config.json $run/tokenizer.json $run/log.json $out/
tar czf $out/data.tgz -C /tmp agent-data
ls -la $out; echo "total: $(( $(date +%s) - start )) s"
