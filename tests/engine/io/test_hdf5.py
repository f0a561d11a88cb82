"""HDF5 inputs: CREMI-style datasets with a resolution, Fiji's element_size_um, lazy reads."""

from __future__ import annotations

import itertools
import pickle

import h5py
import numpy as np
import pytest

from napari_emdiffuse.engine.errors import InputError
from napari_emdiffuse.engine.io.hdf5 import H5Array
from napari_emdiffuse.engine.io.images import image_names, read_image, write_image
from napari_emdiffuse.engine.io.sources import open_source, source_of


def _cremi(path, vol):
    with h5py.File(path, "w") as f:
        raw = f.create_dataset("volumes/raw", data=vol, chunks=(1, *vol.shape[1:]), compression="gzip")
        raw.attrs["resolution"] = [50.0, 4.0, 4.0]
        f.create_dataset("volumes/labels/neuron_ids", data=np.zeros(vol.shape, np.uint64))
        f.create_dataset("annotations/types", data=np.array([b"a", b"b"]))  # not an image
        f.create_dataset("annotations/locations", data=np.zeros((5, 3)))  # a table, not an image
    return path


@pytest.fixture
def vol():
    return (np.arange(4 * 12 * 10) % 253).astype(np.uint8).reshape(4, 12, 10)


def test_a_cremi_file_reads_a_named_dataset_lazily_with_its_resolution(tmp_path, vol):
    path = _cremi(tmp_path / "sample_A.hdf", vol)
    with pytest.raises(InputError, match=r"several datasets \(volumes/labels/neuron_ids, volumes/raw\); "
                                         r"choose one, e.g. '.*sample_A.hdf/volumes/raw'"):  # fmt: skip
        read_image(path)
    img = read_image(path / "volumes" / "raw")
    assert isinstance(img.data, H5Array) and img.data.shape == (4, 12, 10) and img.data.dtype == np.uint8
    assert img.spacing == (50.0, 4.0, 4.0) and img.unit == "nm"
    assert np.array_equal(img.data[2], vol[2]) and np.array_equal(np.asarray(img.data), vol)
    assert np.array_equal(read_image(path, key="volumes/raw").data[1:3, 4], vol[1:3, 4])
    with pytest.raises(InputError, match="no dataset 'volumes/rwa' in it"):
        read_image(path / "volumes" / "rwa")
    assert image_names(path) == [f"{path}/volumes/labels/neuron_ids", f"{path}/volumes/raw"]  # `emdiffuse info`
    assert image_names(path / "volumes" / "raw") == [str(path / "volumes" / "raw")]


def test_fiji_element_size_and_a_single_leading_axis(tmp_path, vol):
    path = tmp_path / "fiji.h5"
    with h5py.File(path, "w") as f:
        f.create_dataset("data", data=vol[None]).attrs["element_size_um"] = [1.0, 0.05, 0.004, 0.004]
    img = read_image(path)
    assert img.data.shape == (4, 12, 10) and img.unit == "nm"
    np.testing.assert_allclose(img.spacing, (50.0, 4.0, 4.0))
    assert np.array_equal(img.data[3, ::-1], vol[3, ::-1])


def test_bad_hdf5_inputs_are_refused_in_one_line(tmp_path, vol):
    fake = tmp_path / "notes.h5"
    fake.write_text("not hdf5")
    with pytest.raises(InputError, match="not an HDF5 file"):
        read_image(fake)
    with pytest.raises(InputError, match="file not found"):
        read_image(tmp_path / "missing.h5")
    empty = tmp_path / "empty.h5"
    with h5py.File(empty, "w") as f:
        f.create_dataset("vector", data=np.zeros(5))
    with pytest.raises(InputError, match="holds no image dataset"):
        read_image(empty)
    with pytest.raises(InputError, match=r"\.h5 is read only here"):
        write_image(tmp_path / "out.h5", vol)


def test_a_dataset_whose_filter_is_missing_is_refused_before_any_work(tmp_path, vol, monkeypatch):
    path = _cremi(tmp_path / "s.hdf", vol)
    assert read_image(path / "volumes" / "raw").data.shape == vol.shape  # the control: readable

    def missing(self, key):
        raise OSError("Can't synchronously read data (required filter 'blosc' is not registered)")

    monkeypatch.setattr(h5py.Dataset, "__getitem__", missing)
    with pytest.raises(InputError, match="volumes/raw': .*blosc.*pip install hdf5plugin"):
        read_image(path / "volumes" / "raw")


