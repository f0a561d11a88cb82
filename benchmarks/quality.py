"""Quality vs steps of 2D denoising on real low-dose / high-dose SEM (pair_brain_4us).

Scores each preset and step count against the 36 us image on the held-out bottom third of
the pair (the bundled model never trained there), side by side with the noisy image and
Gaussian and BM3D filters, each at its best strength (an oracle choice in their favour).

With ``--doses``, also scores simulated Poisson-Gaussian noise at other doses on
openorganelle_mouse_liver_0, a FIB-SEM image the bundled model never trained on.

    python benchmarks/quality.py [--model demo-denoise] [--crop 256] [--reference] [--doses 30,100,300]
"""

from __future__ import annotations

import argparse

import numpy as np

from _common import Timer, best_bm3d, best_gaussian, brain_pair, table
from napari_emdiffuse.engine.core.metrics import frc_resolution, psnr, ssim
from napari_emdiffuse.engine.models.registry import load_model
from napari_emdiffuse.engine.restore import restore


def score(name: str, out: np.ndarray, clean: np.ndarray, seconds: float | None = None, **extra) -> dict:
    return {
        "method": name,
        "PSNR dB": f"{psnr(out, clean, data_range=255):.2f}",
        "SSIM": f"{ssim(out, clean, data_range=255):.4f}",
        "FRC res px": f"{frc_resolution(out.astype(np.float64), clean.astype(np.float64)):.2f}",
        "time s": "" if seconds is None else f"{seconds:.1f}",
        **extra,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="demo-denoise")
    ap.add_argument("--crop", type=int, default=256, help="square crop of the held-out region (px)")
    ap.add_argument("--reference", action="store_true", help="also run the 1000-step published sampler (slow on CPU)")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--steps", default="1,2,5,10,20", help="comma-separated step counts for dpm++ and ddim")
    ap.add_argument("--doses", default="", help="comma-separated simulated doses (counts at white) to score too")
    args = ap.parse_args()
    if args.doses:
        print(dose_table(args.model, [float(d) for d in args.doses.split(",")], args.device))
        print()

    noisy, clean = brain_pair()
    noisy, clean = noisy[: args.crop, : args.crop], clean[: args.crop, : args.crop]
    rows = [score("noisy input", noisy, clean)]
    with Timer() as t:
        p, s, out = best_gaussian(noisy, clean)
    rows.append(score(f"gaussian (sigma {s:.1f})", out, clean, t.seconds))
    with Timer() as t:
        p, s, out = best_bm3d(noisy, clean)
    rows.append(score(f"BM3D (sigma {s:.1f})", out, clean, t.seconds))

    model = load_model(args.model, task="denoise", device=args.device)
    runs = [("fast", {}), ("balanced", {})]
    for n in [int(v) for v in args.steps.split(",")]:
        runs += [(f"dpm++ {n} steps", {"sampler": "dpm++", "steps": n}), (f"ddim {n} steps", {"sampler": "ddim", "steps": n})]
    if args.reference:
        runs.append(("reference", {}))
    for name, kw in runs:
        preset = name if name in ("fast", "balanced", "reference") else "fast"
        with Timer() as t:
            r = restore(noisy, "denoise", model, preset=preset, device=args.device, **kw)
        rows.append(score(name, r.mean, clean, t.seconds, samples=r.info["samples"], steps=r.info["steps"]))
    print(f"model {model.card.name}; held-out crop {args.crop}x{args.crop} of pair_brain_4us (rows 512+)")
    print(table(rows, ["method", "steps", "samples", "PSNR dB", "SSIM", "FRC res px", "time s"]))


def dose_table(model_name: str, doses: list[float], device: str) -> str:
    """Simulated noise at several doses on an unseen clean image: the presets vs the filters."""
    import tifffile

    from _common import need_shared
    from napari_emdiffuse.engine.training.data.noise import simulate_noise

    clean = tifffile.imread(need_shared() / "em2d" / "clean" / "openorganelle_mouse_liver_0.tif")
    model = load_model(model_name, task="denoise", device=device)
    rows = []
    for dose in doses:
        noisy = simulate_noise(clean, dose, rng=np.random.default_rng(int(dose)), lo=0, hi=255).astype(np.uint8)
        row = {"dose": f"{dose:g}", "noisy": f"{psnr(noisy, clean, data_range=255):.2f}"}
        row["gaussian"] = f"{best_gaussian(noisy, clean)[0]:.2f}"
        row["BM3D"] = f"{best_bm3d(noisy, clean)[0]:.2f}"
        for preset in ("fast", "balanced"):
            r = restore(noisy, "denoise", model, preset=preset, device=device)
            row[preset] = f"{psnr(r.mean, clean, data_range=255):.2f}"
        rows.append(row)
    head = f"model {model.card.name}; simulated Poisson-Gaussian noise on openorganelle_mouse_liver_0 (256x256, unseen); PSNR dB"
    return head + "\n" + table(rows, ["dose", "noisy", "gaussian", "BM3D", "fast", "balanced"])


if __name__ == "__main__":
    main()
