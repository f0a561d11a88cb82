"""Thermo Fisher Velox .emd files (written here as Velox lays them out): images named after
their detectors, (y, x, frames) datasets seen frames first, the pixel size from the JSON."""

from __future__ import annotations

import itertools
import json
import pickle

import h5py
import numpy as np
import pytest

from napari_emdiffuse.engine.errors import InputError
from napari_emdiffuse.engine.io.images import image_names, read_image
from napari_emdiffuse.engine.io.sources import open_source, source_of


def _velox(path, images):
    """``images``: (id, detector, (y, x, frames) array, pixel size in metres)."""
    with h5py.File(path, "w") as f:
        f.create_group("Data/SpectrumStream")  # EDS streams are not images
        for ident, detector, arr, px in images:
            g = f.create_group(f"Data/Image/{ident}")
            g.create_dataset("Data", data=arr, chunks=(*arr.shape[:2], 1))
            md = {"BinaryResult": {"Detector": detector, "PixelUnitX": "m", "PixelUnitY": "m",
                                   "PixelSize": {"width": f"{px:.6e}", "height": f"{px:.6e}"}}}  # fmt: skip
            text = np.frombuffer(json.dumps(md).encode(), np.uint8)
            meta = np.zeros((len(text) + 9, arr.shape[2]), np.uint8)
            meta[: len(text)] = text[:, None]
            g.create_dataset("Metadata", data=meta)
    return path


def _yxn(n, seed=0):
    return (np.random.default_rng(seed).random((12, 16, n)) * 60000).astype(np.uint16)


def test_a_velox_image_reads_with_its_pixel_size(tmp_path):
    arr = _yxn(1)
    path = _velox(tmp_path / "tem.emd", [("a1b2", "BM-Ceta", arr, 5e-11)])
    img = read_image(path)
    assert img.data.shape == (12, 16) and img.axes == "YX" and img.unit == "nm"
    assert img.spacing == pytest.approx((0.05, 0.05))
    assert np.array_equal(np.asarray(img.data), arr[..., 0]) and np.asarray(img.data).dtype == np.uint16


def test_dpc_segments_and_derived_images_are_named_as_velox_shows_them(tmp_path):
    """A DF4 acquisition (HyperSpy's DPC test file is laid out so): four segment images whose
    metadata all say "DF4", named by the STEM input operation that reads each, and an iDPC
    image named by its display's label (URL-encoded, as Velox stores it)."""
    parts = [(f"s{i}", "DF4", _yxn(1, i), 1e-10) for i in range(4)] + [("i0", "DF4", _yxn(1, 9), 1e-10)]
    path = _velox(tmp_path / "dpc.emd", parts)
    with h5py.File(path, "a") as f:
        for i, seg in enumerate("ABCD"):
            entry = {"dataPath": f"/Data/Image/s{i}", "detector": f"DF4-{seg}"}
            f.create_dataset(f"Operations/StemInputOperation/op{i}", data=[json.dumps(entry).encode()])
        shown = {"dataPath": "/Data/Image/i0", "display": {"label": "Filtered%20iDPC"}}
        f.create_dataset("Presentation/Displays/ImageDisplay/d0", data=[json.dumps(shown).encode()])
    assert image_names(path) == [f"{path}/Filtered-iDPC", f"{path}/DF4-A", f"{path}/DF4-B", f"{path}/DF4-C",
                                 f"{path}/DF4-D"]  # fmt: skip (the file's order)
    assert np.array_equal(np.asarray(read_image(f"{path}/DF4-C").data), parts[2][2][..., 0])


