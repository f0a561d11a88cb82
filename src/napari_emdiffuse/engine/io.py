"""Read and write images and volumes (TIFF and zarr) together with their pixel spacing.

Reading returns an :class:`ImageData`: the pixels (numpy for TIFF, a lazy ``zarr.Array`` for
zarr) plus spacing, unit and axes when the file says so. Spacing is converted to nanometres
whenever the unit is recognisable.

Writing is atomic: output first goes to a hidden or ``.partial-`` sibling of the final path
and is renamed into place only when complete, so a crash, a cancelled job or a full disk never
leaves a half-written file under the name the user asked for.

Distributed block writes
------------------------
:class:`ZarrWriter` creates the output store in ``writer.temp_path``. Other processes (dask
workers, a process pool) can open it by path and write chunk-aligned blocks::

    arr = open_zarr_for_block_writes(writer.temp_path)  # == zarr.open_array(p, mode="r+")
    arr[z0:z1, y0:y1, x0:x1] = block

The main process calls :meth:`ZarrWriter.commit` once every block is written. Blocks that do not
align with the chunks must not be written concurrently (zarr rewrites whole chunks).

This module must not import napari or Qt.
"""

from __future__ import annotations

import codecs
import json
import logging
import math
import os
import secrets
import shutil
import threading
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import tifffile

from .errors import InputError

if TYPE_CHECKING:  # heavy imports only for type checkers; loaded lazily at run time
    import dask.array
    import zarr

__all__ = [
    "ImageData",
    "ZarrWriter",
    "check_output_path",
    "is_complete",
    "open_zarr_for_block_writes",
    "read_image",
    "write_image",
    "write_tiff",
]

TIFF_SUFFIXES = (".tif", ".tiff")
ZARR_SUFFIX = ".zarr"
COMPLETE_ATTR = "emdiffuse_complete"
COMPLETE_FILE = ".emdiffuse_complete"

#: TIFFs larger than this are written as BigTIFF (classic TIFF offsets are 32-bit and many
#: readers treat them as signed).
BIGTIFF_MIN_BYTES = 2**31
#: Uncompressed, contiguous TIFFs at least this large are memory-mapped read-only instead of
#: loaded, so a multi-GB volume does not have to fit in RAM. Smaller ones are plain, writable
#: in-memory arrays.
TIFF_MMAP_MIN_BYTES = 2**30

# Sample formats ImageJ can open; anything else is written as a plain TIFF with a JSON description.
_IMAGEJ_DTYPES = (np.dtype("uint8"), np.dtype("uint16"), np.dtype("float32"))
_IMAGEJ_AXES = "TZCYXS"
_SPATIAL_AXES = frozenset("ZYX")

# Length units -> nanometres. Keys are lower-case; "µ" (micro sign) and "μ" (Greek mu) both occur.
_NM_PER_UNIT: dict[str, float] = {
    "pm": 1e-3, "picometer": 1e-3, "picometre": 1e-3,
    "a": 0.1, "å": 0.1, "\u212b": 0.1, "angstrom": 0.1, "angstroms": 0.1, "ångström": 0.1,
    "nm": 1.0, "nanometer": 1.0, "nanometre": 1.0, "nanometers": 1.0, "nanometres": 1.0,
    "um": 1e3, "µm": 1e3, "μm": 1e3, "micron": 1e3, "microns": 1e3,
    "micrometer": 1e3, "micrometre": 1e3, "micrometers": 1e3, "micrometres": 1e3,
    "mm": 1e6, "millimeter": 1e6, "millimetre": 1e6,
    "cm": 1e7, "centimeter": 1e7, "centimetre": 1e7,
    "m": 1e9, "meter": 1e9, "metre": 1e9,
}  # fmt: skip
# What ImageJ and others write for "not calibrated".
_NO_UNIT = frozenset({"", "pixel", "pixels", "px", "none"})

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


@dataclass
class ImageData:
    """Pixels of an image or volume and what is known about their physical size.

    Attributes
    ----------
    data : numpy.ndarray or dask.array.Array or zarr.Array
        The pixels as read. TIFF gives numpy (a read-only memory map for large uncompressed
        files), zarr gives a lazy ``zarr.Array`` whose chunks are read on indexing.
    spacing : tuple of float, optional
        Physical size of a pixel along each axis (same length as ``data.ndim``), in ``unit``.
        Axes without calibration (channels, time, an uncalibrated z) get 1.0. None if the
        file carries no calibration at all.
    unit : str, optional
        ``"nm"`` whenever the file's unit was recognised; otherwise the file's unit string as
        is; None if unknown.
    axes : str, optional
        Axis letters such as ``"YX"`` or ``"ZYX"`` when the file declares them (ImageJ, OME,
        our own metadata), else None.
    path : pathlib.Path, optional
        The file or zarr store read.
    """

    data: np.ndarray | dask.array.Array | zarr.Array
    spacing: tuple[float, ...] | None
    unit: str | None
    axes: str | None
    path: Path | None

    def __repr__(self) -> str:
        # The default repr would print every pixel.
        kind = type(self.data).__module__.split(".")[0] + "." + type(self.data).__name__
        return (
            f"ImageData(data=<{kind} shape={tuple(self.data.shape)} dtype={self.data.dtype}>, "
            f"spacing={self.spacing!r}, unit={self.unit!r}, axes={self.axes!r}, path={self.path!r})"
        )


