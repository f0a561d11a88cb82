"""Amira / Avizo volumes (``.am``: FIB-SEM and serial-section stacks saved from Thermo Fisher's
Amira or Avizo), with their voxel size. Read only.

An AmiraMesh file is a text header, then its data sections. The header's first line names the
format (``# AmiraMesh BINARY-LITTLE-ENDIAN 2.1``, ``# AmiraMesh 3D BINARY 2.0`` big-endian,
``# AmiraMesh ASCII 1.0``; Avizo writes ``# Avizo ...``); ``define Lattice NX NY NZ`` gives
the grid, x fastest; ``Lattice { ushort Data } @1`` the pixel type and the section holding it,
optionally compressed (``@1(HxZip,N)``: zlib; ``@1(HxByteRLE,N)``: a control byte above 127
copies that many minus 128 bytes, else repeats the next byte that many times; N bytes
stored). ``BoundingBox xmin xmax ymin ymax zmin zmax`` spans the centres of the first and the
last voxels of a ``uniform`` grid, so a voxel is (max - min) / (n - 1); its unit is the one
``Units { Coordinates "nm" }`` names (Avizo), else none is known and the numbers are kept as
they are. The section starts after a line ``@1``. Label fields (segmentations), vector or
colour lattices and non-uniform grids are refused in one line.
"""

from __future__ import annotations

import re
import zlib
from pathlib import Path

import numpy as np

from ..errors import InputError
from .common import ImageData, check_readable, reason
from .units import nm_factor, tidy

__all__ = ["read_amira"]

_TYPES = {"byte": "u1", "ubyte": "u1", "sbyte": "i1", "short": "i2", "ushort": "u2", "int": "i4", "uint": "u4",
          "float": "f4", "double": "f8"}  # fmt: skip
_HEADER_MAX = 1 << 20  # bytes: headers are a few kB; the data sections follow
_MMAP_MIN_BYTES = 1 << 30


def read_amira(path: Path) -> ImageData:
    """Read an Amira / Avizo ``.am`` image or volume (``YX`` or ``ZYX``) and its voxel size.

    Parameters
    ----------
    path : pathlib.Path
        The file.

    Returns
    -------
    ImageData
        The pixels (a read-only memory map from 1 GiB up, where uncompressed); ``spacing``
        from the bounding box, in nm where the file names a length unit, else as stored with
        ``unit`` None; None for a grid of one voxel along x or y, or not uniform.

    Raises
    ------
    InputError
        Missing, truncated or not an AmiraMesh file; a label field, a vector or colour field,
        an unknown pixel type or compression.

    Examples
    --------
    >>> import tempfile
    >>> p = Path(tempfile.mkdtemp()) / "v.am"
    >>> head = (b"# AmiraMesh BINARY-LITTLE-ENDIAN 2.1\\n\\ndefine Lattice 3 2 2\\n\\nParameters {\\n"
    ...         b'  BoundingBox 0 10 0 5 0 40,\\n  CoordType "uniform",\\n  Units { Coordinates "nm" }\\n}\\n\\n'
    ...         b"Lattice { byte Data } @1\\n\\n# Data section follows\\n@1\\n")
    >>> _ = p.write_bytes(head + bytes(range(12)) + b"\\n")
    >>> img = read_amira(p)
    >>> img.data.shape, img.spacing, int(img.data[1, 0, 2])
    ((2, 2, 3), (40.0, 5.0, 5.0), 8)
    """
    check_readable(path, "an Amira file")
    with open(path, "rb") as fh:
        start = fh.read(_HEADER_MAX)
    first = start.split(b"\n", 1)[0].decode("latin-1").strip()
    m = re.match(r"#\s*(AmiraMesh|Avizo)\b(.*)$", first)
    if m is None:
        raise InputError(f"cannot read '{path}': not an AmiraMesh file (its first line is not '# AmiraMesh ...')")
    kind = m.group(2).upper()
    ascii_data = "ASCII" in kind
    if not ascii_data and "BINARY" not in kind:
        raise InputError(f"cannot read '{path}': an AmiraMesh file of kind '{m.group(2).strip()}', not a binary or "
                         "ASCII lattice")
    order = "<" if "LITTLE-ENDIAN" in kind else ">"
    text = start.decode("latin-1")
    dims = re.search(r"define\s+Lattice\s+(\d+)\s+(\d+)(?:\s+(\d+))?", text)
    lattice = re.search(r"Lattice\s*\{\s*(\w+)(\s*\[\s*\d+\s*\])?\s+(\w+)\s*\}\s*@(\d+)(?:\s*\(\s*(\w+)\s*,\s*(\d+)\s*\))?",
                        text)  # fmt: skip
    if dims is None or lattice is None:
        raise InputError(f"cannot read '{path}': no image lattice in it (a surface, a spatial graph or a cluster?)")
    nx, ny, nz = int(dims.group(1)), int(dims.group(2)), int(dims.group(3) or 1)
    type_name, components, field, section, encoding, stored = lattice.groups()
    if field.lower() == "labels" or "HxUniformLabelField" in text[: lattice.start()]:
        raise InputError(f"cannot read '{path}': it holds a label field (a segmentation), not an image")
    if components is not None:
        raise InputError(f"cannot read '{path}': its lattice has {components.strip('[] ')} values a voxel (a colour "
                         "or vector field); the models restore greyscale")
    if type_name not in _TYPES:
        raise InputError(f"cannot read '{path}': unknown pixel type '{type_name}'")
    if min(nx, ny, nz) < 1:
        raise InputError(f"cannot read '{path}': its lattice is {nx} x {ny} x {nz}")
    dtype = np.dtype(_TYPES[type_name]).newbyteorder(order)
    shape = (nz, ny, nx) if nz > 1 else (ny, nx)
    count = nx * ny * nz
    marker = re.search(rf"(?m)^@{section}[ \t\r]*\n", text[lattice.end():])  # the pixels start after its line
    if marker is None:
        raise InputError(f"cannot read '{path}': its data section @{section} is missing (truncated?)")
    offset = lattice.end() + marker.end()
    pixels = _pixels(path, offset, dtype, count, encoding, int(stored) if stored else None, ascii_data)
    spacing, unit = _voxel(text, (nx, ny, nz))
    if spacing is not None and nz == 1:
        spacing = spacing[1:]
    return ImageData(data=pixels.reshape(shape), spacing=spacing, unit=unit, axes="ZYX"[-len(shape):], path=path)


