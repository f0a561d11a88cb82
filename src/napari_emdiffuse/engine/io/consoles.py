"""What SEM and TEM consoles record beside the pixels of the TIFFs they save: the pixel size,
where the standard resolution tags say nothing useful, and the rows of a data bar pasted below
the scan.

- Thermo Fisher / FEI (Helios, Quanta, Scios): ``[Scan] PixelWidth`` in metres in their own
  tag; ``[Image] ResolutionY`` scanned rows and ``[PrivateFei] DatabarHeight`` bar rows.
- Zeiss (Crossbeam, Gemini, Sigma): ``Image Pixel Size`` with its unit in tag 34118; a data
  zone in the last rows, from the ``Line Counter`` where those rows look like a banner.
- Tescan (Mira, Vega, Clara, Amber): ``PixelSizeX`` / ``PixelSizeY`` in metres in the
  ``key=value`` text of tag 50431, or of the ``.hdr`` file beside the image (``[MAIN]``).
- DigitalMicrograph's TIFFs: a unit in private tags 65003-65005 and a scale in 65009-65011.
- Olympus / EMSIS TEM cameras (Morada, Quemesa, Veleta; iTEM, Radius): the SIS tag 33560, whose
  pixel size tifffile reads (``pixelsizex``, ``pixelsizey``, metres).
- TVIPS TEM cameras (EM-MENU): the TVIPS header (tag 37706) version 2, ``PixelSizeX`` /
  ``PixelSizeY`` in nm.
- Hitachi (SU, Regulus, HT): a ``.txt`` file beside the image, ``[SemImageFile]`` or
  ``[TemImageFile]``, ``PixelSize`` in nm and ``DataSize`` (width x height of the scan).
- JEOL TEM cameras (SightX): a ``TemReporter`` XML description; in TEM image mode (``eosTEM``,
  ``MAG``) a pixel is the camera pixel the resolution tags give (per inch or cm) over the
  magnification (``SelectorValue``). Diffraction and STEM frames get no length.
- JEOL (JSM, IT): a ``.txt`` file beside the image, ``$$SM_MICRON_MARKER`` (a length such as
  ``5um``) drawn ``$$SM_MICRON_BAR`` pixels long, on a scan ``$CM_FULL_SIZE`` pixels wide and
  tall. The marker's whole pixels limit that size to about 1 part in the bar's length.

Where a Hitachi or JEOL image is as wide as its scan and taller, the rows below the scan are
the data bar.

Each reader returns ``{"X": (nm, "nm"), "Y": (nm, "nm")}`` or ``{}``; odd metadata means no
calibration, never an error.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import numpy as np

from .units import is_positive, is_time_unit, nm_factor, tidy

__all__ = ["console_calibration", "console_pixel_size", "console_scan_rows", "databar_note", "databar_rows",
           "sidecar_calibration", "sidecar_of", "sidecar_pixel_size", "sidecar_scan_rows"]

_SIDECAR_MAX_BYTES = 1 << 20  # a console's text file is a few kB; anything larger is not one
_M_TO_NM = 1e9
_MARKER_UNITS = {"nm": 1.0, "um": 1e3, "µm": 1e3, "μm": 1e3, "mm": 1e6, "m": 1e9}


def console_pixel_size(tif: Any) -> dict[str, tuple[float, str | None]]:
    """The pixel size a console recorded for an open ``tifffile.TiffFile``, in nm per axis
    letter; ``{}`` where none did (:func:`console_calibration` also says which)."""
    return console_calibration(tif)[0]


def console_calibration(tif: Any) -> tuple[dict[str, tuple[float, str | None]], str | None]:
    """(pixel size in nm per axis letter, the record it came from) of an open
    ``tifffile.TiffFile``; ``({}, None)`` where no console recorded one."""
    page = tif.pages.first
    readers = [("Thermo Fisher tag", lambda: _thermo_fisher(tif)), ("Zeiss tag", lambda: _zeiss(tif)),
               ("Olympus SIS tag", lambda: _olympus_sis(tif)), ("TVIPS header", lambda: _tvips(tif)),
               ("Tescan tag", lambda: _tescan(page)), ("DigitalMicrograph tags", lambda: _dm_tiff(page)),
               ("JEOL SightX description", lambda: _jeol_sightx(page))]  # fmt: skip
    for name, read in readers:
        found = read()
        if found:
            return found, name
    path = getattr(getattr(tif, "filehandle", None), "path", None)
    hdr = _sidecar_text(path, ".hdr") if path else None
    if hdr is not None and ("[MAIN]" in hdr or "TESCAN" in hdr.upper()):  # Tescan's header beside the image
        found = _tescan_sizes(hdr)
        if found:
            return found, "Tescan .hdr file"
    return sidecar_calibration(path, int(page.shape[1])) if path and len(page.shape) >= 2 else ({}, None)


def sidecar_pixel_size(path: str | Path, width: int) -> dict[str, tuple[float, str | None]]:
    """The pixel size in the Hitachi or JEOL text file beside the image at ``path`` (TIFF,
    BMP or JPEG), ``width`` pixels wide; ``{}`` where there is none.

    Examples
    --------
    >>> sidecar_pixel_size("/nowhere/img.bmp", 1280)
    {}
    """
    return sidecar_calibration(path, width)[0]


def sidecar_calibration(path: str | Path, width: int) -> tuple[dict[str, tuple[float, str | None]], str | None]:
    """:func:`sidecar_pixel_size` and the text file's maker (``"Hitachi text file"``, ...)."""
    text = _sidecar_text(path)
    if text is None:
        return {}, None
    found = _hitachi(text)
    if found:
        return found, "Hitachi text file"
    found = _jeol(text, width)
    return (found, "JEOL text file") if found else ({}, None)


