#!/usr/bin/env bash
# One-call GPU check on the device machine (after benchmarks/gpu_prepare.sh here; carry=[".gpu"],
# timeout_s=600): the `gpu` tests, then the speed table. It installs nothing from an index (the
# device has no network): the wheels gpu_prepare.sh put in .gpu/whl go to /tmp/site, and the
# benchmark data comes from .gpu/data. Writes everything it prints to $OUT/gpu_check.txt as well.
# On the CPU, as a smoke test:  DEVICE=cpu SPEED_ARGS="--crop 64" bash benchmarks/gpu_check.sh
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp}
DEVICE=${DEVICE:-cuda}
SPEED_ARGS=${SPEED_ARGS:---compile --published-size --crop 256}
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .gpu/whl/*.whl \
  || exit 1
export PYTHONPATH=/tmp/site:$PWD/src:$PWD PYTHONUNBUFFERED=1 EMDIFFUSE_HOME=/tmp/emdiffuse_home EMDIFFUSE_DATA=$PWD/.gpu/data
log="$OUT/gpu_check.txt"
{
  date -u; nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
  python3 -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.is_available())"
  # only the gpu tests' module: collecting the others would import napari, which the device lacks
  python3 -m pytest -q -m gpu -p no:cacheprovider tests/engine/test_gpu.py || true
  # shellcheck disable=SC2086
  python3 benchmarks/speed.py --device "$DEVICE" $SPEED_ARGS || true
} 2>&1 | tee "$log"
