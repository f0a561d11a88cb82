"""Decoded chunks kept between reads of a volume stored in 3D chunks.

A restoration reads a volume slice by slice. Stored in chunks 64 slices deep (N5 from
OpenOrganelle, neuroglancer precomputed volumes), each slice would fetch and decode the same
chunks again, 64 times in all: over a network, most of a run's time. The readers of those
formats keep the chunks they decoded in one cache per process (:func:`shared_cache`), up to a
memory bound for all of them together (a multiscale layer in napari opens an array per scale),
least recently used dropped first.
"""

from __future__ import annotations

import threading
import uuid
from collections import OrderedDict
from collections.abc import Hashable
import numpy as np

__all__ = ["CHUNK_CACHE_BYTES", "ChunkCache", "MISSING", "new_token", "shared_cache"]

#: The bound of the process's cache: a 2048² block with its halo of 64³ uint8 chunks is ~300 MB.
CHUNK_CACHE_BYTES = 512 << 20

#: What the cache holds for a chunk that was never written (read as zeros), so it is not asked for again.
MISSING = np.zeros(0, np.uint8)


class ChunkCache:
    """Chunks by key, up to ``limit`` bytes; thread-safe. Pickles empty; the shared one
    pickles as the receiving process's shared one (a cluster worker keeps its own).

    Examples
    --------
    >>> cache = ChunkCache(limit=2200)
    >>> cache.put("a", np.zeros(1000, np.uint8)); cache.put("b", np.zeros(1000, np.uint8))
    >>> _ = cache.get("a"); cache.put("c", np.zeros(1000, np.uint8))  # "b" was used least recently
    >>> [k for k in "abc" if cache.get(k) is not None]
    ['a', 'c']
    """

    def __init__(self, limit: int | None = None) -> None:
        self._limit = None if limit is None else int(limit)
        self._items: OrderedDict[Hashable, np.ndarray] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()

    @property
    def limit(self) -> int:
        """The bound in bytes: as made, or :data:`CHUNK_CACHE_BYTES` as it is now."""
        return CHUNK_CACHE_BYTES if self._limit is None else self._limit

    @property
    def nbytes(self) -> int:
        """The bytes kept (each entry's own cost included)."""
        return self._bytes

    def get(self, key: Hashable) -> np.ndarray | None:
        """The chunk, :data:`MISSING` for one never written, or None where not kept."""
        with self._lock:
            value = self._items.get(key)
            if value is not None:
                self._items.move_to_end(key)
            return value

    def put(self, key: Hashable, value: np.ndarray) -> None:
        if _size(value) > self.limit:
            return
        value.flags.writeable = False  # shared by every read that hits it
        with self._lock:
            old = self._items.pop(key, None)
            self._bytes += _size(value) - (_size(old) if old is not None else 0)
            self._items[key] = value
            while self._bytes > self.limit:
                _, dropped = self._items.popitem(last=False)
                self._bytes -= _size(dropped)

    def __reduce__(self) -> tuple:
        return (shared_cache, ()) if self is _SHARED.get("cache") else (ChunkCache, (self._limit,))


_SHARED: dict[str, ChunkCache] = {}
_SHARED_LOCK = threading.Lock()


def shared_cache() -> ChunkCache:
    """The process's one cache, bound by :data:`CHUNK_CACHE_BYTES`; keys start with their
    array's :func:`new_token`, so arrays share it.

    Examples
    --------
    >>> shared_cache() is shared_cache()
    True
    """
    with _SHARED_LOCK:
        if "cache" not in _SHARED:
            _SHARED["cache"] = ChunkCache()
        return _SHARED["cache"]


def _size(value: np.ndarray) -> int:
    return value.nbytes + 64  # an entry's own cost, so that markers of missing chunks are bounded too


def new_token() -> str:
    """A key prefix for one opening of an array: its copies (a cluster worker's, from pickling)
    share it, and opening the array again (its files may have been rewritten) starts afresh."""
    return uuid.uuid4().hex