# ----------------------------------------------------------------------------------------------
# small helpers


def _reason(exc: BaseException) -> str:
    """A short, one-line reason for an exception raised by a third-party reader."""
    if isinstance(exc, FileNotFoundError):
        return "file not found"
    if isinstance(exc, PermissionError):
        return "permission denied"
    if isinstance(exc, IsADirectoryError):
        return "it is a folder"
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    text = " ".join(str(exc).split())
    if not text:
        return type(exc).__name__
    return text if len(text) <= 200 else text[:197] + "..."


def _clean_unit(unit: Any) -> str | None:
    """Decode ImageJ's escaped units (``\\u00B5m``) and map "no unit" spellings to None."""
    if unit is None:
        return None
    if isinstance(unit, bytes):
        unit = unit.decode("utf-8", "replace")
    text = str(unit).strip()
    if "\\u" in text or "\\x" in text:
        try:
            text = codecs.decode(text, "unicode_escape")
        except UnicodeDecodeError:
            pass
    return None if text.lower() in _NO_UNIT else text


def _nm_factor(unit: str | None) -> float | None:
    if unit is None:
        return None
    return _NM_PER_UNIT.get(unit.strip().lower())


def _tidy(value: float) -> float:
    # 0.0037 um * 1000 = 3.7000000000000006; 12 significant digits is far below any tolerance.
    return float(f"{value:.12g}")


def _to_nm(
    spacing: Sequence[float], units: Sequence[str | None], axes: str | None
) -> tuple[tuple[float, ...], str | None]:
    """Convert per-axis spacing with per-axis units to nm where every spatial unit is known.

    Non-spatial axes (time, channel) keep their values. If any spatial unit is unknown the
    values are left alone and the first spatial unit string is returned.
    """
    spatial = [
        i for i in range(len(spacing)) if axes is None or i >= len(axes) or axes[i] in _SPATIAL_AXES
    ]
    values = [float(s) for s in spacing]
    spatial_units = [units[i] for i in spatial if units[i] is not None]
    if not spatial_units:
        return tuple(values), None
    factors = [_nm_factor(units[i]) for i in spatial]
    if any(f is None for f in factors):
        # An unknown or missing unit on some spatial axis: keep the numbers as the file has them.
        return tuple(values), spatial_units[0]
    for i, f in zip(spatial, factors, strict=True):
        values[i] = _tidy(values[i] * f)
    return tuple(values), "nm"


def _suffix(path: Path) -> str:
    return path.suffix.lower()


def _unsupported(path: Path) -> InputError:
    ext = path.suffix or "(none)"
    return InputError(
        f"cannot use '{path}': unsupported file type '{ext}'; use .tif, .tiff or .zarr"
    )


def _zarr_store_of(path: Path) -> tuple[Path, str] | None:
    """Split ``vol.zarr/0`` into the store and the key inside it; None if not inside a store."""
    for i, candidate in enumerate([path, *path.parents]):
        if _suffix(candidate) == ZARR_SUFFIX:
            inner = path.relative_to(candidate).as_posix() if i else ""
            return candidate, "" if inner == "." else inner
    return None


def _fsync_dir(directory: Path) -> None:
    # Makes the rename itself durable; not possible on every OS/filesystem, so best effort.
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _remove_path(path: Path) -> None:
    """Remove a file or folder tree, ignoring what is already gone."""
    try:
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
    except OSError:
        logger.warning("could not remove temporary output %s", path)


def _check_spacing(
    spacing: Sequence[float] | None, ndim: int, path: Path
) -> tuple[float, ...] | None:
    if spacing is None:
        return None
    try:
        values = tuple(float(s) for s in spacing)
    except (TypeError, ValueError):
        raise InputError(
            f"cannot write '{path}': spacing {spacing!r} is not a list of numbers"
        ) from None
    if len(values) != ndim:
        raise InputError(
            f"cannot write '{path}': spacing has {len(values)} values but the image has {ndim} axes"
        )
    if not all(math.isfinite(v) and v > 0 for v in values):
        raise InputError(f"cannot write '{path}': spacing values must be positive, got {values}")
    return values


def _check_axes(axes: str | None, ndim: int, path: Path) -> str | None:
    if axes is None:
        return {2: "YX", 3: "ZYX"}.get(ndim)
    axes = str(axes).upper()
    if len(axes) != ndim or len(set(axes)) != ndim or not axes.isalpha():
        raise InputError(
            f"cannot write '{path}': axes '{axes}' must name each of the {ndim} axes once"
        )
    return axes


