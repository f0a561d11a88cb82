"""Neuroglancer precomputed outputs: a restored image or volume written as the folder that
neuroglancer, CloudVolume and igneous read (an ``info`` file, one folder of chunk files per
scale), so that a connectomics pipeline takes the result where it takes its raw data.

The folder is named ``NAME.precomputed`` here (the format itself names no extension; any
reader finds it by its ``info``). It holds the image at full resolution and, below it, the
levels of :func:`~.pyramid.level_plan` (2x2 means, z halved once the pixels are twice as wide
as the slices are thick), so neuroglancer shows a volume of any size at any zoom.

Chunks are ``raw`` (little-endian, x fastest) and uncompressed, named
``<x0>-<x1>_<y0>-<y1>_<z0>-<z1>``: a web server or bucket serves them as they are (``gsutil -m
cp -r -Z`` compresses them on the way to a bucket). 8-bit volumes may be written with ``jpeg``
chunks instead (one greyscale picture ``x`` wide and ``y * z`` tall per chunk, as neuroglancer
reads them): several times smaller, lossy, as large EM datasets are served for viewing. Thin sections (z at least 4x coarser than
the pixels) get 128 x 128 x 16 chunks, others 64 x 64 x 64. A scale of :data:`SHARD_FROM`
chunks or more is sharded (:mod:`.sharded`: one file per aligned box of chunks, identity
hash), as igneous writes large volumes: a terabyte is then thousands of files, not millions.
The voxel size goes to each scale's ``resolution`` (nm); a whole-voxel origin (a region's
place) goes to ``voxel_offset`` (a level's is the full-resolution offset divided by its factor,
rounded down: an odd offset puts a level up to half its voxel off, as igneous does). How the result was made goes to the ``provenance`` file, as CloudVolume
keeps it. The folder is built under a hidden name and renamed when whole, so a cancel or a
crash leaves no volume that looks complete.
"""

from __future__ import annotations

import itertools
import json
import os
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import InputError
from .atomic import fsync_dir, partial_beside, remove_orphans_beside, remove_path, replace_dir
from .common import PRECOMPUTED_SUFFIX, check_output_path, suffix_of
from .pyramid import halve, level_plan
from .sharded import ShardingSpec, morton_bits, morton_key, shard_bytes, shard_extent, shard_name
from .units import nm_factor, tidy

__all__ = [
    "ENCODINGS", "PRECOMPUTED_DTYPES", "SHARD_FROM", "PrecomputedLayout", "check_encoding", "finish_precomputed",
    "precomputed_chunks", "precomputed_layout", "start_precomputed", "write_precomputed", "write_precomputed_block",
]

#: The data types neuroglancer shows; float64 is written as float32, bool as uint8.
PRECOMPUTED_DTYPES = ("uint8", "int8", "uint16", "int16", "uint32", "int32", "uint64", "float32")
#: The chunk encodings written: raw (any type) and jpeg (uint8; lossy, of a quality 1-100).
ENCODINGS = ("raw", "jpeg")
#: Pixels read and written at once (a unit of whole chunks): bounds the memory of a large copy.
_UNIT_PIXELS = 2**24
#: Units written at once.
_THREADS = 4
#: A scale of this many chunks or more is sharded: a file per box of chunks, not per chunk
#: (a terabyte in 64³ chunks is millions of files, which cluster file systems and buckets
#: handle badly).
SHARD_FROM = 4096
#: Bytes a shard's block reads (its own pixels, or a level's four or eight times as many).
_SHARD_READ = 2**25


def precomputed_chunks(shape: tuple[int, ...], spacing: tuple[float, ...] | None = None) -> tuple[int, int, int]:
    """The chunk shape (z, y, x) for a volume of ``shape`` (z, y, x) and voxel size ``spacing``:
    128 x 128 x 16 for thin sections (z at least 4x the pixel size), else 64 x 64 x 64; never
    deeper or wider than the volume.

    Examples
    --------
    >>> precomputed_chunks((200, 4000, 4000), (40.0, 4.0, 4.0))
    (16, 128, 128)
    >>> precomputed_chunks((300, 500, 20), (8.0, 8.0, 8.0))
    (64, 64, 20)
    >>> precomputed_chunks((1, 1024, 1024))
    (1, 128, 128)
    """
    thin = shape[0] == 1 or (spacing is not None and spacing[0] >= 4 * spacing[-1])
    want = (16, 128, 128) if thin else (64, 64, 64)
    return tuple(max(1, min(w, n)) for w, n in zip(want, shape))  # type: ignore[return-value]


