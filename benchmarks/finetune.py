"""Fine-tuning from one registered pair: does a short fine-tune help on unseen tissue?

The bundled demo-denoise model trained on the top two thirds of pair_brain_4us. This script
splits the held-out bottom third in two: it fine-tunes on the left half for ``--iterations``
(default 150, as the fine-tune widget and CLI do) and scores the right half before and
after, against the 36 us image, side by side with Gaussian and BM3D filters at their best.

    python benchmarks/finetune.py [--iterations 150] [--base demo-denoise]
"""

from __future__ import annotations

import argparse
import tempfile

from _common import Timer, best_bm3d, best_gaussian, brain_pair, table
from napari_emdiffuse.engine.core.metrics import psnr, ssim
from napari_emdiffuse.engine.models.registry import load_model
from napari_emdiffuse.engine.events import drain
from napari_emdiffuse.engine.restore import restore
from napari_emdiffuse.engine.training.finetune import finetune_iter


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--base", default="demo-denoise")
    ap.add_argument("--iterations", type=int, default=150)
    ap.add_argument("--patch", type=int, default=128)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--lr", type=float, default=5e-5)
    ap.add_argument("--device", default="auto")
    args = ap.parse_args()

    noisy, clean = brain_pair()
    train_noisy, train_clean = noisy[:, :384], clean[:, :384]
    test_noisy, test_clean = noisy[:, 384:], clean[:, 384:]

    def score(name: str, out, seconds: float | None = None) -> dict:
        return {
            "method": name,
            "PSNR dB": f"{psnr(out, test_clean, data_range=255):.2f}",
            "SSIM": f"{ssim(out, test_clean, data_range=255):.4f}",
            "time s": "" if seconds is None else f"{seconds:.0f}",
        }

    rows = [score("noisy input", test_noisy)]
    rows.append(score(f"gaussian (best sigma {best_gaussian(test_noisy, test_clean)[1]:.1f})", best_gaussian(test_noisy, test_clean)[2]))
    rows.append(score("BM3D (best sigma)", best_bm3d(test_noisy, test_clean)[2]))
    base = load_model(args.base, task="denoise", device=args.device)
    for preset in ("fast", "balanced"):
        rows.append(score(f"{args.base}, {preset}", restore(test_noisy, "denoise", base, preset=preset, device=args.device).mean))
    with tempfile.TemporaryDirectory() as tmp:
        with Timer() as t:
            path = drain(
                finetune_iter(
                    "denoise", train_noisy, train_clean, base=args.base, out=f"{tmp}/ft", iterations=args.iterations,
                    patch=args.patch, batch=args.batch, lr=args.lr, device=args.device,
                )
            )
        tuned = load_model(path, task="denoise", device=args.device)
        for preset in ("fast", "balanced"):
            rows.append(score(f"fine-tuned {args.iterations} it, {preset}", restore(test_noisy, "denoise", tuned, preset=preset, device=args.device).mean))
    rows[-2]["time s"] = f"{t.seconds:.0f} (fine-tune)"
    print(
        f"pair_brain_4us rows 512-767: fine-tune on columns 0-383 ({args.iterations} iterations, patch {args.patch}, "
        f"batch {args.batch}, lr {args.lr:g}); scored on columns 384-767"
    )
    print(table(rows, ["method", "PSNR dB", "SSIM", "time s"]))


if __name__ == "__main__":
    main()