def _zarr():
    import zarr  # lazy: zarr 3 takes a noticeable time to import

    return zarr


def _zarr_major() -> int:
    return int(_zarr().__version__.split(".")[0])


# ----------------------------------------------------------------------------------------------
# reading


def read_image(path: str | os.PathLike[str], *, key: str | None = None) -> ImageData:
    """Read a TIFF file or a zarr store.

    Parameters
    ----------
    path : str or path-like
        A ``.tif``/``.tiff`` file, a ``.zarr`` folder, or a path inside a store such as
        ``"volume.zarr/0"``.
    key : str, optional
        For a zarr group: the array to read. Default: the array named ``"0"`` or the only array.

    Returns
    -------
    ImageData
        TIFF pixels as numpy (axes of size 1 in front of the last three are dropped), zarr
        pixels as a lazy ``zarr.Array``.

    Raises
    ------
    InputError
        The path is missing, unreadable, corrupt, of an unsupported type, or not an array.
    """
    p = Path(path).expanduser()
    if _suffix(p) in TIFF_SUFFIXES:
        return _read_tiff(p)
    inside = _zarr_store_of(p)
    if inside is not None:
        store, inner = inside
        full_key = "/".join(k.strip("/") for k in (inner, key or "") if k and k.strip("/"))
        return _read_zarr(store, full_key or None)
    raise _unsupported(p)


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


def _read_tiff(path: Path) -> ImageData:
    if not path.exists():
        raise InputError(f"cannot read '{path}': file not found")
    if path.is_dir():
        raise InputError(f"cannot read '{path}': it is a folder, not a TIFF file")
    watcher = _TiffLogWatcher()
    tiff_logger = logging.getLogger("tifffile")
    tiff_logger.addHandler(watcher)
    try:
        with tifffile.TiffFile(path) as tif:
            if not tif.series:
                raise InputError(f"cannot read '{path}': the file holds no image")
            series = tif.series[0]
            series_axes = str(series.axes)
            data = _tiff_pixels(path, series)
            _check_imagej_complete(path, tif, series)
            try:
                spacing, units, known_axes = _tiff_calibration(tif, series, series_axes, data.ndim)
            except Exception as exc:  # odd metadata must not stop reading good pixels
                logger.warning("ignoring unreadable calibration in %s: %s", path, _reason(exc))
                spacing, units, known_axes = None, None, None
    except InputError:
        raise
    except MemoryError:
        raise
    except Exception as exc:
        raise InputError(f"cannot read '{path}': {_reason(exc)}") from exc
    finally:
        tiff_logger.removeHandler(watcher)
    if watcher.problems:
        raise InputError(
            f"cannot read '{path}': file is truncated or corrupt ({watcher.problems[0]})"
        )

    axes_for_units = known_axes or series_axes
    unit: str | None = None
    if spacing is not None and units is not None:
        aligned = axes_for_units if len(axes_for_units) == len(spacing) else None
        spacing, unit = _to_nm(spacing, units, aligned)

    data, spacing, known_axes = _squeeze_leading(data, spacing, known_axes)
    return ImageData(data=data, spacing=spacing, unit=unit, axes=known_axes, path=path)


def _tiff_pixels(path: Path, series: Any) -> np.ndarray:
    """Memory-map large uncompressed files (read-only), load everything else."""
    dtype = np.dtype(series.dtype)
    nbytes = int(np.prod(series.shape, dtype=np.int64)) * dtype.itemsize
    if nbytes >= TIFF_MMAP_MIN_BYTES and series.dataoffset is not None and dtype.isnative:
        try:
            return tifffile.memmap(path, series=0, mode="r")
        except ValueError:  # not mappable after all (e.g. odd layout): read normally
            pass
    return np.asarray(series.asarray())


def _check_imagej_complete(path: Path, tif: Any, series: Any) -> None:
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


