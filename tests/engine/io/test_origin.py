"""Where an output lies: a region's place in the image it was cut from, the finer grid of
super-resolution and a pyramid level's coarser one, recorded in zarr outputs (``origin``,
OME-NGFF translations) and read back as a napari layer's ``translate``."""

from __future__ import annotations

import json

import numpy as np
import pytest
import zarr

from napari_emdiffuse._reader import get_ome_reader, layer_meta
from napari_emdiffuse.api import reconstruct_isotropic, restore, restore_to_zarr
from napari_emdiffuse.cli import main
from napari_emdiffuse.engine.errors import InputError
from napari_emdiffuse.engine.io import pyramid
from napari_emdiffuse.engine.io.images import read_image, write_image
from napari_emdiffuse.engine.io.spacing import output_origin

from tests.conftest import make_tiny
from tests.engine.io.test_n5 import _write_n5
from tests.engine.io.test_precomputed import _precomputed

ONE = dict(steps=1, tile=32, overlap=8, device="cpu", dtype=np.float32)


@pytest.fixture(scope="module")
def model():
    return make_tiny("denoise")


def _index_of(origin, spacing):
    """The input pixel an output's first pixel centre lies on (origin / spacing)."""
    return tuple(o / s for o, s in zip(origin, spacing))


def test_a_region_store_lies_where_its_pixels_came_from(model, tmp_path):
    """The region's first pixel lies on input pixel (y0, x0): the whole run's pixel there;
    another region lies elsewhere (the control)."""
    rng = np.random.default_rng(3)
    img = (rng.random((96, 112)) * 255).astype(np.uint8)
    whole = restore(img, "denoise", model, **ONE).mean
    for box in ((20, 70, 33, 90), (0, 40, 60, 112)):
        out = restore_to_zarr(img, tmp_path / f"r{box[0]}.zarr", "denoise", model, region=box, spacing=(4.0, 5.0),
                              block=32, **ONE)  # fmt: skip
        back = read_image(out)
        assert back.origin == pytest.approx((4.0 * box[0], 5.0 * box[2])) or (box[0], box[2]) == (0, 0)
        y, x = (int(round(v)) for v in _index_of(back.origin or (0.0, 0.0), back.spacing))
        assert (y, x) == (box[0], box[2])
        assert np.abs(np.asarray(back.data) - whole[y : y + back.data.shape[0], x : x + back.data.shape[1]]).max() < 0.05
    # the whole image records nothing: it lies where it always did
    assert read_image(restore_to_zarr(img, tmp_path / "w.zarr", "denoise", model, block=64, **ONE)).origin is None


def test_an_ome_zarr_region_places_every_level_over_the_input(model, tmp_path, monkeypatch):
    """OME-NGFF translation per level: the centre of a level's pixel is the mean of the
    centres of the full-resolution pixels it averages; napari's reader gives the translate."""
    monkeypatch.setattr(pyramid, "PYRAMID_TOP", 16)
    img = (np.random.default_rng(4).random((2, 90, 100)) * 255).astype(np.uint8)
    out = restore_to_zarr(img, tmp_path / "r.ome.zarr", "denoise", model, region=(10, 74, 20, 84),
                          spacing=(30.0, 4.0, 4.0), origin=(60.0, 0.0, 1000.0), block=32, **ONE)  # fmt: skip
    datasets = zarr.open_group(str(out), mode="r").attrs["multiscales"][0]["datasets"]
    for k, ds in enumerate(datasets):
        scale, shift = (t[t["type"]] for t in ds["coordinateTransformations"])
        f = 2**k
        # level k pixel 0 averages full-resolution pixels 0..f-1: its centre is their mean
        centres = [60.0, 40.0 + np.mean(np.arange(f)) * 4.0, 1080.0 + np.mean(np.arange(f)) * 4.0]
        assert scale == [30.0, 4.0 * f, 4.0 * f] and shift == pytest.approx(centres)
    assert len(datasets) == 3
    layers = get_ome_reader(str(out))(str(out))
    assert layers[0][1]["translate"] == pytest.approx((60.0, 40.0, 1080.0))


