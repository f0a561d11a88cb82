"""N5 containers (``.n5``: Janelia's OpenOrganelle FIB-SEM volumes, BigStitcher and Paintera
exports), read lazily, block by block, with their voxel size.

N5 is a folder tree like zarr's. A dataset is a folder whose ``attributes.json`` gives
``dimensions`` and ``blockSize`` (x first), ``dataType`` and ``compression``; its blocks are
files at ``<x>/<y>/<z>``. A block starts with a big-endian header (mode, number of axes, the
block's own size, x first: edge blocks are smaller), then the compressed, big-endian pixels in
C order of the reversed size. A missing block is empty (zeros). Read only.

``volume.n5/em/fibsem-uint8/s0`` names a dataset, as ``volume.zarr/0`` does for zarr. Without
one, the container's only dataset is read, or the finest level (``s0``) of its only multiscale
group. The voxel size comes from COSEM's ``transform`` (axes, scale, units), from
``pixelResolution`` (dimensions, unit) or ``resolution`` (nm) on the dataset or, times its
``downsamplingFactors``, on its group; for a BigDataViewer container (``setup0/timepoint0/s0``),
from the XML beside it (:mod:`.bdv`).

A dataset is also read by URL (``https://host/vol.n5/em/fibsem-uint8/s0``, ``s3://...``), its
blocks fetched as a block task needs them (:mod:`.remote`); the URL names the dataset, since a
web server lists no folders.
"""

from __future__ import annotations

import bz2
import json
import lzma
import os
import re
import zlib
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import InputError
from .bdv import bdv_n5_spacing
from .calibration import to_nm
from .chunkcache import MISSING, new_token, shared_cache
from .common import N5_SUFFIX, ImageData, is_url, likely_image, suffix_of
from .fetch import Where, join, parent, read_bytes, read_many
from .views import LazyArray, drop_single_axes, full_index

__all__ = ["N5Array", "n5_container_of", "n5_datasets", "n5_images", "n5_levels", "read_n5"]

_TYPES = ("uint8", "uint16", "uint32", "uint64", "int8", "int16", "int32", "int64", "float32", "float64")
_LEVEL = re.compile(r"^s(\d+)$")


def n5_container_of(path: Path) -> tuple[Path, str] | None:
    """Split ``volume.n5/em/s0`` into the container and the path inside it (``""`` for the
    container itself); None if no part of the path is named ``*.n5``.

    Examples
    --------
    >>> n5_container_of(Path("/data/jrc_mus-liver.n5/em/fibsem-uint8/s0"))
    (PosixPath('/data/jrc_mus-liver.n5'), 'em/fibsem-uint8/s0')
    >>> n5_container_of(Path("/data/a.zarr")) is None
    True
    """
    for candidate in (path, *path.parents):
        if suffix_of(candidate) == N5_SUFFIX:
            return candidate, path.relative_to(candidate).as_posix().strip(".")
    return None


def _attributes(folder: Where) -> dict:
    where = join(folder, "attributes.json")
    try:
        attrs = json.loads(read_bytes(where).decode("utf-8"))
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as exc:
        raise InputError(f"cannot read '{where}': {exc}") from exc
    return attrs if isinstance(attrs, dict) else {}


def _is_dataset(attrs: dict) -> bool:
    return isinstance(attrs.get("dimensions"), list) and "dataType" in attrs


def n5_datasets(root: Path) -> list[str]:
    """The datasets of a container with two or more axes, as paths inside it, sorted; of a
    multiscale group (``s0``, ``s1``, ...) only its finest level."""
    found: list[str] = []
    for folder, subdirs, files in os.walk(root):
        here = Path(folder)
        if "attributes.json" not in files:
            continue
        attrs = _attributes(here)
        if _is_dataset(attrs):
            subdirs[:] = []  # block folders below
            level = _LEVEL.match(here.name)
            if len(attrs["dimensions"]) >= 2 and (level is None or int(level.group(1)) == 0):
                found.append(here.relative_to(root).as_posix())
    return sorted(found)


def n5_images(path: Path) -> list[str]:
    """The datasets of a container that holds several (what a path must name inside it);
    empty otherwise."""
    names = n5_datasets(path) if path.is_dir() else []
    return names if len(names) > 1 else []


def n5_levels(dataset: Path) -> int:
    """How many levels the multiscale group of ``dataset`` (``.../s0``) holds: ``s0``, ``s1``,
    ... while they are datasets; 1 for a dataset of another name."""
    if not _LEVEL.match(dataset.name):
        return 1
    n = 0
    while _is_dataset(_attributes(dataset.parent / f"s{n}")):
        n += 1
    return max(n, 1)


