"""FEI / Thermo Fisher TIA series files (``.ser``: Tecnai, Titan and Talos TEM and STEM images
saved by TIA), read with their pixel size.

A SER file is little-endian: a header (``0x4949`` byte order, series id ``0x0197``, version
``0x0210`` or ``0x0220``, whose offsets are 4 or 8 bytes), the data type (``0x4122`` for 2D
images, ``0x4120`` for 1D spectra), the number of valid elements and where their offsets are.
Each 2D element holds its x and y calibration (offset, delta in metres, element), a pixel type
code, its width and height, then the pixels, x fastest, the bottom row first. One element is
an image (YX); several (a time or tilt series) are a stack (TYX). Read only.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from ..errors import InputError
from .common import ImageData, check_readable, reason
from .units import tidy

__all__ = ["read_ser"]

_VERSIONS = {0x0210: "<i4", 0x0220: "<i8"}
_IMAGES, _SPECTRA = 0x4122, 0x4120
_TYPES = {1: "<u1", 2: "<u2", 3: "<u4", 4: "<i1", 5: "<i2", 6: "<i4", 7: "<f4", 8: "<f8", 9: "<c8", 10: "<c16"}
# an element: x offset, delta (f8), element (i4); y likewise; the type (i2); width, height (i4)
_ELEMENT = np.dtype([("x0", "<f8"), ("dx", "<f8"), ("ex", "<i4"), ("y0", "<f8"), ("dy", "<f8"), ("ey", "<i4"),
                     ("type", "<i2"), ("nx", "<i4"), ("ny", "<i4")])  # fmt: skip


def read_ser(path: Path) -> ImageData:
    """Read a TIA ``.ser`` file of 2D images: one image (YX) or a series (TYX), with the pixel
    size in nm where the calibration is a length.

    Examples
    --------
    >>> read_ser(Path("/nowhere/scan.ser"))
    Traceback (most recent call last):
    ...
    napari_emdiffuse.engine.errors.InputError: cannot read '/nowhere/scan.ser': file not found
    """
    check_readable(path, "a TIA series file")
    try:
        raw = np.memmap(path, dtype=np.uint8, mode="r")
    except (OSError, ValueError) as exc:
        raise InputError(f"cannot read '{path}': {reason(exc)}") from exc
    try:
        return _read(path, raw)
    except InputError:
        raise
    except (ValueError, IndexError, TypeError, OverflowError) as exc:  # offsets or sizes beyond the file
        raise InputError(f"cannot read '{path}': the file is truncated or damaged ({reason(exc)})") from exc


def _read(path: Path, raw: np.ndarray) -> ImageData:
    if raw.size < 30 or _at(raw, 0, "<u2") != 0x4949 or _at(raw, 2, "<u2") != 0x0197:
        raise InputError(f"cannot read '{path}': not a TIA series file (.ser)")
    offset_type = _VERSIONS.get(int(_at(raw, 4, "<u2")))
    if offset_type is None:
        raise InputError(f"cannot read '{path}': unknown TIA series version {int(_at(raw, 4, '<u2')):#06x}")
    kind, valid = int(_at(raw, 6, "<i4")), int(_at(raw, 18, "<i4"))
    if kind == _SPECTRA:
        raise InputError(f"cannot read '{path}': it holds spectra (1D); the models restore images")
    if kind != _IMAGES or valid < 1:
        raise InputError(f"cannot read '{path}': it holds no image")
    table = int(_at(raw, 22, offset_type))
    offsets = np.frombuffer(raw, dtype=offset_type, count=valid, offset=table).astype(np.int64)
    elements = [np.frombuffer(raw, dtype=_ELEMENT, count=1, offset=int(o))[0] for o in offsets]
    first = elements[0]
    code, nx, ny = int(first["type"]), int(first["nx"]), int(first["ny"])
    if code in (9, 10):
        raise InputError(f"cannot read '{path}': its pixels are complex (a Fourier transform); the models restore images")
    if code not in _TYPES or nx < 1 or ny < 1:
        raise InputError(f"cannot read '{path}': unknown pixel type {code} or size {nx} x {ny}")
    if any((int(e["type"]), int(e["nx"]), int(e["ny"])) != (code, nx, ny) for e in elements):
        raise InputError(f"cannot read '{path}': its images differ in size or pixel type")
    dtype = np.dtype(_TYPES[code])
    planes = [np.frombuffer(raw, dtype=dtype, count=nx * ny, offset=int(o) + _ELEMENT.itemsize).reshape(ny, nx)
              for o in offsets]  # fmt: skip
    data = np.ascontiguousarray(np.stack(planes)[:, ::-1]).astype(dtype.newbyteorder("="), copy=False)  # bottom row first
    yx = _pixel_size(float(first["dy"]), float(first["dx"]))
    if len(planes) == 1:
        return ImageData(data=data[0], spacing=yx, unit="nm" if yx else None, axes="YX", path=path)
    return ImageData(data=data, spacing=(1.0, *yx) if yx else None, unit="nm" if yx else None, axes="TYX", path=path)


def _at(raw: np.ndarray, offset: int, dtype: str) -> int:
    return int(np.frombuffer(raw, dtype=dtype, count=1, offset=offset)[0])


def _pixel_size(dy: float, dx: float) -> tuple[float, float] | None:
    """TIA calibrates images in metres and diffraction patterns in 1/m; no TEM pixel is a
    millimetre wide, so a delta above that is no length."""
    if not all(math.isfinite(d) and 0 < d < 1e-3 for d in (dy, dx)):
        return None
    return tidy(dy * 1e9), tidy(dx * 1e9)
