"""zarr format 2 against format 3 (a shard per block) for a restoration's output, side by side,
with neuroglancer precomputed (one file per chunk, and sharded) beside them.

A volume of smooth texture with noise (4 slices of 4096 x 4096, uint8) is written block by block
in 2048-px blocks, as the block plan writes an output, in each format; then 100 viewer-sized
reads (512-px tiles, aligned) are timed. Columns: write seconds, files, megabytes, milliseconds
per tile read.

    python benchmarks/zarr_formats.py [--size 4096] [--block 2048]
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import zarr
from scipy.ndimage import gaussian_filter

from _common import table
from napari_emdiffuse.engine.io.precomputed import PrecomputedArray
from napari_emdiffuse.engine.io.precomputed_write import write_precomputed
from napari_emdiffuse.engine.io.zarr import ZarrWriter


def tile_read(arr, shape: tuple[int, ...]) -> float:
    """Seconds per read of a 512-px tile at an aligned place, over 100 (the same places each time)."""
    picks = np.random.default_rng(1)
    t = time.perf_counter()
    for _ in range(100):
        z = picks.integers(shape[0])
        y, x = (picks.integers(0, shape[1] - 512, 2) // 512) * 512
        arr[z, y : y + 512, x : x + 512]
    return (time.perf_counter() - t) / 100


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=4096)
    ap.add_argument("--block", type=int, default=2048)
    args = ap.parse_args()
    n, b = args.size, args.block
    rng = np.random.default_rng(0)
    img = np.clip(128 + 600 * gaussian_filter(rng.normal(size=(n, n)).astype(np.float32), 4)
                  + rng.normal(0, 8, (n, n)), 0, 255).astype(np.uint8)  # fmt: skip
    vol = np.stack([img, img[::-1], img[:, ::-1], img.T])
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for fmt in (2, 3):
            path = Path(tmp) / f"v{fmt}.zarr"
            t = time.perf_counter()
            w = ZarrWriter(path, vol.shape, np.uint8, chunks=(1, b, b), zarr_format=fmt)
            for z in range(vol.shape[0]):
                for y in range(0, n, b):
                    for x in range(0, n, b):
                        w.array[z, y : y + b, x : x + b] = vol[z, y : y + b, x : x + b]
            w.commit()
            write = time.perf_counter() - t
            files = [os.path.join(d, f) for d, _, fs in os.walk(path) for f in fs]
            read = tile_read(zarr.open_array(str(path), mode="r"), vol.shape)
            rows.append({"format": fmt, "write s": f"{write:.2f}", "files": len(files),
                         "MB": f"{sum(os.path.getsize(f) for f in files) / 1e6:.1f}",
                         "512-px tile read ms": f"{read * 1000:.1f}"})  # fmt: skip
            shutil.rmtree(path)
        for sharded in (False, True):  # the whole volume at once (with its levels), as write_image writes it
            path = Path(tmp) / f"v{int(sharded)}.precomputed"
            t = time.perf_counter()
            write_precomputed(path, vol, spacing=(8.0, 8.0, 8.0), sharded=sharded)
            write = time.perf_counter() - t
            files = [os.path.join(d, f) for d, _, fs in os.walk(path) for f in fs]
            full = [f for f in files if os.sep + "8_8_8" + os.sep in f]
            read = tile_read(PrecomputedArray(path, "8_8_8", cache=False), vol.shape)
            rows.append({"format": f"precomputed{', sharded' if sharded else ''} (+ levels)", "write s": f"{write:.2f}",
                         "files": f"{len(full)} (+{len(files) - len(full)})",
                         "MB": f"{sum(os.path.getsize(f) for f in full) / 1e6:.1f}",
                         "512-px tile read ms": f"{read * 1000:.1f}"})  # fmt: skip
    print(table(rows, ["format", "write s", "files", "MB", "512-px tile read ms"]))
    print("\nprecomputed: files and MB of full resolution (+ the levels' and the info files)")


if __name__ == "__main__":
    main()
