"""Calibration: pixel size per axis, units (converted to nanometres where recognisable) and
axis letters, as TIFF (OME-XML, ImageJ, our JSON description, what SEM and TEM consoles
record in their tags or beside the file, resolution tags) and zarr
(our attributes, OME-NGFF ``multiscales``) store them."""

from __future__ import annotations

import codecs
import math
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..errors import InputError
from .consoles import console_calibration
from .units import nm_factor, tidy

__all__ = ["SPATIAL_AXES", "to_nm", "check_spacing", "check_origin", "check_axes", "tiff_calibration",
           "zarr_calibration", "zarr_origin", "ngff_multiscales"]

SPATIAL_AXES = frozenset("ZYX")

# What ImageJ and others write for "not calibrated".
_NO_UNIT = frozenset({"", "pixel", "pixels", "px", "none"})


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


def to_nm(
    spacing: Sequence[float], units: Sequence[str | None], axes: str | None
) -> tuple[tuple[float, ...], str | None]:
    """Convert per-axis spacing with per-axis units to nm where every spatial unit is known.

    Non-spatial axes (time, channel) keep their values. If any spatial unit is unknown the
    values are left alone and the first spatial unit string is returned.
    """
    spatial = [
        i for i in range(len(spacing)) if axes is None or i >= len(axes) or axes[i] in SPATIAL_AXES
    ]
    values = [float(s) for s in spacing]
    spatial_units = [units[i] for i in spatial if units[i] is not None]
    if not spatial_units:
        return tuple(values), None
    factors = [nm_factor(units[i]) for i in spatial]
    if any(f is None for f in factors):
        # An unknown or missing unit on some spatial axis: keep the numbers as the file has them.
        return tuple(values), spatial_units[0]
    for i, f in zip(spatial, factors, strict=True):
        values[i] = tidy(values[i] * f)
    return tuple(values), "nm"


def check_spacing(
    spacing: Sequence[float] | None, ndim: int, path: Path
) -> tuple[float, ...] | None:
    """Spacing to write with an ``ndim``-D image at ``path``: positive numbers, one per axis."""
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


def check_origin(
    origin: Sequence[float] | None, ndim: int, path: Path
) -> tuple[float, ...] | None:
    """Origin to write with an ``ndim``-D image at ``path``: finite numbers, one per axis;
    None for none or all zeros (nothing to record)."""
    if origin is None:
        return None
    try:
        values = tuple(float(v) for v in origin)
    except (TypeError, ValueError):
        raise InputError(f"cannot write '{path}': origin {origin!r} is not a list of numbers") from None
    if len(values) != ndim:
        raise InputError(f"cannot write '{path}': origin has {len(values)} values but the image has {ndim} axes")
    if not all(math.isfinite(v) for v in values):
        raise InputError(f"cannot write '{path}': origin values must be finite, got {values}")
    return values if any(values) else None


def check_axes(axes: str | None, ndim: int, path: Path) -> str | None:
    """Axis letters to write with an ``ndim``-D image (default ``YX`` / ``ZYX``)."""
    if axes is None:
        return {2: "YX", 3: "ZYX"}.get(ndim)
    axes = str(axes).upper()
    if len(axes) != ndim or len(set(axes)) != ndim or not axes.isalpha():
        raise InputError(
            f"cannot write '{path}': axes '{axes}' must name each of the {ndim} axes once"
        )
    return axes


def tiff_calibration(
    tif: Any, series: Any, series_axes: str, ndim: int
) -> tuple[tuple[float, ...] | None, list[str | None] | None, str | None, str | None]:
    """Spacing aligned to the series axes, a unit per axis, the declared axes (or None), and
    the record the spacing came from (or None).

    Sources in order: OME-XML, ImageJ description + resolution tags, our own JSON description,
    what an SEM or TEM console recorded (:mod:`.consoles`), plain resolution tags.
    """
    declared_axes = series_axes if (tif.is_ome or tif.is_imagej) else None
    per_axis: dict[str, tuple[float, str | None]]

    if tif.is_ome and tif.ome_metadata:
        per_axis = _ome_physical_sizes(tif.ome_metadata)
        if per_axis:
            return (*_align(per_axis, series_axes, ndim), declared_axes, "OME-XML")

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
            return (*_align(per_axis, series_axes, ndim), declared_axes, "ImageJ metadata")

    if tif.is_shaped and tif.shaped_metadata:
        md = tif.shaped_metadata[0]
        if isinstance(md.get("axes"), str) and len(md["axes"]) == ndim:
            declared_axes = md["axes"].upper()
        spacing = md.get("spacing")
        if isinstance(spacing, list) and spacing:
            values = _match_shaped(spacing, md.get("shape"), ndim)
            if values is not None:
                unit = _clean_unit(md.get("unit"))
                return tuple(values), [unit] * ndim, declared_axes, "emdiffuse metadata"

    per_axis, source = console_calibration(tif)
    if "T" in per_axis:  # the console says the stack is a series in time
        per_axis = {k: v for k, v in per_axis.items() if k != "T"}
        if ndim == 3 and declared_axes is None:
            declared_axes = series_axes = "TYX"
    elif "Z" in per_axis and ndim == 3 and declared_axes is None:
        series_axes = "ZYX"  # tifffile calls undeclared pages "I"; the console says they are sections
    if not per_axis:
        per_axis, source = _plain_resolution(tif.pages.first), "resolution tags"
    if per_axis:
        return (*_align(per_axis, series_axes, ndim), declared_axes, source)
    return None, None, declared_axes, None


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
        xy_unit if (u is None and letter in SPATIAL_AXES) else u
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
    return {"X": (tidy(factor / xres), "nm"), "Y": (tidy(factor / yres), "nm")}


