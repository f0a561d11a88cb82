"""Neuroglancer's uint64 sharded key-value format, on a local disk or by URL, as the chunks of a sharded
precomputed scale are stored (large connectomics volumes written by igneous, CloudVolume or
TensorStore): chunks packed into ``<shard>.shard`` files, each found through the shard's fixed
index and a per-minishard index.

A chunk's key is the compressed Morton code of its grid position (:func:`morton_key`); the key,
shifted right by ``preshift_bits`` and hashed (identity or MurmurHash3_x86_128), picks the
shard (the bits above ``minishard_bits``) and the minishard (the bits below). Written too
(:func:`shard_bytes`, for :mod:`.precomputed_write`): identity-hashed, so that each shard
holds an aligned box of chunks (:func:`shard_extent`) and is written from one read.
"""

from __future__ import annotations

import gzip
import os
import threading
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import InputError
from .common import is_url, reason
from .fetch import Where, join, parent, read_many

__all__ = ["ShardReader", "ShardingSpec", "morton_bits", "morton_key", "murmurhash3_x86_128_low64", "shard_bytes",
           "shard_extent", "shard_name"]

_MASK32 = 0xFFFFFFFF
_HASHES = ("identity", "murmurhash3_x86_128")
_ENCODINGS = ("raw", "gzip")


