"""Neuroglancer precomputed volumes (connectomics datasets and their cutouts, as CloudVolume,
igneous and webKnossos write them), on a local disk or by URL, read lazily, chunk by chunk,
with their voxel size.

A volume is a folder with an ``info`` JSON file: ``data_type``, ``num_channels`` and a list of
``scales``, each with a ``key`` (the folder of its chunks), ``size`` and ``voxel_offset`` (x,
y, z), ``resolution`` (nm, x, y, z), ``chunk_sizes`` and an ``encoding``. A chunk is the file
``<key>/<x0>-<x1>_<y0>-<y1>_<z0>-<z1>`` (voxel coordinates, offset included), gzip-compressed
when named with ``.gz``: ``raw`` pixels are little-endian, x fastest (then y, z, channel);
``jpeg`` is one greyscale picture ``x`` wide and ``y * z`` tall. A missing chunk is empty
(zeros). A sharded scale keeps its chunks in ``<key>/<shard>.shard`` files instead
(:mod:`.sharded`), each found by the compressed Morton code of its grid position.
``volume/8_8_40`` names a scale; without one the finest (the first) is read. Other encodings
are refused in one line. Read only.

By URL (``gs://h01-release/data/20210601/4nm_raw``, ``https://...``, ``s3://...``, or
neuroglancer's own ``precomputed://gs://...``; :mod:`.remote`), only the chunks, shard indexes
and minishard indexes a block needs are fetched, by byte range.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import time
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import InputError
from .chunkcache import MISSING, new_token, shared_cache
from .common import ImageData, is_url, reason
from .fetch import Where, join, parent, read_bytes, read_many
from .sharded import ShardReader, ShardingSpec, morton_bits, morton_key
from .views import LazyArray, ascending_index

__all__ = ["PrecomputedArray", "precomputed_of", "precomputed_scales", "precomputed_url", "read_precomputed"]

_ENCODINGS = ("raw", "jpeg")


#: A URL's info as read in the last 2 seconds: opening a volume reads it for the volume, its
#: scale and each scale of a multiscale layer, each a round trip otherwise.
_RECENT: dict[str, tuple[float, bytes]] = {}
_RECENT_SECONDS = 2.0


def _info(folder: Where) -> dict | None:
    where = join(folder, "info")
    try:
        if isinstance(where, Path):
            raw = read_bytes(where)
        else:
            at, raw = _RECENT.get(where, (0.0, b""))
            if time.monotonic() - at > _RECENT_SECONDS:
                raw = read_bytes(where)
                _RECENT[where] = (time.monotonic(), raw)
        info = json.loads(raw.decode("utf-8"))
    except (FileNotFoundError, IsADirectoryError, NotADirectoryError, ValueError, UnicodeDecodeError):
        return None  # no such file, or not JSON
    except OSError as exc:  # a URL that answers with an error (no access, no host) says so
        if isinstance(where, Path):
            return None
        raise InputError(f"cannot read '{where}': {reason(exc)}") from exc
    return info if isinstance(info, dict) and isinstance(info.get("scales"), list) else None


def precomputed_of(path: Path) -> tuple[Path, str] | None:
    """Split ``volume/8_8_40`` into a precomputed volume (a folder with an ``info`` that lists
    scales) and the scale key (``""`` for the volume itself); None for any other path.

    Examples
    --------
    >>> precomputed_of(Path("/nowhere/volume")) is None
    True
    """
    for candidate in (path, path.parent):
        if candidate.is_dir() and (candidate / "info").is_file() and _info(candidate) is not None:
            return candidate, "" if candidate == path else path.name
    return None


def precomputed_url(url: str) -> tuple[str, str] | None:
    """Split the URL of a precomputed volume, or of one of its scales, into the volume's URL
    and the scale key (``""`` for the volume), as :func:`precomputed_of` does for a folder;
    None where no ``info`` listing scales is found there (one or two requests)."""
    url = url.rstrip("/")
    if _info(url) is not None:
        return url, ""
    up = parent(url)
    if isinstance(up, str) and up.split("://", 1)[-1] and "://" in up and _info(up) is not None:
        return up, url.rsplit("/", 1)[1]
    return None


def precomputed_scales(root: Where) -> list[str]:
    """The scale keys of a precomputed volume, finest first (as its ``info`` lists them)."""
    info = _info(root) or {}
    return [str(s.get("key")) for s in info.get("scales", []) if isinstance(s, dict)]


def read_precomputed(root: Where, key: str = "") -> ImageData:
    """Read a scale of a precomputed volume (the finest by default) lazily as ZYX, with its
    voxel size in nm.

    Examples
    --------
    >>> import tempfile
    >>> d = Path(tempfile.mkdtemp())
    >>> (d / "info").write_text('{"data_type": "uint8", "num_channels": 1, "scales": [{"key": "4_4_40", '
    ...     '"size": [6, 4, 2], "voxel_offset": [0, 0, 0], "resolution": [4, 4, 40], "chunk_sizes": [[6, 4, 2]], '
    ...     '"encoding": "raw"}]}')
    191
    >>> (d / "4_4_40").mkdir()
    >>> _ = (d / "4_4_40" / "0-6_0-4_0-2").write_bytes(np.arange(48, dtype=np.uint8).tobytes())
    >>> img = read_precomputed(d)
    >>> img.data.shape, img.spacing, int(img.data[1, 0, 5])
    ((2, 4, 6), (40.0, 4.0, 4.0), 29)
    """
    info = _info(root)
    if info is None:
        raise InputError(f"cannot read '{root}': no neuroglancer precomputed 'info' file")
    scales = [s for s in info["scales"] if isinstance(s, dict)]
    scale = next((s for s in scales if str(s.get("key")) == key), None) if key else (scales[0] if scales else None)
    if scale is None:
        keys = ", ".join(str(s.get("key")) for s in scales) or "none"
        raise InputError(f"cannot read '{root}': no scale '{key}' in it (scales: {keys})")
    array = PrecomputedArray(root, str(scale.get("key")))
    try:
        zyx = tuple(float(v) for v in reversed(scale["resolution"]))
    except (KeyError, TypeError, ValueError):
        zyx = None
    ok = zyx is not None and len(zyx) == 3 and all(np.isfinite(v) and v > 0 for v in zyx)
    local = root if isinstance(root, Path) else None
    origin = _origin(array.offset, zyx, scales[0]) if ok else None
    return ImageData(data=array, spacing=zyx if ok else None, unit="nm" if ok else None, axes="ZYX", path=local,
                     origin=origin)


def _origin(offset: tuple[int, ...], zyx: tuple[float, ...], finest: dict) -> tuple[float, ...] | None:
    """Where a scale's first voxel centre lies (nm, z first) with the finest scale's voxel 0
    at 0: its ``voxel_offset`` (x, y, z, in its own voxels, each covering ``[i, i + 1)``),
    and, for a coarser scale, half a voxel of each scale's difference; None at 0."""
    try:
        first = [float(v) for v in reversed(finest["resolution"])]
    except (KeyError, TypeError, ValueError):
        return None
    if len(first) != 3:
        return None
    at = tuple((o + 0.5) * r - 0.5 * r0 for o, r, r0 in zip(reversed(offset), zyx, first))
    return at if any(at) else None


