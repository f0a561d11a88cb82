"""The GPU scripts (benchmarks/gpu_train.sh, gpu_check.sh) run on a lent machine with no network
and few packages; benchmarks/gpu_prepare.sh carries the rest as wheels. A module that the
training and scoring path needs and neither has would cost the session its few GPU minutes
(safetensors and scikit-image did, until a CPU smoke test found them): this test follows that
path in a fresh interpreter where every other third-party module cannot be imported, as there."""

from __future__ import annotations

import importlib.metadata as md
import json
import re
import subprocess
import sys
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from tests.conftest import ROOT

#: What gpu_prepare.sh says the device's Python holds.
DEVICE_HAS = {"torch", "numpy", "scipy", "tifffile", "pyyaml", "tqdm"}

# The path gpu_train.py takes, at toy size: a recipe trained (validation included), a model
# restored, the quality module's scoring imported and run on arrays.
_PATH = r"""
import importlib.abc, importlib.metadata, importlib.util, json, os, re, sys, tempfile

ALLOWED = set(json.loads(os.environ["ALLOWED"]))
OWNERS = importlib.metadata.packages_distributions()
OURS = {"napari_emdiffuse", "tests", "quality", "_common"}


def absent(name):
    # as on the device: a third-party module that neither it nor the carried wheels hold
    top = name.split(".")[0]
    if top in sys.stdlib_module_names or top in OURS:
        return False
    dists = {re.sub(r"[-_.]+", "-", d).lower() for d in OWNERS.get(top, [])}  # canonical names
    return bool(dists) and not dists & ALLOWED


class Absent(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if absent(name):
            raise ModuleNotFoundError(f"No module named {name.split('.')[0]!r} (not on the device)", name=name)
        return None


_find_spec = importlib.util.find_spec
importlib.util.find_spec = lambda name, package=None: None if absent(name) else _find_spec(name, package)
sys.meta_path.insert(0, Absent())
from pathlib import Path
import numpy as np
sys.path.insert(0, "benchmarks")
sys.path.insert(0, ".")
import quality, _common  # noqa: F401  (what gpu_train.py's scoring imports)
from napari_emdiffuse.api import restore, train
from napari_emdiffuse.engine.core.metrics import extreme_bias, psnr, ssim
from napari_emdiffuse.engine.training.config import TrainConfig
from tests.conftest import TINY

rng = np.random.default_rng(0)
clean = [(rng.random((64, 64)) * 200).astype(np.uint8)]
out = train(TrainConfig(task="denoise", kind="regression", inputs=clean, out=Path(tempfile.mkdtemp()) / "m",
                        iterations=2, val_every=2, network=TINY, patch=32, batch=2, val_crops=2, val_steps=2,
                        device="cpu"))
r = restore(clean[0], "denoise", str(out), device="cpu")
psnr(r.mean, clean[0], data_range=255), ssim(r.mean, clean[0], data_range=255), extreme_bias(r.mean, clean[0])
print("ok")
"""


def _carried() -> set[str]:
    """The distributions gpu_prepare.sh downloads (its pip-freeze pattern)."""
    text = (ROOT / "benchmarks" / "gpu_prepare.sh").read_text()
    found = re.search(r"grep -iE '\^\(([^)]*)\)=='", text)
    assert found, "gpu_prepare.sh no longer lists its wheels as grep -iE '^(a|b|...)=='"
    return {canonicalize_name(n.replace("[-_]", "-")) for n in found.group(1).split("|")}


def _with_requirements(names: set[str]) -> set[str]:
    """``names`` and everything they require (without extras), as installed here."""
    seen, todo = set(), list(names)
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        try:
            requires = md.requires(name) or []
        except md.PackageNotFoundError:
            continue
        for line in requires:
            req = Requirement(line)
            if req.marker is None or req.marker.evaluate({"extra": ""}):
                todo.append(canonicalize_name(req.name))
    return seen


def _run_path(allowed: set[str], home: Path) -> subprocess.CompletedProcess:
    # EMDIFFUSE_HOME as the scripts set it: the registry's folder, else found through platformdirs
    env = {"PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "1", "HOME": str(home), "EMDIFFUSE_HOME": str(home / "emd"),
           "ALLOWED": json.dumps(sorted(allowed))}
    return subprocess.run([sys.executable, "-c", _PATH], cwd=ROOT, capture_output=True, text=True, timeout=300, env=env)


def test_the_gpu_training_path_needs_only_what_the_device_has_or_is_carried(tmp_path):
    done = _run_path(_with_requirements({canonicalize_name(n) for n in DEVICE_HAS} | _carried()), tmp_path)
    assert done.returncode == 0 and done.stdout.strip().endswith("ok"), (
        "the GPU path needs a module neither the device has nor gpu_prepare.sh carries:\n" + done.stderr[-2000:])


def test_the_check_fails_for_a_module_that_is_not_carried(tmp_path):
    """The control: with safetensors left out of the carried wheels, the path fails."""
    allowed = _with_requirements({canonicalize_name(n) for n in DEVICE_HAS} | _carried()) - {"safetensors"}
    done = _run_path(allowed, tmp_path)
    assert done.returncode != 0 and "'safetensors' (not on the device)" in done.stderr
