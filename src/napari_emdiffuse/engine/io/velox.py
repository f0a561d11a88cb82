"""Thermo Fisher Velox ``.emd`` files (Talos, Titan, Spectra: TEM camera images, STEM detector
images): which datasets are images, what each is called, and its pixel size.

A Velox file is HDF5. Each image of an acquisition sits at ``Data/Image/<id>/Data``, shaped
(y, x, frames): one camera image, or one per STEM detector recorded at once (HAADF, BF, DF2,
DF4, ...). Its metadata is JSON text stored as bytes in ``Metadata`` beside it, a column per
frame, padded with zeros; ``BinaryResult`` holds the detector's name and ``PixelSize``
(``width``, ``height``) in ``PixelUnitX`` / ``PixelUnitY`` (metres). An image is named as Velox
shows it: its display's label (``Presentation/Displays/ImageDisplay``: ``DPC``, ``iDPC``, ``DF4-A``),
else the segment its STEM input reads (``Operations/StemInputOperation``), else its detector
(``scan.emd/HAADF``); spectra (``Data/SpectrumImage``, ``Data/SpectrumStream``) and
complex images (FFTs) are not images here. Other ``.emd`` files (Berkeley's EMD) are plain HDF5.
"""

from __future__ import annotations

import json
import re
from typing import Any

import numpy as np

from .calibration import to_nm

__all__ = ["is_velox", "velox_dataset", "velox_images", "velox_spacing"]

_IMAGES = "Data/Image"
_DATASET = re.compile(r"^Data/Image/[^/]+/Data$")


def is_velox(f: Any) -> bool:
    """Whether an open HDF5 file is laid out as Velox writes (a ``Data/Image`` group)."""
    group = f.get(_IMAGES)
    return group is not None and hasattr(group, "keys")


def velox_dataset(name: str) -> bool:
    """Whether a dataset path is a Velox image's pixels (seen frames first).

    Examples
    --------
    >>> velox_dataset("Data/Image/3f2a9c1b/Data"), velox_dataset("volumes/raw")
    (True, False)
    """
    return bool(_DATASET.match(name.strip("/")))


def velox_images(f: Any) -> dict[str, str]:
    """``{name: dataset path}`` of the greyscale images of an open Velox file, named as Velox
    shows them (with the image's id where two share a name), in the file's order."""
    found: list[tuple[str, str, str]] = []
    shown = _labels(f)
    for ident, group in f[_IMAGES].items():
        data = group.get("Data") if hasattr(group, "get") else None
        if data is None or len(data.shape) != 3 or np.dtype(data.dtype).kind not in "uif":
            continue  # complex FFTs and DPC images have compound pixels
        label = shown.get(ident) or _detector(_metadata(group)) or ident
        found.append((re.sub(r"[\s/]+", "-", label.strip()) or ident, ident, f"{_IMAGES}/{ident}/Data"))
    counts: dict[str, int] = {}
    for label, _, _ in found:
        counts[label] = counts.get(label, 0) + 1
    return {(label if counts[label] == 1 else f"{label}-{ident}"): path for label, ident, path in found}


def velox_spacing(f: Any, dataset: str) -> tuple[tuple[float, float] | None, str | None]:
    """(y, x) pixel size of a Velox image, in nm where its unit is a length, and the unit."""
    md = _metadata(f[dataset].parent)
    result = md.get("BinaryResult") if isinstance(md.get("BinaryResult"), dict) else {}
    size = result.get("PixelSize") if isinstance(result.get("PixelSize"), dict) else {}
    try:
        values = (float(size["height"]), float(size["width"]))
    except (KeyError, TypeError, ValueError):
        return None, None
    if not all(np.isfinite(v) and v > 0 for v in values):
        return None, None
    units = [result.get("PixelUnitY", result.get("PixelUnitX")), result.get("PixelUnitX")]
    spacing, unit = to_nm(values, [str(u) if u else None for u in units], "YX")
    return (spacing[0], spacing[1]), unit


def _labels(f: Any) -> dict[str, str]:
    """Image id -> the name Velox shows for it: a display's label, else the detector segment a
    STEM input operation reads (each stored as JSON text naming the image's ``dataPath``)."""
    from urllib.parse import unquote

    names: dict[str, str] = {}
    for where, pick in (("Operations/StemInputOperation", lambda d: d.get("detector")),
                        ("Presentation/Displays/ImageDisplay", lambda d: (d.get("display") or {}).get("label"))):
        group = f.get(where)
        for entry in group.values() if group is not None and hasattr(group, "values") else ():
            try:
                raw = entry[0] if len(entry.shape) == 1 and entry.shape[0] else None
                d = json.loads(raw.decode("utf-8", "replace") if isinstance(raw, bytes) else str(raw))
                path, name = str(d.get("dataPath", "")), pick(d)
            except (ValueError, TypeError, AttributeError, OSError, KeyError):
                continue
            if path.strip("/").startswith(_IMAGES) and isinstance(name, str) and unquote(name).strip():
                names[path.strip("/").split("/")[-1]] = unquote(name).strip()
    return names


def _metadata(group: Any) -> dict:
    """The JSON of an image's first frame (``{}`` where there is none or it is unreadable)."""
    raw = group.get("Metadata") if hasattr(group, "get") else None
    if raw is None or len(raw.shape) != 2 or raw.shape[0] == 0 or raw.shape[1] == 0:
        return {}
    try:
        column = np.asarray(raw[:, 0], dtype=np.uint8)
        text = column.tobytes().split(b"\0", 1)[0].decode("utf-8", "replace")
        md = json.loads(text)
    except (ValueError, TypeError, OSError):
        return {}
    return md if isinstance(md, dict) else {}


def _detector(md: dict) -> str | None:
    result = md.get("BinaryResult") if isinstance(md.get("BinaryResult"), dict) else {}
    if isinstance(result.get("Detector"), str) and result["Detector"].strip():
        return result["Detector"]
    detectors = md.get("Detectors") if isinstance(md.get("Detectors"), dict) else {}
    entry = detectors.get(f"Detector-{result.get('DetectorIndex', 0)}")
    name = entry.get("DetectorName") if isinstance(entry, dict) else None
    return name if isinstance(name, str) and name.strip() else None