def _tiff_calibration(
    tif: Any, series: Any, series_axes: str, ndim: int
) -> tuple[tuple[float, ...] | None, list[str | None] | None, str | None]:
    """Spacing aligned to the series axes, a unit per axis, and the declared axes (or None).

    Sources in order: OME-XML, ImageJ description + resolution tags, our own JSON description,
    plain resolution tags.
    """
    declared_axes = series_axes if (tif.is_ome or tif.is_imagej) else None
    per_axis: dict[str, tuple[float, str | None]]

    if tif.is_ome and tif.ome_metadata:
        per_axis = _ome_physical_sizes(tif.ome_metadata)
        if per_axis:
            return (*_align(per_axis, series_axes, ndim), declared_axes)

    if tif.is_imagej:
        ij = tif.imagej_metadata or {}
        unit = _clean_unit(ij.get("unit"))
        res = _resolution(tif.pages.first)
        if unit is not None and res is not None:
            per_axis = {
                "X": (1.0 / res[0], unit),
                "Y": (1.0 / res[1], unit),
            }
            if ij.get("spacing") is not None:
                per_axis["Z"] = (float(ij["spacing"]), unit)
            return (*_align(per_axis, series_axes, ndim), declared_axes)

    if tif.is_shaped and tif.shaped_metadata:
        md = tif.shaped_metadata[0]
        if isinstance(md.get("axes"), str) and len(md["axes"]) == ndim:
            declared_axes = md["axes"].upper()
        spacing = md.get("spacing")
        if isinstance(spacing, list) and spacing:
            values = _match_shaped(spacing, md.get("shape"), ndim)
            if values is not None:
                unit = _clean_unit(md.get("unit"))
                return tuple(values), [unit] * ndim, declared_axes

    per_axis = _plain_resolution(tif.pages.first)
    if per_axis:
        return (*_align(per_axis, series_axes, ndim), declared_axes)
    return None, None, declared_axes


def _match_shaped(spacing: list, shape: Any, ndim: int) -> list[float] | None:
    values = [float(s) for s in spacing]
    if len(values) == ndim:
        return values
    # tifffile may have squeezed axes of size 1 that the JSON shape still lists.
    if isinstance(shape, list) and len(shape) == len(values):
        kept = [v for v, n in zip(values, shape, strict=True) if n != 1]
        if len(kept) == ndim:
            return kept
    return None


def _align(
    per_axis: dict[str, tuple[float, str | None]], axes: str, ndim: int
) -> tuple[tuple[float, ...] | None, list[str | None] | None]:
    """Spread ``{"X": (value, unit), ...}`` over the array axes; other axes get 1.0."""
    if len(axes) != ndim:
        # Unknown layout: assume the spatial axes are last, as everywhere in this package.
        axes = ("?" * ndim + ("ZYX" if ndim >= 3 else "YX"))[-ndim:]
    spacing = []
    units: list[str | None] = []
    for letter in axes:
        value, unit = per_axis.get(letter, (1.0, None))
        spacing.append(float(value))
        units.append(unit)
    if not any(letter in per_axis for letter in axes):
        return None, None
    # An uncalibrated z in a calibrated stack shares the x/y unit (ImageJ's convention).
    xy_unit = next((u for letter, u in zip(axes, units, strict=True) if letter in "YX" and u), None)
    units = [
        xy_unit if (u is None and letter in _SPATIAL_AXES) else u
        for letter, u in zip(axes, units, strict=True)
    ]
    return tuple(spacing), units


def _ome_physical_sizes(ome_xml: str) -> dict[str, tuple[float, str | None]]:
    root = ET.fromstring(ome_xml)
    pixels = next((el for el in root.iter() if el.tag.rsplit("}", 1)[-1] == "Pixels"), None)
    if pixels is None:
        return {}
    out: dict[str, tuple[float, str | None]] = {}
    for letter in "XYZ":
        value = pixels.get(f"PhysicalSize{letter}")
        if value is None:
            continue
        # OME's default unit is the micrometre.
        out[letter] = (float(value), _clean_unit(pixels.get(f"PhysicalSize{letter}Unit", "µm")))
    return out


def _resolution(page: Any) -> tuple[float, float] | None:
    """XResolution/YResolution in pixels per unit, or None if absent or zero."""
    try:
        xres = page.tags["XResolution"].value
        yres = page.tags["YResolution"].value
    except KeyError:
        return None
    values = []
    for res in (xres, yres):
        if isinstance(res, tuple):
            num, den = res
            if not num or not den:
                return None
            values.append(num / den)
        else:
            if not res:
                return None
            values.append(float(res))
    return values[0], values[1]


_RESUNIT_NM = {2: 2.54e7, 3: 1e7, 4: 1e6, 5: 1e3}  # inch, cm, and tifffile's mm, um extensions


def _plain_resolution(page: Any) -> dict[str, tuple[float, str | None]]:
    res = _resolution(page)
    if res is None:
        return {}
    try:
        unit_code = int(page.tags["ResolutionUnit"].value)
    except KeyError:
        unit_code = 2  # the TIFF default is inch
    xres, yres = res
    if unit_code == 2 and all(float(r).is_integer() and r <= 1200 for r in res):
        # 72/96/300 dpi are what image editors write by default, not a calibration: an EM
        # pixel is far smaller than 1/1200 inch (21 um).
        return {}
    factor = _RESUNIT_NM.get(unit_code)
    if factor is None:  # RESUNIT NONE: relative only
        if xres == 1 and yres == 1:
            return {}
        return {"X": (1.0 / xres, None), "Y": (1.0 / yres, None)}
    return {"X": (_tidy(factor / xres), "nm"), "Y": (_tidy(factor / yres), "nm")}


