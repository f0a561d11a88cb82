"""Tests for napari_emdiffuse.engine.io: TIFF/zarr reading and atomic writing."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import dask.array as da
import numpy as np
import pytest
import tifffile
import zarr

from napari_emdiffuse.engine.errors import InputError
from napari_emdiffuse.engine.io import tiff
from napari_emdiffuse.engine.io.common import ImageData, check_output_path
from napari_emdiffuse.engine.io.images import image_names, read_image, write_image
from napari_emdiffuse.engine.io.tiff import write_tiff
from napari_emdiffuse.engine.io.zarr import ZarrWriter, is_complete, open_zarr_for_block_writes
from tests.conftest import ROOT

SRC = str(ROOT / "src")


def _one_line(exc: pytest.ExceptionInfo) -> str:
    msg = str(exc.value)
    assert "\n" not in msg
    return msg


def _leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if ".partial" in p.name or ".old-" in p.name)


def _random(shape, dtype, seed=0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    if np.dtype(dtype).kind == "f":
        return rng.standard_normal(shape).astype(dtype)
    info = np.iinfo(dtype)
    return rng.integers(info.min, info.max, size=shape, dtype=dtype, endpoint=True)


# ---------------------------------------------------------------------------------------------
# TIFF round trips


@pytest.mark.parametrize("dtype", ["uint8", "uint16", "float32", "float64"])
@pytest.mark.parametrize(
    ("shape", "axes", "spacing"),
    [((17, 23), "YX", (3.7, 4.1)), ((5, 17, 23), "ZYX", (50.0, 3.7, 4.1))],
)
def test_tiff_round_trip(tmp_path, dtype, shape, axes, spacing):
    array = _random(shape, dtype)
    out = write_tiff(tmp_path / "img.tif", array, spacing=spacing, axes=axes)
    assert out == tmp_path / "img.tif"
    img = read_image(out)
    assert isinstance(img, ImageData)
    assert isinstance(img.data, np.ndarray)
    assert img.data.dtype == array.dtype
    np.testing.assert_array_equal(img.data, array)
    assert img.axes == axes
    assert img.unit == "nm"
    np.testing.assert_allclose(img.spacing, spacing, rtol=1e-6)
    assert img.path == out
    assert _leftovers(tmp_path) == []


def test_tiff_default_axes_and_no_spacing(tmp_path):
    array = _random((4, 9, 11), "uint16")
    img = read_image(write_tiff(tmp_path / "v.tiff", array))
    assert img.axes == "ZYX"
    assert img.spacing is None and img.unit is None
    np.testing.assert_array_equal(img.data, array)


def test_write_tiff_other_dtypes_keep_type(tmp_path):
    array = _random((3, 8, 8), "int16")
    img = read_image(write_tiff(tmp_path / "i.tif", array, spacing=(2, 1, 1)))
    assert img.data.dtype == np.int16
    np.testing.assert_array_equal(img.data, array)
    assert img.spacing == (2.0, 1.0, 1.0)


def test_read_imagej_tiff_made_by_tifffile(tmp_path):
    path = tmp_path / "ij.tif"
    tifffile.imwrite(
        path,
        np.zeros((5, 16, 16), np.uint16),
        imagej=True,
        resolution=(1 / 4, 1 / 4),
        metadata={"spacing": 50, "unit": "nm", "axes": "ZYX"},
    )
    img = read_image(path)
    assert img.spacing == (50.0, 4.0, 4.0)
    assert img.unit == "nm"
    assert img.axes == "ZYX"


@pytest.mark.parametrize("unit", ["um", "micron", "\\u00B5m"])
def test_imagej_micrometres_become_nm(tmp_path, unit):
    path = tmp_path / "um.tif"
    tifffile.imwrite(
        path,
        np.zeros((3, 8, 8), np.uint8),
        imagej=True,
        resolution=(1 / 0.004, 1 / 0.004),
        metadata={"spacing": 0.05, "unit": unit, "axes": "ZYX"},
    )
    img = read_image(path)
    assert img.unit == "nm"
    np.testing.assert_allclose(img.spacing, (50.0, 4.0, 4.0), rtol=1e-6)


@pytest.mark.parametrize("unit", ["um", "µm"])
def test_write_tiff_micrometres_read_back_as_nm(tmp_path, unit):
    for dtype in ("float32", "float64"):  # ImageJ and JSON-description paths
        path = write_tiff(
            tmp_path / f"{dtype}.tif",
            np.zeros((3, 8, 8), dtype),
            spacing=(0.05, 0.0037, 0.0037),
            unit=unit,
        )
        img = read_image(path)
        assert img.unit == "nm"
        np.testing.assert_allclose(img.spacing, (50.0, 3.7, 3.7), rtol=1e-6)


def test_unknown_unit_is_kept(tmp_path):
    path = write_tiff(tmp_path / "q.tif", np.zeros((8, 8)), spacing=(2, 3), unit="furlong")
    img = read_image(path)
    assert img.spacing == (2.0, 3.0)
    assert img.unit == "furlong"


def test_read_ome_tiff(tmp_path):
    path = tmp_path / "x.ome.tif"
    tifffile.imwrite(
        path,
        np.zeros((4, 8, 8), np.uint8),
        ome=True,
        photometric="minisblack",
        metadata={
            "axes": "ZYX",
            "PhysicalSizeX": 0.004,
            "PhysicalSizeXUnit": "µm",
            "PhysicalSizeY": 0.004,
            "PhysicalSizeZ": 0.05,
        },
    )
    img = read_image(path)
    assert img.axes == "ZYX"
    assert img.unit == "nm"
    np.testing.assert_allclose(img.spacing, (50.0, 4.0, 4.0), rtol=1e-6)


def test_plain_resolution_tags(tmp_path):
    cm = tmp_path / "cm.tif"
    tifffile.imwrite(
        cm,
        np.zeros((8, 8), np.uint8),
        photometric="minisblack",
        resolution=(1e6, 1e6),
        resolutionunit="CENTIMETER",
        metadata=None,
    )
    img = read_image(cm)
    assert img.spacing == (10.0, 10.0) and img.unit == "nm"
    assert img.axes is None
    # 72 dpi is an image editor's default, not a calibration.
    dpi = tmp_path / "dpi.tif"
    tifffile.imwrite(
        dpi,
        np.zeros((8, 8), np.uint8),
        photometric="minisblack",
        resolution=(72, 72),
        resolutionunit="INCH",
        metadata=None,
    )
    assert read_image(dpi).spacing is None


def test_leading_singleton_axes_are_squeezed(tmp_path):
    path = tmp_path / "tczyx.tif"
    array = _random((1, 1, 3, 8, 8), "float32")
    tifffile.imwrite(path, array, photometric="minisblack", metadata={"axes": "TCZYX"})
    img = read_image(path)
    assert img.data.shape == (3, 8, 8)
    assert img.axes == "ZYX"


def _grey_ramp(shape=(24, 40)) -> np.ndarray:
    return (np.arange(np.prod(shape)) % 256).reshape(shape).astype(np.uint8)


@pytest.mark.parametrize("layout", ["chunky", "rgba", "imagej", "stack"])
def test_grey_tiff_saved_as_rgb_reads_as_grey(tmp_path, layout):
    grey = _grey_ramp()
    path = tmp_path / "rgb.tif"
    rgb = np.stack([grey] * 3, axis=-1)
    if layout == "chunky":
        tifffile.imwrite(path, rgb, photometric="rgb")
    elif layout == "rgba":
        alpha = np.full(grey.shape + (1,), 255, np.uint8)
        tifffile.imwrite(path, np.concatenate([rgb, alpha], -1), photometric="rgb", extrasamples=["unassalpha"])
    elif layout == "imagej":
        tifffile.imwrite(path, rgb, photometric="rgb", imagej=True, resolution=(250.0, 250.0), metadata={"unit": "um"})
    else:
        tifffile.imwrite(path, np.stack([rgb, rgb[::-1]]), photometric="rgb")
    img = read_image(path)
    want = np.stack([grey, grey[::-1]]) if layout == "stack" else grey
    np.testing.assert_array_equal(img.data, want)
    if layout == "imagej":
        assert img.axes == "YX" and img.spacing == pytest.approx((4.0, 4.0)) and img.unit == "nm"


def test_three_slice_volume_that_tifffile_calls_planar_rgb_stays_a_volume(tmp_path):
    # tifffile writes a (3, Y, X) uint8 array as planar RGB unless told otherwise
    vol = np.stack([_grey_ramp(), _grey_ramp()[::-1], _grey_ramp() // 2])
    tifffile.imwrite(tmp_path / "vol.tif", vol)
    with tifffile.TiffFile(tmp_path / "vol.tif") as tif:
        assert tif.series[0].axes == "SYX"  # the premise: the file says "samples"
    np.testing.assert_array_equal(read_image(tmp_path / "vol.tif").data, vol)


def test_colour_tiff_is_refused_in_one_line(tmp_path):
    grey = _grey_ramp()
    tifffile.imwrite(tmp_path / "colour.tif", np.stack([grey, grey[::-1], grey], -1), photometric="rgb")
    with pytest.raises(InputError, match="colour image") as exc:
        read_image(tmp_path / "colour.tif")
    assert "\n" not in str(exc.value)


def test_large_tiff_is_memory_mapped_read_only(tmp_path, monkeypatch):
    array = _random((3, 8, 8), "uint16")
    path = write_tiff(tmp_path / "m.tif", array, spacing=(5, 1, 1))
    monkeypatch.setattr(tiff, "TIFF_MMAP_MIN_BYTES", 0)
    img = read_image(path)
    assert isinstance(img.data, np.memmap)
    assert not img.data.flags.writeable
    np.testing.assert_array_equal(img.data, array)
    assert img.spacing == (5.0, 1.0, 1.0)


# ---------------------------------------------------------------------------------------------
# reading errors


def test_missing_file(tmp_path):
    with pytest.raises(InputError) as exc:
        read_image(tmp_path / "nope.tif")
    msg = _one_line(exc)
    assert "nope.tif" in msg and "not found" in msg


def test_random_bytes_tiff(tmp_path):
    path = tmp_path / "x.tif"
    path.write_bytes(np.random.default_rng(1).bytes(1000))
    with pytest.raises(InputError) as exc:
        read_image(path)
    msg = _one_line(exc)
    assert msg.startswith(f"cannot read '{path}':")


@pytest.mark.parametrize("imagej", [True, False])
def test_truncated_tiff(tmp_path, imagej):
    full = tmp_path / "full.tif"
    kwargs = {"imagej": True} if imagej else {"photometric": "minisblack", "metadata": None}
    tifffile.imwrite(full, _random((6, 64, 64), "uint8"), **kwargs)
    raw = full.read_bytes()
    cut = tmp_path / "cut.tif"
    cut.write_bytes(raw[: len(raw) // 2])
    # tifffile alone would silently return only the first page here.
    with pytest.raises(InputError) as exc:
        read_image(cut)
    msg = _one_line(exc)
    assert str(cut) in msg and ("truncated" in msg or "failed" in msg)


@pytest.mark.parametrize("name", ["img.nd2", "img.lif", "noext"])
def test_unsupported_extension(tmp_path, name):
    path = tmp_path / name
    path.write_bytes(b"x")
    with pytest.raises(InputError) as exc:
        read_image(path)
    msg = _one_line(exc)
    assert "unsupported file type" in msg and ".tif/.tiff, .mrc (or .mrc.gz), .dm3/.dm4, .ser, .h5/.hdf5/.hdf/.emd/.hspy/.ims, .am, .czi, .png/.jpg/.bmp, .n5, .zarr or a neuroglancer precomputed volume" in msg
    assert name in msg


def test_tiff_path_that_is_a_folder(tmp_path):
    (tmp_path / "d.tif").mkdir()
    with pytest.raises(InputError):
        read_image(tmp_path / "d.tif")


# ---------------------------------------------------------------------------------------------
# zarr reading


def test_zarr_round_trip_is_lazy(tmp_path):
    array = _random((4, 10, 12), "uint16")
    out = write_image(tmp_path / "v.zarr", array, spacing=(30, 4, 4), axes="ZYX")
    assert is_complete(out)
    img = read_image(out)
    assert isinstance(img.data, zarr.Array)  # not loaded into memory
    assert not isinstance(img.data, np.ndarray)
    assert img.spacing == (30.0, 4.0, 4.0) and img.unit == "nm" and img.axes == "ZYX"
    np.testing.assert_array_equal(img.data[:], array)
    np.testing.assert_array_equal(da.from_zarr(str(out)).compute(), array)
    assert _leftovers(tmp_path) == []


def test_zarr_write_from_dask_blockwise(tmp_path):
    lazy = da.arange(10 * 20 * 30, dtype=np.float32).reshape(10, 20, 30).rechunk((3, 7, 30))
    out = write_image(tmp_path / "d.zarr", lazy, spacing=(1, 2, 3), unit="um")
    img = read_image(out)
    assert img.data.chunks == (3, 7, 30)
    np.testing.assert_array_equal(img.data[:], lazy.compute())
    assert img.spacing == (1000.0, 2000.0, 3000.0) and img.unit == "nm"


def _make_group(path: Path) -> zarr.Group:
    group = zarr.open_group(str(path), mode="w")
    group.create_array("a", shape=(4, 4), dtype="uint8")
    group.create_array("b", shape=(2, 4, 4), dtype="uint8")
    return group


def test_zarr_group_needs_key_when_ambiguous(tmp_path):
    path = tmp_path / "g.zarr"
    _make_group(path)
    with pytest.raises(InputError) as exc:
        read_image(path)
    msg = _one_line(exc)
    assert "a, b" in msg and msg.endswith(f"choose one, e.g. '{path}/a'")
    assert image_names(path) == [f"{path}/a", f"{path}/b"]  # what `emdiffuse info` lists
    assert image_names(path / "a") == [str(path / "a")]
    assert read_image(path, key="b").data.shape == (2, 4, 4)
    assert read_image(path / "a").data.shape == (4, 4)
    with pytest.raises(InputError) as exc:
        read_image(path, key="missing")
    assert "missing" in _one_line(exc)


def _scale(*values: float) -> dict:
    return {"type": "scale", "scale": list(values)}


def test_zarr_group_default_array_and_ngff_scale(tmp_path):
    path = tmp_path / "ngff.zarr"
    group = zarr.open_group(str(path), mode="w")
    group.create_array("0", shape=(3, 8, 8), dtype="float32")
    group.create_array("1", shape=(3, 4, 4), dtype="float32")
    group.attrs["multiscales"] = [
        {
            "version": "0.4",
            "axes": [
                {"name": "z", "type": "space", "unit": "micrometer"},
                {"name": "y", "type": "space", "unit": "micrometer"},
                {"name": "x", "type": "space", "unit": "micrometer"},
            ],
            "datasets": [
                {"path": "0", "coordinateTransformations": [_scale(0.05, 0.004, 0.004)]},
                {"path": "1", "coordinateTransformations": [_scale(0.05, 0.008, 0.008)]},
            ],
        }
    ]
    img = read_image(path)
    assert img.data.shape == (3, 8, 8)
    assert img.unit == "nm" and img.axes == "ZYX"
    np.testing.assert_allclose(img.spacing, (50.0, 4.0, 4.0), rtol=1e-6)
    level1 = read_image(path, key="1")
    np.testing.assert_allclose(level1.spacing, (50.0, 8.0, 8.0), rtol=1e-6)


def test_zarr_errors(tmp_path):
    with pytest.raises(InputError) as exc:
        read_image(tmp_path / "none.zarr")
    assert "none.zarr" in _one_line(exc)
    (tmp_path / "empty.zarr").mkdir()
    with pytest.raises(InputError) as exc:
        read_image(tmp_path / "empty.zarr")
    assert "empty.zarr" in _one_line(exc)
    empty_group = tmp_path / "eg.zarr"
    zarr.open_group(str(empty_group), mode="w")
    with pytest.raises(InputError) as exc:
        read_image(empty_group)
    assert "no arrays" in _one_line(exc)


# ---------------------------------------------------------------------------------------------
# ZarrWriter


def test_zarr_writer_commit(tmp_path):
    final = tmp_path / "out.zarr"
    with ZarrWriter(
        final, (4, 8, 8), "float32", chunks=(1, 8, 8), spacing=(40, 4, 4), attrs={"model": "x"}
    ) as w:
        assert w.temp_path.parent == tmp_path
        assert w.temp_path.name.startswith("out.zarr.partial-")
        assert not final.exists()
        assert not is_complete(w.temp_path)
        w.array[1] = 1.0
    assert is_complete(final)
    assert not w.temp_path.exists()
    assert _leftovers(tmp_path) == []
    img = read_image(final)
    assert img.data[1].sum() == 64 and img.data[0].sum() == 0
    assert img.spacing == (40.0, 4.0, 4.0)
    assert img.data.attrs["model"] == "x"
    assert w.commit() == final  # idempotent


@pytest.mark.parametrize("exc_type", [RuntimeError, KeyboardInterrupt])
def test_zarr_writer_aborts_on_exception(tmp_path, exc_type):
    final = tmp_path / "out.zarr"
    with pytest.raises(exc_type):
        with ZarrWriter(final, (4, 4), "uint8") as w:
            w.array[:] = 3
            raise exc_type("boom")
    assert not final.exists()
    assert not w.temp_path.exists()
    assert list(tmp_path.iterdir()) == []


def test_zarr_writer_aborts_when_generator_closed(tmp_path):
    final = tmp_path / "gen.zarr"
    seen = {}

    def job():
        with ZarrWriter(final, (4, 4), "uint8") as w:
            seen["temp"] = w.temp_path
            for i in range(4):
                w.array[i] = i
                yield i

    gen = job()
    next(gen)
    gen.close()  # GeneratorExit inside the with block
    assert not final.exists() and not seen["temp"].exists()


def test_uncommitted_store_is_not_complete(tmp_path):
    final = tmp_path / "out.zarr"
    w = ZarrWriter(final, (4, 4), "uint8")
    w.array[:] = 7
    # no commit: simulates a crash
    assert not final.exists()
    assert not is_complete(w.temp_path)
    assert not is_complete(final)
    w.abort()
    assert not w.temp_path.exists()
    w.abort()  # harmless twice


def test_is_complete_rejects_other_things(tmp_path):
    assert not is_complete(tmp_path / "missing.zarr")
    plain = tmp_path / "plain.zarr"
    zarr.open_array(str(plain), mode="w", shape=(2, 2), dtype="uint8")
    assert not is_complete(plain)
    f = tmp_path / "f.tif"
    write_tiff(f, np.zeros((4, 4), np.uint8))
    assert not is_complete(f)


def test_zarr_writer_overwrite(tmp_path):
    final = tmp_path / "out.zarr"
    write_image(final, np.zeros((4, 4), np.uint8))
    with pytest.raises(InputError) as exc:
        ZarrWriter(final, (4, 4), "uint8")
    assert "already exists" in _one_line(exc)
    with pytest.raises(InputError):
        write_image(final, np.ones((4, 4), np.uint8), overwrite=False)

    w = ZarrWriter(final, (2, 3), "uint8", overwrite=True)
    w.array[:] = 5
    assert read_image(final).data.shape == (4, 4)  # old output untouched until commit
    w.commit()
    img = read_image(final)
    assert img.data.shape == (2, 3) and int(img.data[:].sum()) == 30
    assert is_complete(final)
    assert _leftovers(tmp_path) == []


def test_zarr_writer_abort_keeps_existing_output(tmp_path):
    final = tmp_path / "out.zarr"
    write_image(final, np.full((4, 4), 9, np.uint8))
    with pytest.raises(ValueError, match="boom"):
        with ZarrWriter(final, (4, 4), "uint8", overwrite=True):
            raise ValueError("boom")
    np.testing.assert_array_equal(read_image(final).data[:], np.full((4, 4), 9))


def test_other_process_can_write_blocks(tmp_path):
    final = tmp_path / "mp.zarr"
    with ZarrWriter(final, (4, 8, 8), "uint16", chunks=(2, 8, 8)) as w:
        script = textwrap.dedent(
            f"""
            import sys
            sys.path.insert(0, {SRC!r})
            import numpy as np, zarr
            from napari_emdiffuse.engine.io.zarr import open_zarr_for_block_writes
            a = zarr.open_array({str(w.temp_path)!r}, mode="r+")
            a[0:2] = 11
            b = open_zarr_for_block_writes({str(w.temp_path)!r})
            b[2:4] = 22
            """
        )
        subprocess.run([sys.executable, "-c", script], check=True, timeout=120)
    data = read_image(final).data[:]
    assert (data[0:2] == 11).all() and (data[2:4] == 22).all()


def test_open_zarr_for_block_writes_in_process(tmp_path):
    with ZarrWriter(tmp_path / "x.zarr", (2, 4), "uint8", chunks=(1, 4)) as w:
        open_zarr_for_block_writes(w.temp_path)[1] = 4
    assert int(read_image(tmp_path / "x.zarr").data[:].sum()) == 16


def test_array_after_commit_is_read_only_at_final_path(tmp_path):
    w = ZarrWriter(tmp_path / "r.zarr", (2, 2), "uint8")
    w.commit()
    with pytest.raises(Exception):
        w.array[:] = 1
    assert not w.temp_path.exists()


# ---------------------------------------------------------------------------------------------
# atomic TIFF writing


def test_write_tiff_failure_leaves_nothing(tmp_path, monkeypatch):
    def broken(*args, **kwargs):
        Path(args[0]).write_bytes(b"half a file")
        raise RuntimeError("disk exploded")

    monkeypatch.setattr(tifffile, "imwrite", broken)
    with pytest.raises(RuntimeError, match="disk exploded"):
        write_tiff(tmp_path / "out.tif", np.zeros((4, 4), np.uint8))
    assert list(tmp_path.iterdir()) == []


def test_write_tiff_failure_keeps_previous_file(tmp_path, monkeypatch):
    out = write_tiff(tmp_path / "out.tif", np.full((4, 4), 3, np.uint8))
    before = out.read_bytes()

    def broken(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(tifffile, "imwrite", broken)
    with pytest.raises(InputError) as exc:
        write_tiff(out, np.zeros((4, 4), np.uint8))
    assert "No space left" in _one_line(exc)
    assert out.read_bytes() == before
    assert _leftovers(tmp_path) == []


def test_write_tiff_temp_name_is_hidden_partial(tmp_path, monkeypatch):
    seen = []
    real = tifffile.imwrite

    def spy(file, *args, **kwargs):
        seen.append(Path(file))
        return real(file, *args, **kwargs)

    monkeypatch.setattr(tifffile, "imwrite", spy)
    write_tiff(tmp_path / "a.tif", np.zeros((4, 4), np.uint8))
    assert seen[0].parent == tmp_path
    assert seen[0].name.startswith(".") and ".partial" in seen[0].name
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.tif"]


def test_write_tiff_overwrites(tmp_path):
    out = write_tiff(tmp_path / "a.tif", np.zeros((4, 4), np.uint8))
    write_tiff(out, np.ones((5, 5), np.uint8))
    assert read_image(out).data.shape == (5, 5)


def test_write_tiff_rejects_bad_arguments(tmp_path):
    with pytest.raises(InputError):
        write_tiff(tmp_path / "a.tif", np.zeros((4, 4)), spacing=(1.0,))
    with pytest.raises(InputError):
        write_tiff(tmp_path / "a.tif", np.zeros((4, 4)), spacing=(1.0, -2.0))
    with pytest.raises(InputError):
        write_tiff(tmp_path / "a.tif", np.zeros((4, 4)), axes="ZYX")
    with pytest.raises(InputError):
        write_tiff(tmp_path / "a.tif", np.zeros(4))
    assert list(tmp_path.iterdir()) == []


def test_write_tiff_bigtiff_threshold(tmp_path, monkeypatch):
    monkeypatch.setattr(tiff, "BIGTIFF_MIN_BYTES", 10)
    array = _random((3, 8, 8), "uint16")
    out = write_tiff(tmp_path / "big.tif", array, spacing=(30, 2, 2))
    with tifffile.TiffFile(out) as tif:
        assert tif.is_bigtiff
    img = read_image(out)
    np.testing.assert_array_equal(img.data, array)
    assert img.spacing == (30.0, 2.0, 2.0) and img.axes == "ZYX"


def test_write_image_dispatch(tmp_path):
    array = _random((3, 8, 8), "float32")
    tif = write_image(tmp_path / "a.TIF", da.from_array(array, chunks=(1, 8, 8)), spacing=(9, 1, 1))
    np.testing.assert_array_equal(read_image(tif).data, array)
    with pytest.raises(InputError) as exc:
        write_image(tmp_path / "a.nd2", array)
    assert "unsupported file type '.nd2'" in _one_line(exc)
    with pytest.raises(InputError):
        write_image(tif, array, overwrite=False)


def test_write_image_from_zarr_array(tmp_path):
    src = write_image(tmp_path / "src.zarr", _random((4, 6, 6), "uint8"))
    out = write_image(tmp_path / "copy.zarr", read_image(src).data)
    np.testing.assert_array_equal(read_image(out).data[:], read_image(src).data[:])


# ---------------------------------------------------------------------------------------------
# check_output_path


def test_check_output_path(tmp_path):
    assert check_output_path(tmp_path / "a.tif") == tmp_path / "a.tif"
    assert check_output_path(str(tmp_path / "a.zarr")) == tmp_path / "a.zarr"
    with pytest.raises(InputError) as exc:
        check_output_path(tmp_path / "missing" / "a.tif")
    assert _one_line(exc) == f"output folder '{tmp_path / 'missing'}' does not exist"
    with pytest.raises(InputError) as exc:
        check_output_path(tmp_path / "a.n5")
    assert ".n5 is read only here; write .tif, .mrc or .zarr" in _one_line(exc)
    with pytest.raises(InputError) as exc:
        check_output_path(tmp_path / "a.nd2")
    assert "unsupported file type '.nd2'" in _one_line(exc)
    (tmp_path / "dir.tif").mkdir()
    with pytest.raises(InputError):
        check_output_path(tmp_path / "dir.tif")
    (tmp_path / "file.zarr").write_text("x")
    with pytest.raises(InputError):
        check_output_path(tmp_path / "file.zarr")


def test_engine_io_does_not_import_gui():
    code = (
        f"import sys; sys.path.insert(0, {SRC!r}); import napari_emdiffuse.engine.io.images; "
        "gui = ('napari', 'qtpy', 'PyQt5', 'PySide2', 'PyQt6', 'PySide6'); "
        "bad = [m for m in sys.modules if m.split('.')[0] in gui]; "
        "assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120, env={**os.environ})


def test_atomic_file_gets_the_mode_an_ordinary_write_would(tmp_path):
    from napari_emdiffuse.engine.io.atomic import atomic_file

    plain = tmp_path / "plain.txt"
    plain.write_text("x")  # the mode the umask gives a new file
    new = tmp_path / "new.txt"
    with atomic_file(new) as tmp:
        tmp.write_text("y")
    assert new.stat().st_mode & 0o777 == plain.stat().st_mode & 0o777 != 0o600
    os.chmod(new, 0o640)  # an existing file keeps its own mode when replaced
    with atomic_file(new) as tmp:
        tmp.write_text("z")
    assert new.read_text() == "z" and new.stat().st_mode & 0o777 == 0o640


@pytest.mark.parametrize("version", ["0.4", "0.5"])
def test_ome_zarr_with_a_single_t_and_c_reads_as_zyx_lazily(tmp_path, version):
    """bioformats2raw and ome-zarr-py write ZYX volumes as TCZYX: read as ZYX with the z, y, x
    spacing, through a view that reads only what is indexed and keeps the store's location."""
    from tests.conftest import write_tczyx_ome

    from napari_emdiffuse.engine.io.views import AxesPicked
    from napari_emdiffuse.engine.io.sources import open_source, source_of

    vol = (np.arange(4 * 6 * 8) % 251).astype(np.uint8).reshape(4, 6, 8)
    store = write_tczyx_ome(tmp_path / "v.ome.zarr", vol, version=version)
    img = read_image(store)
    assert isinstance(img.data, AxesPicked) and img.data.shape == (4, 6, 8) and img.data.ndim == 3
    assert img.axes == "ZYX" and img.unit == "nm"
    np.testing.assert_allclose(img.spacing, (40.0, 8.0, 8.0), rtol=1e-6)
    assert np.array_equal(img.data[1:3, 2], vol[1:3, 2]) and np.array_equal(img.data[2], vol[2])
    assert np.array_equal(np.asarray(img.data), vol) and np.array_equal(img.data[..., 5], vol[..., 5])
    where = source_of(img.data)
    assert where is not None and where[1:] == ("0", (0, 0), ()) and Path(where[0]) == store.resolve()
    again = open_source(*where)
    assert again.shape == (4, 6, 8) and np.array_equal(again[3], vol[3])
    # the control: without the view, the array is 5-D
    assert open_source(where[0], "0").shape == (1, 1, 4, 6, 8)


