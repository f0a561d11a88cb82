"""Gatan DigitalMicrograph inputs (.dm3, .dm4): pixels, the image among thumbnails, pixel size.

The files are written here by ``_write_dm``, which lays out the tag tree as the public
descriptions of the format do. The reader was also checked against 100 files that
DigitalMicrograph itself wrote (every pixel type, 1-3 axes, DM3 and DM4; HyperSpy's test
files, not redistributed here): every greyscale image matched its known values and the
calibrated ones their pixel size (0.16867 µm read as 168.67 nm).
"""

from __future__ import annotations

import struct

import numpy as np
import pytest

from napari_emdiffuse._reader import get_reader
from napari_emdiffuse.engine.errors import InputError
from napari_emdiffuse.engine.io import dm
from napari_emdiffuse.engine.io.images import read_image, write_image

_CODES = {np.dtype("int16"): (1, 2), np.dtype("float32"): (2, 6), np.dtype("uint8"): (6, 10),
          np.dtype("int32"): (7, 3), np.dtype("uint16"): (10, 4), np.dtype("float64"): (12, 7)}  # fmt: skip
_SIZES = {2: 2, 3: 4, 4: 2, 5: 4, 6: 4, 7: 8, 10: 1}  # bytes per value of a tag type


class _Tree:
    """Builds DM3/DM4 tag bytes: big-endian headers, values in the file's byte order."""

    def __init__(self, version: int, little: bool):
        self.wide, self.order = version == 4, "<" if little else ">"

    def count(self, n: int) -> bytes:
        return struct.pack(">Q" if self.wide else ">I", n)

    def entry(self, kind: int, name: str, body: bytes) -> bytes:
        size = struct.pack(">Q", len(body)) if self.wide else b""
        return bytes([kind]) + struct.pack(">H", len(name)) + name.encode() + size + body

    def group(self, name: str, entries: list[bytes]) -> bytes:
        return self.entry(20, name, b"\x01\x00" + self.count(len(entries)) + b"".join(entries))

    def data(self, name: str, info: list[int], values: bytes) -> bytes:
        head = b"%%%%" + self.count(len(info)) + b"".join(self.count(i) for i in info)
        return self.entry(21, name, head + values)

    def number(self, name: str, value: float, code: int = 6, fmt: str = "f") -> bytes:
        return self.data(name, [code], struct.pack(self.order + fmt, value))

    def array(self, name: str, values: np.ndarray, code: int) -> bytes:
        flat = np.ascontiguousarray(values).ravel()
        raw = flat.astype(flat.dtype.newbyteorder(self.order)).tobytes()
        return self.data(name, [20, code, len(raw) // _SIZES[code]], raw)

    def text(self, name: str, value: str) -> bytes:
        return self.array(name, np.array([ord(c) for c in value], np.uint16), 4)

    def image(self, pixels: np.ndarray, kind: int, element: int, scales, units, meta=None) -> bytes:
        dims = list(reversed(pixels.shape))  # x first
        axes = [self.group("", [self.number("Origin", 0.0), self.number("Scale", s),
                                self.array("Units", np.array([ord(c) for c in u], np.uint16), 4)])
                for s, u in zip(scales, units)]  # fmt: skip
        data = self.group("ImageData", [
            self.group("Calibrations", [self.group("Dimension", axes)]),
            self.array("Data", pixels, element),
            self.number("DataType", kind, 3, "i"),
            self.group("Dimensions", [self.number("", d, 5, "I") for d in dims]),
        ])
        # a tag the reader skips: an array of structs (DM keeps e.g. ROIs this way)
        skipped = self.data("Points", [20, 15, 0, 2, 0, 6, 0, 6, 3], struct.pack(self.order + "6f", *range(6)))
        tags = [skipped] + ([self.group("Meta Data", [self.text(k, v) for k, v in meta.items()])] if meta else [])
        return self.group("", [self.group("ImageTags", tags), data])


def _write_dm(path, pixels, *, version=4, little=True, scales=None, units=None, thumbnail=True, kind=None, meta=None):
    tree = _Tree(version, little)
    pixels = np.asarray(pixels)
    kind_code, element = _CODES.get(pixels.dtype, (kind, 5))
    kind_code = kind or kind_code
    scales = scales or [1.0] * pixels.ndim
    units = units if units is not None else [""] * pixels.ndim
    images = []
    if thumbnail:  # DigitalMicrograph puts a small RGB thumbnail first
        thumb = np.full((2, 3), 0xFF808080, np.uint32)
        images.append(tree.image(thumb, 23, 5, [1.0, 1.0], ["", ""]))
    images.append(tree.image(pixels, kind_code, element, scales, units, meta))
    root = b"\x01\x00" + tree.count(2) + tree.group("ImageList", images) + tree.number("Version", 3.0)
    root += b"\x00" * 8
    header = struct.pack(">IQI" if version == 4 else ">III", version, len(root), int(little))
    path.write_bytes(header + root)
    return path


@pytest.mark.parametrize("version", [3, 4])
@pytest.mark.parametrize("little", [True, False])
@pytest.mark.parametrize("dtype", ["uint8", "int16", "uint16", "float32"])
def test_pixels_read_as_written_in_either_version_and_byte_order(tmp_path, version, little, dtype):
    pixels = (np.arange(5 * 7) * 3 - 20).reshape(5, 7).clip(0 if dtype.startswith("u") else None).astype(dtype)
    path = _write_dm(tmp_path / f"a.dm{version}", pixels, version=version, little=little,
                     scales=[2.0, 3.0], units=["nm", "nm"])  # fmt: skip
    img = read_image(path)
    assert img.data.dtype == np.dtype(dtype) and img.data.dtype.isnative
    np.testing.assert_array_equal(img.data, pixels)  # the image, not the thumbnail before it
    assert img.spacing == (3.0, 2.0) and img.unit == "nm" and img.axes == "YX"  # x is first in the file


def test_a_stack_with_an_uncalibrated_z_and_microns(tmp_path):
    stack = np.arange(3 * 4 * 6, dtype=np.uint16).reshape(3, 4, 6)
    path = _write_dm(tmp_path / "stack.dm3", stack, version=3, scales=[0.0125, 0.0125, 1.0], units=["µm", "µm", ""])
    img = read_image(path)
    np.testing.assert_array_equal(img.data, stack)
    assert img.spacing == (1.0, 12.5, 12.5) and img.unit == "nm" and img.axes == "ZYX"


def test_a_stack_along_time_is_a_series_and_a_spectrum_image_is_refused(tmp_path):
    """A third axis in seconds (in situ frames, a drift series) is time: TYX, never sections to
    make isotropic. GMS marks spectrum images (CL, EELS) in the entry's Meta Data, whose
    wavelength axis in nm would otherwise pass for a length (as in real Monarc CL files)."""
    stack = np.arange(3 * 4 * 6, dtype=np.uint16).reshape(3, 4, 6)
    path = _write_dm(tmp_path / "series.dm4", stack, scales=[0.5, 0.5, 2.5], units=["nm", "nm", "s"])
    img = read_image(path)
    assert img.axes == "TYX" and img.spacing == (1.0, 0.5, 0.5)
    cl = _write_dm(tmp_path / "cl.dm4", stack.astype(np.float32), scales=[0.5, 0.5, 0.2], units=["µm", "µm", "nm"],
                   meta={"Format": "Spectrum image", "Signal": "CL"})  # fmt: skip
    with pytest.raises(InputError, match=r"it holds a spectrum image \(CL\), not an image or a stack"):
        read_image(cl)
    plain = _write_dm(tmp_path / "img.dm4", stack[0], scales=[0.5, 0.5], units=["nm", "nm"], meta={"Format": "Image"})
    assert read_image(plain).spacing == (0.5, 0.5)  # the control: an image marked as such reads


@pytest.mark.parametrize("units", [["1/nm", "1/nm"], ["", ""]])
def test_no_length_unit_means_no_pixel_size(tmp_path, units):
    path = _write_dm(tmp_path / "dp.dm4", np.ones((4, 4), np.float32), scales=[0.01, 0.01], units=units)
    img = read_image(path)
    assert img.spacing is None and img.unit is None


def test_large_pixels_are_memory_mapped_read_only(tmp_path, monkeypatch):
    pixels = np.arange(80 * 90, dtype=np.float32).reshape(80, 90)  # past the parser's decoding size
    path = _write_dm(tmp_path / "big.dm4", pixels, little=False)
    monkeypatch.setattr(dm, "MRC_MMAP_MIN_BYTES", pixels.nbytes)
    img = read_image(path)
    assert isinstance(img.data, np.memmap) and not img.data.flags.writeable
    np.testing.assert_array_equal(img.data, pixels)
    monkeypatch.setattr(dm, "MRC_MMAP_MIN_BYTES", pixels.nbytes + 1)
    small = read_image(path).data
    assert not isinstance(small, np.memmap) and small.flags.writeable and small.dtype.isnative


@pytest.mark.parametrize(("make", "message"), [
    (lambda p: p.write_bytes(b"II*\x00" + bytes(64)), "not a DigitalMicrograph"),
    (lambda p: p.write_bytes(b""), "not a DigitalMicrograph"),
    (lambda p: p.write_bytes(_write_dm(p, np.ones((30, 30), np.uint8)).read_bytes()[:300]), "not a readable"),
    (lambda p: _write_dm(p, np.ones((2, 2), np.complex64), kind=3), "complex image"),
    (lambda p: _write_dm(p, np.ones((2, 2), np.uint32), kind=23), "only a colour picture"),
    (lambda p: _write_dm(p, np.ones(5, np.float32)), r"spectrum \(5 values\)"),
    (lambda p: _write_dm(p, np.ones((2, 2, 3, 4), np.float32)), "4-D data"),
    (lambda p: _write_dm(p, np.ones((8, 3, 4), np.float32), scales=[1, 1, 0.5], units=["nm", "nm", "eV"]),
     r"spectrum image \(its third axis is in eV\)"),
    (lambda p: _write_dm(p, np.ones((2, 2), np.float32), kind=10), "do not fill its size"),
])  # fmt: skip
def test_bad_files_are_refused_in_one_line(tmp_path, make, message):
    path = tmp_path / "bad.dm4"
    make(path)
    with pytest.raises(InputError, match=message) as err:
        read_image(path)
    assert "\n" not in str(err.value)


def test_writing_dm_is_refused_and_napari_opens_it_with_its_scale(tmp_path):
    with pytest.raises(InputError, match=r"\.dm4 is read only here"):
        write_image(tmp_path / "out.dm4", np.zeros((4, 4), np.uint8))
    path = _write_dm(tmp_path / "cam.dm4", np.arange(12, dtype=np.int16).reshape(3, 4), scales=[0.5, 0.5], units=["nm"] * 2)
    reader = get_reader(str(path))
    assert reader is not None
    (data, meta, kind), = reader(str(path))
    assert kind == "image" and data.shape == (3, 4) and meta["scale"] == (0.5, 0.5) and meta["name"] == "cam"


def test_the_cli_reads_a_dm_file_and_a_batch_writes_it_as_tif(tmp_path, capsys):
    from napari_emdiffuse.cli import main
    from napari_emdiffuse.engine.io.batch import expand_inputs, plan_batch

    path = _write_dm(tmp_path / "cam.dm3", np.zeros((6, 8), np.uint16), version=3, scales=[0.004] * 2, units=["µm"] * 2)
    assert main(["info", str(path)]) == 0
    assert "cam.dm3: 6 x 8 uint16, axes YX, 4 x 4 nm" in capsys.readouterr().out
    (src, out, _), = plan_batch(expand_inputs([tmp_path]), tmp_path / "out")
    assert (src.name, out.name) == ("cam.dm3", "cam.tif")


def test_a_folder_of_3view_sections_reads_as_a_volume(tmp_path):
    """Gatan 3View writes one .dm4 per cut: the folder is a ZYX volume, in natural order."""
    for z in (10, 9, 1):
        _write_dm(tmp_path / f"block_{z}.dm4", np.full((4, 6), z, np.uint16), scales=[0.01] * 2, units=["µm"] * 2)
    vol = read_image(tmp_path)
    assert vol.data.shape == (3, 4, 6) and vol.data[:, 0, 0].compute().tolist() == [1, 9, 10]
