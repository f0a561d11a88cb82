"""MRC files (read and write, voxel size in Å) and PNG/JPEG/BMP pictures (read only), as EM
users bring them: from IMOD/SerialEM, and exported from SEM consoles."""

from __future__ import annotations

import struct
from pathlib import Path

import imageio.v3 as iio
import mrcfile
import numpy as np
import pytest

from napari_emdiffuse.engine.errors import InputError
from napari_emdiffuse.engine.io import mrc
from napari_emdiffuse.engine.io.images import read_image, write_image


def _one_line(exc: pytest.ExceptionInfo) -> str:
    msg = str(exc.value)
    assert "\n" not in msg
    return msg


def _ramp(shape, dtype) -> np.ndarray:
    # covers the whole uint8 range, so a signed/unsigned mix-up changes values
    return (np.arange(np.prod(shape)) % 256).reshape(shape).astype(dtype)


# ---------------------------------------------------------------------------------------------
# MRC


@pytest.mark.parametrize("dtype,read_as", [("uint8", "uint16"), ("int16", "int16"), ("uint16", "uint16"),
                                           ("float32", "float32"), ("float64", "float32")])
@pytest.mark.parametrize("shape,spacing", [((20, 30), (4.0, 5.0)), ((3, 20, 30), (40.0, 4.0, 5.0))])
def test_mrc_round_trip(tmp_path, dtype, read_as, shape, spacing):
    data = _ramp(shape, dtype)
    out = write_image(tmp_path / "x.mrc", data, spacing=spacing)
    img = read_image(out)
    assert img.data.dtype == np.dtype(read_as) and img.data.shape == shape
    np.testing.assert_array_equal(img.data, data)
    assert img.spacing == spacing and img.unit == "nm" and img.axes == "ZYX"[-len(shape):]
    # stored in Ångström, x first, as other MRC readers expect
    with mrcfile.open(out) as m:
        assert (float(m.voxel_size.x), float(m.voxel_size.y)) == (spacing[-1] * 10, spacing[-2] * 10)


def test_mrc_micrometres_are_stored_in_angstrom(tmp_path):
    out = write_image(tmp_path / "x.rec", np.zeros((2, 8, 8), np.float32), spacing=(0.05, 0.004, 0.004), unit="µm")
    with mrcfile.open(out) as m:
        assert np.allclose([m.voxel_size.z, m.voxel_size.y, m.voxel_size.x], [500.0, 40.0, 40.0])
    assert read_image(out).spacing == (50.0, 4.0, 4.0)


def test_read_mrc_written_by_another_tool(tmp_path):
    path = tmp_path / "tomo.st"
    data = _ramp((4, 16, 12), np.int16)
    with mrcfile.new(path) as m:
        m.set_data(data)
        m.voxel_size = (12.0, 12.0, 36.0)  # x, y, z in Å
    img = read_image(path)
    np.testing.assert_array_equal(img.data, data)
    assert img.spacing == (3.6, 1.2, 1.2) and img.axes == "ZYX"


def test_mrc_keeps_a_whole_pixel_origin_as_its_grid_start(tmp_path):
    """A region's place: written as nxstart / nystart / nzstart (grid units, read back by
    another reader of the header, here mrcfile), for an array in memory and a lazy one alike,
    and read back as the origin in nm; an origin between pixels, or none, leaves the start at 0
    (no origin read back, nothing made up); another tool's grid start is read too."""
    import dask.array as da

    vol = _ramp((4, 16, 12), np.float32)
    for name, data in (("mem.mrc", vol), ("lazy.mrc", da.from_array(vol, chunks=(1, 16, 12)))):
        out = mrc.write_mrc(tmp_path / name, data, spacing=(40.0, 4.0, 4.0), origin=(80.0, 0.0, 12.0))
        with mrcfile.open(out) as m:
            assert (int(m.header.nzstart), int(m.header.nystart), int(m.header.nxstart)) == (2, 0, 3)
            np.testing.assert_array_equal(m.data, vol)
        assert read_image(out).origin == (80.0, 0.0, 12.0)
    for origin in ((80.0, 0.0, 13.0), None, (0.0, 0.0, 0.0)):
        out = mrc.write_mrc(tmp_path / "off.mrc", vol, spacing=(40.0, 4.0, 4.0), origin=origin)
        with mrcfile.open(out) as m:
            assert (int(m.header.nzstart), int(m.header.nystart), int(m.header.nxstart)) == (0, 0, 0)
        assert read_image(out).origin is None
    with pytest.raises(InputError, match="origin has 2 values but the image has 3 axes"):
        mrc.write_mrc(tmp_path / "bad.mrc", vol, spacing=(40.0, 4.0, 4.0), origin=(1.0, 2.0))
    other = tmp_path / "sub.mrc"
    with mrcfile.new(other) as m:
        m.set_data(vol[0])
        m.voxel_size = (20.0, 20.0, 20.0)  # 2 nm
        m.header.nxstart, m.header.nystart = -5, 7
    assert read_image(other).origin == (14.0, -10.0)