def test_a_picked_view_refuses_indices_past_its_axes():
    from napari_emdiffuse.engine.io.views import AxesPicked, drop_single_axes

    a = zarr.zeros((2, 1, 3, 4, 5), dtype="uint8")
    with pytest.raises(ValueError, match="cannot take"):
        AxesPicked(a, (2, 0))
    with pytest.raises(ValueError, match="cannot take"):
        AxesPicked(a, (), (5,))
    with pytest.raises(ValueError, match="cannot take"):
        AxesPicked(a, (0, 0, 0), (0, 0))  # nothing left
    data, spacing, axes = drop_single_axes(a, (1.0, 1.0, 4.0, 2.0, 2.0), "TCZYX")  # T has 2 points: kept
    assert data is a and spacing == (1.0, 1.0, 4.0, 2.0, 2.0) and axes == "TCZYX"


def test_a_trailing_single_channel_is_dropped_lazily(tmp_path):
    """ilastik exports a volume as (Z, Y, X, 1): read as ZYX, through a view that indexes as numpy."""
    from napari_emdiffuse.engine.io.views import AxesPicked

    vol = (np.arange(3 * 5 * 6) % 251).astype(np.uint8).reshape(3, 5, 6)
    store = zarr.open_array(str(tmp_path / "zyxc.zarr"), mode="w", shape=(1, 3, 5, 6, 1), dtype="uint8")
    store[...] = vol[None, ..., None]
    img = read_image(tmp_path / "zyxc.zarr")
    assert isinstance(img.data, AxesPicked) and img.data.shape == (3, 5, 6)
    for key in (1, (slice(0, 2), 3), (Ellipsis, 4), (1, Ellipsis), (Ellipsis,), (slice(None), slice(1, 4), 2)):
        assert np.array_equal(img.data[key], vol[key]), key


