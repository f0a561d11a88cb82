"""Writing a store into an object store: the blocks, then the commit that makes the store
appear at its URL, for plain zarr and OME-Zarr (with its pyramid) stores in zarr formats 2
and 3.

An S3 server of moto's (``pip install moto s3fs``; nothing leaves this machine) receives a
32 x 1024 x 1024 uint8 volume in 512 chunks of 1 x 256 x 256, and s3fs waits ``--latency``
seconds before each request (a round trip to a real object store is 20-100 ms). The commit
copies only the metadata documents (the chunks were written at the URL); the last column
counts the objects it copied, against the objects a copy of the whole store would take.

    python benchmarks/remote_writes.py [--latency 0.03] [--depth 32]
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
import time

import numpy as np

from _common import table


def _server(port: int) -> tuple[object, object]:
    try:
        import s3fs
        from moto.server import ThreadedMotoServer
    except ImportError as exc:
        raise SystemExit(f"this benchmark needs moto and s3fs ({exc}): pip install moto s3fs") from None
    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # the server's line per request
    server = ThreadedMotoServer(port=port, verbose=False)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    os.environ.update(AWS_ACCESS_KEY_ID="bench", AWS_SECRET_ACCESS_KEY="bench", AWS_DEFAULT_REGION="us-east-1",
                      AWS_ENDPOINT_URL=endpoint, AWS_ENDPOINT_URL_S3=endpoint)  # fmt: skip
    fs = s3fs.S3FileSystem(client_kwargs={"endpoint_url": endpoint})
    fs.mkdir("bench")
    return server, fs


def _slow_requests(latency: float) -> None:
    """Every s3fs request waits ``latency`` seconds first (concurrent requests wait together)."""
    import s3fs

    call = s3fs.S3FileSystem._call_s3

    async def slow(self, *args, **kwargs):
        await asyncio.sleep(latency)
        return await call(self, *args, **kwargs)

    s3fs.S3FileSystem._call_s3 = slow


def _count_copies(fs: object) -> list[str]:
    copied: list[str] = []
    copy = type(fs).copy

    def counting(self, path1, path2, **kwargs):
        copied.extend([path1] if isinstance(path1, str) else list(path1))
        return copy(self, path1, path2, **kwargs)

    type(fs).copy = counting
    return copied


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--latency", type=float, default=0.03, help="seconds before each request (default 0.03)")
    ap.add_argument("--depth", type=int, default=32, help="slices of the volume (default 32)")
    ap.add_argument("--port", type=int, default=5077)
    args = ap.parse_args(argv)
    server, fs = _server(args.port)
    if args.latency > 0:
        _slow_requests(args.latency)
    copied = _count_copies(fs)
    from napari_emdiffuse.engine.io.images import read_image
    from napari_emdiffuse.engine.io.zarrurl import UrlZarrWriter

    vol = np.random.default_rng(0).integers(0, 255, (args.depth, 1024, 1024), dtype=np.uint8)
    rows = []
    try:
        for fmt in (2, 3):
            for name in ("plain.zarr", "pyramid.ome.zarr"):
                url = f"s3://bench/f{fmt}-{name}"
                t0 = time.perf_counter()
                writer = UrlZarrWriter(url, vol.shape, vol.dtype, chunks=(1, 256, 256), zarr_format=fmt,
                                       spacing=(30.0, 4.0, 4.0))  # fmt: skip
                writer.array[:] = vol
                t1 = time.perf_counter()
                del copied[:]
                writer.commit()
                t2 = time.perf_counter()
                fs.invalidate_cache()
                whole = len(fs.find(url.split("://")[1]))  # the store's objects: what copying it whole takes
                ok = np.array_equal(np.asarray(read_image(url).data), vol)
                rows.append({"store": f"{name}, format {fmt}", "write s": f"{t1 - t0:.2f}", "commit s": f"{t2 - t1:.2f}",
                             "read back": "equal" if ok else "DIFFERS",
                             "objects copied (whole copy)": f"{len(copied)} ({whole})"})  # fmt: skip
    finally:
        server.stop()
    print(f"{args.depth} x 1024 x 1024 uint8, chunks 1 x 256 x 256, {args.latency * 1000:.0f} ms before each request")
    print(table(rows, ["store", "write s", "commit s", "read back", "objects copied (whole copy)"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
