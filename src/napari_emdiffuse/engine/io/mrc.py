"""MRC (IMOD, SerialEM, cryo-EM and tomography tools): reading with the voxel size, large
files memory-mapped, and atomic writing.

MRC stores the voxel size in Ångström; :class:`~.common.ImageData` carries it in nanometres.
Two conventions of the format matter for EM pixels:

- Mode 0 (bytes) is signed in the MRC2014 standard, but IMOD and older tools write unsigned
  bytes and say so in IMOD's header stamp. Such files are read as uint8, so bright pixels do
  not wrap round to negative values.
- There is no unsigned 8-bit mode that every reader agrees on, so uint8 images are written
  as uint16 (mode 6): lossless, and read alike everywhere.

Where the first pixel lies (a restored region's place in the image it came from) is kept in
the header's ``nxstart`` / ``nystart`` / ``nzstart``: the grid index of the first column, row
and section, the one placement field that every MRC reader reads alike (ChimeraX uses it where
the floating-point origin is zero; IMOD ignores it). The floating-point ``origin`` fields are
neither read nor written: IMOD subtracts them (``index x pixel - origin``) while Chimera, EMAN
and RELION add them, so one file cannot please both. An origin that is not a whole number of
pixels is therefore not stored in MRC (a ``.zarr`` or ImageJ TIFF output keeps it).

Maps compressed with gzip or bzip2 (``.map.gz``, as EMDB distributes them) are read too: into
memory where small, else unpacked once into a temporary file that is memory-mapped and
removed at once (the mapping keeps its pages), so a map larger than memory still opens.
"""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import InputError
from .atomic import atomic_file, fsync_dir
from .calibration import check_axes, check_origin, check_spacing
from .units import nm_factor
from .common import (
    MRC_SUFFIXES, ImageData, as_numpy, check_output_path, check_readable, reason, streams_lazily, suffix_of,
)

__all__ = ["MRC_MMAP_MIN_BYTES", "read_mrc", "write_mrc", "mrc_spacing", "mrc_origin", "imod_unsigned"]

#: MRC files at least this large stay memory-mapped (read-only) instead of being loaded.
MRC_MMAP_MIN_BYTES = 2**30

# IMOD's stamp in the header's spare bytes (offset 152) and its flag for signed bytes.
_IMOD_STAMP = 1146047817
_IMOD_SIGNED_BYTES = 1
_EXTRA2_OFFSET = 112  # where mrcfile's 'extra2' field starts; the stamp is at 152, flags at 156
# Pixel types mrcfile can write; float64 is narrowed, other types are refused.
_WRITABLE = (np.uint8, np.int8, np.uint16, np.int16, np.float16, np.float32)
_BAND = 256  # rows: a streamed 2D image's pieces


def read_mrc(path: Path) -> ImageData:
    """Read an MRC file: pixels (2D as ``YX``, stacks and volumes as ``ZYX``) and voxel size in nm."""
    import mrcfile

    check_readable(path, "an MRC file")
    try:
        with warnings.catch_warnings():
            # odd but readable headers (old tools) warn; the pixels are what matters here
            warnings.simplefilter("ignore", RuntimeWarning)
            mrc = _open_packed(path) if _packed(path) else mrcfile.mmap(path, mode="r", permissive=True)
    except InputError:
        raise
    except Exception as exc:
        raise InputError(f"cannot read '{path}': {reason(exc)}") from exc
    try:
        data, header, voxel = mrc.data, mrc.header, mrc.voxel_size
        starts = {name: int(header[name]) for name in ("nzstart", "nystart", "nxstart")}  # read before close
        if data is None:
            raise InputError(f"cannot read '{path}': not an MRC file, or its pixels are truncated")
        if int(header.mode) == 0 and imod_unsigned(header):
            data = data.view(np.uint8)
        if data.nbytes < MRC_MMAP_MIN_BYTES:
            data = np.array(data)  # small: load, and let the file go
    finally:
        mrc.close()
    if data.ndim not in (2, 3) or data.size == 0:
        raise InputError(f"cannot read '{path}': expected a 2D image or a 3D stack, got shape {data.shape}")
    spacing = mrc_spacing((float(voxel.z), float(voxel.y), float(voxel.x)), data.ndim)
    return ImageData(data=data, spacing=spacing, unit="nm" if spacing else None, axes="ZYX"[-data.ndim:], path=path,
                     origin=mrc_origin(starts, spacing))


