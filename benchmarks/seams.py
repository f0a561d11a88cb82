"""Seams: does the result depend on where the tiles fall?

Restores the same image with two different tilings and measures their coarse-scale
disagreement (Gaussian sigma=8 of the difference, relative to the image's own coarse
contrast), for per-step merging (ours) and for naive independent tiles blended afterwards.

    python benchmarks/seams.py [--model demo-denoise] [--overlap-fraction 0.125]
"""

from __future__ import annotations

import argparse

import numpy as np
from scipy.ndimage import gaussian_filter

from _common import brain_pair, table
from napari_emdiffuse.engine.models.registry import load_model
from napari_emdiffuse.api import restore
from napari_emdiffuse.engine.inference.tiling import TilePlan


def coarse_disagreement(a: np.ndarray, b: np.ndarray, image: np.ndarray) -> float:
    diff = gaussian_filter(a.astype(np.float64) - b.astype(np.float64), 8)
    contrast = gaussian_filter(image.astype(np.float64), 8).std()
    return float(np.abs(diff).mean() / contrast)


def naive(image, model, tile, overlap, **kw) -> np.ndarray:
    """Each tile restored on its own (own noise), then blended with the same weights."""
    h, w = image.shape
    plan = TilePlan(h, w, tile, tile, overlap)
    acc = np.zeros((h, w))
    wsum = np.zeros((h, w))
    for i, (y, x) in enumerate(plan.tiles):
        r = restore(image[y : y + tile, x : x + tile], "denoise", model, tile=tile, seed=1000 + i, **kw).mean
        wt = plan.weight(y, x)
        acc[y : y + tile, x : x + tile] += r * wt
        wsum[y : y + tile, x : x + tile] += wt
    return acc / wsum


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="demo-denoise")
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--overlap-fraction", type=float, default=0.125)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--steps", type=int, default=None, help="sampler steps (default: the model's fast preset)")
    ap.add_argument("--tiles", default="128,192", help="the two tile sizes to compare")
    args = ap.parse_args()
    noisy, _ = brain_pair()
    img = noisy[: args.size, : args.size]
    model = load_model(args.model, task="denoise", device=args.device)
    kw = dict(steps=args.steps, device=args.device)
    t1, t2 = (int(v) for v in args.tiles.split(","))
    o1, o2 = int(t1 * args.overlap_fraction), int(t2 * args.overlap_fraction)
    a = restore(img, "denoise", model, tile=t1, overlap=o1, **kw).mean
    b = restore(img, "denoise", model, tile=t2, overlap=o2, **kw).mean
    na = naive(img, model, t1, o1, **kw)
    nb = naive(img, model, t2, o2, **kw)
    rows = [
        {"method": "per-step merging (ours)", "coarse disagreement": f"{coarse_disagreement(a, b, img):.4f}"},
        {"method": "independent tiles, blended", "coarse disagreement": f"{coarse_disagreement(na, nb, img):.4f}"},
    ]
    print(f"tilings {t1}px/{o1}px vs {t2}px/{o2}px overlap on a {args.size}px crop; aim <= 0.01")
    print(table(rows, ["method", "coarse disagreement"]))


if __name__ == "__main__":
    main()
