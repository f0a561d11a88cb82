"""zarr stores and N5 datasets read by URL, over HTTP with byte ranges (as object stores serve
them): the same pixels and calibration as the local store, workers that open the URL
themselves, and a one-line refusal for what cannot be read."""

from __future__ import annotations

import functools
import http.server
import os
import re
import threading

import numpy as np
import pytest
import zarr

from napari_emdiffuse.engine.errors import InputError
from napari_emdiffuse.engine.io.images import read_image, write_image
from napari_emdiffuse.engine.io.remote import split_url
from napari_emdiffuse.engine.io.sources import open_source, source_of

pytest.importorskip("aiohttp", reason="http(s) URLs are read through aiohttp (the [all] extra)")


class _RangeHandler(http.server.SimpleHTTPRequestHandler):
    """A static file server that answers byte ranges (zarr v3 shards are read by range)."""

    def send_head(self):  # noqa: D401 - http.server's hook
        rng, path = self.headers.get("Range"), self.translate_path(self.path)
        m = re.match(r"bytes=(\d*)-(\d*)$", (rng or "").strip())
        if not m or not os.path.isfile(path):
            return super().send_head()
        size = os.path.getsize(path)
        a, b = m.groups()
        start, end = (max(0, size - int(b)), size - 1) if a == "" else (int(a), min(int(b) if b else size - 1, size - 1))
        f = open(path, "rb")  # noqa: SIM115 - closed by http.server after copyfile
        f.seek(start)
        self.send_response(206)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Range", f"bytes {start}-{end}/{size}")
        self.send_header("Content-Length", str(end - start + 1))
        self.end_headers()
        self._left = end - start + 1
        return f

    def copyfile(self, source, outputfile):
        left, self._left = getattr(self, "_left", None), None
        outputfile.write(source.read(left)) if left is not None else super().copyfile(source, outputfile)

    def log_message(self, *args):
        pass


@pytest.fixture
def served(tmp_path):
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_RangeHandler, directory=str(tmp_path)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield tmp_path, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


@pytest.mark.parametrize("fmt", [2, 3])
def test_a_store_read_by_url_is_the_local_store(served, fmt):
    folder, url = served
    vol = (np.arange(3 * 600 * 40) % 251).astype(np.uint8).reshape(3, 600, 40)
    write_image(folder / "vol.ome.zarr", vol, spacing=(30.0, 4.0, 4.0), zarr_format=fmt)
    img = read_image(f"{url}/vol.ome.zarr")
    assert img.data.shape == vol.shape and img.spacing == pytest.approx((30.0, 4.0, 4.0)) and img.axes == "ZYX"
    assert np.array_equal(img.data[:], vol) and img.path is None
    # workers open it by its URL (not a copy), and read the same pixels
    where = source_of(img.data)
    assert where[0] == f"{url}/vol.ome.zarr" and where[1] == "0"
    assert np.array_equal(open_source(*where)[1:, 100:200], vol[1:, 100:200])
    assert np.array_equal(read_image(f"{url}/vol.ome.zarr/0").data[2], vol[2])
    # napari opens it by URL too (viewer.open), a layer with its pixel size
    from napari_emdiffuse._reader import get_ome_reader

    (data, meta, kind), = get_ome_reader(f"{url}/vol.ome.zarr")(f"{url}/vol.ome.zarr")
    assert kind == "image" and tuple(meta["scale"]) == (30.0, 4.0, 4.0) and meta["multiscale"]
    assert np.array_equal(np.asarray(data[0]), vol) and data[1].shape == (3, 300, 20)  # its pyramid's levels
    assert get_ome_reader(f"{url}/missing.ome.zarr") is None


def test_an_n5_dataset_read_by_url_is_the_local_one(served):
    """An N5 URL names its dataset (web servers list no folders): its blocks, its missing
    blocks (zeros), its group's voxel size times the level's downsampling, as read locally."""
    import json
    import pickle

    from tests.engine.io.test_n5 import _write_n5

    folder, url = served
    vol = (np.arange(5 * 7 * 9) * 37 % 65521).astype(np.uint16).reshape(5, 7, 9)
    group = folder / "liver.n5" / "em" / "fibsem-uint16"
    _write_n5(group / "s0", vol, skip={(1, 1, 1)})
    (group / "attributes.json").write_text(json.dumps({"pixelResolution": {"dimensions": [4.0, 4.0, 8.0], "unit": "nm"}}))
    remote, local = read_image(f"{url}/liver.n5/em/fibsem-uint16/s0"), read_image(group / "s0")
    assert remote.spacing == local.spacing == (8.0, 4.0, 4.0)
    assert np.array_equal(remote.data[...], local.data[...]) and not remote.data[2:4, 3:6, 4:8].any()
    where = source_of(remote.data)  # workers: the URL, not a copy
    assert where[0] == f"{url}/liver.n5" and np.array_equal(open_source(*where)[1:3], local.data[1:3])
    assert np.array_equal(pickle.loads(pickle.dumps(remote.data))[4], vol[4])
    with pytest.raises(InputError, match="a URL names the dataset"):
        read_image(f"{url}/liver.n5")


def test_a_restoration_from_a_url(served, tiny_model_dir, capsys):
    from napari_emdiffuse.cli import main

    folder, url = served
    img = (np.random.default_rng(0).random((2, 48, 40)) * 255).astype(np.uint8)
    write_image(folder / "noisy.zarr", img, spacing=(40.0, 5.0, 5.0))
    common = ["--model", str(tiny_model_dir), "--steps", "2", "--device", "cpu", "--z-filter", "off"]
    assert main(["denoise", f"{url}/noisy.zarr", "-o", str(folder / "remote.tif"), *common]) == 0
    assert main(["denoise", str(folder / "noisy.zarr"), "-o", str(folder / "local.tif"), *common]) == 0
    remote, local = (read_image(folder / n) for n in ("remote.tif", "local.tif"))
    assert np.array_equal(remote.data, local.data) and remote.spacing == pytest.approx((40.0, 5.0, 5.0))
    capsys.readouterr()
    for targets, needle in (([f"{url}/noisy.tif"], "only zarr stores and N5 datasets"), ([f"{url}/missing.zarr"], "cannot read"),
                            ([f"{url}/noisy.zarr"] * 2, "is a zarr store by URL: restore it alone")):
        out = str(folder / ("many" if len(targets) > 1 else "x.tif"))
        assert main(["denoise", *targets, "-o", out, *common]) == 2
        err = capsys.readouterr().err
        assert needle in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert not (folder / "x.tif").exists() and not (folder / "many").exists()


def test_a_url_names_its_store_and_a_missing_backend_is_named():
    assert split_url("https://h/a/b.ome.zarr/0") == ("https://h/a/b.ome.zarr", "0")
    with pytest.raises(InputError, match="only zarr stores and N5 datasets"):
        split_url("https://h/a/scan.tif")
    try:
        import s3fs  # noqa: F401
    except ImportError:
        with pytest.raises(InputError, match=r"needs s3fs \(pip install"):
            read_image("s3://bucket/vol.zarr")
