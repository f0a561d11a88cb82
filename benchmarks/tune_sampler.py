"""Choose a model's cleanest sampler noise level (``log_snr_max`` on its card) for PSNR.

Few-step samplers end by returning their x0 estimate at the last noise level of their grid.
Ending at a moderate noise level gives the posterior-mean-like estimate (highest PSNR);
ending at a very low one gives a sharper single sample. This sweeps the end level on the
model's *validation* rows (never the held-out evaluation rows) and prints PSNR per setting.

    python benchmarks/tune_sampler.py --model demo-denoise [--rows 456:512]
"""

from __future__ import annotations

import argparse

import numpy as np

from _common import brain_pair, table
from napari_emdiffuse.engine.metrics import psnr
from napari_emdiffuse.engine.model import load_model
from napari_emdiffuse.engine.restore import restore


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="demo-denoise")
    ap.add_argument("--rows", default="456:512", help="validation rows of pair_brain_4us")
    ap.add_argument("--cols", default="0:512")
    ap.add_argument("--levels", default="-4,-2,0,2,4,6,8")
    ap.add_argument("--steps", default="2,5,10")
    ap.add_argument("--device", default="auto")
    args = ap.parse_args()
    r0, r1 = (int(v) for v in args.rows.split(":"))
    c0, c1 = (int(v) for v in args.cols.split(":"))
    noisy, clean = brain_pair(slice(r0, r1), slice(c0, c1))
    m = load_model(args.model, task="denoise", device=args.device, cache=False)
    rows = []
    for level in [float(v) for v in args.levels.split(",")]:
        m.card.log_snr_max = level
        row = {"log_snr_max": level}
        for sampler in ("dpm++", "ddim"):
            for n in [int(v) for v in args.steps.split(",")]:
                out = restore(noisy, "denoise", m, sampler=sampler, steps=n, device=args.device).mean
                row[f"{sampler} {n}"] = f"{psnr(out, clean, data_range=255):.2f}"
        rows.append(row)
        print(row, flush=True)
    cols = ["log_snr_max"] + [k for k in rows[0] if k != "log_snr_max"]
    print(f"noisy input: {psnr(noisy, clean, data_range=255):.2f} dB")
    print(table(rows, cols))


if __name__ == "__main__":
    main()
