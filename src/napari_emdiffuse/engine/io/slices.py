"""A folder of section images, one file per slice (as FIB-SEM and serial-section tools often
save a volume), read as one lazy ZYX volume.

Files are taken in natural order (``z9`` before ``z10``) and read only when their slice is
needed, so a folder larger than memory streams through an isotropic reconstruction into zarr.
Per-slice files carry no section thickness, so the volume has no voxel size: the isotropic
factor must be given. The first slice's pixel size, where it has one, is told in the note.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np

from ..errors import InputError
from .common import ImageData, image_files_in

__all__ = ["read_slices"]


def read_slices(folder: Path, read: Callable[[Path], ImageData]) -> ImageData:
    """Read a folder of 2D images as a lazy (dask) ZYX volume.

    Every slice must have the first one's shape and pixel type; a slice that does not is
    refused in one line when it is read. ``read`` reads one file (``read_image``).

    Examples
    --------
    >>> import tempfile, tifffile
    >>> d = Path(tempfile.mkdtemp())
    >>> for z in (10, 9, 1):
    ...     tifffile.imwrite(d / f"sec_{z}.tif", np.full((4, 6), z, np.uint8))
    >>> from napari_emdiffuse.engine.io.images import read_image
    >>> vol = read_slices(d, read_image)
    >>> vol.data.shape, vol.data[:, 0, 0].compute().tolist()
    ((3, 4, 6), [1, 9, 10])
    """
    import dask
    import dask.array as da

    files = image_files_in(folder)
    if len(files) < 2:
        raise InputError(f"folder '{folder}' holds {len(files)} image file(s); a volume needs 2 or more slices")
    head = read(files[0])
    first = np.asarray(head.data)
    if first.ndim != 2:
        raise InputError(f"'{files[0]}' has shape {first.shape}; a folder of slices needs one 2D image per file")

    def load(path: Path) -> np.ndarray:
        plane = np.asarray(read(path).data)
        if plane.shape != first.shape or plane.dtype != first.dtype:
            raise InputError(
                f"slice '{path.name}' is {plane.shape} {plane.dtype}, unlike the first slice "
                f"'{files[0].name}' ({first.shape} {first.dtype})"
            )
        return plane

    planes = [da.from_array(first, chunks=first.shape)] + [
        da.from_delayed(dask.delayed(load)(f), shape=first.shape, dtype=first.dtype) for f in files[1:]
    ]
    note = None
    if head.spacing is not None and len(head.spacing) == 2:
        size = " x ".join(f"{v:g}" for v in head.spacing) + f" {head.unit or '(unit unknown)'}"
        note = f"slices of {size} pixels; the files record no section thickness, so give the isotropic factor or the voxel size"
    return ImageData(data=da.stack(planes), spacing=None, unit=None, axes="ZYX", path=folder, note=note)
