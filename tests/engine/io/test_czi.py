"""Zeiss CZI files, written here by Zeiss's own pylibCZIrw (the `czi` extra; skipped without it):
stacks, mosaics of tiles, channels, their voxel size; read lazily, region by region."""

from __future__ import annotations

import pickle
import sys

import numpy as np
import pytest

from napari_emdiffuse.engine.errors import InputError
from napari_emdiffuse.engine.io.images import read_image
from napari_emdiffuse.engine.io.sources import open_source, source_of

pyczi = pytest.importorskip("pylibCZIrw.czi", reason="pylibCZIrw (the czi extra) is not installed")


def _czi(path, planes, *, scale=(5e-9, 5e-9, 40e-9), names=None):
    """``planes``: (array, {"Z":, "C":, "T":}, (x, y) location)."""
    with pyczi.create_czi(str(path), exist_ok=True) as w:
        for pixels, plane, at in planes:
            w.write(pixels[..., None] if pixels.ndim == 2 else pixels, plane=plane, location=at)
        w.write_metadata(document_name="t", channel_names=names, scale_x=scale[0], scale_y=scale[1], scale_z=scale[2])
    return path


def _vol(seed=0):
    return (np.random.default_rng(seed).random((3, 40, 50)) * 60000).astype(np.uint16)


def test_a_stack_reads_lazily_with_its_voxel_size_and_travels_to_workers(tmp_path):
    vol = _vol()
    path = _czi(tmp_path / "s.czi", [(vol[z], {"Z": z, "C": 0, "T": 0}, (100, 200)) for z in range(3)])
    img = read_image(path)
    assert img.axes == "ZYX" and img.spacing == (40.0, 5.0, 5.0) and img.unit == "nm" and img.data.dtype == np.uint16
    assert np.array_equal(np.asarray(img.data), vol)
    assert np.array_equal(img.data[2, 33:4:-3, 1:48:5], vol[2, 33:4:-3, 1:48:5])
    again = pickle.loads(pickle.dumps(img.data))  # a cluster worker opens the file itself
    assert np.array_equal(np.asarray(again[1]), vol[1])
    assert np.array_equal(np.asarray(open_source(*source_of(img.data))), vol)


def test_tiles_are_stitched_by_their_positions_and_one_plane_is_an_image(tmp_path):
    a, b = _vol(1)[0], _vol(2)[0]
    path = _czi(tmp_path / "m.czi", [(a, {"Z": 0, "C": 0, "T": 0}, (0, 0)), (b, {"Z": 0, "C": 0, "T": 0}, (60, 10))])
    img = read_image(path)
    assert img.axes == "YX" and img.data.shape == (50, 110) and img.spacing == (5.0, 5.0)
    got = np.asarray(img.data)
    assert np.array_equal(got[:40, :50], a) and np.array_equal(got[10:50, 60:110], b)
    assert not got[45:, :50].any()  # no tile there: background


def test_a_channel_is_picked_and_several_are_refused_in_one_line(tmp_path, capsys):
    from napari_emdiffuse.cli import main

    vol = _vol(3)
    path = _czi(tmp_path / "c.czi", [(vol[c], {"Z": 0, "C": c, "T": 0}, (0, 0)) for c in range(2)],
                names={0: "SE2", 1: "InLens"})  # fmt: skip
    picked = read_image(path, channel=1)
    assert picked.axes == "YX" and np.array_equal(np.asarray(picked.data), vol[1]) and picked.spacing == (5.0, 5.0)
    from napari_emdiffuse._reader import get_reader

    layers = get_reader(str(path))(str(path))  # napari: a layer per channel, each restorable
    assert [meta["name"] for _, meta, _ in layers] == ["c [channel 0]", "c [channel 1]"]
    assert np.array_equal(np.asarray(layers[1][0]), vol[1]) and layers[1][1]["scale"] == (5.0, 5.0)
    assert main(["denoise", str(path), "-o", str(tmp_path / "out.tif")]) == 2
    err = capsys.readouterr().err
    assert "has 2 channels" in err and "--channel C" in err and "Traceback" not in err


def test_colour_damaged_and_missing_library_are_refused_in_one_line(tmp_path, monkeypatch):
    rgb = (np.random.default_rng(4).random((20, 30, 3)) * 255).astype(np.uint8)
    colour = _czi(tmp_path / "rgb.czi", [(rgb, {"Z": 0, "C": 0, "T": 0}, (0, 0))])
    damaged = tmp_path / "bad.czi"
    damaged.write_bytes(b"ZISRAWFILE" + b"\x00" * 200)
    for path, needle in ((colour, "its pixels are Bgr24"), (damaged, "cannot read")):
        with pytest.raises(InputError, match=needle) as exc:
            np.asarray(read_image(path).data)
        assert "\n" not in str(exc.value)
    monkeypatch.setitem(sys.modules, "pylibCZIrw.czi", None)  # as if the extra were not installed
    with pytest.raises(InputError, match=r"needs Zeiss's pylibCZIrw: pip install"):
        read_image(_czi(tmp_path / "x.czi", [(_vol()[0], {"Z": 0, "C": 0, "T": 0}, (0, 0))]))


def test_each_scene_of_several_is_an_image_named_by_its_index(tmp_path, capsys):
    """A tile scan of two regions: each scene reads as its own image (its own plane, not the
    mosaic around both), lists, batches, travels to workers and opens as a napari layer."""
    from napari_emdiffuse._reader import get_reader
    from napari_emdiffuse.cli import main
    from napari_emdiffuse.engine.io.batch import expand_inputs, plan_batch
    from napari_emdiffuse.engine.io.images import image_names

    a, b = _vol(5)[0], _vol(6)[1, :30, :20]
    path = tmp_path / "session.czi"
    with pyczi.create_czi(str(path), exist_ok=True) as w:
        w.write(a[..., None], plane={"Z": 0, "C": 0, "T": 0}, scene=0, location=(0, 0))
        w.write(b[..., None], plane={"Z": 0, "C": 0, "T": 0}, scene=1, location=(300, 100))
        w.write_metadata(document_name="t", scale_x=4e-9, scale_y=4e-9)
    assert image_names(path) == [f"{path}/scene-0", f"{path}/scene-1"]
    one = read_image(path / "scene-1")
    assert one.axes == "YX" and one.spacing == (4.0, 4.0) and np.array_equal(np.asarray(one.data), b)
    assert np.array_equal(np.asarray(read_image(path, key="scene-0").data), a)
    assert np.array_equal(one.data[5:25:2, 3:], b[5:25:2, 3:])
    assert np.array_equal(np.asarray(pickle.loads(pickle.dumps(one.data))), b)
    assert np.array_equal(np.asarray(open_source(*source_of(one.data))), b)
    files = expand_inputs([str(path)])
    assert [o.name for _, o, _ in plan_batch(files, tmp_path / "out")] == ["session_scene-0.tif", "session_scene-1.tif"]
    layers = get_reader(str(path))(str(path))
    assert [m["name"] for _, m, _ in layers] == ["session [scene-0]", "session [scene-1]"]
    assert np.array_equal(np.asarray(layers[1][0]), b)
    for name, needle in (("", r"holds 2 scenes \(scene-0, scene-1\); name one"), ("scene-2", "holds no scene-2"),
                         ("tile-1", "scenes are named scene-0")):
        with pytest.raises(InputError, match=needle) as exc:
            read_image(path / name if name else path)
        assert "\n" not in str(exc.value)
    assert main(["denoise", str(path), "-o", str(tmp_path / "x.tif")]) == 2
    assert "name one" in capsys.readouterr().err