@dataclass(frozen=True)
class ShardingSpec:
    """The ``sharding`` member of a precomputed scale."""

    preshift_bits: int
    hash: str
    minishard_bits: int
    shard_bits: int
    minishard_index_encoding: str = "raw"
    data_encoding: str = "raw"

    @classmethod
    def parse(cls, spec: Any, where: str) -> ShardingSpec:
        """Validate a ``sharding`` member; anything malformed or unknown is refused in one line.

        Examples
        --------
        >>> ShardingSpec.parse({"@type": "neuroglancer_uint64_sharded_v1", "preshift_bits": 0, "hash": "identity",
        ...                     "minishard_bits": 2, "shard_bits": 1}, "vol").minishard_bits
        2
        """
        if not isinstance(spec, dict) or spec.get("@type") != "neuroglancer_uint64_sharded_v1":
            raise InputError(f"cannot read '{where}': its sharding is not neuroglancer_uint64_sharded_v1")
        try:
            made = cls(
                preshift_bits=_bits(spec["preshift_bits"]), hash=str(spec["hash"]),
                minishard_bits=_bits(spec["minishard_bits"]), shard_bits=_bits(spec["shard_bits"]),
                minishard_index_encoding=str(spec.get("minishard_index_encoding", "raw")),
                data_encoding=str(spec.get("data_encoding", "raw")),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise InputError(f"cannot read '{where}': its sharding spec is malformed ({reason(exc)})") from exc
        if made.hash not in _HASHES:
            raise InputError(f"cannot read '{where}': its shards are hashed with '{made.hash}'; "
                             f"{' or '.join(_HASHES)} are read here")
        for encoding in (made.minishard_index_encoding, made.data_encoding):
            if encoding not in _ENCODINGS:
                raise InputError(f"cannot read '{where}': its shards are encoded as '{encoding}'; raw or gzip are read here")
        if made.minishard_bits + made.shard_bits > 64 or made.minishard_bits > 32:
            raise InputError(f"cannot read '{where}': its sharding spec uses more bits than a 64-bit key holds")
        return made


def _bits(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 64:
        raise ValueError(f"{value!r} is not a bit count from 0 to 64")
    return value


def morton_bits(grid: tuple[int, ...]) -> tuple[int, ...]:
    """Bits of each grid coordinate in the compressed Morton code: enough for ``grid - 1``.

    Examples
    --------
    >>> morton_bits((1, 2, 5))
    (0, 1, 3)
    """
    return tuple(max(int(n) - 1, 0).bit_length() for n in grid)


def morton_key(cell: tuple[int, ...], bits: tuple[int, ...]) -> int:
    """The compressed Morton code of a grid cell (x, y, z): the coordinates' bits interleaved
    from the lowest, x first, skipping a coordinate once its bits run out.

    Examples
    --------
    >>> morton_key((1, 0, 0), (1, 1, 1)), morton_key((0, 0, 1), (1, 1, 1)), morton_key((0, 0, 3), (0, 0, 2))
    (1, 4, 3)
    """
    key, out = 0, 0
    for level in range(max(bits, default=0)):
        for coord, width in zip(cell, bits):
            if level < width:
                key |= ((int(coord) >> level) & 1) << out
                out += 1
    return key


def shard_extent(bits: tuple[int, ...], low: int) -> tuple[int, ...]:
    """How many grid cells along each coordinate the keys that differ only in their ``low``
    bits span: those bits are each coordinate's lowest ones (:func:`morton_key`), so such keys
    are an aligned box of this extent (cut at the grid's end).

    Examples
    --------
    >>> shard_extent((3, 3, 1), 5), shard_extent((2, 2, 2), 0)
    ((4, 4, 2), (1, 1, 1))
    """
    counts = [0] * len(bits)
    for level in range(max(bits, default=0)):
        for axis, width in enumerate(bits):
            if level < width and sum(counts) < low:
                counts[axis] += 1
    return tuple(1 << c for c in counts)


def shard_name(shard: int, spec: ShardingSpec) -> str:
    """A shard's file name: its number in hexadecimal, as wide as ``shard_bits`` needs."""
    digits = -(-spec.shard_bits // 4)
    return f"{shard:0{digits}x}.shard" if digits else "0.shard"


def shard_bytes(chunks: dict[int, bytes], spec: ShardingSpec) -> bytes:
    """One shard file holding ``chunks`` (key -> stored bytes, already encoded; all keys of
    this shard): the shard index (each minishard index's byte range), the chunks grouped by
    minishard in key order, then the minishard indexes (keys, offsets and sizes, each delta
    coded), encoded as ``spec`` says. Identity hash only.

    Examples
    --------
    >>> spec = ShardingSpec(preshift_bits=0, hash="identity", minishard_bits=0, shard_bits=0)
    >>> raw = shard_bytes({5: b"abc"}, spec)
    >>> import tempfile
    >>> d = Path(tempfile.mkdtemp()); _ = (d / "0.shard").write_bytes(raw)
    >>> ShardReader(d, spec).read(5)
    b'abc'
    """
    if spec.hash != "identity":
        raise ValueError("shards are written identity-hashed")
    groups: dict[int, list[int]] = {}
    for key in sorted(chunks):
        groups.setdefault((key >> spec.preshift_bits) & ((1 << spec.minishard_bits) - 1), []).append(key)
    data, tables, at = [], [], 0
    for minishard in range(1 << spec.minishard_bits):
        keys = groups.get(minishard, [])
        if not keys:
            tables.append(b"")
            continue
        starts, sizes = [], []
        for key in keys:
            blob = gzip.compress(chunks[key], mtime=0) if spec.data_encoding == "gzip" else chunks[key]
            data.append(blob)
            starts.append(at)
            sizes.append(len(blob))
            at += len(blob)
        ids = np.array(keys, dtype=np.uint64)
        gaps = [starts[0]] + [a - (b + n) for a, b, n in zip(starts[1:], starts, sizes)]  # after the one before
        table = np.stack([np.concatenate([ids[:1], np.diff(ids)]), np.array(gaps, np.uint64),
                          np.array(sizes, np.uint64)]).astype("<u8").tobytes()
        tables.append(gzip.compress(table, mtime=0) if spec.minishard_index_encoding == "gzip" else table)
    index, offset = [], at
    for table in tables:
        index.append((offset, offset + len(table)))
        offset += len(table)
    return np.array(index, dtype="<u8").tobytes() + b"".join(data) + b"".join(tables)


def _rotl32(x: int, r: int) -> int:
    return ((x << r) | (x >> (32 - r))) & _MASK32


def _fmix32(h: int) -> int:
    h ^= h >> 16
    h = (h * 0x85EBCA6B) & _MASK32
    h ^= h >> 13
    h = (h * 0xC2B2AE35) & _MASK32
    return h ^ (h >> 16)


def murmurhash3_x86_128_low64(data: bytes, seed: int = 0) -> int:
    """The low 64 bits (little-endian) of MurmurHash3_x86_128 of ``data``: how sharded
    precomputed volumes spread chunk keys over shards (the key hashed as 8 little-endian bytes).

    Examples
    --------
    >>> hex(murmurhash3_x86_128_low64(b""))
    '0x0'
    """
    c1, c2, c3, c4 = 0x239B961B, 0xAB0E9789, 0x38B34AE5, 0xA1E38B93
    h = [seed & _MASK32] * 4
    n_blocks = len(data) // 16
    for i in range(n_blocks):
        k = [int.from_bytes(data[16 * i + 4 * j:16 * i + 4 * j + 4], "little") for j in range(4)]
        muls = ((c1, c2, 15), (c2, c3, 16), (c3, c4, 17), (c4, c1, 18))
        for lane, (ma, mb, rot) in enumerate(muls):
            kk = _rotl32((k[lane] * ma) & _MASK32, rot)
            h[lane] ^= (kk * mb) & _MASK32
            h[lane] = _rotl32(h[lane], (19, 17, 15, 13)[lane])
            h[lane] = (h[lane] + h[(lane + 1) % 4]) & _MASK32
            h[lane] = (h[lane] * 5 + (0x561CCD1B, 0x0BCAA747, 0x96CD1C35, 0x32AC3B17)[lane]) & _MASK32
    tail = data[16 * n_blocks:]
    tails = ((c1, c2, 15), (c2, c3, 16), (c3, c4, 17), (c4, c1, 18))
    for lane in range(3, -1, -1):
        piece = tail[4 * lane:4 * lane + 4]
        if piece:
            kk = _rotl32((int.from_bytes(piece, "little") * tails[lane][0]) & _MASK32, tails[lane][2])
            h[lane] ^= (kk * tails[lane][1]) & _MASK32
    h = [x ^ len(data) for x in h]
    h[0] = (h[0] + h[1] + h[2] + h[3]) & _MASK32
    h[1], h[2], h[3] = ((x + h[0]) & _MASK32 for x in h[1:])
    h = [_fmix32(x) for x in h]
    h[0] = (h[0] + h[1] + h[2] + h[3]) & _MASK32
    h[1], h[2], h[3] = ((x + h[0]) & _MASK32 for x in h[1:])
    return h[0] | (h[1] << 32)


class ShardReader:
    """The chunks of one sharded scale folder, found by key: the shard and minishard indexes are
    read once and kept (a few kB each), chunk bytes read on demand. Pickles without its caches,
    so a cluster worker reads the indexes it needs itself.

    Examples
    --------
    >>> import tempfile
    >>> d = Path(tempfile.mkdtemp())
    >>> spec = ShardingSpec(preshift_bits=0, hash="identity", minishard_bits=0, shard_bits=0)
    >>> index = np.array([[5], [0], [3]], "<u8").tobytes()  # one chunk: key 5, 3 bytes
    >>> _ = (d / "0.shard").write_bytes(np.array([3, 3 + len(index)], "<u8").tobytes() + b"abc" + index)
    >>> ShardReader(d, spec).read(5), ShardReader(d, spec).read(6)
    (b'abc', None)
    """

    def __init__(self, folder: Where, spec: ShardingSpec) -> None:
        self.folder = str(folder)
        self.spec = spec
        self._minishards: dict[tuple[str, int], dict[int, tuple[int, int]]] = {}
        self._lock = threading.Lock()

    def __getstate__(self) -> dict:
        return {"folder": self.folder, "spec": self.spec}

    def __setstate__(self, state: dict) -> None:
        self.__init__(state["folder"], state["spec"])

    def locate(self, key: int) -> tuple[Where, int, int]:
        """The shard file, minishard number and hashed key of a chunk key."""
        spec = self.spec
        shifted = (key >> spec.preshift_bits) & 0xFFFFFFFFFFFFFFFF
        hashed = shifted if spec.hash == "identity" else murmurhash3_x86_128_low64(shifted.to_bytes(8, "little"))
        minishard = hashed & ((1 << spec.minishard_bits) - 1)
        shard = (hashed >> spec.minishard_bits) & ((1 << spec.shard_bits) - 1)
        return join(self.folder if is_url(self.folder) else Path(self.folder), shard_name(shard, spec)), minishard, hashed

    def read(self, key: int) -> bytes | None:
        """The stored bytes of a chunk (its data encoding undone); None where the shard has no
        such chunk (an empty region)."""
        return self.read_many([key])[0]

    def read_many(self, keys: list[int]) -> list[bytes | None]:
        """:meth:`read` for many chunks: the minishard indexes they need, then their bytes,
        each step's ranges fetched together (by URL, concurrently)."""
        located = [self.locate(k) for k in keys]
        self._load({(str(path), minishard): (path, minishard) for path, minishard, _ in located})
        found = [(i, path, self._minishards[(str(path), minishard)].get(key))
                 for i, (key, (path, minishard, _)) in enumerate(zip(keys, located))]  # fmt: skip
        found = [(i, path, where) for i, path, where in found if where is not None]
        out: list[bytes | None] = [None] * len(keys)
        raws = self._ranges([path for _, path, _ in found], [where for _, _, where in found])
        for (i, path, _), raw in zip(found, raws):
            out[i] = self._decode(raw, self.spec.data_encoding, path)
        return out

    def _load(self, wanted: dict[tuple[str, int], tuple[Where, int]]) -> None:
        """Read the minishard indexes not read yet: a shard never written has no chunks."""
        todo = [(name, where) for name, where in wanted.items() if name not in self._minishards]
        if not todo:
            return
        index_end = 16 << self.spec.minishard_bits
        bounds = self._ranges([path for _, (path, _) in todo], [(16 * m, 16) for _, (_, m) in todo], missing_ok=True)
        tables = []
        for (name, (path, _)), got in zip(todo, bounds):
            lo, hi = np.frombuffer(got, "<u8").tolist() if got is not None else (0, 0)
            if hi > lo:
                tables.append((name, path, (index_end + lo, hi - lo)))
        read = self._ranges([path for _, path, _ in tables], [span for _, _, span in tables])
        entries: dict[tuple[str, int], dict[int, tuple[int, int]]] = {name: {} for name, _ in todo}
        for (name, path, _), raw in zip(tables, read):
            table = self._decode(raw, self.spec.minishard_index_encoding, path)
            if len(table) % 24:
                raise InputError(f"cannot read '{path}': a minishard index of {len(table)} bytes (not 3 x 8 x n)")
            values = np.frombuffer(table, "<u8").reshape(3, -1).astype(object)  # exact 64-bit sums
            keys = np.cumsum(values[0])
            sizes = values[2]
            starts = index_end + np.cumsum(values[1]) + np.concatenate([[0], np.cumsum(sizes)[:-1]])
            entries[name] = {int(k): (int(s), int(n)) for k, s, n in zip(keys, starts, sizes)}
        with self._lock:
            self._minishards.update(entries)

    @staticmethod
    def _ranges(paths: list[Where], spans: list[tuple[int, int]], missing_ok: bool = False) -> list[bytes | None]:
        """Each ``(start, size)`` range of its shard; None for a missing shard where
        ``missing_ok``. A range outside the file (a damaged index) is refused in one line."""
        for path, (start, size) in zip(paths, spans):
            if start < 0 or size < 0:
                raise InputError(f"cannot read '{path}': an index points to bytes {start}-{start + size} (damaged?)")
            if isinstance(path, Path):  # never seek or allocate past a local file
                try:
                    end = os.stat(path).st_size
                except FileNotFoundError:
                    continue  # missing: below
                except OSError as exc:
                    raise InputError(f"cannot read '{path}': {reason(exc)}") from exc
                if start + size > end:
                    raise InputError(f"cannot read '{path}': an index points to bytes {start}-{start + size}, past "
                                     f"its end ({end} bytes; damaged or truncated?)")
        try:
            got = read_many(paths, spans)
        except OSError as exc:
            raise InputError(f"cannot read '{parent(paths[0])}': {reason(exc)}") from exc
        for path, (start, size), raw in zip(paths, spans, got):
            if raw is None and not missing_ok:
                raise InputError(f"cannot read '{path}': file not found")
            if raw is not None and len(raw) != size:
                raise InputError(f"cannot read '{path}': it ends at byte {start + len(raw)}, inside a chunk or an "
                                 "index (truncated?)")
        return got

    @staticmethod
    def _decode(raw: bytes, encoding: str, path: Where) -> bytes:
        if encoding != "gzip":
            return raw
        try:
            return gzip.decompress(raw)
        except (OSError, EOFError, ValueError, zlib.error) as exc:
            raise InputError(f"cannot read '{path}': a damaged gzip stream ({reason(exc)})") from exc