def test_uncalibrated_mrc_has_no_spacing(tmp_path):
    path = tmp_path / "plain.mrc"
    with mrcfile.new(path) as m:
        m.set_data(np.zeros((8, 8), np.float32))
    assert read_image(path).spacing is None


def imod_bytes(path: Path, data: np.ndarray, flags: int) -> None:
    """Mode-0 file as IMOD writes it: the stamp at byte 152 and its flags at 156."""
    with mrcfile.new(path) as m:
        m.set_data(data.view(np.int8))
    raw = bytearray(path.read_bytes())
    raw[152:160] = struct.pack("<ii", 1146047817, flags)
    path.write_bytes(bytes(raw))


def test_imod_unsigned_bytes_are_read_as_uint8(tmp_path):
    data = _ramp((2, 16, 16), np.uint8)
    imod_bytes(tmp_path / "u.mrc", data, flags=0)
    img = read_image(tmp_path / "u.mrc")
    assert img.data.dtype == np.uint8
    np.testing.assert_array_equal(img.data, data)
    # control: IMOD's "signed bytes" flag keeps the standard signed reading
    imod_bytes(tmp_path / "s.mrc", data, flags=1)
    signed = read_image(tmp_path / "s.mrc").data
    assert signed.dtype == np.int8 and signed.min() < 0


def test_large_mrc_is_memory_mapped_read_only(tmp_path, monkeypatch):
    path = write_image(tmp_path / "big.mrc", _ramp((3, 16, 16), np.float32))
    monkeypatch.setattr(mrc, "MRC_MMAP_MIN_BYTES", 0)
    big = read_image(path).data
    assert isinstance(big, np.memmap) and not big.flags.writeable
    np.testing.assert_array_equal(big, _ramp((3, 16, 16), np.float32))
    monkeypatch.setattr(mrc, "MRC_MMAP_MIN_BYTES", 2**40)
    small = read_image(path).data
    assert not isinstance(small, np.memmap)


def _packed(plain: Path, suffix: str) -> Path:
    import bz2
    import gzip

    out = plain.with_name(plain.name + suffix)
    out.write_bytes((gzip.compress if suffix.lower() == ".gz" else bz2.compress)(plain.read_bytes()))
    return out


@pytest.mark.parametrize("name", ["emd_1.map.gz", "tomo.MRC.BZ2", "series.st.gz"])
def test_compressed_mrc_reads_like_the_plain_one(tmp_path, name):
    data = _ramp((3, 16, 24), np.int16)
    plain = write_image(tmp_path / Path(name).with_suffix("").name, data, spacing=(30.0, 2.0, 2.5))
    packed = _packed(plain, Path(name).suffix)
    plain.unlink()  # nothing to fall back on
    img = read_image(packed)
    np.testing.assert_array_equal(img.data, data)
    assert img.spacing == (30.0, 2.0, 2.5) and img.axes == "ZYX" and img.data.dtype == np.int16


def test_large_compressed_mrc_is_unpacked_once_and_memory_mapped(tmp_path, monkeypatch):
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))
    (tmp_path / "tmp").mkdir()
    packed = _packed(write_image(tmp_path / "big.map", _ramp((3, 16, 16), np.float32)), ".gz")
    monkeypatch.setattr(mrc, "MRC_MMAP_MIN_BYTES", 0)
    big = read_image(packed).data
    assert isinstance(big, np.memmap) and not big.flags.writeable
    np.testing.assert_array_equal(big, _ramp((3, 16, 16), np.float32))
    assert list((tmp_path / "tmp").iterdir()) == []  # the unpacked copy is gone, its pages mapped


def test_compressed_mrc_without_room_to_unpack_is_one_line(tmp_path, monkeypatch):
    import shutil
    from types import SimpleNamespace

    packed = _packed(write_image(tmp_path / "big.map", _ramp((3, 16, 16), np.float32)), ".gz")
    monkeypatch.setattr(mrc, "MRC_MMAP_MIN_BYTES", 0)
    monkeypatch.setattr(shutil, "disk_usage", lambda where: SimpleNamespace(total=10**9, used=10**9 - 100, free=100))
    with pytest.raises(InputError) as exc:
        read_image(packed)
    assert "unpack it first" in _one_line(exc)


