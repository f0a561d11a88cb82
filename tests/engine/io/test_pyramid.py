"""OME-Zarr outputs: the pyramid of 2x2 means under the restored image, with OME-NGFF metadata."""

from __future__ import annotations

import numpy as np
import pytest
import zarr

from napari_emdiffuse.api import reconstruct_isotropic, restore_to_zarr, restore_to_zarr_iter
from napari_emdiffuse.engine.events import Progress
from napari_emdiffuse.engine.io import pyramid
from napari_emdiffuse.engine.io.images import read_image
from napari_emdiffuse.engine.io.pyramid import halve
from napari_emdiffuse.engine.io.zarr import is_complete

from tests.conftest import make_tiny

KW = dict(steps=2, tile=32, overlap=8, device="cpu", block=32)


@pytest.fixture
def small_top(monkeypatch):
    """Pyramids down to 16 px, so that small test images get several levels."""
    monkeypatch.setattr(pyramid, "PYRAMID_TOP", 16)


def _mean2x2(a: np.ndarray) -> np.ndarray:
    """The closed form for even-sized slices: the mean of each 2x2, rounded half up."""
    h, w = a.shape[-2] // 2, a.shape[-1] // 2
    return np.floor(a.astype(np.float64).reshape(*a.shape[:-2], h, 2, w, 2).mean(axis=(-3, -1)) + 0.5)


def test_an_ome_zarr_output_holds_its_pyramid_and_metadata(tmp_path, small_top):
    img = (np.random.default_rng(0).random((3, 72, 56)) * 255).astype(np.uint8)
    out, unc = tmp_path / "x.ome.zarr", tmp_path / "x_unc.ome.zarr"
    events = list(restore_to_zarr_iter(img, out, "denoise", make_tiny("denoise"), spacing=(30.0, 4.0, 4.0),
                                       uncertainty_out=unc, samples=2, **KW))  # fmt: skip
    assert any("adding the multiscale pyramid of 'x.ome.zarr' and 'x_unc.ome.zarr'" in (e.message or "")
               for e in events if isinstance(e, Progress))  # fmt: skip
    assert is_complete(out) and is_complete(unc)
    group = zarr.open_group(str(out), mode="r")
    levels = [group[str(k)] for k in range(4)]
    assert [a.shape for a in levels] == [(3, 72, 56), (3, 36, 28), (3, 18, 14), (3, 9, 7)]
    assert np.array_equal(levels[1][:], _mean2x2(levels[0][:])) and levels[1].dtype == np.uint8
    assert np.array_equal(levels[2][:], _mean2x2(levels[1][:]))
    ms = group.attrs["multiscales"][0]
    assert ms["version"] == "0.4" and [a["name"] for a in ms["axes"]] == ["z", "y", "x"]
    assert ms["axes"][1]["unit"] == "nanometer"
    scales = [d["coordinateTransformations"][0]["scale"] for d in ms["datasets"]]
    assert scales == [[30.0, 4.0, 4.0], [30.0, 8.0, 8.0], [30.0, 16.0, 16.0], [30.0, 32.0, 32.0]]
    # what other readers (and this plugin's) see: the full resolution with its pixel size
    back = read_image(out)
    assert back.data.shape == (3, 72, 56) and back.spacing == pytest.approx((30.0, 4.0, 4.0))
    assert zarr.open_group(str(unc), mode="r")["1"].dtype == np.float32


def test_halving_keeps_odd_edges_and_no_data():
    a = np.arange(15, dtype=np.uint16).reshape(3, 5)
    got = halve(a)
    assert got.shape == (2, 3) and got.dtype == np.uint16
    assert got[1, 2] == 14 and got[0, 2] == round((4 + 9) / 2 + 1e-9)  # the odd column with itself
    f = np.array([[np.nan, np.nan], [np.nan, np.nan]], dtype=np.float32)
    assert np.isnan(halve(f)).all() and halve(f).dtype == np.float32
    assert pyramid.level_plan((5, 400, 512)) == []  # small enough: no levels


@pytest.mark.parametrize("dtype", [np.uint8, np.int16, np.uint32, np.float32])
def test_halving_is_the_rounded_mean_of_each_2x2x2(dtype):
    """Against the closed form per output voxel, odd edges padded with themselves; integers
    rounded half up (negative ones too), floats the plain mean."""
    rng = np.random.default_rng(5)
    a = (rng.integers(-3000, 3000, (5, 7, 9)) if dtype == np.int16 else rng.integers(0, 250, (5, 7, 9))).astype(dtype)
    if dtype == np.float32:
        a = a + rng.random(a.shape).astype(np.float32)
    p = np.pad(a.astype(np.float64), ((0, 1), (0, 1), (0, 1)), mode="edge")
    want = np.empty((3, 4, 5))
    for z, y, x in np.ndindex(want.shape):
        want[z, y, x] = p[2 * z:2 * z + 2, 2 * y:2 * y + 2, 2 * x:2 * x + 2].mean()
    got = halve(a, z=True)
    assert got.dtype == dtype and got.shape == (3, 4, 5)
    if dtype == np.float32:
        assert np.allclose(got, want, rtol=1e-6)
    else:
        assert np.array_equal(got, np.floor(want + 0.5))
    assert not np.array_equal(got, halve(a[:, ::-1], z=True)[:, ::-1])  # a control: the padding side matters


