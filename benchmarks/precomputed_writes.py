"""A neuroglancer precomputed folder written in one process against written by dask workers,
side by side, from the same zarr store (what a cluster run fills, or `emdiffuse convert`'s
input).

A volume of noise (uint8, ZYX, thin sections: 128 x 128 x 16 chunks and their levels) is stored
as zarr once; then `write_precomputed` (blocks of 16 M voxels, four threads) and
`precomputed_on_workers` on local clusters of each size write it. Columns: the write's seconds,
the seconds to start the cluster, whether every file matches the one-process folder.

    python benchmarks/precomputed_writes.py [--shape 64 2048 2048] [--workers 1 2] [--sharded]
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

from _common import table
from napari_emdiffuse.engine.io.images import write_image
from napari_emdiffuse.engine.io.precomputed_write import precomputed_layout, write_precomputed
from napari_emdiffuse.engine.io.zarr import open_zarr_readonly
from napari_emdiffuse.engine.parallel.precomputed import precomputed_on_workers
from napari_emdiffuse.engine.parallel.runner import cluster_client


def files(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shape", type=int, nargs=3, default=[64, 2048, 2048], metavar=("Z", "Y", "X"))
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--sharded", action="store_true", help="shard every scale")
    args = ap.parse_args()
    spacing = (30.0, 4.0, 4.0)
    options = {"spacing": spacing, "sharded": True if args.sharded else None}
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        vol = (np.random.default_rng(0).random(tuple(args.shape)) * 255).astype(np.uint8)
        write_image(d / "v.zarr", vol, spacing=spacing)
        del vol
        src = open_zarr_readonly(d / "v.zarr")
        t = time.perf_counter()
        write_precomputed(d / "one.precomputed", src, **options)
        rows = [{"writer": "one process (4 threads)", "write s": f"{time.perf_counter() - t:.1f}", "start s": "-",
                 "same files": "-"}]
        reference = files(d / "one.precomputed")
        for n in args.workers:
            out = d / f"w{n}.precomputed"
            t = time.perf_counter()
            with cluster_client(n, None) as client:
                started = time.perf_counter()
                layout = precomputed_layout(out, src.shape, src.dtype, **options)
                for _ in precomputed_on_workers(client, (str(d / "v.zarr"), "", (), ()), out, layout):
                    pass
                done = time.perf_counter()
            rows.append({"writer": f"{n} dask worker{'s' if n > 1 else ''}", "write s": f"{done - started:.1f}",
                         "start s": f"{started - t:.1f}", "same files": "yes" if files(out) == reference else "NO"})
            shutil.rmtree(out)
    shape = " x ".join(str(n) for n in args.shape)
    print(f"{shape} uint8 into .precomputed{' (sharded)' if args.sharded else ''}")
    print(table(rows, ["writer", "write s", "start s", "same files"]))


if __name__ == "__main__":
    main()
