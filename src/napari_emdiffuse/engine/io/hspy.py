"""HyperSpy's files (``.hspy``, and ``.hdf5`` files HyperSpy saved): which datasets are images,
what each is called, and its axes and pixel size.

A HyperSpy file is HDF5 with the root attribute ``file_format = "HyperSpy"``. Each signal sits
at ``Experiments/<title>/data`` beside one group per array axis, ``axis-0``, ``axis-1``, ...
(the array's order), whose attributes give its ``scale``, ``units`` and whether it
``navigate``\\ s (a stack's frames, a scan's positions) or belongs to the signal. An image has
two signal axes, last (y, x); one navigation axis before them makes a stack: sections (ZYX)
where its unit is a length, else a series (TYX: time, tilt, frames). Spectra, spectrum images
and 4D-STEM data are not images here. Files written before the ``navigate`` attribute (format
1.x) take their last two axes as the image.
"""

from __future__ import annotations

import re
from typing import Any

import numpy as np

from .units import is_time_unit, nm_factor, tidy

__all__ = ["hyperspy_axes", "hyperspy_images", "is_hyperspy"]

_EXPERIMENTS = "Experiments"


def is_hyperspy(f: Any) -> bool:
    """Whether an open HDF5 file was written by HyperSpy (and holds its signals)."""
    fmt = f.attrs.get("file_format")
    fmt = fmt.decode("utf-8", "replace") if isinstance(fmt, bytes) else str(fmt or "")
    group = f.get(_EXPERIMENTS)
    return fmt == "HyperSpy" and group is not None and hasattr(group, "keys")


def _text(value: Any) -> str:
    if isinstance(value, bytes):
        value = value.decode("utf-8", "replace")
    text = str(value).strip() if value is not None else ""
    return "" if text in ("_None_", "<undefined>", "None") else text


def _axes(group: Any, ndim: int) -> list[dict] | None:
    """The ``axis-i`` attributes of a signal, one dict per array axis (None where any is missing)."""
    found = []
    for i in range(ndim):
        axis = group.get(f"axis-{i}")
        if axis is None or not hasattr(axis, "attrs"):
            return None
        found.append(dict(axis.attrs))
    return found


def _signal_axes(axes: list[dict]) -> list[int]:
    if all("navigate" in a for a in axes):
        return [i for i, a in enumerate(axes) if not bool(a["navigate"])]
    return list(range(len(axes)))[-2:]  # format 1.x: no navigate flag; images are stored signal last


def hyperspy_images(f: Any) -> dict[str, str]:
    """``{name: dataset path}`` of the greyscale images and image stacks of an open HyperSpy
    file, named after their titles (with a number where two share one), in the file's order."""
    found: list[tuple[str, str]] = []
    for title, group in f[_EXPERIMENTS].items():
        data = group.get("data") if hasattr(group, "get") else None
        shape = getattr(data, "shape", None)
        if shape is None or len(shape) not in (2, 3) or np.dtype(data.dtype).kind not in "uif":
            continue  # RGB(A) images are compound; spectra are 1D
        axes = _axes(group, len(shape))
        if axes is None or _signal_axes(axes) != [len(shape) - 2, len(shape) - 1]:
            continue  # a spectrum image, or axes in another order
        label = re.sub(r"[\s/]+", "-", _text(title)) or "signal"
        found.append((label, f"{_EXPERIMENTS}/{title}/data"))
    counts: dict[str, int] = {}
    named: dict[str, str] = {}
    for label, path in found:
        counts[label] = counts.get(label, 0) + 1
        named[label if counts[label] == 1 else f"{label}-{counts[label]}"] = path
    return named


def hyperspy_axes(f: Any, dataset: str) -> tuple[tuple[float, ...] | None, str | None, str]:
    """(spacing in nm or None, its unit, the axes letters) of a HyperSpy image or stack.

    Examples
    --------
    >>> import h5py, tempfile
    >>> from pathlib import Path
    >>> p = Path(tempfile.mkdtemp()) / "s.hspy"
    >>> with h5py.File(p, "w") as f:
    ...     f.attrs["file_format"] = "HyperSpy"
    ...     g = f.create_group("Experiments/HAADF")
    ...     _ = g.create_dataset("data", data=np.zeros((8, 8)))
    ...     for i in range(2):
    ...         g.create_group(f"axis-{i}").attrs.update({"scale": 0.25, "units": "µm", "navigate": False})
    ...     hyperspy_images(f), hyperspy_axes(f, "Experiments/HAADF/data")
    ({'HAADF': 'Experiments/HAADF/data'}, ((250.0, 250.0), 'nm', 'YX'))
    """
    data = f[dataset]
    axes = _axes(data.parent, len(data.shape)) or []
    sizes: list[float | None] = []
    for a in axes:
        factor, scale = nm_factor(_text(a.get("units"))), a.get("scale")
        try:
            ok = factor is not None and np.isfinite(float(scale)) and float(scale) != 0
        except (TypeError, ValueError):
            ok = False
        sizes.append(tidy(abs(float(scale)) * factor) if ok else None)
    letters = "YX"
    if len(axes) == 3:
        stacked = sizes[0] is not None and not is_time_unit(_text(axes[0].get("units")))
        letters = "ZYX" if stacked else "TYX"
    if len(sizes) < 2 or sizes[-1] is None or sizes[-2] is None:
        return None, None, letters
    lead = [sizes[0] if letters == "ZYX" else 1.0] if len(axes) == 3 else []
    return (*lead, sizes[-2], sizes[-1]), "nm", letters  # type: ignore[return-value]