def test_super_resolution_lies_a_quarter_input_pixel_back():
    """x2: input pixel i spans [i - 1/2, i + 1/2]; its two output pixels are centred at
    i - 1/4 and i + 1/4. With a region, from its first row and column on."""
    assert output_origin(None, (8.0, 8.0), 2, scale=2) == (-2.0, -2.0)
    assert output_origin((0.0, 100.0, 200.0), (30.0, 8.0, 8.0), 3, scale=2, start=(3, 5)) == (0.0, 122.0, 238.0)
    assert output_origin((1.0, 1.0), None, 2, scale=2, start=(2, 0)) == (2.75, 0.75)  # in pixels
    assert output_origin(None, (4.0, 4.0), 2, scale=1 / 4) == (6.0, 6.0)  # a 4 x 4 bin's centre
    with pytest.raises(InputError, match="one value per axis"):
        output_origin((1.0,), (4.0, 4.0), 2)
    for bad in ("ab", (float("nan"), 0.0), (None, 1.0)):
        with pytest.raises(InputError, match="an origin and a spacing are"):
            output_origin(bad, (4.0, 4.0), 2)


def test_a_super_resolved_region_into_a_store(tmp_path):
    sr = make_tiny("super-resolve")
    img = (np.random.default_rng(5).random((40, 48)) * 255).astype(np.uint8)
    out = restore_to_zarr(img, tmp_path / "sr.zarr", "super-resolve", sr, region=(8, 40, 16, 48), spacing=(8.0, 8.0),
                          block=32, **ONE)  # fmt: skip
    back = read_image(out)
    assert back.spacing == (4.0, 4.0) and back.origin == pytest.approx((8 * 8.0 - 2.0, 16 * 8.0 - 2.0))
    mem = restore(img, "super-resolve", sr, spacing=(8.0, 8.0), **ONE)
    assert mem.origin == pytest.approx((-2.0, -2.0))


def test_an_isotropic_region_keeps_its_slices_and_moves_laterally(tmp_path):
    iso = make_tiny("isotropic-i")
    vol = (np.random.default_rng(6).random((3, 40, 40)) * 255).astype(np.uint8)
    res = reconstruct_isotropic(vol, 3, iso, region=(4, 36, 8, 40), spacing=(24.0, 8.0, 8.0), origin=(48.0, 0.0, 0.0),
                                out=tmp_path / "iso.zarr", block=32, **ONE)  # fmt: skip
    assert res.origin == pytest.approx((48.0, 32.0, 64.0))
    assert read_image(res.path).origin == pytest.approx((48.0, 32.0, 64.0))
    # a volume read from a store brings its own origin
    write_image(tmp_path / "v.zarr", vol, spacing=(24.0, 8.0, 8.0), origin=(0.0, 80.0, 0.0))
    again = reconstruct_isotropic(str(tmp_path / "v.zarr"), 3, iso, **ONE)
    assert again.origin == pytest.approx((0.0, 80.0, 0.0)) and again.spacing == (8.0, 8.0, 8.0)


def test_origins_other_writers_record_are_read(tmp_path):
    """OME-NGFF 0.4 with a multiscale's own scale and translation around the dataset's; our
    ``origin`` attribute in micrometres; zeros or malformed values are no origin."""
    g = zarr.open_group(str(tmp_path / "a.ome.zarr"), mode="w", zarr_format=2)
    g.create_array("0", shape=(8, 8), dtype="u1")
    g.attrs["multiscales"] = [{
        "version": "0.4", "axes": [{"name": "y", "type": "space", "unit": "micrometer"},
                                   {"name": "x", "type": "space", "unit": "micrometer"}],
        "datasets": [{"path": "0", "coordinateTransformations": [{"type": "scale", "scale": [0.004, 0.004]},
                                                                 {"type": "translation", "translation": [0.1, 0.2]}]}],
        "coordinateTransformations": [{"type": "scale", "scale": [2.0, 2.0]},
                                      {"type": "translation", "translation": [1.0, 0.0]}],
    }]  # fmt: skip
    back = read_image(tmp_path / "a.ome.zarr")
    assert back.spacing == pytest.approx((8.0, 8.0)) and back.origin == pytest.approx((1200.0, 400.0))
    arr = zarr.open_array(str(tmp_path / "b.zarr"), mode="w", shape=(4, 4), dtype="u1", zarr_format=2)
    arr.attrs.update({"spacing": [0.01, 0.01], "unit": "micrometer", "origin": [0.5, 0.0]})
    assert read_image(tmp_path / "b.zarr").origin == pytest.approx((500.0, 0.0))
    for bad in ([0, 0], ["a", 1], [1.0], [float("nan"), 1.0]):
        arr.attrs["origin"] = bad
        assert read_image(tmp_path / "b.zarr").origin is None, bad
    with pytest.raises(InputError, match="origin has 1 values but the image has 2 axes"):
        write_image(tmp_path / "c.zarr", np.zeros((4, 4), np.uint8), origin=(1.0,))
    assert layer_meta(read_image(tmp_path / "b.zarr"), "b").get("translate") is None