def console_scan_rows(tif: Any, height: int) -> tuple[int, int] | None:
    """(scanned rows, data bar rows) of an image ``height`` rows tall whose console pasted a
    data bar below the scan (Thermo Fisher / FEI; Zeiss: :func:`_zeiss_scan_rows`; Hitachi,
    JEOL: :func:`sidecar_scan_rows`), or
    None where the metadata do not add up to it (no bar, or another file)."""
    try:
        md = (tif.fei_metadata or {}) if tif.is_fei else {}
        rows = (md.get("Image") or {}).get("ResolutionY")
        bar = (md.get("PrivateFei") or {}).get("DatabarHeight")
        if not (isinstance(rows, int) and isinstance(bar, int)) and getattr(tif, "is_sem", False):
            return _zeiss_scan_rows(tif, height)
        if not (isinstance(rows, int) and isinstance(bar, int)):
            path = getattr(getattr(tif, "filehandle", None), "path", None)
            page = tif.pages.first
            return sidecar_scan_rows(path, int(page.shape[1]), height) if path and len(page.shape) >= 2 else None
    except Exception:  # odd metadata must not stop reading good pixels
        return None
    if isinstance(rows, int) and isinstance(bar, int) and rows > 0 and bar > 0 and rows + bar == height:
        return rows, bar
    return None


def _zeiss_scan_rows(tif: Any, height: int) -> tuple[int, int] | None:
    """A Zeiss SmartSEM image whose data zone fills its last rows: the scan stops at the
    ``Line Counter`` (``AP_LINE_COUNTER``), and the rows from there on look like a banner
    (half or more of their pixels one value: its background) with text of another value.
    Both must hold: the counter alone also stops where a scan was frozen early."""
    entry = (tif.sem_metadata or {}).get("ap_line_counter")
    rows = entry[1] if isinstance(entry, tuple) and len(entry) >= 2 and isinstance(entry[1], int) else None
    if rows is None or not 0.6 * height <= rows < height:
        return None
    page = tif.pages.first
    if len(page.shape) != 2 or int(page.shape[0]) != height:
        return None
    band = np.asarray(page.asarray())[rows:]
    values, counts = np.unique(band, return_counts=True)
    background = values[np.argmax(counts)]
    text = np.abs(band.astype(np.float64) - float(background)) > 0.5 * max(float(np.ptp(band)), 1.0)
    if counts.max() >= 0.5 * band.size and 0.002 * band.size <= text.sum() <= 0.5 * band.size:
        return rows, height - rows
    return None


