#!/usr/bin/env bash
# On the device machine (after benchmarks/gpu_prepare.sh here; carry=[".gpu"], timeout_s=600):
# train the bundled recipes for their share of the minutes and score them (benchmarks/gpu_train.py).
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/gpu_out}
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .gpu/whl/*.whl \
  || exit 1
# EMDIFFUSE_HOME: the model registry's folder, else found through platformdirs, which is not there
export PYTHONPATH=/tmp/site:$PWD/src PYTHONUNBUFFERED=1 EMDIFFUSE_HOME=/tmp/emdiffuse_home
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
python3 benchmarks/gpu_train.py --data .gpu/data --out "$OUT" "$@" 2>&1 | tee "$OUT/gpu_train.log"
