"""Slices of a volume in 64³ chunks read by URL: one request at a time against concurrent
requests and kept chunks, for N5, neuroglancer precomputed and (for reference) zarr; and the
same volume as one MRC file, read by byte range in bands of rows; and a 1024² region of a
tiled, zlib-compressed 8192² TIFF montage, read a tile at a time.

A local web server that answers byte ranges serves a 64 x 1024 x 1024 uint8 volume in each
format, waiting ``--latency`` seconds before each answer (a round trip to an object store is
20-100 ms). A restoration reads a volume slice by slice; the table gives the seconds to read
one slice, then the next one (whose chunks are the same 64³ chunks).

    python benchmarks/remote_reads.py [--latency 0.02]
"""

from __future__ import annotations

import argparse
import functools
import http.server
import itertools
import json
import tempfile
import threading
import time
import zlib
from pathlib import Path

import numpy as np
import zarr

from _common import table
from napari_emdiffuse.engine.io import chunkcache, fetch, rawurl
from napari_emdiffuse.engine.io.images import read_image

CHUNK = 64


def _write_precomputed(root: Path, vol: np.ndarray) -> None:
    scale = {"key": "s0", "size": list(vol.shape[::-1]), "voxel_offset": [0, 0, 0], "resolution": [4, 4, 40],
             "chunk_sizes": [[CHUNK] * 3], "encoding": "raw"}  # fmt: skip
    (root / "s0").mkdir(parents=True)
    (root / "info").write_text(json.dumps({"data_type": "uint8", "num_channels": 1, "type": "image", "scales": [scale]}))
    for z, y, x in itertools.product(*(range(0, n, CHUNK) for n in vol.shape)):
        part = vol[z : z + CHUNK, y : y + CHUNK, x : x + CHUNK]
        name = f"{x}-{x + part.shape[2]}_{y}-{y + part.shape[1]}_{z}-{z + part.shape[0]}"
        (root / "s0" / name).write_bytes(part.tobytes())