def test_an_ome_zarr_output_reads_back_with_its_axes(tmp_path):
    """Our OME-Zarr outputs declare z, y, x in the group's multiscales only; read_image finds them."""
    from napari_emdiffuse.engine.io.zarr import ZarrWriter

    with ZarrWriter(tmp_path / "o.ome.zarr", (2, 8, 8), "uint8", spacing=(40.0, 4.0, 4.0)) as wr:
        wr.array[...] = 3
    img = read_image(tmp_path / "o.ome.zarr")
    assert img.axes == "ZYX" and img.spacing == (40.0, 4.0, 4.0)


@pytest.mark.parametrize(("tag", "text", "size"), [
    (34682, "[User]\r\nUser=x\r\n\r\n[Scan]\r\nPixelWidth=4.5e-09\r\nPixelHeight=5e-09\r\n", (5.0, 4.5)),  # Thermo/FEI
    (34118, "0\r\n0\r\nAP_IMAGE_PIXEL_SIZE\r\nImage Pixel Size = 3.721 nm\r\nAP_WD\r\nWD = 5.0 mm\r\n", (3.721, 3.721)),
    (34118, "AP_PIXEL_SIZE\r\nPixel Size = 0.01 \xb5m\r\n", (10.0, 10.0)),  # Zeiss, in microns
    # Zeiss, a 1024-wide scan saved 10 wide: its Width over the saved columns, not the scan's Pixel Size
    (34118, "AP_PIXEL_SIZE\r\nPixel Size = 5.0 nm\r\nAP_WIDTH\r\nWidth = 5.12 \xb5m\r\n", (512.0, 512.0)),
    (34118, "AP_PIXEL_SIZE\r\nPixel Size = 5.0 nm\r\nAP_WIDTH\r\nWidth = 50.5 nm\r\n", (5.0, 5.0)),  # agrees: kept
    (34682, "[Scan]\r\nPixelWidth=0\r\n", None),  # no size: the 72 dpi below is no calibration either
])  # fmt: skip
def test_an_sem_consoles_own_tag_gives_the_pixel_size(tmp_path, tag, text, size):
    path = tmp_path / "sem.tif"
    tifffile.imwrite(path, np.zeros((8, 10), np.uint8), resolution=(72, 72),
                     extratags=[(tag, "B", 0, text.encode("latin-1"), True)])  # fmt: skip
    img = read_image(path)
    assert img.spacing == size and img.unit == ("nm" if size else None)


