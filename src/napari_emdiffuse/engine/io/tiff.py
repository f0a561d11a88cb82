"""TIFF: reading (with calibration, memory-mapping large files, refusing truncated ones) and
atomic writing (ImageJ hyperstacks where possible, so Fiji shows the calibration)."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import struct
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import tifffile

from ..errors import InputError
from .atomic import fsync_dir, partial_beside, remove_orphans_beside, remove_path
from .calibration import check_axes, check_spacing, tiff_calibration, to_nm
from .consoles import console_scan_rows, databar_note
from .common import (
    TIFF_SUFFIXES, ImageData, as_numpy, check_output_path, check_readable, grey_from_samples, is_url, reason,
    streams_lazily, suffix_of,
)
from .units import nm_factor
from .views import Cropped, LazyArray, ascending_index, drop_single_axes

__all__ = ["BIGTIFF_MIN_BYTES", "TIFF_MMAP_MIN_BYTES", "TiffArray", "read_tiff", "read_tiff_url", "write_tiff"]

#: TIFFs larger than this are written as BigTIFF (classic TIFF offsets are 32-bit and many
#: readers treat them as signed).
BIGTIFF_MIN_BYTES = 2**31
#: Uncompressed, contiguous TIFFs at least this large are memory-mapped read-only instead of
#: loaded, and compressed or tiled ones are read lazily (:class:`TiffArray`), so a multi-GB
#: volume does not have to fit in RAM. Smaller ones are plain, writable in-memory arrays.
TIFF_MMAP_MIN_BYTES = 2**30

# Sample formats ImageJ can open; anything else is written as a plain TIFF with a JSON description.
_IMAGEJ_DTYPES = (np.dtype("uint8"), np.dtype("uint16"), np.dtype("float32"))
_IMAGEJ_AXES = "TZCYXS"
_TILE = 512  # pixels: a streamed 2D image's tiles

# tifffile reports truncated or corrupt files through its logger and then returns whatever it
# could read (e.g. only the first page). These fragments of its messages mean data is missing.
_TIFF_FATAL_LOG = (
    "invalid page offset",
    "invalid offset to",
    "corrupted tag list",
    "corrupted file",
    "failed to read",
    "incompletely written",
    "missing data",
    "is missing",
)

logger = logging.getLogger(__name__)


class _TiffLogWatcher(logging.Handler):
    """Collects tifffile's log messages that mean a file is truncated or corrupt."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.thread = threading.get_ident()
        self.problems: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        if record.thread != self.thread:  # another thread reading another file
            return
        try:
            msg = record.getMessage()
        except Exception:  # a broken log record must not break reading
            return
        if any(fragment in msg for fragment in _TIFF_FATAL_LOG):
            # tifffile prefixes its messages with the object repr ("<tifffile.TiffPages @8> ...").
            self.problems.append(msg.split("> ", 1)[-1])


def read_tiff(path: Path, *, pixels: bool = True) -> ImageData:
    """Read a TIFF file: pixels, spacing (nm where the unit is known), unit and axes.

    ``pixels=False`` reads the metadata only: ``data`` is then a read-only stand-in of the
    image's shape and dtype that holds no memory (all zeros)."""
    check_readable(path, "a TIFF file")
    return _read(path, str(path), (lambda tif, series, index: _tiff_pixels(path, series, index)) if pixels else None,
                 path=path)  # fmt: skip


