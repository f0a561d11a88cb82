"""zarr stores and N5 datasets read by URL, over HTTP with byte ranges (as object stores serve
them): the same pixels and calibration as the local store, workers that open the URL
themselves, and a one-line refusal for what cannot be read."""

from __future__ import annotations

import numpy as np
import pytest

from napari_emdiffuse.engine.errors import InputError
from napari_emdiffuse.engine.io.images import read_image, write_image
from napari_emdiffuse.engine.io.remote import split_url
from napari_emdiffuse.engine.io.sources import open_source, source_of

pytest.importorskip("aiohttp", reason="http(s) URLs are read through aiohttp (the [all] extra)")


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
    for targets, needle in (([f"{url}/noisy.tif"], "cannot read"), ([f"{url}/volume"], "no neuroglancer precomputed 'info' there"), ([f"{url}/missing.zarr"], "cannot read"),
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


def test_a_sharded_store_reads_from_a_server_that_ignores_byte_ranges(served_any):
    """A zarr v3 shard's index and chunks are read by range; a server that answers a range
    with the whole file (Python's http.server) used to fail zarr's checksum."""
    folder, url = served_any
    vol = np.random.default_rng(0).integers(0, 256, (1, 1100, 1100), dtype=np.uint8)  # 3 x 3 chunks in a shard
    write_image(folder / "v.zarr", vol, zarr_format=3)
    img = read_image(f"{url}/v.zarr")
    assert np.array_equal(img.data[0, 600:1000, 100:700], vol[0, 600:1000, 100:700])


def test_a_byte_range_is_cut_from_a_whole_file_answer(served_any, request):
    from fsspec.implementations.http import HTTPFileSystem

    from napari_emdiffuse.engine.io.fetch import read_bytes, read_range

    folder, url = served_any
    blob = bytes(range(256)) * 4
    (folder / "f.bin").write_bytes(blob)
    for where in (f"{url}/f.bin", folder / "f.bin"):
        assert read_range(where, 300, 10) == blob[300:310] and read_range(where, 1020, 10) == blob[1020:]
        assert read_bytes(where) == blob
    with pytest.raises(FileNotFoundError):
        read_range(f"{url}/none.bin", 0, 4)
    # the control: fsspec's own answer from this server, the range or the whole file
    plain = HTTPFileSystem(skip_instance_cache=True).cat_file(f"{url}/f.bin", start=300, end=310)
    assert len(plain) == (10 if request.node.callspec.params["served_any"] == "ranges" else len(blob))


def test_an_hdf5_dataset_read_by_url_is_the_local_one(served_any, tmp_path):
    """CREMI's layout (``volumes/raw`` with ``resolution`` in nm): by URL, from a server with
    or without byte ranges, the local file's pixels and voxel size; workers open the URL."""
    import pickle

    import h5py

    folder, url = served_any
    vol = (np.arange(6 * 40 * 50) * 7 % 251).astype(np.uint8).reshape(6, 40, 50)
    with h5py.File(folder / "sample_A.hdf", "w") as f:
        d = f.create_dataset("volumes/raw", data=vol, chunks=(2, 16, 16), compression="gzip")
        d.attrs["resolution"] = (40.0, 4.0, 4.0)
        f.create_dataset("volumes/labels/neuron_ids", data=vol.astype(np.uint64))
    img = read_image(f"{url}/sample_A.hdf/volumes/raw")
    assert img.spacing == (40.0, 4.0, 4.0) and img.path is None and img.data.shape == vol.shape
    assert np.array_equal(img.data[2:5, 3:30, 10:], vol[2:5, 3:30, 10:])
    where = source_of(img.data)
    assert where[:2] == (f"{url}/sample_A.hdf", "volumes/raw") and np.array_equal(open_source(*where)[5], vol[5])
    assert np.array_equal(pickle.loads(pickle.dumps(img.data))[1], vol[1])
    with pytest.raises(InputError, match="several datasets"):
        read_image(f"{url}/sample_A.hdf")
    with pytest.raises(InputError, match="cannot read"):
        read_image(f"{url}/missing.h5")


def test_an_unreachable_host_is_said_in_one_line(tmp_path, monkeypatch, capsys):
    """No server at the URL: each kind of store says it could not connect (not that the
    store is damaged), in one line, with exit status 2, after its retries."""
    import socket

    from napari_emdiffuse.cli import main
    from napari_emdiffuse.engine.io import fetch

    monkeypatch.setattr(fetch, "RETRY_WAIT", 0.01)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again: nothing listens there
    for path in ("v.zarr", "v.n5/em/s0", "sample.hdf/volumes/raw", "volume"):
        assert main(["denoise", f"http://127.0.0.1:{port}/{path}", "-o", str(tmp_path / "x.tif")]) == 2
        err = capsys.readouterr().err.strip()
        assert "cannot read" in err and len(err.splitlines()) == 1, err
        assert "not a zarr" not in err and "not an HDF5" not in err and "Traceback" not in err
    assert not (tmp_path / "x.tif").exists()


def test_a_single_file_by_url_is_fetched_once_and_read_as_the_local_file(served_counted, tmp_path):
    """A TIFF or an EMDB-style ``.map.gz`` by URL: fetched whole into the cache, read as the
    local file (pixel size included); read again, the kept copy serves (one size request)."""
    from napari_emdiffuse._reader import url_layers
    from napari_emdiffuse.engine.io.remote import cache_dir

    folder, url, stats = served_counted
    img = (np.arange(40 * 50) % 251).astype(np.uint8).reshape(40, 50)
    vol = (np.arange(3 * 20 * 30) % 97).astype(np.float32).reshape(3, 20, 30)
    write_image(folder / "scan.tif", img, spacing=(2.5, 2.5))
    write_image(folder / "emd_1.map", vol, spacing=(4.0, 4.0, 4.0))
    import gzip

    (folder / "emd_1.map.gz").write_bytes(gzip.compress((folder / "emd_1.map").read_bytes()))
    for name, want in (("scan.tif", img), ("emd_1.map.gz", vol)):
        remote, local = read_image(f"{url}/{name}"), read_image(folder / name)
        assert np.array_equal(remote.data, want) and remote.spacing == local.spacing
        assert "fetched" in remote.note and remote.path.parent == cache_dir()
        before = stats.requests
        again = read_image(f"{url}/{name}")
        assert "read the copy kept at" in again.note and stats.requests - before == 1
    (data, meta, kind), = url_layers(f"{url}/scan.tif?download=1")
    assert meta["name"] == "scan" and meta["scale"] == (2.5, 2.5) and np.array_equal(data, img)
    assert not list(cache_dir().glob(".*partial*"))