def sidecar_scan_rows(path: str | Path, width: int, height: int) -> tuple[int, int] | None:
    """(scanned rows, data bar rows) of an image ``width`` x ``height`` whose Hitachi or JEOL
    text file says the scan (Hitachi ``DataSize``, JEOL ``$CM_FULL_SIZE``) is as wide and less
    tall; None otherwise.

    Examples
    --------
    >>> sidecar_scan_rows("/nowhere/img.tif", 1280, 1024) is None
    True
    """
    text = _sidecar_text(path)
    if text is None:
        return None
    size = re.fullmatch(r"\s*(\d+)\s*[xX*]\s*(\d+)\s*", _hitachi_section(text).get("DataSize", ""))
    size = size or re.fullmatch(r"\s*(\d+)\s+(\d+)\s*", _jeol_keys(text).get("CM_FULL_SIZE", ""))
    if size is None or int(size.group(1)) != width:
        return None
    rows = int(size.group(2))
    return (rows, height - rows) if 0 < rows < height else None


def databar_rows(path: str | os.PathLike[str], shape: tuple[int, ...]) -> tuple[int, int] | None:
    """(scanned rows, data bar rows) when ``path`` is an SEM image whose console pasted a data
    bar below the scan, its pixels ``shape`` (..., rows, columns) with the bar; None for any
    other file. For images that another reader opened with the bar (napari's own).

    Examples
    --------
    >>> databar_rows("not_a_file.tif", (471, 512)) is None
    True
    """
    from .common import PICTURE_SUFFIXES, TIFF_SUFFIXES, suffix_of

    p = Path(path)
    if len(shape) < 2 or not p.is_file():
        return None
    height, width = int(shape[-2]), int(shape[-1])
    if suffix_of(p) in PICTURE_SUFFIXES:
        return sidecar_scan_rows(p, width, height)
    if suffix_of(p) not in TIFF_SUFFIXES:
        return None
    import tifffile

    try:
        with tifffile.TiffFile(p) as tif:
            return console_scan_rows(tif, height)
    except Exception:  # unreadable metadata: no bar is known
        return None


def databar_note(bar: int) -> str:
    """What a restoration says when it leaves a data bar out.

    Examples
    --------
    >>> databar_note(64)
    "the microscope's data bar (64 rows at the bottom) is left out"
    """
    return f"the microscope's data bar ({bar} rows at the bottom) is left out"


def sidecar_of(path: str | Path, suffix: str = ".txt") -> Path | None:
    """The text file a console saves beside an image, or None: ``img.tif`` -> ``img.txt``
    (Hitachi, JEOL) or, with ``suffix=".hdr"``, ``img.hdr`` (Tescan).

    Examples
    --------
    >>> sidecar_of("/nowhere/img.tif") is None
    True
    """
    p = Path(path)
    for spelt in (suffix, suffix.upper(), suffix.capitalize()):
        candidate = p.with_suffix(spelt)
        if candidate.is_file():
            return candidate
    return None


def _sidecar_text(path: str | Path | None, suffix: str = ".txt") -> str | None:
    side = sidecar_of(path, suffix) if path else None
    if side is None:
        return None
    try:
        if side.stat().st_size > _SIDECAR_MAX_BYTES:
            return None
        raw = side.read_bytes()
    except OSError:
        return None
    if raw.startswith((b"\xff\xfe", b"\xfe\xff")):
        return raw.decode("utf-16", "replace")
    # Japanese consoles write Shift-JIS comments; the keys and numbers are ASCII either way
    return raw.decode("utf-8", "replace").lstrip("\ufeff")


def _thermo_fisher(tif: Any) -> dict[str, tuple[float, str | None]]:
    if getattr(tif, "is_fei", False):
        md = tif.fei_metadata or {}
        for section in ("Scan", "EScan", "IScan"):
            scan = md.get(section) or {}
            width, height = scan.get("PixelWidth"), scan.get("PixelHeight", scan.get("PixelWidth"))
            if is_positive(width) and is_positive(height):
                return _xy(float(width) * _M_TO_NM, float(height) * _M_TO_NM)
    return {}


