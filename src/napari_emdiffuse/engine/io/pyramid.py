"""Multiscale outputs (OME-Zarr): under a restored image, stack or volume, the same image
halved laterally again and again, in one store with its OME-NGFF metadata. napari opens
such a store as a multiscale layer and neuroglancer, webKnossos or BigDataViewer as an image
pyramid, so that a result of any size is shown at any zoom without reading it whole.

Each level is the 2x2 mean of the one above it. z is halved too (a 2x2x2 mean) once the
level's pixels are at least twice as wide as its slices are thick, so that the levels of an
isotropic volume stay isotropic and those of a stack with 50 nm sections keep every slice
until the pixels are as wide. Levels are added until the longer lateral side fits
:data:`PYRAMID_TOP` pixels. A level's chunks have the shape of the full-resolution level's, so
a level is written one column of chunks at a time, by one process or by many
(:func:`downsample_tiles`).
"""

from __future__ import annotations

import warnings
from collections.abc import Generator
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..events import Progress
from .zarrfmt import write_chunks

__all__ = ["PYRAMID_TOP", "PYRAMID_THREADS", "Level", "level_plan", "level_tiles", "downsample_tiles", "multiscales", "halve", "bin_lateral"]

#: Levels are added until the longer lateral side of the smallest fits this many pixels.
PYRAMID_TOP = 512
#: Write units of a zarr level written at once (:func:`downsample_tiles`).
PYRAMID_THREADS = 8


@dataclass(frozen=True)
class Level:
    """One level below full resolution: its shape, whether its slices are pairs of the level
    above's (``zdown``), and how much coarser than full resolution it is along each axis."""

    shape: tuple[int, ...]
    zdown: bool
    factors: tuple[int, ...]


