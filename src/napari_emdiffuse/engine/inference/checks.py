"""Checks and conversions every restoration entry point applies to its input."""

from __future__ import annotations

import math
import numbers
from typing import Any

import numpy as np

from ..errors import InputError
from ..io.views import drop_single_axes

__all__ = ["validate_image", "owned_array", "check_finite", "output_dtype", "check_block", "available_memory",
           "check_fits_in_memory", "pixel_size_note", "check_region", "region_with_margin", "check_factor",
           "check_volume"]

#: Pixels finer than this share of the finest a model learnt from get a note (see pixel_size_note).
FINE_PIXEL_SHARE = 0.6

_SUPPORTED = "uint8, uint16, int8, int16, int32, uint32, float16, float32 or float64"


def validate_image(image: Any, *, allow_3d: bool = True, name: str = "image") -> Any:
    """Check an array-like before any work; return it (leading singleton axes dropped).

    Raises :class:`InputError` with one line for empty, non-numeric, complex, RGB or
    too-many-dimension inputs. Values (Inf) are checked as slices are read.
    """
    if not hasattr(image, "shape") or not hasattr(image, "dtype"):
        try:
            image = np.asarray(image)
        except Exception:  # noqa: BLE001
            raise InputError(f"{name} must be an array (numpy, dask or zarr)") from None
    dtype = np.dtype(image.dtype)
    if dtype.kind == "c":
        raise InputError(f"{name} is complex-valued; pass a real image (e.g. its magnitude)")
    if dtype.kind not in "uif" and dtype.kind != "b":
        raise InputError(f"{name} has unsupported dtype {dtype}; use {_SUPPORTED}")
    if any(s == 0 for s in image.shape) or len(image.shape) == 0:
        raise InputError(f"{name} is empty (shape {tuple(image.shape)})")
    image = drop_single_axes(image, None, None)[0]  # a single T or C; a zarr array stays lazy
    if image.ndim == 3 and image.shape[-1] in (3, 4) and image.shape[0] > 4:
        raise InputError(
            f"{name} looks like an RGB(A) colour image (shape {tuple(image.shape)}); convert it to grey scale first"
        )
    if image.ndim < 2 or image.ndim > (3 if allow_3d else 2):
        want = "a 2D (YX) image or a 3D (ZYX) stack" if allow_3d else "a 2D (YX) image"
        more = "; several channels or time points? read one (--channel C, or read_image(..., channel=C))" if image.ndim > 3 else ""
        raise InputError(f"{name} has {image.ndim} dimensions {tuple(image.shape)}; pass {want}{more}")
    return image


def owned_array(block: Any) -> np.ndarray:
    """A numpy copy of a block (dask computed): never a view of the caller's data."""
    block = block.compute() if hasattr(block, "compute") else block
    return np.array(block, copy=True)  # never a view of the caller's data


def check_finite(values: np.ndarray, what: str) -> None:
    """Refuse Inf pixels with a one-line reason. NaN pixels are no data (see :mod:`.fill`);
    an input with nothing else is refused where the normalisation is fitted."""
    if values.dtype.kind == "f":
        inf = int(np.isinf(values).sum())
        if inf:
            raise InputError(f"{what} contains {inf} Inf pixels; replace them (NaN marks no data) before restoring")


def output_dtype(dtype: Any, image: Any) -> np.dtype:
    """The output dtype asked for (default the input's; bool becomes uint8), or a one-line refusal."""
    try:
        out = np.dtype(dtype) if dtype is not None else np.dtype(image.dtype)
    except TypeError:
        raise InputError(f"unknown output dtype {dtype!r}") from None
    if out.kind == "b":
        return np.dtype(np.uint8)
    if out.kind not in "uif":
        raise InputError(f"output dtype must be an integer or float type, got {out}")
    return out


def check_block(block: Any) -> None:
    """Refuse a block edge that is not a positive whole number of pixels."""
    if isinstance(block, bool) or not isinstance(block, (int, np.integer)) or block < 1:
        raise InputError(f"block must be a positive number of pixels, got {block!r}")


def available_memory() -> int | None:
    """Bytes of memory free for new allocations (psutil's ``available``), or None where it
    cannot be told."""
    try:
        import psutil  # installed with distributed
    except ImportError:  # pragma: no cover - a dependency's dependency
        return None
    try:
        return int(psutil.virtual_memory().available)
    except Exception:  # an odd platform: no check rather than a wrong one
        return None


def check_fits_in_memory(shape: tuple[int, ...], dtype: Any, *, uncertainty: bool) -> None:
    """Refuse, before any work, a result held in memory that the machine cannot hold: a run
    that would fail only after hours, or swap. Results written to zarr go block by block and
    need no such room.

    Examples
    --------
    >>> check_fits_in_memory((64, 64), np.uint8, uncertainty=True)  # a few kB: fine
    """
    need = int(np.prod(shape, dtype=np.float64)) * (np.dtype(dtype).itemsize + (4 if uncertainty else 0))
    free = available_memory()
    if free is None or need <= 0.8 * free:
        return
    what = " and its uncertainty" if uncertainty else ""
    raise InputError(
        f"the result{what} ({' x '.join(str(n) for n in shape)}, {need / 2**30:.1f} GiB) would not fit in "
        f"memory ({free / 2**30:.1f} GiB free); write it to a .zarr output, which is written block by block"
    )


