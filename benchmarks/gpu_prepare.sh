#!/usr/bin/env bash
# Here, before a device call of benchmarks/gpu_train.sh: copy the training and scoring data and
# the wheels the device image lacks into .gpu/ (git-ignored; carry=[".gpu"]). The device has no
# network and no ../shared; its Python is 3.12 with torch, numpy, scipy, tifffile, yaml, tqdm.
set -euo pipefail
cd "$(dirname "$0")/.."
src=${1:-../shared/data}
rm -rf .gpu && mkdir -p .gpu/data/em2d .gpu/data/em3d .gpu/whl
cp -r "$src/em2d/clean" "$src/em2d/pair_brain_4us" .gpu/data/em2d/
cp "$src"/em3d/celegans_*.tif .gpu/data/em3d/
# the whole ISBI stack (7 MB): the isotropic continuation (--continue) learns from its lateral planes
cp "$src"/em3d/isbi2012_train_volume_30x512x512.tif .gpu/data/em3d/
# the versions installed here (typing-extensions too: pydantic needs a recent one); pydantic-core,
# safetensors, scikit-image (the SSIM of the scores) and pillow are compiled, so the cp312
# manylinux builds. A CPU smoke test in a virtual environment holding only the device's packages
# found the last two groups missing (2026-12-07): the models' weights load through safetensors,
# and the trainer's validation imports scikit-image. pytest (pure Python) runs gpu_check.sh's tests.
pins=$(python -m pip list --format=freeze 2>/dev/null | grep -iE '^(pydantic|pydantic[-_]core|annotated[-_]types|typing[-_]inspection|typing[-_]extensions|safetensors|scikit[-_]image|networkx|lazy[-_]loader|imageio|pillow|packaging|pytest|pluggy|iniconfig)==')
python -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
  -d .gpu/whl $pins
du -sh .gpu