def read_tiff_url(url: str) -> ImageData | None:
    """The TIFF file at ``url`` read by byte range: pixels that lie uncompressed in one run (a
    stack whose metadata gives its layout: ImageJ, tifffile's; or one image) a band of rows at
    a time (:mod:`.rawurl`); compressed or tiled pixels (a large montage, an OME-TIFF
    pyramid's full resolution, a compressed stack of a page per slice) a tile or strip at a
    time (:class:`TiffArray`: tifffile's view of the file through
    :func:`~.fetch.open_file`). Only the header and the first page's tags are fetched first,
    then, for a stack whose layout its metadata does not give or whose pages are compressed,
    every page's tags (a request a page; kept, so the view walks them again for free). None
    for a colour image, for the file to be fetched whole."""
    from .fetch import open_file, remote_size
    from .rawurl import RawUrlArray, check_size, size_note

    made: list[Any] = []
    one = False  # a single image (no page after the first)

    def by_range(tif: Any, series: Any, index: int) -> Any:
        if str(series.axes).endswith("S") or not series.shape:  # colour
            raise _NotRaw
        if series.dataoffset is None:  # compressed or tiled: tifffile decodes the parts read
            pages = [tif.pages.first] if one else list(series.pages)
            need = max((int(o) + int(n) for p in pages if p is not None
                        for o, n in zip(p.dataoffsets, p.databytecounts)), default=0)  # fmt: skip
            if (size := remote_size(url)) is not None and size < need:
                raise InputError(f"cannot read '{url}': its pixels are truncated ({size} of {need} bytes)")
            # a stack: the tags walked here stay in fh's blocks; one image: larger blocks, for its tiles
            made.append(TiffArray(url, index, block=1 << 20) if one else TiffArray(url, index, handle=fh))
            return made[-1]
        made.append(RawUrlArray(url, series.dataoffset, series.shape, np.dtype(series.dtype).newbyteorder(tif.byteorder)))
        check_size(made[-1])
        return made[-1]

    fh: Any = None
    try:
        fh = open_file(url, block=16 << 10, keep=True)  # tags are small and scattered: small blocks, kept
        with tifffile.TiffFile(fh) as tif:  # the header and first page only
            one = _one_page(fh, tif)
        fh.seek(0)
        img = _read(fh, url, by_range, path=None)
    except _NotRaw:
        return None
    except InputError:
        raise
    except OSError as exc:
        raise InputError(f"cannot read '{url}': {reason(exc)}") from exc
    except (tifffile.TiffFileError, struct.error, IndexError, ValueError) as exc:  # the probe of a damaged file
        why = "no readable first page" if isinstance(exc, IndexError) else reason(exc)
        raise InputError(f"cannot read '{url}': not a readable TIFF file ({why})") from exc
    finally:
        if fh is not None and not any(isinstance(m, TiffArray) for m in made):
            fh.close()
    note = size_note(made[0]) if isinstance(made[0], RawUrlArray) else "read by byte range, only the parts a run needs"
    img.note = "; ".join(n for n in (img.note, note) if n)
    return img


def _one_page(fh: Any, tif: Any) -> bool:
    """Whether the first page of ``tif`` (open on ``fh``) is its only one: the offset after
    its tags that would point to the next is 0 (one small read; tifffile would walk the
    pages to count them)."""
    t = tif.tiff
    at = tif.pages.first.offset
    fh.seek(at)
    count = struct.unpack(t.tagnoformat, fh.read(t.tagnosize))[0]
    fh.seek(at + t.tagnosize + count * t.tagsize)
    return struct.unpack(t.offsetformat, fh.read(t.offsetsize))[0] == 0


class _NotRaw(Exception):
    """A TIFF's pixels are not one uncompressed run (:func:`read_tiff_url`)."""


def _read(source: Any, name: str, pixels: Any, *, path: Path | None) -> ImageData:
    """A TIFF from ``source`` (a path or an open file) named ``name`` in messages, its pixels
    from ``pixels(tif, series, index)`` (None: a stand-in of their shape and dtype)."""
    watcher = _TiffLogWatcher()
    tiff_logger = logging.getLogger("tifffile")
    tiff_logger.addHandler(watcher)
    try:
        with tifffile.TiffFile(source) as tif:
            if not tif.series:
                raise InputError(f"cannot read '{name}': the file holds no image")
            index = _image_series(tif)
            series = tif.series[index]
            series_axes = str(series.axes)
            if pixels is not None:
                data = pixels(tif, series, index)
            else:
                data = np.broadcast_to(np.zeros((), series.dtype), series.shape)
            _check_imagej_complete(name, tif, series)
            data, note = _without_databar(tif, data)
            try:
                spacing, units, known_axes, source_name = tiff_calibration(tif, series, series_axes, data.ndim)
            except Exception as exc:  # odd metadata must not stop reading good pixels
                logger.warning("ignoring unreadable calibration in %s: %s", name, reason(exc))
                spacing, units, known_axes, source_name = None, None, None, None
            ij_origin = (tif.imagej_metadata or {}) if tif.is_imagej and source_name == "ImageJ metadata" else {}
    except (InputError, MemoryError, _NotRaw):
        raise
    except Exception as exc:
        raise InputError(f"cannot read '{name}': {reason(exc)}") from exc
    finally:
        tiff_logger.removeHandler(watcher)
    if watcher.problems:
        raise InputError(
            f"cannot read '{name}': file is truncated or corrupt ({watcher.problems[0]})"
        )

    axes_for_units = known_axes or series_axes
    unit: str | None = None
    if spacing is not None and units is not None:
        aligned = axes_for_units if len(axes_for_units) == len(spacing) else None
        spacing, unit = to_nm(spacing, units, aligned)

    data, spacing, known_axes = _grey(name, data, spacing, known_axes, series_axes)
    data, spacing, known_axes = drop_single_axes(data, spacing, known_axes)
    return ImageData(data=data, spacing=spacing, unit=unit, axes=known_axes, path=path, note=note,
                     source=source_name if spacing is not None else None,
                     origin=_imagej_origin(ij_origin, spacing, known_axes))