def _squeeze_leading(
    data: np.ndarray, spacing: tuple[float, ...] | None, axes: str | None
) -> tuple[np.ndarray, tuple[float, ...] | None, str | None]:
    """Drop size-1 axes in front of the last three (singleton T or C of a hyperstack)."""
    if data.ndim <= 3:
        return data, spacing, axes
    drop = [i for i in range(data.ndim - 3) if data.shape[i] == 1]
    if not drop:
        return data, spacing, axes
    keep = [i for i in range(data.ndim) if i not in drop]
    data = data.squeeze(axis=tuple(drop))
    if spacing is not None:
        spacing = tuple(spacing[i] for i in keep)
    if axes is not None and len(axes) == len(keep) + len(drop):
        axes = "".join(axes[i] for i in keep)
    return data, spacing, axes


def _read_zarr(store: Path, key: str | None) -> ImageData:
    zarr = _zarr()
    if not store.exists():
        raise InputError(f"cannot read '{store}': file not found")
    if not store.is_dir():
        raise InputError(f"cannot read '{store}': not a zarr folder")
    try:
        node = zarr.open(str(store), mode="r")
    except Exception as exc:
        raise InputError(
            f"cannot read '{store}': not a zarr array or group ({_reason(exc)})"
        ) from exc

    parent = None
    name = ""
    if key:
        if not isinstance(node, zarr.Group):
            raise InputError(
                f"cannot read '{store}': it is a single array, so key '{key}' does not apply"
            )
        try:
            child = node[key]
        except Exception as exc:  # KeyError, or zarr's own errors for odd keys
            raise InputError(
                f"cannot read '{store}': no array '{key}' in it (arrays: {_list_arrays(node)})"
            ) from exc
        # The group holding the array carries the OME-NGFF metadata.
        parent_key, _, name = key.rpartition("/")
        parent = node[parent_key] if parent_key else node
        node = child
    if isinstance(node, zarr.Group):
        parent = node
        name = _default_array(node, store, key)
        node = node[name]

    spacing, unit, axes = _zarr_calibration(node, parent, name)
    return ImageData(data=node, spacing=spacing, unit=unit, axes=axes, path=store)


def _list_arrays(group: Any) -> str:
    names = sorted(group.array_keys())
    return ", ".join(names) if names else "none"


def _default_array(group: Any, store: Path, key: str | None) -> str:
    names = sorted(group.array_keys())
    if "0" in names:
        return "0"
    if len(names) == 1:
        return names[0]
    where = f"'{store}'" + (f" group '{key}'" if key else "")
    if not names:
        raise InputError(f"cannot read {where}: it contains no arrays")
    raise InputError(
        f"cannot read {where}: it holds several arrays ({', '.join(names)}); choose one with key"
    )


def _zarr_calibration(
    array: Any, parent: Any, name: str
) -> tuple[tuple[float, ...] | None, str | None, str | None]:
    ndim = array.ndim
    attrs = dict(array.attrs)
    own_axes = attrs.get("axes")
    axes = own_axes.upper() if isinstance(own_axes, str) and len(own_axes) == ndim else None

    spacing = attrs.get("spacing")
    if isinstance(spacing, list) and len(spacing) == ndim:
        try:
            values = tuple(float(s) for s in spacing)
        except (TypeError, ValueError):
            values = None
        if values is not None:
            unit = _clean_unit(attrs.get("unit"))
            values, unit = _to_nm(values, [unit] * ndim, axes)
            return values, unit, axes

    if parent is not None:
        try:
            found = _ngff_scale(dict(parent.attrs), name, ndim)
        except (TypeError, ValueError, KeyError, AttributeError):  # malformed metadata
            found = None
        if found is not None:
            values, units, ngff_axes = found
            axes = axes or ngff_axes
            values, unit = _to_nm(values, units, axes)
            return values, unit, axes
    return None, None, axes


def _ngff_scale(
    attrs: dict, name: str, ndim: int
) -> tuple[tuple[float, ...], list[str | None], str | None] | None:
    """Scale of dataset ``name``: OME-NGFF 0.4 (``multiscales``) or 0.5 (``ome.multiscales``)."""
    multiscales = attrs.get("multiscales") or (attrs.get("ome") or {}).get("multiscales")
    if not multiscales:
        return None
    for ms in multiscales:
        datasets = ms.get("datasets") or []
        match = next((d for d in datasets if str(d.get("path")) == name), None)
        if match is None:
            continue
        scale = _scale_of(match.get("coordinateTransformations"), ndim)
        if scale is None:
            return None
        outer = _scale_of(ms.get("coordinateTransformations"), ndim)
        if outer is not None:
            scale = [a * b for a, b in zip(scale, outer, strict=True)]
        axes_meta = ms.get("axes") or []
        units: list[str | None] = [None] * ndim
        letters = []
        if len(axes_meta) == ndim:
            for i, ax in enumerate(axes_meta):
                if isinstance(ax, dict):
                    units[i] = _clean_unit(ax.get("unit"))
                    letters.append(str(ax.get("name", "")))
                else:  # NGFF 0.3: plain names
                    letters.append(str(ax))
        axes = "".join(letters).upper() if letters and all(len(x) == 1 for x in letters) else None
        return tuple(float(s) for s in scale), units, axes
    return None


