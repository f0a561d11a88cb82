"""x2 super-resolution on held-out clean EM images, side by side with interpolation.

The low-resolution inputs are made by 2x2 area averaging of clean images the bundled model
never trained on (microns_1, openorganelle_mouse_liver_1); the output is scored against the
original full-resolution image (PSNR, SSIM, data range 255).

    python benchmarks/sr.py [--model demo-sr2] [--preset fast] [--steps N]
"""

from __future__ import annotations

import argparse

import numpy as np
import tifffile
import torch
import torch.nn.functional as F

from _common import Timer, need_shared, table
from napari_emdiffuse.engine.training.data.pairs import downsample_area
from napari_emdiffuse.engine.core.metrics import psnr, ssim
from napari_emdiffuse.engine.models.registry import load_model
from napari_emdiffuse.api import restore

HELD_OUT = ("microns_1.tif", "openorganelle_mouse_liver_1.tif")


def interp(lr: np.ndarray, mode: str) -> np.ndarray:
    x = torch.from_numpy(lr.astype(np.float32))[None, None]
    kw = {} if mode == "nearest" else {"align_corners": False}
    up = F.interpolate(x, scale_factor=2, mode=mode, **kw)[0, 0].numpy()
    return np.clip(np.rint(up), 0, 255).astype(np.uint8)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="demo-sr2")
    ap.add_argument("--preset", default="fast")
    ap.add_argument("--steps", type=int, default=None)
    ap.add_argument("--samples", type=int, default=None)
    ap.add_argument("--device", default="auto")
    args = ap.parse_args()
    model = load_model(args.model, task="super-resolve", device=args.device)
    rows = []
    for name in HELD_OUT:
        hr = tifffile.imread(need_shared() / "em2d" / "clean" / name)
        lr = np.clip(np.rint(downsample_area(hr.astype(np.float64), 2)), 0, 255).astype(np.uint8)
        for mode in ("nearest", "bilinear", "bicubic"):
            out = interp(lr, mode)
            rows.append({"image": name, "method": mode, "PSNR dB": f"{psnr(out, hr, data_range=255):.2f}",
                         "SSIM": f"{ssim(out, hr, data_range=255):.4f}"})
        with Timer() as t:
            r = restore(lr, "super-resolve", model, preset=args.preset, steps=args.steps, samples=args.samples,
                        device=args.device)
        rows.append({"image": name, "method": f"{model.card.name} ({args.preset}, {r.info['steps']} steps)",
                     "PSNR dB": f"{psnr(r.mean, hr, data_range=255):.2f}", "SSIM": f"{ssim(r.mean, hr, data_range=255):.4f}",
                     "time s": f"{t.seconds:.1f}"})
    print("x2 super-resolution of held-out clean images (2x2 area-averaged inputs)\n")
    print(table(rows, ["image", "method", "PSNR dB", "SSIM", "time s"]))


if __name__ == "__main__":
    main()
