"""What the bundled denoiser makes of real short-dwell SEM that has no reference.

Rows: the three ``em2d/noisy_nogt`` images of the shared data (mouse brain SEM at short dwell,
3.3 nm/px; EMDiffuse demo data, MIT licence, Lu et al. 2024). Columns: the noisy input, a
Gaussian filter (sigma 1, the strength that is best on the 2 us-like rows of
``quality.py``), the bundled model (fast preset) and its uncertainty (sigma, 0 to its 99th
percentile). No PSNR: there is no reference; this is the check by eye that #12 asks for
(no invented texture, membranes kept, no grid from the correlated noise).

    python benchmarks/real_noise_figure.py [--model demo-denoise] [--out docs/real_sem_denoise.png]
"""

from __future__ import annotations

import argparse

import numpy as np
import tifffile
from PIL import Image, ImageDraw
from scipy.ndimage import gaussian_filter

from _common import ROOT, need_shared
from napari_emdiffuse.api import restore
from napari_emdiffuse.engine.io.atomic import atomic_file
from napari_emdiffuse.engine.models.registry import load_model

TITLE = 16  # px of caption above each panel


def panel(img: np.ndarray, caption: str, *, hi: float = 255.0) -> Image.Image:
    scaled = np.clip(img.astype(np.float64) / max(hi, 1e-9) * 255.0, 0, 255).astype(np.uint8)
    tile = Image.fromarray(scaled)
    out = Image.new("L", (tile.width, tile.height + TITLE), 255)
    out.paste(tile, (0, TITLE))
    ImageDraw.Draw(out).text((4, 2), caption, fill=0)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="demo-denoise")
    ap.add_argument("--out", default=str(ROOT / "docs" / "real_sem_denoise.png"))
    ap.add_argument("--device", default="auto")
    args = ap.parse_args()
    model = load_model(args.model, task="denoise", device=args.device)
    rows = []
    for k in (9, 27, 64):
        noisy = tifffile.imread(need_shared() / "em2d" / "noisy_nogt" / f"noisy_{k}.tif")
        res = restore(noisy, "denoise", model, preset="fast", device=args.device)
        u = np.asarray(res.uncertainty, dtype=np.float64)
        rows.append([
            panel(noisy, f"noisy_{k}"),
            panel(gaussian_filter(noisy.astype(np.float64), 1.0), "Gaussian s=1"),
            panel(res.mean, f"{model.card.name} fast"),
            panel(u, "uncertainty (sigma)", hi=float(np.quantile(u, 0.99))),
        ])
    gap = 4
    w, h = rows[0][0].width, rows[0][0].height
    sheet = Image.new("L", (4 * w + 3 * gap, len(rows) * h + (len(rows) - 1) * gap), 255)
    for r, row in enumerate(rows):
        for c, p in enumerate(row):
            sheet.paste(p, (c * (w + gap), r * (h + gap)))
    with atomic_file(args.out) as tmp:
        sheet.save(tmp, format="PNG")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
