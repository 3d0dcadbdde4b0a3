#!/usr/bin/env bash
# The GPU benchmarks of `hybrid-agent serve` (issue 24) and of the start and resume paths (issue 25) in
# device calls of at most 10 minutes each, at OLMo Hybrid 7B's shape (random bf16 weights, written once):
#   bash scripts/device_bench_serve_start.sh OUT [STEPS]
# STEPS (comma-separated; default serve,returning), run in this order: serve, overlap-off, returning,
# returning-plain,
# feed, apart, gil, stepprof, shortpf, causal, hf, start, serve-start, acp-start, weights, resume, loop.
# Their limits add up to more
# than one device command's 10 minutes; calls that fit (with the checkpoint's ~45-50 s): the default
# list; `feed,stepprof,shortpf`; `causal` with `weights,resume,loop`; `start,weights,resume,loop` (280 +
# 90 + 100 + 50 s of limits); `serve-start,acp-start`. The start step's JSON has each phase of the start
# (HYBRID_AGENT_STARTUP_TRACE, agent/startup.py) and is rewritten after every start, so a cut step keeps
# the rounds it finished.
#   serve  bench/gpu_serve.py: 1 / 8 / 32 / 64 concurrent sessions on the engine's rows (the model's own
#          batch, the fallback for models the engine cannot batch, doubled the step's time and cut it
#          at 32 sessions on the H100: `--batch-paths engine,model` times both)
#   overlap-off (not in the default list) the serve step at 1 / 8 / 32 sessions with
#          HYBRID_AGENT_STEP_OVERLAP=0: the rows take their tokens on the host before each step is queued
#          instead of while it runs (agent/serve_batch.py `BatchLoop._step`), to compare in one call
#   returning  bench/gpu_serve.py's returning 64k conversation: the first token from the GPU tier, the
#          host-memory tier, the database and a full prefill (twice: the prompt state's host copy made
#          before the first token, `prefill_sync_*`, and staged on the GPU, `prefill_*`)
#   returning-plain (not in the default list) the returning step with HYBRID_AGENT_PIN_HOST=0: the writer's
#          host copies in plain memory (no pinning while serving), to compare the first token while the
#          writer still saves the first turn (1.32 s against 0.17 s once it is done on the H100)
#   start  bench/cold_start.py: this tree against the tree in .before/ (the commit before the start work,
#          made with `git archive`, carried as an ignored folder), new and resumed sessions. On the
#          H100 a 150 s limit ended the step after the warm-up starts and round 0 (whose four starts
#          took ~73 s: the old tree hashes the weights at every start), so two rounds need ~230 s;
#          `--budget` skips a round that would not end before the step's limit.
#   resume bench/gpu_resume.py full-cache resume at 64k (BLAKE3 snapshots) against re-prefilling
#   loop   bench/loop_overhead.py on cuda: the agent loop's decode against the engine's at one context
#   weights (not in the default list) bench/load_weights.py --device cuda: the weights' reader into the
#          GPU (the pinned ring of model/checkpoints/shards.py) in GB/s, against safetensors' load_file
#   serve-start, acp-start (not in the default list; with the checkpoint, one call) bench/serve_start.py
#          and bench/acp_start.py: seconds from the spawn of `serve` to /health and a first token, and
#          of `acp` to an editor's first token (session/new 5 s after the spawn, as a person typing),
#          this tree against .before/ as the start step
#   feed   (not in the default list) the serve step again with `--join-feed-tokens 128`: the ~72-token
#          first turns fed by the batch's steps instead of a prefill alone each (issue 24: a prefill
#          that short is ~100 ms of kernel launches on the H100), to compare with the serve step's rows
#   apart  (not in the default list) the serve step again with `--no-join-together`: first turns joining
#          at once each prefilled alone (~70 ms each on the H100) instead of as the rows of one forward
#          (agent/serve_together.py, the server's default since it was timed so)
#   gil    (not in the default list) 32 sessions three ways: the clients as threads of the server's
#          process (`--client-procs 0`, as every run before), in processes of their own (the default),
#          and with `--switch-interval 0.0005`: how much of the step's time inside the server (23 ms
#          against 6.3 ms alone at 32 rows on an H200) is host time waiting for the interpreter lock
#   stepprof (not in the default list) bench/gpu_step_profile.py: the engine's batched step alone at
#          1 / 8 / 32 / 64 rows, graphed time and an ungraphed profile by kernel
#   shortpf (not in the default list) bench/gpu_prefill_profile.py at 72 / 73 / 200 / 4096 tokens:
#          short prefills' time by chunk and by layer part (launch-bound or not)
#   causal (not in the default list) bench/gpu_prefill_profile.py --causal both at 16k and 64k: prefill
#          chunks through SDPA's causal kernel without a mask (HYBRID_AGENT_CAUSAL_PREFILL=1, off by
#          default) against the masked call, sweeps only (the ratio decides the default)
#   hf     (not in the default list) transformers' batching on the same shape, bench/gpu_serve.py
#          --transformers alone: on the H100 (transformers 5.17) its generate_batch outran the serve
#          step's limit when the two shared it, so it has its own step and JSON
# Each step has its own time limit so one that hangs cannot take the others' time; every JSON lands in OUT.
set -uo pipefail
out=$1 steps=${2:-serve,returning}
start=$(date +%s)
source scripts/device_env.sh
ckpt=/tmp/olmo7b
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader | tee "$out/card.txt"
python3 -c "import torch, triton, transformers; print(torch.__version__, triton.__version__, transformers.__version__)" \
  | tee -a "$out/card.txt"