def test_n5_and_precomputed_volumes_bring_their_place(tmp_path):
    vol = (np.arange(4 * 6 * 8) % 251).astype(np.uint8).reshape(4, 6, 8)
    cosem = {"transform": {"axes": ["z", "y", "x"], "ordering": "C", "scale": [8.0, 4.0, 4.0],
                           "translate": [16.0, 2.0, 6.0], "units": ["nm"] * 3}}  # fmt: skip
    _write_n5(tmp_path / "v.n5" / "em" / "s1", vol, attrs=cosem)
    assert read_image(tmp_path / "v.n5" / "em" / "s1").origin == (16.0, 2.0, 6.0)
    # precomputed: voxel_offset (x, y, z) of 4 x 4 x 40 nm voxels, each [i, i + 1)
    _precomputed(tmp_path / "pc", vol, offset=(10, 20, 2))
    assert read_image(tmp_path / "pc").origin == (400.0, 80.0, 8.0)
    _precomputed(tmp_path / "pc0", vol, offset=(0, 0, 0))
    assert read_image(tmp_path / "pc0").origin is None


def test_cli_carries_the_origin_through_restore_and_convert(model, tmp_path, capsys):
    """A region store restored again, or cut and binned by convert, stays in place."""
    img = (np.random.default_rng(7).random((64, 64)) * 255).astype(np.uint8)
    write_image(tmp_path / "in.zarr", img, spacing=(4.0, 4.0), origin=(100.0, 200.0))
    model.save(tmp_path / "m")
    assert main(["denoise", str(tmp_path / "in.zarr"), "-o", str(tmp_path / "out.zarr"), "--model",
                 str(tmp_path / "m"), "--region", "8", "40", "16", "48", "--steps", "1", "--tile", "32",
                 "--overlap", "8", "--device", "cpu"]) == 0  # fmt: skip
    assert read_image(tmp_path / "out.zarr").origin == pytest.approx((132.0, 264.0))
    capsys.readouterr()
    assert main(["info", str(tmp_path / "out.zarr")]) == 0
    assert "first pixel at 132 x 264 nm" in capsys.readouterr().out
    assert main(["convert", str(tmp_path / "in.zarr"), "-o", str(tmp_path / "c.zarr"), "--region", "8", "40", "16", "48",
                 "--bin", "2"]) == 0  # fmt: skip
    back = read_image(tmp_path / "c.zarr")
    # rows 8-9 binned: centre at row 8.5 of the input
    assert back.spacing == (8.0, 8.0) and back.origin == pytest.approx((100.0 + 8.5 * 4, 200.0 + 16.5 * 4))
    capsys.readouterr()


def test_a_widget_source_gives_its_translate_where_units_agree():
    from napari_emdiffuse.widgets._layers import source_origin

    src = {"spacing": (4.0, 4.0), "scale": (4.0, 4.0), "translate": (8.0, 0.0)}
    assert source_origin(src) == (8.0, 0.0)
    assert source_origin({**src, "translate": (0.0, 0.0)}) is None
    # the layer is unscaled and the engine gets the file's nm: a translate in pixels is no origin
    assert source_origin({**src, "scale": (1.0, 1.0)}) is None


def test_a_level_below_full_resolution_lists_its_translation_after_its_scale(tmp_path):
    """The order OME-NGFF asks for (checked with ome-zarr-models 1.7, v04 and v05)."""
    write_image(tmp_path / "o.ome.zarr", np.zeros((600, 600), np.uint8), spacing=(4.0, 4.0), origin=(4.0, 8.0))
    attrs = json.loads((tmp_path / "o.ome.zarr" / ".zattrs").read_text())
    ds = attrs["multiscales"][0]["datasets"]
    assert [t["type"] for t in ds[1]["coordinateTransformations"]] == ["scale", "translation"]
    assert ds[1]["coordinateTransformations"][1]["translation"] == [6.0, 10.0]


