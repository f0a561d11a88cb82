"""Large compressed or tiled TIFFs are read lazily (TiffArray): a page or tile is decoded when
an index needs it, so a multi-GB compressed stack does not have to fit in memory."""

from __future__ import annotations

import itertools
import pickle

import numpy as np
import pytest
import tifffile

from napari_emdiffuse.engine.io import tiff
from napari_emdiffuse.engine.io.images import read_image
from napari_emdiffuse.engine.io.sources import open_source, source_of
from napari_emdiffuse.engine.io.tiff import TiffArray


@pytest.fixture
def stack():
    return (np.random.default_rng(5).random((6, 40, 48)) * 255).astype(np.uint8)


def test_a_large_compressed_stack_is_read_lazily_with_its_calibration(tmp_path, stack, monkeypatch):
    path = tmp_path / "fib.tif"
    tifffile.imwrite(path, stack, imagej=True, resolution=(1 / 5, 1 / 5), compression="zlib",
                     metadata={"unit": "nm", "spacing": 15.0, "axes": "ZYX"})  # fmt: skip
    assert isinstance(read_image(path).data, np.ndarray)  # the control: small files are loaded
    monkeypatch.setattr(tiff, "TIFF_MMAP_MIN_BYTES", 1000)
    img = read_image(path)
    assert isinstance(img.data, TiffArray) and img.spacing == (15.0, 5.0, 5.0) and img.axes == "ZYX"
    for key in itertools.product([0, -1, slice(None), slice(None, None, -2)], [3, slice(5, 30, 4)], [slice(None), slice(40, 2, -3)]):
        assert np.array_equal(img.data[key], stack[key]), key
    assert np.array_equal(np.asarray(img.data), stack)
    assert np.array_equal(pickle.loads(pickle.dumps(img.data))[4], stack[4])  # reopens the file
    where = source_of(img.data)
    assert where == (str(path.resolve()), "", (), ())
    assert np.array_equal(np.asarray(open_source(*where)), stack)


def test_a_large_tiled_image_reads_only_its_tiles(tmp_path, monkeypatch):
    image = (np.arange(96 * 128) % 251).astype(np.uint8).reshape(96, 128)
    path = tmp_path / "montage.tif"
    tifffile.imwrite(path, image, tile=(32, 32), compression="zlib")
    monkeypatch.setattr(tiff, "TIFF_MMAP_MIN_BYTES", 1000)
    img = read_image(path)
    assert isinstance(img.data, TiffArray) and img.data.chunks == (32, 32)
    assert np.array_equal(img.data[40:70, 100:5:-7], image[40:70, 100:5:-7])


def test_a_lazy_tiff_restores_in_place_on_workers(tmp_path, stack, monkeypatch, tiny_model_dir):
    """A cluster run reads the file itself (no staged copy) and writes what one process writes."""
    import zarr

    from napari_emdiffuse.api import restore_to_zarr, restore_to_zarr_iter

    path = tmp_path / "fib.tif"
    tifffile.imwrite(path, stack, compression="zlib")
    monkeypatch.setattr(tiff, "TIFF_MMAP_MIN_BYTES", 1000)
    data = read_image(path).data
    kw = dict(block=32, steps=2, tile=32, overlap=8, device="cpu", z_filter="off")
    restore_to_zarr(stack, tmp_path / "one.zarr", "denoise", str(tiny_model_dir), **kw)
    events = list(restore_to_zarr_iter(data, tmp_path / "two.zarr", "denoise", str(tiny_model_dir), workers=2, **kw))
    assert not any("copying the input" in (e.message or "") for e in events[:-1])
    one = zarr.open_array(str(tmp_path / "one.zarr"), mode="r")[:]
    two = zarr.open_array(str(tmp_path / "two.zarr"), mode="r")[:]
    assert np.abs(one.astype(int) - two.astype(int)).max() <= 1