@pytest.mark.parametrize(("mode", "form", "size"), [("eosTEM", "MAG", 1.820788530), ("eosTEM", "DIFF", None),
                                                    ("eosASID", "MAG", None)])  # fmt: skip
def test_a_jeol_sightx_tem_image_gives_its_camera_pixel_over_the_magnification(tmp_path, mode, form, size):
    """SightX: the resolution tags give the camera's pixels per inch; in TEM image mode the
    specimen pixel is that over the magnification (0.0254 m / 93 / 150000 = 1.8208 nm, as
    HyperSpy reads its test file). Diffraction patterns and STEM frames get no length."""
    xml = ("<?xml version=\"1.0\"?>\n<TemReporter><Eos><EosMode>" + mode + "</EosMode></Eos>\x01"
           "<ImageFormingSystem><ModeString>" + form + "</ModeString><SelectorValue>150000</SelectorValue>"
           "</ImageFormingSystem></TemReporter>")  # fmt: skip
    path = tmp_path / "sightx.tif"
    tifffile.imwrite(path, np.zeros((6, 8), np.uint16), description=xml, resolution=(93, 93), resolutionunit="INCH",
                     extratags=[(271, "s", 0, "JEOL Ltd.", True)])  # fmt: skip
    img = read_image(path)
    assert img.spacing == (pytest.approx((size, size)) if size else None)


