"""BigDataViewer HDF5 and N5 (Fiji's BigDataViewer and BigStitcher exports): which dataset is
the image, its pixel type, and its voxel size from the XML beside the file.

A BigDataViewer ``.h5`` keeps each view setup ``s00``, ``s01``, ... and time point ``t00000``
as a pyramid of datasets ``t00000/s00/0/cells`` (full resolution), ``t00000/s00/1/cells``, ...,
with the downsampling of each level in ``s00/resolutions`` (x, y, z). Java has no unsigned
types, so 16-bit unsigned pixels are stored as signed ``int16`` and read back as ``uint16``.
The voxel size lives in the project's XML (``<ViewSetup>``'s ``<voxelSize>``, x y z), which
names the ``.h5`` in its ``<ImageLoader format="bdv.hdf5">``. A BigDataViewer N5 container
keeps ``setup0/timepoint0/s0``, ``s1``, ... with each level's ``downsamplingFactors`` (x, y, z)
on ``setup0``, and its XML names the ``.n5`` in ``<ImageLoader format="bdv.n5">``.
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import numpy as np

from .calibration import to_nm

__all__ = ["bdv_level", "bdv_images", "bdv_dtype", "bdv_spacing", "bdv_n5_spacing"]

_CELLS = re.compile(r"^t(\d+)/s(\d+)/(\d+)/cells$")
_N5_LEVEL = re.compile(r"^setup(\d+)/timepoint(\d+)/s(\d+)$")


def bdv_level(name: str) -> tuple[int, int, int] | None:
    """(time point, setup, level) of a BigDataViewer dataset path, else None.

    Examples
    --------
    >>> bdv_level("t00000/s01/2/cells"), bdv_level("volumes/raw")
    ((0, 1, 2), None)
    """
    match = _CELLS.match(name.strip("/"))
    return tuple(int(g) for g in match.groups()) if match else None  # type: ignore[return-value]


def bdv_images(names: list[str]) -> list[str]:
    """The full-resolution datasets among ``names`` when they are a BigDataViewer file's
    (one per setup and time point), else ``names``."""
    levels = [n for n in names if bdv_level(n) is not None]
    if not levels or len(levels) != len(names):
        return names
    return [n for n in levels if bdv_level(n)[2] == 0]  # type: ignore[index]


def bdv_dtype(name: str, dtype: np.dtype) -> np.dtype:
    """The pixel type a BigDataViewer dataset means: ``uint16`` for its stored ``int16``."""
    return np.dtype(np.uint16) if bdv_level(name) is not None and dtype == np.int16 else dtype


def bdv_spacing(path: Path, h5: Any, name: str) -> tuple[tuple[float, ...] | None, str | None]:
    """The voxel size (z, y, x; nm where the unit is known) of the dataset ``name`` of the open
    BigDataViewer file ``h5`` at ``path``, from an XML beside it that names it; (None, None)
    where there is none."""
    where = bdv_level(name)
    if where is None:
        return None, None
    _, setup, level = where
    try:
        factors = np.asarray(h5[f"s{setup:02d}/resolutions"])[level]
    except (KeyError, IndexError, TypeError, ValueError):
        factors = None  # no pyramid table: level 0's size
    return _scaled(_xml_voxel_size(path, setup, "hdf5"), factors)


def bdv_n5_spacing(root: Path, key: str, setup_attrs: dict) -> tuple[tuple[float, ...] | None, str | None]:
    """The voxel size (z, y, x; nm where the unit is known) of the dataset ``key`` of the
    BigDataViewer N5 container ``root`` (``setup0/timepoint0/s1``), from an XML beside it that
    names it, times the level's ``downsamplingFactors`` in ``setup_attrs`` (the setup group's
    attributes); (None, None) where there is none.

    Examples
    --------
    >>> bdv_n5_spacing(Path("/nowhere/v.n5"), "em/s0", {})
    (None, None)
    """
    match = _N5_LEVEL.match(key.strip("/"))
    if match is None:
        return None, None
    setup, level = int(match.group(1)), int(match.group(3))
    try:
        factors = [float(f) for f in setup_attrs["downsamplingFactors"][level]]
    except (KeyError, IndexError, TypeError, ValueError):
        factors = None
    return _scaled(_xml_voxel_size(root, setup, "n5"), factors)


def _scaled(size: tuple[list[float], str] | None, factors: Any) -> tuple[tuple[float, ...] | None, str | None]:
    """(z, y, x) spacing and unit from an XML's (x, y, z) size times a level's (x, y, z) factors."""
    if size is None:
        return None, None
    values, unit = size
    if factors is not None and len(factors) == 3:
        values = [v * float(f) for v, f in zip(values, factors)]
    spacing, unit_out = to_nm(tuple(reversed(values)), [unit] * 3, "ZYX")
    return tuple(float(f"{v:.12g}") for v in spacing), unit_out


def _xml_voxel_size(path: Path, setup: int, loader_kind: str) -> tuple[list[float], str] | None:
    """(x, y, z sizes, unit) of view setup ``setup`` from the first XML beside ``path`` whose
    image loader names it in its ``loader_kind`` element (``hdf5``, ``n5``)."""
    for xml in sorted(path.parent.glob("*.xml")):
        try:
            root = ET.parse(xml).getroot()
        except (ET.ParseError, OSError):
            continue
        loader = root.find("SequenceDescription/ImageLoader")
        named_in = loader.find(loader_kind) if loader is not None else None
        if named_in is None or not named_in.text:
            continue
        named = Path(named_in.text.strip())
        named = named if named.is_absolute() else xml.parent / named
        if named.resolve() != path.resolve():
            continue
        for view in root.iter("ViewSetup"):
            if (view.findtext("id") or "").strip() != str(setup):
                continue
            text = view.findtext("voxelSize/size")
            try:
                values = [float(v) for v in (text or "").split()]
            except ValueError:
                return None
            if len(values) != 3 or not all(np.isfinite(v) and v > 0 for v in values):
                return None
            unit = (view.findtext("voxelSize/unit") or "").strip()
            return (values, unit) if unit.lower() not in ("", "pixel", "pixels", "px") else None
    return None