def test_h5_array_indexes_as_numpy_does(tmp_path):
    ref = np.arange(5 * 6 * 7, dtype=np.int32).reshape(5, 6, 7)
    with h5py.File(tmp_path / "t.h5", "w") as f:
        f.create_dataset("a", data=ref, chunks=(1, 3, 7))
    arr = H5Array(tmp_path / "t.h5", "a")
    picks = [slice(None), slice(1, 4), slice(None, None, 2), slice(None, None, -1), slice(4, 0, -2), slice(-2, None),
             slice(3, 3), slice(10, 20), 2, -1]  # fmt: skip
    for key in itertools.product(picks, repeat=3):
        got, want = arr[key], ref[key]
        assert got.shape == want.shape and np.array_equal(got, want), key
    assert np.array_equal(arr[..., 1], ref[..., 1]) and np.array_equal(arr[3], ref[3])
    with pytest.raises(IndexError):
        arr[5]
    with pytest.raises(IndexError):
        arr[[0, 1]]  # fancy indexing: refused, not silently wrong
    again = pickle.loads(pickle.dumps(arr))  # what a worker receives
    assert np.array_equal(again[1:2], ref[1:2])
    where = source_of(arr)
    assert where == (str((tmp_path / "t.h5").resolve()), "a", (), ())
    assert np.array_equal(open_source(*where)[4], ref[4])


def test_workers_read_an_hdf5_dataset_in_place(tmp_path, vol, tiny_model_dir):
    """A cluster run reads the file itself (no staged copy) and writes what one process writes;
    here an ilastik-style (Z, Y, X, 1) export, its single channel dropped by a lazy view."""
    import zarr

    from napari_emdiffuse.api import restore_to_zarr, restore_to_zarr_iter

    with h5py.File(tmp_path / "ilastik.h5", "w") as f:
        f.create_dataset("exported_data", data=vol[..., None]).attrs["element_size_um"] = [0.05, 0.004, 0.004, 1.0]
    img = read_image(tmp_path / "ilastik.h5")
    assert img.data.shape == vol.shape and img.spacing == pytest.approx((50.0, 4.0, 4.0))
    assert source_of(img.data)[2:] == ((), (0,))
    data = img.data
    kw = dict(block=32, steps=2, tile=32, overlap=8, device="cpu", z_filter="off")
    restore_to_zarr(vol, tmp_path / "one.zarr", "denoise", str(tiny_model_dir), **kw)
    events = list(restore_to_zarr_iter(data, tmp_path / "two.zarr", "denoise", str(tiny_model_dir), workers=2, **kw))
    assert events[-1] == tmp_path / "two.zarr"
    assert not any("copying the input" in (e.message or "") for e in events[:-1])
    one = zarr.open_array(str(tmp_path / "one.zarr"), mode="r")[:]
    two = zarr.open_array(str(tmp_path / "two.zarr"), mode="r")[:]
    assert np.abs(one.astype(int) - two.astype(int)).max() <= 1


def test_a_dataset_path_is_a_training_image(tmp_path, vol):
    """Recipes and `emdiffuse finetune --input sample.hdf/volumes/raw` name a dataset of a file."""
    from napari_emdiffuse.engine.training.config import ImageSource

    path = _cremi(tmp_path / "s.hdf", vol)
    got = ImageSource(path=path / "volumes" / "raw", z=(1, 3)).load()
    assert isinstance(got, np.ndarray) and np.array_equal(got, vol[1:3])
    with pytest.raises(InputError, match="does not exist"):
        ImageSource(path=tmp_path / "none.hdf" / "volumes" / "raw").load()