def _scale_of(transforms: Any, ndim: int) -> list[float] | None:
    for t in transforms or []:
        scale = t.get("scale") if t.get("type") == "scale" else None
        if isinstance(scale, list) and len(scale) == ndim:
            return [float(s) for s in scale]
    return None


# ----------------------------------------------------------------------------------------------
# writing


def check_output_path(path: str | os.PathLike[str]) -> Path:
    """Validate an output path before any work starts.

    Parameters
    ----------
    path : str or path-like
        Where a ``.tif``, ``.tiff`` or ``.zarr`` result will go.

    Returns
    -------
    pathlib.Path

    Raises
    ------
    InputError
        Unsupported extension, missing or unwritable output folder, or the path is taken by
        something that cannot be replaced (a folder for a TIFF, a file for a zarr store).
        Making sure the output is not one of the inputs is the caller's job.
    """
    p = Path(path).expanduser()
    ext = _suffix(p)
    if ext not in TIFF_SUFFIXES and ext != ZARR_SUFFIX:
        raise _unsupported(p)
    parent = p.parent
    if not parent.is_dir():
        raise InputError(f"output folder '{parent}' does not exist")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise InputError(f"output folder '{parent}' is not writable")
    if ext in TIFF_SUFFIXES and p.is_dir():
        raise InputError(f"cannot write '{p}': a folder with that name exists")
    if ext == ZARR_SUFFIX and p.exists() and not p.is_dir():
        raise InputError(f"cannot write '{p}': a file with that name exists")
    return p


def _as_numpy(array: Any) -> np.ndarray:
    compute = getattr(array, "compute", None)
    if callable(compute) and not isinstance(array, np.ndarray):  # dask
        array = compute()
    return np.asarray(array)


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
        numpy array (a dask array is computed).
    spacing : tuple of float, optional
        Pixel size per axis in ``unit``.
    unit : str
        Unit of ``spacing``.
    axes : str, optional
        Axis letters, default ``"YX"`` for 2D and ``"ZYX"`` for 3D.

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
    if _suffix(p) not in TIFF_SUFFIXES:
        raise InputError(f"cannot write '{p}' as TIFF: the name must end in .tif or .tiff")
    data = _as_numpy(array)
    if data.ndim < 2 or data.size == 0:
        raise InputError(
            f"cannot write '{p}': need a non-empty image with at least 2 axes, got {data.shape}"
        )
    axes = _check_axes(axes, data.ndim, p)
    spacing = _check_spacing(spacing, data.ndim, p)

    bigtiff = data.nbytes > BIGTIFF_MIN_BYTES
    rgb = axes is not None and axes.endswith("S") and data.shape[-1] in (3, 4)
    kwargs: dict[str, Any] = {"photometric": "rgb" if rgb else "minisblack"}
    use_imagej = (
        not bigtiff
        and data.dtype in _IMAGEJ_DTYPES
        and axes is not None
        and _is_subsequence(axes, _IMAGEJ_AXES)
        and axes.replace("S", "").endswith("YX")
        and ("S" not in axes or (rgb and data.dtype == np.uint8))
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
        kwargs.update(imagej=True, metadata=metadata)
    else:
        metadata = {}
        if axes is not None:
            metadata["axes"] = axes
        if spacing is not None:
            metadata["spacing"] = list(spacing)
            metadata["unit"] = unit
            ix = axes.index("X") if axes and "X" in axes else data.ndim - 1
            iy = axes.index("Y") if axes and "Y" in axes else data.ndim - 2
            factor = _nm_factor(unit)
            if factor is not None:
                # Centimetres are a standard TIFF unit, so other readers get the scale too.
                kwargs["resolution"] = (1e7 / (spacing[ix] * factor), 1e7 / (spacing[iy] * factor))
                kwargs["resolutionunit"] = "CENTIMETER"
            else:
                kwargs["resolution"] = (1.0 / spacing[ix], 1.0 / spacing[iy])
                kwargs["resolutionunit"] = "NONE"
        kwargs.update(metadata=metadata, bigtiff=bigtiff)

    # Hidden sibling in the same folder, so os.replace is an atomic rename on one filesystem.
    tmp = p.with_name(f".{p.name}.partial-{secrets.token_hex(4)}")
    try:
        tifffile.imwrite(tmp, data, **kwargs)
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, p)
    except BaseException as exc:
        _remove_path(tmp)
        if isinstance(exc, OSError):
            raise InputError(f"cannot write '{p}': {_reason(exc)}") from exc
        raise
    _fsync_dir(p.parent)
    return p