def test_a_level_with_deep_chunks_writes_each_chunk_once(tmp_path):
    """A level whose chunks hold many slices is written a chunk's slices at a time, not slice
    by slice (which rewrote every chunk once per slice), to the same pixels."""
    src = zarr.open_array(str(tmp_path / "a.zarr"), mode="w", shape=(20, 64, 64), chunks=(8, 32, 32), dtype="uint8",
                          zarr_format=2)  # fmt: skip
    src[:] = (np.random.default_rng(2).random((20, 64, 64)) * 255).astype(np.uint8)
    dst = zarr.open_array(str(tmp_path / "b.zarr"), mode="w", shape=(10, 32, 32), chunks=(8, 32, 32), dtype="uint8",
                          zarr_format=2)  # fmt: skip
    writes = []

    class Counting:
        shape, chunks, dtype = dst.shape, dst.chunks, dst.dtype

        def __setitem__(self, key, value):
            writes.append(key[0])
            dst[key] = value

    list(pyramid.downsample_tiles(src, Counting(), pyramid.level_tiles(dst.shape, dst.chunks), zdown=True))
    assert sorted(writes, key=lambda s: s.start) == [slice(0, 8), slice(8, 10)]
    assert np.array_equal(dst[:], halve(src[:], z=True))


def test_a_plain_zarr_output_has_no_pyramid(tmp_path, small_top):
    img = (np.random.default_rng(0).random((40, 40)) * 255).astype(np.uint8)
    out = restore_to_zarr(img, tmp_path / "x.zarr", "denoise", make_tiny("denoise"), **KW)
    assert isinstance(zarr.open(str(out), mode="r"), zarr.Array)


def test_an_isotropic_volume_to_ome_zarr(tmp_path, small_top):
    vol = (np.random.default_rng(1).random((3, 40, 40)) * 255).astype(np.uint8)
    res = reconstruct_isotropic(vol, 3, make_tiny("isotropic-i"), out=tmp_path / "iso.ome.zarr", uncertainty=True,
                                samples=2, spacing=(24.0, 8.0, 8.0), **{**KW, "block": 20})  # fmt: skip
    assert res.path == tmp_path / "iso.ome.zarr" and res.uncertainty_path == tmp_path / "iso_uncertainty.ome.zarr"
    assert np.array_equal(np.asarray(res.volume)[::3], vol)  # the full resolution, measured slices kept
    group = zarr.open_group(str(res.path), mode="r")
    # isotropic voxels (8 nm): every level halves z too, a 2x2x2 mean (the 7th slice with itself)
    full = group["0"][:].astype(np.float64)
    even = np.concatenate([full, full[-1:]])
    expected = np.floor(even.reshape(4, 2, 20, 2, 20, 2).mean(axis=(1, 3, 5)) + 0.5)
    assert group["1"].shape == (4, 20, 20) and np.array_equal(group["1"][:], expected)
    scales = [d["coordinateTransformations"][0]["scale"] for d in group.attrs["multiscales"][0]["datasets"]]
    assert scales[:2] == [[8.0, 8.0, 8.0], [16.0, 16.0, 16.0]]


def test_a_stack_keeps_its_slices_until_its_pixels_are_as_wide():
    """FIB-SEM at 8 nm slices and 4 nm pixels: z is halved from the level of 16 nm pixels on;
    serial sections at 50 nm never within these levels; no pixel size, never."""
    plan = pyramid.level_plan((100, 4096, 4096), (8.0, 4.0, 4.0))
    assert [lv.zdown for lv in plan] == [False, True, True] and plan[-1].factors == (4, 8, 8)
    assert [lv.shape for lv in plan] == [(100, 2048, 2048), (50, 1024, 1024), (25, 512, 512)]
    assert not any(lv.zdown for lv in pyramid.level_plan((100, 4096, 4096), (50.0, 4.0, 4.0)))
    assert not any(lv.zdown for lv in pyramid.level_plan((100, 4096, 4096)))


def test_write_image_gives_an_ome_zarr_its_pyramid(tmp_path):
    """A converted or saved OME-Zarr gets its levels too, as the restorations' outputs do."""
    import zarr

    from napari_emdiffuse.engine.io.images import read_image, write_image
    from napari_emdiffuse.engine.io.zarr import ome_levels

    image = (np.arange(1100 * 600) % 251).astype(np.uint8).reshape(1100, 600)
    write_image(tmp_path / "out.ome.zarr", image, spacing=(4.0, 4.0))
    assert ome_levels(tmp_path / "out.ome.zarr") == ["0", "1", "2"]  # until it fits 512 px
    level1 = zarr.open_array(str(tmp_path / "out.ome.zarr" / "1"), mode="r")[:]
    want = image.reshape(550, 2, 300, 2).astype(np.float64).mean(axis=(1, 3))
    assert np.abs(level1.astype(np.float64) - want).max() <= 0.5
    assert read_image(tmp_path / "out.ome.zarr").spacing == (4.0, 4.0)
    write_image(tmp_path / "plain.zarr", image)  # the control: a plain store has one array
    assert isinstance(zarr.open(str(tmp_path / "plain.zarr"), mode="r"), zarr.Array)


def test_closing_a_level_midway_stops_its_units(tmp_path):
    """Cancel: closing the generator after the first tile leaves the units not begun
    unwritten (at most the window in flight finishes), and raises nothing."""
    src = np.zeros((2, 256, 256), np.uint8)
    dst = zarr.open_array(str(tmp_path / "b.zarr"), mode="w", shape=(2, 128, 128), chunks=(2, 16, 16), dtype="uint8",
                          zarr_format=2)  # fmt: skip
    writes = []

    class Counting:
        shape, chunks, dtype = dst.shape, dst.chunks, dst.dtype

        def __setitem__(self, key, value):
            writes.append(key)
            dst[key] = value

    tiles = pyramid.level_tiles(dst.shape, dst.chunks)
    gen = pyramid.downsample_tiles(src, Counting(), tiles, threads=2)
    assert next(gen).done == 1
    gen.close()
    assert len(tiles) == 64 and 1 <= len(writes) <= 6
