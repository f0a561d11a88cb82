"""Large MRC and TIFF volumes by URL, read by byte range: the local file's pixels and voxel
size, only the rows a read touches, kept between reads; fetched whole where they cannot be."""

from __future__ import annotations

import pickle

import mrcfile
import numpy as np
import pytest

from napari_emdiffuse.engine.errors import InputError
from napari_emdiffuse.engine.io import rawurl
from napari_emdiffuse.engine.io.images import read_image
from napari_emdiffuse.engine.io.rawurl import BAND_ROWS, RawUrlArray
from napari_emdiffuse.engine.io.mrcurl import read_mrc_url
from napari_emdiffuse.engine.io.sources import open_source, source_of
from napari_emdiffuse.engine.io.tiff import TiffArray
from tests.engine.io.test_mrc_pictures import imod_bytes


@pytest.fixture
def lazy_from_any_size(monkeypatch, tmp_path):
    monkeypatch.setattr(rawurl, "LAZY_MIN_BYTES", 0)
    monkeypatch.setenv("EMDIFFUSE_HOME", str(tmp_path / "home"))


def _volume(path, shape=(5, 150, 90), dtype=np.int16, ext=0):
    data = (np.arange(np.prod(shape)) % 30011 - 15000).astype(dtype).reshape(shape)
    with mrcfile.new(path, overwrite=True) as m:
        m.set_data(data)
        m.voxel_size = (12.5, 12.5, 30.0)  # Å: x, y, z
        if ext:
            m.set_extended_header(np.zeros(ext, dtype=np.uint8))
    return data


def test_an_mrc_volume_by_url_reads_as_the_local_file(served, lazy_from_any_size):
    folder, url = served
    data = _volume(folder / "vol.mrc", ext=96)  # an extended header moves the pixels
    img = read_image(f"{url}/vol.mrc")
    assert isinstance(img.data, RawUrlArray) and "by byte range" in img.note
    local = read_image(folder / "vol.mrc")
    assert img.data.shape == data.shape and img.data.dtype == np.int16
    assert img.spacing == local.spacing == (3.0, 1.25, 1.25) and img.unit == "nm" and img.axes == "ZYX"
    for key in (np.s_[2], np.s_[1:4, 60:140, 7:30], np.s_[4, ::-3, 5], np.s_[:, 149, ::7], np.s_[..., -1],
                np.s_[0, 63:65]):
        np.testing.assert_array_equal(img.data[key], data[key], err_msg=str(key))
    # a cluster worker opens the URL itself
    again = open_source(*source_of(img.data))
    assert isinstance(again, RawUrlArray)
    np.testing.assert_array_equal(pickle.loads(pickle.dumps(img.data))[3, 10:20], data[3, 10:20])


