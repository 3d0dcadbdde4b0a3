#!/usr/bin/env bash
# Second round on the lent GPU machine, after device_train_default.sh:
#  1. train hybrid, attention-only and Mamba-2-only models of about the same size on the same tokens
#     (same seed, same batches, same schedule: --max-steps CMP_STEPS), while the CPUs generate a
#     second corpus (seed 1) with the first one's tokenizer;
#  2. evaluate the three on memory recall (CPU, in the background) while the GPU continues the
#     default model from its shipped weights on both corpora for what is left of SECONDS.
# Usage: bash scripts/device_compare_and_continue.sh OUT SECONDS CMP_STEPS
# (A dry run at toy size: EPISODES2=20 RECALL_N=1 INIT= TRAIN_ARGS="--d-model 32 --n-layers 3".)
# Expects .data/data.tgz (the first corpus), the default model in model/default, wheels in .data/whl.
set -euo pipefail
out=$1 seconds=$2 cmp_steps=$3
start=$(date +%s)
if ls .data/whl/*.whl >/dev/null 2>&1 && ! python3 -c "import pydantic, sqlalchemy" 2>/dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .data/whl/*.whl
  export PYTHONPATH=/tmp/site:${PYTHONPATH:-}
fi
source scripts/device_env.sh
tar xzf .data/data.tgz -C /tmp
python3 scripts/make_agent_data.py --out /tmp/agent-data2 --episodes "${EPISODES2:-24000}" --seed 1 --workers 12 \
  --tokenizer /tmp/agent-data > $out/manifest2.txt 2>&1 &
gen=$!
for arch in hybrid attention mamba2; do
  python3 -m hybrid_agent.model.training.train --data /tmp/agent-data --out /tmp/cmp-$arch --arch $arch \
    --max-steps "$cmp_steps" --log-every 20 --checkpoint-minutes 0 ${TRAIN_ARGS:-} > /tmp/cmp-$arch.txt 2>&1
  tail -2 /tmp/cmp-$arch.txt
done
evals=()
for arch in hybrid attention mamba2; do
  python3 bench/eval_default_model.py --model /tmp/cmp-$arch --per-kind 0 --recall-n "${RECALL_N:-10}" --workers 4 \
    --out /tmp/cmp-$arch/recall.json > /tmp/cmp-$arch/recall.txt 2>&1 &
  evals+=($!)
done
wait $gen; echo "second corpus after $(( $(date +%s) - start )) s"; tail -3 $out/manifest2.txt
minutes=$(python3 -c "print(max(0.5, ($seconds - $(date +%s) + $start - 45) / 60))")
python3 -m hybrid_agent.model.training.train --data /tmp/agent-data /tmp/agent-data2 ${INIT---init model/default} --out /tmp/main \
  --minutes "$minutes" --max-steps 100000 --lr 1e-3 --warmup 30 --log-every 40 ${TRAIN_ARGS:-} 2>&1 | tee /tmp/main.txt | tail -4
wait "${evals[@]}" || true
python3 - <<'PY'
import json, sys
from pathlib import Path
out = {}
for arch in ("hybrid", "attention", "mamba2"):
    d = Path(f"/tmp/cmp-{arch}")
    log = json.loads((d / "log.json").read_text())
    rec = json.loads((d / "recall.json").read_text()) if (d / "recall.json").exists() else None
    out[arch] = {"params": log["params"], "layers": log["config"]["layer_types"], "steps": log["steps"],
                 "val_loss": log["val_loss"], "tokens": log["tokens"], "train_seconds": log["train_seconds"],
                 "recall": rec and rec["summary"]["recall"], "recalls": rec and rec["recalls"]}
Path(sys.argv[1] if len(sys.argv) > 1 else "/tmp/compare.json").write_text(json.dumps(out, indent=1))
PY
cp /tmp/compare.json $out/compare.json
python3 scripts/bf16_weights.py /tmp/main/model.safetensors
split -b 15M /tmp/main/model.safetensors $out/model.safetensors.part-
cp /tmp/main/log.json $out/log.json; cp /tmp/main/config.json $out/
tar czf $out/logs.tgz -C /tmp main.txt cmp-hybrid.txt cmp-attention.txt cmp-mamba2.txt cmp-hybrid/recall.txt \
  cmp-attention/recall.txt cmp-mamba2/recall.txt
ls -la $out; echo "total: $(( $(date +%s) - start )) s"
