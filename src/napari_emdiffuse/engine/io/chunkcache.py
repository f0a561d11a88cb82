"""Decoded chunks kept between reads of a volume stored in 3D chunks.

A restoration reads a volume slice by slice. Stored in chunks 64 slices deep (N5 from
OpenOrganelle, neuroglancer precomputed volumes), each slice would fetch and decode the same
chunks again, 64 times in all: over a network, most of a run's time. The readers of those
formats keep the chunks they decoded, up to a memory bound, least recently used dropped first.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Hashable
from typing import Any

import numpy as np

__all__ = ["CHUNK_CACHE_BYTES", "ChunkCache", "MISSING"]

#: The bound of one array's cache: a 2048² block with its halo of 64³ uint8 chunks is ~300 MB.
CHUNK_CACHE_BYTES = 512 << 20

#: What the cache holds for a chunk that was never written (read as zeros), so it is not asked for again.
MISSING = np.zeros(0, np.uint8)


class ChunkCache:
    """Chunks by key, up to ``limit`` bytes; thread-safe. Pickles empty (a cluster worker
    keeps its own).

    Examples
    --------
    >>> cache = ChunkCache(limit=2200)
    >>> cache.put("a", np.zeros(1000, np.uint8)); cache.put("b", np.zeros(1000, np.uint8))
    >>> _ = cache.get("a"); cache.put("c", np.zeros(1000, np.uint8))  # "b" was used least recently
    >>> [k for k in "abc" if cache.get(k) is not None]
    ['a', 'c']
    """

    def __init__(self, limit: int | None = None) -> None:
        self.limit = int(CHUNK_CACHE_BYTES if limit is None else limit)
        self._items: OrderedDict[Hashable, np.ndarray] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()

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

    def __getstate__(self) -> dict[str, Any]:
        return {"limit": self.limit}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["limit"])


def _size(value: np.ndarray) -> int:
    return value.nbytes + 64  # an entry's own cost, so that markers of missing chunks are bounded too
