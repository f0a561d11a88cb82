"""A stack stored in deep chunks: its block tasks run slab by slab and read each slab once,
with the same result as slice by slice."""

from __future__ import annotations

import numpy as np
import pytest
import zarr

from napari_emdiffuse.api import reconstruct_isotropic, restore
from napari_emdiffuse.engine.inference.slabs import SlabPlanes, chunk_depth, in_slab_order, slab_groups

FAST = dict(steps=2, tile=32, overlap=8, device="cpu")


class Counted:
    """A chunked stack that counts the slices its reads fetch."""

    def __init__(self, array: np.ndarray, chunks: tuple[int, ...]) -> None:
        self.array, self.chunks, self.shape, self.dtype, self.ndim = array, chunks, array.shape, array.dtype, array.ndim
        self.slices_read = 0

    def __getitem__(self, key):
        out = self.array[key]
        self.slices_read += out.shape[0] if isinstance(key[0], slice) else 1
        return out


@pytest.mark.parametrize("depth", [4, 1])
def test_each_slab_is_read_once_for_all_its_slices(depth):
    stack = np.arange(8 * 20 * 30, dtype=np.uint16).reshape(8, 20, 30)
    src = Counted(stack, (depth, 10, 10))
    planes = SlabPlanes(src)
    for job in in_slab_order([(z, iy, ix) for z in range(8) for iy in range(2) for ix in range(2)], chunk_depth(src)):
        z, iy, ix = job
        window = (slice(iy * 10, iy * 10 + 12), slice(ix * 15, ix * 15 + 15))
        assert np.array_equal(planes[(z, *window)], stack[(z, *window)])
    # 4 windows x 8 slices: read once each in slabs of 4 (32 slices); the control, one slice deep, reads them as asked
    assert src.slices_read == 32 and planes.depth == depth


def test_jobs_of_one_window_and_chunk_depth_come_together():
    jobs = [(z, iy, 0) for z in range(5) for iy in range(2)]
    assert in_slab_order(jobs, 4)[:5] == [(0, 0, 0), (1, 0, 0), (2, 0, 0), (3, 0, 0), (0, 1, 0)]
    assert sorted(in_slab_order(jobs, 4)) == sorted(jobs) and in_slab_order(jobs, 1) == jobs
    groups = slab_groups(jobs, 4)
    assert [len(g) for g in groups] == [4, 4, 1, 1] and sorted(j for g in groups for j in g) == sorted(jobs)
    assert chunk_depth(zarr.zeros((9, 8, 8), chunks=(3, 8, 8))) == 3 and chunk_depth(zarr.zeros((8, 8), chunks=(4, 4))) == 1


def test_a_deeply_chunked_stack_restores_as_the_same_stack_in_memory(tiny_model, tmp_path):
    rng = np.random.default_rng(2)
    img = (rng.random((6, 48, 40)) * 255).astype(np.uint8)
    src = zarr.open_array(str(tmp_path / "deep.zarr"), mode="w", shape=img.shape, dtype=img.dtype, chunks=(4, 16, 16))
    src[:] = img
    a = restore(src, "denoise", tiny_model, block=24, z_filter="off", **FAST).mean
    b = restore(img, "denoise", tiny_model, block=24, z_filter="off", **FAST).mean
    assert np.array_equal(a, b)


def test_a_deeply_chunked_volume_reconstructs_as_in_memory(tmp_path):
    from tests.conftest import make_tiny

    m = make_tiny("isotropic-i")
    rng = np.random.default_rng(3)
    vol = (rng.random((5, 40, 40)) * 255).astype(np.uint8)
    src = zarr.open_array(str(tmp_path / "deep.zarr"), mode="w", shape=vol.shape, dtype=vol.dtype, chunks=(2, 16, 16))
    src[:] = vol
    a = reconstruct_isotropic(src, 3, m, block=24, **FAST).volume
    b = reconstruct_isotropic(vol, 3, m, block=24, **FAST).volume
    assert np.array_equal(a, b)


def test_a_slab_over_its_memory_bound_is_read_in_parts(monkeypatch):
    from napari_emdiffuse.engine.inference import slabs

    stack = np.arange(8 * 20 * 30, dtype=np.uint16).reshape(8, 20, 30)
    src = Counted(stack, (8, 20, 30))
    monkeypatch.setattr(slabs, "SLAB_BYTES", 3 * 20 * 30 * 2)  # room for 3 slices: parts of 3, 3, 2
    planes = SlabPlanes(src)
    reads = []
    for z in range(8):
        assert np.array_equal(planes[z, 0:20, 0:30], stack[z])
        reads.append(src.slices_read)
    assert reads == [3, 3, 3, 6, 6, 6, 8, 8]


def test_a_napari_layer_of_a_store_is_read_through_the_store(tmp_path):
    """A dask array that only wraps a deep-chunked store (how napari shows one) takes the
    store's chunk depth and is read slab by slab from the store; other dask arrays are not."""
    import dask.array as da

    img = (np.arange(8 * 20 * 30) % 251).astype(np.uint8).reshape(8, 20, 30)
    src = zarr.open_array(str(tmp_path / "deep.zarr"), mode="w", shape=img.shape, dtype=img.dtype, chunks=(4, 10, 10))
    src[:] = img
    layer = da.from_zarr(src)
    planes = SlabPlanes(layer)
    assert chunk_depth(layer) == 4 and planes.depth == 4 and planes.image is not layer
    assert np.array_equal(planes[5, 2:12, 3:9], img[5, 2:12, 3:9])
    assert chunk_depth(layer + 1) == 1 and chunk_depth(layer[1:]) == 1  # computed on, sliced: no store under them
