"""Size-1 axes around a volume dropped, lazily.

Many writers store a ZYX volume as TCZYX with one time point and one channel (OME-Zarr's
``bioformats2raw`` and ``ome-zarr-py``; ImageJ hyperstacks), and some put a single channel last
(ilastik's ``zyxc`` exports: Z, Y, X, 1). The restoration wants ZYX. For a numpy array dropping
them is a view; for a zarr array or an HDF5 dataset, whose indexing reads pixels, it is a
:class:`SingleAxesDropped` view that reads only what is asked for, so a terabyte store stays on
disk, and that keeps the array's location, so cluster workers read the store itself.
"""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["SingleAxesDropped", "drop_single_axes", "single_axes"]


def single_axes(shape: tuple[int, ...]) -> tuple[int, int]:
    """How many axes of size 1 lead ``shape`` in front of its last three (a single T or C),
    and whether a single channel trails a volume (1 when a (Z, Y, X, 1) array is left; a
    3-D (N, Y, 1) array stays a stack of images one pixel wide).

    Examples
    --------
    >>> single_axes((1, 1, 40, 512, 512)), single_axes((2, 1, 40, 8, 8)), single_axes((1, 8, 8))
    ((2, 0), (0, 0), (0, 0))
    >>> single_axes((40, 512, 512, 1)), single_axes((1, 40, 512, 512, 1)), single_axes((3, 512, 1))
    ((0, 1), (1, 1), (0, 0))
    """
    lead = 0
    while lead < len(shape) - 3 and shape[lead] == 1:
        lead += 1
    trail = int(len(shape) - lead >= 4 and shape[-1] == 1)
    return lead, trail


class SingleAxesDropped:
    """An array seen without its first ``lead`` and last ``trail`` axes (each of size 1),
    read lazily.

    Indexing reads only the selected chunks, as the array's own indexing does; ``array`` is
    the array itself, so the view can be told apart from others and reopened elsewhere
    (:func:`~.sources.open_source`).

    Examples
    --------
    >>> import zarr
    >>> a = zarr.zeros((1, 1, 4, 6, 8), dtype="uint8")
    >>> v = SingleAxesDropped(a, 2)
    >>> v.shape, v.ndim, v.dtype, v[1:3, 0].shape, v[..., 2].shape
    ((4, 6, 8), 3, dtype('uint8'), (2, 8), (4, 6))
    >>> SingleAxesDropped(zarr.zeros((4, 6, 8, 1), dtype="uint8"), 0, 1)[..., 2].shape
    (4, 6)
    """

    def __init__(self, array: Any, lead: int, trail: int = 0) -> None:
        shape = tuple(array.shape)
        dropped = list(range(lead)) + list(range(len(shape) - trail, len(shape)))
        if lead < 0 or trail < 0 or lead + trail >= len(shape) or any(shape[i] != 1 for i in dropped):
            raise ValueError(f"the first {lead} and last {trail} axes of shape {shape} are not all of size 1")
        self.array = array
        self.lead = int(lead)
        self.trail = int(trail)

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.array.shape[self.lead : len(self.array.shape) - self.trail])

    @property
    def ndim(self) -> int:
        return len(self.shape)

    @property
    def dtype(self) -> np.dtype:
        return np.dtype(self.array.dtype)

    @property
    def chunks(self) -> tuple[int, ...]:
        return tuple(self.array.chunks[self.lead : len(self.array.shape) - self.trail])

    @property
    def size(self) -> int:
        return int(np.prod(self.shape))

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, key: Any) -> Any:
        key = key if isinstance(key, tuple) else (key,)
        if self.trail:  # the index must reach the trailing axes: spell out "..." and the rest
            if Ellipsis in key:
                i = key.index(Ellipsis)
                key = key[:i] + (slice(None),) * (self.ndim - len(key) + 1) + key[i + 1 :]
            key = key + (slice(None),) * (self.ndim - len(key)) + (0,) * self.trail
        return self.array[(0,) * self.lead + key]

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        out = np.asarray(self[...])
        return out.astype(dtype, copy=False) if dtype is not None else out

    def __dask_tokenize__(self) -> tuple:
        from dask.base import tokenize

        return ("SingleAxesDropped", tokenize(self.array), self.lead, self.trail)

    def __repr__(self) -> str:
        return f"SingleAxesDropped(<array shape={tuple(self.array.shape)}>, lead={self.lead}, trail={self.trail})"


def drop_single_axes(
    data: Any, spacing: tuple[float, ...] | None, axes: str | None
) -> tuple[Any, tuple[float, ...] | None, str | None]:
    """Drop the size-1 axes in front of the last three (a single T or C) and a single channel
    after them (:func:`single_axes`), with their spacing and axis letters. numpy and dask
    arrays are indexed (a view, a lazy graph); anything else, a zarr array above all, is
    wrapped in a :class:`SingleAxesDropped` view.

    Examples
    --------
    >>> import numpy as np
    >>> d, s, a = drop_single_axes(np.zeros((1, 1, 2, 3, 4)), (1.0, 1.0, 40.0, 8.0, 8.0), "TCZYX")
    >>> d.shape, s, a
    ((2, 3, 4), (40.0, 8.0, 8.0), 'ZYX')
    >>> drop_single_axes(np.zeros((2, 3, 4, 1)), (40.0, 8.0, 8.0, 1.0), "ZYXC")[1:]
    ((40.0, 8.0, 8.0), 'ZYX')
    """
    lead, trail = single_axes(tuple(data.shape))
    if not (lead or trail):
        return data, spacing, axes
    n = len(data.shape)
    if isinstance(data, np.ndarray) or hasattr(data, "dask"):
        data = data[(0,) * lead + (Ellipsis,) + (0,) * trail]
    else:
        data = SingleAxesDropped(data, lead, trail)
    if spacing is not None and len(spacing) == n:
        spacing = tuple(spacing[lead : n - trail])
    if axes is not None and len(axes) == n:
        axes = axes[lead : n - trail]
    return data, spacing, axes
