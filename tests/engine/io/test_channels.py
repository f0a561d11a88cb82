"""One channel or time point of a multi-channel or time-lapse image (two SEM detectors, CLEM):
picked by its declared axis, lazily for stores, with its spacing; and refused in one line."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile
import zarr

from napari_emdiffuse.engine.errors import InputError
from napari_emdiffuse.engine.io.images import read_image
from napari_emdiffuse.engine.io.sources import open_source, source_of
from napari_emdiffuse.engine.io.views import AxesPicked
from tests.conftest import write_tczyx_ome


@pytest.fixture
def tzcyx():
    return (np.arange(2 * 3 * 2 * 4 * 5) % 251).astype(np.uint8).reshape(2, 3, 2, 4, 5)


def test_an_imagej_hyperstack_gives_the_channel_and_time_point_asked_for(tmp_path, tzcyx):
    path = tmp_path / "hs.tif"
    tifffile.imwrite(path, tzcyx, imagej=True, resolution=(0.25, 0.25), metadata={"axes": "TZCYX", "spacing": 40, "unit": "nm"})
    whole = read_image(path)
    assert whole.data.shape == tzcyx.shape and whole.axes == "TZCYX"
    for t, c in [(0, 0), (1, 0), (0, 1), (1, 1)]:  # C sits between Z and Y here
        img = read_image(path, channel=c, time=t)
        assert np.array_equal(img.data, tzcyx[t, :, c]) and img.axes == "ZYX" and img.spacing == (40.0, 4.0, 4.0)
    assert read_image(path, time=1).axes == "ZCYX"  # the channels stay when only a time point is asked


@pytest.mark.parametrize("version", ["0.4", "0.5"])
def test_an_ome_zarr_channel_stays_lazy_and_reopens_where_it_lives(tmp_path, tzcyx, version):
    tczyx = np.ascontiguousarray(tzcyx.transpose(0, 2, 1, 3, 4))
    store = write_tczyx_ome(tmp_path / "c.ome.zarr", tczyx, version=version)
    img = read_image(store, channel=1, time=1)
    assert isinstance(img.data, AxesPicked) and img.axes == "ZYX" and img.data.shape == (3, 4, 5)
    np.testing.assert_allclose(img.spacing, (40.0, 8.0, 8.0), rtol=1e-6)
    assert np.array_equal(np.asarray(img.data), tczyx[1, 1]) and np.array_equal(img.data[2, 1:3], tczyx[1, 1, 2, 1:3])
    where = source_of(img.data)  # what a cluster worker opens
    assert where[2:] == ((1, 1), ()) and np.array_equal(np.asarray(open_source(*where)), tczyx[1, 1])


def test_a_lazy_store_with_the_channel_in_the_middle_is_read_through_dask(tmp_path, tzcyx):
    from napari_emdiffuse.engine.io.images import write_image

    zcyx = tzcyx[1]
    write_image(tmp_path / "v.zarr", zcyx, axes="ZCYX", spacing=(40.0, 1.0, 4.0, 4.0))
    img = read_image(tmp_path / "v.zarr", channel=1)
    assert hasattr(img.data, "dask") and img.axes == "ZYX" and img.spacing == (40.0, 4.0, 4.0)
    assert np.array_equal(img.data.compute(), zcyx[:, 1])


@pytest.mark.parametrize(("kw", "message"), [
    ({"channel": 2}, r"has 2 channels \(0 to 1\); channel 2 does not exist"),
    ({"time": 5}, r"has 2 time points \(0 to 1\); time point 5 does not exist"),
    ({"channel": -1}, "must be a whole number from 0"),
    ({"channel": 1.0}, "must be a whole number from 0"),
])  # fmt: skip
def test_bad_picks_are_refused_in_one_line(tmp_path, tzcyx, kw, message):
    path = tmp_path / "hs.tif"
    tifffile.imwrite(path, tzcyx, imagej=True, metadata={"axes": "TZCYX"})
    with pytest.raises(InputError, match=message):
        read_image(path, **kw)


def test_an_image_with_one_channel_or_undeclared_axes(tmp_path):
    tifffile.imwrite(tmp_path / "one.tif", np.zeros((3, 4, 5), np.uint8))
    assert read_image(tmp_path / "one.tif", channel=0, time=0).data.shape == (3, 4, 5)  # the only one
    with pytest.raises(InputError, match=r"has a single channel \(axes not declared\); channel 1 does not exist"):
        read_image(tmp_path / "one.tif", channel=1)
    zarr.open_array(str(tmp_path / "raw.zarr"), mode="w", shape=(2, 3, 4, 5), dtype="uint8")
    with pytest.raises(InputError, match="does not declare its axes"):
        read_image(tmp_path / "raw.zarr", channel=0)


def test_the_cli_reads_one_channel_and_says_how_to_when_it_is_not_given(tmp_path, tzcyx, capsys):
    from napari_emdiffuse.cli import main

    path = tmp_path / "hs.tif"
    tifffile.imwrite(path, tzcyx[0], imagej=True, metadata={"axes": "ZCYX"})
    assert main(["info", str(path)]) == 0
    assert "hs.tif: 3 x 2 x 4 x 5 uint8, axes ZCYX, no pixel size; 2 channels: restore one with --channel C" in (
        capsys.readouterr().out)
    assert main(["info", str(path), "--channel", "1"]) == 0
    assert "hs.tif: 3 x 4 x 5 uint8, axes ZYX" in capsys.readouterr().out
    assert main(["denoise", str(path), "-o", str(tmp_path / "out.tif")]) == 2
    assert "has 2 channels (axes ZCYX); restore one at a time (--channel C" in capsys.readouterr().err
    assert not (tmp_path / "out.tif").exists()
    assert main(["isotropic", str(path), "-o", str(tmp_path / "iso.tif"), "--channel", "-1"]) == 2
    assert "expected an integer >= 0" in capsys.readouterr().err


def test_napari_opens_each_channel_of_an_ome_zarr_as_a_layer(tmp_path, tzcyx):
    from napari_emdiffuse._reader import get_ome_reader

    tczyx = np.ascontiguousarray(tzcyx[:1].transpose(0, 2, 1, 3, 4))
    store = write_tczyx_ome(tmp_path / "clem.ome.zarr", tczyx)
    layers = get_ome_reader(str(store))(str(store))
    assert [m["name"] for _, m, _ in layers] == ["clem [channel 0]", "clem [channel 1]"]
    for c, (data, meta, kind) in enumerate(layers):
        assert kind == "image" and np.array_equal(np.asarray(data), tczyx[0, c])
        assert meta["scale"] == pytest.approx((40.0, 8.0, 8.0))


def test_a_recipe_image_names_its_channel(tmp_path, tzcyx):
    from napari_emdiffuse.engine.training.config import ImageSource

    path = tmp_path / "hs.tif"
    tifffile.imwrite(path, tzcyx[0], imagej=True, metadata={"axes": "ZCYX"})
    got = ImageSource.model_validate({"path": str(path), "channel": 1, "y": "1:3"}).load()
    assert np.array_equal(got, tzcyx[0, :, 1, 1:3])
    with pytest.raises(Exception, match="greater than or equal to 0"):
        ImageSource.model_validate({"path": str(path), "channel": -1})


def test_a_finetune_learns_from_the_channel_asked_for(tmp_path, tiny_model_dir):
    from napari_emdiffuse.cli import main
    from napari_emdiffuse.engine.models.files import read_card

    two = np.stack([np.zeros((96, 96), np.uint8), (np.random.default_rng(0).random((96, 96)) * 200 + 20).astype(np.uint8)])
    path = tmp_path / "two.tif"
    tifffile.imwrite(path, two, imagej=True, metadata={"axes": "CYX"})
    args = ["finetune", "--task", "denoise", "--input", str(path), "--base", str(tiny_model_dir), "--iterations", "2",
            "--patch", "32", "--batch", "2", "--device", "cpu", "--objective", "supervised"]
    assert main([*args, "-o", str(tmp_path / "m0")]) == 2  # two channels, none picked: refused, nothing saved
    assert not (tmp_path / "m0" / "model.yaml").exists()
    assert main([*args, "-o", str(tmp_path / "m1"), "--channel", "1"]) == 0
    assert "two.tif" in str(read_card(tmp_path / "m1").training)


def test_two_channels_of_one_image_are_not_taken_for_two_sections(tmp_path, capsys):
    """A CYX image is 3-D like a stack: restored as one, its detectors would be averaged along z."""
    from napari_emdiffuse.cli import main

    path = tmp_path / "inlens_esb.tif"
    tifffile.imwrite(path, np.zeros((2, 40, 40), np.uint8), imagej=True, metadata={"axes": "CYX"})
    assert main(["denoise", str(path), "-o", str(tmp_path / "out.tif")]) == 2
    assert "has 2 channels (axes CYX); restore one at a time" in capsys.readouterr().err
    # the control: frames (an in-situ series, or sections labelled as frames) restore as a stack
    frames = (np.random.default_rng(0).random((2, 40, 40)) * 200).astype(np.uint8)
    tifffile.imwrite(tmp_path / "frames.tif", frames, imagej=True, metadata={"axes": "TYX"})
    assert main(["denoise", str(tmp_path / "frames.tif"), "-o", str(tmp_path / "f.tif"), "--z-filter", "off"]) == 0
    assert tifffile.imread(tmp_path / "f.tif").shape == (2, 40, 40)
