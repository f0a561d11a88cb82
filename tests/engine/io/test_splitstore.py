"""The split store that writes a store by URL without copying its chunks: metadata
documents in one place, chunks and shards in the other, read back whole through it and
not through either place alone."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest
import zarr
from zarr.storage import MemoryStore

from napari_emdiffuse.engine.io.fetch import writable_store, zarr_store
from napari_emdiffuse.engine.io.splitstore import SplitStore, chunks_place, is_metadata


def _keys(store):
    async def collect():
        return sorted([k async for k in store.list()])

    return asyncio.run(collect())


@pytest.mark.parametrize("fmt", [2, 3])
def test_metadata_and_chunks_go_to_their_places_and_read_back_whole(fmt):
    meta, data = MemoryStore(), MemoryStore()
    split = SplitStore(meta, data)
    group = zarr.open_group(split, mode="w-", zarr_format=fmt)
    kw = dict(shards=(8, 16, 16)) if fmt == 3 else {}
    arr = group.create_array("0", shape=(8, 40, 40), chunks=(8, 8, 8) if fmt == 3 else (4, 16, 16), dtype="uint16",
                             fill_value=0, **kw)
    img = np.arange(8 * 40 * 40, dtype=np.uint16).reshape(8, 40, 40)
    arr[:] = img
    arr.attrs["spacing"] = [30.0, 4.0, 4.0]
    assert all(is_metadata(k) for k in _keys(meta)) and _keys(meta)
    assert _keys(data) and not any(is_metadata(k) for k in _keys(data))
    back = zarr.open_group(split, mode="r")
    assert np.array_equal(back["0"][:], img) and back["0"].attrs["spacing"] == [30.0, 4.0, 4.0]
    assert np.array_equal(back["0"][3:5, 7:30, 11:13], img[3:5, 7:30, 11:13])  # shards: partial reads
    assert list(back.array_keys()) == ["0"]
    with pytest.raises(Exception):  # the chunks alone are no array
        zarr.open_array(data, path="0", mode="r")
    with pytest.raises(ValueError, match="read-only"):
        zarr.open_array(split.with_read_only(True), path="0", mode="r+")[0, 0, 0] = 1


def test_a_prefix_url_routes_its_chunks_to_the_final_url(tmp_path):
    url = f"local://{tmp_path}/vol.zarr.partial-0a1b2c3d"
    assert chunks_place(url + "/0") == f"local://{tmp_path}/vol.zarr/0"
    assert chunks_place(f"local://{tmp_path}/vol.zarr.partial-x") is None  # not a writer's token
    arr = zarr.open_array(writable_store(url), mode="w-", shape=(20, 20), chunks=(10, 10), dtype="uint8",
                          fill_value=0, zarr_format=2)
    arr[:] = 7
    assert sorted(p.name for p in (tmp_path / "vol.zarr.partial-0a1b2c3d").iterdir()) == [".zarray", ".zattrs"]
    assert sorted(p.name for p in (tmp_path / "vol.zarr").iterdir()) == ["0.0", "0.1", "1.0", "1.1"]
    assert int(zarr.open_array(zarr_store(url), mode="r")[:].sum()) == 7 * 400
    assert int(zarr.open_array(url, mode="r")[:].sum()) == 0  # the prefix alone: fill values
