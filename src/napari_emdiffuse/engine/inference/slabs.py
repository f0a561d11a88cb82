"""A stack stored in chunks deeper than a slice, read a slab at a time.

A restoration works slice by slice, block by block. A volume stored in 3D chunks (N5 and
neuroglancer precomputed volumes in 64³ chunks, zarr in 32³ to 128³) would have each chunk
fetched and decoded again for every slice it holds: 64 times for 64-deep chunks, over a
network or on a cluster most of a run's work. So the tasks of one lateral block within one
chunk's depth run one after another (:func:`in_slab_order`, one cluster task each group), and
their planes come from one read of that slab (:class:`SlabPlanes`): each chunk is read once.
The result does not change: the same planes are restored, in another order.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from ..io.sources import wrapped_array

__all__ = ["SLAB_BYTES", "SlabPlanes", "chunk_depth", "in_slab_order", "slab_groups"]

#: The most bytes one slab may take (two are kept): a 2048² block with its halo of 64 slices
#: of uint8 is ~290 MB; a deeper or wider slab is read a part of the depth at a time.
SLAB_BYTES = 512 << 20


def chunk_depth(image: Any) -> int:
    """Slices per chunk along the first axis of a stack stored in chunks (zarr, N5, HDF5,
    precomputed, a view of one, or a dask array that only wraps one); 1 for a 2D image, an
    array in memory or another dask array.

    Examples
    --------
    >>> import zarr
    >>> chunk_depth(zarr.zeros((10, 64, 64), chunks=(4, 32, 32))), chunk_depth(np.zeros((10, 4, 4)))
    (4, 1)
    """
    if hasattr(image, "dask"):  # a napari layer of a store: the store's chunks
        image = wrapped_array(image)
    if image is None or isinstance(image, np.ndarray) or len(getattr(image, "shape", ())) != 3:
        return 1
    try:
        depth = int(getattr(image, "chunks", None)[0])  # type: ignore[index]
    except (TypeError, ValueError, IndexError):
        return 1
    return max(1, min(depth, int(image.shape[0])))


def in_slab_order(jobs: Sequence[tuple[int, int, int]], depth: int) -> list[tuple[int, int, int]]:
    """Block jobs ``(z, block row, block column)`` ordered so that those of one lateral block
    within one chunk's depth of slices come one after another.

    Examples
    --------
    >>> in_slab_order([(0, 0, 0), (0, 0, 1), (1, 0, 0), (1, 0, 1), (2, 0, 0)], 2)
    [(0, 0, 0), (1, 0, 0), (0, 0, 1), (1, 0, 1), (2, 0, 0)]
    """
    if depth <= 1:
        return list(jobs)
    return sorted(jobs, key=lambda j: (j[0] // depth, j[1], j[2], j[0]))


def slab_groups(jobs: Sequence[tuple[int, int, int]], depth: int) -> list[tuple[tuple[int, int, int], ...]]:
    """The jobs in groups that read one slab (one task each on a cluster), in slab order.

    Examples
    --------
    >>> slab_groups([(0, 0, 0), (1, 0, 0), (2, 0, 0), (0, 1, 0)], 2)
    [((0, 0, 0), (1, 0, 0)), ((0, 1, 0),), ((2, 0, 0),)]
    """
    groups: dict[tuple[int, int, int], list[tuple[int, int, int]]] = {}
    for job in in_slab_order(jobs, depth):
        groups.setdefault((job[0] // max(depth, 1), job[1], job[2]), []).append(job)
    return [tuple(g) for g in groups.values()]


class SlabPlanes:
    """``planes[z, rows, cols]`` of a stack, read a slab at a time: for a window not read
    yet, the slices of z's chunk (``depth`` of them) in that window; the last two slabs are
    kept (the gap between slices z and z + 1 may straddle two). Anything else is read as asked.

    Examples
    --------
    >>> import zarr
    >>> stack = zarr.array(np.arange(6 * 4 * 4).reshape(6, 4, 4), chunks=(3, 4, 4))
    >>> planes = SlabPlanes(stack)
    >>> planes[1, 0:2, 1:3].tolist(), planes.depth
    ([[17, 18], [21, 22]], 3)
    """

    def __init__(self, image: Any, depth: int | None = None) -> None:
        # A dask array that only wraps a store (a napari layer) is read through the store.
        wrapped = wrapped_array(image) if hasattr(image, "dask") else None
        self.image = wrapped if wrapped is not None else image
        self.depth = chunk_depth(image) if depth is None else max(1, int(depth))
        self.shape = tuple(image.shape)
        self.dtype = np.dtype(image.dtype)
        self.ndim = len(self.shape)
        self._slabs: dict[tuple, np.ndarray] = {}

    def __getitem__(self, idx: Any) -> Any:
        if self.depth <= 1 or not _plane_window(idx):
            return self.image[idx]
        z, ys, xs = idx
        z = int(z) + self.shape[0] if z < 0 else int(z)
        itemsize = self.dtype.itemsize
        area = len(range(*ys.indices(self.shape[1]))) * len(range(*xs.indices(self.shape[2])))
        depth = max(1, min(self.depth, SLAB_BYTES // max(1, area * itemsize)))
        z0 = z // self.depth * self.depth + (z % self.depth) // depth * depth
        key = (z0, depth, ys.indices(self.shape[1]), xs.indices(self.shape[2]))
        slab = self._slabs.get(key)
        if slab is None:
            slab = np.asarray(self.image[z0 : min(z0 + depth, self.shape[0]), ys, xs])
            self._slabs = {k: v for k, v in list(self._slabs.items())[-1:]}  # keep the last one besides it
            self._slabs[key] = slab
        return slab[z - z0]


def _plane_window(idx: Any) -> bool:
    """Whether ``idx`` is (an integer slice index, rows, columns) with unit steps."""
    return (isinstance(idx, tuple) and len(idx) == 3 and isinstance(idx[0], (int, np.integer))
            and all(isinstance(s, slice) and s.step in (None, 1) for s in idx[1:]))  # fmt: skip
