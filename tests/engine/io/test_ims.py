"""Bitplane Imaris files (.ims), written here as Imaris 5.5 lays them out: attributes as arrays
of single characters, volumes padded to whole chunks with their true size beside them."""

from __future__ import annotations

import h5py
import numpy as np
import pytest

from napari_emdiffuse.engine.errors import InputError
from napari_emdiffuse.engine.io.images import image_names, read_image


def _chars(text) -> np.ndarray:
    return np.array([c.encode() for c in str(text)], dtype="S1")


def _ims(path, volumes, *, extent=(0.0, 0.0, 0.0, 0.5, 0.4, 2.0), unit="um", names=None, pad=(4, 16, 16)):
    """``volumes``: {(t, c): ZYX array}; ``extent``: ExtMin0-2 then ExtMax0-2 (x, y, z)."""
    with h5py.File(path, "w") as f:
        for key, value in (("ImarisDataSet", "ImarisDataSet"), ("ImarisVersion", "5.5.0"),
                           ("DataSetDirectoryName", "DataSet"), ("DataSetInfoDirectoryName", "DataSetInfo"),
                           ("NumberOfDataSets", "1")):  # fmt: skip
            f.attrs[key] = _chars(value)
        for (t, c), vol in volumes.items():
            z, y, x = vol.shape
            padded = np.zeros(tuple(-(-n // p) * p for n, p in zip(vol.shape, pad)), vol.dtype)
            padded[:z, :y, :x] = vol
            g = f.create_group(f"DataSet/ResolutionLevel 0/TimePoint {t}/Channel {c}")
            g.create_dataset("Data", data=padded, chunks=pad)
            for axis, n in zip("XYZ", (x, y, z)):
                g.attrs[f"ImageSize{axis}"] = _chars(n)
            low = f.require_group(f"DataSet/ResolutionLevel 1/TimePoint {t}/Channel {c}")
            low.create_dataset("Data", data=padded[::2, ::2, ::2], chunks=(2, 8, 8))  # a lower level: not read here
            for axis, n in zip("XYZ", (x, y, z)):
                low.attrs[f"ImageSize{axis}"] = _chars(-(-n // 2))
            info = f.require_group(f"DataSetInfo/Channel {c}")
            info.attrs["Name"] = _chars((names or {}).get(c, f"Channel {c}"))
        image = f.require_group("DataSetInfo/Image")
        z, y, x = next(iter(volumes.values())).shape
        for key, value in (("X", x), ("Y", y), ("Z", z), ("Unit", unit)):
            image.attrs[key] = _chars(value)
        for i, value in enumerate(extent):
            image.attrs[f"Ext{'Min' if i < 3 else 'Max'}{i % 3}"] = _chars(value)
    return path


def _vol(seed=0, shape=(5, 20, 25)):
    return (np.random.default_rng(seed).random(shape) * 60000).astype(np.uint16)


def test_a_volume_reads_cropped_to_its_true_size_with_its_voxel_size(tmp_path):
    vol = _vol()
    img = read_image(_ims(tmp_path / "v.ims", {(0, 0): vol}))
    assert img.data.shape == (5, 20, 25) and img.axes == "ZYX" and img.unit == "nm"  # stored 8 x 32 x 32
    assert img.spacing == pytest.approx((400.0, 20.0, 20.0))  # 2 um / 5, 0.4 um / 20, 0.5 um / 25
    assert np.array_equal(np.asarray(img.data), vol) and np.array_equal(img.data[4, ::-3, 2:], vol[4, ::-3, 2:])


def test_channels_and_time_points_are_named_and_one_must_be_chosen(tmp_path):
    a, b, c = _vol(1), _vol(2), _vol(3)
    path = _ims(tmp_path / "m.ims", {(0, 0): a, (0, 1): b}, names={0: "SE2", 1: "InLens"})
    assert image_names(path) == [f"{path}/SE2", f"{path}/InLens"]
    with pytest.raises(InputError, match=r"several datasets \(SE2, InLens\)") as exc:
        read_image(path)
    assert "\n" not in str(exc.value)
    assert np.array_equal(np.asarray(read_image(f"{path}/inlens").data), b)
    series = _ims(tmp_path / "t.ims", {(0, 0): a, (1, 0): c})
    assert image_names(series) == [f"{series}/Channel-0-t0", f"{series}/Channel-0-t1"]


def test_an_independent_reader_sees_the_same_volume(tmp_path):
    """imaris-ims-file-reader (installed beside the project, not a dependency) as the control."""
    ims = pytest.importorskip("imaris_ims_file_reader.ims", reason="imaris-ims-file-reader is not installed")
    vol = _vol(4)
    path = _ims(tmp_path / "x.ims", {(0, 0): vol})
    theirs = np.asarray(ims.ims(str(path), squeeze_output=True)[0, 0])
    assert theirs.shape == vol.shape and np.array_equal(theirs, np.asarray(read_image(path).data))