def read_n5(root: Where, key: str | None = None) -> ImageData:
    """Read a dataset of an N5 container lazily (:class:`N5Array`), with its voxel size (nm
    where the unit is known); without ``key``, the only dataset or the only multiscale group's
    finest level, else a one-line refusal that names them. ``root`` may be a URL (a string),
    with ``key`` naming the dataset."""
    if not isinstance(root, Path):
        key = (key or "").strip("/")
        if not _is_dataset(_attributes(join(root, key))):
            raise InputError(f"cannot read '{join(root, key)}': no N5 dataset there (a URL names the dataset, "
                             "e.g. '.../vol.n5/em/fibsem-uint8/s0')")
        return _image(root, key, None)
    if not root.is_dir():
        raise InputError(f"cannot read '{root}': " + ("not an N5 container (a folder)" if root.exists() else "not found"))
    key = (key or "").strip("/")
    if not key or not _is_dataset(_attributes(root / key)):
        names = [n for n in n5_datasets(root / key) if n] if (root / key).is_dir() else []
        where = f"{root}/{key}" if key else str(root)
        if not names and key and not (root / key).exists():
            raise InputError(f"cannot read '{where}': no such dataset in the container")
        if not names:
            raise InputError(f"cannot read '{where}': it holds no N5 dataset")
        if len(names) > 1:
            raise InputError(f"cannot read '{where}': it holds several datasets ({', '.join(names)}); "
                             f"choose one, e.g. '{where}/{likely_image(names)}'")
        key = "/".join(k for k in (key, names[0]) if k)
    return _image(root, key, root)


def _image(root: Where, key: str, path: Path | None) -> ImageData:
    array = N5Array(root, key)
    spacing, unit = _calibration(root, key, array.ndim)
    origin = _origin(_attributes(join(root, key)), array.ndim, unit)
    _, origin, _ = drop_single_axes(array, origin, None)
    data, spacing, axes = drop_single_axes(array, spacing, None)
    return ImageData(data=data, spacing=spacing, unit=unit, axes=axes, path=path, origin=origin)


def _origin(attrs: dict, ndim: int, unit: str | None) -> tuple[float, ...] | None:
    """Where the first voxel's centre lies, z first: COSEM's ``transform.translate`` (each
    level's own, half a voxel of the level above further on per halving, as this plugin's
    OME-Zarr pyramids), in the unit of the spacing; None where absent or all zeros."""
    t = attrs.get("transform")
    try:
        shift = [float(v) for v in t["translate"]] if isinstance(t, dict) else []
    except (KeyError, TypeError, ValueError):
        return None
    if len(shift) != ndim or not any(shift) or not all(np.isfinite(v) for v in shift):
        return None
    units = list(t.get("units") or ["nm"] * ndim)
    if t.get("ordering", "C") == "F" or [str(a).lower() for a in t.get("axes", [])][:1] == ["x"]:
        shift, units = shift[::-1], units[::-1]
    values, found = to_nm(shift, units if len(units) == ndim else [None] * ndim, None)
    return tuple(values) if found == unit else None  # in the spacing's unit only


def _calibration(root: Where, key: str, ndim: int) -> tuple[tuple[float, ...] | None, str | None]:
    """Voxel size, z first, from the dataset's attributes or its group's."""
    own = _attributes(join(root, key))
    found = _voxel(own, ndim)
    if found is None and key:
        group = _voxel(_attributes(parent(join(root, key))), ndim)
        if group is not None:
            factors = own.get("downsamplingFactors") or [1] * ndim
            if isinstance(factors, list) and len(factors) == ndim:
                values = [v * float(f) for v, f in zip(group[0], reversed(factors))]
                found = (values, group[1])
    if found is None and not isinstance(root, Path):
        return None, None
    if found is None:  # a BigDataViewer container: the size is in the XML beside it
        parts = key.strip("/").split("/")
        return bdv_n5_spacing(root, key, _attributes(root / parts[0]) if parts[0] else {})
    values, units = found
    if not all(np.isfinite(v) and v > 0 for v in values):
        return None, None
    spacing, unit = to_nm(values, units, None)
    return tuple(float(f"{v:.12g}") for v in spacing), unit