def _imagej_origin(ij: dict, spacing: tuple[float, ...] | None, axes: str | None) -> tuple[float, ...] | None:
    """Where the first pixel lies, from an ImageJ calibration's ``xorigin`` / ``yorigin`` /
    ``zorigin``: pixels counted back from it (ImageJ's position of pixel i is
    ``(i - origin) x pixel size``), in the spacing's unit; None where there are none.

    Examples
    --------
    >>> _imagej_origin({"xorigin": -20.0, "yorigin": -8}, (4.0, 4.0), "YX")
    (32.0, 80.0)
    """
    if not ij or spacing is None or axes is None or len(axes) != len(spacing):
        return None
    try:
        at = [0.0 - float(ij.get(f"{a.lower()}origin") or 0.0) * s if a in "ZYX" else 0.0 for a, s in zip(axes, spacing)]
    except (TypeError, ValueError):
        return None
    return tuple(at) if any(at) and all(np.isfinite(at)) else None


def _image_series(tif: Any) -> int:
    """The series to read: the first, unless it is a colour picture and a greyscale image
    follows it (Olympus / EMSIS TEM cameras save a JPEG colour preview, then the 16-bit image)."""

    def colour(s: Any) -> bool:
        return str(s.axes).endswith("S") and int(s.shape[-1]) in (3, 4)

    if colour(tif.series[0]):
        for k, s in enumerate(tif.series[1:4], start=1):
            if not colour(s) and len(s.shape) >= 2:
                return k
    return 0


def _without_databar(tif: Any, data: np.ndarray) -> tuple[np.ndarray, str | None]:
    """An SEM image without the data bar its console pasted below the scan (Thermo Fisher /
    FEI, Hitachi; :func:`~.consoles.databar_rows`).

    The bar is black with white text: left in, it widens the intensity range the models
    normalise by and the tiles along it (demo-denoise on liver_1 at dose 30, a Helios bar under
    it: 29.12 dB against 29.80 without), and restoring its text means nothing."""
    y = data.ndim - 3 if data.ndim >= 3 and data.shape[-1] in (3, 4) else data.ndim - 2  # samples last
    split = console_scan_rows(tif, data.shape[y]) if y >= 0 else None
    if split is None:
        return data, None
    rows, bar = split
    if not isinstance(data, np.ndarray):  # read lazily (by URL): a lazy view, not a read of it all
        return Cropped(data, (*data.shape[:y], rows, *data.shape[y + 1 :])), databar_note(bar)
    return data[(slice(None),) * y + (slice(0, rows),)], databar_note(bar)


def _tiff_pixels(path: Path, series: Any, index: int) -> Any:
    """Memory-map large uncompressed files (read-only), read large compressed greyscale ones
    lazily, load everything else (``series``: the file's series number ``index``)."""
    dtype = np.dtype(series.dtype)
    nbytes = int(np.prod(series.shape, dtype=np.int64)) * dtype.itemsize
    if nbytes >= TIFF_MMAP_MIN_BYTES and series.dataoffset is not None and dtype.isnative:
        try:
            return tifffile.memmap(path, series=index, mode="r")
        except ValueError:  # not mappable after all (e.g. odd layout): read normally
            pass
    if nbytes >= TIFF_MMAP_MIN_BYTES and "S" not in str(series.axes):
        return TiffArray(path, index)
    return np.asarray(series.asarray())


