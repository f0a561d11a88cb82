"""Where an input array lives, so that another process (a cluster worker) can open it again
and read its blocks in place instead of a copy: a zarr array, an HDF5 or N5 dataset, a large
compressed TIFF, a large MRC or uncompressed TIFF memory-mapped here, a large MRC or TIFF file
by URL, or one seen at one index of its first or last axes (a single T or C dropped, a channel
picked)."""

from __future__ import annotations

import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .common import CZI_SUFFIXES, H5_SUFFIXES, N5_SUFFIX, TIFF_SUFFIXES, is_url, suffix_of
from .czi import CziArray
from .fetch import remote_size, zarr_store
from .hdf5 import H5Array
from .rawurl import RawUrlArray
from .n5 import N5Array
from .precomputed import PrecomputedArray
from .remote import source_prefix, url_of
from .tiff import TiffArray
from .velox import velox_dataset
from .views import AxesPicked, FramesFirst

__all__ = ["source_of", "open_source", "wrapped_array", "KEPT_URL_TIFFS", "KEPT_URL_TIFF_BYTES"]

#: Compressed TIFFs by URL that each thread keeps open (:func:`open_source`), and the bytes
#: fetched from one (kept in a sparse temporary file) beyond which it is opened anew.
KEPT_URL_TIFFS = 4
KEPT_URL_TIFF_BYTES = 1 << 30
_KEPT = threading.local()


def source_of(array: Any) -> tuple[str, str, tuple[int, ...], tuple[int, ...]] | None:
    """(file or store, array path inside it, indices taken on the first axes, on the last) of
    a zarr array, an :class:`~.hdf5.H5Array`, an :class:`~.n5.N5Array` or a
    :class:`~.tiff.TiffArray` (on the local file system or by URL), or of an :class:`~.views.AxesPicked`
    view of one, or of a dask array that only
    wraps one of these (``da.from_array``, ``da.from_zarr``: how napari layers of files and
    stores come); None for anything else (numpy, other dask arrays)."""
    if hasattr(array, "dask"):  # a napari layer of a file or store: the array it wraps, if nothing else
        array = wrapped_array(array)
        if array is None:
            return None
    lead, trail = (array.lead, array.trail) if isinstance(array, AxesPicked) else ((), ())
    array = array.array if isinstance(array, AxesPicked) else array
    if isinstance(array, FramesFirst) and isinstance(array.array, H5Array) and velox_dataset(array.array.name):
        array = array.array  # reopened frames first (open_source)
    if isinstance(array, H5Array):
        return array.file, array.name, lead, trail
    if isinstance(array, N5Array):
        return array.root, array.name, lead, trail
    if isinstance(array, TiffArray):
        return array.file, str(array.series) if array.series else "", lead, trail
    if isinstance(array, PrecomputedArray):  # by URL, marked as precomputed: its name says nothing
        return (f"precomputed://{array.root}" if array.url else array.root), array.name, lead, trail
    if isinstance(array, RawUrlArray):  # by URL, its layout in the key: workers read it in place
        return array.url, array.key, lead, trail
    if isinstance(array, np.memmap):  # a large MRC or uncompressed TIFF, mapped again by the worker
        mapped = _mapped(array)
        return None if mapped is None else (*mapped, lead, trail)
    if isinstance(array, CziArray):
        return array.file, str(array.scene) if array.scene is not None else "", lead, trail
    import zarr

    if not isinstance(array, zarr.Array):
        return None
    if (url := url_of(array.store)) is not None:  # read over the network: workers open the URL
        return url, str(getattr(array, "path", "") or ""), lead, trail
    root = getattr(array.store, "root", None) or getattr(array.store, "path", None)
    if root is None or not Path(root).is_dir():
        return None
    return str(Path(root).resolve()), str(getattr(array, "path", "") or ""), lead, trail


def _mapped(array: np.memmap) -> tuple[str, str] | None:
    """(file, key) of a memory map that is a whole run of a file's bytes (not a strided or
    offset view of one), which another process maps again: the key holds its byte offset,
    type and shape (``mmap:1024:<i2:30x512x512``)."""
    root: Any = array
    while isinstance(root.base, np.ndarray):
        root = root.base
    name = getattr(root, "filename", None)
    pointer = array.__array_interface__["data"][0]
    if name is None or not array.flags.c_contiguous or pointer != root.__array_interface__["data"][0]:
        return None
    return str(Path(name).resolve()), f"mmap:{int(root.offset)}:{array.dtype.str}:{'x'.join(map(str, array.shape))}"