def test_stem_detectors_are_named_and_one_must_be_chosen(tmp_path, capsys):
    from napari_emdiffuse.cli import main

    haadf, bf = _yxn(1, 1), _yxn(1, 2)
    fft = np.zeros((12, 16, 1), [("realFloatHalfEven", "<f4"), ("imagFloatHalfEven", "<f4")])
    path = _velox(tmp_path / "stem.emd", [("c0", "HAADF", haadf, 2e-10), ("c1", "BF", bf, 2e-10)])
    with h5py.File(path, "a") as f:
        f.create_dataset("Data/Image/c2/Data", data=fft)  # a complex FFT: not an image
    with pytest.raises(InputError, match=r"several datasets \(HAADF, BF\); choose one, e.g. '.*stem.emd/HAADF'"):
        read_image(path)
    assert image_names(path) == [f"{path}/HAADF", f"{path}/BF"]
    assert np.array_equal(np.asarray(read_image(tmp_path / "stem.emd" / "bf").data), bf[..., 0])
    assert read_image(f"{path}/Data/Image/c0/Data").spacing == pytest.approx((0.2, 0.2))  # the dataset's path
    with pytest.raises(InputError, match="no dataset 'DF4' in it"):
        read_image(f"{path}/DF4")
    assert main(["info", str(path)]) == 0
    out = capsys.readouterr().out
    assert "stem.emd/HAADF: 12 x 16 uint16" in out and "stem.emd/BF" in out


def test_a_velox_series_reads_frames_first_lazily_and_reopens_in_workers(tmp_path, capsys):
    arr = _yxn(5, 3)
    path = _velox(tmp_path / "series.emd", [("s", "HAADF", arr, 1e-9)])
    img = read_image(path)
    ref = np.moveaxis(arr, -1, 0)
    assert img.data.shape == (5, 12, 16) and img.axes == "TYX" and img.spacing == pytest.approx((1.0, 1.0, 1.0))
    for key in itertools.product([1, -1, slice(None), slice(None, None, -2)], [2, slice(1, 9, 3)], [slice(None), -3]):
        assert np.array_equal(img.data[key], ref[key]), key
    assert np.array_equal(pickle.loads(pickle.dumps(img.data))[2], ref[2])
    where = source_of(img.data)
    assert where == (str(path.resolve()), "Data/Image/s/Data", (), ())
    assert np.array_equal(np.asarray(open_source(*where)), ref)
    from napari_emdiffuse.cli import main

    assert main(["info", str(path)]) == 0
    assert "5 x 12 x 16 uint16, axes TYX, 1 x 1 x 1 nm; a time series (frames, not sections)" in capsys.readouterr().out
    one = read_image(_velox(tmp_path / "one.emd", [("o", "HAADF", _yxn(1), 1e-9)])).data
    assert np.array_equal(np.asarray(open_source(*source_of(one))), np.asarray(one))  # one frame: (y, x)


def test_an_emd_file_that_is_not_velox_reads_as_hdf5(tmp_path):
    """Berkeley's EMD (prismatic, NCEM) keeps plain datasets."""
    zyx = np.arange(2 * 10 * 12, dtype=np.float32).reshape(2, 10, 12)
    with h5py.File(tmp_path / "sim.emd", "w") as f:
        f.create_dataset("data/sim/data", data=zyx)
    assert np.array_equal(np.asarray(read_image(tmp_path / "sim.emd").data), zyx)


def test_napari_opens_each_detector_as_a_layer(tmp_path):
    from napari_emdiffuse._reader import get_h5_reader

    haadf, bf = _yxn(1, 1), _yxn(1, 2)
    path = _velox(tmp_path / "stem.emd", [("c0", "HAADF", haadf, 2e-10), ("c1", "BF", bf, 2e-10)])
    layers = get_h5_reader(str(path))(str(path))
    assert [meta["name"] for _, meta, _ in layers] == ["HAADF", "BF"]
    assert all(meta["scale"] == pytest.approx((0.2, 0.2)) for _, meta, _ in layers)
    assert np.array_equal(np.asarray(layers[1][0]), bf[..., 0])


