"""Shared helpers of the benchmark scripts (not part of the package)."""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np
import tifffile

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"


def need_shared() -> Path:
    """The shared data folder: ``$EMDIFFUSE_DATA`` where set (a GPU machine), else ../shared/data."""
    shared = Path(os.environ.get("EMDIFFUSE_DATA", SHARED))
    if not shared.is_dir():
        raise SystemExit(f"the benchmark data is not at {shared}; run from the project's CI layout")
    return shared


def brain_pair(rows: slice = slice(512, 768), cols: slice = slice(0, 768)) -> tuple[np.ndarray, np.ndarray]:
    """The held-out bottom third of pair_brain_4us (the bundled model trains on the top two thirds)."""
    d = need_shared() / "em2d" / "pair_brain_4us"
    noisy = tifffile.imread(d / "noisy_4us.tif")[rows, cols]
    clean = tifffile.imread(d / "clean_36us.tif")[rows, cols]
    return noisy, clean


def inverted_liver(dose: float) -> tuple[np.ndarray, np.ndarray]:
    """liver_0 with its contrast inverted before white Poisson-Gaussian noise is simulated, as
    raw backscatter SEM records it: data the bundled denoiser (dark membranes) does not fit."""
    from napari_emdiffuse.engine.training.data.noise import simulate_noise

    clean = 255 - tifffile.imread(need_shared() / "em2d" / "clean" / "openorganelle_mouse_liver_0.tif")
    noisy = simulate_noise(clean, dose, rng=np.random.default_rng(int(dose) + 1), lo=0, hi=255).astype(np.uint8)
    return noisy, clean


def table(rows: list[dict], columns: list[str]) -> str:
    """A plain-text table, one row per dict."""
    cells = [[str(r.get(c, "")) for c in columns] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(columns)]
    line = "  ".join(c.ljust(w) for c, w in zip(columns, widths))
    out = [line, "  ".join("-" * w for w in widths)]
    out += ["  ".join(v.ljust(w) for v, w in zip(row, widths)) for row in cells]
    return "\n".join(out)


class Timer:
    def __enter__(self):
        self.t0 = time.perf_counter()
        return self

    def __exit__(self, *exc):
        self.seconds = time.perf_counter() - self.t0


def best_gaussian(noisy: np.ndarray, clean: np.ndarray, data_range: float = 255.0) -> tuple[float, float, np.ndarray]:
    """Gaussian filter at the sigma that maximises PSNR against the reference (an oracle baseline)."""
    from scipy.ndimage import gaussian_filter

    from napari_emdiffuse.engine.core.metrics import psnr

    best = (-np.inf, 0.0, noisy)
    for sigma in np.arange(0.3, 3.01, 0.1):
        out = gaussian_filter(noisy.astype(np.float64), sigma)
        p = psnr(out, clean, data_range=data_range)
        if p > best[0]:
            best = (p, float(sigma), out)
    return best


def best_bm3d(noisy: np.ndarray, clean: np.ndarray, data_range: float = 255.0) -> tuple[float, float, np.ndarray]:
    """BM3D at the noise sigma that maximises PSNR against the reference (an oracle baseline)."""
    import bm3d

    from napari_emdiffuse.engine.core.metrics import psnr

    x = noisy.astype(np.float64) / data_range
    best = (-np.inf, 0.0, noisy)
    est = np.std(x - __import__("scipy.ndimage", fromlist=["gaussian_filter"]).gaussian_filter(x, 1.5))
    for f in (0.5, 0.7, 0.85, 1.0, 1.2, 1.5, 2.0):
        sigma = est * f
        out = bm3d.bm3d(x, sigma_psd=sigma) * data_range
        p = psnr(out, clean, data_range=data_range)
        if p > best[0]:
            best = (p, float(sigma * data_range), out)
    return best


#: Spatially correlated noise of the simulated scans: an [a, 1, a] kernel along the scan,
#: neighbour correlation 2a / (1 + 2a^2) = 0.51 (a short-dwell SEM's, measured on a real one).
CORRELATION = 0.3


def stack_case(name: str, dose: float) -> tuple[np.ndarray, np.ndarray]:
    """A volume with correlated noise simulated slice by slice: ``celegans`` (near-isotropic,
    neighbouring slices alike) or ``isbi`` (ssTEM sections 50 nm apart, 256² of slices 2-29)."""
    if name == "celegans":
        clean = tifffile.imread(need_shared() / "em3d" / "celegans_neariso_21x256x128.tif")
    else:
        clean = tifffile.imread(need_shared() / "em3d" / "isbi2012_train_volume_30x512x512.tif")[2:, 128:384, 128:384]
    from napari_emdiffuse.engine.training.data.noise import simulate_noise

    rng = np.random.default_rng(5)
    noisy = np.stack([simulate_noise(s, dose, rng=rng, lo=0, hi=255, correlation=CORRELATION) for s in clean])
    return noisy.astype(np.uint8), clean
