#!/usr/bin/env bash
# One-call GPU check for the device machine: install if needed, run the `gpu` tests, then the
# speed table. Run from the repository root:  bash benchmarks/gpu_check.sh
# Writes everything it prints to $OUT/gpu_check.txt as well (the device tool returns $OUT).
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp}
log="$OUT/gpu_check.txt"
{
  date -u; nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
  python -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.is_available())"
  if ! python -c "import napari_emdiffuse" 2>/dev/null; then
    # carried wheels first (no network on the device machine), then the index
    pip install -q --no-deps wheels/*.whl 2>/dev/null || pip install -q -e . --no-deps
  fi
  python -m pytest -q -m gpu -p no:cacheprovider tests || true
  python benchmarks/speed.py --device cuda --compile --published-size --crop 256 || true
} 2>&1 | tee "$log"
