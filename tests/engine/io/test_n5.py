"""N5 containers (OpenOrganelle, BigStitcher): lazy block reads, the default dataset, voxel size.

The containers are written here by ``_write_n5`` as the N5 specification lays them out. The
reader was also checked against containers that tensorstore wrote (raw, gzip, zlib, bzip2, xz
and blosc; uint8, uint16, int16, float32; edge blocks; negative steps): every read matched.
"""

from __future__ import annotations

import gzip
import itertools
import json
import pickle
from pathlib import Path

import numpy as np
import pytest

from napari_emdiffuse._reader import get_n5_reader
from napari_emdiffuse.engine.errors import InputError
from napari_emdiffuse.engine.io.images import image_names, read_image
from napari_emdiffuse.engine.io.n5 import N5Array
from napari_emdiffuse.engine.io.sources import open_source, source_of


def _write_n5(folder, zyx, block=(2, 3, 4), compression="gzip", attrs=None, skip=()):
    """A dataset: attributes (x first), then each block's big-endian header and pixels."""
    folder.mkdir(parents=True, exist_ok=True)
    meta = {"dimensions": list(zyx.shape[::-1]), "blockSize": list(block[::-1]), "dataType": zyx.dtype.name,
            "compression": {"type": compression}, **(attrs or {})}  # fmt: skip
    (folder / "attributes.json").write_text(json.dumps(meta))
    counts = [-(-n // b) for n, b in zip(zyx.shape, block)]
    for index in itertools.product(*[range(c) for c in counts]):
        if index in skip:
            continue
        part = zyx[tuple(slice(i * b, (i + 1) * b) for i, b in zip(index, block))]
        header = (0).to_bytes(2, "big") + zyx.ndim.to_bytes(2, "big")
        header += b"".join(n.to_bytes(4, "big") for n in part.shape[::-1])
        pixels = part.astype(part.dtype.newbyteorder(">")).tobytes()
        path = folder.joinpath(*[str(i) for i in index[::-1]])  # x first on disk
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(header + (gzip.compress(pixels) if compression == "gzip" else pixels))
    return folder


@pytest.fixture
def vol():
    return (np.arange(5 * 7 * 9) * 37 % 65521).astype(np.uint16).reshape(5, 7, 9)


@pytest.mark.parametrize("compression", ["gzip", "raw"])
def test_a_dataset_reads_block_by_block_with_edge_blocks_and_missing_ones(tmp_path, vol, compression):
    root = tmp_path / "v.n5"
    (root).mkdir()
    (root / "attributes.json").write_text(json.dumps({"n5": "2.5.1"}))
    _write_n5(root / "raw", vol, compression=compression, skip={(1, 1, 1)})
    want = vol.copy()
    want[2:4, 3:6, 4:8] = 0  # the block never written
    img = read_image(root)  # the only dataset
    assert isinstance(img.data, N5Array) and img.data.shape == vol.shape and img.data.dtype == np.uint16
    assert img.spacing is None and img.axes is None
    for key in [(Ellipsis,), 1, (slice(1, 4), 2), (Ellipsis, 5), (slice(None, None, -1), slice(6, 0, -3), slice(1, 9, 2)),
                (-1, -2), (slice(3, 3),), (2, Ellipsis, 0)]:  # fmt: skip
        got = img.data[key]
        assert got.shape == want[key].shape and np.array_equal(got, want[key]), key
    with pytest.raises(IndexError):
        img.data[5]
    again = pickle.loads(pickle.dumps(img.data))  # what a worker receives
    assert np.array_equal(again[0], want[0])
    where = source_of(img.data)
    assert where[1:] == ("raw", (), ()) and np.array_equal(open_source(*where)[4], want[4])


def test_a_multiscale_group_gives_its_finest_level_with_its_voxel_size(tmp_path, vol, capsys):
    root = tmp_path / "jrc_mus-liver.n5"
    cosem = {"transform": {"axes": ["z", "y", "x"], "ordering": "C", "scale": [8.0, 4.0, 4.0], "units": ["nm"] * 3}}
    _write_n5(root / "em" / "fibsem-uint16" / "s0", vol, attrs=cosem)
    _write_n5(root / "em" / "fibsem-uint16" / "s1", vol[::2, ::2, ::2].copy())
    img = read_image(root)
    assert img.data.name == "em/fibsem-uint16/s0" and img.spacing == (8.0, 4.0, 4.0) and img.unit == "nm"
    # a level without its own transform: the group's pixelResolution times its downsampling
    group = root / "em" / "fibsem-uint16"
    (group / "attributes.json").write_text(json.dumps({"pixelResolution": {"dimensions": [4.0, 4.0, 8.0], "unit": "um"}}))
    s1 = json.loads((group / "s1" / "attributes.json").read_text())
    (group / "s1" / "attributes.json").write_text(json.dumps({**s1, "downsamplingFactors": [2, 2, 2]}))
    img = read_image(group / "s1")
    assert np.array_equal(np.asarray(img.data), vol[::2, ::2, ::2]) and img.spacing == (16000.0, 8000.0, 8000.0)
    from napari_emdiffuse.cli import main

    assert main(["info", "--json", str(root)]) == 0
    assert '"levels": 2' in capsys.readouterr().out
    layers = get_n5_reader(str(root))(str(root))  # napari: one multiscale layer
    (data, meta, kind), = layers
    assert meta["multiscale"] and [lv.shape for lv in data] == [vol.shape, (3, 4, 5)] and meta["scale"] == (8.0, 4.0, 4.0)


def test_several_datasets_are_listed_and_bad_ones_refused(tmp_path, vol, capsys):
    from napari_emdiffuse.cli import main

    root = tmp_path / "c.n5"
    _write_n5(root / "raw", vol, attrs={"resolution": [4, 4, 40]})
    _write_n5(root / "labels", vol)
    with pytest.raises(InputError, match=r"several datasets \(labels, raw\); choose one, e.g. '.*c.n5/raw'"):
        read_image(root)
    assert image_names(root) == [f"{root}/labels", f"{root}/raw"]
    assert main(["info", str(root)]) == 0
    assert f"{root}/raw: 5 x 7 x 9 uint16, axes not declared, 40 x 4 x 4 nm" in capsys.readouterr().out
    with pytest.raises(InputError, match="no such dataset"):
        read_image(root / "missing")
    _write_n5(root / "lz", vol, compression="lz4")
    with pytest.raises(InputError, match="compression 'lz4' is not supported"):
        read_image(root / "lz")
    (root / "raw" / "0" / "0" / "0").write_bytes(b"\x00\x00\x00\x03" + b"\x00" * 3)  # a truncated block
    with pytest.raises(InputError, match="cannot read block"):
        read_image(root / "raw").data[0]
    attrs = json.loads((root / "raw" / "attributes.json").read_text())
    (root / "raw" / "attributes.json").write_text(json.dumps({**attrs, "compression": {"type": "blosc"}}))
    header = (0).to_bytes(2, "big") + (3).to_bytes(2, "big") + b"".join(n.to_bytes(4, "big") for n in (4, 3, 2))
    (root / "raw" / "0" / "0" / "0").write_bytes(header + b"\x02\x01\x21\x02" + b"\xff" * 20)  # damaged blosc
    with pytest.raises(InputError, match="cannot read block"):
        read_image(root / "raw").data[0]


def test_workers_read_an_n5_dataset_in_place(tmp_path, vol, tiny_model_dir):
    """A cluster run reads the container's blocks itself and writes what one process writes."""
    import zarr

    from napari_emdiffuse.api import restore_to_zarr, restore_to_zarr_iter

    img8 = (vol % 251).astype(np.uint8)
    big = np.tile(img8, (1, 6, 5))[:, :40, :40]
    _write_n5(tmp_path / "v.n5" / "raw", big, block=(1, 16, 16))
    import dask.array as da

    n5 = read_image(tmp_path / "v.n5").data
    data = da.from_array(n5, chunks=n5.chunks, asarray=False)  # as napari's layer holds it
    kw = dict(block=32, steps=2, tile=32, overlap=8, device="cpu", z_filter="off")
    restore_to_zarr(big, tmp_path / "one.zarr", "denoise", str(tiny_model_dir), **kw)
    events = list(restore_to_zarr_iter(data, tmp_path / "two.zarr", "denoise", str(tiny_model_dir), workers=2, **kw))
    assert events[-1] == tmp_path / "two.zarr"
    assert "staging" not in {getattr(e, "stage", None) for e in events}  # no copy of the input was made
    one = zarr.open_array(str(tmp_path / "one.zarr"), mode="r")[:]
    two = zarr.open_array(str(tmp_path / "two.zarr"), mode="r")[:]
    assert np.abs(one.astype(int) - two.astype(int)).max() <= 1


def test_a_path_inside_a_store_or_container_is_one_input_not_a_batch(tmp_path, vol):
    import zarr

    from napari_emdiffuse.engine.io.batch import expand_inputs, is_batch

    _write_n5(tmp_path / "v.n5" / "raw", vol)
    zarr.open_group(str(tmp_path / "g.zarr"), mode="w").create_array("0", shape=(8, 8), dtype="uint8")
    zarr.open_array(str(tmp_path / "unnamed"), mode="w", shape=(8, 8), dtype="uint8")
    for one in ("v.n5", "v.n5/raw", "g.zarr", "g.zarr/0", "unnamed"):
        assert not is_batch([str(tmp_path / one)]), one
    (tmp_path / "slices").mkdir()
    assert is_batch([str(tmp_path / "slices")])  # the control: a plain folder is a batch
    with pytest.raises(InputError, match="zarr store, N5 container or precomputed volume: restore those one at a time"):
        expand_inputs([tmp_path / "v.n5", tmp_path / "g.zarr"])


def test_a_dask_array_that_only_wraps_a_file_or_store_is_read_in_place(tmp_path, vol):
    """napari layers of N5, HDF5 and zarr inputs are dask arrays made by ``from_array`` or
    ``from_zarr``: a cluster run reads the file itself instead of a staged copy."""
    import dask.array as da
    import zarr

    from napari_emdiffuse.engine.inference.blocks import input_identity

    _write_n5(tmp_path / "v.n5" / "raw", vol)
    n5 = read_image(tmp_path / "v.n5").data
    layer = da.from_array(n5, chunks=n5.chunks, asarray=False)
    assert source_of(layer) == source_of(n5) and input_identity(layer)["file"][1] == "raw"
    z = zarr.open_array(str(tmp_path / "v.zarr"), mode="w", shape=vol.shape, chunks=(1, 7, 9), dtype=vol.dtype)
    where = source_of(da.from_zarr(z))
    assert where is not None and Path(where[0]) == (tmp_path / "v.zarr").resolve()
    # the controls: anything done to the wrapped array leaves nothing to read in place
    for other in (layer[1:], layer + 1, da.stack([layer, layer]), da.zeros(vol.shape)):
        assert source_of(other) is None


def test_two_dask_inputs_of_one_shape_are_told_apart_for_resuming():
    """A dask array has a ``store`` method: it was once taken for a zarr array, so two inputs of
    one shape, dtype and chunking had one identity and a resumed run could take the other's blocks."""
    import dask.array as da

    from napari_emdiffuse.engine.inference.blocks import input_identity

    a, b = da.zeros((2, 8, 8), chunks=4), da.ones((2, 8, 8), chunks=4)
    assert input_identity(a) != input_identity(b) and "dask" in input_identity(a)


def test_a_bigdataviewer_n5_export_takes_its_voxel_size_from_the_xml(tmp_path, vol, capsys):
    """BigStitcher's N5: setup0/timepoint0/s0, s1 ..., factors on setup0, the size in the XML."""
    from napari_emdiffuse.cli import main

    root = tmp_path / "dataset.n5"
    root.mkdir()
    (root / "attributes.json").write_text(json.dumps({"n5": "2.5.1"}))
    _write_n5(root / "setup0" / "timepoint0" / "s0", vol)
    _write_n5(root / "setup0" / "timepoint0" / "s1", vol[:, ::2, ::2].copy())
    (root / "setup0" / "attributes.json").write_text(json.dumps({"downsamplingFactors": [[1, 1, 1], [2, 2, 1]],
                                                                  "dataType": "uint16"}))  # fmt: skip
    assert read_image(root).spacing is None  # the control: no XML yet, no voxel size
    (tmp_path / "dataset.xml").write_text(
        '<?xml version="1.0" encoding="UTF-8"?><SpimData version="0.2"><BasePath type="relative">.</BasePath>'
        '<SequenceDescription><ImageLoader format="bdv.n5" version="1.0"><n5 type="relative">dataset.n5</n5>'
        "</ImageLoader><ViewSetups><ViewSetup><id>0</id><voxelSize><unit>µm</unit><size>0.004 0.004 0.05</size>"
        "</voxelSize></ViewSetup></ViewSetups></SequenceDescription></SpimData>"
    )
    img = read_image(root)
    assert np.array_equal(np.asarray(img.data), vol) and img.spacing == (50.0, 4.0, 4.0) and img.unit == "nm"
    assert read_image(root / "setup0" / "timepoint0" / "s1").spacing == (50.0, 8.0, 8.0)
    assert main(["info", str(root)]) == 0
    assert "50 x 4 x 4 nm" in capsys.readouterr().out
