#!/bin/bash
# Issue 9 item 5 on the lent H200 machine: build CUDA llama-bench from the
# llama.cpp vendored in llama-cpp-python 0.3.36 (b11312, trimmed, carried in
# .llamacpp/src; /work/shared/recipes/llama-cpp-cuda-on-h200.md), synthesize
# the two models, run the NVML tests, keep one real --progress stderr, and run
# bench/energy_fidelity.py. Every step writes under $OUT. A step whose output
# exists already (a warm machine, second call) is skipped.
#
#   bash bench/energy_fidelity_h200.sh [build|synth|tests|progress|bench|bench512 ...]
set -uo pipefail
OUT=${OUT:-/tmp/out}
SRC=.llamacpp/src
BUILD=/tmp/lb-build
MODELS=/tmp/models
BIN=$BUILD/bin/llama-bench
STEPS=${*:-build synth tests progress bench}
export PYTHONUNBUFFERED=1

. "$(dirname "$0")/h200_cuda.sh"  # cublas_dir, find_nvcc

synth() {
  mkdir -p $MODELS
  for m in olmoe-1b-7b llama-3.2-1b; do
    [ -s $MODELS/$m-q4_0.gguf ] || python3 -m agents synth $m --quant Q4_0 \
      --out $MODELS/$m-q4_0.gguf > $OUT/synth-$m.log 2>&1 &
  done
}

CUBLAS=$(cublas_dir); echo "cublas: $CUBLAS"
export LD_LIBRARY_PATH=$CUBLAS${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}

for step in $STEPS; do
  echo "== $step $(date +%T)"
  case $step in
  build)
    synth  # in the background, beside the build
    nvidia-smi --query-gpu=name,driver_version,memory.used,memory.total --format=csv
    NVCC=$(find_nvcc)
    echo "nvcc: $NVCC"; "$NVCC" --version | tail -2
    EXTRA=()
    if [ -e /tmp/cublas/libcublas.so ]; then
      EXTRA=(-DCUDA_cublas_LIBRARY=/tmp/cublas/libcublas.so
             -DCUDA_cublasLt_LIBRARY=/tmp/cublas/libcublasLt.so)
    fi
    if [ ! -x $BIN ]; then
      t0=$SECONDS
      cmake -S $SRC -B $BUILD -G Ninja -DCMAKE_BUILD_TYPE=Release -DCMAKE_CUDA_COMPILER="$NVCC" \
        -DGGML_CUDA=ON -DCMAKE_CUDA_ARCHITECTURES=90 -DBUILD_SHARED_LIBS=OFF \
        -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_SERVER=OFF \
        -DLLAMA_BUILD_APP=OFF -DLLAMA_OPENSSL=OFF -DLLAMA_BUILD_NUMBER=11312 \
        -DLLAMA_BUILD_COMMIT=0c1e570 "${EXTRA[@]}" > $OUT/build.log 2>&1 || { tail -30 $OUT/build.log; exit 1; }
      cmake --build $BUILD --target llama-bench -j 16 >> $OUT/build.log 2>&1 || { tail -40 $OUT/build.log; exit 1; }
      echo "built in $((SECONDS - t0)) s"
    fi
    wait  # the synth jobs
    ;;
  synth)
    synth; wait; ls -la $MODELS; tail -2 $OUT/synth-*.log ;;
  tests)
    python3 -m pytest -q -p no:cacheprovider tests/test_sampler.py tests/test_sampler_job.py \
      -k nvml 2>&1 | tail -5 ;;
  progress)  # llama-bench's own --progress stderr, stamped here, for the record
    python3 - "$BIN" $MODELS/llama-3.2-1b-q4_0.gguf > $OUT/progress-stderr.txt <<'EOF'
import subprocess, sys, time
argv = [sys.argv[1], "-m", sys.argv[2], "-p", "512", "-n", "128", "-r", "3", "-ngl", "99",
        "-o", "json", "--progress"]
print("# argv:", " ".join(argv[1:]))
t0 = time.monotonic()
proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
for raw in iter(proc.stderr.readline, b""):
    print("%.6f %s" % (time.monotonic() - t0, raw.decode(errors="replace").rstrip()))
out = proc.stdout.read().decode()
proc.wait()
print("# exit %d; stdout:" % proc.returncode)
print(out)
EOF
    head -40 $OUT/progress-stderr.txt ;;
  bench)
    python3 bench/energy_fidelity.py --llama-bench $BIN \
      --model olmoe-1b-7b=$MODELS/olmoe-1b-7b-q4_0.gguf \
      --model llama-3.2-1b=$MODELS/llama-3.2-1b-q4_0.gguf \
      --prompt 512 --gen 128 --reps 10 --ref-reps 5,45 --pairs 2 --json $OUT/fidelity-g128.json ;;
  bench512)
    python3 bench/energy_fidelity.py --llama-bench $BIN \
      --model olmoe-1b-7b=$MODELS/olmoe-1b-7b-q4_0.gguf \
      --model llama-3.2-1b=$MODELS/llama-3.2-1b-q4_0.gguf \
      --prompt 512 --gen 512 --reps 5 --ref-reps 3,13 --pairs 2 --json $OUT/fidelity-g512.json ;;
  esac
done
echo "== done $(date +%T)"
