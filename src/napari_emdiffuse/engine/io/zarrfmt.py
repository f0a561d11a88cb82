"""The two zarr formats an output can take, and the unit every writer aligns to.

Format 2 (the default) stores one file per chunk, and zarr 2 clients, older dask and most
viewers read it. Format 3 (zarr v3; OME-Zarr 0.5 for a ``.ome.zarr`` name) stores each
written block as one *shard*: a file of smaller chunks with an index, so viewers read
512-px pieces of a block without the block's whole 2048-px file, while a cluster file system
holds no more files than in format 2.

A shard is written whole or rewritten whole, so two writers must never share one. Every
writer here therefore aligns to :func:`write_chunks`: the shard of a format-3 array, the
chunk of a format-2 one. The block plan makes the shard one block, so parallel block tasks,
the z filter and the pyramid's tasks keep to their own shards as they keep to their own
chunks in format 2.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import numpy as np

from ..errors import InputError

__all__ = [
    "ZARR_FORMATS", "check_zarr_format", "write_chunks", "read_chunks", "create_zarr_array", "zarr_format_of",
    "zarr_format_part",
]  # fmt: skip

#: The zarr formats an output may take.
ZARR_FORMATS = (2, 3)

#: Largest edge of a format-3 array's inner chunks: what a viewer reads at once.
READ_CHUNK = 512
#: Smallest inner-chunk edge worth an index entry; an edge with no divisor between the two
#: stays whole (one chunk across that axis of the shard).
MIN_READ_CHUNK = 128


def check_zarr_format(value: Any) -> int:
    """``value`` as a zarr format (2 or 3); anything else is refused in one line.

    Examples
    --------
    >>> check_zarr_format("3")
    3
    >>> check_zarr_format(4)
    Traceback (most recent call last):
    ...
    napari_emdiffuse.engine.errors.InputError: zarr format must be 2 or 3, not 4
    """
    try:
        fmt = int(value)
    except (TypeError, ValueError):
        fmt = None
    if fmt not in ZARR_FORMATS or isinstance(value, bool) or (isinstance(value, float) and value != fmt):
        raise InputError(f"zarr format must be 2 or 3, not {value!r}")
    if fmt == 3:
        import zarr

        if int(zarr.__version__.split(".")[0]) < 3:
            raise InputError(f"zarr format 3 needs zarr-python 3 or newer; this one is {zarr.__version__}")
    return fmt


def write_chunks(array: Any) -> tuple[int, ...]:
    """The unit that writers of ``array`` must not share: its shards (format 3), else its chunks."""
    return tuple(getattr(array, "shards", None) or array.chunks)


def read_chunks(unit: Sequence[int]) -> tuple[int, ...]:
    """The inner chunks of a shard of shape ``unit``: each lateral edge above
    :data:`READ_CHUNK` is split into the largest equal parts of at most that size (and at
    least :data:`MIN_READ_CHUNK`); leading axes and smaller edges stay whole.

    Examples
    --------
    >>> read_chunks((1, 2048, 2048)), read_chunks((300, 1500)), read_chunks((1, 2039, 64))
    ((1, 512, 512), (300, 500), (1, 2039, 64))
    """

    def edge(n: int) -> int:
        if n <= READ_CHUNK:
            return n
        for d in range(READ_CHUNK, MIN_READ_CHUNK - 1, -1):
            if n % d == 0:
                return d
        return n

    unit = tuple(int(c) for c in unit)
    return (*unit[:-2], *(edge(n) for n in unit[-2:]))


def create_zarr_array(
    path: str | os.PathLike[str],
    shape: Sequence[int],
    dtype: Any,
    *,
    chunks: Sequence[int] | None,
    zarr_format: int = 2,
    axes: str | None = None,
    overwrite: bool = False,
) -> Any:
    """A new, empty (zeros) zarr array at ``path`` whose write unit is ``chunks``: its chunks
    in format 2, its shards in format 3 (inner chunks from :func:`read_chunks`; the axis
    names as ``dimension_names``, ``z``, ``y``, ``x`` unless ``axes`` says otherwise, as
    OME-Zarr 0.5 asks). Fails if ``path`` holds an array and ``overwrite`` is False.
    """
    import zarr

    from .common import is_url

    where: Any = str(path)
    if is_url(where):  # an output by URL (:mod:`.zarrurl`)
        from .fetch import writable_store

        where = writable_store(where)
    shape = tuple(int(n) for n in shape)
    unit = tuple(int(c) for c in chunks) if chunks is not None else None
    if zarr_format == 2:
        kw: dict[str, Any] = {"zarr_format": 2} if int(zarr.__version__.split(".")[0]) >= 3 else {}
        return zarr.open_array(where, mode="w" if overwrite else "w-", shape=shape, dtype=np.dtype(dtype),
                               chunks=unit, fill_value=0, **kw)  # fmt: skip
    unit = tuple(min(c, n) for c, n in zip(unit or shape, shape))
    # as the OME-NGFF axes of pyramid.multiscales name them (0.5 asks that the two agree)
    names = tuple(axes.lower()) if axes is not None and len(axes) == len(shape) else (tuple("zyx"[-len(shape):]) if len(shape) <= 3 else None)
    return zarr.create_array(
        where, shape=shape, dtype=np.dtype(dtype), chunks=read_chunks(unit), shards=unit, fill_value=0,
        zarr_format=3, dimension_names=names, overwrite=overwrite,
    )  # fmt: skip


def zarr_format_of(array: Any) -> int:
    """The format (2 or 3) of an open zarr array (2 for zarr-python 2's arrays)."""
    meta = getattr(array, "metadata", None)
    return int(getattr(meta, "zarr_format", 2))


def zarr_format_part(zarr_format: int) -> dict:
    """The format's part of a resumable run's key: none for format 2, so that the keys of
    runs from before format 3 existed stay as they were; format 3 a run of its own, which a
    finished format-2 store does not answer.

    Examples
    --------
    >>> zarr_format_part(2), zarr_format_part(3)
    ({}, {'zarr_format': 3})
    """
    return {} if zarr_format == 2 else {"zarr_format": int(zarr_format)}