class TiffArray(LazyArray):
    """An image series of a TIFF (the first by default; a compressed or tiled stack or image) read lazily:
    indexing decodes only the pages or tiles it touches (tifffile's zarr view of the file),
    negative steps included. The file stays open while the array is used; the array pickles as
    its path, so cluster workers open the file themselves (:func:`~.sources.open_source`).
    ``path`` may be a URL (:func:`read_tiff_url`): the parts read are then fetched by byte
    range and kept (:func:`~.fetch.open_file` with ``keep``) in ``block``-byte blocks (small:
    a stack's tags are scattered; a large image's tiles read faster in 1 MB blocks), one read at
    a time (the file handle is shared); ``handle``, such a file already open (whose tags a
    first walk fetched), is adopted. Workers reopen the file by URL, once per thread
    (:func:`~.sources.open_source` keeps it for their next tasks).

    Examples
    --------
    >>> import tempfile
    >>> p = Path(tempfile.mkdtemp()) / "stack.tif"
    >>> tifffile.imwrite(p, np.arange(60, dtype=np.uint8).reshape(3, 4, 5), compression="zlib")
    >>> a = TiffArray(p)
    >>> a.shape, a.dtype, a[2, ::-1, 0].tolist()
    ((3, 4, 5), dtype('uint8'), [55, 50, 45, 40])
    """

    def __init__(self, path: str | os.PathLike[str], series: int = 0, *, handle: Any = None,
                 block: int = 16 << 10) -> None:
        self.url = is_url(str(path))
        self.file = str(path) if self.url else str(Path(path).resolve())
        self.series = int(series)
        self._open: Any = None
        self._handle: Any = None
        self._fh = handle
        self._kept: Any = None
        self.block = int(block)
        self._lock = threading.Lock()
        z = self._zarr()
        self.shape: tuple[int, ...] = tuple(int(n) for n in z.shape)
        self.dtype = np.dtype(z.dtype)
        self.chunks: tuple[int, ...] = tuple(int(c) for c in z.chunks)

    def _zarr(self) -> Any:
        if self._open is None:
            import zarr

            if self.url:
                from .fetch import open_file

                try:
                    fh, self._fh = self._fh or open_file(self.file, block=self.block, keep=True), None
                    self._kept = getattr(fh, "cache", None)  # fsspec's mmap cache: the blocks fetched
                    fh.seek(0)  # tifffile takes the position it is given at as the file's start
                    self._handle = tifffile.TiffFile(fh)
                    store = self._handle.aszarr(series=self.series, level=0)
                except OSError as exc:
                    raise InputError(f"cannot read '{self.file}': {reason(exc)}") from exc
            else:
                store = tifffile.imread(self.file, aszarr=True, series=self.series, level=0)
            self._open = zarr.open(store, mode="r")
        return self._open

    def __getitem__(self, key: Any) -> np.ndarray:
        read, post = ascending_index(key, self.shape)
        try:
            with self._lock if self.url else contextlib.nullcontext():  # by URL, one file handle and its position
                out = np.asarray(self._zarr()[tuple(read)])
        except (IndexError, MemoryError, InputError):
            raise
        except Exception as exc:  # a damaged page or tile: each codec raises its own error
            raise InputError(f"cannot read '{self.file}': {reason(exc)}") from exc
        return out[post] if post else out

    @property
    def kept_bytes(self) -> int:
        """Bytes of the file by URL fetched and kept on this machine's disk (0 for a local file)."""
        cache = getattr(self, "_kept", None)
        blocks, size = getattr(cache, "blocks", None), getattr(cache, "blocksize", 0)
        return len(blocks) * int(size) if blocks is not None else 0

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_open": None, "_handle": None, "_lock": None, "_fh": None,
                "_kept": None}  # an open file does not travel

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()

    def __dask_tokenize__(self) -> tuple:
        if self.url:
            from .fetch import remote_size

            return ("TiffArray", self.file, self.series, remote_size(self.file))
        st = os.stat(self.file)
        return ("TiffArray", self.file, self.series, st.st_mtime_ns, st.st_size)

    def __repr__(self) -> str:
        return f"TiffArray('{self.file}', shape={self.shape}, dtype={self.dtype})"


def _check_imagej_complete(path: Path | str, tif: Any, series: Any) -> None:
    # A truncated ImageJ hyperstack silently reads as its first page(s); compare with the count
    # the ImageJ header promises.
    if not tif.is_imagej:
        return
    expected = (tif.imagej_metadata or {}).get("images")
    if not isinstance(expected, int) or expected <= 1:
        return
    axes = str(series.axes)
    plane = 1
    for letter, size in zip(axes, series.shape, strict=False):
        if letter in "YXS":
            plane *= int(size)
    planes = int(np.prod(series.shape, dtype=np.int64)) // max(plane, 1)
    if planes < expected:
        raise InputError(
            f"cannot read '{path}': file is truncated or corrupt "
            f"(ImageJ header promises {expected} images, found {planes})"
        )