def test_damaged_velox_files_are_read_or_refused_in_one_line(tmp_path):
    """h5py raises KeyError, RuntimeError, AttributeError ... where a file is damaged; a user
    sees one line. The control: the undamaged file reads."""
    import random

    raw = _velox(tmp_path / "base.emd", [("c0", "HAADF", _yxn(3), 2e-10)]).read_bytes()
    rng = random.Random(0)
    refused = 0
    for i in range(60):
        damaged = bytearray(raw)
        if i % 3 == 0:
            damaged = damaged[: rng.randrange(len(damaged))]
        else:
            for _ in range(rng.randint(1, 8)):
                damaged[rng.randrange(len(damaged))] = rng.randrange(256)
        path = tmp_path / f"d{i}.emd"
        path.write_bytes(bytes(damaged))
        try:
            np.asarray(read_image(path).data)
        except InputError as exc:
            refused += 1
            assert "\n" not in str(exc) and path.name in str(exc)
    assert refused >= 10
    assert np.asarray(read_image(tmp_path / "base.emd").data).shape == (3, 12, 16)


def test_a_batch_restores_each_detector_of_a_stem_file(tmp_path, tiny_model_dir, capsys):
    from napari_emdiffuse.cli import main

    session = tmp_path / "session"
    session.mkdir()
    haadf, bf = _yxn(1, 1), _yxn(1, 2)
    _velox(session / "stem.emd", [("c0", "HAADF", haadf, 2e-10), ("c1", "BF", bf, 2e-10)])
    _velox(session / "tem.emd", [("t0", "BM-Ceta", _yxn(1, 3), 1e-10)])
    out = tmp_path / "out"
    assert main(["denoise", str(session), "-o", str(out), "--model", str(tiny_model_dir), "--device", "cpu",
                 "--steps", "2"]) == 0  # fmt: skip
    assert sorted(p.name for p in out.iterdir()) == ["stem_BF.tif", "stem_HAADF.tif", "tem.tif"]
    assert read_image(out / "stem_BF.tif").spacing == pytest.approx((0.2, 0.2))
    said = capsys.readouterr()
    assert "stem.emd/BF" in said.out + said.err
    assert main(["info", str(session)]) == 0  # a session, not a volume: each image of each file
    lines = capsys.readouterr().out.splitlines()
    assert [line.split(":")[0].split("session/")[-1] for line in lines] == ["stem.emd/HAADF", "stem.emd/BF", "tem.emd"]


def test_one_file_of_several_images_into_a_folder_is_a_batch_and_images_can_be_named(tmp_path, tiny_model_dir, capsys):
    """``denoise stem.emd -o out/`` restores each detector; ``stem.emd/BF`` names one of a batch;
    ``-o out.tif`` for several images is refused in one line, naming them."""
    from napari_emdiffuse.cli import main

    stem = tmp_path / "stem.emd"
    _velox(stem, [("c0", "HAADF", _yxn(1, 1), 2e-10), ("c1", "BF", _yxn(1, 2), 2e-10)])
    _velox(tmp_path / "tem.emd", [("t0", "BM-Ceta", _yxn(1, 3), 1e-10)])
    fast = ["--model", str(tiny_model_dir), "--device", "cpu", "--steps", "2"]
    assert main(["denoise", str(stem), "-o", f"{tmp_path / 'out'}/", *fast]) == 0  # a new folder, named so
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["stem_BF.tif", "stem_HAADF.tif"]
    assert main(["convert", str(stem), "-o", str(tmp_path / "out"), "--to", ".mrc"]) == 0  # an existing folder
    assert sorted(p.name for p in (tmp_path / "out").glob("*.mrc")) == ["stem_BF.mrc", "stem_HAADF.mrc"]
    assert main(["denoise", str(stem / "BF"), str(tmp_path / "tem.emd"), "-o", str(tmp_path / "two"), *fast]) == 0
    assert sorted(p.name for p in (tmp_path / "two").iterdir()) == ["stem_BF.tif", "tem.tif"]
    capsys.readouterr()
    assert main(["denoise", str(stem), "-o", str(tmp_path / "one.tif"), *fast]) == 2
    err = capsys.readouterr().err
    assert "holds 2 images (HAADF, BF)" in err and "give a folder for -o to restore each" in err
    assert "Traceback" not in err and not (tmp_path / "one.tif").exists()
    assert main(["denoise", str(stem / "DF"), str(tmp_path / "tem.emd"), "-o", str(tmp_path / "three"), *fast]) == 2
    assert "DF" in capsys.readouterr().err  # a named image the file lacks: that file skipped, in one line