def _dtype(dtype: np.dtype, where: Path) -> np.dtype:
    if dtype == np.float64:
        return np.dtype(np.float32)
    if dtype == np.bool_:
        return np.dtype(np.uint8)
    if dtype.name not in PRECOMPUTED_DTYPES:
        raise InputError(f"cannot write '{where}': {dtype} pixels; neuroglancer shows {', '.join(PRECOMPUTED_DTYPES)}")
    return dtype


def check_encoding(encoding: str, quality: int, where: str | os.PathLike[str] | None = None) -> tuple[str, int]:
    """A chunk encoding of :data:`ENCODINGS` and a JPEG quality of 1 to 100, for an output
    ``where`` (a name or URL) that must then be a ``.precomputed`` one unless the chunks are
    raw; one line otherwise.

    Examples
    --------
    >>> check_encoding("JPEG", 85)
    ('jpeg', 85)
    >>> check_encoding("png", 90)
    Traceback (most recent call last):
    ...
    napari_emdiffuse.engine.errors.InputError: unknown chunk encoding 'png'; choose raw or jpeg
    >>> check_encoding("jpeg", 90, "clean.tif")
    Traceback (most recent call last):
    ...
    napari_emdiffuse.engine.errors.InputError: jpeg chunks are a .precomputed output's; 'clean.tif' is not one
    """
    kind = str(encoding).strip().lower()
    if kind not in ENCODINGS:
        raise InputError(f"unknown chunk encoding {encoding!r}; choose {' or '.join(ENCODINGS)}")
    if isinstance(quality, bool) or not isinstance(quality, (int, np.integer)) or not 1 <= quality <= 100:
        raise InputError(f"JPEG quality must be a whole number from 1 to 100, not {quality!r}")
    if kind != "raw" and where is not None and suffix_of(Path(str(where).rstrip("/"))) != PRECOMPUTED_SUFFIX:
        raise InputError(f"{kind} chunks are a .precomputed output's; '{Path(str(where).rstrip('/')).name}' is not one")
    return kind, int(quality)


def _chunk_bytes(piece: np.ndarray, dtype: np.dtype, encoding: tuple[str, int]) -> bytes:
    """One chunk (z y x) as stored: raw little-endian bytes, or one JPEG picture ``x`` wide and
    ``y * z`` tall."""
    if encoding[0] == "jpeg":
        import imagecodecs

        flat = np.ascontiguousarray(piece, dtype=np.uint8).reshape(-1, piece.shape[-1])
        return bytes(imagecodecs.jpeg8_encode(flat, level=encoding[1]))
    return np.ascontiguousarray(piece, dtype=dtype.newbyteorder("<")).tobytes()


def _voxel_offset(origin: tuple[float, ...] | None, spacing: tuple[float, ...] | None) -> list[int]:
    """A whole-voxel origin as the (x, y, z) offset; anything else (between voxels, none) at 0."""
    if origin is None or spacing is None:
        return [0, 0, 0]
    voxels = [o / s for o, s in zip(origin, spacing)]
    if not all(np.isfinite(v) and abs(v - round(v)) < 1e-6 for v in voxels):
        return [0, 0, 0]
    return [int(round(v)) for v in reversed(voxels)]