def test_a_resumed_store_takes_the_place_it_is_finished_with(tmp_path):
    """A store begun by a run told one place and finished by a run told another records the
    latter, in its attributes and its OME-NGFF metadata alike."""
    from napari_emdiffuse.engine.io.zarr import ZarrWriter

    out = tmp_path / "r.ome.zarr"
    first = ZarrWriter(out, (8, 8), np.uint8, spacing=(4.0, 4.0), origin=(4.0, 0.0), resume_key="k")
    first.array[:4] = 1
    first.abort()  # kept for the next run of the same key
    for origin, want in (((8.0, 0.0), [8.0, 0.0]), (None, None)):
        again = ZarrWriter(out, (8, 8), np.uint8, spacing=(4.0, 4.0), origin=origin, resume_key="k", overwrite=True)
        assert again.resumed and int(again.array[0, 0]) == 1
        again.array[4:] = 2
        again.abort()
    again = ZarrWriter(out, (8, 8), np.uint8, spacing=(4.0, 4.0), origin=(8.0, 0.0), resume_key="k", overwrite=True)
    again.commit()
    assert read_image(out).origin == (8.0, 0.0)
    again = ZarrWriter(out, (8, 8), np.uint8, spacing=(4.0, 4.0), origin=(4.0, 0.0), resume_key="k2", overwrite=True)
    again.abort()
    done = ZarrWriter(out, (8, 8), np.uint8, spacing=(4.0, 4.0), resume_key="k2", overwrite=True)
    assert done.resumed
    done.commit()
    assert read_image(out).origin is None


def test_a_tiff_cut_out_has_the_coordinates_fiji_gives_the_whole(model, tmp_path, capsys):
    """ImageJ counts a pixel's position from its corner: ``(i - xorigin) x pixel size``. A
    region's TIFF starts where the region does, in the input's pixels and in a finer grid's
    (x2: from output pixel 2 x0), and reads back as the origin it was written with."""
    import tifffile

    img = (np.random.default_rng(8).random((64, 80)) * 255).astype(np.uint8)
    write_image(tmp_path / "in.tif", img, spacing=(4.0, 4.0))
    assert read_image(tmp_path / "in.tif").origin is None
    model.save(tmp_path / "m")
    sr = make_tiny("super-resolve")
    sr.save(tmp_path / "sr")
    fast = ["--steps", "1", "--tile", "32", "--overlap", "8", "--device", "cpu"]
    assert main(["denoise", str(tmp_path / "in.tif"), "-o", str(tmp_path / "part.tif"), "--model", str(tmp_path / "m"),
                 "--region", "8", "40", "16", "48", *fast]) == 0  # fmt: skip
    ij = tifffile.TiffFile(tmp_path / "part.tif").imagej_metadata
    assert (ij["yorigin"], ij["xorigin"]) == (-8.0, -16.0)
    assert read_image(tmp_path / "part.tif").origin == (32.0, 64.0)
    assert main(["super-resolve", str(tmp_path / "in.tif"), "-o", str(tmp_path / "sr.tif"), "--model",
                 str(tmp_path / "sr"), "--region", "8", "40", "16", "48", *fast]) == 0  # fmt: skip
    ij = tifffile.TiffFile(tmp_path / "sr.tif").imagej_metadata
    assert (ij["yorigin"], ij["xorigin"]) == (-16.0, -32.0)  # output pixels of 2 nm: the region's corner
    assert main(["convert", str(tmp_path / "in.tif"), "-o", str(tmp_path / "bin.tif"), "--region", "8", "40", "16", "48",
                 "--bin", "2"]) == 0  # fmt: skip
    ij = tifffile.TiffFile(tmp_path / "bin.tif").imagej_metadata
    assert (ij["yorigin"], ij["xorigin"]) == (-4.0, -8.0)  # 8 nm bins from the region's corner
    # a TIFF that is not an ImageJ hyperstack records none
    write_image(tmp_path / "i16.tif", img.astype(np.int16), spacing=(4.0, 4.0), origin=(8.0, 8.0))
    assert read_image(tmp_path / "i16.tif").origin is None
    capsys.readouterr()