class PrecomputedArray(LazyArray):
    """One scale of a precomputed volume (a folder, or a URL) as a ZYX array that reads only
    the chunks an index touches, sharded or not; it pickles as its folder or URL and key, so
    cluster workers read it in place. A volume with several channels or an encoding other than
    raw or jpeg is refused in one line when opened. ``cache=False``: its chunks are not kept (a
    reader that reads each chunk once, as a pyramid's next level does)."""

    def __init__(self, root: str | os.PathLike[str], key: str, *, cache: bool = True) -> None:
        self.url = is_url(root)
        self.root = str(root).rstrip("/") if self.url else str(Path(root).resolve())
        self.name = str(key)
        info = _info(self._at()) or {}
        scale = next((s for s in info.get("scales", []) if isinstance(s, dict) and str(s.get("key")) == self.name), None)
        where = f"{self.root}/{self.name}"
        if scale is None:
            raise InputError(f"cannot read '{where}': not a scale of a precomputed volume")
        if int(info.get("num_channels", 1)) != 1:
            raise InputError(f"cannot read '{where}': it has {info.get('num_channels')} channels; the models restore one")
        self.encoding = str(scale.get("encoding", "raw"))
        if self.encoding not in _ENCODINGS:
            raise InputError(f"cannot read '{where}': its chunks are {self.encoding}; raw or jpeg are read here")
        try:
            self.dtype = np.dtype(str(info["data_type"]))
            self.offset = tuple(int(v) for v in scale.get("voxel_offset", (0, 0, 0)))  # x, y, z
            size = tuple(int(v) for v in scale["size"])
            chunk = tuple(int(v) for v in scale["chunk_sizes"][0])
        except (KeyError, TypeError, ValueError, IndexError) as exc:
            raise InputError(f"cannot read '{where}': its info file is malformed ({reason(exc)})") from exc
        if len(size) != 3 or len(chunk) != 3 or min(size) < 1 or min(chunk) < 1 or len(self.offset) != 3:
            raise InputError(f"cannot read '{where}': its info gives size {size} and chunks {chunk}")
        self.shape: tuple[int, ...] = size[::-1]  # z, y, x
        self.chunks: tuple[int, ...] = chunk[::-1]
        self.shards: ShardReader | None = None
        # Chunks deeper than a slice are read again by each slice of a run: keep them (:mod:`.chunkcache`).
        self._cache = shared_cache() if cache and self.chunks[0] > 1 else None
        self._token = new_token()  # this opening's: opened again (rewritten since?), read again
        if scale.get("sharding"):
            self.shards = ShardReader(self._at(self.name), ShardingSpec.parse(scale["sharding"], where))
            self.morton = morton_bits(tuple(-(-n // c) for n, c in zip(size, chunk)))  # the grid, x y z

    @property
    def location(self) -> Where:
        """The volume's folder, or its URL."""
        return self.root if self.url else Path(self.root)

    def _at(self, *parts: str) -> Where:
        return join(self.location, *parts)

    def __getitem__(self, key: Any) -> np.ndarray:
        read, post = ascending_index(key, self.shape)
        ranges = [range(k, k + 1) if isinstance(k, int) else range(k.start, k.stop, k.step) for k in read]
        out = np.zeros(tuple(len(r) for r in ranges), self.dtype)
        if out.size:
            spans = [(r.start, r[-1] + 1) for r in ranges]
            axes = [range(a // c, (b - 1) // c + 1) for (a, b), c in zip(spans, self.chunks)]
            blocks = [(bz, by, bx) for bz in axes[0] for by in axes[1] for bx in axes[2]]
            for block, pixels in zip(blocks, self._chunks(blocks)):
                if pixels is not MISSING:  # else a chunk never written: empty
                    self._fill(out, ranges, block, pixels)
        out = out.reshape(tuple(len(r) for r, k in zip(ranges, read) if not isinstance(k, int)))
        return out[post] if post else out

    def _bounds(self, block: tuple[int, int, int]) -> tuple[list[int], list[int]]:
        lo = [b * c for b, c in zip(block, self.chunks)]
        return lo, [min(a + c, n) for a, c, n in zip(lo, self.chunks, self.shape)]

    def _chunks(self, blocks: list[tuple[int, int, int]]) -> list[np.ndarray]:
        """Each chunk's pixels (:data:`MISSING` where never written): kept ones from the cache,
        the others read together (by URL, concurrently)."""
        got = [self._cache.get((self._token, *b)) if self._cache is not None else None for b in blocks]
        todo = [i for i, pixels in enumerate(got) if pixels is None]
        for i, (path, raw) in zip(todo, self._fetch([blocks[i] for i in todo])):
            got[i] = self._pixels(raw, path, blocks[i]) if raw is not None else MISSING
            if self._cache is not None:
                self._cache.put((self._token, *blocks[i]), got[i])
        return got  # type: ignore[return-value]

    def _fetch(self, blocks: list[tuple[int, int, int]]) -> list[tuple[Where, bytes | None]]:
        """Each chunk's file (or shard) and stored bytes, None where it was never written."""
        if self.shards is not None:
            keys = [morton_key(block[::-1], self.morton) for block in blocks]  # the grid cell x, y, z
            return list(zip([self.shards.locate(k)[0] for k in keys], self.shards.read_many(keys)))
        ox, oy, oz = self.offset
        paths = []
        for block in blocks:
            (z0, y0, x0), (z1, y1, x1) = self._bounds(block)
            paths.append(self._at(self.name, f"{x0 + ox}-{x1 + ox}_{y0 + oy}-{y1 + oy}_{z0 + oz}-{z1 + oz}"))
        found = list(zip(paths, self._read(paths)))
        missing = [i for i, (_, raw) in enumerate(found) if raw is None]
        gz = [f"{paths[i]}.gz" for i in missing]  # a chunk file gzip-compressed by name
        gz_paths: list[Where] = list(gz) if self.url else [Path(p) for p in gz]
        for i, path, raw in zip(missing, gz_paths, self._read(gz_paths)):
            if raw is not None:
                found[i] = (path, raw)
        return found

    @staticmethod
    def _read(paths: list[Where]) -> list[bytes | None]:
        try:
            return read_many(paths)
        except OSError as exc:  # not a missing chunk (those are None): no access, a folder in its place
            raise InputError(f"cannot read '{parent(paths[0])}': {reason(exc)}") from exc

    def _fill(self, out: np.ndarray, ranges: list[range], block: tuple[int, int, int], pixels: np.ndarray) -> None:
        """Copy the chunk's pixels that the (ascending) ranges pick into ``out``: slices found
        by arithmetic, not a loop over every index (a wide read covers many chunks)."""
        lo, hi = self._bounds(block)
        into, take = [], []
        for r, a, b in zip(ranges, lo, hi):
            first = max(0, -(-(a - r.start) // r.step))  # the first index whose value is >= a
            stop = min(len(r), -(-(b - r.start) // r.step))  # past the last one < b
            if stop <= first:
                return
            at = r[first] - a
            into.append(slice(first, stop))
            take.append(slice(at, at + (stop - first - 1) * r.step + 1, r.step))
        out[tuple(into)] = pixels[tuple(take)]

    def _pixels(self, raw: bytes, path: Where, block: tuple[int, int, int]) -> np.ndarray:
        lo, hi = self._bounds(block)
        shape = tuple(b - a for a, b in zip(lo, hi))
        # A raw chunk's pixels may begin with gzip's magic bytes (31, 139): its exact size tells it.
        sizes = {int(np.prod(shape)) * self.dtype.itemsize, int(np.prod(self.chunks)) * self.dtype.itemsize}
        try:
            if self.shards is None:  # a chunk file: gzip-compressed when named .gz or stored as such
                packed = raw[:2] == b"\x1f\x8b" and (self.encoding != "raw" or len(raw) not in sizes)
                raw = gzip.decompress(raw) if str(path).endswith(".gz") or packed else raw
            if self.encoding == "jpeg":
                import imageio.v3 as iio

                pixels = np.asarray(iio.imread(io.BytesIO(raw))).astype(self.dtype, copy=False).ravel()
            else:
                pixels = np.frombuffer(raw, dtype=self.dtype.newbyteorder("<"))
            # An edge chunk is stored cut to the volume, or (some sharded writers) whole.
            full = tuple(self.chunks)
            if pixels.size >= int(np.prod(full)) and shape != full:
                return pixels[: int(np.prod(full))].reshape(full)[: shape[0], : shape[1], : shape[2]]
            return pixels[: int(np.prod(shape))].reshape(shape)
        except Exception as exc:  # a damaged chunk: each codec raises its own error
            raise InputError(f"cannot read '{path}': {reason(exc)}") from exc

    def __dask_tokenize__(self) -> tuple:
        if self.url:  # no modification time by URL: the info's content stands for the volume
            return ("PrecomputedArray", self.root, self.name, hashlib.sha1(read_bytes(self._at("info"))).hexdigest())
        st = os.stat(Path(self.root) / "info")
        return ("PrecomputedArray", self.root, self.name, st.st_mtime_ns)

    def __repr__(self) -> str:
        return f"PrecomputedArray('{self.root}', '{self.name}', shape={self.shape}, dtype={self.dtype})"