def _units(shape: tuple[int, ...], chunks: tuple[int, ...], pixels: int) -> list[tuple[slice, slice, slice]]:
    """Blocks of whole chunks (a slab of chunk depth, split into bands and columns) that each
    hold at most about ``pixels`` pixels; the last ones cut to the volume."""
    cz, cy, cx = chunks
    per_row = cz * cy * shape[2]
    ny = max(1, pixels // max(1, per_row)) * cy  # rows of a band: whole chunk rows
    nx = shape[2] if per_row <= pixels else max(1, pixels // (cz * cy * cx)) * cx
    return [(slice(z, min(z + cz, shape[0])), slice(y, min(y + ny, shape[1])), slice(x, min(x + nx, shape[2])))
            for z in range(0, shape[0], cz) for y in range(0, shape[1], ny) for x in range(0, shape[2], nx)]  # fmt: skip


def _write_unit(folder: Path, block: np.ndarray, at: tuple[int, int, int], chunks: tuple[int, ...],
                offset: list[int], dtype: np.dtype, encoding: tuple[str, int]) -> None:
    """Write ``block`` (whose first voxel is ``at``, z y x) as the chunk files it covers."""
    for z in range(0, block.shape[0], chunks[0]):
        for y in range(0, block.shape[1], chunks[1]):
            for x in range(0, block.shape[2], chunks[2]):
                piece = block[z : z + chunks[0], y : y + chunks[1], x : x + chunks[2]]
                lo = [a + b + o for a, b, o in zip((x, y, z), reversed(at), offset)]  # x y z, offset included
                hi = [a + n for a, n in zip(lo, reversed(piece.shape))]
                name = "_".join(f"{a}-{b}" for a, b in zip(lo, hi))
                (folder / name).write_bytes(_chunk_bytes(piece, dtype, encoding))


def _sharding(shape: tuple[int, ...], chunks: tuple[int, ...], chunk_read: int) -> dict[str, Any]:
    """An identity-hashed sharding spec for a scale of ``shape`` in ``chunks`` (z y x) whose
    shards each hold an aligned box of chunks read in about :data:`_SHARD_READ` bytes (a chunk
    costs ``chunk_read``), in up to 8 minishards; every chunk key's bits are used."""
    bits = sum(morton_bits(tuple(-(-n // c) for n, c in zip(shape, chunks))))
    inner = min(bits, max(0, (_SHARD_READ // max(1, chunk_read)).bit_length() - 1))
    minishard = min(3, inner)
    return {"@type": "neuroglancer_uint64_sharded_v1", "hash": "identity", "preshift_bits": inner - minishard,
            "minishard_bits": minishard, "shard_bits": bits - inner, "minishard_index_encoding": "gzip",
            "data_encoding": "raw"}


def _shard_units(shape: tuple[int, ...], chunks: tuple[int, ...], spec: dict) -> list[tuple[slice, slice, slice]]:
    """Each shard's box of voxels (z y x), cut to the volume."""
    grid = tuple(-(-n // c) for n, c in zip(shape, chunks))
    ex, ey, ez = shard_extent(morton_bits(grid[::-1]), spec["preshift_bits"] + spec["minishard_bits"])
    box = (ez, ey, ex)
    return [tuple(slice(g * c, min((g + e) * c, n)) for g, e, c, n in zip(cell, box, chunks, shape))  # type: ignore[misc]
            for cell in itertools.product(*[range(0, g, e) for g, e in zip(grid, box)])]


def _write_shard(folder: Path, block: np.ndarray, at: tuple[int, ...], chunks: tuple[int, ...], shape: tuple[int, ...],
                 spec: dict, dtype: np.dtype, encoding: tuple[str, int]) -> None:
    """Write ``block`` (one shard's box, first voxel ``at``) as that shard's file."""
    parsed = ShardingSpec.parse(spec, str(folder))
    bits = morton_bits(tuple(-(-n // c) for n, c in zip(shape, chunks))[::-1])
    pieces = {}
    for z in range(0, block.shape[0], chunks[0]):
        for y in range(0, block.shape[1], chunks[1]):
            for x in range(0, block.shape[2], chunks[2]):
                cell = ((at[2] + x) // chunks[2], (at[1] + y) // chunks[1], (at[0] + z) // chunks[0])  # x y z
                piece = block[z : z + chunks[0], y : y + chunks[1], x : x + chunks[2]]
                pieces[morton_key(cell, bits)] = _chunk_bytes(piece, dtype, encoding)
    shard = next(iter(pieces)) >> (parsed.preshift_bits + parsed.minishard_bits)
    (folder / shard_name(shard, parsed)).write_bytes(shard_bytes(pieces, parsed))


def _key(resolution: list[float]) -> str:
    return "_".join(f"{tidy(r):g}" for r in resolution)


@dataclass(frozen=True)
class PrecomputedLayout:
    """What a precomputed folder holds and how it is written (:func:`precomputed_layout`): its
    ``info`` (scales, chunks, sharding), whether it is one 2D image (``flat``), which levels
    also halve z (``zdown``, one per scale, the first False) and the JPEG quality. Small and
    picklable: dask workers write a folder's blocks from it (:func:`write_precomputed_block`)."""

    info: dict
    flat: bool
    zdown: tuple[bool, ...]
    jpeg_quality: int = 90

    @property
    def dtype(self) -> np.dtype:
        """The stored pixel type."""
        return np.dtype(self.info["data_type"])

    @property
    def scales(self) -> list[dict]:
        """The scales' entries of ``info``, full resolution first."""
        return self.info["scales"]

    def blocks(self, scale: int) -> list[tuple[slice, slice, slice]]:
        """The blocks (z y x) of ``scale`` written one at a time: each shard's box where the
        scale is sharded, else bands of whole chunks of about 16 M pixels (fewer for a level,
        which reads 4 or 8 times its pixels from the scale above)."""
        s = self.scales[scale]
        size, chunk = tuple(reversed(s["size"])), tuple(reversed(s["chunk_sizes"][0]))
        if "sharding" in s:
            return _shard_units(size, chunk, s["sharding"])
        return _units(size, chunk, _UNIT_PIXELS // _reads(scale, self.flat, self.zdown[scale]))


def _reads(scale: int, flat: bool, zdown: bool) -> int:
    """Pixels a level's block reads from the scale above per pixel it writes."""
    return 1 if scale == 0 else 4 if flat or not zdown else 8


def precomputed_layout(
    path: str | os.PathLike[str],
    shape: tuple[int, ...],
    dtype: Any,
    *,
    spacing: tuple[float, ...] | None = None,
    unit: str = "nm",
    origin: tuple[float, ...] | None = None,
    sharded: bool | None = None,
    encoding: str = "raw",
    jpeg_quality: int = 90,
) -> PrecomputedLayout:
    """The layout of a precomputed folder for an image of ``shape`` and ``dtype`` (the options
    of :func:`write_precomputed`); one line for what cannot be written, naming ``path``.

    Examples
    --------
    >>> lay = precomputed_layout("vol.precomputed", (40, 2000, 3000), "uint8", spacing=(30, 4, 4))
    >>> [s["size"] for s in lay.scales], lay.scales[0]["chunk_sizes"]
    ([[3000, 2000, 40], [1500, 1000, 40], [750, 500, 40], [375, 250, 40]], [[128, 128, 16]])
    >>> len(lay.blocks(0)), len(lay.blocks(1))
    (24, 16)
    """
    p = Path(path)
    shape = tuple(int(n) for n in shape)
    if len(shape) not in (2, 3) or min(shape) < 1:
        raise InputError(f"cannot write '{p}': a precomputed volume holds one 2D image or one ZYX volume, "
                         f"not shape {shape}")
    dt = _dtype(np.dtype(dtype), p)
    encoded = check_encoding(encoding, jpeg_quality)
    if encoded[0] == "jpeg" and dt != np.uint8:
        raise InputError(f"cannot write '{p}' with jpeg chunks: they hold 8-bit pixels, not {np.dtype(dtype)}; "
                         "write raw chunks, or convert the image to uint8 first")
    if spacing is not None and len(spacing) != len(shape):
        raise InputError(f"cannot write '{p}': {len(spacing)} pixel sizes for {len(shape)} axes")
    nm = nm_factor(unit) if spacing is not None else None
    if spacing is not None and nm is None:
        raise InputError(f"cannot write '{p}': unknown length unit '{unit}'")
    flat = len(shape) == 2
    zyx = (1, *shape) if flat else shape
    res = None if spacing is None else tuple(float(v) * nm for v in ((1.0, *spacing) if flat else spacing))  # type: ignore[operator]
    at = None if origin is None or res is None else tuple(float(v) * nm for v in ((0.0, *origin) if flat else origin))  # type: ignore[operator]
    full_res = list(reversed(res)) if res is not None else [1.0, 1.0, 1.0]  # x y z
    if flat and res is not None:
        full_res[2] = full_res[0]  # one slice: as thick as its pixels are wide
    chunks = precomputed_chunks(zyx, res)
    offset = _voxel_offset(at, res)
    levels = level_plan(shape, spacing)  # 2D: lateral halving only
    scales = [{"key": _key(full_res), "size": list(reversed(zyx)), "voxel_offset": offset, "resolution": full_res,
               "chunk_sizes": [list(reversed(chunks))], "encoding": encoded[0]}]
    for lv in levels:
        fz, fy, fx = (1, *lv.factors) if flat else lv.factors
        lz = (1, *lv.shape) if flat else lv.shape
        r = [full_res[0] * fx, full_res[1] * fy, full_res[2] * fz]
        scales.append({"key": _key(r), "size": list(reversed(lz)), "resolution": r, "encoding": encoded[0],
                       "voxel_offset": [o // f for o, f in zip(offset, (fx, fy, fz))],
                       "chunk_sizes": [list(reversed(precomputed_chunks(lz, (r[2], r[1], r[0]))))]})
    zdown = (False, *(not flat and lv.zdown for lv in levels))
    for k, sc in enumerate(scales):
        size, chunk = tuple(reversed(sc["size"])), tuple(reversed(sc["chunk_sizes"][0]))
        cells = int(np.prod([-(-n // c) for n, c in zip(size, chunk)]))
        if sharded if sharded is not None else cells >= SHARD_FROM:
            # a level's blocks read 4 (8) times their pixels from the level above
            sc["sharding"] = _sharding(size, chunk, int(np.prod(chunk)) * dt.itemsize * _reads(k, flat, zdown[k]))
    info = {"@type": "neuroglancer_multiscale_volume", "type": "image", "data_type": dt.name, "num_channels": 1,
            "scales": scales}
    return PrecomputedLayout(info, flat, zdown, encoded[1])


def start_precomputed(path: str | os.PathLike[str], layout: PrecomputedLayout,
                      provenance: dict[str, Any] | None = None) -> Path:
    """Begin the folder of ``path`` under a hidden name beside it (its ``info``, its
    ``provenance`` file, a folder per scale), removing what a killed write of it left; the
    hidden folder, which :func:`finish_precomputed` makes the output."""
    p = Path(path)
    remove_orphans_beside(p)
    tmp = partial_beside(p)
    tmp.mkdir()
    try:
        (tmp / "info").write_text(json.dumps(layout.info, indent=1))
        (tmp / "provenance").write_text(json.dumps(
            {"description": "", "owners": [], "sources": [],
             "processing": [json.loads(json.dumps(provenance, default=str))] if provenance else []}, indent=1))
        for s in layout.scales:
            (tmp / s["key"]).mkdir()
    except BaseException:
        remove_path(tmp)
        raise
    return tmp


def finish_precomputed(tmp: Path, path: str | os.PathLike[str]) -> Path:
    """Make the folder begun by :func:`start_precomputed`, once every block of every scale is
    written, the output ``path`` (replacing what was there, atomically)."""
    fsync_dir(tmp)
    replace_dir(tmp, Path(path))
    return Path(path)


def write_precomputed_block(folder: Path, layout: PrecomputedLayout, scale: int, block: tuple[slice, ...],
                            source: Any = None) -> None:
    """Write one block of ``scale`` (:meth:`PrecomputedLayout.blocks`) into the folder begun by
    :func:`start_precomputed`: the full-resolution pixels read from ``source`` (the image), a
    level's as the 2x2 (2x2x2) means of the scale above, read from the folder itself (every
    block of that scale must be written first)."""
    s, dtype = layout.scales[scale], layout.dtype
    encoded = (s["encoding"], layout.jpeg_quality)
    if scale:
        from .precomputed import PrecomputedArray

        zdown = layout.zdown[scale]
        above = source if source is not None else PrecomputedArray(folder, layout.scales[scale - 1]["key"], cache=False)
        up = [(sl.start * (2 if a or zdown else 1), sl.stop * (2 if a or zdown else 1)) for a, sl in enumerate(block)]
        pixels = halve(np.asarray(above[tuple(slice(a, b) for a, b in up)]), z=zdown)
    else:
        pixels = np.asarray(source[block[1:]] if layout.flat else source[block])
        pixels = (pixels[None] if layout.flat else pixels).astype(dtype, copy=False)
    starts, chunk = tuple(sl.start for sl in block), tuple(reversed(s["chunk_sizes"][0]))
    if "sharding" in s:
        _write_shard(folder / s["key"], pixels, starts, chunk, tuple(reversed(s["size"])), s["sharding"], dtype, encoded)
    else:
        _write_unit(folder / s["key"], pixels, starts, chunk, s["voxel_offset"], dtype, encoded)


def write_precomputed(
    path: str | os.PathLike[str],
    array: Any,
    *,
    spacing: tuple[float, ...] | None = None,
    unit: str = "nm",
    origin: tuple[float, ...] | None = None,
    provenance: dict[str, Any] | None = None,
    progress: Callable[[int, int], None] | None = None,
    sharded: bool | None = None,
    encoding: str = "raw",
    jpeg_quality: int = 90,
) -> Path:
    """Write a 2D image or a ZYX volume as a neuroglancer precomputed folder, with its levels.

    Parameters
    ----------
    path : str or path-like
        The folder, ``NAME.precomputed``; replaced when the write ends, atomically.
    array : numpy.ndarray or array-like
        ``(Y, X)`` or ``(Z, Y, X)`` pixels, one channel. A lazy array (dask, zarr, a file read
        lazily) is read block by block (about 16 M pixels each, four at a time), never whole.
    spacing : tuple of float, optional
        Pixel size per axis in ``unit``; neuroglancer needs one, so without it each voxel is
        written as 1 nm.
    unit : str
        Unit of ``spacing`` and ``origin`` (converted to nm).
    origin : tuple of float, optional
        Where the first pixel's centre lies per axis, in ``unit``: stored as each scale's
        ``voxel_offset`` where it is whole voxels.
    provenance : dict, optional
        How the image was made: the ``provenance`` file's ``processing`` entry.
    sharded : bool, optional
        Pack each scale's chunks into ``.shard`` files (neuroglancer's uint64 sharded format,
        identity-hashed: each shard an aligned box of chunks of about 32 MB). Default: a scale
        of :data:`SHARD_FROM` chunks or more is sharded, a smaller one one file per chunk.
    encoding : {"raw", "jpeg"}
        How each chunk is stored: ``raw`` (exact, any pixel type) or ``jpeg`` (8-bit pixels
        only; lossy, several times smaller, as large EM volumes are served for viewing; every
        scale, the levels made from the JPEG pixels above them).
    jpeg_quality : int
        The JPEG quality, 1 to 100 (90: differences of a grey level or two on EM images).
    progress : callable, optional
        Called with ``(blocks written, blocks)`` at the start and as each block of every scale
        is written; an exception it raises stops the write (within the blocks under way) and
        leaves nothing.

    Returns
    -------
    pathlib.Path
        The folder.

    Examples
    --------
    >>> import tempfile
    >>> from napari_emdiffuse.engine.io.precomputed import read_precomputed
    >>> out = write_precomputed(Path(tempfile.mkdtemp()) / "vol.precomputed",
    ...                         np.arange(2 * 4 * 6, dtype=np.uint8).reshape(2, 4, 6), spacing=(40, 4, 4))
    >>> back = read_precomputed(out)
    >>> back.spacing, int(back.data[1, 0, 5])
    ((40.0, 4.0, 4.0), 29)
    """
    p = check_output_path(path)
    shape = tuple(int(n) for n in getattr(array, "shape", np.shape(array)))
    layout = precomputed_layout(p, shape, array.dtype, spacing=spacing, unit=unit, origin=origin, sharded=sharded,
                                encoding=encoding, jpeg_quality=jpeg_quality)
    plan = [layout.blocks(k) for k in range(len(layout.scales))]
    total, done = sum(len(u) for u in plan), 0
    tmp = start_precomputed(p, layout, provenance)
    try:
        if progress is not None:
            progress(0, total)
        for k, blocks in enumerate(plan):
            if k:  # a level: the means of the scale written before it, each chunk read once
                from .precomputed import PrecomputedArray

                source: Any = PrecomputedArray(tmp, layout.scales[k - 1]["key"], cache=False)
            else:
                source = array
            # blocks written side by side (reading, file writes and the means release the GIL)
            with ThreadPoolExecutor(_THREADS) as pool:
                running: deque[Future] = deque()
                for block in blocks:
                    running.append(pool.submit(write_precomputed_block, tmp, layout, k, block, source))
                    while running and (len(running) >= _THREADS or block is blocks[-1]):
                        running.popleft().result()
                        done += 1
                        if progress is not None:
                            progress(done, total)
        finish_precomputed(tmp, p)
    except BaseException:
        remove_path(tmp)
        raise
    return p
