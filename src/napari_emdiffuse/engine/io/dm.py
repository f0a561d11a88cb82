"""Gatan DigitalMicrograph files (``.dm3``, ``.dm4``: TEM cameras, STEM detectors, 3View
serial block-face SEM): the image with its pixel size, read only.

Gatan does not publish the format. This reader follows its public descriptions (Greg
Jefferis's and Chris Boothroyd's notes on DM3 and DM4):

- A 16-byte (DM3) or 20-byte (DM4) header: the version, the length, and the byte order of the
  values. Every count and type code in the tag headers is big-endian; the values and the
  pixels follow the header's byte order (little-endian on a PC).
- Then a tree of tags. A tag is a group (20) or data (21), named or not. Data carries a list of
  type codes (a number, a struct, a string or an array) and then its values. DM4 widens the
  counts to 8 bytes and gives each tag's length, so a reader can skip what it does not know.
- The root's ``ImageList`` holds the images: usually a small RGB thumbnail first, then the
  recorded image. Each image keeps its pixels in ``ImageData/Data``, the pixel type in
  ``ImageData/DataType``, the size (x first) in ``ImageData/Dimensions`` and, per axis, the
  pixel size in ``ImageData/Calibrations/Dimension``.

The largest greyscale image of the list is read. Its pixels are read straight from the file
(memory-mapped from 1 GiB up), never through the tag parser.
"""

from __future__ import annotations

import mmap
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import InputError
from .units import is_time_unit, nm_factor
from .common import ImageData, check_readable
from .mrc import MRC_MMAP_MIN_BYTES

__all__ = ["read_dm"]

# Tag value types: numbers (the code's numpy type), and the composite ones.
_NUMBERS = {2: "i2", 3: "i4", 4: "u2", 5: "u4", 6: "f4", 7: "f8", 8: "u1", 9: "i1", 10: "u1", 11: "i8", 12: "u8"}
_STRUCT, _STRING, _ARRAY = 15, 18, 20
_GROUP, _DATA, _END = 20, 21, 0
# Image pixel types (``ImageData/DataType``) that hold one grey value per pixel.
_PIXELS = {1: "i2", 2: "f4", 6: "u1", 7: "i4", 9: "i1", 10: "u2", 11: "u4", 12: "f8", 14: "u1"}
_COMPLEX, _COLOUR = {3, 5, 13, 27, 28}, {8, 23}
# Arrays up to this many values are decoded while parsing (units, names); longer ones (the
# pixels, look-up tables) are kept as a place in the file.
_DECODE_MAX = 4096
_MAX_DEPTH = 64
_MAX_INFO = 1024  # type codes of one tag: a struct of 500 fields at most; more means a damaged file


@dataclass(frozen=True)
class _Blob:
    """An array of numbers left in the file: where it starts, how many, of which type."""

    offset: int
    count: int
    dtype: np.dtype


class _Corrupt(Exception):
    """The tag tree does not parse."""


class _Unknown(_Corrupt):
    """A tag of a type this reader does not decode (DM4 tags can be skipped by their length)."""