def mrc_spacing(voxel: tuple[float, float, float], ndim: int) -> tuple[float, ...] | None:
    """The pixel size in nm of a file's ``ndim`` axes from its header's voxel size (z, y, x)
    in Å; None where x or y is not calibrated. An uncalibrated z (0) gets 1.0, like other
    uncalibrated axes.

    Examples
    --------
    >>> mrc_spacing((0.0, 12.5, 12.5), 3), mrc_spacing((0.0, 0.0, 0.0), 2)
    ((1.0, 1.25, 1.25), None)
    """
    size = list(voxel)[-ndim:]
    if size[-1] > 0 and size[-2] > 0:
        return tuple(float(f"{s / 10:.12g}") if s > 0 else 1.0 for s in size)
    return None


def mrc_origin(header: Any, spacing: tuple[float, ...] | None) -> tuple[float, ...] | None:
    """Where the first pixel lies per axis (z, y, x; y, x for an image), in the spacing's unit:
    the header's (or a mapping's) grid start, ``nzstart``, ``nystart``, ``nxstart``, times the pixel size; None
    where the file is not calibrated or starts at 0 (module docstring).

    Examples
    --------
    >>> head = {"nxstart": 20, "nystart": 10, "nzstart": 0}
    >>> mrc_origin(head, (2.0, 4.0))  # y, x: 10 rows of 2 nm, 20 columns of 4 nm
    (20.0, 80.0)
    >>> mrc_origin(head, None) is None
    True
    """
    if spacing is None:
        return None
    try:
        starts = [int(header[name]) for name in ("nzstart", "nystart", "nxstart")][-len(spacing):]
    except (KeyError, ValueError, TypeError, IndexError):
        return None
    if not any(starts):
        return None
    return tuple(float(f"{k * s:.12g}") for k, s in zip(starts, spacing))


def _grid_start(origin: tuple[float, ...] | None, spacing: tuple[float, ...] | None) -> tuple[int, ...] | None:
    """``origin`` as whole pixels per axis, or None where it is absent or not whole pixels."""
    if origin is None or spacing is None or len(origin) != len(spacing):
        return None
    starts = [o / s for o, s in zip(origin, spacing)]
    if not all(np.isfinite(k) and abs(k - round(k)) < 1e-6 and abs(k) < 2**31 for k in starts):
        return None
    return tuple(int(round(k)) for k in starts)


def _packed(path: Path) -> bool:
    """Whether the file is gzip or bzip2 data rather than a plain MRC (whose map ID, ``MAP``
    at byte 208, tells it from a plain map whose first bytes happen to look like either)."""
    with open(path, "rb") as fh:
        start = fh.read(212)
    return start[208:211] != b"MAP" and (start[:2] == b"\x1f\x8b" or start[:3] == b"BZh")


def _open_packed(path: Path) -> Any:
    """Open a compressed MRC: decompressed into memory below ``MRC_MMAP_MIN_BYTES`` of pixels,
    else into a temporary file, memory-mapped (read-only) and removed."""
    import bz2
    import gzip

    import mrcfile

    with mrcfile.open(path, header_only=True, permissive=True) as head:
        header = head.header
        if header is None:
            raise InputError(f"cannot read '{path}': not an MRC file inside the compression")
        try:
            itemsize = mrcfile.utils.dtype_from_mode(header.mode).itemsize
        except ValueError as exc:
            raise InputError(f"cannot read '{path}': {reason(exc)}") from exc
        size = int(header.nx) * int(header.ny) * int(header.nz) * itemsize + max(int(header.nsymbt), 0) + 1024
    if size < MRC_MMAP_MIN_BYTES:
        return mrcfile.open(path, permissive=True)
    where = tempfile.gettempdir()
    free = shutil.disk_usage(where).free
    if free < size:
        raise InputError(
            f"cannot read '{path}': unpacking it needs {size / 2**30:.1f} GiB in {where}, which has "
            f"{free / 2**30:.1f} GiB free; unpack it first (gunzip / bunzip2) or set TMPDIR elsewhere"
        )
    with open(path, "rb") as fh:
        opener = gzip.open if fh.read(2) == b"\x1f\x8b" else bz2.open
    fd, name = tempfile.mkstemp(suffix=".mrc", prefix="emdiffuse-unpacked-", dir=where)
    try:
        with os.fdopen(fd, "wb") as out, opener(path, "rb") as packed:
            shutil.copyfileobj(packed, out, 1 << 24)
        mrc = mrcfile.mmap(name, mode="r", permissive=True)
    except BaseException:
        os.unlink(name)
        raise
    try:
        os.unlink(name)  # POSIX keeps the mapped pages until the mapping goes
    except OSError:  # Windows: a mapped file cannot be removed yet
        atexit.register(_remove, name)
    return mrc


