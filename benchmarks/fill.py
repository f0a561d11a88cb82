"""Sections with a fill border: does the restoration treat the border as no data? One table.

Aligned serial sections and stitched montages come with a constant border (0 outside the
imaged area). Each case rotates a clean image by a few degrees with zero fill, as an
alignment would, adds simulated Poisson-Gaussian noise to the imaged area, and restores it
with the bundled model twice: as shipped (the fill found, left out of the normalisation and
inpainted before the network; ``restore(...).normalisation["fill"]``) and with fill handling
switched off (the previous behaviour). PSNR (dB) over the imaged pixels within 40 px of the
border and over all imaged pixels; the Gaussian filter at its oracle sigma for reference.

A second table times the fill-aware restoration with the tiles that lie wholly in fill left
out (as shipped) and with every tile run, on each case and on the image cut to a window (the
margin of a connectomics volume), and says whether the two means are the same.

    python benchmarks/fill.py [--angle 8] [--doses 50,200] [--task denoise,sr]
"""

from __future__ import annotations

import argparse
import time
from unittest import mock

import numpy as np
import tifffile
import torch
import torch.nn.functional as F
from scipy import ndimage as ndi

from _common import best_gaussian, need_shared, table
from napari_emdiffuse.api import restore
from napari_emdiffuse.engine.core.metrics import psnr
from napari_emdiffuse.engine.inference import normalise
from napari_emdiffuse.engine.inference import restore as restore_module
from napari_emdiffuse.engine.training.data.noise import simulate_noise

NEAR = 40  # px from the fill border


def rotated(clean: np.ndarray, angle: float) -> tuple[np.ndarray, np.ndarray]:
    """The image rotated about its centre with zero fill (uint8) and the imaged-area mask."""
    big = np.pad(clean.astype(np.float64), 64, mode="reflect")
    rot = ndi.rotate(big, angle, reshape=False, order=1, cval=-1.0)
    valid = ndi.binary_erosion(rot >= 0, iterations=1)  # drop the interpolated rim
    return np.where(valid, np.clip(np.rint(rot), 0, 255), 0).astype(np.uint8), valid


def row(case: str, method: str, out: np.ndarray, truth: np.ndarray, near: np.ndarray, valid: np.ndarray) -> dict:
    o, t = np.asarray(out, dtype=np.float64), truth.astype(np.float64)
    return {"case": case, "method": method, "near": f"{psnr(o[near], t[near], data_range=255):.2f}",
            "all": f"{psnr(o[valid], t[valid], data_range=255):.2f}"}


def plain(image: np.ndarray, task: str) -> np.ndarray:
    with mock.patch.object(normalise, "find_fill", lambda values: None):
        return restore(image, task).mean


def skip_timing(case: str, image: np.ndarray, task: str) -> dict:
    """Seconds of the fill-aware restoration with fill tiles skipped and with every tile run."""
    start = time.perf_counter()
    skipped = restore(image, task).mean
    fast = time.perf_counter() - start
    with mock.patch.object(restore_module, "tiles_in_nodata", lambda *a, **k: None):
        start = time.perf_counter()
        every = restore(image, task).mean
        slow = time.perf_counter() - start
    fill = float((image == 0).mean())
    return {"case": case, "fill %": f"{100 * fill:.0f}", "skipped s": f"{fast:.1f}", "every tile s": f"{slow:.1f}",
            "same mean": str(np.array_equal(skipped, every))}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--angle", type=float, default=8.0)
    ap.add_argument("--doses", default="50,200")
    ap.add_argument("--task", default="denoise,sr")
    args = ap.parse_args()
    data = need_shared() / "em2d" / "clean"
    rows, timings = [], []
    for name in ("microns_1", "openorganelle_mouse_liver_0"):
        truth, valid = rotated(tifffile.imread(data / f"{name}.tif"), args.angle)
        near = valid & (ndi.distance_transform_edt(valid) < NEAR)
        if "denoise" in args.task:
            for dose in (float(d) for d in args.doses.split(",")):
                noisy = simulate_noise(truth, dose, rng=np.random.default_rng(int(dose)), lo=0, hi=255)
                noisy = np.where(valid, noisy, 0).astype(np.uint8)
                case = f"{name}, {args.angle:g} deg, dose {dose:g}"
                rows.append(row(case, "noisy", noisy, truth, near, valid))
                g = best_gaussian(noisy, truth)[2]
                rows.append(row(case, "Gaussian (oracle sigma)", g, truth, near, valid))
                rows.append(row(case, "demo-denoise, fill ignored", plain(noisy, "denoise"), truth, near, valid))
                rows.append(row(case, "demo-denoise (fill-aware)", restore(noisy, "denoise").mean, truth, near, valid))
                timings.append(skip_timing(case, noisy, "denoise"))
                window = np.zeros_like(noisy)
                h, w = noisy.shape
                window[h // 4 : h // 2, w // 4 : w // 2] = noisy[h // 4 : h // 2, w // 4 : w // 2]
                timings.append(skip_timing(f"{case}, a 1/16 window", window, "denoise"))
        if "sr" in args.task:
            low = truth.reshape(truth.shape[0] // 2, 2, truth.shape[1] // 2, 2).mean(axis=(1, 3))
            low_valid = valid.reshape(low.shape[0], 2, low.shape[1], 2).all(axis=(1, 3))
            low = np.where(low_valid, np.rint(low), 0).astype(np.uint8)
            big_valid = np.kron(low_valid, np.ones((2, 2), bool))
            big_near = big_valid & (ndi.distance_transform_edt(big_valid) < NEAR)
            case = f"{name}, {args.angle:g} deg, x2 area"
            bic = F.interpolate(torch.from_numpy(low.astype(np.float32))[None, None], scale_factor=2, mode="bicubic",
                                align_corners=False)[0, 0].numpy()
            rows.append(row(case, "bicubic", bic, truth, big_near, big_valid))
            rows.append(row(case, "demo-sr2, fill ignored", plain(low, "super-resolve"), truth, big_near, big_valid))
            rows.append(row(case, "demo-sr2 (fill-aware)", restore(low, "super-resolve").mean, truth, big_near, big_valid))
    print(f"PSNR dB over imaged pixels within {NEAR} px of the fill border (near) and over all imaged pixels (all)\n")
    print(table(rows, ["case", "method", "near", "all"]))
    if timings:
        print("\nSeconds of the fill-aware restoration (fast): tiles wholly in fill skipped, and every tile run\n")
        print(table(timings, ["case", "fill %", "skipped s", "every tile s", "same mean"]))


if __name__ == "__main__":
    main()
