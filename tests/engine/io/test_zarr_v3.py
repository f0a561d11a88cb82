"""zarr format 3 outputs: each block one shard of smaller chunks, OME-Zarr 0.5 metadata, and the
same pixels as format 2."""

from __future__ import annotations

import numpy as np
import pytest
import zarr

from napari_emdiffuse.api import reconstruct_isotropic, restore_to_zarr
from napari_emdiffuse.engine.errors import InputError
from napari_emdiffuse.engine.io import pyramid
from napari_emdiffuse.engine.io.images import read_image, write_image
from napari_emdiffuse.engine.io.zarr import ZarrWriter, is_complete, ome_levels
from napari_emdiffuse.engine.io.zarrfmt import read_chunks, write_chunks

from tests.conftest import make_tiny

pytestmark = pytest.mark.skipif(int(zarr.__version__.split(".")[0]) < 3, reason="zarr format 3 needs zarr-python 3")

KW = dict(steps=2, tile=32, overlap=8, device="cpu", block=32)


@pytest.fixture
def small_top(monkeypatch):
    monkeypatch.setattr(pyramid, "PYRAMID_TOP", 16)


def test_a_format_3_ome_zarr_is_sharded_by_block_with_the_pixels_of_format_2(tmp_path, small_top):
    img = (np.random.default_rng(0).random((2, 72, 56)) * 255).astype(np.uint8)
    model = make_tiny("denoise")
    v2 = restore_to_zarr(img, tmp_path / "v2.ome.zarr", "denoise", model, spacing=(30.0, 4.0, 4.0), samples=2, **KW)
    v3 = restore_to_zarr(img, tmp_path / "v3.ome.zarr", "denoise", model, spacing=(30.0, 4.0, 4.0), zarr_format=3,
                         uncertainty_out=tmp_path / "u3.ome.zarr", samples=2, **KW)  # fmt: skip
    g2, g3 = zarr.open_group(str(v2), mode="r"), zarr.open_group(str(v3), mode="r")
    full = g3["0"]
    assert full.metadata.zarr_format == 3 and g2["0"].metadata.zarr_format == 2
    # one block (32 px) is one shard: parallel writers never share a file
    assert full.shards == (1, 32, 32) and write_chunks(full) == (1, 32, 32) and write_chunks(g2["0"]) == (1, 32, 32)
    assert full.metadata.dimension_names == ("z", "y", "x")
    # OME-NGFF 0.5 keeps its metadata under "ome"; 0.4 at the top
    assert g3.attrs["ome"]["version"] == "0.5" and "multiscales" not in g3.attrs
    assert g2.attrs["multiscales"][0]["version"] == "0.4" and "ome" not in g2.attrs
    scales = [d["coordinateTransformations"][0]["scale"] for d in g3.attrs["ome"]["multiscales"][0]["datasets"]]
    assert scales[:2] == [[30.0, 4.0, 4.0], [30.0, 8.0, 8.0]]
    # seed 0, same plan: the same pixels at every level
    assert ome_levels(v3) == ome_levels(v2) == ["0", "1", "2", "3"]
    for k in ome_levels(v3):
        assert np.array_equal(g3[k][:], g2[k][:]) and g3[k].metadata.zarr_format == 3
    assert g3["0"][:].std() > 1 and not np.array_equal(g3["0"][:], img)  # restored pixels, not an empty store
    assert is_complete(v3) and is_complete(tmp_path / "u3.ome.zarr")
    back = read_image(v3)
    assert back.data.shape == img.shape and back.spacing == pytest.approx((30.0, 4.0, 4.0)) and back.axes == "ZYX"


def test_a_shard_holds_chunks_a_viewer_reads_alone():
    """2048-px blocks are stored as 512-px chunks; edges with no such divisor stay whole."""
    assert read_chunks((1, 2048, 2048)) == (1, 512, 512)
    assert read_chunks((1, 1500, 300)) == (1, 500, 300)
    assert read_chunks((4, 2039, 1024)) == (4, 2039, 512)


def test_an_isotropic_volume_in_format_3(tmp_path):
    vol = (np.random.default_rng(1).random((3, 40, 40)) * 255).astype(np.uint8)
    res = reconstruct_isotropic(vol, 3, make_tiny("isotropic-i"), out=tmp_path / "iso.zarr", zarr_format=3,
                                **{**KW, "block": 20})  # fmt: skip
    arr = zarr.open_array(str(res.path), mode="r")
    assert arr.metadata.zarr_format == 3 and arr.shards == (1, 32, 32) and arr.shape == (7, 40, 40)
    assert np.array_equal(arr[::3], vol)  # the measured slices, kept
    with pytest.raises(InputError, match="pass out="):
        reconstruct_isotropic(vol, 3, make_tiny("isotropic-i"), zarr_format=3, **KW)


def test_write_image_in_format_3_stores_a_shard_per_slice(tmp_path):
    stack = (np.arange(3 * 600 * 40) % 251).astype(np.uint8).reshape(3, 600, 40)
    write_image(tmp_path / "s.zarr", stack, spacing=(8.0, 4.0, 4.0), zarr_format=3)
    arr = zarr.open_array(str(tmp_path / "s.zarr"), mode="r")
    assert arr.shards == (1, 600, 40) and arr.chunks == (1, 300, 40) and np.array_equal(arr[:], stack)
    assert read_image(tmp_path / "s.zarr").spacing == pytest.approx((8.0, 4.0, 4.0))
    with pytest.raises(InputError, match="'s.tif' is not one"):
        write_image(tmp_path / "s.tif", stack, zarr_format=3)
    assert not (tmp_path / "s.tif").exists()


@pytest.mark.parametrize("bad", [4, "x", 2.5, True])
def test_a_zarr_format_other_than_2_or_3_is_refused_before_any_store(tmp_path, bad):
    with pytest.raises(InputError, match="zarr format must be 2 or 3"):
        ZarrWriter(tmp_path / "o.zarr", (4, 4), np.uint8, zarr_format=bad)
    assert list(tmp_path.iterdir()) == []
