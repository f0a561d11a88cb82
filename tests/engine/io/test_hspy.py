"""HyperSpy's files (.hspy), written here as HyperSpy lays them out: Experiments/<title>/data
and one axis-<i> group per array axis (scale, units, navigate)."""

from __future__ import annotations

import h5py
import numpy as np
import pytest

from napari_emdiffuse.engine.errors import InputError
from napari_emdiffuse.engine.io.images import image_names, read_image


def _hspy(path, signals, version="3.1"):
    """``signals``: (title, array, [(scale, units, navigate) per axis])."""
    with h5py.File(path, "w") as f:
        f.attrs["file_format"], f.attrs["file_format_version"] = "HyperSpy", version
        for title, data, axes in signals:
            g = f.create_group(f"Experiments/{title}")
            g.create_dataset("data", data=data)
            for i, (scale, units, navigate) in enumerate(axes):
                attrs = {"scale": scale, "units": units, "offset": 0.0, "size": data.shape[i]}
                if navigate is not None:
                    attrs["navigate"] = navigate
                g.create_group(f"axis-{i}").attrs.update(attrs)
    return path


def _img(*shape, seed=0):
    return (np.random.default_rng(seed).random(shape) * 4000).astype(np.uint16)


def test_an_image_reads_with_its_pixel_size_and_a_stack_as_sections_or_a_series(tmp_path):
    haadf = _img(12, 16)
    img = read_image(_hspy(tmp_path / "a.hspy", [("HAADF", haadf, [(0.25, "µm", False), (0.25, "µm", False)])]))
    assert np.array_equal(np.asarray(img.data), haadf) and img.spacing == (250.0, 250.0) and img.axes == "YX"
    vol = _img(3, 12, 16, seed=1)
    img = read_image(_hspy(tmp_path / "z.hspy", [("FIB", vol, [(40.0, "nm", True), (5.0, "nm", False), (5.0, "nm", False)])]))
    assert img.axes == "ZYX" and img.spacing == (40.0, 5.0, 5.0) and img.data.shape == (3, 12, 16)
    img = read_image(_hspy(tmp_path / "t.hspy", [("insitu", vol, [(0.5, "s", True), (5.0, "nm", False), (5.0, "nm", False)])]))
    assert img.axes == "TYX" and img.spacing == (1.0, 5.0, 5.0)  # frames in time: never made isotropic
    img = read_image(_hspy(tmp_path / "u.hspy", [("dp", haadf, [(0.1, "1/nm", False), (0.1, "1/nm", False)])]))
    assert img.spacing is None  # a diffraction pattern: no length


def test_signals_are_named_by_title_and_spectra_and_4d_data_are_not_images(tmp_path):
    a, b = _img(12, 16, seed=2), _img(12, 16, seed=3)
    si = _img(4, 5, 100, seed=4)  # a spectrum image: one signal axis, last
    cube = _img(3, 3, 10, 10, seed=5)  # 4D-STEM: not an image
    path = _hspy(tmp_path / "m.hspy", [
        ("HAADF", a, [(1.0, "nm", False)] * 2), ("BF image", b, [(1.0, "nm", False)] * 2),
        ("EDS", si, [(1.0, "nm", True), (1.0, "nm", True), (0.01, "keV", False)]),
        ("4D", cube, [(1.0, "nm", True)] * 2 + [(0.1, "1/nm", False)] * 2),
    ])  # fmt: skip
    assert image_names(path) == [f"{path}/BF-image", f"{path}/HAADF"]  # HDF5's order of the titles
    with pytest.raises(InputError, match=r"several datasets \(BF-image, HAADF\)") as exc:
        read_image(path)
    assert "\n" not in str(exc.value)
    assert np.array_equal(np.asarray(read_image(f"{path}/haadf").data), a)  # a title, in any case
    spectra = _hspy(tmp_path / "s.hspy", [("EDS", si, [(1.0, "nm", True), (1.0, "nm", True), (0.01, "keV", False)])])
    with pytest.raises(InputError, match="no image"):
        read_image(spectra)


def test_files_from_before_the_navigate_flag_take_the_last_two_axes(tmp_path):
    stack = _img(2, 12, 16, seed=6)
    img = read_image(_hspy(tmp_path / "old.hdf5", [("stack", stack, [(1.0, "", None), (2.0, "nm", None),
                                                                     (2.0, "nm", None)])], version="1.2"))  # fmt: skip
    assert img.data.shape == (2, 12, 16) and img.spacing == (1.0, 2.0, 2.0) and img.axes == "TYX"