def test_a_damaged_page_of_a_lazy_tiff_is_refused_in_one_line(tmp_path, stack, monkeypatch):
    from napari_emdiffuse.engine.errors import InputError

    path = tmp_path / "fib.tif"
    tifffile.imwrite(path, stack, compression="zlib")
    with tifffile.TiffFile(path) as tif:
        offset = tif.pages[3].dataoffsets[0]
    raw = bytearray(path.read_bytes())
    raw[offset : offset + 64] = bytes(64)  # zeros where page 3's deflate stream starts
    path.write_bytes(bytes(raw))
    monkeypatch.setattr(tiff, "TIFF_MMAP_MIN_BYTES", 1000)
    img = read_image(path)
    assert np.array_equal(img.data[2], stack[2])  # the control: other pages read
    with pytest.raises(InputError, match="fib.tif") as exc:
        img.data[3]
    assert "\n" not in str(exc.value)


def test_a_lazy_stack_is_written_page_by_page_and_a_lazy_colour_image_whole(tmp_path):
    import dask.array as da

    from napari_emdiffuse.engine.io.images import write_image

    stack = (np.random.default_rng(6).random((4, 20, 30)) * 255).astype(np.uint8)
    write_image(tmp_path / "st.tif", da.from_array(stack, chunks=(1, 20, 30)), spacing=(30.0, 5.0, 5.0))
    got = read_image(tmp_path / "st.tif")
    assert np.array_equal(got.data, stack) and got.spacing == (30.0, 5.0, 5.0) and got.axes == "ZYX"
    rgb = (np.random.default_rng(7).random((20, 30, 3)) * 255).astype(np.uint8)  # YXS: one page, not 20
    write_image(tmp_path / "rgb.tif", da.from_array(rgb), axes="YXS")
    assert np.array_equal(tifffile.imread(tmp_path / "rgb.tif"), rgb)


def test_a_lazy_2d_image_is_written_as_tiles_or_bands_from_the_stream_size_and_whole_below_it(tmp_path, monkeypatch):
    """A montage of 2 GiB or more (here the threshold lowered): TIFF tiles and MRC row bands,
    the pixels, pixel size and MRC header statistics exact; below the threshold, one ImageJ page."""
    import dask.array as da
    import mrcfile

    from napari_emdiffuse.engine.io import common
    from napari_emdiffuse.engine.io.images import write_image

    image = (np.random.default_rng(8).random((700, 530)) * 255).astype(np.uint8)
    lazy = da.from_array(image, chunks=(100, 530))
    write_image(tmp_path / "small.tif", lazy, spacing=(5.0, 5.0))
    with tifffile.TiffFile(tmp_path / "small.tif") as tif:
        assert tif.is_imagej and not tif.pages[0].is_tiled
    monkeypatch.setattr(common, "STREAM_2D_MIN_BYTES", image.nbytes)
    write_image(tmp_path / "big.tif", lazy, spacing=(5.0, 5.0), unit="nm")
    write_image(tmp_path / "big.mrc", lazy, spacing=(5.0, 5.0), unit="nm")
    with tifffile.TiffFile(tmp_path / "big.tif") as tif:
        assert tif.pages[0].is_tiled and not tif.is_imagej
    for name in ("big.tif", "big.mrc", "small.tif"):
        got = read_image(tmp_path / name)
        assert np.array_equal(np.asarray(got.data), image) and got.spacing == pytest.approx((5.0, 5.0)), name
    with mrcfile.open(tmp_path / "big.mrc") as mrc:  # 3 bands of 256 rows: the sums add up
        values = image.astype(np.float64)
        assert (mrc.header.dmin, mrc.header.dmax) == (image.min(), image.max())
        assert mrc.header.dmean == pytest.approx(values.mean()) and mrc.header.rms == pytest.approx(values.std())