if [ ! -f $ckpt/model.safetensors ]; then
  python3 -c "import sys; sys.path.insert(0, 'bench'); from pathlib import Path; import cold_start as c; \
c.write_random_checkpoint(Path('$ckpt'), 'olmo7b')"
  echo "checkpoint: $(( $(date +%s) - start )) s"
fi
step() {  # step name (of STEPS), log name, seconds, command...
  local name=$1 log=$2 limit=$3; shift 3
  case ",$steps," in *",$name,"*) ;; *) return ;; esac
  local t0=$(date +%s)
  timeout -k 10 "$limit" "$@" > "$out/$log.log" 2>&1
  echo "$log: exit $? in $(( $(date +%s) - t0 )) s"; tail -4 "$out/$log.log"
}
step serve serve 240 python3 bench/gpu_serve.py --model $ckpt --sessions 1,8,32,64 --decode-tokens 128 \
  --sections decode --batch-paths engine --out "$out/gpu_serve.json"
step overlap-off serve_overlap_off 200 env HYBRID_AGENT_STEP_OVERLAP=0 python3 bench/gpu_serve.py --model $ckpt \
  --sessions 1,8,32 --decode-tokens 128 --sections decode --batch-paths engine --out "$out/gpu_serve_overlap_off.json"
step returning serve_returning 260 python3 bench/gpu_serve.py --model $ckpt --sessions 1 --sections returning \
  --context 65536 --out "$out/gpu_serve_returning.json"
step returning-plain serve_returning_plain 200 env HYBRID_AGENT_PIN_HOST=0 python3 bench/gpu_serve.py --model $ckpt \
  --sessions 1 --sections returning --context 65536 --out "$out/gpu_serve_returning_plain.json"
step feed serve_feed 200 python3 bench/gpu_serve.py --model $ckpt --sessions 1,8,32,64 --decode-tokens 128 \
  --sections decode --batch-paths engine --join-feed-tokens 128 --out "$out/gpu_serve_feed128.json"
step apart serve_apart 200 python3 bench/gpu_serve.py --model $ckpt --sessions 1,8,32,64 --decode-tokens 128 \
  --sections decode --batch-paths engine --no-join-together --out "$out/gpu_serve_apart.json"
step gil serve_gil 230 bash -c "for v in '--client-procs 0' '' '--switch-interval 0.0005'; do \
  python3 bench/gpu_serve.py --model $ckpt --sessions 32 --decode-tokens 128 --sections decode --batch-paths engine \
  \$v --out $out/gpu_serve_gil\$(echo \$v | tr -dc 0-9).json || exit 1; done"
step stepprof step_profile 150 python3 bench/gpu_step_profile.py --rows 1,8,32,64 --budget-s 140 \
  --out "$out/gpu_step_profile.json"
step shortpf short_prefill 120 python3 bench/gpu_prefill_profile.py --lengths 72,73,200,4096 --chunks 2048 \
  --profile-chunk 2048 --reps 3 --budget-s 110 --out "$out/gpu_prefill_short.json"
step causal prefill_causal 200 python3 bench/gpu_prefill_profile.py --causal both --lengths 16k,64k \
  --chunks 4096,8192 --sections sweep --reps 2 --budget-s 190 --out "$out/gpu_prefill_causal.json"
step hf serve_hf 240 python3 bench/gpu_serve.py --model $ckpt --sessions 1,8,32,64 --decode-tokens 128 \
  --sections "" --transformers --out "$out/gpu_serve_hf.json"
if [ -d .before ] && [ ! -e .before/model/default ]; then ln -s "$PWD/model/default" .before/model/default; fi
(cd .before && HYBRID_AGENT_SITE=/tmp/site-before source scripts/device_env.sh > /dev/null)
step start start 280 python3 bench/cold_start.py --model $ckpt --device cuda --rounds 2 --budget 255 \
  --tree before=/tmp/site-before --tree after=/tmp/hybrid-agent-site --out "$out/cold_start_gpu.json"
step serve-start serve_start 200 python3 bench/serve_start.py --model $ckpt --device cuda --rounds 2 --budget 180 \
  --tree before=/tmp/site-before --tree after=/tmp/hybrid-agent-site --out "$out/serve_start_gpu.json"
step acp-start acp_start 200 python3 bench/acp_start.py --model $ckpt --device cuda --rounds 2 --budget 180 --think 5 \
  --tree before=/tmp/site-before --tree after=/tmp/hybrid-agent-site --out "$out/acp_start_gpu.json"
step weights load_weights 90 python3 bench/load_weights.py --gb 4 --rounds 3 --device cuda \
  --out "$out/load_weights_gpu.json"
step resume resume_b3 100 python3 bench/gpu_resume.py --sections full --digest blake3 --out "$out/gpu_resume_b3.json"
step loop loop 50 python3 bench/loop_overhead.py --model $ckpt --device cuda --context 4096 --tokens 256 \
  --repeats 2 --out "$out/loop_overhead_gpu.json"
echo "total: $(( $(date +%s) - start )) s"
