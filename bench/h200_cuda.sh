# Sourced by the bench/*_h200.sh scripts: where the lent H200 machine keeps
# cuBLAS and nvcc (/work/shared/recipes/llama-cpp-cuda-on-h200.md).

cublas_dir() {  # the folder holding libcublas.so(.N): system CUDA, else the Python wheels
  for d in /usr/local/cuda/lib64 /usr/local/cuda/targets/x86_64-linux/lib; do
    [ -e "$d/libcublas.so" ] && { echo "$d"; return; }
  done
  lib=$(python3 - <<'EOF'
import glob, site
for base in site.getsitepackages():
    for pat in ("nvidia/cu13/lib/libcublas.so*", "nvidia/cublas/lib/libcublas.so*"):
        hits = sorted(glob.glob(f"{base}/{pat}"))
        if hits:
            print(hits[0]); raise SystemExit
EOF
)
  [ -n "$lib" ] || return 1
  mkdir -p /tmp/cublas
  ln -sf "$lib" /tmp/cublas/libcublas.so
  ln -sf "$(ls "$(dirname "$lib")"/libcublasLt.so* | head -1)" /tmp/cublas/libcublasLt.so
  echo "$(dirname "$lib")"
}

find_nvcc() {  # nvcc on PATH, under /usr/local/cuda*, else in the Python wheels
  local found
  found=$(command -v nvcc || ls /usr/local/cuda*/bin/nvcc 2>/dev/null | head -1)
  [ -n "$found" ] || found=$(python3 -c "import glob,site;print((sorted(g for b in site.getsitepackages() for g in glob.glob(b+'/nvidia/*/bin/nvcc'))+[''])[0])")
  echo "$found"
}

build_llama_cpp() {  # build_llama_cpp BUILD LOG: llama-bench and libllama.so (CUDA, sm_90, shared)
  local build=$1 log=$2 nvcc extra=()
  [ -e "$build/bin/libllama.so" ] && [ -x "$build/bin/llama-bench" ] && return 0
  nvcc=$(find_nvcc); echo "nvcc: $nvcc"
  if [ -e /tmp/cublas/libcublas.so ]; then
    extra=(-DCUDA_cublas_LIBRARY=/tmp/cublas/libcublas.so
           -DCUDA_cublasLt_LIBRARY=/tmp/cublas/libcublasLt.so)
  fi
  mkdir -p /tmp/rs-src && tar xzf .carry/llama.cpp.tgz -C /tmp/rs-src
  cmake -S /tmp/rs-src/llama.cpp -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=Release \
    -DCMAKE_CUDA_COMPILER="$nvcc" -DGGML_CUDA=ON -DCMAKE_CUDA_ARCHITECTURES=90 \
    -DBUILD_SHARED_LIBS=ON -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF \
    -DLLAMA_BUILD_SERVER=OFF -DLLAMA_BUILD_APP=OFF -DLLAMA_OPENSSL=OFF \
    -DLLAMA_BUILD_NUMBER=11312 -DLLAMA_BUILD_COMMIT=0c1e570 \
    "${extra[@]}" > "$log" 2>&1 || { tail -30 "$log"; return 1; }
  cmake --build "$build" --target llama-bench llama -j 16 >> "$log" 2>&1 \
    || { tail -40 "$log"; return 1; }
}
