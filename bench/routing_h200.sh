#!/bin/bash
# Issue 11 item 3 on the lent H200 machine: the routing share of OLMoE-1B-7B
# (synthetic, Q4_0) measured with a CUDA build of the same llama.cpp the CPU
# backend here links in (the one vendored in the xllamacpp 2026.10.11549 sdist,
# trimmed as in /work/shared/recipes/llama-cpp-cuda-on-h200.md and carried in
# the git-ignored .carry/llama.cpp.tgz), built with shared libraries so the
# profiler (agents/routing_share.py) can load libllama.so through ctypes.
# Every step writes under $OUT; a step whose output exists is skipped (a warm
# machine, second call).
#
#   bash bench/routing_h200.sh [build|synth|profile|job|probe|graphs|micro ...]
set -uo pipefail
OUT=${OUT:-/tmp/out}
BUILD=/tmp/rs-build
MODELS=/tmp/models
MOE=$MODELS/olmoe-1b-7b-q4_0.gguf
STEPS=${*:-build synth profile job}
export PYTHONUNBUFFERED=1

. "$(dirname "$0")/h200_cuda.sh"  # cublas_dir, find_nvcc, build_llama_cpp

synth() {
  mkdir -p $MODELS
  [ -s $MOE ] || python3 -m agents synth olmoe-1b-7b --quant Q4_0 --out $MOE \
    > $OUT/synth.log 2>&1 &
}

CUBLAS=$(cublas_dir); echo "cublas: $CUBLAS"
export LD_LIBRARY_PATH=$BUILD/bin:$CUBLAS${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}

for step in $STEPS; do
  echo "== $step $(date +%T)"
  case $step in
  build)
    synth  # in the background, beside the build
    nvidia-smi --query-gpu=name,driver_version,memory.used,memory.total --format=csv
    t0=$SECONDS
    build_llama_cpp $BUILD $OUT/build.log || exit 1
    echo "built in $((SECONDS - t0)) s"; ls $BUILD/bin
    ;;
  synth)
    synth; wait; ls -la $MODELS; tail -2 $OUT/synth.log ;;
  profile)
    wait
    # The GPU: every layer offloaded, as the study's CUDA runs.
    python3 -m agents routing $MOE --prompt 512 --gen 128 --threads 16 --gpu-layers 99 \
      --library $BUILD/bin/libllama.so > $OUT/routing-cuda.json 2> $OUT/routing-cuda.err
    echo "cuda rc=$?"; cut -c1-400 $OUT/routing-cuda.json
    # The same build on the machine's 16 CPU cores, for contrast.
    python3 -m agents routing $MOE --prompt 512 --gen 128 --threads 16 --gpu-layers 0 \
      --library $BUILD/bin/libllama.so > $OUT/routing-cpu16.json 2> $OUT/routing-cpu16.err
    echo "cpu rc=$?"; cut -c1-400 $OUT/routing-cpu16.json
    ;;
  job)
    # The whole agent path: a llama-bench job whose profiling pass finds
    # libllama.so beside the binary (agents/routing_share.py library_for).
    rm -rf /tmp/rs-job && mkdir -p /tmp/rs-job
    python3 - "$MOE" "$BUILD/bin/llama-bench" <<'EOF'
import json, sys
moe, bench = sys.argv[1:]
model = {"id": "olmoe-1b-7b", "arch": "moe", "source": {"path": moe}}
spec = {"schema": 1, "job_key": "h200-routing", "attempt": 1, "backend": "llama-bench",
        "model": model, "models": [model],
        "params": {"prompt_tokens": 512, "gen_tokens": 128, "threads": 16, "gpu_layers": 99,
                   "repetitions": 5, "warmup": 1, "routing_profile": True},
        "device": {"llama_bench": bench}, "telemetry": False, "timeout_s": 600}
open("/tmp/rs-job/job.json", "w").write(json.dumps(spec))
EOF
    python3 -m agents run /tmp/rs-job --quiet; echo "job rc=$?"
    cp /tmp/rs-job/events.jsonl $OUT/job-events.jsonl
    python3 - <<'EOF'
import json
evs = [json.loads(l) for l in open("/tmp/rs-job/events.jsonl")]
reps = [e for e in evs if e["kind"] == "repetition" and not e.get("warmup")]
print("decode tok/s:", [round(e.get("decode_tps", 0), 1) for e in reps])
for e in evs:
    if e["kind"] == "routing":
        print("routing:", {k: e.get(k) for k in ("model", "share", "library", "unmeasured",
                                                  "profiled_decode_tps", "callback_overhead_s")})
print("result:", evs[-1]["status"])
EOF
    ;;
  probe)
    # What the agent reports about this machine (gpus, bandwidth), and the raw
    # nvidia-smi output its parser reads (kept as a test fixture).
    python3 -m agents probe --bandwidth > $OUT/probe.json; echo "probe rc=$?"
    nvidia-smi --query-gpu=name,memory.total --format=csv,noheader,nounits \
      > $OUT/nvidia-smi-gpus.csv; cat $OUT/nvidia-smi-gpus.csv
    python3 -c "import json; d=json.load(open('$OUT/probe.json')); print(d.get('gpus'), d['memory_bandwidth']['traffic_bytes_per_s'] / 1e9)"
    ;;
  graphs)
    # Decode with and without CUDA graphs: how much of a token launch costs
    # take once graphs stop replaying (as they do under the profiler's cuts).
    wait
    for g in 0 1; do
      GGML_CUDA_DISABLE_GRAPHS=$g $BUILD/bin/llama-bench -m $MOE -p 0 -n 128 -ngl 99 -r 5 \
        -o json > $OUT/decode-graphs-disabled-$g.json 2>/dev/null
      python3 -c "import json; r=json.load(open('$OUT/decode-graphs-disabled-$g.json'))[0]; print('GGML_CUDA_DISABLE_GRAPHS=$g', round(r['avg_ts'], 1), 'tok/s')"
    done
    ;;
  micro)
    python3 bench/router_microbench.py --torch cuda | tee $OUT/router-microbench-cuda.txt ;;
  esac
done
