"""Leading size-1 axes dropped, lazily.

Many writers store a ZYX volume as TCZYX with one time point and one channel (OME-Zarr's
``bioformats2raw`` and ``ome-zarr-py``; ImageJ hyperstacks). The restoration wants ZYX. For a
numpy array dropping them is a view; for a zarr array, whose indexing reads pixels, it is a
:class:`LeadingDropped` view that reads only what is asked for, so a terabyte store stays on
disk, and that keeps the array's location, so cluster workers read the store itself.
"""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["LeadingDropped", "drop_leading", "leading_ones"]


def leading_ones(shape: tuple[int, ...], keep: int = 3) -> int:
    """How many axes of size 1 lead ``shape`` in front of its last ``keep``.

    Examples
    --------
    >>> leading_ones((1, 1, 40, 512, 512)), leading_ones((2, 1, 40, 8, 8)), leading_ones((1, 8, 8))
    (2, 0, 0)
    """
    n = 0
    while n < len(shape) - keep and shape[n] == 1:
        n += 1
    return n


class LeadingDropped:
    """A zarr array seen without its first ``lead`` axes (each of size 1), read lazily.

    Indexing reads only the selected chunks, as the array's own indexing does; ``store``,
    ``path`` and ``attrs`` are the array's, so the view can be told apart from others and
    reopened elsewhere (:func:`~.zarr.open_source`).

    Examples
    --------
    >>> import zarr
    >>> a = zarr.zeros((1, 1, 4, 6, 8), dtype="uint8")
    >>> v = LeadingDropped(a, 2)
    >>> v.shape, v.ndim, v.dtype, v[1:3, 0].shape
    ((4, 6, 8), 3, dtype('uint8'), (2, 8))
    """

    def __init__(self, array: Any, lead: int) -> None:
        if not 0 < lead <= array.ndim or any(array.shape[i] != 1 for i in range(lead)):
            raise ValueError(f"the first {lead} axes of shape {tuple(array.shape)} are not all of size 1")
        self.array = array
        self.lead = int(lead)

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.array.shape[self.lead:])

    @property
    def ndim(self) -> int:
        return len(self.shape)

    @property
    def dtype(self) -> np.dtype:
        return np.dtype(self.array.dtype)

    @property
    def chunks(self) -> tuple[int, ...]:
        return tuple(self.array.chunks[self.lead:])

    @property
    def size(self) -> int:
        return int(np.prod(self.shape))

    @property
    def store(self) -> Any:
        return self.array.store

    @property
    def path(self) -> str:
        return str(getattr(self.array, "path", "") or "")

    @property
    def attrs(self) -> Any:
        return self.array.attrs

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, key: Any) -> Any:
        key = key if isinstance(key, tuple) else (key,)
        return self.array[(0,) * self.lead + key]

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        out = np.asarray(self[...])
        return out.astype(dtype, copy=False) if dtype is not None else out

    def __dask_tokenize__(self) -> tuple:
        from dask.base import tokenize

        return ("LeadingDropped", tokenize(self.array), self.lead)

    def __repr__(self) -> str:
        return f"LeadingDropped(<array shape={tuple(self.array.shape)}>, lead={self.lead}) shape={self.shape}"


def drop_leading(
    data: Any, spacing: tuple[float, ...] | None, axes: str | None
) -> tuple[Any, tuple[float, ...] | None, str | None]:
    """Drop the size-1 axes in front of the last three (a singleton T or C), with their
    spacing and axis letters. numpy and dask arrays are indexed (a view, a lazy graph);
    anything else, a zarr array above all, is wrapped in a :class:`LeadingDropped` view.

    Examples
    --------
    >>> import numpy as np
    >>> d, s, a = drop_leading(np.zeros((1, 1, 2, 3, 4)), (1.0, 1.0, 40.0, 8.0, 8.0), "TCZYX")
    >>> d.shape, s, a
    ((2, 3, 4), (40.0, 8.0, 8.0), 'ZYX')
    """
    lead = leading_ones(tuple(data.shape))
    if not lead:
        return data, spacing, axes
    indexable = isinstance(data, np.ndarray) or hasattr(data, "dask")
    data = data[(0,) * lead] if indexable else LeadingDropped(data, lead)
    if spacing is not None and len(spacing) == lead + data.ndim:
        spacing = tuple(spacing[lead:])
    if axes is not None and len(axes) == lead + data.ndim:
        axes = axes[lead:]
    return data, spacing, axes