def test_a_thermo_fisher_sem_image_is_read_without_its_data_bar(tmp_path, capsys):
    from napari_emdiffuse.cli import main

    scan = (np.arange(12 * 10) % 200 + 20).astype(np.uint8).reshape(12, 10)
    bar = np.zeros((3, 10), np.uint8)
    bar[1, 2:8] = 255  # the console's white text
    fei = "[Image]\r\nResolutionX=10\r\nResolutionY=12\r\n\r\n[PrivateFei]\r\nDatabarHeight=3\r\n\r\n[Scan]\r\nPixelWidth=5e-09\r\n"
    path = tmp_path / "helios.tif"
    tifffile.imwrite(path, np.concatenate([scan, bar]), extratags=[(34682, "B", 0, fei.encode(), True)])
    img = read_image(path)
    assert np.array_equal(img.data, scan) and img.spacing == (5.0, 5.0)
    assert img.note == "the microscope's data bar (3 rows at the bottom) is left out"
    assert main(["info", str(path)]) == 0
    said = capsys.readouterr().out
    assert "helios.tif: 12 x 10 uint8, axes not declared, 5 x 5 nm (Thermo Fisher tag); the microscope's data bar" in said
    # the control: rows that do not add up to the scan and the bar are all kept
    odd = tmp_path / "odd.tif"
    tifffile.imwrite(odd, np.concatenate([scan, bar, bar]), extratags=[(34682, "B", 0, fei.encode(), True)])
    assert read_image(odd).data.shape == (18, 10) and read_image(odd).note is None


