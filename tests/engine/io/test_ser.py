"""TIA series files (.ser), written here as the format lays them out: little-endian header,
offset table, per element its calibration, type, size and pixels (the bottom row first)."""

from __future__ import annotations

import struct

import numpy as np
import pytest

from napari_emdiffuse.engine.errors import InputError
from napari_emdiffuse.engine.io.images import read_image

_CODES = {np.dtype("uint8"): 1, np.dtype("uint16"): 2, np.dtype("int16"): 5, np.dtype("int32"): 6,
          np.dtype("float32"): 7, np.dtype("complex64"): 9}  # fmt: skip


def _ser(path, images, delta=2.5e-10, version=0x0220, kind=0x4122):
    """``images``: (Y, X) arrays in display order; stored bottom row first."""
    wide = version == 0x0220
    off = "<q" if wide else "<i"
    dim = struct.pack("<iddii", len(images), 0.0, 1.0, 0, 4) + b"Time" + struct.pack("<i", 1) + b"s"
    head_size = 2 * 3 + 4 * 4 + (8 if wide else 4) + 4 + len(dim)
    body, offsets = b"", []
    for img in images:
        offsets.append(head_size + len(body))
        ny, nx = img.shape
        body += struct.pack("<ddiddihii", 0.0, delta, 0, 0.0, delta, 0, _CODES[img.dtype], nx, ny)
        body += np.ascontiguousarray(img[::-1]).astype(img.dtype.newbyteorder("<")).tobytes()
    table = head_size + len(body)
    head = struct.pack("<hhhiiii", 0x4949, 0x0197, version, kind, 0x4152, len(images), len(images))
    head += struct.pack(off, table) + struct.pack("<i", 1) + dim
    tail = b"".join(struct.pack(off, o) for o in offsets) + b"".join(struct.pack(off, 0) for _ in offsets)
    path.write_bytes(head + body + tail)
    return path


@pytest.mark.parametrize("version", [0x0210, 0x0220])
@pytest.mark.parametrize("dtype", ["uint16", "int16", "float32"])
def test_a_tia_image_reads_upright_with_its_pixel_size(tmp_path, version, dtype):
    img = (np.arange(12 * 16) % 251).astype(dtype).reshape(12, 16)
    got = read_image(_ser(tmp_path / "tem_1.ser", [img], version=version))
    assert got.data.dtype == np.dtype(dtype) and np.array_equal(got.data, img)  # the first row is the top one
    assert got.spacing == (0.25, 0.25) and got.unit == "nm" and got.axes == "YX"


def test_a_tia_series_reads_as_a_stack_and_restores(tmp_path, capsys):
    from napari_emdiffuse.cli import main

    frames = [(np.random.default_rng(k).random((32, 40)) * 4000).astype(np.uint16) for k in range(3)]
    path = _ser(tmp_path / "series_1.ser", frames, delta=1e-9)
    got = read_image(path)
    assert got.data.shape == (3, 32, 40) and got.axes == "TYX" and got.spacing == (1.0, 1.0, 1.0)
    assert np.array_equal(got.data[2], frames[2])
    assert main(["convert", str(path), "-o", str(tmp_path / "series.tif")]) == 0
    assert np.array_equal(read_image(tmp_path / "series.tif").data, np.stack(frames))


def test_tia_files_that_are_no_images_are_refused_in_one_line(tmp_path):
    img = np.zeros((8, 8), np.uint16)
    cases = [
        (_ser(tmp_path / "spec.ser", [img], kind=0x4120), "spectra"),
        (_ser(tmp_path / "fft.ser", [np.zeros((8, 8), np.complex64)]), "complex"),
        (_ser(tmp_path / "diff.ser", [img], delta=2e6), None),  # 1/m: a diffraction pattern, no pixel size
    ]
    raw = _ser(tmp_path / "ok.ser", [img]).read_bytes()
    (tmp_path / "cut.ser").write_bytes(raw[: len(raw) - 40])
    (tmp_path / "not.ser").write_bytes(b"\x00" * 64)
    cases += [(tmp_path / "cut.ser", "truncated or damaged"), (tmp_path / "not.ser", "not a TIA series file")]
    for path, needle in cases:
        if needle is None:
            assert read_image(path).spacing is None
            continue
        with pytest.raises(InputError, match=needle) as exc:
            read_image(path)
        assert "\n" not in str(exc.value)