def level_plan(shape: tuple[int, ...], spacing: tuple[float, ...] | None = None) -> list[Level]:
    """The levels below full resolution of an image of ``shape`` and pixel size ``spacing``
    (z halved only where the spacing says slices are thin enough; never without one).

    Examples
    --------
    >>> [(lv.shape, lv.zdown) for lv in level_plan((64, 1500, 1500), (8.0, 4.0, 4.0))]
    [((64, 750, 750), False), ((32, 375, 375), True)]
    >>> [lv.shape for lv in level_plan((64, 1500, 1500))]
    [(64, 750, 750), (64, 375, 375)]
    >>> level_plan((400, 300))
    []
    """
    levels: list[Level] = []
    cur = tuple(int(n) for n in shape)
    fz = fxy = 1
    while max(cur[-2:]) > PYRAMID_TOP:
        fxy *= 2
        zdown = len(cur) == 3 and spacing is not None and 2 * fz * spacing[0] <= fxy * spacing[-1] * 1.01
        if zdown:
            fz *= 2
        cur = (*((-(-cur[0] // 2),) if zdown else cur[:-2]), -(-cur[-2] // 2), -(-cur[-1] // 2))
        levels.append(Level(cur, bool(zdown), (*((fz,) if len(cur) == 3 else ()), fxy, fxy)))
    return levels


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


def halve(block: np.ndarray, *, z: bool = False) -> np.ndarray:
    """The 2x2 mean of the last two axes (2x2x2 with ``z``, the first axis too); an odd last
    row, column or slice is averaged with a copy of itself; integers are rounded to the
    nearest, NaN pixels (no data) left out.

    Examples
    --------
    >>> halve(np.array([[0, 1, 5], [2, 3, 5]], dtype=np.uint8))
    array([[2, 5]], dtype=uint8)
    >>> halve(np.array([[np.nan, 1.0], [3.0, np.nan]]))
    array([[2.]])
    >>> halve(np.array([[[0.0, 0.0]] * 2, [[4.0, 4.0]] * 2]), z=True)
    array([[[2.]]])
    """
    odd = [n % 2 for n in block.shape[-2:]]
    pad = [(0, 0)] * (block.ndim - 2) + [(0, odd[0]), (0, odd[1])]
    if z:
        pad[0] = (0, block.shape[0] % 2)
    b = np.pad(block, pad, mode="edge") if any(p[1] for p in pad) else block
    integer = np.issubdtype(block.dtype, np.integer)
    if not integer and np.isnan(b).any():
        return _nan_halve(b, z=z).astype(block.dtype)
    # the sum of the 4 (8) strided views in a wider type: several times quicker than a mean over a reshape
    exact = integer and block.dtype.itemsize < 8  # sums of 8 such values fit an int64
    starts = [(dz, dy, dx) for dz in ((0, 1) if z else (None,)) for dy in (0, 1) for dx in (0, 1)]
    total = np.zeros(b[_quarter(b, *starts[0])].shape, dtype=np.int64 if exact else np.float64)
    for start in starts:
        total += b[_quarter(b, *start)]
    n = len(starts)
    if exact:
        return ((2 * total + n) // (2 * n)).astype(block.dtype)  # floor(mean + 0.5), in integers
    if integer:
        return np.floor(total / n + 0.5).astype(block.dtype)
    return (total / n).astype(block.dtype)


def _quarter(b: np.ndarray, dz: int | None, dy: int, dx: int) -> tuple[slice, ...]:
    """Every second row and column from (dy, dx) (and slice from dz, when halving z)."""
    lead = (slice(dz, None, 2),) if dz is not None else (slice(None),) * (b.ndim - 2)
    return (*lead, slice(dy, None, 2), slice(dx, None, 2))


def _nan_halve(b: np.ndarray, *, z: bool) -> np.ndarray:
    """:func:`halve`'s mean where some pixels are NaN (no data): those left out."""
    h, w = b.shape[-2] // 2, b.shape[-1] // 2
    if z:
        quads = b.reshape(b.shape[0] // 2, 2, h, 2, w, 2).astype(np.float64)
        axes: tuple[int, ...] = (1, 3, 5)
    else:
        quads = b.reshape(*b.shape[:-2], h, 2, w, 2).astype(np.float64)
        axes = (-3, -1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # a 2x2 of NaN stays NaN
        return np.nanmean(quads, axis=axes)


def downsample_tiles(
    src: Any, dst: Any, tiles: list[tuple[slice, slice]], *, zdown: bool = False, threads: int | None = None
) -> Generator[Progress, None, None]:
    """Write ``dst`` (the next level, numpy or zarr) from ``src`` over ``tiles`` of ``dst``,
    a write unit of slices at a time (each slice from two of ``src`` with ``zdown``), so
    that every chunk or shard of ``dst`` is written once; yields progress per tile.

    A zarr level's write units go ``threads`` (:data:`PYRAMID_THREADS`) at a time: no two share a chunk, and in an
    object store each read and write waits on the network, which one at a time would add up
    to hours on a large volume. Closing the generator cancels the units not begun."""
    depth = write_chunks(dst)[0] if src.ndim == 3 and hasattr(dst, "chunks") else 1
    units = [(n, ys, xs, z0) for n, (ys, xs) in enumerate(tiles) for z0 in range(0, dst.shape[0] if src.ndim == 3 else 1,
                                                                                  depth)]  # fmt: skip

    def write(unit: tuple[int, slice, slice, int]) -> int:
        n, ys, xs, z0 = unit
        above = tuple(slice(2 * t.start, min(2 * t.stop, m)) for t, m in zip((ys, xs), src.shape[-2:]))
        if src.ndim == 2:
            dst[ys, xs] = halve(np.asarray(src[above]))
        else:
            z1 = min(z0 + depth, dst.shape[0])
            zs = slice(2 * z0, min(2 * z1, src.shape[0])) if zdown else slice(z0, z1)
            dst[(slice(z0, z1), ys, xs)] = halve(np.asarray(src[(zs, *above)]), z=zdown)
        return n

    left = [0] * len(tiles)
    for unit in units:
        left[unit[0]] += 1
    finished = 0
    at_once = (PYRAMID_THREADS if threads is None else threads) if hasattr(dst, "chunks") else 1
    for n in _run_units(write, units, at_once):
        left[n] -= 1
        if not left[n]:
            finished += 1
            yield Progress("pyramid", finished, len(tiles))


def _run_units(work: Any, units: list, threads: int) -> Generator[Any, None, None]:
    """``work`` of each unit, ``threads`` at a time (in order, here, for 1); yields each
    result as it comes; closed, it cancels the units not begun and waits for the others."""
    if threads <= 1:
        for unit in units:
            yield work(unit)
        return
    from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait

    todo = iter(units)
    with ThreadPoolExecutor(max_workers=threads) as pool:
        pending = {pool.submit(work, u) for _, u in zip(range(2 * threads), todo)}
        try:
            while pending:
                done, pending = wait(pending, return_when=FIRST_COMPLETED)
                for future in done:
                    yield future.result()
                pending |= {pool.submit(work, u) for _, u in zip(range(len(done)), todo)}
        finally:
            for future in pending:
                future.cancel()


def multiscales(
    levels: list[Level], ndim: int, spacing: tuple[float, ...] | None, unit: str | None, axes: str | None, name: str,
    *, version: str = "0.4", origin: tuple[float, ...] | None = None,
) -> dict:
    """OME-NGFF ``multiscales`` metadata for full resolution (``"0"``) and ``levels``
    (``"1"``, ``"2"``, ...): version 0.4 (zarr format 2) at the top of the attributes, 0.5
    (zarr format 3) under ``"ome"``.

    ``origin``: where full resolution's first pixel centre lies (a region's place in the
    image it was cut from). A level's pixel averages ``f`` pixels above it, so its centre lies
    ``(f - 1) / 2`` of them further on: each level's translation says so, and viewers that
    read it (napari puts a pixel's centre at ``translate + i * scale``) overlay every level.

    Examples
    --------
    >>> levels = level_plan((2, 1100, 900), (40.0, 4.0, 4.0))
    >>> ms = multiscales(levels, 3, (40.0, 4.0, 4.0), "nm", "ZYX", "iso")["multiscales"][0]
    >>> [a["name"] for a in ms["axes"]], ms["datasets"][1]["coordinateTransformations"][0]["scale"]
    (['z', 'y', 'x'], [40.0, 8.0, 8.0])
    >>> sorted(multiscales(levels, 3, None, None, "ZYX", "iso", version="0.5")["ome"])
    ['multiscales', 'version']
    >>> ms["datasets"][1]["coordinateTransformations"][1]
    {'type': 'translation', 'translation': [0.0, 2.0, 2.0]}
    """
    names = (axes or "ZYX"[-ndim:]).lower()
    units = {"nm": "nanometer", "um": "micrometer", "µm": "micrometer", "angstrom": "angstrom", "A": "angstrom"}
    ome_unit = units.get(unit or "")
    base = list(spacing) if spacing is not None else [1.0] * ndim
    factors = [(1,) * ndim] + [lv.factors for lv in levels]
    start = list(origin) if origin is not None else [0.0] * ndim
    datasets = []
    for k, fac in enumerate(factors):
        transforms: list[dict] = [{"type": "scale", "scale": [b * f for b, f in zip(base, fac)]}]
        shift = [o + (f - 1) / 2 * b for o, f, b in zip(start, fac, base)]
        if any(shift):
            transforms.append({"type": "translation", "translation": shift})
        datasets.append({"path": str(k), "coordinateTransformations": transforms})
    axes_meta = []
    for a in names:
        entry: dict[str, Any] = {"name": a, "type": "space" if a in "zyx" else "channel"}
        if ome_unit and a in "zyx" and spacing is not None:
            entry["unit"] = ome_unit
        axes_meta.append(entry)
    image = {"name": name, "axes": axes_meta, "datasets": datasets, "type": "mean (2x2, 2x2x2 where z is halved)"}
    if version == "0.5":
        return {"ome": {"version": "0.5", "multiscales": [image]}}
    return {"multiscales": [{"version": "0.4", **image}]}


def bin_lateral(image: Any, n: int) -> Any:
    """``image`` (YX, or a stack of them) with each n x n block of pixels averaged, as a
    detector binning n x n records; the last rows and columns that do not fill a block are
    dropped, integers are rounded back to their type. numpy stays numpy; anything else (zarr,
    dask, a file read lazily) becomes a lazy dask array, read block by block.

    Examples
    --------
    >>> bin_lateral(np.array([[0, 2, 9], [4, 6, 9], [9, 9, 9]], dtype=np.uint8), 2)
    array([[3]], dtype=uint8)
    """
    if n < 1 or len(image.shape) < 2:
        raise ValueError(f"binning needs a factor >= 1 and an image, got {n} and shape {tuple(image.shape)}")
    dtype = np.dtype(image.dtype)
    h, w = (s // n * n for s in image.shape[-2:])
    if isinstance(image, np.ndarray):
        out: Any = image[..., :h, :w].reshape(*image.shape[:-2], h // n, n, w // n, n).mean(axis=(-3, -1))
    else:
        import dask.array as da

        arr = image if isinstance(image, da.Array) else da.from_array(image, chunks=getattr(image, "chunks", "auto"))
        arr = arr[..., :h, :w]
        lateral = {arr.ndim - 2: max(n, min(h, 1024) // n * n), arr.ndim - 1: max(n, min(w, 1024) // n * n)}
        out = da.coarsen(np.mean, arr.rechunk(lateral), {arr.ndim - 2: n, arr.ndim - 1: n})
    if dtype.kind in "ui":
        info = np.iinfo(dtype)
        out = out.round().clip(info.min, info.max)
    return out.astype(dtype)
