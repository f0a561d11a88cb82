"""Amira / Avizo .am volumes, written here as the AmiraMesh format lays them out: a text header
(lattice, bounding box, units, the data section's type and encoding), then the pixels x fastest."""

from __future__ import annotations

import zlib

import numpy as np
import pytest

from napari_emdiffuse.engine.errors import InputError
from napari_emdiffuse.engine.io.images import read_image


def _am(path, zyx, *, kind="BINARY-LITTLE-ENDIAN 2.1", type_name="ushort", box=(0, 8, 0, 6, 0, 60), units="nm",
        encoding=None, field="Data", tail=b"\n", extra=""):
    nz, ny, nx = zyx.shape
    big = "LITTLE" not in kind
    raw = zyx.astype(zyx.dtype.newbyteorder(">" if big else "<")).tobytes()
    if encoding == "HxZip":
        raw = zlib.compress(raw)
    elif encoding == "HxByteRLE":
        raw = _rle(raw)
    if "ASCII" in kind:
        raw = "\n".join(str(v) for v in zyx.ravel()).encode()
    unit = f'  Units {{ Coordinates "{units}" }}\n' if units else ""
    coded = f"({encoding},{len(raw)})" if encoding else ""
    header = (f"# AmiraMesh {kind}\n\n\ndefine Lattice {nx} {ny} {nz}\n\nParameters {{\n{extra}"
              f"  BoundingBox {' '.join(str(v) for v in box)},\n  CoordType \"uniform\",\n{unit}}}\n\n"
              f"Lattice {{ {type_name} {field} }} @1{coded}\n\n# Data section follows\n@1\n")  # fmt: skip
    path.write_bytes(header.encode() + raw + tail)
    return path


def _rle(raw: bytes) -> bytes:
    """Runs of equal bytes as (count, value), the rest as literal blocks (0x80 | n, bytes)."""
    out, i = bytearray(), 0
    while i < len(raw):
        j = i
        while j < len(raw) and raw[j] == raw[i] and j - i < 127:
            j += 1
        if j - i >= 3:
            out += bytes([j - i, raw[i]])
            i = j
        else:
            k = i
            while k < len(raw) and k - i < 127 and not (k + 2 < len(raw) and raw[k] == raw[k + 1] == raw[k + 2]):
                k += 1
            k = max(k, i + 1)
            out += bytes([0x80 | (k - i)]) + raw[i:k]
            i = k
    return bytes(out)


def _vol(dtype=np.uint16, seed=0):
    v = (np.random.default_rng(seed).random((4, 7, 9)) * 200).astype(dtype)
    v[1, 2:5, :] = 10  # runs for the RLE
    return v


@pytest.mark.parametrize(("kind", "encoding"), [("BINARY-LITTLE-ENDIAN 2.1", None), ("3D BINARY 2.0", None),
                                                ("BINARY-LITTLE-ENDIAN 2.1", "HxZip"), ("ASCII 1.0", None)])  # fmt: skip
def test_a_volume_reads_in_every_byte_order_and_encoding_with_its_voxel_size(tmp_path, kind, encoding):
    vol = _vol()
    img = read_image(_am(tmp_path / "v.am", vol, kind=kind, encoding=encoding))
    assert np.array_equal(np.asarray(img.data), vol) and img.data.dtype == np.uint16 and img.axes == "ZYX"
    assert img.spacing == (20.0, 1.0, 1.0) and img.unit == "nm"  # 60 / 3, 6 / 6, 8 / 8: centre to centre


def test_run_length_encoded_bytes_avizo_units_and_unknown_units(tmp_path):
    vol = _vol(np.uint8, 1)
    img = read_image(_am(tmp_path / "r.am", vol, type_name="byte", encoding="HxByteRLE", units="µm",
                         box=(0, 0.04, 0, 0.03, 0, 0.15)))  # fmt: skip
    assert np.array_equal(np.asarray(img.data), vol) and img.spacing == pytest.approx((50.0, 5.0, 5.0))
    plain = read_image(_am(tmp_path / "n.am", vol, type_name="byte", units=None))
    assert plain.spacing == (20.0, 1.0, 1.0) and plain.unit is None  # Amira's own files name no unit
    flat = read_image(_am(tmp_path / "f.am", vol[:1], type_name="byte", box=(0, 16, 0, 12, 0, 0)))
    assert flat.data.shape == (7, 9) and flat.axes == "YX" and flat.spacing == (2.0, 2.0)


def test_label_fields_vectors_and_damaged_files_are_refused_in_one_line(tmp_path):
    vol = _vol(np.uint8, 2)
    cases = [
        (_am(tmp_path / "labels.am", vol, type_name="byte", field="Labels"), "label field"),
        (_am(tmp_path / "rgb.am", vol, type_name="byte[3]"), "values a voxel"),
        (_am(tmp_path / "cut.am", vol, type_name="byte", tail=b""), None),  # the control: no trailing newline is fine
        (tmp_path / "not.am", "not an AmiraMesh file"),
    ]
    (tmp_path / "not.am").write_bytes(b"# HyperSurface 0.1 BINARY\n")
    short = _am(tmp_path / "short.am", vol, type_name="byte")
    short.write_bytes(short.read_bytes()[:-200])
    cases.append((short, "bytes short"))
    zipped = _am(tmp_path / "zip.am", vol, type_name="byte", encoding="HxZip")
    zipped.write_bytes(zipped.read_bytes()[:-30] + b"\x00" * 30)
    cases.append((zipped, "cannot read"))
    for path, needle in cases:
        if needle is None:
            assert read_image(path).data.shape == vol.shape
            continue
        with pytest.raises(InputError, match=needle) as exc:
            np.asarray(read_image(path).data)
        assert "\n" not in str(exc.value), path.name