@pytest.mark.parametrize("compression", ["lzw", "jpeg", "zstd", "packbits"])
def test_tiffs_compressed_as_fiji_bio_formats_and_cameras_save_them_are_read(tmp_path, compression):
    """LZW (Fiji, Bio-Formats exports), JPEG (camera software) and zstd need the codecs tifffile
    leaves to imagecodecs; without it such a file was refused."""
    image = np.tile(np.arange(0, 250, 10, dtype=np.uint8), (20, 2))  # smooth: JPEG keeps it within a level
    tifffile.imwrite(tmp_path / "c.tif", image, compression=compression)
    got = np.asarray(read_image(tmp_path / "c.tif").data).astype(int)
    assert got.shape == image.shape and np.abs(got - image).max() <= (3 if compression == "jpeg" else 0)


def test_a_colour_preview_before_the_greyscale_image_is_skipped(tmp_path, monkeypatch):
    """Olympus / EMSIS TEM cameras save a JPEG colour preview, then the 16-bit image (HyperSpy's
    olympus_SIS.tif is laid out so): the image is read, lazily too; a colour picture alone is
    still refused."""
    from napari_emdiffuse.engine.errors import InputError

    image = (np.random.default_rng(9).random((30, 40)) * 60000).astype(np.uint16)
    preview = (np.random.default_rng(10).random((30, 40, 3)) * 255).astype(np.uint8)
    path = tmp_path / "sis.tif"
    with tifffile.TiffWriter(path) as tw:
        tw.write(preview, photometric="rgb")
        tw.write(image, photometric="minisblack", compression="zlib")
    got = read_image(path)
    assert got.data.dtype == np.uint16 and np.array_equal(np.asarray(got.data), image)
    monkeypatch.setattr(tiff, "TIFF_MMAP_MIN_BYTES", 1)  # as if it were large: read lazily, the same series
    lazy = read_image(path).data
    assert isinstance(lazy, tiff.TiffArray) and np.array_equal(lazy[5:9, ::-1], image[5:9, ::-1])
    assert np.array_equal(np.asarray(open_source(*source_of(lazy))[:]), image)  # as a cluster worker opens it
    tifffile.imwrite(tmp_path / "rgb.tif", preview, photometric="rgb")
    with pytest.raises(InputError, match="colour image"):
        read_image(tmp_path / "rgb.tif")


def test_a_worker_thread_reopens_a_tiff_by_url_without_walking_its_pages_again(served_counted, monkeypatch):
    """Opening a compressed stack by URL walks every page's tags (a request each); the tasks a
    worker's thread runs one after another reuse its walk (one request to see the file is the
    same), another thread walks its own; one whose kept blocks outgrew their disk budget, or a
    file replaced by one of another size, is opened anew, and read as it is now."""
    import threading

    folder, url, stats = served_counted
    vol = (np.random.default_rng(0).random((40, 160, 160)) * 255).astype(np.uint8)  # pages far apart
    tifffile.imwrite(folder / "s.tif", vol, compression="zlib", imagej=True)
    where = source_of(TiffArray(f"{url}/s.tif"))
    before = stats.requests
    first = open_source(*where)
    walk = stats.requests - before
    assert walk >= 30 and np.array_equal(first[20], vol[20])
    before = stats.requests
    again = open_source(*where)
    assert again is first and stats.requests - before == 1 and np.array_equal(again[21], vol[21])
    other = []
    thread = threading.Thread(target=lambda: other.append(open_source(*where)))
    thread.start()
    thread.join()
    assert other[0] is not first
    from napari_emdiffuse.engine.io import sources

    assert 0 < first.kept_bytes < 2 << 20  # the tags and two slices, in 16 kB blocks
    monkeypatch.setattr(sources, "KEPT_URL_TIFF_BYTES", first.kept_bytes - 1)  # its disk budget spent: anew
    assert open_source(*where) is not first
    monkeypatch.undo()
    tifffile.imwrite(folder / "s.tif", vol[:30], compression="zlib", imagej=True)  # replaced: 30 pages
    fresh = open_source(*where)
    assert fresh is not first and fresh.shape == (30, 160, 160)
