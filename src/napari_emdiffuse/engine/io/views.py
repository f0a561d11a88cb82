"""Size-1 axes around a volume dropped, lazily.

Many writers store a ZYX volume as TCZYX with one time point and one channel (OME-Zarr's
``bioformats2raw`` and ``ome-zarr-py``; ImageJ hyperstacks), and some put a single channel last
(ilastik's ``zyxc`` exports: Z, Y, X, 1). The restoration wants ZYX. For a numpy array dropping
them is a view; for a zarr array or an HDF5 dataset, whose indexing reads pixels, it is a
:class:`AxesPicked` view that reads only what is asked for, so a terabyte store stays on
disk, and that keeps the array's location, so cluster workers read the store itself.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from ..errors import InputError

__all__ = ["AxesPicked", "Cropped", "FramesFirst", "cutout", "LazyArray", "ascending_index", "check_one_channel", "drop_single_axes", "full_index", "pick_axes", "single_axes"]


class LazyArray:
    """What the lazy arrays of this package (files read on indexing, views of them) share
    beyond ``shape``, ``dtype`` and ``__getitem__``: ``ndim``, ``size``, ``len`` and numpy
    conversion, so numpy, dask and the restoration take them as arrays."""

    shape: tuple[int, ...]
    dtype: np.dtype

    @property
    def ndim(self) -> int:
        return len(self.shape)

    @property
    def size(self) -> int:
        return int(np.prod(self.shape))

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, key: Any) -> Any:  # pragma: no cover - each array reads its own way
        raise NotImplementedError

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        out = np.asarray(self[...])
        return out.astype(dtype, copy=False) if dtype is not None else out


def full_index(key: Any, ndim: int) -> tuple:
    """A basic numpy index spelt out for every axis: ``...`` expanded, missing axes as ``:``.

    Examples
    --------
    >>> full_index((1, Ellipsis), 3), full_index(2, 2)
    ((1, slice(None, None, None), slice(None, None, None)), (2, slice(None, None, None)))
    """
    key = key if isinstance(key, tuple) else (key,)
    if sum(k is Ellipsis for k in key) > 1:
        raise IndexError("an index can only have a single ellipsis ('...')")
    if Ellipsis in key:
        i = key.index(Ellipsis)
        key = key[:i] + (slice(None),) * (ndim - len(key) + 1) + key[i + 1 :]
    if len(key) > ndim:
        raise IndexError(f"too many indices for an array of {ndim} dimensions")
    return key + (slice(None),) * (ndim - len(key))


def ascending_index(key: Any, shape: tuple[int, ...]) -> tuple[list, tuple]:
    """A basic index split into what to read (integers and positive-step slices, which HDF5,
    zarr and the TIFF pages select natively) and the numpy index to apply afterwards (the
    reversal of negative steps; empty when there is none).

    Examples
    --------
    >>> ascending_index((slice(None, None, -2), 1), (5, 3))
    ([slice(0, 5, 2), 1], (slice(None, None, -1),))
    """
    key = full_index(key, len(shape))
    read: list = []
    post: list = []
    flip = False
    for k, n in zip(key, shape):
        if isinstance(k, (int, np.integer)) and not isinstance(k, bool):
            i = int(k) + n if k < 0 else int(k)
            if not 0 <= i < n:
                raise IndexError(f"index {int(k)} is out of bounds for an axis of size {n}")
            read.append(i)
        elif isinstance(k, slice):
            start, stop, step = k.indices(n)
            count = len(range(start, stop, step))
            if step > 0:
                read.append(slice(start, start + max(count - 1, 0) * step + 1 if count else start, step))
                post.append(slice(None))
            else:  # read ascending, reverse afterwards
                first = start + (count - 1) * step if count else 0
                read.append(slice(first, start + 1 if count else 0, -step))
                post.append(slice(None, None, -1))
                flip = True
        else:
            raise IndexError(f"these arrays take integers and slices, got {type(k).__name__}")
    return read, (tuple(post) if flip else ())


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


class Cropped(LazyArray):
    """A box of ``shape`` from ``origin`` (default the first corner) of a larger array, read
    lazily: an index is read within the box only. A volume stored padded to whole chunks (as
    Imaris does), or a cutout of a large or remote volume (``emdiffuse convert --region``).

    Examples
    --------
    >>> a = Cropped(np.arange(24).reshape(4, 6), (3, 5))
    >>> a.shape, a[-1, ::-2].tolist()
    ((3, 5), [16, 14, 12])
    >>> Cropped(np.arange(24).reshape(4, 6), (2, 2), origin=(1, 3))[...].tolist()
    [[9, 10], [15, 16]]
    """

    def __init__(self, array: Any, shape: tuple[int, ...], origin: tuple[int, ...] | None = None) -> None:
        self.array = array
        self.shape = tuple(int(n) for n in shape)
        self.origin = tuple(int(o) for o in origin) if origin is not None else (0,) * len(self.shape)
        if len(self.origin) != len(self.shape) or any(
                o < 0 or o + n > m for o, n, m in zip(self.origin, self.shape, array.shape)):  # fmt: skip
            raise ValueError(f"a box of {self.shape} from {self.origin} is not inside shape {tuple(array.shape)}")
        self.dtype = np.dtype(array.dtype)
        chunks = getattr(array, "chunks", None)
        self.chunks = tuple(min(int(c), n) for c, n in zip(chunks, self.shape)) if chunks else None

    def __getitem__(self, key: Any) -> np.ndarray:
        read, post = ascending_index(key, self.shape)
        moved = tuple(k + o if isinstance(k, int) else slice(k.start + o, k.stop + o, k.step)
                      for k, o in zip(read, self.origin))  # fmt: skip
        out = np.asarray(self.array[moved])
        return out[post] if post else out

    def __repr__(self) -> str:
        return f"Cropped(<array shape={tuple(self.array.shape)}>, {self.shape}, origin={self.origin})"


def cutout(array: Any, *, region: Sequence[int] | None = None, slices: Sequence[int] | None = None) -> Any:
    """Rows ``y0:y1`` and columns ``x0:x1`` (``region``, of every slice) and sections
    ``z0:z1`` (``slices``, of a stack) of an image, lazily for an array read from a file or a
    URL (:class:`Cropped`: only the chunks inside are read); a box outside the image is
    refused in one line.

    Examples
    --------
    >>> cutout(np.arange(60).reshape(3, 4, 5), region=(1, 3, 0, 2), slices=(2, 3)).tolist()
    [[[45, 46], [50, 51]]]
    >>> cutout(np.zeros((4, 5)), slices=(0, 1))
    Traceback (most recent call last):
    ...
    napari_emdiffuse.engine.errors.InputError: sections 0:1 were asked of a 2D image; --slices takes a stack or volume
    """
    shape = tuple(int(n) for n in array.shape)
    origin, size = [0] * len(shape), list(shape)
    if slices is not None:
        if len(shape) != 3:
            raise InputError(f"sections {slices[0]}:{slices[1]} were asked of a {len(shape)}D image; --slices takes "
                             "a stack or volume")
        z0, z1 = (int(v) for v in slices)
        if not 0 <= z0 < z1 <= shape[0]:
            raise InputError(f"sections {z0}:{z1} are not inside the image's {shape[0]} sections")
        origin[0], size[0] = z0, z1 - z0
    if region is not None:
        if len(shape) < 2:
            raise InputError("a region takes an image of rows and columns")
        y0, y1, x0, x1 = (int(v) for v in region)
        for axis, (a, b), n, what in (("y", (y0, y1), shape[-2], "rows"), ("x", (x0, x1), shape[-1], "columns")):
            if not 0 <= a < b <= n:
                raise InputError(f"region {axis} {a}:{b} is not inside the image's {n} {what}")
        origin[-2:], size[-2:] = [y0, x0], [y1 - y0, x1 - x0]
    if isinstance(array, np.ndarray):
        return array[tuple(slice(o, o + n) for o, n in zip(origin, size))]
    return Cropped(array, tuple(size), origin=tuple(origin))


class AxesPicked(LazyArray):
    """An array seen at given indices of its first and last axes (those axes dropped), read
    lazily: a single T and C dropped (index 0), or one channel or time point picked.

    ``lead`` holds the index taken on each of the first ``len(lead)`` axes, ``trail`` on each
    of the last ``len(trail)``. Indexing reads only the selected chunks, as the array's own
    indexing does; ``array`` is the array itself, so the view can be told apart from others and
    reopened elsewhere (:func:`~.sources.open_source`).

    Examples
    --------
    >>> import zarr
    >>> a = zarr.zeros((1, 1, 4, 6, 8), dtype="uint8")
    >>> v = AxesPicked(a, (0, 0))
    >>> v.shape, v.ndim, v.dtype, v[1:3, 0].shape, v[..., 2].shape
    ((4, 6, 8), 3, dtype('uint8'), (2, 8), (4, 6))
    >>> AxesPicked(zarr.zeros((4, 6, 8, 2), dtype="uint8"), (), (1,))[..., 2].shape
    (4, 6)
    """

    def __init__(self, array: Any, lead: Sequence[int] = (), trail: Sequence[int] = ()) -> None:
        shape = tuple(array.shape)
        lead, trail = tuple(int(i) for i in lead), tuple(int(i) for i in trail)
        picked = list(zip(shape[: len(lead)], lead)) + list(zip(shape[len(shape) - len(trail):], trail))
        if len(lead) + len(trail) >= len(shape) or any(not 0 <= i < n for n, i in picked):
            raise ValueError(f"cannot take {lead} in front and {trail} after from shape {shape}")
        self.array = array
        self.lead = lead
        self.trail = trail

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.array.shape[len(self.lead) : len(self.array.shape) - len(self.trail)])

    @property
    def dtype(self) -> np.dtype:  # type: ignore[override]
        return np.dtype(self.array.dtype)

    @property
    def chunks(self) -> tuple[int, ...]:
        return tuple(self.array.chunks[len(self.lead) : len(self.array.shape) - len(self.trail)])

    def __getitem__(self, key: Any) -> Any:
        key = key if isinstance(key, tuple) else (key,)
        if self.trail:  # the index must reach the trailing axes: spell it out for every axis
            key = full_index(key, self.ndim) + self.trail
        return self.array[self.lead + key]

    def __dask_tokenize__(self) -> tuple:
        from dask.base import tokenize

        return ("AxesPicked", tokenize(self.array), self.lead, self.trail)

    def __repr__(self) -> str:
        return f"AxesPicked(<array shape={tuple(self.array.shape)}>, lead={self.lead}, trail={self.trail})"


class FramesFirst(LazyArray):
    """An array whose last axis counts frames (Velox keeps a series as y, x, frames), seen
    with that axis first, read lazily: indexing reads only the selection.

    Examples
    --------
    >>> a = np.arange(24).reshape(2, 3, 4)  # y, x, frames
    >>> v = FramesFirst(a)
    >>> v.shape, bool((v[1] == a[..., 1]).all()), v[::-1, 0, 2].tolist()
    ((4, 2, 3), True, [11, 10, 9, 8])
    """

    def __init__(self, array: Any) -> None:
        self.array = array

    @property
    def shape(self) -> tuple[int, ...]:
        s = tuple(self.array.shape)
        return s[-1:] + s[:-1]

    @property
    def dtype(self) -> np.dtype:  # type: ignore[override]
        return np.dtype(self.array.dtype)

    @property
    def chunks(self) -> tuple[int, ...]:
        c = tuple(getattr(self.array, "chunks", None) or self.array.shape)
        return c[-1:] + c[:-1]

    def __getitem__(self, key: Any) -> Any:
        key = full_index(key, self.ndim)
        out = self.array[key[1:] + key[:1]]
        # the frames axis, where kept, comes out last
        return np.moveaxis(np.asarray(out), -1, 0) if isinstance(key[0], slice) else out

    def __dask_tokenize__(self) -> tuple:
        from dask.base import tokenize

        return ("FramesFirst", tokenize(self.array))

    def __repr__(self) -> str:
        return f"FramesFirst(<array shape={tuple(self.array.shape)}>)"


def _take(data: Any, lead: tuple[int, ...], trail: tuple[int, ...]) -> Any:
    """``data`` at ``lead`` on its first axes and ``trail`` on its last: numpy and dask are
    indexed (a view, a lazy graph), anything else is wrapped in (or merged into) an
    :class:`AxesPicked` view."""
    if not (lead or trail):
        return data
    if isinstance(data, np.ndarray) or hasattr(data, "dask"):
        return data[lead + (Ellipsis,) + trail]
    if isinstance(data, AxesPicked):  # one view of the array itself, so workers can reopen it
        return AxesPicked(data.array, data.lead + lead, trail + data.trail)
    return AxesPicked(data, lead, trail)


def drop_single_axes(
    data: Any, spacing: tuple[float, ...] | None, axes: str | None
) -> tuple[Any, tuple[float, ...] | None, str | None]:
    """Drop the size-1 axes in front of the last three (a single T or C) and a single channel
    after them (:func:`single_axes`), with their spacing and axis letters. numpy and dask
    arrays are indexed (a view, a lazy graph); anything else, a zarr array above all, is
    wrapped in an :class:`AxesPicked` view.

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
    data = _take(data, (0,) * lead, (0,) * trail)
    if spacing is not None and len(spacing) == n:
        spacing = tuple(spacing[lead : n - trail])
    if axes is not None and len(axes) == n:
        axes = axes[lead : n - trail]
    return data, spacing, axes