def _is_subsequence(axes: str, order: str) -> bool:
    it = iter(order)
    return all(letter in it for letter in axes)


def write_image(
    path: str | os.PathLike[str],
    array: Any,
    *,
    spacing: tuple[float, ...] | None = None,
    unit: str = "nm",
    axes: str | None = None,
    overwrite: bool = True,
) -> Path:
    """Write an image or volume as TIFF or zarr, chosen by the extension, atomically.

    Parameters
    ----------
    path : str or path-like
        ``.tif``, ``.tiff`` or ``.zarr``.
    array : numpy.ndarray or dask.array.Array or array-like
        Pixels. dask arrays are computed in full for TIFF and block by block for zarr.
    spacing : tuple of float, optional
        Pixel size per axis in ``unit``.
    unit : str
        Unit of ``spacing``.
    axes : str, optional
        Axis letters such as ``"ZYX"``.
    overwrite : bool
        Replace an existing output. If False and the path exists, raise InputError.

    Returns
    -------
    pathlib.Path
        The final path.
    """
    p = check_output_path(path)
    if not overwrite and (p.exists() or p.is_symlink()):
        raise InputError(f"cannot write '{p}': it already exists")
    if _suffix(p) in TIFF_SUFFIXES:
        return write_tiff(p, array, spacing=spacing, unit=unit, axes=axes)
    # Same default axes as TIFF, so both formats read back alike.
    axes = _check_axes(axes, len(array.shape), p) if hasattr(array, "shape") else axes

    import dask.array as da

    if isinstance(array, da.Array):
        lazy = array
    elif isinstance(array, np.ndarray):
        lazy = None
    elif hasattr(array, "shape") and hasattr(array, "dtype") and hasattr(array, "__getitem__"):
        # e.g. a zarr.Array: copy chunk by chunk rather than loading it whole.
        lazy = da.from_array(array, chunks=getattr(array, "chunks", "auto"))
    else:
        array = np.asarray(array)
        lazy = None

    if lazy is not None:
        # One dask block per zarr chunk, so parallel writes never share a chunk.
        chunks = tuple(max(c) if c else 1 for c in lazy.chunks)
        lazy = lazy.rechunk(chunks)
        with ZarrWriter(
            p, lazy.shape, lazy.dtype, chunks=chunks, spacing=spacing, unit=unit, axes=axes,
            overwrite=overwrite,
        ) as writer:
            da.store(lazy, writer.array, lock=False)
    else:
        with ZarrWriter(
            p, array.shape, array.dtype, spacing=spacing, unit=unit, axes=axes, overwrite=overwrite
        ) as writer:
            writer.array[...] = array
    return p


def open_zarr_for_block_writes(temp_path: str | os.PathLike[str]) -> zarr.Array:
    """Open a :class:`ZarrWriter`'s temporary store for writing blocks from another process.

    Equivalent to ``zarr.open_array(temp_path, mode="r+")``.
    """
    return _zarr().open_array(str(temp_path), mode="r+")


