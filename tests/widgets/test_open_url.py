"""The Open by URL dock (File > IO Utilities): a remote volume opened as layers with its
voxel size, without code; a URL that cannot be read said in one line, and no layer."""

from __future__ import annotations

import numpy as np
import pytest

from napari_emdiffuse.engine.io.images import write_image
from tests.engine.io.test_precomputed import _precomputed
from tests.widgets.test_widgets import _dock, _quick_restore_dock, _wait, errors, models, plugin, viewer  # noqa: F401

pytest.importorskip("aiohttp", reason="http(s) URLs are read through aiohttp (the [all] extra)")


def _open(qtbot, w, url: str) -> str:
    w.url.setCurrentText(url)
    with qtbot.waitSignal(w.opened, timeout=30_000) as sig:
        w.open_button.click()
    return sig.args[0]


def test_a_volume_opens_by_url_with_its_voxel_size(viewer, qtbot, served, monkeypatch):
    shown = []
    monkeypatch.setattr("napari.utils.notifications.show_error", shown.append)
    folder, url = served
    vol = (np.arange(7 * 9 * 11) * 37 % 251).astype(np.uint8).reshape(7, 9, 11)
    _precomputed(folder / "cells", vol)
    write_image(folder / "vol.ome.zarr", vol, spacing=(30.0, 4.0, 4.0))
    w = _dock(viewer, "Open by URL")

    assert _open(qtbot, w, f"precomputed://{url}/cells") == "done"
    layer = viewer.layers["cells"]
    assert tuple(layer.scale) == (40.0, 4.0, 4.0) and np.array_equal(np.asarray(layer.data), vol)
    assert "opened cells: 7 x 9 x 11, 40 x 4 x 4 nm" in w.status.text()

    assert _open(qtbot, w, f"{url}/vol.ome.zarr") == "done"
    assert tuple(viewer.layers["vol"].scale) == (30.0, 4.0, 4.0)
    assert [w.url.itemText(i) for i in range(w.url.count())] == [f"{url}/vol.ome.zarr", f"precomputed://{url}/cells"]

    for bad, needle in ((f"{url}/none", "no neuroglancer precomputed 'info' there"), ("vol.zarr", "is not a URL")):
        count = len(viewer.layers)
        assert _open(qtbot, w, bad) == "failed"
        assert needle in w.status.text() and "\n" not in w.status.text() and len(viewer.layers) == count
    assert len(shown) == 2 and w.open_button.isEnabled()


def test_url_layers_name_each_kind_of_store(served):
    import json

    from napari_emdiffuse._reader import url_layers
    from tests.engine.io.test_n5 import _write_n5

    folder, url = served
    vol = (np.arange(3 * 8 * 10) % 251).astype(np.uint8).reshape(3, 8, 10)
    _write_n5(folder / "liver.n5" / "em" / "s0", vol)
    (folder / "liver.n5" / "em" / "s0" / "attributes.json").write_text(json.dumps(
        {**json.loads((folder / "liver.n5" / "em" / "s0" / "attributes.json").read_text()), "resolution": [4, 4, 8]}))
    write_image(folder / "plain.zarr", vol, spacing=(8.0, 4.0, 4.0))
    (data, meta, kind), = url_layers(f"{url}/liver.n5/em/s0")
    assert meta["name"] == "liver.n5/em/s0" and meta["scale"] == (8.0, 4.0, 4.0) and np.array_equal(data[...], vol)
    (data, meta, kind), = url_layers(f" {url}/plain.zarr ")
    assert meta["name"] == "plain.zarr" and np.array_equal(np.asarray(data), vol)
    import h5py

    with h5py.File(folder / "cremi.hdf", "w") as f:
        f.create_dataset("volumes/raw", data=vol).attrs["resolution"] = (40.0, 4.0, 4.0)
    (data, meta, kind), = url_layers(f"{url}/cremi.hdf/volumes/raw")
    assert meta["name"] == "cremi.hdf/volumes/raw" and meta["scale"] == (40.0, 4.0, 4.0) and np.array_equal(data[...], vol)


def test_a_volume_opened_by_url_restores_in_the_restore_dock(viewer, qtbot, served, models, errors, tmp_path):
    """A precomputed volume opened by URL (its scales a multiscale layer) restores in the
    Restore dock like a local one: into a zarr store, with its voxel size."""
    folder, url = served
    vol = (np.random.default_rng(4).random((3, 40, 48)) * 255).astype(np.uint8)
    _precomputed(folder / "cells", vol, chunk=(3, 16, 16), offset=(0, 0, 0))
    w = _dock(viewer, "Open by URL")
    assert _open(qtbot, w, f"precomputed://{url}/cells") == "done"
    r = _quick_restore_dock(viewer, models, viewer.layers["cells"])
    r.output.setText(str(tmp_path / "cells_denoised.zarr"))
    assert r.run()
    _wait(qtbot, r)
    assert not errors, errors
    out = viewer.layers["cells_denoised"]
    assert out.data.shape == vol.shape and tuple(out.scale) == (40.0, 4.0, 4.0)


def test_a_large_mrc_volume_opens_by_url_lazily(viewer, qtbot, served, monkeypatch):
    """An MRC volume by URL opens as a layer read a band of rows at a time, its voxel size
    kept, never downloaded (nothing lands in the download folder)."""
    import mrcfile

    from napari_emdiffuse.engine.io import rawurl

    folder, url = served
    monkeypatch.setattr(rawurl, "LAZY_MIN_BYTES", 0)
    home = folder / "home"
    monkeypatch.setenv("EMDIFFUSE_HOME", str(home))
    vol = (np.arange(4 * 90 * 20) % 251).astype(np.int16).reshape(4, 90, 20)
    with mrcfile.new(folder / "fib.mrc") as m:
        m.set_data(vol)
        m.voxel_size = (50.0, 50.0, 80.0)  # Å: x, y, z
    w = _dock(viewer, "Open by URL")
    assert _open(qtbot, w, f"{url}/fib.mrc") == "done"
    layer = viewer.layers["fib"]
    assert isinstance(layer.data, rawurl.RawUrlArray) and tuple(layer.scale) == (8.0, 5.0, 5.0)
    assert np.array_equal(np.asarray(layer.data[2]), vol[2])
    assert not (home / "downloads").exists() or not any((home / "downloads").iterdir())