def _zeiss(tif: Any) -> dict[str, tuple[float, str | None]]:
    if not getattr(tif, "is_sem", False):
        return {}
    md = tif.sem_metadata or {}

    def nm(key: str) -> float | None:
        entry = md.get(key)
        if isinstance(entry, tuple) and len(entry) == 3 and is_positive(entry[1]):
            factor = nm_factor(str(entry[2]))
            return float(entry[1]) * factor if factor is not None else None
        return None

    size = nm("ap_image_pixel_size") or nm("ap_pixel_size")
    # "Pixel Size" is the scan's at its store resolution; a TIFF saved at another size (512 wide
    # from a 1024 scan) has pixels of the scanned "Width" over its own columns instead.
    width, columns = nm("ap_width"), int(tif.pages.first.shape[1]) if len(tif.pages.first.shape) >= 2 else 0
    if width is not None and columns > 0 and (size is None or abs(size * columns / width - 1) > 0.02):
        size = width / columns
    return _xy(size, size) if size is not None else {}


def _tescan(page: Any) -> dict[str, tuple[float, str | None]]:
    tag = page.tags.get(50431)
    if tag is None:
        return {}
    value = tag.value
    raw = bytes(value) if isinstance(value, (bytes, bytearray)) else str(value).encode("latin-1", "replace")
    return _tescan_sizes(raw.replace(b"\0", b"").decode("latin-1"))  # the tag may pad its text with zeros


def _tescan_sizes(text: str) -> dict[str, tuple[float, str | None]]:
    """``PixelSizeX`` / ``PixelSizeY`` (metres) of Tescan's ``key=value`` text."""
    sizes = [re.search(rf"(?m)^\s*PixelSize{axis}\s*=\s*([-+0-9.eE]+)\s*$", text) for axis in "XY"]
    if not all(sizes):
        return {}
    x, y = (_number(m.group(1)) for m in sizes)  # type: ignore[union-attr]
    return _xy(x * _M_TO_NM, y * _M_TO_NM) if is_positive(x) and is_positive(y) else {}


def _olympus_sis(tif: Any) -> dict[str, tuple[float, str | None]]:
    md = (tif.sis_metadata or {}) if getattr(tif, "is_sis", False) else {}
    if not md:  # a colour preview may come first, the image (with the tag) after it
        try:
            pages = [tif.pages[i] for i in range(1, min(4, len(tif.pages)))]
        except (TypeError, AttributeError, IndexError):
            pages = []
        tag = next((p.tags.get(33560) for p in pages if hasattr(p, "tags") and p.tags.get(33560) is not None), None)
        md = tag.value if tag is not None and isinstance(tag.value, dict) else {}
    x, y = md.get("pixelsizex"), md.get("pixelsizey", md.get("pixelsizex"))
    return _xy(float(x) * _M_TO_NM, float(y) * _M_TO_NM) if is_positive(x) and is_positive(y) else {}


def _tvips(tif: Any) -> dict[str, tuple[float, str | None]]:
    if not getattr(tif, "is_tvips", False):
        return {}
    md = tif.tvips_metadata or {}
    x, y = md.get("PixelSizeX"), md.get("PixelSizeY", md.get("PixelSizeX"))  # version 2 only; nm
    return _xy(float(x), float(y)) if is_positive(x) and is_positive(y) else {}


def _dm_tiff(page: Any) -> dict[str, tuple[float, str | None]]:
    """DigitalMicrograph keeps float32 scales: 0.16867469, not the double
    0.16867469251155853 it writes; only length units count."""
    found: dict[str, tuple[float, str | None]] = {}
    for letter, unit_tag, scale_tag in (("X", 65003, 65009), ("Y", 65004, 65010), ("Z", 65005, 65011)):
        unit_entry, scale_entry = page.tags.get(unit_tag), page.tags.get(scale_tag)
        if unit_entry is None or scale_entry is None:
            continue
        unit = unit_entry.value.decode("utf-8", "replace") if isinstance(unit_entry.value, bytes) else str(unit_entry.value)
        if letter == "Z" and is_time_unit(unit):
            found["T"] = (1.0, None)  # a series in time (in situ, drift frames), not sections
            continue
        factor, scale = nm_factor(unit), scale_entry.value
        if factor is not None and is_positive(scale):
            found[letter] = (tidy(float(np.format_float_scientific(np.float32(scale), unique=True)) * factor), "nm")
    return found if "X" in found and "Y" in found else {}


