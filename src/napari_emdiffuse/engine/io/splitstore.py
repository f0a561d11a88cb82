"""A zarr store whose metadata documents live in one place and its chunks in another: how a
store by URL is written without copying its chunks (:mod:`.zarrurl`).

An object store has no rename, so a finished store cannot be moved into place. A run into
``s3://bucket/vol.zarr`` therefore writes its metadata documents (``.zarray``, ``.zattrs``,
``.zgroup``, ``zarr.json``) under the hidden prefix ``s3://bucket/vol.zarr.partial-<token>``
and its chunks (or shards) straight to their final keys under ``s3://bucket/vol.zarr``. A zarr
reader finds no array at the URL until the metadata is copied there, last, when the run is
whole: a few small objects, whatever the volume's size.

The routing follows from the URL alone (:func:`chunks_place`), so every process that opens
the prefix by URL (cluster workers, the pyramid's levels, a resumed run) writes and reads the
same keys in the same places.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Iterable
from typing import Any

from zarr.abc.store import ByteRequest, Store
from zarr.core.buffer import Buffer, BufferPrototype

__all__ = ["METADATA_DOCS", "SplitStore", "chunks_place", "is_metadata"]

#: zarr's metadata documents (formats 2 and 3): the keys kept apart from the chunks.
METADATA_DOCS = (".zarray", ".zattrs", ".zgroup", ".zmetadata", "zarr.json")

# A URL writer's hidden prefix (zarrurl: "<name>.zarr.partial-" and 8 hex digits), and what follows it.
_PARTIAL = re.compile(r"^(?P<store>.+?\.zarr)\.partial-[0-9a-f]{8}(?P<inside>/.*)?$", re.IGNORECASE)


def chunks_place(url: str) -> str | None:
    """Where the chunks of a store (or an array inside it) under a URL writer's hidden prefix
    live: the same path under the final store's URL; None for any other place.

    Examples
    --------
    >>> chunks_place("s3://b/vol.ome.zarr.partial-1a2b3c4d/0")
    's3://b/vol.ome.zarr/0'
    >>> chunks_place("s3://b/vol.zarr") is None, chunks_place("/data/vol.zarr.partial-1a2b3c4d") is None
    (True, True)
    """
    url = str(url).rstrip("/")
    match = _PARTIAL.match(url)
    if match is None or "://" not in url:
        return None
    return match["store"] + (match["inside"] or "")


def is_metadata(key: str) -> bool:
    """Whether a store key is a metadata document (kept with the prefix), not a chunk.

    Examples
    --------
    >>> is_metadata("0/.zarray"), is_metadata("0/zarr.json"), is_metadata("c/0/1/2"), is_metadata("0.0")
    (True, True, False, False)
    """
    return key.rsplit("/", 1)[-1] in METADATA_DOCS


class SplitStore(Store):
    """A zarr store that reads and writes metadata documents through ``meta`` and every other
    key (chunks, shards) through ``data``; listings merge the two.

    Parameters
    ----------
    meta, data : zarr.abc.store.Store
        The two places (fsspec stores at the hidden prefix and at the final URL); both
        read-only or both writable.
    """

    def __init__(self, meta: Store, data: Store) -> None:
        super().__init__(read_only=meta.read_only)
        self.meta, self.data = meta, data

    def _of(self, key: str) -> Store:
        return self.meta if is_metadata(key) else self.data

    async def _open(self) -> None:
        for store in (self.meta, self.data):
            await store._ensure_open()
        await super()._open()

    def with_read_only(self, read_only: bool = False) -> SplitStore:
        return SplitStore(self.meta.with_read_only(read_only), self.data.with_read_only(read_only))

    def __eq__(self, other: object) -> bool:
        return isinstance(other, SplitStore) and (self.meta, self.data) == (other.meta, other.data)

    def __repr__(self) -> str:
        return f"SplitStore(meta={self.meta!r}, data={self.data!r})"

    async def get(self, key: str, prototype: BufferPrototype, byte_range: ByteRequest | None = None) -> Buffer | None:
        return await self._of(key).get(key, prototype, byte_range)

    async def get_partial_values(
        self, prototype: BufferPrototype, key_ranges: Iterable[tuple[str, ByteRequest | None]]
    ) -> list[Buffer | None]:
        asked = list(key_ranges)
        out: list[Buffer | None] = [None] * len(asked)
        for store in (self.meta, self.data):  # each place's keys in one call, answers back in order
            mine = [i for i, (key, _) in enumerate(asked) if self._of(key) is store]
            if mine:
                for i, got in zip(mine, await store.get_partial_values(prototype, [asked[i] for i in mine])):
                    out[i] = got
        return out

    async def exists(self, key: str) -> bool:
        return await self._of(key).exists(key)

    @property
    def supports_writes(self) -> bool:
        return self.meta.supports_writes and self.data.supports_writes

    async def set(self, key: str, value: Buffer) -> None:
        self._check_writable()
        await self._of(key).set(key, value)

    async def set_if_not_exists(self, key: str, value: Buffer) -> None:
        self._check_writable()
        await self._of(key).set_if_not_exists(key, value)

    @property
    def supports_deletes(self) -> bool:
        return self.meta.supports_deletes and self.data.supports_deletes

    async def delete(self, key: str) -> None:
        self._check_writable()
        await self._of(key).delete(key)

    async def delete_dir(self, prefix: str) -> None:
        self._check_writable()
        for store in (self.meta, self.data):
            await store.delete_dir(prefix)

    @property
    def supports_listing(self) -> bool:
        return self.meta.supports_listing and self.data.supports_listing

    async def _merged(self, listings: Any) -> AsyncIterator[str]:
        seen: set[str] = set()
        for listing in listings:
            async for key in listing:
                if key not in seen:
                    seen.add(key)
                    yield key

    def list(self) -> AsyncIterator[str]:
        return self._merged(store.list() for store in (self.meta, self.data))

    def list_prefix(self, prefix: str) -> AsyncIterator[str]:
        return self._merged(store.list_prefix(prefix) for store in (self.meta, self.data))

    def list_dir(self, prefix: str) -> AsyncIterator[str]:
        return self._merged(store.list_dir(prefix) for store in (self.meta, self.data))

    async def getsize(self, key: str) -> int:
        return await self._of(key).getsize(key)

    def close(self) -> None:
        for store in (self.meta, self.data):
            store.close()
        super().close()