def _bdv(folder, zyx, setups=1, xml=True, unit="nm"):
    """A BigDataViewer export: a pyramid per setup, uint16 stored as int16, and its XML."""
    path = folder / "dataset.h5"
    with h5py.File(path, "w") as f:
        for s in range(setups):
            f.create_dataset(f"s{s:02d}/resolutions", data=np.array([[1.0, 1.0, 1.0], [2.0, 2.0, 1.0]]))
            f.create_dataset(f"s{s:02d}/subdivisions", data=np.array([[16, 16, 4], [16, 16, 4]], np.int32))
            f.create_dataset(f"t00000/s{s:02d}/0/cells", data=zyx.view(np.int16))
            f.create_dataset(f"t00000/s{s:02d}/1/cells", data=zyx[:, ::2, ::2].copy().view(np.int16))
    if xml:
        views = "".join(f"<ViewSetup><id>{s}</id><size>{zyx.shape[2]} {zyx.shape[1]} {zyx.shape[0]}</size>"
                        f"<voxelSize><unit>{unit}</unit><size>4.0 4.0 40.0</size></voxelSize></ViewSetup>"
                        for s in range(setups))  # fmt: skip
        (folder / "dataset.xml").write_text(
            '<?xml version="1.0" encoding="UTF-8"?><SpimData version="0.2"><BasePath type="relative">.</BasePath>'
            '<SequenceDescription><ImageLoader format="bdv.hdf5"><hdf5 type="relative">dataset.h5</hdf5>'
            f"</ImageLoader><ViewSetups>{views}</ViewSetups></SequenceDescription></SpimData>"
        )
    return path


def test_a_bigdataviewer_file_reads_its_full_resolution_unsigned_with_the_xml_voxel_size(tmp_path):
    zyx = (np.arange(3 * 16 * 20, dtype=np.uint32) * 211 % 65536).astype(np.uint16).reshape(3, 16, 20)
    assert zyx.max() > 32767  # bright pixels that a signed read would turn negative
    path = _bdv(tmp_path, zyx)
    img = read_image(path)  # the only setup's full resolution, not its pyramid levels
    assert img.data.name == "t00000/s00/0/cells" and img.data.dtype == np.uint16
    assert np.array_equal(np.asarray(img.data), zyx) and np.array_equal(img.data[1, ::-1, 3], zyx[1, ::-1, 3])
    assert img.spacing == (40.0, 4.0, 4.0) and img.unit == "nm"
    level = read_image(path / "t00000" / "s00" / "1" / "cells")  # asked for: the level's own size
    assert np.array_equal(np.asarray(level.data), zyx[:, ::2, ::2]) and level.spacing == (40.0, 8.0, 8.0)
    assert np.array_equal(open_source(*source_of(img.data))[2], zyx[2])  # a worker's read is unsigned too


def test_a_bigdataviewer_file_with_setups_lists_them_and_without_its_xml_has_no_voxel_size(tmp_path):
    zyx = np.ones((2, 16, 16), np.uint16)
    path = _bdv(tmp_path, zyx, setups=2)
    with pytest.raises(InputError, match=r"several datasets \(t00000/s00/0/cells, t00000/s01/0/cells\)"):
        read_image(path)
    assert image_names(path) == [f"{path}/t00000/s00/0/cells", f"{path}/t00000/s01/0/cells"]
    assert read_image(path / "t00000/s01/0/cells").spacing == (40.0, 4.0, 4.0)
    (tmp_path / "dataset.xml").unlink()
    assert read_image(path / "t00000/s01/0/cells").spacing is None
    other = tmp_path / "px"
    other.mkdir()
    assert read_image(_bdv(other, zyx, unit="pixel")).spacing is None  # pixels: no calibration


def test_napari_opens_a_bigdataviewer_pyramid_as_one_multiscale_layer(tmp_path):
    from napari_emdiffuse._reader import get_h5_reader

    zyx = (np.arange(2 * 16 * 20, dtype=np.uint32) * 997 % 65536).astype(np.uint16).reshape(2, 16, 20)
    path = _bdv(tmp_path, zyx)
    (data, meta, kind), = get_h5_reader(str(path))(str(path))
    assert kind == "image" and meta["multiscale"] and meta["scale"] == (40.0, 4.0, 4.0)
    assert [lv.shape for lv in data] == [(2, 16, 20), (2, 8, 10)] and data[1].dtype == np.uint16
    assert np.array_equal(np.asarray(data[0]), zyx) and np.array_equal(np.asarray(data[1]), zyx[:, ::2, ::2])
