"""Where an input array lives, so that another process (a cluster worker) can open it again
and read its blocks in place instead of a copy: a zarr array, an HDF5 dataset, or either
seen without its leading size-1 axes."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .common import H5_SUFFIXES, suffix_of
from .hdf5 import H5Array
from .views import SingleAxesDropped

__all__ = ["source_of", "open_source"]


def source_of(array: Any) -> tuple[str, str, int, int] | None:
    """(file or store, array path inside it, size-1 axes dropped in front, after) of a zarr
    array or an :class:`~.hdf5.H5Array` on the local file system, or of a
    :class:`~.views.SingleAxesDropped` view of either; None for anything else (numpy, dask)."""
    lead, trail = (array.lead, array.trail) if isinstance(array, SingleAxesDropped) else (0, 0)
    array = array.array if isinstance(array, SingleAxesDropped) else array
    if isinstance(array, H5Array):
        return array.file, array.name, lead, trail
    import zarr

    if not isinstance(array, zarr.Array):
        return None
    root = getattr(array.store, "root", None) or getattr(array.store, "path", None)
    if root is None or not Path(root).is_dir():
        return None
    return str(Path(root).resolve()), str(getattr(array, "path", "") or ""), lead, trail


def open_source(where: str, key: str = "", lead: int = 0, trail: int = 0) -> Any:
    """Open an input by its location (:func:`source_of`) for reading, in this process or a
    worker: the array at ``key`` in the zarr store or HDF5 file ``where``, without its first
    ``lead`` and last ``trail`` axes."""
    if suffix_of(Path(where)) in H5_SUFFIXES:
        arr: Any = H5Array(where, key)
    else:
        import zarr

        arr = zarr.open_array(where, path=key, mode="r") if key else zarr.open_array(where, mode="r")
    return SingleAxesDropped(arr, lead, trail) if lead or trail else arr