class ZarrWriter:
    """Create a zarr array for chunk-by-chunk output, atomically.

    The array lives in ``<name>.partial-<random>`` beside ``path`` until :meth:`commit` marks
    it complete and renames it into place. Used as a context manager it commits when the block
    ends normally and aborts (removes the temporary store) on any exception, including
    ``KeyboardInterrupt`` and ``GeneratorExit`` from a closed generator.

    The store is zarr format 2 (readable by zarr 2 and 3, and by ``dask.array.from_zarr``);
    spacing, unit and axes are stored as attributes ``"spacing"``, ``"unit"``, ``"axes"``.

    Parameters
    ----------
    path : str or path-like
        Final ``.zarr`` path.
    shape : tuple of int
        Array shape.
    dtype : numpy dtype-like
        Array dtype.
    chunks : tuple of int, optional
        Chunk shape; default lets zarr choose.
    spacing : tuple of float, optional
        Pixel size per axis in ``unit``.
    unit : str
        Unit of ``spacing``.
    axes : str, optional
        Axis letters such as ``"ZYX"``.
    attrs : dict, optional
        Extra JSON-serialisable attributes.
    overwrite : bool
        Replace an existing ``path`` at commit time. If False and ``path`` exists, InputError
        is raised here, before any work.

    Attributes
    ----------
    array : zarr.Array
        The array to write into. After commit it is re-opened read-only at the final path;
        after abort it is None.
    path : pathlib.Path
        Final path.

    Notes
    -----
    Other processes can open :attr:`temp_path` with :func:`open_zarr_for_block_writes` (or
    ``zarr.open_array(temp_path, mode="r+")``) and write chunk-aligned blocks.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        shape: Sequence[int],
        dtype: Any,
        *,
        chunks: Sequence[int] | None = None,
        spacing: Sequence[float] | None = None,
        unit: str = "nm",
        axes: str | None = None,
        attrs: dict[str, Any] | None = None,
        overwrite: bool = False,
    ) -> None:
        self.path = check_output_path(path)
        if _suffix(self.path) != ZARR_SUFFIX:
            raise InputError(f"cannot write '{self.path}' as zarr: the name must end in .zarr")
        if self.path.exists() and not overwrite:
            raise InputError(f"cannot write '{self.path}': it already exists")
        self.overwrite = overwrite
        shape = tuple(int(n) for n in shape)
        spacing = _check_spacing(spacing, len(shape), self.path)
        if axes is not None:
            axes = _check_axes(axes, len(shape), self.path)

        meta: dict[str, Any] = dict(attrs or {})
        if spacing is not None:
            meta["spacing"] = list(spacing)
            meta["unit"] = unit
        if axes is not None:
            meta["axes"] = axes
        meta[COMPLETE_ATTR] = False
        try:
            json.dumps(meta)
        except (TypeError, ValueError) as exc:
            raise InputError(
                f"cannot write '{self.path}': attributes are not JSON ({_reason(exc)})"
            ) from exc

        self._temp = self.path.with_name(f"{self.path.name}.partial-{secrets.token_hex(4)}")
        self._state = "open"
        kwargs: dict[str, Any] = {
            "mode": "w-",
            "shape": shape,
            "dtype": np.dtype(dtype),
            "chunks": tuple(int(c) for c in chunks) if chunks is not None else None,
            "fill_value": 0,
        }
        if _zarr_major() >= 3:
            kwargs["zarr_format"] = 2  # zarr 2 clients (and older dask) can read format 2
        try:
            self.array = _zarr().open_array(str(self._temp), **kwargs)
            self.array.attrs.update(meta)
        except BaseException as exc:
            _remove_path(self._temp)
            self._state = "aborted"
            if isinstance(exc, OSError):
                raise InputError(f"cannot write '{self.path}': {_reason(exc)}") from exc
            raise

    @property
    def temp_path(self) -> Path:
        """Where the array lives until :meth:`commit`."""
        return self._temp

    def commit(self) -> Path:
        """Mark the store complete and move it to :attr:`path`.

        An existing output is replaced (when ``overwrite=True``) only after the new store is
        complete: it is first renamed aside, then deleted once the new one is in place.

        Returns
        -------
        pathlib.Path
            The final path.
        """
        if self._state == "committed":
            return self.path
        if self._state != "open":
            raise RuntimeError(f"ZarrWriter for '{self.path}' was aborted; nothing to commit")
        try:
            self.array.attrs[COMPLETE_ATTR] = True
            marker = self._temp / COMPLETE_FILE
            with open(marker, "w") as fh:
                fh.write("complete\n")
                fh.flush()
                os.fsync(fh.fileno())
            _fsync_dir(self._temp)
        except OSError as exc:
            raise InputError(f"cannot finish '{self.path}': {_reason(exc)}") from exc

        backup: Path | None = None
        try:
            if self.path.exists() or self.path.is_symlink():
                if not self.overwrite:
                    # Someone created it while we worked; do not destroy hours of output.
                    raise InputError(
                        f"cannot write '{self.path}': it appeared while writing; "
                        f"the finished result is kept in '{self._temp}'"
                    )
                backup = self.path.with_name(f".{self.path.name}.old-{secrets.token_hex(4)}")
                os.replace(self.path, backup)
            try:
                os.replace(self._temp, self.path)
            except BaseException:
                if backup is not None:
                    os.replace(backup, self.path)  # put the old output back
                raise
        except OSError as exc:
            raise InputError(
                f"cannot move finished output to '{self.path}': {_reason(exc)}; "
                f"it is kept in '{self._temp}'"
            ) from exc
        _fsync_dir(self.path.parent)
        if backup is not None:
            _remove_path(backup)
        self._state = "committed"
        # Writes through the old handle would re-create the temp folder; hand out a read-only one.
        self.array = _zarr().open_array(str(self.path), mode="r")
        return self.path

    def abort(self) -> None:
        """Remove the temporary store. Does nothing after :meth:`commit` or a previous abort."""
        if self._state != "open":
            return
        self._state = "aborted"
        self.array = None  # type: ignore[assignment]
        _remove_path(self._temp)

    def __enter__(self) -> ZarrWriter:
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> bool:
        if exc_type is None:
            self.commit()
        else:
            self.abort()
        return False

    def __repr__(self) -> str:
        return f"ZarrWriter({str(self.path)!r}, state={self._state!r})"


def is_complete(path: str | os.PathLike[str]) -> bool:
    """True only for a zarr store that :meth:`ZarrWriter.commit` marked complete."""
    p = Path(path).expanduser()
    if not p.is_dir() or not (p / COMPLETE_FILE).is_file():
        return False
    try:
        node = _zarr().open(str(p), mode="r")
        return bool(node.attrs.get(COMPLETE_ATTR, False))
    except Exception:
        return False