def open_source(where: str, key: str = "", lead: Sequence[int] = (), trail: Sequence[int] = ()) -> Any:
    """Open an input by its location (:func:`source_of`) for reading, in this process or a
    worker: the array at ``key`` in the zarr store, HDF5 file or N5 container ``where``, at the indices
    ``lead`` of its first axes and ``trail`` of its last."""
    if key.startswith("mmap:") and not is_url(where):  # a memory-mapped MRC or TIFF: the same bytes
        offset, dtype, shape = key[len("mmap:"):].split(":")
        mapped = np.memmap(where, mode="r", dtype=np.dtype(dtype), offset=int(offset),
                           shape=tuple(int(n) for n in shape.split("x")))
        return AxesPicked(mapped, lead, trail) if lead or trail else mapped
    if where.lower().startswith("precomputed://"):  # a precomputed volume's URL (source_of marks it)
        arr: Any = PrecomputedArray(source_prefix(where)[0], key)
    elif is_url(where) and where.lower().endswith(H5_SUFFIXES):  # an HDF5 file by URL
        arr = H5Array(where, key)
        arr = FramesFirst(arr) if velox_dataset(key) and arr.ndim == 3 else arr
    elif is_url(where) and key.startswith("raw:"):  # an MRC or TIFF volume by URL, read by byte range
        arr = RawUrlArray.from_key(where, key)
    elif is_url(where) and where.lower().endswith(TIFF_SUFFIXES):  # a compressed or tiled TIFF by URL
        arr = _url_tiff(where, int(key) if key else 0)
    elif is_url(where) and where.lower().endswith(".n5"):  # read over the network
        arr = N5Array(where, key)
    elif is_url(where):
        import zarr

        arr = zarr.open_array(zarr_store(where), path=key, mode="r") if key else zarr.open_array(zarr_store(where), mode="r")
    elif suffix_of(Path(where)) in H5_SUFFIXES:
        arr = H5Array(where, key)
        arr = FramesFirst(arr) if velox_dataset(key) and arr.ndim == 3 else arr  # Velox: (y, x, frames)
    elif suffix_of(Path(where)) == N5_SUFFIX:
        arr = N5Array(where, key)
    elif suffix_of(Path(where)) in TIFF_SUFFIXES:
        arr = TiffArray(where, int(key) if key else 0)  # the key: a series past the first
    elif suffix_of(Path(where)) in CZI_SUFFIXES:
        arr = CziArray(where, int(key) if key else None)  # the key: a scene of several
    elif (Path(where) / "info").is_file():  # a neuroglancer precomputed volume
        arr = PrecomputedArray(where, key)
    else:
        import zarr

        arr = zarr.open_array(where, path=key, mode="r") if key else zarr.open_array(where, mode="r")
    return AxesPicked(arr, lead, trail) if lead or trail else arr


def _url_tiff(url: str, series: int) -> TiffArray:
    """A compressed TIFF by URL, opened once per thread and file version: opening walks the
    tags of every page (a request per page of a compressed stack, thousands of round trips),
    so a cluster worker's thread keeps the last few it opened for its next tasks. The file's
    size (one request) tells a new version apart. One whose fetched blocks grew past
    :data:`KEPT_URL_TIFF_BYTES` is opened anew, so that a long run's disk use stays bounded."""
    kept = _KEPT.__dict__.setdefault("tiffs", {})
    key = (url, series, remote_size(url))
    if key in kept and kept[key].kept_bytes > KEPT_URL_TIFF_BYTES:
        del kept[key]
    if key not in kept:
        while len(kept) >= KEPT_URL_TIFFS:
            kept.pop(next(iter(kept)))
        kept[key] = TiffArray(url, series)
    return kept[key]


def wrapped_array(array: Any) -> Any:
    """The array a dask array was made from by ``da.from_array`` (or ``from_zarr``) and nothing
    else, whole (a napari layer of a file or store); None for any other dask array (sliced,
    computed on, stacked)."""
    layers = getattr(array.dask, "layers", None)
    if layers is None or len(layers) != 2:
        return None
    originals = [name for name in layers if str(name).startswith("original-")]
    if len(originals) != 1:
        return None
    values = list(dict(layers[originals[0]]).values())
    if len(values) != 1 or not hasattr(values[0], "shape") or not hasattr(values[0], "dtype"):
        return None
    found = values[0]
    if tuple(found.shape) != tuple(array.shape) or str(found.dtype) != str(array.dtype):
        return None
    return found