def _voxel(attrs: dict, ndim: int) -> tuple[list[float], list[str | None]] | None:
    """(sizes z first, units) from one attributes dict, or None."""
    try:
        t = attrs.get("transform")
        if isinstance(t, dict) and len(t.get("scale", [])) == ndim:
            scale, units = [float(v) for v in t["scale"]], list(t.get("units") or ["nm"] * ndim)
            axes = [str(a).lower() for a in t.get("axes", [])]
            if t.get("ordering", "C") == "F" or axes[:1] == ["x"]:  # listed x first
                scale, units = scale[::-1], units[::-1]
            return scale, units
        pr = attrs.get("pixelResolution")
        if isinstance(pr, dict) and len(pr.get("dimensions", [])) == ndim:
            return [float(v) for v in reversed(pr["dimensions"])], [pr.get("unit") or "nm"] * ndim
        res = attrs.get("resolution")
        if isinstance(res, list) and len(res) == ndim:
            return [float(v) for v in reversed(res)], [attrs.get("unit") or "nm"] * ndim
    except (TypeError, ValueError):
        pass
    return None


class N5Array(LazyArray):
    """An N5 dataset, read lazily: indexing reads only the blocks the selection touches
    (numpy-style basic indexing, negative steps included), z first. It pickles as a path and
    a name, so cluster workers read the blocks themselves (:func:`~.sources.open_source`).

    Examples
    --------
    >>> import tempfile, json
    >>> root = Path(tempfile.mkdtemp()) / "v.n5"
    >>> (root / "raw").mkdir(parents=True)
    >>> _ = (root / "raw" / "attributes.json").write_text(json.dumps(
    ...     {"dimensions": [4, 3], "blockSize": [2, 2], "dataType": "uint8", "compression": {"type": "raw"}}))
    >>> a = N5Array(root, "raw")
    >>> a.shape, a.chunks, a[...].tolist()  # no block written yet: zeros
    ((3, 4), (2, 2), [[0, 0, 0, 0], [0, 0, 0, 0], [0, 0, 0, 0]])
    """

    def __init__(self, root: str | os.PathLike[str], name: str) -> None:
        self.url = is_url(root)
        self.root = str(root).rstrip("/") if self.url else str(Path(root).resolve())
        self.name = str(name).strip("/")
        attrs = _attributes(self._at(self.name))
        where = f"{root}/{self.name}"
        if not _is_dataset(attrs):
            raise InputError(f"cannot read '{where}': not an N5 dataset (no dimensions and dataType)")
        kind = str(attrs["dataType"])
        if kind not in _TYPES:
            raise InputError(f"cannot read '{where}': N5 data type '{kind}' is not supported")
        compression = attrs.get("compression") or {"type": attrs.get("compressionType", "raw")}
        self.compression: dict = compression if isinstance(compression, dict) else {"type": str(compression)}
        if self.compression.get("type") not in ("raw", "gzip", "bzip2", "xz", "blosc", "zstd"):
            raise InputError(f"cannot read '{where}': N5 compression '{self.compression.get('type')}' is not "
                             "supported (raw, gzip, bzip2, xz, blosc, zstd are)")
        self.shape: tuple[int, ...] = tuple(int(d) for d in reversed(attrs["dimensions"]))
        self.chunks: tuple[int, ...] = tuple(int(b) for b in reversed(attrs.get("blockSize") or attrs["dimensions"]))
        self.dtype = np.dtype(kind)
        if len(self.chunks) != len(self.shape) or min(self.chunks, default=1) < 1:
            raise InputError(f"cannot read '{where}': its blockSize {attrs.get('blockSize')} does not fit its dimensions")
        # Blocks deeper than a slice are read again by each slice of a run: keep them (:mod:`.chunkcache`).
        self._cache = shared_cache() if len(self.chunks) == 3 and self.chunks[0] > 1 else None
        self._token = new_token()  # this opening's: opened again (rewritten since?), read again

    def __getitem__(self, key: Any) -> np.ndarray:
        ranges, drop = _ranges(key, self.shape)
        lo = [min(r[0], r[-1]) if len(r) else 0 for r in ranges]
        hi = [max(r[0], r[-1]) + 1 if len(r) else 0 for r in ranges]
        box = np.zeros([h - low for low, h in zip(lo, hi)], self.dtype)
        if box.size:
            first = [low // c for low, c in zip(lo, self.chunks)]
            last = [(h - 1) // c for h, c in zip(hi, self.chunks)]
            blocks = [[a + i for a, i in zip(first, index)] for index in np.ndindex(*[b - a + 1 for a, b in zip(first, last)])]
            for block, pixels in zip(blocks, self._blocks(blocks)):
                if pixels is MISSING:
                    continue  # never written: zeros
                start = [b * c for b, c in zip(block, self.chunks)]
                src, dst = [], []
                for s, n, low, h in zip(start, pixels.shape, lo, hi):
                    a, b = max(s, low), min(s + n, h)
                    src.append(slice(a - s, b - s))
                    dst.append(slice(a - low, b - low))
                box[tuple(dst)] = pixels[tuple(src)]
        rel = tuple(_relative(r, low) for r, low in zip(ranges, lo))
        out = box[rel]
        return out[tuple(0 if d else slice(None) for d in drop)] if any(drop) else out

    def _at(self, *parts: str) -> Where:
        return join(self.root if self.url else Path(self.root), *parts)

    def _blocks(self, blocks: list[list[int]]) -> list[np.ndarray]:
        """Each block's pixels (:data:`MISSING` where never written): kept ones from the cache,
        the others read together (by URL, concurrently)."""
        got = [self._cache.get((self._token, *b)) if self._cache is not None else None for b in blocks]
        todo = [i for i, pixels in enumerate(got) if pixels is None]
        paths = [self._at(self.name, *[str(b) for b in reversed(blocks[i])]) for i in todo]  # x first on disk
        for i, path, raw in zip(todo, paths, read_many(paths)):
            got[i] = self._block(raw, path) if raw is not None else MISSING
            if self._cache is not None:
                self._cache.put((self._token, *blocks[i]), got[i])
        return got  # type: ignore[return-value]

    def _block(self, raw: bytes, path: Where) -> np.ndarray:
        try:
            mode, ndim = int.from_bytes(raw[0:2], "big"), int.from_bytes(raw[2:4], "big")
            dims = [int.from_bytes(raw[4 + 4 * i:8 + 4 * i], "big") for i in range(ndim)]
            offset = 4 + 4 * ndim + (4 if mode == 1 else 0)
            if mode not in (0, 1) or ndim != self.ndim:
                raise ValueError(f"block mode {mode} with {ndim} axes")
            count = int(np.prod(dims))
            data = self._decode(raw[offset:])
            values = np.frombuffer(data, self.dtype.newbyteorder(">"), count)
        except MemoryError:
            raise
        except Exception as exc:  # each codec fails its own way (blosc: RuntimeError) on a damaged block
            raise InputError(f"cannot read block '{path}': {exc}") from exc
        return values.reshape(dims[::-1]).astype(self.dtype)

    def _decode(self, data: bytes) -> bytes:
        kind = self.compression.get("type")
        if kind == "gzip":
            return zlib.decompress(data, 47)  # gzip or zlib ("useZlib") headers alike
        if kind == "bzip2":
            return bz2.decompress(data)
        if kind == "xz":
            return lzma.decompress(data)
        if kind in ("blosc", "zstd"):
            import numcodecs

            return bytes(numcodecs.Blosc().decode(data) if kind == "blosc" else numcodecs.Zstd().decode(data))
        return data

    def __dask_tokenize__(self) -> tuple:
        if self.url:
            return ("N5Array", self.root, self.name)
        st = os.stat(Path(self.root, self.name, "attributes.json"))
        return ("N5Array", self.root, self.name, st.st_mtime_ns)

    def __repr__(self) -> str:
        return f"N5Array('{self.root}', '{self.name}', shape={self.shape}, dtype={self.dtype})"


def _ranges(key: Any, shape: tuple[int, ...]) -> tuple[list[range], list[bool]]:
    """Each axis's selected indices as a range, and whether the axis is dropped (an integer)."""
    key = full_index(key, len(shape))
    ranges, drop = [], []
    for k, n in zip(key, shape):
        if isinstance(k, (int, np.integer)) and not isinstance(k, bool):
            i = int(k) + n if k < 0 else int(k)
            if not 0 <= i < n:
                raise IndexError(f"index {int(k)} is out of bounds for an axis of size {n}")
            ranges.append(range(i, i + 1))
            drop.append(True)
        elif isinstance(k, slice):
            ranges.append(range(*k.indices(n)))
            drop.append(False)
        else:
            raise IndexError(f"N5 arrays take integers and slices, got {type(k).__name__}")
    return ranges, drop


def _relative(r: range, low: int) -> slice:
    """The slice that selects ``r`` from a box starting at ``low``."""
    if not len(r):
        return slice(0, 0)
    stop = r.start - low + r.step * len(r)
    return slice(r.start - low, stop if stop >= 0 else None, r.step)