class _Tags:
    """Parses a DM3/DM4 tag tree from a read-only buffer into nested ``[(name, value)]`` lists."""

    def __init__(self, buf: Any, version: int, little: bool) -> None:
        self.buf, self.wide, self.order = buf, version == 4, "<" if little else ">"
        self.pos = 0

    def _unpack(self, fmt: str) -> Any:
        try:
            values = struct.unpack_from(fmt, self.buf, self.pos)
        except struct.error as exc:
            raise _Corrupt("it ends inside a tag") from exc
        self.pos += struct.calcsize(fmt)
        return values[0] if len(values) == 1 else values

    def _count(self) -> int:
        return self._unpack(">Q" if self.wide else ">I")

    def group(self, depth: int = 0) -> list[tuple[str, Any]]:
        if depth > _MAX_DEPTH:
            raise _Corrupt("its tags nest too deep")
        self._unpack(">BB")  # sorted, open: nothing to do with either
        n = self._count()
        entries: list[tuple[str, Any]] = []
        for _ in range(n):
            kind, length = self._unpack(">BH")
            if kind == _END:
                break
            name = bytes(self.buf[self.pos:self.pos + length]).decode("latin-1")
            self.pos += length
            end = self.pos + 8 + self._count() if self.wide else None  # DM4 says how long the tag is
            if kind == _GROUP:
                entries.append((name, self.group(depth + 1)))
            elif kind == _DATA:
                try:
                    entries.append((name, self._data()))
                except _Unknown:
                    if end is None:
                        raise
                    entries.append((name, None))
            else:
                raise _Corrupt(f"unknown tag kind {kind} at byte {self.pos - length - 3}")
            if end is not None:
                self.pos = end
        return entries

    def _data(self) -> Any:
        if bytes(self.buf[self.pos:self.pos + 4]) != b"%%%%":
            raise _Corrupt(f"no tag marker at byte {self.pos}")
        self.pos += 4
        n = self._count()
        if not 0 < n <= _MAX_INFO:
            raise _Corrupt(f"a tag with {n} type codes")
        info = [self._count() for _ in range(n)]
        kind = info[0]
        if kind in _NUMBERS:
            return self._numbers(kind, 1)[0]
        if kind == _STRING:
            text = bytes(self.buf[self.pos:self.pos + info[1]]).decode("latin-1")
            self.pos += info[1]
            return text
        if kind == _STRUCT:
            return tuple(self._numbers(t, 1)[0] for t in info[4::2])
        if kind == _ARRAY and len(info) == 3 and info[1] in _NUMBERS:
            return self._numbers(info[1], info[2])
        if kind == _ARRAY and len(info) >= 5 and info[1] == _STRUCT:
            size = sum(np.dtype(self._type(t)).itemsize for t in info[5:-1:2])
            self.pos += size * info[-1]  # arrays of structs hold nothing an image needs
            return None
        raise _Unknown(f"unknown tag type {info[:8]}")

    @staticmethod
    def _type(code: int) -> str:
        if code not in _NUMBERS:
            raise _Unknown(f"unknown value type {code}")
        return _NUMBERS[code]

    def _numbers(self, code: int, count: int) -> Any:
        dtype = np.dtype(self._type(code)).newbyteorder(self.order)
        if self.pos + dtype.itemsize * count > len(self.buf):
            raise _Corrupt("it ends inside a tag")
        start, self.pos = self.pos, self.pos + dtype.itemsize * count
        if count > _DECODE_MAX:
            return _Blob(start, count, dtype)
        return np.frombuffer(self.buf, dtype, count, start).astype(dtype.newbyteorder("="))


def _get(group: Any, *names: str) -> Any:
    """The first value under the path ``names``, or None."""
    for name in names:
        if not isinstance(group, list):
            return None
        group = next((v for k, v in group if k == name), None)
    return group


def _text(value: Any) -> str:
    """A unit as DigitalMicrograph stores it (UTF-16 code units, or bytes) as text."""
    if isinstance(value, str):
        return value
    if isinstance(value, np.ndarray):
        return "".join(chr(int(c)) for c in value if c)
    return ""


def read_dm(path: Path) -> ImageData:
    """Read a DigitalMicrograph ``.dm3`` or ``.dm4`` file: the largest greyscale image in it
    (2D as ``YX``, a stack as ``ZYX``) and its pixel size in nm.

    Parameters
    ----------
    path : pathlib.Path
        The file.

    Returns
    -------
    ImageData
        The pixels as numpy (a read-only memory map from 1 GiB up); ``spacing`` in nm where
        the x and y calibration has a length unit (an uncalibrated z of a stack gets 1.0),
        else None (pixels, or ``1/nm`` in a diffraction pattern).

    Raises
    ------
    InputError
        Missing, truncated or not a DigitalMicrograph file; no greyscale image in it (only a
        colour picture or a complex Fourier transform); a spectrum or 4-D data.

    Examples
    --------
    >>> read_dm(Path("missing.dm4"))
    Traceback (most recent call last):
    ...
    napari_emdiffuse.engine.errors.InputError: cannot read 'missing.dm4': file not found
    """
    check_readable(path, "a DigitalMicrograph file")
    if path.stat().st_size < 16:  # shorter than any header (and mmap refuses empty files)
        raise InputError(f"cannot read '{path}': not a DigitalMicrograph (DM3/DM4) file")
    try:
        with open(path, "rb") as fh, mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as buf:
            version = struct.unpack_from(">I", buf, 0)[0]
            if version not in (3, 4):
                raise InputError(f"cannot read '{path}': not a DigitalMicrograph (DM3/DM4) file")
            header = ">IQI" if version == 4 else ">III"
            little = struct.unpack_from(header, buf, 0)[2] == 1
            tags = _Tags(buf, version, little)
            tags.pos = struct.calcsize(header)
            root = tags.group()
    except _Corrupt as exc:
        raise InputError(f"cannot read '{path}': not a readable DigitalMicrograph file ({exc})") from exc
    except OSError as exc:
        raise InputError(f"cannot read '{path}': {exc}") from exc
    image = _pick(path, root)
    return _load(path, image, "<" if little else ">")


