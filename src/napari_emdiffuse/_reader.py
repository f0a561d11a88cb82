"""napari readers: MRC files (IMOD, SerialEM, tomography), which napari cannot open itself,
and OME-Zarr stores (this plugin's ``.ome.zarr`` outputs among them) as multiscale layers with
their pixel size, which napari's own zarr reader leaves out.

The layer's ``scale`` is the voxel size in nanometres, as for every image this plugin opens, so
the widgets know the physical spacing (for example the factor of an isotropic reconstruction).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable

__all__ = ["get_reader", "get_ome_reader", "image_layer"]

LayerData = tuple[Any, dict[str, Any], str]


def image_layer(path: str | os.PathLike[str], name: str | None = None, **extra: Any) -> LayerData:
    """An image file as a napari layer-data tuple, with its pixel size as ``scale`` (nm).

    Examples
    --------
    >>> from napari_emdiffuse._sample_data import sample_path
    >>> data, meta, kind = image_layer(sample_path("fibsem_liver_clean.tif"))
    >>> meta["scale"], kind
    ((8.0, 8.0), 'image')
    """
    from .engine.io.images import read_image

    img = read_image(path)
    meta: dict[str, Any] = {"name": name or Path(path).stem, **extra}
    if img.spacing is not None:
        meta["scale"] = tuple(float(s) for s in img.spacing)
        if img.unit == "nm":
            meta["units"] = ("nm",) * len(img.spacing)
    return img.data, meta, "image"


def get_reader(path: str | list[str]) -> Callable[[str | list[str]], list[LayerData]] | None:
    """The reader for one MRC file (``.mrc``, ``.mrcs``, ``.rec``, ``.st``, ``.ali``, ``.map``), else None."""
    from .engine.io.common import MRC_SUFFIXES

    if isinstance(path, (list, tuple)):
        if len(path) != 1:
            return None
        path = path[0]
    if Path(path).suffix.lower() not in MRC_SUFFIXES:
        return None
    return _read


def _read(path: str | list[str]) -> list[LayerData]:
    if isinstance(path, (list, tuple)):
        path = path[0]
    return [image_layer(path)]


def get_ome_reader(path: str | list[str]) -> Callable[[str | list[str]], list[LayerData]] | None:
    """The reader for one OME-Zarr store (a ``.ome.zarr`` folder with ``multiscales``, NGFF
    0.4 or 0.5), else None."""
    from .engine.io.zarr import is_ome, ome_levels

    if isinstance(path, (list, tuple)):
        if len(path) != 1:
            return None
        path = path[0]
    p = Path(path)
    if not (is_ome(p) and p.is_dir() and ome_levels(p)):
        return None
    return _read_ome


def _read_ome(path: str | list[str]) -> list[LayerData]:
    """Every level of the store's first multiscale image, lazily, without the leading
    size-1 axes (a single T or C) that the restoration drops too; the full resolution's
    pixel size as the layer's scale."""
    import dask.array as da
    import zarr

    from .engine.io.views import leading_ones
    from .engine.io.zarr import ome_levels

    if isinstance(path, (list, tuple)):
        path = path[0]
    group = zarr.open_group(str(path), mode="r")
    paths = ome_levels(path)
    _, meta, kind = image_layer(Path(path) / paths[0], name=Path(path).name[: -len(".ome.zarr")])
    levels = [da.from_zarr(group[k]) for k in paths]
    lead = leading_ones(levels[0].shape)  # as read_image drops them from the first level
    levels = [lv[(0,) * lead] for lv in levels]
    meta["multiscale"] = len(levels) > 1
    return [(levels if len(levels) > 1 else levels[0], meta, kind)]