@pytest.mark.parametrize(("unit", "size"), [("um", (5.0, 4.0)), ("1/nm", None)])
def test_a_tiff_saved_by_digitalmicrograph_gives_its_calibration(tmp_path, unit, size):
    """DM writes units (65003, 65004: x, y) and scales (65009, 65010) into private tags."""
    path = tmp_path / "dm.tif"
    tags = [(65003, "s", 0, unit, True), (65004, "s", 0, unit, True), (65009, "d", 1, 0.004, True),
            (65010, "d", 1, 0.005, True)]  # fmt: skip
    tifffile.imwrite(path, np.zeros((6, 8), np.int32), extratags=tags)
    img = read_image(path)
    assert img.spacing == size and img.unit == ("nm" if size else None)


@pytest.mark.parametrize(("z_unit", "axes", "z"), [("s", "TYX", 1.0), ("nm", None, 40.0)])
def test_a_digitalmicrograph_tiff_stack_in_seconds_is_a_time_series(tmp_path, z_unit, axes, z):
    """A DM stack whose third axis is in seconds (HyperSpy's test file: 2.5 s frames) is a
    series: TYX, so no isotropic factor is offered; one in nm keeps its sections' spacing."""
    path = tmp_path / "dmstack.tif"
    tags = [(65003, "s", 0, "nm", True), (65004, "s", 0, "nm", True), (65005, "s", 0, z_unit, True),
            (65009, "d", 1, 2.0, True), (65010, "d", 1, 2.0, True), (65011, "d", 1, 40.0 if z_unit == "nm" else 2.5, True)]
    tifffile.imwrite(path, np.zeros((3, 6, 8), np.uint16), extratags=tags)  # fmt: skip
    img = read_image(path)
    assert img.axes == axes and img.spacing == (z, 2.0, 2.0)