def _jeol_sightx(page: Any) -> dict[str, tuple[float, str | None]]:
    import xml.etree.ElementTree as ET

    make = page.tags.get(271)  # Make
    if make is None or "JEOL" not in str(make.value):
        return {}
    description = getattr(page, "description", "") or ""
    if "<TemReporter" not in description:
        return {}
    try:
        root = ET.fromstring(re.sub(r"[\x00-\x08\x0b\x0c\x0e-\x1f]", "", description))
        forming = root.find("ImageFormingSystem")
        mode, mag = root.findtext("Eos/EosMode"), _number(forming.findtext("SelectorValue") or "")
        imaging = forming.findtext("ModeString") == "MAG"
    except (ET.ParseError, AttributeError):
        return {}
    unit = {2: 2.54e7, 3: 1e7}.get(int(getattr(page.tags.get(296), "value", 2)))  # nm per inch / cm
    res = [page.tags.get(code) for code in (282, 283)]  # X, Y resolution: camera pixels per unit
    if mode != "eosTEM" or not imaging or not is_positive(mag) or unit is None or None in res:
        return {}
    per = [float(r.value[0]) / float(r.value[1]) if r.value[1] else 0.0 for r in res]  # type: ignore[union-attr]
    if not all(is_positive(v) for v in per):
        return {}
    return _xy(unit / per[0] / mag, unit / per[1] / mag)


def _hitachi_section(text: str) -> dict[str, str]:
    """``key=value`` lines of the ``[SemImageFile]`` / ``[TemImageFile]`` section."""
    lines = text.splitlines()
    start = next((i for i, line in enumerate(lines) if line.strip() in ("[SemImageFile]", "[TemImageFile]")), None)
    if start is None:
        return {}
    out: dict[str, str] = {}
    for line in lines[start + 1:]:
        if line.strip().startswith("["):
            break
        key, sep, value = line.partition("=")
        if sep and key.strip() and key.strip() not in out:
            out[key.strip()] = value.strip()
    return out


def _hitachi(text: str) -> dict[str, tuple[float, str | None]]:
    size = _number(_hitachi_section(text).get("PixelSize", "").split(" ")[0])
    return _xy(size, size) if is_positive(size) else {}


def _jeol_keys(text: str) -> dict[str, str]:
    """``$KEY value`` and ``$$KEY value`` lines, the first of each key."""
    keys: dict[str, str] = {}
    for line in text.splitlines():
        if line.startswith("$"):
            key, _, value = line.lstrip("$").strip().partition(" ")
            keys.setdefault(key, value.strip())
    return keys


def _jeol(text: str, width: int | None) -> dict[str, tuple[float, str | None]]:
    keys = _jeol_keys(text)
    marker = re.fullmatch(r"([0-9.]+)\s*([a-zA-Zµμ]+)", keys.get("SM_MICRON_MARKER", ""))
    bar = _number(keys.get("SM_MICRON_BAR", ""))
    if not (marker and is_positive(bar)) or marker.group(2) not in _MARKER_UNITS:
        return {}
    size = _number(marker.group(1)) * _MARKER_UNITS[marker.group(2)] / bar
    # the bar is drawn on the full-size scan; a TIFF saved smaller has wider pixels
    full = keys.get("CM_FULL_SIZE", "").split()
    if width and full and is_positive(_number(full[0])):
        size *= _number(full[0]) / width
    return _xy(size, size) if is_positive(size) else {}


def _xy(x: float, y: float) -> dict[str, tuple[float, str | None]]:
    return {"X": (tidy(x), "nm"), "Y": (tidy(y), "nm")}


def _number(text: str) -> float:
    try:
        return float(text)
    except (TypeError, ValueError):
        return float("nan")