@pytest.mark.parametrize("damage", ["cut", "not an mrc inside", "not compressed"])
def test_damaged_compressed_mrc_is_one_line(tmp_path, damage):
    import gzip

    whole = _packed(write_image(tmp_path / "whole.map", _ramp((4, 32, 32), np.float32)), ".gz").read_bytes()
    content = {"cut": whole[: len(whole) // 2], "not an mrc inside": gzip.compress(b"hello" * 20),
               "not compressed": b"x" * 3000}[damage]
    path = tmp_path / "bad.map.gz"
    path.write_bytes(content)
    with pytest.raises(InputError) as exc:
        read_image(path)
    assert str(path) in _one_line(exc)


def test_compressed_mrc_is_not_an_output(tmp_path):
    with pytest.raises(InputError) as exc:
        write_image(tmp_path / "out.map.gz", np.zeros((4, 4), np.float32))
    assert "read only" in _one_line(exc)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("content,needle", [(b"not an mrc" * 5, "header"), (None, "truncated")])
def test_broken_mrc_is_one_line(tmp_path, content, needle):
    path = tmp_path / "bad.mrc"
    if content is None:  # a real file cut short
        whole = write_image(tmp_path / "whole.mrc", np.zeros((4, 32, 32), np.float32)).read_bytes()
        content = whole[:2000]
    path.write_bytes(content)
    with pytest.raises(InputError) as exc:
        read_image(path)
    msg = _one_line(exc)
    assert str(path) in msg and needle in msg


@pytest.mark.parametrize("array,needle", [(np.zeros((2, 2, 4, 4), np.float32), "2D image or a 3D stack"),
                                          (np.zeros((4, 4), np.int64), "no int64 pixels")])
def test_write_mrc_refuses_what_mrc_cannot_hold(tmp_path, array, needle):
    with pytest.raises(InputError) as exc:
        write_image(tmp_path / "x.mrc", array)
    assert needle in _one_line(exc)
    assert list(tmp_path.iterdir()) == []


def test_write_mrc_failure_keeps_previous_file(tmp_path, monkeypatch):
    out = write_image(tmp_path / "out.mrc", np.full((4, 4), 3, np.float32))
    before = out.read_bytes()

    def broken(*args, **kwargs):
        Path(args[0]).write_bytes(b"half a file")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(mrcfile, "new", broken)
    with pytest.raises(InputError) as exc:
        write_image(out, np.zeros((4, 4), np.float32))
    assert "No space left" in _one_line(exc)
    assert out.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["out.mrc"]


def test_mrc_labels_say_what_made_it(tmp_path):
    made = {"task": "denoise", "model": "demo-denoise", "preset": "fast", "package": "napari-emdiffuse 1.0"}
    out = write_image(tmp_path / "x.mrc", np.zeros((4, 4), np.float32), provenance=made)
    with mrcfile.open(out) as m:
        labels = [bytes(lab).decode().strip() for lab in m.header.label[: int(m.header.nlabl)]]
    assert "napari-emdiffuse 1.0: denoise demo-denoise fast" in labels


# ---------------------------------------------------------------------------------------------
# pictures


@pytest.mark.parametrize("name,dtype", [("g.png", np.uint8), ("g16.png", np.uint16), ("g.bmp", np.uint8)])
def test_grey_pictures_read_exactly(tmp_path, name, dtype):
    data = _ramp((24, 40), dtype) * (200 if dtype == np.uint16 else 1)
    iio.imwrite(tmp_path / name, data)
    img = read_image(tmp_path / name)
    assert img.data.dtype == dtype and img.axes == "YX" and img.spacing is None
    np.testing.assert_array_equal(img.data, data)


def test_grey_saved_as_rgb_is_grey_and_colour_is_refused(tmp_path):
    grey = _ramp((24, 40), np.uint8)
    iio.imwrite(tmp_path / "rgb.png", np.stack([grey] * 3, axis=-1))
    np.testing.assert_array_equal(read_image(tmp_path / "rgb.png").data, grey)
    colour = np.stack([grey, grey[::-1], grey], axis=-1)
    iio.imwrite(tmp_path / "colour.png", colour)
    with pytest.raises(InputError) as exc:
        read_image(tmp_path / "colour.png")
    assert "colour image" in _one_line(exc)


def test_transparent_picture_is_refused_opaque_alpha_is_dropped(tmp_path):
    grey = _ramp((16, 16), np.uint8)
    alpha = np.full_like(grey, 255)
    iio.imwrite(tmp_path / "opaque.png", np.stack([grey, grey, grey, alpha], axis=-1))
    np.testing.assert_array_equal(read_image(tmp_path / "opaque.png").data, grey)
    alpha[0, 0] = 0
    iio.imwrite(tmp_path / "hole.png", np.stack([grey, grey, grey, alpha], axis=-1))
    with pytest.raises(InputError) as exc:
        read_image(tmp_path / "hole.png")
    assert "transparent" in _one_line(exc)


def test_jpeg_reads_as_2d(tmp_path):
    iio.imwrite(tmp_path / "sem.jpg", _ramp((32, 48), np.uint8))
    img = read_image(tmp_path / "sem.jpg")
    assert img.data.shape == (32, 48) and img.data.dtype == np.uint8


@pytest.mark.parametrize("name", ["out.png", "out.jpg"])
def test_pictures_are_not_outputs(tmp_path, name):
    with pytest.raises(InputError) as exc:
        write_image(tmp_path / name, np.zeros((4, 4), np.uint8))
    assert "read only" in _one_line(exc) and ".mrc" in str(exc.value)
    assert list(tmp_path.iterdir()) == []


def test_corrupt_picture_is_one_line(tmp_path):
    path = tmp_path / "broken.png"
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + b"garbage" * 10)
    with pytest.raises(InputError) as exc:
        read_image(path)
    assert str(path) in _one_line(exc)