@pytest.mark.parametrize("ext", [".tif", ".mrc"])
def test_writing_a_file_removes_the_hidden_partials_killed_runs_left_of_it(tmp_path, ext):
    """A run killed outright (SIGKILL, the out-of-memory killer) leaves its hidden partial of
    the output (a file being written, a large result's store: gigabytes, unseen). Writing the
    same output again removes those of this machine's dead processes; a running process's,
    another machine's and another output's stay."""
    import os
    import subprocess
    import sys

    from napari_emdiffuse.engine.io.atomic import host_tag
    from napari_emdiffuse.engine.io.images import write_image

    dead = int(subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                              text=True).stdout)
    out = tmp_path / f"out{ext}"
    host = host_tag()
    left = {"file": f".{out.name}.partial-{host}-{dead}-ab12", "store": f".{out.name}.partial-{host}-{dead}-cd34.zarr",
            "running": f".{out.name}.partial-{host}-{os.getpid()}-ef56", "elsewhere": f".{out.name}.partial-other-{dead}-1",
            "other output": f".b{ext}.partial-{host}-{dead}-2"}
    for kind, name in left.items():
        if kind == "store":
            (tmp_path / name).mkdir()
            (tmp_path / name / "0.0").write_bytes(b"x")
        else:
            (tmp_path / name).write_bytes(b"x")
    write_image(out, np.zeros((8, 8), np.uint8))
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        [out.name] + [n for k, n in left.items() if k not in ("file", "store")])
