#!/bin/bash
# Issue 14 item 5 on the lent H200 machine: the full-size study, torch and
# llama.cpp CUDA on one card, as one background run that outlives the device
# tool's 10-minute calls while the machine is held.
#
# Here, first (the controller's planner writes every job; the directories
# travel with the working tree as untracked files):
#   for s in llamacpp torch variants eager; do
#     .venv/bin/python bench/offline_jobs.py jobs docs/results/h200/$s-study/sweep.yaml \
#         docs/results/h200/$s-study/inventory.yaml h200-jobs-$s; done
# There (device tool), back to back, each call within 30 s of the last:
#   STUDY_DEADLINE_S=1480 setsid bash bench/h200_study.sh prepare llamacpp:first torch \
#       variants eager llamacpp:later decode > /tmp/study.log 2>&1 < /dev/null &
#   sleep 570; bash bench/h200_study.sh pack          # a call: the results so far
#   ...; bash bench/h200_study.sh wait pack           # the last call
# Here, after each: tar xzf events.tgz, then bench/offline_jobs.py import and
# edgefarm report (docs/results/h200/study.md shows the commands).
#
# Steps: prepare (the GGUFs synthesized in the background while llama.cpp
# builds), NAME[:LIST] (every job of ./h200-jobs-NAME in order.txt's order,
# or those of LIST.txt there: the study runs the llama.cpp jobs it needs most
# first and the rest last),
# decode[:LABEL] (bench/torch_decode.py with the arguments in $DECODE_ARGS_LABEL;
# plain decode: the OLMoE row once more), pack (the job dirs, the decode
# rows and the log into $OUT), wait (until the background run has ended). Jobs run in a
# copy under /tmp/h200-study, so the tree the device tool re-sends each call
# never overwrites a finished job; a job finished before is not run again.
# STUDY_DEADLINE_S (default 540) bounds the run: a job is started only with
# more than 20 s left and is given what is left; one cut short or never
# started is reported by the import as failed with its reason, never dropped.
set -uo pipefail
OUT=${OUT:-/tmp/out}
BUILD=/tmp/rs-build
MODELS=/tmp/models
WORK=/tmp/h200-study
STEPS=${*:-prepare}
END=$((SECONDS + ${STUDY_DEADLINE_S:-540}))
export PYTHONUNBUFFERED=1
mkdir -p "$OUT" "$MODELS" "$WORK"

. "$(dirname "$0")/h200_cuda.sh"  # cublas_dir, find_nvcc, build_llama_cpp

CUBLAS=$(cublas_dir); echo "cublas: $CUBLAS"
export LD_LIBRARY_PATH=$BUILD/bin:$CUBLAS${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}

finished() {  # finished JOBDIR: its events log ends in a result
  [ -s "$1/events.jsonl" ] && tail -1 "$1/events.jsonl" | grep -q '"kind":"result"'
}

stage() {  # stage NAME: ./h200-jobs-NAME under $WORK, keeping what ran there
  local src=h200-jobs-$1 k
  mkdir -p "$WORK/$src"
  for f in "$src"/*.txt; do [ -e "$WORK/$f" ] || cp "$f" "$WORK/$f"; done
  for k in $(cat "$src/order.txt"); do
    if [ ! -d "$WORK/$src/$k" ] || { ! finished "$WORK/$src/$k" && finished "$src/$k"; }; then
      rm -rf "${WORK:?}/$src/$k"; cp -r "$src/$k" "$WORK/$src/"
    fi
  done
}

run_jobs() {  # run_jobs DIR [LIST]: every job in DIR/LIST.txt (order.txt), as a gateway would
  local dir=$1 list=${2:-order} k left
  for k in $(cat "$dir/$list.txt"); do
    if finished "$dir/$k"; then echo "$k: done before"; continue; fi
    left=$((END - SECONDS))
    [ $left -gt 20 ] || { echo "$k: not started, no time left"; continue; }
    rm -f "$dir/$k/events.jsonl"
    echo "$k: start at ${SECONDS}s, $(date -u +%T)"
    timeout $left python3 -m agents run "$dir/$k" --quiet > "$dir/$k/stdout.log" 2>&1
    echo "$k rc=$? at ${SECONDS}s"
  done
}

synth() {  # the GGUFs the llama.cpp jobs use, where the agent looks (models_dir/synth)
  for preset in olmoe-1b-7b olmo-1b olmo-7b llama-3.2-1b; do
    for quant in Q4_0 Q8_0; do echo "$preset $quant"; done
  done | xargs -P 4 -L 1 sh -c 'python3 -c "from agents.models.synth import cached_model; print(cached_model(\"'$MODELS'\", \"$0\", \"$1\", 0))"'
}

case " $STEPS " in *" wait "*|*" pack "*) ;; *) echo $$ > "$WORK/run.pid" ;; esac
for step in $STEPS; do
  echo "== $step $(date -u +%T) (${SECONDS}s)"
  case $step in
  prepare)
    (nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv
     python3 -c "import torch, transformers; print('torch', torch.__version__, 'transformers', transformers.__version__)"
     date -u) > "$WORK/machine.txt" 2>&1
    synth > "$WORK/synth.log" 2>&1 &
    t0=$SECONDS
    build_llama_cpp $BUILD "$WORK/build.log" || exit 1
    echo "built in $((SECONDS - t0)) s"; $BUILD/bin/llama-bench --version 2>&1 | tail -1
    wait; echo "GGUFs ready at ${SECONDS}s"; ls -la $MODELS/synth
    ;;
  decode|decode:*)  # bench/torch_decode.py with $DECODE_ARGS_<LABEL> (plain: the OLMoE row)
    label=default; [ "$step" != decode ] && label=${step#decode:}
    var=DECODE_ARGS_$label
    args=${!var:---models olmoe-1b-7b --modes compiled --experts batched_mm --repeats 3}
    left=$((END - SECONDS))
    if [ $left -gt 150 ]; then
      # shellcheck disable=SC2086  # the arguments are words
      timeout $left python3 bench/torch_decode.py $args --json "$WORK/torch-decode-$label.json" \
        > "$WORK/torch-decode-$label.log" 2>&1
      echo "torch_decode $label rc=$? at ${SECONDS}s"
    else
      echo "decode $label: not run, ${left}s left"
    fi
    ;;
  wait)  # until the background run (its pid in $WORK/run.pid) has ended
    while [ -s "$WORK/run.pid" ] && kill -0 "$(cat "$WORK/run.pid")" 2> /dev/null; do
      sleep 5; done ;;
  pack)
    cp /tmp/study.log "$WORK/" 2>/dev/null
    (cd "$WORK" && tar czf "$OUT/study.tgz" --exclude='*.gguf' .)
    ls -la "$OUT" ;;
  *)  # NAME or NAME:LIST, LIST.txt a subset of order.txt in the job dir
    name=${step%%:*}; list=order; [ "$name" != "$step" ] && list=${step#*:}
    if [ -d "h200-jobs-$name" ]; then stage "$name"; run_jobs "$WORK/h200-jobs-$name" "$list"
    else echo "no step or job dir $name"; fi ;;
  esac
done
