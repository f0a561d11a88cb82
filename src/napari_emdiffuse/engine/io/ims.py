"""Bitplane Imaris files (``.ims``, Imaris 5.5+: HDF5): which datasets are images, what each
is called, its true size and its voxel size.

The root carries ``ImarisDataSet``. The full resolution of channel ``c`` at time point ``t`` is
``DataSet/ResolutionLevel 0/TimePoint t/Channel c/Data`` (ZYX), stored in whole chunks, so it
may be larger than the image: the channel group's ``ImageSizeX/Y/Z`` give the true size.
``DataSetInfo/Image`` holds the volume's extent (``ExtMin0..2``, ``ExtMax0..2``: x, y, z) and its
``Unit``; a voxel is the extent over the size. Attributes are stored as arrays of single
characters. An image is named after its channel (``DataSetInfo/Channel c`` ``Name``), with the
time point where there are several. Lower resolution levels are left out.
"""

from __future__ import annotations

import re
from typing import Any

import numpy as np

from .units import nm_factor, tidy

__all__ = ["imaris_images", "imaris_size", "imaris_spacing", "is_imaris"]

_LEVEL0 = "DataSet/ResolutionLevel 0"


def _text(value: Any) -> str:
    """An Imaris attribute (an array of one-byte strings, or bytes, or a string) as text."""
    if isinstance(value, np.ndarray):
        parts = [v.decode("latin-1") if isinstance(v, bytes) else str(v) for v in value.ravel()]
        return "".join(parts).strip()
    if isinstance(value, bytes):
        return value.decode("latin-1").strip()
    return str(value).strip() if value is not None else ""


def _number(value: Any) -> float | None:
    try:
        number = float(_text(value))
    except ValueError:
        return None
    return number if np.isfinite(number) else None


def is_imaris(f: Any) -> bool:
    """Whether an open HDF5 file is an Imaris 5.5+ file with a full-resolution level."""
    return "ImarisDataSet" in f.attrs and f.get(_LEVEL0) is not None


def imaris_images(f: Any) -> dict[str, str]:
    """``{name: dataset path}`` of the full-resolution volumes of an open Imaris file, one per
    channel and time point.

    Examples
    --------
    >>> import h5py, tempfile
    >>> from pathlib import Path
    >>> p = Path(tempfile.mkdtemp()) / "v.ims"
    >>> with h5py.File(p, "w") as f:
    ...     f.attrs["ImarisDataSet"] = np.array([b"I", b"m"])
    ...     _ = f.create_dataset("DataSet/ResolutionLevel 0/TimePoint 0/Channel 0/Data", data=np.zeros((2, 8, 8)))
    ...     f.create_group("DataSetInfo/Channel 0").attrs["Name"] = np.array([b"S", b"E"])
    ...     imaris_images(f)
    {'SE': 'DataSet/ResolutionLevel 0/TimePoint 0/Channel 0/Data'}
    """
    level = f[_LEVEL0]
    found: list[tuple[int, int, str]] = []
    for tname, tgroup in level.items():
        t = re.fullmatch(r"TimePoint (\d+)", tname)
        if t is None or not hasattr(tgroup, "items"):
            continue
        for cname, cgroup in tgroup.items():
            c = re.fullmatch(r"Channel (\d+)", cname)
            data = cgroup.get("Data") if c is not None and hasattr(cgroup, "get") else None
            if data is None or len(getattr(data, "shape", ())) != 3 or np.dtype(data.dtype).kind not in "uif":
                continue
            found.append((int(t.group(1)), int(c.group(1)), f"{_LEVEL0}/{tname}/{cname}/Data"))
    times = {t for t, _, _ in found}
    named: dict[str, str] = {}
    for t, c, path in sorted(found):
        info = f.get(f"DataSetInfo/Channel {c}")
        label = re.sub(r"[\s/]+", "-", _text(info.attrs.get("Name")) if info is not None else "") or f"channel-{c}"
        name = label if len(times) == 1 else f"{label}-t{t}"
        named[name if name not in named else f"{name}-{c}"] = path
    return named


def imaris_size(f: Any, dataset: str) -> tuple[int, ...]:
    """The true (z, y, x) size of an Imaris volume: its channel's ``ImageSize*`` where they fit
    in the stored dataset (which is padded to whole chunks), else the dataset's shape."""
    data = f[dataset]
    stored = tuple(int(n) for n in data.shape)
    attrs = data.parent.attrs
    sizes = [_number(attrs.get(f"ImageSize{axis}")) for axis in "ZYX"]
    if any(s is None or s < 1 for s in sizes):
        return stored
    true = tuple(int(s) for s in sizes)  # type: ignore[arg-type]
    return true if all(a <= b for a, b in zip(true, stored)) else stored


def imaris_spacing(f: Any, size: tuple[int, ...]) -> tuple[tuple[float, float, float] | None, str | None]:
    """(z, y, x) voxel size, in nm where ``DataSetInfo/Image``'s ``Unit`` is a length, and its
    unit: the extent (``ExtMax - ExtMin``) over the size."""
    image = f.get("DataSetInfo/Image")
    if image is None:
        return None, None
    sizes = []
    for axis, n in zip((2, 1, 0), size):  # z, y, x from the extents' x, y, z
        lo, hi = _number(image.attrs.get(f"ExtMin{axis}")), _number(image.attrs.get(f"ExtMax{axis}"))
        sizes.append((hi - lo) / n if lo is not None and hi is not None and hi > lo and n > 0 else None)
    if any(s is None for s in sizes):
        return None, None
    factor = nm_factor(_text(image.attrs.get("Unit")) or None)
    if factor is None:
        return tuple(tidy(s) for s in sizes), None  # type: ignore[return-value,arg-type]
    return tuple(tidy(s * factor) for s in sizes), "nm"  # type: ignore[return-value,operator]
