#!/usr/bin/env bash
# On the lent GPU machine: the GPU test suites and the chunk-kernel benchmark in one call, each step's
# full output in OUT (so a step cut by its time limit still shows how far it got, test by test).
# Usage (repo root there, after installing the wheels scripts/device_wheels.sh gathers, carried as .whl):
#   python3 -m pip install -q --no-index --no-deps .whl/*.whl && bash scripts/device_gpu_checks.sh OUT
# Steps and their limits (seconds; ~9 minutes in all, under one device command's 10):
#   kernels 300: pytest -m gpu tests/kernels (-v: with xdist each test's name and outcome is logged as it
#                ends, so a run cut by the limit still says which passed; every listed kernel variant
#                compiles for every test shape, which is most of the time)
#   engine   90: pytest -m gpu tests/engine tests/agent, and the gemv engine test (not marked gpu)
#   bench   130: bench/gpu_kernels.py prefill at 4k / 16k / 64k, ours vs fla in one process
#   prefill 300: bench/gpu_prefill_profile.py at the 7B shape, 4k / 16k / 64k: prefill tok/s by chunk
#                (2k-16k) and a torch.profiler run of one prefill, time by kernel and by layer part
#                against each part's FLOP / byte limit (not in the default list: STEPS=prefill runs it)
#   kda     240: the KDA / short-conv GPU tests (kernels, engine, model layers) and bench/gpu_kda.py
#                (not in the default list: STEPS=kda runs it alone)
#   moe     540: the MoE kernels' and the engine's MoE GPU tests (240), bench/gpu_moe.py (150) and its
#                moe_gemv config sweep (150: --sections tune, a 110 s budget, then each shape and batch's
#                default and the shared-expert timings); not in the default list, and with the wheels'
#                install it fills most of one device command: run it alone (STEPS=moe)
#   models   90: pytest -m gpu tests/checkpoints tests/model (not in the default list)
#   families 380: bench/gpu_families.py, the Qwen3.5-9B and 35B-A3B shapes, ours vs transformers
#                (not in the default list)
#   unrun   240: the GPU tests of work merged but not yet run on a GPU: the capture beside another thread's
#                copies (tests/engine/test_graph_capture_thread.py), the GDN prefill's stacked projection,
#                gates and L2 norm kernels (tests/kernels/test_kernels_gpu_gdn_prefill.py), the restore
#                plan, the causal prefill path, the serve tiers and staged saves, the MoE route tests as changed
#                (not in the default list; installs the package first, which pytest's plugins need)
# STEPS (default "kernels engine bench") picks some of them.
set -uo pipefail
out=$1
source scripts/device_env.sh
steps=${STEPS:-kernels engine bench}
nvidia-smi --query-gpu=name --format=csv,noheader | tee "$out/card.txt"
summary() { grep -E "PASSED|FAILED|ERROR|passed|failed|skipped" "$1" | tail -${2:-12}; }
for step in $steps; do
  start=$(date +%s)
  case $step in
    kernels)
      timeout 300 python3 -m pytest -m gpu -v -p no:cacheprovider -n 8 --durations=15 tests/kernels \
        > "$out/pytest_gpu_kernels.txt" 2>&1
      echo "kernels rc=$? $(( $(date +%s) - start )) s"; summary "$out/pytest_gpu_kernels.txt" 50 ;;
    engine)
      timeout 90 python3 -m pytest -m gpu -q -p no:cacheprovider -n 4 tests/engine tests/agent \
        > "$out/pytest_gpu_engine.txt" 2>&1
      timeout 45 python3 -m pytest -q -p no:cacheprovider -o addopts="" tests/engine/test_engine_gemv.py \
        >> "$out/pytest_gpu_engine.txt" 2>&1
      echo "engine $(( $(date +%s) - start )) s"; summary "$out/pytest_gpu_engine.txt" ;;
    bench)
      timeout 130 python3 bench/gpu_kernels.py --sections prefill --lengths 4096,16384,65536 --budget-s 110 \
        --out "$out/gpu_kernels_prefill.json" > "$out/bench_prefill.txt" 2>&1
      echo "bench $(( $(date +%s) - start )) s"; grep -A10 "^op " "$out/bench_prefill.txt" | head -10 ;;
    prefill)
      timeout 300 python3 bench/gpu_prefill_profile.py --budget-s 270 --out "$out/gpu_prefill_profile.json" \
        > "$out/bench_prefill_profile.txt" 2>&1
      echo "prefill rc=$? $(( $(date +%s) - start )) s"; tail -45 "$out/bench_prefill_profile.txt" ;;
    kda)
      timeout 120 python3 -m pytest -m gpu -v -p no:cacheprovider -n 4 tests/kernels/test_kernels_gpu_kda.py \
        tests/kernels/test_kernels_gpu_conv.py tests/engine/test_engine_kda_gpu.py > "$out/pytest_gpu_kda.txt" 2>&1
      timeout 60 python3 -m pytest -q -p no:cacheprovider -o addopts="" tests/model/test_model_triton_layers.py \
        tests/kernels/test_kernels_triton_kda.py >> "$out/pytest_gpu_kda.txt" 2>&1
      echo "kda tests rc=$? $(( $(date +%s) - start )) s"; summary "$out/pytest_gpu_kda.txt" 30
      timeout 120 python3 bench/gpu_kda.py --out "$out/gpu_kda.json" > "$out/bench_kda.txt" 2>&1
      echo "kda $(( $(date +%s) - start )) s"; tail -12 "$out/bench_kda.txt" ;;
    moe)
      timeout 240 python3 -m pytest -m gpu -q -p no:cacheprovider -k moe tests/kernels/test_moe.py \
        tests/kernels/test_moe_route.py tests/engine/test_engine_moe_step.py tests/engine/test_engine_gpu.py \
        > "$out/pytest_gpu_moe.txt" 2>&1
      echo "moe tests rc=$? $(( $(date +%s) - start )) s"; summary "$out/pytest_gpu_moe.txt"
      timeout 150 python3 bench/gpu_moe.py --out "$out/gpu_moe.json" > "$out/bench_moe.txt" 2>&1
      echo "moe bench $(( $(date +%s) - start )) s"; tail -15 "$out/bench_moe.txt"
      timeout 150 python3 bench/gpu_moe.py --sections tune --tune-budget-s 110 --out "$out/gpu_moe_tune.json" \
        > "$out/bench_moe_tune.txt" 2>&1
      echo "moe rc=$? $(( $(date +%s) - start )) s"; grep -A1 "^tune " "$out/bench_moe_tune.txt" | tail -12 ;;
    models)
      timeout 90 python3 -m pytest -m gpu -q -p no:cacheprovider -n 4 tests/checkpoints tests/model \
        > "$out/pytest_gpu_models.txt" 2>&1
      echo "models rc=$? $(( $(date +%s) - start )) s"; summary "$out/pytest_gpu_models.txt" ;;
    families)
      timeout 380 python3 bench/gpu_families.py --budget-s 350 --out "$out/gpu_families.json" \
        > "$out/bench_families.txt" 2>&1
      echo "families rc=$? $(( $(date +%s) - start )) s"; tail -30 "$out/bench_families.txt" ;;
    unrun)
      python3 -m pip install -q --no-deps --no-build-isolation -e . > "$out/pytest_gpu_unrun.txt" 2>&1
      timeout 240 python3 -m pytest -m gpu -v -p no:cacheprovider -n 4 tests/engine/test_graph_capture_thread.py \
        tests/kernels/test_kernels_gpu_gdn_prefill.py tests/engine/test_engine_restore_plan.py \
        tests/engine/test_causal_prefill_gpu.py tests/agent/test_serve_tiers.py tests/kernels/test_moe_route.py \
        tests/agent/test_serve_staged.py \
        >> "$out/pytest_gpu_unrun.txt" 2>&1
      echo "unrun rc=$? $(( $(date +%s) - start )) s"; summary "$out/pytest_gpu_unrun.txt" 40 ;;
    *) echo "unknown step $step" ;;
  esac
done