def _remove(name: str) -> None:
    try:
        os.unlink(name)
    except OSError:
        pass


def imod_unsigned(header: Any) -> bool:
    """Whether IMOD's stamp says mode-0 bytes are unsigned."""
    raw = bytes(header.tobytes())[_EXTRA2_OFFSET + 40:_EXTRA2_OFFSET + 48]
    stamp, flags = np.frombuffer(raw, dtype=header["nx"].dtype, count=2)
    return int(stamp) == _IMOD_STAMP and not int(flags) & _IMOD_SIGNED_BYTES


def write_mrc(
    path: str | os.PathLike[str],
    array: Any,
    *,
    spacing: tuple[float, ...] | None = None,
    unit: str = "nm",
    axes: str | None = None,
    provenance: dict[str, Any] | None = None,
    origin: tuple[float, ...] | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> Path:
    """Write a 2D image or a 3D stack atomically as MRC with its voxel size.

    Parameters
    ----------
    path : str or path-like
        ``.mrc``, ``.mrcs``, ``.rec``, ``.st``, ``.ali`` or ``.map`` file; replaced if it exists.
    array : array-like
        2D (``YX``) or 3D (``ZYX``) pixels. uint8 is stored as uint16, float64 as float32. A
        lazy stack (zarr, dask, a file read lazily) is written slice by slice, and a lazy 2D
        image of 2 GiB or more band by band, so neither need fit in memory.
    spacing : tuple of float, optional
        Pixel size per axis in ``unit`` (stored in Å).
    unit : str
        Unit of ``spacing``.
    axes : str, optional
        ``"YX"`` or ``"ZYX"`` (the only layouts MRC has).
    provenance : dict, optional
        How the image was made: its model, task and preset go into the header's labels.
    origin : tuple of float, optional
        Where the first pixel's centre lies per axis, in ``unit`` (a region's place in the
        image it was cut from): stored as the header's grid start where it is a whole number
        of pixels of ``spacing`` (module docstring), else not stored.
    progress : callable, optional
        For an array written piece by piece (see ``array``): called with (pieces written,
        pieces in all) before each slice or band and once the file is whole, before it takes
        its name. An exception it raises stops the write, and nothing is left.

    Returns
    -------
    pathlib.Path
        The final path.

    Raises
    ------
    InputError
        Bad path, spacing or axes, a pixel type or number of axes MRC cannot hold, or the disk
        refuses the write. The final path is never left half-written.

    Examples
    --------
    >>> import tempfile
    >>> out = Path(tempfile.mkdtemp()) / "stack.mrc"
    >>> _ = write_mrc(out, np.zeros((4, 8, 8), np.float32), spacing=(40.0, 4.0, 4.0))
    >>> read_mrc(out).spacing
    (40.0, 4.0, 4.0)
    >>> _ = write_mrc(out, np.zeros((4, 8, 8), np.float32), spacing=(40.0, 4.0, 4.0), origin=(80.0, 0.0, 12.0))
    >>> read_mrc(out).origin
    (80.0, 0.0, 12.0)
    """
    import mrcfile

    p = check_output_path(path)
    if suffix_of(p) not in MRC_SUFFIXES:
        raise InputError(f"cannot write '{p}' as MRC: the name must end in {', '.join(MRC_SUFFIXES)}")
    lazy = streams_lazily(array)
    data = array if lazy else as_numpy(array)
    shape, dtype = tuple(int(n) for n in data.shape), np.dtype(data.dtype)
    if len(shape) not in (2, 3) or 0 in shape:
        raise InputError(f"cannot write '{p}': MRC holds a 2D image or a 3D stack, got shape {shape}")
    dtype = np.dtype(np.float32) if dtype == np.float64 else dtype
    if dtype.type not in _WRITABLE:
        raise InputError(f"cannot write '{p}': MRC has no {dtype} pixels; write a .tif instead")
    axes = check_axes(axes, len(shape), p)
    if axes is not None and axes != "ZYX"[-len(shape):]:
        raise InputError(f"cannot write '{p}': MRC stores {'ZYX'[-len(shape):]} axes, not {axes}")
    spacing = check_spacing(spacing, len(shape), p)
    start = _grid_start(check_origin(origin, len(shape), p), spacing)
    try:
        with atomic_file(p) as tmp:
            if lazy:  # piece by piece into a memory-mapped file: larger than memory
                stored = np.dtype(np.uint16) if dtype == np.uint8 else dtype  # as mrcfile stores uint8
                mrc = mrcfile.new_mmap(tmp, shape=shape, mrc_mode=mrcfile.utils.mode_from_dtype(stored), overwrite=True)
            else:
                mrc = mrcfile.new(tmp, overwrite=True)
            with mrc:
                if lazy:
                    _fill(mrc, data, progress or (lambda done, total: None))
                else:
                    mrc.set_data(np.ascontiguousarray(data, dtype=dtype))
                if spacing is not None:
                    factor = nm_factor(unit)
                    angstrom = [s * 10 * (factor if factor is not None else 1.0) for s in spacing]
                    z, y, x = ([angstrom[-1]] + angstrom)[-3:] if len(shape) == 2 else angstrom
                    mrc.voxel_size = (x, y, z)
                if start is not None:
                    for name, k in zip(("nzstart", "nystart", "nxstart")[-len(start):], start):
                        mrc.header[name] = k
                for label in _labels(provenance):
                    mrc.add_label(label)
                mrc.flush()
            with open(tmp, "rb+") as fh:
                os.fsync(fh.fileno())
            if lazy and progress is not None:
                pieces = shape[0] if len(shape) == 3 else -(-shape[0] // _BAND)
                progress(pieces, pieces)
    except OSError as exc:
        raise InputError(f"cannot write '{p}': {reason(exc)}") from exc
    fsync_dir(p.parent)
    return p


def _fill(mrc: Any, data: Any, told: Callable[[int, int], None]) -> None:
    """Copy a lazy stack into a memory-mapped MRC slice by slice (a 2D image band by band),
    and its header statistics (min, max, mean, rms) from running sums: mrcfile's own pass over
    the whole map would make float64 copies of it. ``told(pieces before it, pieces)``."""
    lo, hi, total, squares, count, pending = np.inf, -np.inf, 0.0, 0.0, 0, 0
    rows = range(0, data.shape[0], _BAND)
    pieces = list(range(data.shape[0])) if data.ndim == 3 else [slice(y, y + _BAND) for y in rows]
    for i, at in enumerate(pieces):
        told(i, len(pieces))
        piece = as_numpy(data[at])
        mrc.data[at] = piece
        lo, hi = min(lo, float(piece.min())), max(hi, float(piece.max()))
        for rows in np.array_split(piece, max(1, piece.shape[0] // 256)):  # float64 of 256 rows at most
            values = rows.astype(np.float64)
            total += float(values.sum())
            squares += float(np.einsum("ij,ij->", values, values))
        count += piece.size
        pending += piece.nbytes
        if pending >= 1 << 28:  # 256 MiB written since the pages were last released
            _release(mrc)
            pending = 0
    mean = total / count
    mrc.header.dmin, mrc.header.dmax, mrc.header.dmean = lo, hi, mean
    mrc.header.rms = float(np.sqrt(max(squares / count - mean * mean, 0.0)))


def _release(mrc: Any) -> None:
    """Write the pages filled so far and let the kernel drop them: a map larger than memory
    then never holds more than the slices since the last call."""
    import mmap

    mrc.flush()
    mapped = getattr(mrc.data, "_mmap", None)
    if isinstance(mapped, mmap.mmap) and hasattr(mmap, "MADV_DONTNEED"):
        try:
            mapped.madvise(mmap.MADV_DONTNEED)
        except OSError:  # advice only
            pass


def _labels(provenance: dict[str, Any] | None) -> list[str]:
    """Up to two 80-character ASCII header labels saying what made the file."""
    if not provenance:
        return []
    what = " ".join(str(provenance[k]) for k in ("what", "task", "model", "preset") if provenance.get(k))
    text = f"{provenance.get('package', 'napari-emdiffuse')}: {what}".encode("ascii", "replace").decode()
    return [text[i:i + 80] for i in range(0, min(len(text), 160), 80)]
