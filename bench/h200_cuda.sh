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