def pixel_size_note(card: Any, spacing: tuple[float, ...] | None, unit: str | None) -> str | None:
    """A word where the image's pixels are much finer than any its model learnt from (the
    card's ``pixel_size_nm``, the finest of its training data): structures many pixels wide
    and smooth that the network's reach cannot average over. Measured with the bundled
    denoiser (which learnt from 3.3-16 nm): on liver resampled to 2 nm it fell 1.3 dB below the
    best Gaussian filter, and denoising a 2x2-binned copy recovered it; from 3.3 nm up it held.
    None where the model, the image or the unit (nm) says nothing.

    Examples
    --------
    >>> from types import SimpleNamespace
    >>> card = SimpleNamespace(pixel_size_nm=3.3)
    >>> pixel_size_note(card, (1.0, 1.0), "nm")[:32], pixel_size_note(card, (4.0, 4.0), "nm")
    ('pixels of 1 nm are much finer th', None)
    """
    finest = getattr(card, "pixel_size_nm", None)
    if finest is None or spacing is None or len(spacing) < 2 or unit != "nm":
        return None
    lateral = min(float(v) for v in spacing[-2:])
    if not lateral > 0 or lateral >= FINE_PIXEL_SHARE * finest:
        return None
    return (f"pixels of {lateral:.3g} nm are much finer than the {finest:g} nm the model learnt from: smooth "
            f"structures may come out less clean than a Gaussian filter's; for a better result bin first "
            f"(emdiffuse convert --bin 2) or fine-tune on this image")


def check_region(region: Any, shape: tuple[int, ...]) -> tuple[slice, slice]:
    """A region of an image's last two axes as (rows, columns) slices: given as two slices
    (step 1) or as ``(y0, y1, x0, x1)``; it must lie inside ``shape`` and hold a pixel.

    Examples
    --------
    >>> check_region((10, 20, 0, 5), (64, 64))
    (slice(10, 20, None), slice(0, 5, None))
    >>> check_region((slice(0, 8), slice(60, 70)), (64, 64))
    Traceback (most recent call last):
    ...
    napari_emdiffuse.engine.errors.InputError: region x 60:70 is not inside the image's 64 columns
    """
    h, w = (int(n) for n in shape[-2:])
    if isinstance(region, tuple) and any(isinstance(r, slice) and r.step not in (None, 1) for r in region):
        raise InputError("a region is a rectangle: its slices take no step")
    try:
        if len(region) == 2 and all(isinstance(r, slice) for r in region):
            bounds = [region[0].start or 0, h if region[0].stop is None else region[0].stop,
                      region[1].start or 0, w if region[1].stop is None else region[1].stop]
        elif len(region) == 4:
            bounds = list(region)
        else:
            raise TypeError
        y0, y1, x0, x1 = (_whole(v) for v in bounds)
    except (TypeError, ValueError):
        raise InputError(f"a region is (rows, columns) as two slices or (y0, y1, x0, x1), not {region!r}") from None
    for axis, (a, b), n, what in (("y", (y0, y1), h, "rows"), ("x", (x0, x1), w, "columns")):
        if not 0 <= a < b <= n:
            raise InputError(f"region {axis} {a}:{b} is not inside the image's {n} {what}")
    return slice(y0, y1), slice(x0, x1)


def _whole(value: Any) -> int:
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
        raise TypeError
    return int(value)


def region_with_margin(region: tuple[slice, slice], shape: tuple[int, ...], margin: int
                       ) -> tuple[tuple[slice, slice], tuple[slice, slice]]:
    """The rows and columns to read for ``region`` with ``margin`` pixels of context on each
    side (as far as the image goes), and where the region lies in what is read.

    Examples
    --------
    >>> region_with_margin((slice(10, 20), slice(0, 5)), (64, 64), 16)
    ((slice(0, 36, None), slice(0, 21, None)), (slice(10, 20, None), slice(0, 5, None)))
    """
    read, crop = [], []
    for r, n in zip(region, shape[-2:]):
        r0, r1 = max(0, r.start - margin), min(int(n), r.stop + margin)
        read.append(slice(r0, r1))
        crop.append(slice(r.start - r0, r.stop - r0))
    return (read[0], read[1]), (crop[0], crop[1])


def check_factor(factor: Any) -> int:
    """An isotropic reconstruction's z factor (1 + the slices to add per gap): a whole number
    of at least 2; one line otherwise.

    Examples
    --------
    >>> check_factor(3.0)
    3
    >>> check_factor(1)
    Traceback (most recent call last):
    ...
    napari_emdiffuse.engine.errors.InputError: factor must be at least 2 (1 + the slices to add per gap), got 1
    """
    ok = not isinstance(factor, (bool, np.bool_)) and isinstance(factor, (numbers.Integral, numbers.Real))
    if not ok or not math.isfinite(float(factor)) or not float(factor).is_integer():
        raise InputError(f"factor must be a whole number of at least 2, got {factor!r}")
    if int(factor) < 2:
        raise InputError(f"factor must be at least 2 (1 + the slices to add per gap), got {int(factor)}")
    return int(factor)


def check_volume(volume: Any) -> Any:
    """A volume to reconstruct isotropically: 3D (ZYX), at least 2 slices; one line otherwise."""
    vol = validate_image(volume, name="volume")
    if vol.ndim != 3:
        raise InputError(
            f"volume has {vol.ndim} dimensions {tuple(vol.shape)}; isotropic reconstruction needs a 3D (ZYX) stack"
        )
    if vol.shape[0] < 2:
        raise InputError(
            f"volume has {vol.shape[0]} slice along z; isotropic reconstruction needs at least 2 slices"
        )
    return vol
