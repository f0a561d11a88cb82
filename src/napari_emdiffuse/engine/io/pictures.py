"""PNG, JPEG and BMP: pictures as many SEM consoles export them, read as 2D greyscale images.

They carry no pixel size an EM tool writes reliably, so none is read; results go to TIFF, MRC
or zarr, which keep the calibration. A colour picture whose channels are all equal (a grey
image saved as RGB) is read as grey; a real colour image is refused, since the models restore
greyscale intensities.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..errors import InputError
from .common import ImageData, check_readable, grey_from_samples, reason

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
    return ImageData(data=np.ascontiguousarray(data), spacing=None, unit=None, axes="YX", path=path)