# ---------------------------------------------------------------------------------------------
# a folder of slices


def test_folder_of_slices_is_a_lazy_volume_in_natural_order(tmp_path):
    import dask.array as da
    import tifffile

    for z in (0, 1, 2, 9, 10, 11):  # lexical order would put 10 and 11 before 2
        tifffile.imwrite(tmp_path / f"sec_{z}.tif", np.full((6, 8), z, np.uint16))
    (tmp_path / "notes.txt").write_text("not a slice")
    (tmp_path / ".sec_12.tif.partial-ab12").write_bytes(b"x")
    vol = read_image(tmp_path)
    assert isinstance(vol.data, da.Array) and vol.data.shape == (6, 6, 8) and vol.spacing is None
    assert vol.data[:, 0, 0].compute().tolist() == [0, 1, 2, 9, 10, 11]
    assert vol.note is None  # uncalibrated slices: nothing to tell


def test_a_folder_of_calibrated_slices_tells_their_pixel_size(tmp_path, capsys):
    import tifffile

    from napari_emdiffuse.cli import main

    fei = "[Scan]\r\nPixelWidth=5e-09\r\nPixelHeight=5e-09\r\n".encode()
    for z in range(3):  # an Auto Slice & View run: one Thermo Fisher TIFF per cut
        tifffile.imwrite(tmp_path / f"slice_{z:04d}.tif", np.full((6, 8), z, np.uint8), extratags=[(34682, "B", 0, fei, True)])
    vol = read_image(tmp_path)
    assert vol.spacing is None
    assert vol.note == "slices of 5 x 5 nm pixels; the files record no section thickness, so give the isotropic factor or the voxel size"
    assert main(["info", str(tmp_path)]) == 0
    assert "3 x 6 x 8 uint8, axes ZYX, no pixel size; slices of 5 x 5 nm pixels" in capsys.readouterr().out


def test_folder_of_slices_refuses_mixed_slices(tmp_path):
    import tifffile

    tifffile.imwrite(tmp_path / "a1.tif", np.zeros((6, 8), np.uint8))
    tifffile.imwrite(tmp_path / "a2.tif", np.zeros((6, 9), np.uint8))
    vol = read_image(tmp_path)
    with pytest.raises(InputError) as exc:
        vol.data.compute()
    assert "a2.tif" in _one_line(exc) and "unlike the first slice" in str(exc.value)
    (tmp_path / "a2.tif").unlink()
    with pytest.raises(InputError, match="2 or more slices"):
        read_image(tmp_path)


def test_zarr_store_without_the_suffix_is_read_as_zarr(tmp_path):
    import zarr

    store = tmp_path / "volume"
    zarr.open(str(store), mode="w", shape=(2, 4, 4), dtype="u1")[:] = 7
    img = read_image(store)
    assert img.data.shape == (2, 4, 4) and int(np.asarray(img.data).max()) == 7
