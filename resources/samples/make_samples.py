"""Regenerate the sample images of this folder from the project's shared EM data.

Run from anywhere::

    python resources/samples/make_samples.py [--data ../shared/data]

The output is deterministic (fixed crop, fixed noise seed). See README.md in this folder
for the sources and licences.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
DEFAULT_DATA = HERE.parents[2] / "shared" / "data"  # <repo>/../shared/data

SEED = 20240607
# Low-dose scanning EM: about 40 detected electrons at the brightest pixel, plus detector
# read-out noise. Gives PSNR(noisy, clean) of about 18.5 dB.
PEAK_ELECTRONS = 40.0
READ_NOISE = 0.03  # standard deviation, as a fraction of full scale
PIXEL_NM = 8.0  # OpenOrganelle jrc_mus-liver is 8 nm isotropic
VOLUME_XY_NM = 8.0  # nominal: the C. elegans source volume is uncalibrated (~isotropic)
VOLUME_KEEP_EVERY = 3


def poisson_gaussian(clean: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Simulated low-dose acquisition of an 8-bit image (Poisson shot noise + Gaussian
    read noise), back in uint8."""
    x = clean.astype(np.float64) / 255.0
    counts = rng.poisson(x * PEAK_ELECTRONS)
    y = counts / PEAK_ELECTRONS + rng.normal(0.0, READ_NOISE, size=x.shape)
    return np.clip(np.round(y * 255.0), 0, 255).astype(np.uint8)


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float(10 * np.log10(255.0**2 / mse))


def main(argv: list[str] | None = None) -> None:
    import tifffile

    from napari_emdiffuse.engine.io import write_image

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA, help="the shared data folder")
    ap.add_argument("--out", type=Path, default=HERE, help="where to write the samples")
    args = ap.parse_args(argv)

    clean = tifffile.imread(args.data / "em2d" / "clean" / "openorganelle_mouse_liver_0.tif")
    assert clean.shape == (256, 256) and clean.dtype == np.uint8, clean.shape
    noisy = poisson_gaussian(clean, np.random.default_rng(SEED))
    write_image(args.out / "fibsem_liver_clean.tif", clean, spacing=(PIXEL_NM, PIXEL_NM), unit="nm", axes="YX")
    write_image(args.out / "fibsem_liver_noisy.tif", noisy, spacing=(PIXEL_NM, PIXEL_NM), unit="nm", axes="YX")
    print(f"fibsem_liver_noisy.tif: {noisy.shape}, PSNR vs clean {psnr(noisy, clean):.2f} dB")

    volume = tifffile.imread(args.data / "em3d" / "celegans_neariso_21x256x128.tif")
    sub = np.ascontiguousarray(volume[::VOLUME_KEEP_EVERY])
    z_nm = VOLUME_XY_NM * VOLUME_KEEP_EVERY
    write_image(
        args.out / "celegans_anisotropic_z3.tif", sub, spacing=(z_nm, VOLUME_XY_NM, VOLUME_XY_NM), unit="nm", axes="ZYX"
    )
    print(f"celegans_anisotropic_z3.tif: {sub.shape} (slices {list(range(0, volume.shape[0], VOLUME_KEEP_EVERY))})")
    total = sum(p.stat().st_size for p in args.out.glob("*.tif"))
    print(f"total {total / 1024:.0f} KiB")


if __name__ == "__main__":
    main()