def pick_axes(
    data: Any,
    spacing: tuple[float, ...] | None,
    axes: str | None,
    *,
    channel: int | None = None,
    time: int | None = None,
    name: str = "image",
) -> tuple[Any, tuple[float, ...] | None, str | None]:
    """One channel (``C``) and one time point (``T``) of an image whose axes are declared,
    with its spacing and axis letters, then the remaining size-1 axes dropped
    (:func:`drop_single_axes`). Lazy arrays stay lazy; picks on their first or last axes
    (OME-Zarr's TCZYX, ilastik's ZYXC) keep the array's location for cluster workers.

    Two detectors recorded at once (in-lens and back-scatter SEM), correlative light and EM, or
    a time series are stored this way; the models restore one greyscale volume at a time.

    Raises
    ------
    InputError
        An index below 0 or past the axis, or a channel or time point asked of an image that
        has one only (index 0 is then accepted) or does not declare its axes.

    Examples
    --------
    >>> d, s, a = pick_axes(np.zeros((1, 2, 5, 6, 7)), (1.0, 1.0, 40.0, 8.0, 8.0), "TCZYX", channel=1)
    >>> d.shape, s, a
    ((5, 6, 7), (40.0, 8.0, 8.0), 'ZYX')
    >>> pick_axes(np.zeros((3, 5, 2, 6, 7)), None, "TZCYX", channel=0, time=2)[0].shape
    (5, 6, 7)
    """
    wanted = {letter: index for letter, index in (("C", channel), ("T", time)) if index is not None}
    n = len(data.shape)
    picks: dict[int, int] = {}
    for letter, index in wanted.items():
        word = "channel" if letter == "C" else "time point"
        if isinstance(index, bool) or not isinstance(index, (int, np.integer)) or index < 0:
            raise InputError(f"the {word} must be a whole number from 0, got {index!r}")
        if axes is None or len(axes) != n:
            if n > 3:
                raise InputError(f"'{name}' does not declare its axes {tuple(data.shape)}, so its {word} axis "
                                 "is unknown; save it as an ImageJ hyperstack or OME-TIFF/OME-Zarr")
            axis = -1
        else:
            axis = axes.find(letter)
        if axis < 0:
            if index:
                raise InputError(f"'{name}' has a single {word} (axes {axes or 'not declared'}); "
                                 f"{word} {index} does not exist")
            continue
        if index >= data.shape[axis]:
            raise InputError(f"'{name}' has {data.shape[axis]} {word}s (0 to {data.shape[axis] - 1}); "
                             f"{word} {index} does not exist")
        picks[axis] = int(index)
    if picks:
        lead = 0
        while lead in picks:
            lead += 1
        trail = 0
        while n - 1 - trail in picks:
            trail += 1
        if isinstance(data, np.ndarray) or hasattr(data, "dask") or lead + trail != len(picks):
            if not (isinstance(data, np.ndarray) or hasattr(data, "dask")):
                import dask.array as da  # a pick in the middle of a lazy store: read through dask

                data = da.from_array(data, chunks=getattr(data, "chunks", "auto"), asarray=False)
            data = data[tuple(picks.get(i, slice(None)) for i in range(n))]
        else:
            data = _take(data, tuple(picks[i] for i in range(lead)), tuple(picks[i] for i in range(n - trail, n)))
        kept = [i for i in range(n) if i not in picks]
        spacing = tuple(spacing[i] for i in kept) if spacing is not None and len(spacing) == n else spacing
        axes = "".join(axes[i] for i in kept) if axes is not None and len(axes) == n else axes
    return drop_single_axes(data, spacing, axes)


def check_one_channel(shape: tuple[int, ...], axes: str | None, name: str = "image") -> None:
    """Refuse, in one line, an image whose declared axes hold several channels: restored as it
    is, its channels (two detectors, light and EM) would pass for z sections and be averaged
    along z. Time points of a 3-D image (``TYX``: an in-situ series, or sections that a writer
    labelled as frames) are restored as a stack, as before.

    Examples
    --------
    >>> check_one_channel((3, 64, 64), "TYX")
    >>> check_one_channel((2, 64, 64), "CYX", "two.tif")
    Traceback (most recent call last):
    ...
    napari_emdiffuse.engine.errors.InputError: 'two.tif' has 2 channels (axes CYX); restore one at a time (--channel C, or read_image(..., channel=C))
    """
    if axes is None or len(axes) != len(shape) or "C" not in axes or shape[axes.index("C")] == 1:
        return
    raise InputError(f"'{name}' has {shape[axes.index('C')]} channels (axes {axes}); restore one at a time "
                     "(--channel C, or read_image(..., channel=C))")
