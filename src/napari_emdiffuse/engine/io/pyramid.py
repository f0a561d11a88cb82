"""Multiscale outputs (OME-Zarr): under a restored image, stack or volume, the same image
halved laterally again and again, in one store with its OME-NGFF metadata. napari opens
such a store as a multiscale layer and neuroglancer, webKnossos or BigDataViewer as an image
pyramid, so that a result of any size is shown at any zoom without reading it whole.

Each level is the 2x2 mean of the one above it (z is kept: EM stacks are finer laterally
than in z). Levels are added until the longer lateral side fits :data:`PYRAMID_TOP` pixels.
A level's chunks have the shape of the full-resolution level's, so a level is written one
column of chunks at a time, by one process or by many (:func:`downsample_tiles`).
"""

from __future__ import annotations

import warnings
from collections.abc import Generator
from typing import Any

import numpy as np

from ..events import Progress

__all__ = ["PYRAMID_TOP", "level_shapes", "level_tiles", "downsample_tiles", "multiscales", "halve"]

#: Levels are added until the longer lateral side of the smallest fits this many pixels.
PYRAMID_TOP = 512


def level_shapes(shape: tuple[int, ...]) -> list[tuple[int, ...]]:
    """Shapes of the levels below full resolution (rows and columns halved, rounded up).

    Examples
    --------
    >>> level_shapes((3, 1500, 700))
    [(3, 750, 350), (3, 375, 175)]
    >>> level_shapes((400, 300))
    []
    """
    shapes: list[tuple[int, ...]] = []
    cur = tuple(int(n) for n in shape)
    while max(cur[-2:]) > PYRAMID_TOP:
        cur = (*cur[:-2], -(-cur[-2] // 2), -(-cur[-1] // 2))
        shapes.append(cur)
    return shapes


def level_tiles(shape: tuple[int, ...], chunks: tuple[int, ...]) -> list[tuple[slice, slice]]:
    """The (rows, columns) of each column of chunks of a level: the unit of work that never
    shares a chunk with another.

    Examples
    --------
    >>> level_tiles((2, 5, 3), (1, 4, 4))
    [(slice(0, 4, None), slice(0, 3, None)), (slice(4, 5, None), slice(0, 3, None))]
    """
    ty, tx = chunks[-2], chunks[-1]
    return [(slice(y, min(y + ty, shape[-2])), slice(x, min(x + tx, shape[-1])))
            for y in range(0, shape[-2], ty) for x in range(0, shape[-1], tx)]  # fmt: skip


def halve(block: np.ndarray) -> np.ndarray:
    """The 2x2 mean of the last two axes (an odd last row or column is averaged with a copy
    of itself); integers are rounded to the nearest, NaN pixels (no data) left out.

    Examples
    --------
    >>> halve(np.array([[0, 1, 5], [2, 3, 5]], dtype=np.uint8))
    array([[2, 5]], dtype=uint8)
    >>> halve(np.array([[np.nan, 1.0], [3.0, np.nan]]))
    array([[2.]])
    """
    pad = [(0, 0)] * (block.ndim - 2) + [(0, block.shape[-2] % 2), (0, block.shape[-1] % 2)]
    b = np.pad(block, pad, mode="edge") if any(p[1] for p in pad) else block
    h, w = b.shape[-2] // 2, b.shape[-1] // 2
    quads = b.reshape(*b.shape[:-2], h, 2, w, 2).astype(np.float64)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # a 2x2 of NaN stays NaN
        mean = np.nanmean(quads, axis=(-3, -1))
    if np.issubdtype(block.dtype, np.integer):
        return np.floor(mean + 0.5).astype(block.dtype)
    return mean.astype(block.dtype)


def downsample_tiles(src: Any, dst: Any, tiles: list[tuple[slice, slice]]) -> Generator[Progress, None, None]:
    """Write ``dst`` (the next level, numpy or zarr) from ``src`` over ``tiles`` of ``dst``,
    slice by slice; yields progress per tile."""
    for n, (ys, xs) in enumerate(tiles, 1):
        above = tuple(slice(2 * t.start, min(2 * t.stop, n)) for t, n in zip((ys, xs), src.shape[-2:]))
        if src.ndim == 2:
            dst[ys, xs] = halve(np.asarray(src[above]))
        else:
            for z in range(src.shape[0]):
                dst[(z, ys, xs)] = halve(np.asarray(src[(z, *above)]))
        yield Progress("pyramid", n, len(tiles))


def multiscales(
    n_levels: int, ndim: int, spacing: tuple[float, ...] | None, unit: str | None, axes: str | None, name: str
) -> dict:
    """OME-NGFF 0.4 ``multiscales`` metadata for levels ``"0"`` .. ``n_levels - 1``.

    Examples
    --------
    >>> ms = multiscales(2, 3, (40.0, 4.0, 4.0), "nm", "ZYX", "iso")["multiscales"][0]
    >>> [a["name"] for a in ms["axes"]], ms["datasets"][1]["coordinateTransformations"][0]["scale"]
    (['z', 'y', 'x'], [40.0, 8.0, 8.0])
    """
    names = (axes or "ZYX"[-ndim:]).lower()
    units = {"nm": "nanometer", "um": "micrometer", "µm": "micrometer", "angstrom": "angstrom", "A": "angstrom"}
    ome_unit = units.get(unit or "")
    base = list(spacing) if spacing is not None else [1.0] * ndim
    datasets = []
    for k in range(n_levels):
        scale = [*base[:-2], base[-2] * 2**k, base[-1] * 2**k]
        datasets.append({"path": str(k), "coordinateTransformations": [{"type": "scale", "scale": scale}]})
    axes_meta = []
    for a in names:
        entry: dict[str, Any] = {"name": a, "type": "space" if a in "zyx" else "channel"}
        if ome_unit and a in "zyx" and spacing is not None:
            entry["unit"] = ome_unit
        axes_meta.append(entry)
    return {"multiscales": [{"version": "0.4", "name": name, "axes": axes_meta, "datasets": datasets,
                             "type": "mean (2x2)"}]}  # fmt: skip
