"""PNG, JPEG and BMP: pictures as many SEM consoles export them, read as 2D greyscale images.

The picture itself carries no pixel size an EM tool writes reliably; where a Hitachi or JEOL
console saved its text file beside it (``img.bmp`` and ``img.txt``), the pixel size comes from
there, and a Hitachi data bar below the scan is left out (:mod:`.consoles`). Results go to
TIFF, MRC or zarr, which keep the calibration. A colour picture whose channels are all equal (a grey
image saved as RGB) is read as grey; a real colour image is refused, since the models restore
greyscale intensities.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..errors import InputError
from .common import ImageData, check_readable, grey_from_samples, reason
from .consoles import databar_note, sidecar_calibration, sidecar_scan_rows

__all__ = ["read_picture"]


def read_picture(path: Path) -> ImageData:
    """Read a PNG, JPEG or BMP file as a 2D greyscale image (uint8, or uint16 for 16-bit PNG)."""
    import imageio.v3 as iio

    check_readable(path, "a picture")
    try:
        data = np.asarray(iio.imread(path))
    except MemoryError:
        raise
    except Exception as exc:
        raise InputError(f"cannot read '{path}': {reason(exc)}") from exc
    if data.ndim == 3 and data.shape[-1] in (1, 2, 3, 4):
        data = grey_from_samples(data, path)
    if data.ndim != 2 or data.size == 0:
        raise InputError(f"cannot use '{path}': expected a 2D picture, got shape {data.shape}")
    note = None
    bar = sidecar_scan_rows(path, data.shape[1], data.shape[0])
    if bar is not None:
        data, note = data[: bar[0]], databar_note(bar[1])
    size, source = sidecar_calibration(path, data.shape[1])
    spacing = (size["Y"][0], size["X"][0]) if size else None
    return ImageData(data=np.ascontiguousarray(data), spacing=spacing, unit="nm" if size else None, axes="YX",
                     path=path, note=note, source=source)