def test_only_the_bands_a_read_touches_are_fetched_and_kept(served_counted, lazy_from_any_size):
    folder, url, stats = served_counted
    data = _volume(folder / "vol.mrc", shape=(4, 300, 64), dtype=np.uint8)
    arr = read_image(f"{url}/vol.mrc").data
    before = stats.requests
    np.testing.assert_array_equal(arr[2, 10:20, 3:9], data[2, 10:20, 3:9])
    assert stats.requests - before == 1  # one band of rows, one range
    before = stats.requests
    np.testing.assert_array_equal(arr[2, 0:BAND_ROWS, :], data[2, 0:BAND_ROWS])
    assert stats.requests == before  # kept
    np.testing.assert_array_equal(arr[1], data[1])
    assert stats.requests - before == -(-300 // BAND_ROWS)  # the whole slice: its 5 bands


def test_a_restoration_of_a_region_by_url_is_the_local_one(served, lazy_from_any_size, tiny_model):
    from napari_emdiffuse.api import restore

    folder, url = served
    data = _volume(folder / "vol.mrc", shape=(3, 120, 100), dtype=np.uint8)
    kw = dict(steps=1, tile=32, overlap=8, device="cpu", region=(40, 80, 10, 60))
    by_url = restore(read_image(f"{url}/vol.mrc").data, "denoise", tiny_model, **kw)
    local = restore(data, "denoise", tiny_model, **kw)
    np.testing.assert_array_equal(by_url.mean, local.mean)


def test_small_compressed_or_unranged_files_are_fetched_whole(served_any, monkeypatch, tmp_path, request):
    import gzip

    folder, url = served_any
    monkeypatch.setenv("EMDIFFUSE_HOME", str(tmp_path / "home"))
    data = _volume(folder / "vol.mrc", shape=(2, 40, 30))
    (folder / "packed.mrc").write_bytes(gzip.compress((folder / "vol.mrc").read_bytes()))
    small = read_image(f"{url}/vol.mrc")  # below LAZY_MIN_BYTES: fetched and kept
    assert isinstance(small.data, np.ndarray) and "fetched" in small.note
    monkeypatch.setattr(rawurl, "LAZY_MIN_BYTES", 0)
    ranged = request.node.callspec.params["served_any"] == "ranges"
    size = (folder / "vol.mrc").stat().st_size
    assert rawurl.large_and_ranged(f"{url}/vol.mrc", size) == ranged  # a server that sends whole files: fetched whole
    for name in ("vol.mrc", "packed.mrc"):
        img = read_image(f"{url}/{name}")
        assert isinstance(img.data, RawUrlArray) == (ranged and name == "vol.mrc")
        np.testing.assert_array_equal(np.asarray(img.data[1]), data[1])


def test_imod_unsigned_bytes_and_bad_files_by_url(served, lazy_from_any_size):
    folder, url = served
    data = (np.arange(2 * 70 * 20) % 256).astype(np.uint8).reshape(2, 70, 20)
    imod_bytes(folder / "bytes.mrc", data, flags=0)  # IMOD's stamp: mode-0 bytes are unsigned
    arr = read_image(f"{url}/bytes.mrc").data
    assert arr.dtype == np.uint8 and int(arr[1].max()) > 127
    np.testing.assert_array_equal(arr[1, 5:60], data[1, 5:60])
    raw = (folder / "bytes.mrc").read_bytes()
    (folder / "cut.mrc").write_bytes(raw[: len(raw) - 100])
    with pytest.raises(InputError, match="truncated"):
        read_mrc_url(f"{url}/cut.mrc")
    (folder / "junk.mrc").write_bytes(b"x" * 2000)
    with pytest.raises(InputError, match="not an MRC file"):
        read_mrc_url(f"{url}/junk.mrc")


def test_a_tiff_stack_by_url_reads_as_the_local_file(served, lazy_from_any_size):
    """ImageJ and tifffile stacks keep their pixels in one uncompressed run: read by byte
    range, big-endian too. A stack without their metadata, compressed or not, is fetched
    whole (control: the same pixels)."""
    import tifffile

    folder, url = served
    data = (np.arange(4 * 130 * 70) % 65000).astype(np.uint16).reshape(4, 130, 70)
    tifffile.imwrite(folder / "ij.tif", data, imagej=True, resolution=(1 / 0.004, 1 / 0.004),
                     metadata={"spacing": 0.03, "unit": "um", "axes": "ZYX"})
    tifffile.imwrite(folder / "big.tif", data.astype(">f4"), byteorder=">")
    tifffile.imwrite(folder / "zip.tif", data, compression="zlib")
    for name in ("ij.tif", "big.tif"):
        img = read_image(f"{url}/{name}")
        assert isinstance(img.data, RawUrlArray) and "by byte range" in img.note, name
        local = read_image(folder / name)
        assert img.spacing == local.spacing and img.axes == local.axes and img.data.dtype == local.data.dtype
        for key in (np.s_[2], np.s_[1:3, 60:129, 7:30], np.s_[3, ::-5, 2]):
            np.testing.assert_array_equal(img.data[key], np.asarray(local.data)[key], err_msg=f"{name} {key}")
    assert read_image(f"{url}/ij.tif").spacing == (30.0, 4.0, 4.0)
    again = open_source(*source_of(read_image(f"{url}/ij.tif").data))
    np.testing.assert_array_equal(again[1, 3:9], data[1, 3:9])
    with tifffile.TiffWriter(folder / "plain.tif") as tw:  # no stack metadata: every page's tags to walk
        for page in data:
            tw.write(page, metadata=None)
    plain = read_image(f"{url}/plain.tif")  # a stack no metadata describes: its pages' tags walked, kept
    assert isinstance(plain.data, TiffArray) and "by byte range" in plain.note
    np.testing.assert_array_equal(plain.data[2, 5:50], data[2, 5:50])
    np.testing.assert_array_equal(np.asarray(plain.data[...]), data)
    rgb = np.stack([data[:, :, :, None].astype(np.uint8)] * 3, axis=-1)[..., 0, :]  # colour: fetched whole
    tifffile.imwrite(folder / "rgb.tif", rgb, photometric="rgb")
    whole = read_image(f"{url}/rgb.tif")
    assert isinstance(whole.data, np.ndarray) and "fetched" in whole.note
    tifffile.imwrite(folder / "one.tif", data[1], metadata=None)  # one image: its layout is its first page's
    one = read_image(f"{url}/one.tif")
    assert isinstance(one.data, RawUrlArray)
    np.testing.assert_array_equal(one.data[60:129, 7:30], data[1, 60:129, 7:30])
    deep = read_image(f"{url}/zip.tif")  # tifffile writes a compressed volume as one deep page
    assert isinstance(deep.data, TiffArray)
    np.testing.assert_array_equal(deep.data[2, 5:9], data[2, 5:9])


def test_a_compressed_stack_by_url_is_read_a_page_at_a_time(served_counted, lazy_from_any_size):
    """A compressed ImageJ stack (a page per slice, as Fiji saves one): every page's tags
    fetched once, about one request a page (walked twice: they are kept), then a slice costs
    about its own page's bytes; the local file's pixels, pixel size and axes; a worker opens
    the URL itself."""
    import tifffile

    folder, url, stats = served_counted
    rng = np.random.default_rng(1)
    data = rng.integers(0, 60000, (24, 400, 320), dtype=np.uint16)  # noise: incompressible, so bytes tell
    tifffile.imwrite(folder / "ijzip.tif", data, imagej=True, compression="zlib", resolution=(1 / 0.004, 1 / 0.004),
                     metadata={"spacing": 0.03, "unit": "um", "axes": "ZYX"})  # fmt: skip
    size = (folder / "ijzip.tif").stat().st_size
    before = stats.requests
    img = read_image(f"{url}/ijzip.tif")
    assert isinstance(img.data, TiffArray) and "by byte range" in img.note
    assert stats.requests - before <= 24 + 8 and stats.bytes < size / 8  # the tags, not the pixels
    local = read_image(folder / "ijzip.tif")
    assert (img.spacing, img.axes, img.data.shape) == (local.spacing, local.axes, data.shape) == ((30.0, 4.0, 4.0), "ZYX", data.shape)
    before = stats.bytes
    np.testing.assert_array_equal(img.data[17], data[17])
    assert stats.bytes - before < 1.5 * size / 24  # one page's strips
    for key in (np.s_[3:20:4, 50:90, ::-3], np.s_[-1, 399, :]):
        np.testing.assert_array_equal(img.data[key], data[key])
    again = open_source(*source_of(img.data))  # a cluster worker
    np.testing.assert_array_equal(pickle.loads(pickle.dumps(again))[5, 7:9], data[5, 7:9])
    (folder / "cut.tif").write_bytes((folder / "ijzip.tif").read_bytes()[: size // 2])
    with pytest.raises(InputError, match="cannot read '.*cut.tif': "):
        read_image(f"{url}/cut.tif")


def test_compressed_and_tiled_tiffs_by_url_read_only_the_parts_a_run_needs(served_counted, lazy_from_any_size,
                                                                          tiny_model):
    """A tiled, compressed image (as tifffile and Bio-Formats write large montages), an
    LZW-compressed one in strips and a tiled OME-TIFF pyramid: the local file's pixels and
    pixel size, a part of them for a small fraction of the file, a worker opening the URL
    itself, and a region restored as from the local file."""
    import tifffile

    from napari_emdiffuse.api import restore

    folder, url, stats = served_counted
    rng = np.random.default_rng(0)
    image = rng.integers(0, 255, (2048, 4096), dtype=np.uint8)  # noise: incompressible, so bytes tell
    tifffile.imwrite(folder / "tiled.tif", image, tile=(128, 128), compression="zlib", resolution=(1e7 / 4, 1e7 / 4),
                     resolutionunit="CENTIMETER")  # fmt: skip
    strips = rng.integers(0, 60000, (96, 80), dtype=np.uint16)
    tifffile.imwrite(folder / "lzw.tif", strips, compression="lzw", rowsperstrip=16, metadata=None)
    with tifffile.TiffWriter(folder / "pyr.ome.tif") as tw:
        tw.write(image, tile=(128, 128), compression="zlib", subifds=1, metadata={"axes": "YX"})
        tw.write(image[::2, ::2], tile=(128, 128), compression="zlib", subfiletype=1)
    for name, want in (("tiled.tif", image), ("lzw.tif", strips), ("pyr.ome.tif", image)):
        img = read_image(f"{url}/{name}")
        assert isinstance(img.data, TiffArray) and "by byte range" in img.note, name
        assert img.data.shape == want.shape and img.data.dtype == want.dtype
        for key in (np.s_[..., 100:200, 30:95], np.s_[..., ::-7, 3], np.s_[-1]):
            np.testing.assert_array_equal(img.data[key], want[key], err_msg=f"{name} {key}")
    assert read_image(f"{url}/tiled.tif").spacing == read_image(folder / "tiled.tif").spacing == (4.0, 4.0)
    size = (folder / "tiled.tif").stat().st_size
    fresh = read_image(f"{url}/tiled.tif").data
    before = stats.bytes
    np.testing.assert_array_equal(fresh[1010:1060, 2010:2060], image[1010:1060, 2010:2060])  # one tile
    assert 0 < stats.bytes - before <= size / 4  # its block of 1 MB, of the 8 MB
    again = open_source(*source_of(fresh))  # a cluster worker
    assert isinstance(again, TiffArray) and again.url
    np.testing.assert_array_equal(pickle.loads(pickle.dumps(fresh))[300:310, 4000:], image[300:310, 4000:])
    # damaged files: one line each, before any pixel is read
    raw = (folder / "tiled.tif").read_bytes()
    (folder / "cut.tif").write_bytes(raw[: len(raw) // 2])
    (folder / "junk.tif").write_bytes(b"II*\x00" + b"\xff" * 4000)
    (folder / "text.tif").write_bytes(b"hello world" * 300)
    for name, why in (("cut.tif", "its pixels are truncated"), ("junk.tif", "not a readable TIFF file"),
                      ("text.tif", "not a readable TIFF file")):
        with pytest.raises(InputError, match=why):
            read_image(f"{url}/{name}")
    kw = dict(steps=1, tile=32, overlap=8, device="cpu", region=(100, 180, 200, 290))
    by_url = restore(read_image(f"{url}/tiled.tif").data, "denoise", tiny_model, **kw)
    np.testing.assert_array_equal(by_url.mean, restore(image, "denoise", tiny_model, **kw).mean)


def test_a_thermo_fisher_scan_by_url_is_read_without_its_data_bar(served, lazy_from_any_size):
    """The console's bar is cut off lazily: only the scan's rows are read."""
    import tifffile

    folder, url = served
    scan = (np.arange(140 * 10) % 200 + 20).astype(np.uint8).reshape(140, 10)
    bar = np.zeros((3, 10), np.uint8)
    bar[1, 2:8] = 255
    fei = "[Image]\r\nResolutionX=10\r\nResolutionY=140\r\n\r\n[PrivateFei]\r\nDatabarHeight=3\r\n\r\n[Scan]\r\nPixelWidth=5e-09\r\n"
    tifffile.imwrite(folder / "helios.tif", np.concatenate([scan, bar]), extratags=[(34682, "B", 0, fei.encode(), True)])
    img = read_image(f"{url}/helios.tif")
    assert img.data.shape == (140, 10) and img.spacing == (5.0, 5.0)
    assert img.note.startswith("the microscope's data bar (3 rows at the bottom) is left out; ")
    np.testing.assert_array_equal(img.data[...], scan)
    np.testing.assert_array_equal(img.data[100:140], scan[100:140])