def zarr_calibration(
    array: Any, parent: Any, name: str
) -> tuple[tuple[float, ...] | None, str | None, str | None]:
    """Spacing (nm where known), unit and axes of a zarr array: its own attributes, else the
    OME-NGFF metadata of the group ``parent`` that holds it as ``name``."""
    ndim = array.ndim
    attrs = dict(array.attrs)
    own_axes = attrs.get("axes")
    axes = own_axes.upper() if isinstance(own_axes, str) and len(own_axes) == ndim else None
    found = None
    if parent is not None:
        try:
            found = _ngff_scale(dict(parent.attrs), name, ndim)
        except (TypeError, ValueError, KeyError, AttributeError):  # malformed metadata
            found = None
    axes = axes or (found[2] if found is not None else None)

    spacing = attrs.get("spacing")
    if isinstance(spacing, list) and len(spacing) == ndim:
        try:
            values = tuple(float(s) for s in spacing)
        except (TypeError, ValueError):
            values = None
        if values is not None:
            unit = _clean_unit(attrs.get("unit"))
            values, unit = to_nm(values, [unit] * ndim, axes)
            return values, unit, axes

    if found is not None:
        values, unit = to_nm(found[0], found[1], axes)
        return values, unit, axes
    return None, None, axes


def ngff_multiscales(attrs: Any) -> list:
    """A group's OME-NGFF ``multiscales`` list: 0.4 and earlier keep it at the top of the
    attributes, 0.5 under ``"ome"``; empty when there is none.

    Examples
    --------
    >>> ngff_multiscales({"ome": {"version": "0.5", "multiscales": [{"datasets": []}]}})
    [{'datasets': []}]
    >>> ngff_multiscales({"spacing": [1, 1]})
    []
    """
    if not isinstance(attrs, dict):
        return []
    found = attrs.get("multiscales") or (attrs.get("ome") if isinstance(attrs.get("ome"), dict) else {}).get("multiscales")
    return found if isinstance(found, list) else []


def zarr_origin(array: Any, parent: Any, name: str, axes: str | None) -> tuple[float, ...] | None:
    """Where the first pixel's centre of a zarr array lies (nm where the unit is known, as its
    spacing): its own ``origin`` attribute (with its ``unit``), else the OME-NGFF translation
    of dataset ``name`` in the group ``parent`` (and the multiscale's own scale and
    translation around it); None when absent, malformed or all zeros.

    Examples
    --------
    >>> class Node:
    ...     ndim, attrs = 2, {"origin": [0.5, 1.0], "unit": "micrometer"}
    >>> zarr_origin(Node(), None, "", "YX")
    (500.0, 1000.0)
    """
    ndim = array.ndim
    attrs = dict(array.attrs)
    found: tuple[list[float], list[str | None]] | None = None
    own = attrs.get("origin")
    if isinstance(own, list) and len(own) == ndim:
        try:
            found = [float(v) for v in own], [_clean_unit(attrs.get("unit"))] * ndim
        except (TypeError, ValueError):
            found = None
    if found is None and parent is not None:
        try:
            found = _ngff_translation(dict(parent.attrs), name, ndim)
        except (TypeError, ValueError, KeyError, AttributeError):  # malformed metadata
            found = None
    if found is None or not all(math.isfinite(v) for v in found[0]) or not any(found[0]):
        return None
    return to_nm(found[0], found[1], axes)[0]


def _ngff_translation(attrs: dict, name: str, ndim: int) -> tuple[list[float], list[str | None]] | None:
    """Translation of dataset ``name`` (OME-NGFF 0.4 / 0.5): the outer scale times the
    dataset's translation, plus the outer translation; with the axes' units."""
    for ms in ngff_multiscales(attrs):
        match = next((d for d in ms.get("datasets") or [] if str(d.get("path")) == name), None)
        if match is None:
            continue
        inner = _of_type(match.get("coordinateTransformations"), "translation", ndim) or [0.0] * ndim
        outer_scale = _of_type(ms.get("coordinateTransformations"), "scale", ndim) or [1.0] * ndim
        outer_shift = _of_type(ms.get("coordinateTransformations"), "translation", ndim) or [0.0] * ndim
        values = [s * t + o for s, t, o in zip(outer_scale, inner, outer_shift, strict=True)]
        axes_meta = ms.get("axes") or []
        units = [_clean_unit(a.get("unit")) if isinstance(a, dict) else None for a in axes_meta]
        return values, units if len(units) == ndim else [None] * ndim
    return None


def _ngff_scale(
    attrs: dict, name: str, ndim: int
) -> tuple[tuple[float, ...], list[str | None], str | None] | None:
    """Scale of dataset ``name``: OME-NGFF 0.4 (``multiscales``) or 0.5 (``ome.multiscales``)."""
    multiscales = ngff_multiscales(attrs)
    if not multiscales:
        return None
    for ms in multiscales:
        datasets = ms.get("datasets") or []
        match = next((d for d in datasets if str(d.get("path")) == name), None)
        if match is None:
            continue
        scale = _of_type(match.get("coordinateTransformations"), "scale", ndim)
        if scale is None:
            return None
        outer = _of_type(ms.get("coordinateTransformations"), "scale", ndim)
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


def _of_type(transforms: Any, kind: str, ndim: int) -> list[float] | None:
    """The values of the first OME-NGFF transformation of type ``kind`` ("scale",
    "translation") with one per axis."""
    for t in transforms or []:
        values = t.get(kind) if t.get("type") == kind else None
        if isinstance(values, list) and len(values) == ndim:
            return [float(v) for v in values]
    return None
