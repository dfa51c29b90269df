#!/bin/bash
# Issue 14 item 5 on the lent H200 machine: the full-size study, torch and
# llama.cpp CUDA on one card, in steps that fit the device tool's 10-minute
# calls of one warm machine (each step skips what a previous call left).
#
# Here, first (the controller's planner writes every job; the directories
# travel with the working tree as untracked files):
#   .venv/bin/python bench/offline_jobs.py jobs docs/results/h200/llamacpp-study/sweep.yaml \
#       docs/results/h200/llamacpp-study/inventory.yaml h200-jobs-llamacpp
#   .venv/bin/python bench/offline_jobs.py jobs docs/results/h200/torch-study/sweep.yaml \
#       docs/results/h200/torch-study/inventory.yaml h200-jobs-torch
# There (device tool), one call per line, back to back:
#   bash bench/h200_study.sh build synth           # ~250 s build, GGUFs beside it
#   bash bench/h200_study.sh llamacpp pack         # the llama-bench jobs
#   bash bench/h200_study.sh torch pack            # the torch jobs
# Here, after each: tar xzf events-*.tgz, then bench/offline_jobs.py import and
# edgefarm report (docs/results/h200/torch-study.md shows the commands).
#
# STUDY_DEADLINE_S (default 540) bounds a call: a job is started only with
# more than 20 s left and is given what is left; one cut short is reported
# by the import as failed with its reason, never dropped.
set -uo pipefail
OUT=${OUT:-/tmp/out}
BUILD=/tmp/rs-build
MODELS=/tmp/models
STEPS=${*:-build synth}
END=$((SECONDS + ${STUDY_DEADLINE_S:-540}))
export PYTHONUNBUFFERED=1
mkdir -p "$OUT" "$MODELS"

. "$(dirname "$0")/h200_cuda.sh"  # cublas_dir, find_nvcc, build_llama_cpp

CUBLAS=$(cublas_dir); echo "cublas: $CUBLAS"
export LD_LIBRARY_PATH=$BUILD/bin:$CUBLAS${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}

run_jobs() {  # run_jobs DIR: every job in DIR/order.txt, as a gateway would start it
  local dir=$1 k left
  for k in $(cat "$dir/order.txt"); do
    if [ -s "$dir/$k/events.jsonl" ] && tail -1 "$dir/$k/events.jsonl" | grep -q '"kind":"result"'; then
      echo "$k: done before"; continue
    fi
    left=$((END - SECONDS))
    [ $left -gt 20 ] || { echo "$k: not started, no time left in this call"; continue; }
    rm -f "$dir/$k/events.jsonl"
    timeout $left python3 -m agents run "$dir/$k" --quiet > "$dir/$k/stdout.log" 2>&1
    echo "$k rc=$? at ${SECONDS}s"
  done
}

for step in $STEPS; do
  echo "== $step $(date +%T)"
  case $step in
  build)
    (nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv
     python3 -c "import torch, transformers; print('torch', torch.__version__, 'transformers', transformers.__version__)"
     date -u) > "$OUT/machine.txt" 2>&1
    t0=$SECONDS
    build_llama_cpp $BUILD "$OUT/build.log" || exit 1
    echo "built in $((SECONDS - t0)) s"; $BUILD/bin/llama-bench --version 2>&1 | tail -1
    ;;
  synth)
    # The GGUFs the llama.cpp jobs use, where the agent looks for them
    # (models_dir/synth, agents/models/synth.py cached_model), 4 at a time.
    for preset in olmoe-1b-7b olmo-1b olmo-7b llama-3.2-1b; do
      for quant in Q4_0 Q8_0; do
        echo "$preset $quant"
      done
    done | xargs -P 4 -L 1 sh -c 'python3 -c "from agents.models.synth import cached_model; print(cached_model(\"'$MODELS'\", \"$0\", \"$1\", 0))"'
    ls -la $MODELS/synth
    ;;
  llamacpp) run_jobs h200-jobs-llamacpp ;;
  torch) run_jobs h200-jobs-torch ;;
  pack)
    for d in h200-jobs-llamacpp h200-jobs-torch; do
      [ -d $d ] && tar czf "$OUT/events-$d.tgz" $d
    done
    ls -la "$OUT" ;;
  esac
done
