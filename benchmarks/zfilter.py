"""Averaging a denoised stack along z (``z_filter``): where it helps, where ``auto`` keeps
out, and what it does to the uncertainty.

Stacks with correlated noise simulated slice by slice (``_common.stack_case``): the
near-isotropic C. elegans volume at several doses, every second slice of it, a noise-free
copy, and ISBI 2012 (ssTEM sections 50 nm apart). Rows per stack: the noisy input, a 3D
Gaussian at its oracle width, the bundled model with ``z_filter="off"`` and ``"auto"``, and
the best width in hindsight (an oracle the user does not have). Columns: PSNR and SSIM over
the whole stack, the width used, and the uncertainty's coverage (truth within +-2 std) and
Spearman rank correlation with the error over 32-px tiles.

With ``--peers build/peers/peers.json`` (from ``benchmarks/peers.py --n2v-stacks 30 100``, in
an environment with careamics) it adds 3D Noise2Void trained on each stack itself.

Usage::

    python benchmarks/zfilter.py [--model demo-denoise] [--device cpu] [--peers PEERS.json]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
from scipy.stats import spearmanr

from _common import Timer, best_gaussian, stack_case, table
from napari_emdiffuse.api import restore
from napari_emdiffuse.engine.core.alikeness import slice_alikeness
from napari_emdiffuse.engine.core.metrics import psnr, ssim
from napari_emdiffuse.engine.events import drain
from napari_emdiffuse.engine.inference.zfilter import ZFilter, smooth_along_z
from napari_emdiffuse.engine.models.registry import load_model

ORACLE_WIDTHS = (0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 1.0, 1.2, 1.5)


def cases() -> list[tuple[str, np.ndarray, np.ndarray, str]]:
    """(label, noisy, clean, key of peers.json)."""
    out = []
    for dose in (10, 30, 100, 300, 1000):
        noisy, clean = stack_case("celegans", dose)
        out.append((f"C. elegans 21x256x128, dose {dose}", noisy, clean, f"stack_celegans{dose:g}"))
    for dose in (30, 100):
        noisy, clean = stack_case("celegans", dose)
        out.append((f"C. elegans every 2nd slice, dose {dose}", noisy[::2], clean[::2], ""))
    out.append(("C. elegans, noise-free", clean, clean, ""))
    noisy, clean = stack_case("isbi", 30)
    out.append(("ISBI 2012 28x256x256, dose 30", noisy, clean, ""))
    return out


def _tiles(a: np.ndarray, t: int = 32) -> np.ndarray:
    z, h, w = a.shape
    a = a[:, : h // t * t, : w // t * t]
    return a.reshape(z, h // t, t, w // t, t).mean(axis=(2, 4)).ravel()


def score(case: str, method: str, out: np.ndarray, clean: np.ndarray, unc=None, seconds=None, width="") -> dict:
    out, ref = out.astype(np.float64), clean.astype(np.float64)
    row = {"case": case, "method": method, "PSNR dB": f"{psnr(out, ref, data_range=255):.2f}",
           "SSIM": f"{ssim(out, ref, data_range=255):.4f}", "width": width, "coverage": "", "rho": "",
           "time s": f"{seconds:.0f}" if seconds is not None else ""}  # fmt: skip
    if unc is not None:
        err = np.abs(out - ref)
        row["coverage"] = f"{(err <= 2 * unc).mean():.3f}"
        row["rho"] = f"{spearmanr(_tiles(unc), _tiles(err)).statistic:.2f}"
    return row


def _forced(result, noisy: np.ndarray, width: float) -> np.ndarray:
    """The restoration averaged along z over ``width`` slices, as ``z_filter=width`` would."""
    out = result.mean.copy()
    drain(smooth_along_z(out, None, noisy, ZFilter((width,), ""), fill=(result.normalisation or {}).get("fill")))
    return out.astype(np.float64)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="demo-denoise")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--peers", type=Path, help="peers.json of benchmarks/peers.py --n2v-stacks")
    args = ap.parse_args()
    model = load_model(args.model, task="denoise", device=args.device)
    peers = json.loads(args.peers.read_text()) if args.peers else {}
    rows = []
    for case, noisy, clean, key in cases():
        spacing = slice_alikeness(noisy).spacing
        case = f"{case} ({spacing:.1f} px apart)"
        rows.append(score(case, "noisy input", noisy, clean))
        rows.append(score(case, "Gaussian 3D (oracle sigma)", best_gaussian(noisy, clean)[2], clean))
        for name, peer in peers.get(key, {}).items():
            rows.append(score(case, f"{name} ({peer['minutes']:g} CPU-min on the stack)", np.load(peer["output"]), clean,
                              seconds=peer["seconds"]))
        with Timer() as t:
            off = restore(noisy, "denoise", model, device=args.device, z_filter="off")
        rows.append(score(case, f"{args.model}, z filter off", off.mean, clean, off.uncertainty, t.seconds))
        with Timer() as t:
            auto = restore(noisy, "denoise", model, device=args.device)
        width = auto.info.get("z_filter")
        rows.append(score(case, f"{args.model}, z filter auto (default)", auto.mean, clean, auto.uncertainty, t.seconds,
                          f"{width:g}" if width else "not averaged"))
        best = max((psnr(_forced(off, noisy, w), clean.astype(np.float64), data_range=255), w) for w in ORACLE_WIDTHS)
        rows.append({"case": case, "method": f"{args.model}, best width in hindsight", "PSNR dB": f"{best[0]:.2f}",
                     "SSIM": "", "width": f"{best[1]:g}", "coverage": "", "rho": "", "time s": ""})
        print(table(rows[-5 - len(peers.get(key, {})):], list(rows[0])), flush=True)
    print()
    print(table(rows, list(rows[0])))


if __name__ == "__main__":
    main()