def _grey(
    path: Path | str, data: np.ndarray, spacing: tuple[float, ...] | None, axes: str | None, series_axes: str
) -> tuple[np.ndarray, tuple[float, ...] | None, str | None]:
    """A grey image saved as RGB(A) (samples last, as viewers and consoles export) becomes grey.

    Planar samples (``SYX``) are left as planes: tifffile writes a 3- or 4-slice uint8 volume
    that way unless told otherwise, and such a file is a stack far more often than a picture.
    """
    if not series_axes.endswith("S") or len(series_axes) != data.ndim or data.shape[-1] not in (2, 3, 4):
        return data, spacing, axes
    data = grey_from_samples(data, path)
    if spacing is not None and len(spacing) == data.ndim + 1:
        spacing = spacing[:-1]
    if axes is not None and len(axes) == data.ndim + 1 and axes.endswith("S"):
        axes = axes[:-1]
    return data, spacing, axes


def _tiff_unit(unit: str | None) -> str:
    # ImageJ descriptions must be ASCII: ImageJ itself reads "um" as µm and escapes the rest.
    unit = (unit or "").strip() or "pixel"
    if unit in ("µm", "μm"):
        return "um"
    return unit.encode("ascii", "backslashreplace").decode("ascii")


def write_tiff(
    path: str | os.PathLike[str],
    array: np.ndarray,
    *,
    spacing: tuple[float, ...] | None = None,
    unit: str = "nm",
    axes: str | None = None,
    provenance: dict[str, Any] | None = None,
    origin: tuple[float, ...] | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> Path:
    """Write an image atomically as TIFF with its spacing, readable by :func:`read_image`.

    uint8, uint16 and float32 become ImageJ hyperstacks (Fiji shows the calibration). Other
    dtypes keep their type and get resolution tags plus a JSON description with spacing, unit
    and axes. Files over 2 GiB are BigTIFF (non-ImageJ layout, same metadata as above).

    Parameters
    ----------
    path : str or path-like
        ``.tif`` or ``.tiff`` file; replaced if it exists.
    array : array-like
        numpy array; a lazy stack (zarr, dask, a file read lazily) is written slice by slice,
        and a lazy 2D image of 2 GiB or more as 512 x 512 tiles read band by band, so neither
        need fit in memory.
    spacing : tuple of float, optional
        Pixel size per axis in ``unit``.
    unit : str
        Unit of ``spacing``.
    axes : str, optional
        Axis letters, default ``"YX"`` for 2D and ``"ZYX"`` for 3D.
    provenance : dict, optional
        How the image was made (model, preset, seed, ...): stored as JSON, in ImageJ's
        ``Info`` property (Fiji: Image > Show Info) or under ``provenance`` in the description.
    origin : tuple of float, optional
        Where the first pixel lies, in ``unit``, counted as ImageJ counts (from pixel
        corners): a calibrated ImageJ hyperstack records it as its ``xorigin`` / ``yorigin``
        / ``zorigin`` (in pixels, counted back), so Fiji gives a cut-out's pixels the
        coordinates they have in the image it came from. Other TIFFs do not record it.
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
        Bad path, spacing or axes, an empty array, or the disk refuses the write (full,
        read-only). Other exceptions propagate unchanged; the final path is never left
        half-written and the temporary file is removed.
    """
    p = check_output_path(path)
    if suffix_of(p) not in TIFF_SUFFIXES:
        raise InputError(f"cannot write '{p}' as TIFF: the name must end in .tif or .tiff")
    lazy = streams_lazily(array)
    data = array if lazy else as_numpy(array)
    shape, dtype = tuple(int(n) for n in data.shape), np.dtype(data.dtype)
    ndim, size = len(shape), int(np.prod(shape, dtype=np.int64))
    if ndim < 2 or size == 0:
        raise InputError(
            f"cannot write '{p}': need a non-empty image with at least 2 axes, got {shape}"
        )
    axes = check_axes(axes, ndim, p)
    spacing = check_spacing(spacing, ndim, p)
    if lazy and axes is not None and axes.endswith("S"):  # a colour image, not a stack: one page
        data, lazy = as_numpy(data), False

    bigtiff = size * dtype.itemsize > BIGTIFF_MIN_BYTES
    tiled = lazy and ndim == 2  # ImageJ reads no tiles, but a file this large is BigTIFF anyway
    rgb = axes is not None and axes.endswith("S") and shape[-1] in (3, 4)
    kwargs: dict[str, Any] = {"photometric": "rgb" if rgb else "minisblack"}
    use_imagej = (
        not bigtiff
        and not tiled
        and dtype in _IMAGEJ_DTYPES
        and axes is not None
        and _is_subsequence(axes, _IMAGEJ_AXES)
        and axes.replace("S", "").endswith("YX")
        and ("S" not in axes or (rgb and dtype == np.uint8))
    )
    if use_imagej:
        metadata: dict[str, Any] = {"axes": axes}
        if spacing is not None:
            ij_unit = _tiff_unit(unit)
            metadata["unit"] = ij_unit
            if "Z" in axes:
                metadata["spacing"] = spacing[axes.index("Z")]
            kwargs["resolution"] = (1.0 / spacing[axes.index("X")], 1.0 / spacing[axes.index("Y")])
            kwargs["resolutionunit"] = "NONE"
            if origin is not None and len(origin) == ndim and any(origin):
                for i, a in enumerate(axes):
                    if a in "ZYX" and origin[i]:
                        metadata[f"{a.lower()}origin"] = -float(origin[i]) / spacing[i]
        if provenance:
            metadata["Info"] = json.dumps(provenance, default=str)
        kwargs.update(imagej=True, metadata=metadata)
    else:
        metadata = {}
        if axes is not None:
            metadata["axes"] = axes
        if spacing is not None:
            metadata["spacing"] = list(spacing)
            metadata["unit"] = unit
            ix = axes.index("X") if axes and "X" in axes else ndim - 1
            iy = axes.index("Y") if axes and "Y" in axes else ndim - 2
            factor = nm_factor(unit)
            if factor is not None:
                # Centimetres are a standard TIFF unit, so other readers get the scale too.
                kwargs["resolution"] = (1e7 / (spacing[ix] * factor), 1e7 / (spacing[iy] * factor))
                kwargs["resolutionunit"] = "CENTIMETER"
            else:
                kwargs["resolution"] = (1.0 / spacing[ix], 1.0 / spacing[iy])
                kwargs["resolutionunit"] = "NONE"
        if provenance:
            metadata["provenance"] = provenance
        kwargs.update(metadata=metadata, bigtiff=bigtiff)

    # Hidden sibling in the same folder, so os.replace is an atomic rename on one filesystem.
    remove_orphans_beside(p)  # a killed run's hidden partial of this file
    tmp = partial_beside(p)
    try:
        pieces = -(-shape[0] // _TILE) if tiled else shape[0]
        told = progress if lazy and progress is not None else (lambda done, total: None)
        if tiled:  # tile by tile: an image larger than memory
            tifffile.imwrite(tmp, _tiles(data, dtype, told), shape=shape, dtype=dtype, tile=(_TILE, _TILE), **kwargs)
        elif lazy:  # page by page: a stack larger than memory
            tifffile.imwrite(tmp, _pages(data, dtype, told), shape=shape, dtype=dtype, **kwargs)
        else:
            tifffile.imwrite(tmp, data, **kwargs)
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        told(pieces, pieces)
        os.replace(tmp, p)
    except BaseException as exc:
        remove_path(tmp)
        if isinstance(exc, OSError):
            raise InputError(f"cannot write '{p}': {reason(exc)}") from exc
        raise
    fsync_dir(p.parent)
    return p


def _pages(stack: Any, dtype: np.dtype, told: Callable[[int, int], None]) -> Iterator[np.ndarray]:
    """The slices of a lazy stack, read one at a time; ``told(slices before it, slices)``."""
    for z in range(stack.shape[0]):
        told(z, stack.shape[0])
        yield np.asarray(as_numpy(stack[z]), dtype)


def _tiles(image: Any, dtype: np.dtype, told: Callable[[int, int], None]) -> Iterator[np.ndarray]:
    """The tiles of a lazy 2D image in file order, read one band of tile rows at a time;
    ``told(bands before it, bands)``."""
    height, width = image.shape
    for y in range(0, height, _TILE):
        told(y // _TILE, -(-height // _TILE))
        band = np.asarray(as_numpy(image[y:y + _TILE]), dtype)
        for x in range(0, width, _TILE):
            yield band[:, x:x + _TILE]  # tifffile pads the edge tiles


def _is_subsequence(axes: str, order: str) -> bool:
    it = iter(order)
    return all(letter in it for letter in axes)
