"""Side-by-side picture of the bundled denoising sample: what a user sees, beside the baselines.

Panels (one 128-px crop, upscaled 2x with nearest neighbours so single pixels stay visible):
noisy input | Gaussian (oracle sigma) | BM3D (oracle strength) | the bundled model (balanced)
| the clean recording | the model's uncertainty (sigma, 0 to its 99th percentile). Each image
panel's title line gives its PSNR against the clean recording; the whole 256 px image is scored.

    python benchmarks/sample_figure.py [--model demo-denoise] [--out docs/sample_denoise.png]
"""

from __future__ import annotations

import argparse

import numpy as np
import tifffile
from PIL import Image, ImageDraw

from _common import ROOT, best_bm3d, best_gaussian
from napari_emdiffuse.api import restore
from napari_emdiffuse.engine.core.metrics import psnr
from napari_emdiffuse.engine.io.atomic import atomic_file
from napari_emdiffuse.engine.models.registry import load_model

CROP = (slice(64, 192), slice(64, 192))
ZOOM = 2
TITLE = 18  # px of caption above each panel


def panel(img: np.ndarray, caption: str, *, lo: float = 0.0, hi: float = 255.0) -> Image.Image:
    scaled = np.clip((img.astype(np.float64) - lo) / max(hi - lo, 1e-9) * 255.0, 0, 255).astype(np.uint8)
    tile = Image.fromarray(scaled[CROP]).resize((128 * ZOOM, 128 * ZOOM), Image.NEAREST)
    out = Image.new("L", (tile.width, tile.height + TITLE), 255)
    out.paste(tile, (0, TITLE))
    ImageDraw.Draw(out).text((4, 3), caption, fill=0)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="demo-denoise")
    ap.add_argument("--out", default=str(ROOT / "docs" / "sample_denoise.png"))
    ap.add_argument("--device", default="auto")
    args = ap.parse_args()
    noisy = tifffile.imread(ROOT / "resources" / "samples" / "fibsem_liver_noisy.tif")
    clean = tifffile.imread(ROOT / "resources" / "samples" / "fibsem_liver_clean.tif")
    _, sigma, gauss = best_gaussian(noisy, clean)
    _, _, bm3d = best_bm3d(noisy, clean)
    model = load_model(args.model, task="denoise", device=args.device)
    res = restore(noisy, "denoise", model, preset="balanced", device=args.device)

    def db(x: np.ndarray) -> str:
        return f"{psnr(x, clean, data_range=255):.2f} dB"

    panels = [
        panel(noisy, f"noisy {db(noisy)}"),
        panel(gauss, f"Gaussian s={sigma:.1f} {db(gauss)}"),
        panel(bm3d, f"BM3D {db(bm3d)}"),
        panel(res.mean, f"{model.card.name} {db(res.mean)}"),
        panel(clean, "clean (reference)"),
    ]
    if res.uncertainty is not None:
        u = np.asarray(res.uncertainty, dtype=np.float64)
        panels.append(panel(u, "uncertainty (sigma)", hi=float(np.quantile(u, 0.99))))
    gap = 4
    sheet = Image.new("L", (sum(p.width for p in panels) + gap * (len(panels) - 1), panels[0].height), 255)
    x = 0
    for p in panels:
        sheet.paste(p, (x, 0))
        x += p.width + gap
    with atomic_file(args.out) as tmp:
        sheet.save(tmp, format="PNG")
    print(f"wrote {args.out}: " + ", ".join(f"{n} {db(v)}" for n, v in
                                            (("noisy", noisy), ("Gaussian", gauss), ("BM3D", bm3d), ("model", res.mean))))


if __name__ == "__main__":
    main()