def _write_n5(root: Path, vol: np.ndarray) -> None:
    root.mkdir(parents=True)
    (root / "attributes.json").write_text(json.dumps({"dimensions": list(vol.shape[::-1]), "blockSize": [CHUNK] * 3,
                                                      "dataType": "uint8", "compression": {"type": "gzip"}}))  # fmt: skip
    for z, y, x in itertools.product(*(range(0, n, CHUNK) for n in vol.shape)):
        part = vol[z : z + CHUNK, y : y + CHUNK, x : x + CHUNK]
        header = (0).to_bytes(2, "big") + (3).to_bytes(2, "big") + b"".join(int(n).to_bytes(4, "big") for n in part.shape[::-1])
        folder = root / str(x // CHUNK) / str(y // CHUNK)
        folder.mkdir(parents=True, exist_ok=True)
        (folder / str(z // CHUNK)).write_bytes(header + zlib.compress(part.tobytes(), 1))


class _Slow(http.server.SimpleHTTPRequestHandler):
    latency = 0.0

    def send_head(self):  # noqa: D401 - http.server's hook
        time.sleep(self.latency)
        rng, path = self.headers.get("Range"), self.translate_path(self.path)
        if not rng or not Path(path).is_file():
            return super().send_head()
        a, b = rng.split("=", 1)[1].split("-")
        size = Path(path).stat().st_size
        start, end = int(a), min(int(b) if b else size - 1, size - 1)
        fh = open(path, "rb")  # noqa: SIM115 - http.server closes it
        fh.seek(start)
        self.send_response(206)
        self.send_header("Content-Range", f"bytes {start}-{end}/{size}")
        self.send_header("Content-Length", str(end - start + 1))
        self.end_headers()
        self._left = end - start + 1
        return fh

    def copyfile(self, source, outputfile):
        left, self._left = getattr(self, "_left", None), None
        outputfile.write(source.read(left)) if left is not None else super().copyfile(source, outputfile)

    def log_message(self, *args):
        pass


class _Server(http.server.ThreadingHTTPServer):
    request_queue_size = 1024  # as a web server's; Python's default of 5 drops concurrent connections


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--latency", type=float, default=0.02, help="seconds the server waits before each answer")
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    vol = rng.integers(0, 256, (CHUNK, 1024, 1024), dtype=np.uint8)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        _write_precomputed(d / "vol", vol)
        _write_n5(d / "vol.n5" / "raw", vol)
        z = zarr.open_array(str(d / "vol.zarr"), mode="w", shape=vol.shape, chunks=(CHUNK,) * 3, dtype="uint8", zarr_format=2)
        z[:] = vol
        _Slow.latency = args.latency
        server = _Server(("127.0.0.1", 0), functools.partial(_Slow, directory=tmp))
        threading.Thread(target=server.serve_forever, daemon=True).start()
        url = f"http://127.0.0.1:{server.server_address[1]}"
        at_once, keep_bytes = fetch.REQUESTS_AT_ONCE, chunkcache.CHUNK_CACHE_BYTES
        for name, path in (("precomputed", "vol"), ("N5", "vol.n5/raw"), ("zarr v2 (zarr's own reads)", "vol.zarr")):
            modes = [("one at a time, no cache", 1, False), ("concurrent + kept chunks", at_once, True)]
            for mode, n, keep in modes if name != "zarr v2 (zarr's own reads)" else modes[1:]:
                fetch.REQUESTS_AT_ONCE, chunkcache.CHUNK_CACHE_BYTES = n, keep_bytes if keep else 0
                img = read_image(f"{url}/{path}")
                t0 = time.perf_counter()
                first = img.data[5]
                t1 = time.perf_counter()
                second = img.data[6]
                t2 = time.perf_counter()
                assert np.array_equal(first, vol[5]) and np.array_equal(second, vol[6])
                rows.append({"format": name, "reads": mode if name != "zarr v2 (zarr's own reads)" else "zarr",
                             "slice 5, s": f"{t1 - t0:.2f}", "slice 6, s": f"{t2 - t1:.2f}"})  # fmt: skip
        fetch.REQUESTS_AT_ONCE, chunkcache.CHUNK_CACHE_BYTES = at_once, keep_bytes
        import mrcfile

        with mrcfile.new(d / "vol.mrc") as m:
            m.set_data(vol.astype(np.int16))
        lazy_from = rawurl.LAZY_MIN_BYTES
        rawurl.LAZY_MIN_BYTES = 0  # the 128 MB file counts as large
        img = read_image(f"{url}/vol.mrc")
        t0 = time.perf_counter()
        first = img.data[5]
        t1 = time.perf_counter()
        corner = img.data[6, :256, :256]
        t2 = time.perf_counter()
        assert np.array_equal(first, vol[5]) and np.array_equal(corner, vol[6, :256, :256])
        rawurl.LAZY_MIN_BYTES = lazy_from
        rows.append({"format": "MRC, one file (int16)", "reads": f"bands of {rawurl.BAND_ROWS} rows by range",
                     "slice 5, s": f"{t1 - t0:.2f}", "slice 6, s": f"{t2 - t1:.2f} (a 256² corner)"})  # fmt: skip
        import tifffile

        montage = rng.integers(0, 256, (8192, 8192), dtype=np.uint8)  # a large 2D montage, one page
        tifffile.imwrite(d / "montage.tif", montage, tile=(512, 512), compression="zlib", compressionargs={"level": 1})
        rawurl.LAZY_MIN_BYTES = 0
        t0 = time.perf_counter()
        img = read_image(f"{url}/montage.tif")
        t1 = time.perf_counter()
        part = img.data[2048:3072, 4096:5120]
        t2 = time.perf_counter()
        assert np.array_equal(part, montage[2048:3072, 4096:5120])
        rows.append({"format": "TIFF, an 8192² montage (tiled 512², zlib)", "reads": "tiles by range, kept",
                     "slice 5, s": f"{t2 - t1:.2f} (a 1024² region)",
                     "slice 6, s": f"opening: {t1 - t0:.2f}"})  # fmt: skip
        # a compressed stack of a page per slice, as Fiji saves one: every page's tags first
        tifffile.imwrite(d / "fiji.tif", vol, imagej=True, compression="zlib", compressionargs={"level": 1})
        t0 = time.perf_counter()
        img = read_image(f"{url}/fiji.tif")
        t1 = time.perf_counter()
        part = img.data[5]
        t2 = time.perf_counter()
        assert np.array_equal(part, vol[5])
        rawurl.LAZY_MIN_BYTES = lazy_from
        rows.append({"format": "TIFF, an ImageJ stack (zlib, a page a slice)", "reads": "pages by range, tags kept",
                     "slice 5, s": f"{t2 - t1:.2f}", "slice 6, s": f"opening: {t1 - t0:.2f}"})  # fmt: skip
        server.shutdown()
        server.server_close()
    print(f"one 1024² slice of a 64 x 1024 x 1024 volume in 64³ chunks, {args.latency * 1000:.0f} ms per request")
    print(table(rows, ["format", "reads", "slice 5, s", "slice 6, s"]))


if __name__ == "__main__":
    main()