def _pixels(path: Path, offset: int, dtype: np.dtype, count: int, encoding: str | None, stored: int | None,
            ascii_data: bool) -> np.ndarray:
    need = count * dtype.itemsize
    size = path.stat().st_size
    try:
        if ascii_data:
            with open(path, "rb") as fh:
                fh.seek(offset)
                values = np.array(fh.read().split()[:count], dtype=np.float64)
            if values.size != count:
                raise InputError(f"cannot read '{path}': {values.size} values where its lattice needs {count}")
            return values.astype(dtype.newbyteorder("="))
        if encoding is None:
            if offset + need > size:
                raise InputError(f"cannot read '{path}': its data stop at byte {size}, {offset + need - size} bytes short "
                                 "(truncated?)")
            if need >= _MMAP_MIN_BYTES:
                return np.memmap(path, dtype=dtype, mode="r", offset=offset, shape=(count,))
            return np.fromfile(path, dtype=dtype, count=count, offset=offset).astype(dtype.newbyteorder("="))
        if stored is None or offset + stored > size:
            raise InputError(f"cannot read '{path}': its compressed data stop short (truncated?)")
        with open(path, "rb") as fh:
            fh.seek(offset)
            raw = fh.read(stored)
        if encoding == "HxZip":
            plain = zlib.decompress(raw)
        elif encoding == "HxByteRLE":
            plain = _unrle(raw, need)
        else:
            raise InputError(f"cannot read '{path}': unknown compression '{encoding}' (HxZip and HxByteRLE are read)")
    except InputError:
        raise
    except (OSError, zlib.error, ValueError) as exc:
        raise InputError(f"cannot read '{path}': {reason(exc)}") from exc
    if len(plain) != need:
        raise InputError(f"cannot read '{path}': {len(plain)} bytes of pixels where its lattice needs {need}")
    return np.frombuffer(plain, dtype=dtype).astype(dtype.newbyteorder("="))


def _unrle(raw: bytes, need: int) -> bytes:
    """Amira's HxByteRLE: a control byte c > 127 copies the next c - 128 bytes; else the next
    byte repeats c times."""
    out = bytearray()
    i, n = 0, len(raw)
    while i < n and len(out) < need:
        c = raw[i]
        if c > 127:
            out += raw[i + 1:i + 1 + (c & 0x7F)]
            i += 1 + (c & 0x7F)
        else:
            if i + 1 >= n:
                break
            out += bytes([raw[i + 1]]) * c
            i += 2
    return bytes(out)


def _voxel(text: str, n: tuple[int, int, int]) -> tuple[tuple[float, float, float] | None, str | None]:
    """(z, y, x) voxel size from a uniform grid's bounding box, and its unit."""
    box = re.search(r"BoundingBox\s+" + r"\s+".join([r"([-+0-9.eE]+)"] * 6), text)
    coord = re.search(r'CoordType\s+"(\w+)"', text)
    if box is None or (coord is not None and coord.group(1) != "uniform"):
        return None, None
    try:
        lo_hi = [float(v) for v in box.groups()]
    except ValueError:
        return None, None
    sizes = []
    for axis, count in enumerate(n):
        extent = lo_hi[2 * axis + 1] - lo_hi[2 * axis]
        sizes.append(extent / (count - 1) if count > 1 else None)
    x, y, z = sizes
    if x is None or y is None or not all(np.isfinite(v) and v > 0 for v in (x, y)):
        return None, None
    z = z if z is not None and np.isfinite(z) and z > 0 else x
    named = re.search(r'Units\s*\{[^}]*Coordinates\s+"([^"]+)"', text)
    unit = named.group(1) if named else None
    if unit is not None:
        try:  # the header is read byte for byte; Avizo writes "µm" in UTF-8
            unit = unit.encode("latin-1").decode("utf-8")
        except UnicodeError:
            pass
    factor = nm_factor(unit)
    if factor is None:
        return (tidy(z), tidy(y), tidy(x)), None
    return (tidy(z * factor), tidy(y * factor), tidy(x * factor)), "nm"
