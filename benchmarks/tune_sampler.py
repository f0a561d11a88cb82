"""Choose a model's cleanest sampler noise level (``log_snr_max`` on its card) for PSNR.

Few-step samplers end by returning their x0 estimate at the last noise level of their grid.
Ending at a moderate noise level gives the posterior-mean-like estimate (highest PSNR);
ending at a very low one gives a sharper single sample. This sweeps the end level on the
model's *validation* rows (never the held-out evaluation rows) and prints PSNR per setting.

    python benchmarks/tune_sampler.py --model demo-denoise [--rows 456:512]
"""

from __future__ import annotations

import argparse

from _common import brain_pair, table
from napari_emdiffuse.engine.core.metrics import psnr
from napari_emdiffuse.engine.models.registry import load_model
from napari_emdiffuse.api import restore


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="demo-denoise")
    ap.add_argument("--rows", default="456:512", help="validation rows of pair_brain_4us")
    ap.add_argument("--cols", default="0:512")
    ap.add_argument("--levels", default="4,6,8,10", help="log-SNR where the samplers end")
    ap.add_argument("--starts", default="none,-1,0,1", help="log-SNR of the noised condition to start from ('none': pure noise)")
    ap.add_argument("--steps", default="1,2,3,5")
    ap.add_argument("--device", default="auto")
    args = ap.parse_args()
    r0, r1 = (int(v) for v in args.rows.split(":"))
    c0, c1 = (int(v) for v in args.cols.split(":"))
    noisy, clean = brain_pair(slice(r0, r1), slice(c0, c1))
    m = load_model(args.model, task="denoise", device=args.device, cache=False)
    rows = []
    for start in args.starts.split(","):
        m.card.start_log_snr = None if start == "none" else float(start)
        for level in [float(v) for v in args.levels.split(",")]:
            m.card.log_snr_max = level
            row = {"start": start, "log_snr_max": level}
            for sampler in ("dpm++", "ddim"):
                for n in [int(v) for v in args.steps.split(",")]:
                    out = restore(noisy, "denoise", m, sampler=sampler, steps=n, device=args.device).mean
                    row[f"{sampler} {n}"] = f"{psnr(out, clean, data_range=255):.2f}"
            rows.append(row)
            print(row, flush=True)
    cols = list(rows[0])
    print(f"noisy input: {psnr(noisy, clean, data_range=255):.2f} dB")
    print(table(rows, cols))


if __name__ == "__main__":
    main()