def _pick(path: Path, root: list[tuple[str, Any]]) -> list[tuple[str, Any]]:
    """The largest greyscale image of the file's ``ImageList``; refuse in one line if none."""
    found: list[tuple[int, Any]] = []
    kinds = set()
    spectra: list[str] = []
    for _, entry in _get(root, "ImageList") or []:
        data = _get(entry, "ImageData")
        kind = _get(data, "DataType")
        if kind is None:
            continue
        # GMS names what an entry holds; a CL or EELS spectrum image has a wavelength or energy axis
        if "spectrum" in _text(_get(entry, "ImageTags", "Meta Data", "Format")).lower():
            spectra.append(_text(_get(entry, "ImageTags", "Meta Data", "Signal")) or "a spectrum")
            continue
        kinds.add(int(kind))
        if int(kind) in _PIXELS and _get(data, "Data") is not None:
            dims = [int(v) for _, v in _get(data, "Dimensions") or []]
            found.append((int(np.prod(dims)) if dims else 0, data))
    if found:
        return max(found, key=lambda f: f[0])[1]
    if spectra:
        raise InputError(f"cannot use '{path}': it holds a spectrum image ({spectra[0]}), not an image or a stack")
    if kinds & _COMPLEX:
        raise InputError(f"cannot use '{path}': it holds a complex image (a Fourier transform); "
                         "restoration needs the real-space image")
    if kinds & _COLOUR:
        raise InputError(f"cannot use '{path}': it holds only a colour picture, no greyscale image")
    if kinds:
        raise InputError(f"cannot use '{path}': its image has pixel type {sorted(kinds)[0]}, which is not supported")
    raise InputError(f"cannot use '{path}': it holds no image")


def _load(path: Path, data: list[tuple[str, Any]], order: str) -> ImageData:
    dims = [int(v) for _, v in _get(data, "Dimensions") or []]
    while len(dims) > 2 and dims[-1] == 1:
        dims.pop()  # a stack of one
    if len(dims) < 2:
        raise InputError(f"cannot use '{path}': it holds a spectrum ({dims[0] if dims else 0} values), not an image")
    if len(dims) > 3:
        raise InputError(f"cannot use '{path}': it holds {len(dims)}-D data (e.g. 4D-STEM); expected a 2D image or a stack")
    if len(dims) == 3:
        third = (_get(data, "Calibrations", "Dimension") or [None] * 3)[2:3]
        unit = _text(_get(third[0][1], "Units")) if third and third[0] is not None else ""
        if unit.lower().endswith("ev"):  # EELS or EDS: an energy axis, not sections
            raise InputError(f"cannot use '{path}': it holds a spectrum image (its third axis is in {unit}), "
                             "not an image or a stack")
    dtype = np.dtype(_PIXELS[int(_get(data, "DataType"))]).newbyteorder(order)
    shape = tuple(reversed(dims))  # x varies fastest
    pixels = _get(data, "Data")
    stored = pixels.count * pixels.dtype.itemsize if isinstance(pixels, _Blob) else pixels.nbytes
    if stored != int(np.prod(shape)) * dtype.itemsize or 0 in shape:
        raise InputError(f"cannot read '{path}': its pixels ({stored} bytes) do not fill its size {shape} of {dtype}")
    if isinstance(pixels, _Blob):
        if stored >= MRC_MMAP_MIN_BYTES:
            array = np.memmap(path, dtype=dtype, mode="r", offset=pixels.offset, shape=shape)
        else:
            array = np.fromfile(path, dtype=dtype, count=int(np.prod(shape)), offset=pixels.offset)
            array = array.reshape(shape).astype(dtype.newbyteorder("="))
    else:  # a tiny image, decoded with the tags
        array = np.frombuffer(pixels.tobytes(), dtype.newbyteorder("=")).reshape(shape).copy()
    spacing, unit = _calibration(_get(data, "Calibrations", "Dimension"), len(shape))
    third = (_get(data, "Calibrations", "Dimension") or [])[2:3] if len(shape) == 3 else []
    timed = bool(third) and is_time_unit(_text(_get(third[0][1], "Units")))  # frames in time, not sections
    axes = "TYX" if timed else "ZYX"[-len(shape):]
    return ImageData(data=array, spacing=spacing, unit=unit, axes=axes, path=path)


def _calibration(axes: Any, ndim: int) -> tuple[tuple[float, ...] | None, str | None]:
    """The pixel size in nm, z first, from the per-axis calibration (x first in the file)."""
    sizes: list[float | None] = []
    for _, axis in (axes or [])[:ndim]:
        scale, factor = _get(axis, "Scale"), nm_factor(_text(_get(axis, "Units")))
        ok = factor is not None and scale is not None and np.isfinite(scale) and scale > 0
        if ok and isinstance(scale, np.float32):  # DM keeps scales as float32: 0.0125, not 0.012500000186
            scale = float(np.format_float_scientific(scale, unique=True))
        sizes.append(float(f"{abs(float(scale)) * factor:.12g}") if ok else None)
    sizes += [None] * (ndim - len(sizes))
    x, y = sizes[0], sizes[1]
    if x is None or y is None:
        return None, None
    z = [sizes[2] if sizes[2] is not None else 1.0] if ndim == 3 else []
    return tuple(z + [y, x]), "nm"
