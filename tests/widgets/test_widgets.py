"""The napari plugin: manifest, sample data, the widgets' plain logic, and the three dock
widgets driven in a real viewer (virtual X display via pytest-xvfb).

Tiny randomly initialised models keep every run to a second or two on a CPU.
"""

from __future__ import annotations

import importlib.util
import json
import math
import logging
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("napari")
pytest.importorskip("qtpy")

import napari  # noqa: E402
import npe2  # noqa: E402
import torch  # noqa: E402

from tests.conftest import ROOT  # noqa: E402

from napari_emdiffuse.engine.errors import EMDiffuseError, InputError  # noqa: E402
from napari_emdiffuse.widgets._controls import (  # noqa: E402
    BROWSE,
    architectures_for,
    device_choices,
    model_choices,
    resolve_browsed,
)
from napari_emdiffuse.widgets._jobs import report_error  # noqa: E402
from napari_emdiffuse.engine.io.zarrurl import check_output_place as check_output  # noqa: E402
from napari_emdiffuse.widgets._settings import Settings  # noqa: E402
from napari_emdiffuse.widgets._lossplot import LossHistory, eta_text, to_canvas  # noqa: E402
from napari_emdiffuse.widgets.finetune import FinetuneOptions, default_output, parse_doses, parse_lr  # noqa: E402
from napari_emdiffuse.widgets.isotropic import (  # noqa: E402
    IsotropicOptions,
    isotropic_geometry,
    isotropic_names,
    prefill_factor,
)
from napari_emdiffuse.widgets.restore import (  # noqa: E402
    RestoreOptions,
    check_input_layer,
    output_geometry,
    output_names,
)

MANIFEST = ROOT / "src" / "napari_emdiffuse" / "napari.yaml"
PLUGIN = "napari-emdiffuse"
RESTORE = "Restore"
ISOTROPIC = "Isotropic reconstruction"
FINETUNE = "Fine-tune"
HAS_VOLUME = importlib.util.find_spec("napari_emdiffuse.engine.inference.volume") is not None
HAS_TRAINING = importlib.util.find_spec("napari_emdiffuse.engine.training") is not None
TINY_NET = dict(inner_channel=16, channel_mults=[1, 2], res_blocks=1, attn_res=[], num_head_channels=16)


def _tiny(arch: str, name: str, **card):
    from napari_emdiffuse.engine.models.cards import Normalisation
    from napari_emdiffuse.engine.models.factory import create_EMDiffuse

    torch.manual_seed(0)
    m = create_EMDiffuse(arch, **TINY_NET)
    m.card.normalisation = Normalisation()
    m.card.name = name
    m.card.overlap = 8
    m.card.tile = 32
    for k, v in card.items():
        setattr(m.card, k, v)
    return m


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, Path]:
    """Tiny denoise, x2 super-resolution and isotropic models saved as model directories."""
    d = tmp_path_factory.mktemp("widget-models")
    return {
        "denoise": _tiny("EMDiffuse-n", "tiny-denoise").save(d / "tiny-denoise"),
        "sr": _tiny("EMDiffuse-r", "tiny-sr2").save(d / "tiny-sr2"),
        "iso": _tiny("vEMDiffuse-i", "tiny-iso", z_factor=None).save(d / "tiny-iso"),
    }


@pytest.fixture(autouse=True)
def _home(tmp_path, monkeypatch):
    # Model registry and widget settings isolated per test.
    monkeypatch.setenv("EMDIFFUSE_HOME", str(tmp_path / "home"))


@pytest.fixture
def errors(monkeypatch) -> list[str]:
    """Messages the widgets show with napari's show_error."""
    shown: list[str] = []
    monkeypatch.setattr(napari.utils.notifications, "show_error", lambda msg: shown.append(str(msg)))
    monkeypatch.setattr(napari.utils.notifications, "show_info", lambda msg: None)
    return shown


@pytest.fixture
def plugin():
    """Our manifest registered with npe2, as ``pip install`` would (entry point)."""
    pm = npe2.PluginManager.instance()
    if PLUGIN not in pm:  # not installed in this environment
        pm.register(npe2.PluginManifest.from_file(MANIFEST))
    yield pm


@pytest.fixture
def viewer(make_napari_viewer, plugin):
    return make_napari_viewer()


def _dock(viewer, name: str):
    _dock_widget, widget = viewer.window.add_plugin_dock_widget(PLUGIN, name)
    return widget


def _quick_restore_dock(viewer, models, layer):
    """The Restore widget on ``layer`` with the tiny denoiser: one step, 32-px tiles, the CPU."""
    w = _dock(viewer, RESTORE)
    w.model.add_path(models["denoise"])
    w.layer_combo.set_layer(layer)
    w.steps.setValue(1)
    w.tile.setValue(32)
    w.device.set_value("cpu")
    return w


def _sr_dock(viewer, models):
    """The Restore widget set to super-resolve with the tiny SR model: two steps, 32-px tiles."""
    w = _dock(viewer, RESTORE)
    w.task.setCurrentText("super-resolve")
    w.model.add_path(models["sr"])
    w.steps.setValue(2)
    w.tile.setValue(32)
    w.device.set_value("cpu")
    return w


def _wait(qtbot, widget, timeout: int = 60_000) -> None:
    qtbot.waitUntil(lambda: not widget.running, timeout=timeout)


# ----------------------------------------------------------------------------------------------
# manifest and sample data


def test_manifest_validates_and_menus_exist_in_napari():
    from napari._app_model.constants._menus import is_menu_contributable

    mf = npe2.PluginManifest.from_file(MANIFEST)
    mf.validate_imports()
    assert mf.name == PLUGIN and mf.display_name == "EMDiffuse"
    assert {w.display_name for w in mf.contributions.widgets} == {RESTORE, ISOTROPIC, FINETUNE, "Open by URL", "Score"}
    assert len(mf.contributions.sample_data) >= 2
    # npe2 accepts any menu id; napari ignores ids that it does not expose to plugins.
    for menu_id in mf.contributions.menus:
        assert is_menu_contributable(menu_id), menu_id


def test_sample_data_is_small_scaled_and_documented():
    from napari_emdiffuse import _sample_data as sd

    samples = ROOT / "resources" / "samples"
    tifs = list(samples.glob("*.tif"))
    assert sum(p.stat().st_size for p in tifs) < 1_000_000
    readme = (samples / "README.md").read_text()
    for p in tifs:
        assert p.name in readme and "CC-BY" in readme
    (noisy, meta, kind), = sd.noisy_fibsem()
    assert kind == "image" and noisy.shape == (256, 256) and noisy.dtype == np.uint8
    assert meta["scale"] == (8.0, 8.0) and meta["name"] == "liver_noisy"
    clean, noisy2 = sd.noisy_fibsem_with_reference()
    assert np.array_equal(noisy2[0], noisy) and clean[1]["name"] == "liver_clean"
    (vol, vmeta, _), = sd.anisotropic_volume()
    assert vol.shape == (7, 256, 128)
    assert vmeta["scale"][0] == 3 * vmeta["scale"][1] == 3 * vmeta["scale"][2]


def test_samples_open_from_napari_menu(viewer):
    viewer.open_sample(PLUGIN, "noisy_fibsem_pair")
    assert [layer.name for layer in viewer.layers] == ["liver_clean", "liver_noisy"]
    assert tuple(viewer.layers["liver_noisy"].scale) == (8.0, 8.0)


def test_mrc_files_open_in_napari_with_their_voxel_size(viewer, tmp_path):
    """napari has no MRC reader of its own: ours opens IMOD/SerialEM files, scale in nm."""
    import mrcfile

    from napari_emdiffuse._reader import get_reader

    path = tmp_path / "tomo.rec"
    data = np.arange(3 * 16 * 20, dtype=np.int16).reshape(3, 16, 20)
    with mrcfile.new(path) as m:
        m.set_data(data)
        m.voxel_size = (8.0, 8.0, 40.0)  # x, y, z in Å
    assert get_reader(str(tmp_path / "x.tif")) is None and get_reader([str(path), str(path)]) is None
    viewer.open(str(path), plugin=PLUGIN)
    layer = viewer.layers["tomo"]
    assert np.array_equal(layer.data, data) and tuple(layer.scale) == (4.0, 0.8, 0.8)
    # as EMDB distributes maps: gzip-compressed, named for the map
    import gzip

    packed = tmp_path / "emd_1234.map.gz"
    packed.write_bytes(gzip.compress(path.read_bytes()))
    viewer.open(str(packed), plugin=PLUGIN)
    layer = viewer.layers["emd_1234"]
    assert np.array_equal(layer.data, data) and tuple(layer.scale) == (4.0, 0.8, 0.8)


def test_ome_zarr_outputs_open_in_napari_as_multiscale_with_their_pixel_size(viewer, tmp_path, monkeypatch):
    from napari_emdiffuse._reader import get_ome_reader
    from napari_emdiffuse.engine.io import pyramid
    from napari_emdiffuse.engine.io.zarr import ZarrWriter

    monkeypatch.setattr(pyramid, "PYRAMID_TOP", 16)
    data = np.arange(2 * 40 * 36, dtype=np.uint16).reshape(2, 40, 36)
    with ZarrWriter(tmp_path / "vol.ome.zarr", data.shape, data.dtype, chunks=(1, 32, 32),
                    spacing=(50.0, 4.0, 4.0), axes="ZYX") as w:  # fmt: skip
        w.array[:] = data
    plain = ZarrWriter(tmp_path / "plain.zarr", data.shape, data.dtype)
    plain.commit()
    assert get_ome_reader(str(tmp_path / "plain.zarr")) is None  # napari's own reader opens those
    viewer.open(str(tmp_path / "vol.ome.zarr"), plugin=PLUGIN)
    layer = viewer.layers["vol"]
    assert layer.multiscale and [tuple(d.shape) for d in layer.data] == [(2, 40, 36), (2, 20, 18), (2, 10, 9)]
    assert np.array_equal(np.asarray(layer.data[0]), data) and tuple(layer.scale) == (50.0, 4.0, 4.0)


def test_a_region_store_opens_in_napari_over_the_image_it_came_from(viewer, tmp_path):
    """A plain .zarr output of a region: its scale and translate put each pixel over the
    input pixel it was restored from; a zarr array that records neither is napari's to open."""
    import zarr

    from napari_emdiffuse._reader import get_zarr_reader
    from napari_emdiffuse.engine.io.images import write_image

    data = np.arange(20 * 30, dtype=np.uint8).reshape(20, 30)
    write_image(tmp_path / "part.zarr", data, spacing=(4.0, 4.0), origin=(40.0, 80.0))
    viewer.open(str(tmp_path / "part.zarr"), plugin=PLUGIN)
    layer = viewer.layers["part"]
    assert tuple(layer.scale) == (4.0, 4.0) and tuple(layer.translate) == (40.0, 80.0)
    assert np.array_equal(np.asarray(layer.data), data)
    # pixel (0, 0) of the part lies on pixel (10, 20) of a whole image at the same scale
    assert tuple(layer.data_to_world((0, 0))) == (40.0, 80.0) == (10 * 4.0, 20 * 4.0)
    zarr.open_array(str(tmp_path / "bare.zarr"), mode="w", shape=(4, 4), dtype="u1")
    assert get_zarr_reader(str(tmp_path / "bare.zarr")) is None
    assert get_zarr_reader(str(tmp_path / "missing.zarr")) is None


def test_dm_files_and_n5_containers_open_in_napari_with_their_pixel_size(viewer, tmp_path):
    """napari reads neither: ours open a Gatan camera image and an OpenOrganelle-style pyramid."""
    from tests.engine.io.test_dm import _write_dm
    from tests.engine.io.test_n5 import _write_n5

    img = np.arange(12 * 16, dtype=np.uint16).reshape(12, 16)
    _write_dm(tmp_path / "cam.dm4", img, scales=[0.5, 0.5], units=["nm", "nm"])
    viewer.open(str(tmp_path / "cam.dm4"), plugin=PLUGIN)
    layer = viewer.layers["cam"]
    assert np.array_equal(layer.data, img) and tuple(layer.scale) == (0.5, 0.5)
    vol = (np.arange(4 * 24 * 20) % 251).astype(np.uint8).reshape(4, 24, 20)
    cosem = {"transform": {"axes": ["z", "y", "x"], "scale": [8.0, 4.0, 4.0], "units": ["nm"] * 3}}
    _write_n5(tmp_path / "liver.n5" / "em" / "s0", vol, attrs=cosem)
    _write_n5(tmp_path / "liver.n5" / "em" / "s1", vol[:, ::2, ::2].copy())
    viewer.open(str(tmp_path / "liver.n5"), plugin=PLUGIN)
    layer = viewer.layers["liver"]
    assert layer.multiscale and np.array_equal(np.asarray(layer.data[0]), vol) and tuple(layer.scale) == (8.0, 4.0, 4.0)


def test_a_folder_of_sections_opens_as_one_volume(viewer, tmp_path):
    """3View writes one .dm4 per cut; napari cannot read them, this plugin opens the folder as a
    lazy ZYX layer. Stores and containers are left to their own readers."""
    from napari_emdiffuse._reader import get_slices_reader
    from tests.engine.io.test_dm import _write_dm

    folder = tmp_path / "block_face"
    folder.mkdir()
    for z in (10, 9, 1):
        _write_dm(folder / f"cut_{z}.dm4", np.full((6, 8), z, np.uint16))
    viewer.open(str(folder), plugin=PLUGIN)
    layer = viewer.layers["block_face"]
    assert layer.data.shape == (3, 6, 8) and np.asarray(layer.data[:, 0, 0]).tolist() == [1, 9, 10]
    (tmp_path / "one").mkdir()
    _write_dm(tmp_path / "one" / "a.dm4", np.zeros((6, 8), np.uint16))
    for none in (tmp_path / "one", tmp_path / "one" / "a.dm4", tmp_path / "v.zarr"):
        (tmp_path / "v.zarr").mkdir(exist_ok=True)
        assert get_slices_reader(str(none)) is None  # one file, a file, a store: not a folder of sections


def test_hdf5_files_open_in_napari_with_their_voxel_size(viewer, tmp_path):
    """A CREMI file: its raw volume as an image and its neuron ids as labels, lazily, at 50 x 4 x 4 nm."""
    import dask.array as da
    import h5py

    from napari_emdiffuse._reader import get_h5_reader

    raw = (np.random.default_rng(0).random((3, 16, 20)) * 255).astype(np.uint8)
    with h5py.File(tmp_path / "sample_A.hdf", "w") as f:
        f.create_dataset("volumes/raw", data=raw).attrs["resolution"] = [50.0, 4.0, 4.0]
        f.create_dataset("volumes/labels/neuron_ids", data=np.ones(raw.shape, np.uint64))
    assert get_h5_reader(str(tmp_path / "x.tif")) is None and get_h5_reader(str(tmp_path / "none.h5")) is None
    viewer.open(str(tmp_path / "sample_A.hdf"), plugin=PLUGIN)
    image, labels = viewer.layers["volumes/raw"], viewer.layers["volumes/labels/neuron_ids"]
    assert isinstance(image, napari.layers.Image) and isinstance(labels, napari.layers.Labels)
    assert isinstance(image.data, da.Array) and np.array_equal(np.asarray(image.data), raw)
    assert tuple(image.scale) == (50.0, 4.0, 4.0)


# ----------------------------------------------------------------------------------------------
# plain logic


def test_restore_options_to_engine_kwargs():
    kw = RestoreOptions().engine_kwargs()
    unset = dict(steps=None, samples=None, sampler=None, tile=None, overlap=None)
    assert kw == dict(preset="fast", seed=0, device="auto", precision="fp32", refine=None, blur=None, z_filter="auto",
                      **unset)
    assert RestoreOptions(refine="off").engine_kwargs()["refine"] is False
    assert RestoreOptions(refine="on").engine_kwargs()["refine"] is True
    with pytest.raises(EMDiffuseError, match="refine"):
        RestoreOptions(refine="yes").engine_kwargs()
    with pytest.raises(EMDiffuseError, match="precision"):
        RestoreOptions(precision="fp8").engine_kwargs()
    kw = RestoreOptions(steps=2, samples=3, sampler="ddim", tile=64, overlap=0, seed=7, device="cpu").engine_kwargs()
    picked = tuple(kw[k] for k in ("steps", "samples", "sampler", "tile", "overlap", "seed", "device"))
    assert picked == (2, 3, "ddim", 64, 0, 7, "cpu")
    with pytest.raises(EMDiffuseError, match="overlap"):
        RestoreOptions(tile=32, overlap=32).engine_kwargs()
    with pytest.raises(EMDiffuseError, match="task"):
        RestoreOptions(task="isotropic-i").validate()
    # The acquisition blur reaches the engine for super-resolution only; "auto" leaves it unset.
    assert RestoreOptions(task="super-resolve", blur=" Area").engine_kwargs()["blur"] == "area"
    assert RestoreOptions(task="super-resolve", blur="1.2").engine_kwargs()["blur"] == "1.2"
    assert RestoreOptions(task="super-resolve").engine_kwargs()["blur"] is None
    assert RestoreOptions(task="denoise", blur="1.2").engine_kwargs()["blur"] is None
    for bad in ("wide", "2.5", "-1"):
        with pytest.raises(EMDiffuseError, match="acquisition blur"):
            RestoreOptions(task="super-resolve", blur=bad).engine_kwargs()
    # The z filter: named choices pass as text, a width as a number; denoising only.
    assert RestoreOptions(z_filter=" Off").engine_kwargs()["z_filter"] == "off"
    assert RestoreOptions(z_filter="0.8").engine_kwargs()["z_filter"] == 0.8
    assert "z_filter" not in RestoreOptions(task="super-resolve").engine_kwargs()
    for bad in ("strong", "4", "-0.5"):
        with pytest.raises(EMDiffuseError, match="z filter"):
            RestoreOptions(z_filter=bad).engine_kwargs()
    # Saved settings: wrong types and unknown keys are ignored, broken combinations reset.
    opts = RestoreOptions.from_dict({"steps": 5, "seed": "x", "bogus": 1, "preset": "balanced"})
    assert (opts.steps, opts.seed, opts.preset) == (5, 0, "balanced")
    assert RestoreOptions.from_dict({"tile": 16, "overlap": 20}) == RestoreOptions()
    assert RestoreOptions.from_dict(RestoreOptions(steps=3).to_dict()).steps == 3


def test_output_names():
    assert output_names("img", "denoise") == ("img_denoised", "img_denoised_uncertainty")
    assert output_names("img", "super-resolve", 2) == ("img_sr2", "img_sr2_uncertainty")


def test_output_geometry_overlays_pixel_areas():
    scale, translate = (40.0, 8.0, 6.0), (3.0, 100.0, -20.0)
    s2, t2 = output_geometry(scale, translate, 2)
    assert s2 == (40.0, 4.0, 3.0)
    assert t2 == (3.0, 100.0 - 2.0, -20.0 - 1.5)  # translate + (1/s - 1)/2 * scale
    # The s output pixels of input pixel 0 have their mean centre at its centre, and the
    # first one starts where the input pixel starts.
    for f in (2, 3, 4):
        (sy,), (ty,) = output_geometry((8.0,), (100.0,), f)[0][-1:], output_geometry((8.0,), (100.0,), f)[1][-1:]
        centres = [ty + j * sy for j in range(f)]
        assert np.isclose(np.mean(centres), 100.0)
        assert np.isclose(centres[0] - sy / 2, 100.0 - 8.0 / 2)
    assert output_geometry(scale, translate, 1) == (scale, translate)


def test_isotropic_logic(tmp_path):
    assert isotropic_geometry((32.0, 8.0, 8.0), (5.0, 1.0, 2.0), 4) == ((8.0, 8.0, 8.0), (5.0, 1.0, 2.0))
    assert isotropic_names("vol") == ("vol_isotropic", "vol_isotropic_uncertainty")
    assert prefill_factor((32.0, 8.0, 8.0)) == 4
    assert prefill_factor((45.0, 8.0, 8.0)) is None  # 5.6: not close to a whole number
    assert prefill_factor((1.0, 1.0, 1.0)) is None  # already isotropic / uncalibrated
    assert prefill_factor((8.0, 8.0)) is None
    kw = IsotropicOptions(factor=3, mode="a", steps=2).engine_kwargs()
    assert (kw["factor"], kw["mode"], kw["steps"], kw["out"], kw["samples"]) == (3, "a", 2, None, None)
    assert IsotropicOptions(mode="a").task == "isotropic-a"
    assert kw["denoise"] is None and IsotropicOptions(denoise_first=True).engine_kwargs()["denoise"] is True
    with pytest.raises(EMDiffuseError, match="factor"):
        IsotropicOptions(factor=1).validate()
    assert kw["workers"] is None  # in napari
    assert IsotropicOptions(workers=2, output=str(tmp_path / "iso.zarr")).engine_kwargs()["workers"] == 2
    with pytest.raises(EMDiffuseError, match="workers write into an output"):
        IsotropicOptions(workers=2).validate()
    assert IsotropicOptions(resume=True, output=str(tmp_path / "iso.zarr")).engine_kwargs()["resume"] is True
    with pytest.raises(EMDiffuseError, match="keeping finished blocks needs a .zarr output"):
        IsotropicOptions(resume=True).validate()
    assert IsotropicOptions(zarr_format=3, output=str(tmp_path / "iso.zarr")).engine_kwargs()["zarr_format"] == 3
    with pytest.raises(EMDiffuseError, match="zarr format must be 2 or 3"):
        IsotropicOptions(zarr_format=4, output=str(tmp_path / "iso.zarr")).validate()
    with pytest.raises(EMDiffuseError, match="unsupported file type '.png'|read only here"):
        check_output(str(tmp_path / "out.png"))
    with pytest.raises(EMDiffuseError, match="unsupported file type '.txt'"):
        check_output(str(tmp_path / "out.txt"))
    with pytest.raises(EMDiffuseError, match="does not exist"):
        check_output(str(tmp_path / "missing" / "out.zarr"))
    for name in ("out.zarr", "out.ome.zarr", "out.tif", "out.mrc", "out.precomputed"):
        assert check_output(str(tmp_path / name)) == tmp_path / name
    # zarr format 3 is a store's; workers write a file output through a store beside it
    for kind in (RestoreOptions, IsotropicOptions):
        kind(workers=2, output=str(tmp_path / "out.tif")).validate()
        with pytest.raises(EMDiffuseError, match="zarr format 3 is the format of a .zarr output"):
            kind(zarr_format=3, output=str(tmp_path / "out.precomputed")).validate()
        kind(resume=True, output=str(tmp_path / "out.mrc")).validate()  # a large result's hidden store is kept
        # a running cluster (its scheduler's address or file) instead of local workers, into an output
        kind(scheduler="tcp://10.0.0.5:8786", output=str(tmp_path / "out.zarr")).validate()
        for bad, words in [({"workers": 2}, "not both"), ({"output": ""}, "a cluster writes into an output"),
                           ({"scheduler": str(tmp_path / "none.json")}, "no dask scheduler file")]:
            with pytest.raises(EMDiffuseError, match=words):
                kind(**{"scheduler": "tcp://10.0.0.5:8786", "output": str(tmp_path / "out.zarr"), **bad}).validate()
        # JPEG chunks are a .precomputed output's (or the files… button's as .precomputed)
        kind(chunks="jpeg 85", output=str(tmp_path / "out.precomputed")).validate()
        for output in ("", str(tmp_path / "out.tif")):
            with pytest.raises(EMDiffuseError, match="jpeg chunks are a .precomputed output's; give one, or choose raw"):
                kind(chunks="jpeg", output=output).validate()
        with pytest.raises(EMDiffuseError, match="JPEG quality must be a whole number from 1 to 100"):
            kind(chunks="jpeg 101", output=str(tmp_path / "out.precomputed")).validate()


def test_check_input_layer():
    rgb = napari.layers.Image(np.zeros((8, 8, 3), np.uint8), rgb=True, name="photo")
    with pytest.raises(InputError, match="RGB"):
        check_input_layer(rgb)
    flat = napari.layers.Image(np.zeros((8, 8), np.uint8), name="flat")
    check_input_layer(flat)
    with pytest.raises(InputError, match="3D"):
        check_input_layer(flat, volume=True)
    with pytest.raises(InputError, match="no image layer"):
        check_input_layer(None)


def test_device_choices():
    assert device_choices(cuda_count=0, mps=False) == ["auto", "cpu"]
    assert device_choices(cuda_count=2, mps=True) == ["auto", "cpu", "cuda:0", "cuda:1", "mps"]
    assert device_choices()[:2] == ["auto", "cpu"]


def test_settings_roundtrip_and_corruption(tmp_path):
    s = Settings()
    assert s.path == tmp_path / "home" / "widgets.json"
    assert s.load("restore") == {}
    s.save("restore", {"options": {"steps": 3}})
    s.save("isotropic", {"options": {"factor": 4}})
    assert Settings().load("restore") == {"options": {"steps": 3}}
    s.path.write_text("{not json")
    assert s.load("restore") == {}  # a broken file is a fresh start, not a crash


def test_model_choices(models):
    from napari_emdiffuse.engine.models.registry import register_model

    assert model_choices("denoise", allow_default=True)[0].value is None
    register_model(models["denoise"])
    choices = model_choices("denoise", [str(models["denoise"]), "/x/best_Network.pth"])
    values = [c.value for c in choices]
    assert values.count(str(models["denoise"].resolve())) == 1  # browsed twice, listed once
    assert any(c.label == "tiny-denoise (user)" for c in choices)
    ckpt = [c for c in choices if c.value.endswith(".pth")][0]
    assert ckpt.checkpoint and ckpt.label == "best_Network.pth (file)"
    sr = model_choices("super-resolve", [])
    assert all("tiny-denoise" not in c.label for c in sr)  # the denoiser is not offered for SR
    assert all(c.label.endswith("(bundled)") for c in sr)
    assert architectures_for("denoise") == ["EMDiffuse-n"]
    assert architectures_for("isotropic-a") == ["vEMDiffuse-i", "vEMDiffuse-a"]
    assert resolve_browsed("/m/dir/model.yaml") == Path("/m/dir")


def test_report_error(errors, caplog):
    assert report_error(InputError("image is empty")) == "image is empty"
    with caplog.at_level(logging.ERROR, logger="napari_emdiffuse.widgets"):
        try:
            raise RuntimeError("boom")
        except RuntimeError as exc:
            msg = report_error(exc)
    assert msg == "unexpected error: boom"
    assert errors == ["image is empty", "unexpected error: boom"]
    assert "Traceback" in caplog.text or caplog.records[-1].exc_info is not None


def test_finetune_logic(tmp_path):
    assert parse_lr("5e-5") == 5e-5
    assert parse_lr("auto") == parse_lr(" ") == 0.0  # the engine's default for the model
    assert FinetuneOptions().engine_kwargs()["lr"] is None
    # the widget's defaults are the CLI's and the API's
    from napari_emdiffuse.api import FinetuneOptions as ApiOptions

    api = ApiOptions()
    assert (FinetuneOptions().iterations, FinetuneOptions().patch, FinetuneOptions().batch) == (
        api.iterations, api.patch, api.batch)
    for bad in ("fast", "0", "-1e-4", "nan"):
        with pytest.raises(EMDiffuseError):
            parse_lr(bad)
    out = default_output("denoise", now=0)
    assert out.parent == tmp_path / "home" / "models" and out.name.startswith("denoise-finetuned-")
    kw = FinetuneOptions(iterations=3, patch=32, batch=2, output=str(tmp_path / "m")).engine_kwargs()
    assert (kw["iterations"], kw["patch"], kw["batch"], kw["out"]) == (3, 32, 2, tmp_path / "m")
    assert not FinetuneOptions(task="isotropic-a").needs_target
    with pytest.raises(EMDiffuseError, match="validation"):
        FinetuneOptions(val_fraction=0.95).validate()
    assert FinetuneOptions.from_dict({"lr": 1, "iterations": 10}).iterations == FinetuneOptions().iterations
    assert FinetuneOptions.from_dict({"lr": 1e-4, "iterations": 10}).lr == 1e-4
    # faster scans: the pair's noise up to sqrt(speed-up), for denoising only
    assert "noise_gain" not in FinetuneOptions().engine_kwargs()
    assert FinetuneOptions(faster=2.0).engine_kwargs()["noise_gain"] == (1.0, 1.4142)
    assert "noise_gain" not in FinetuneOptions(task="super-resolve", faster=2.0).engine_kwargs()
    with pytest.raises(EMDiffuseError, match="faster scans"):
        FinetuneOptions(faster=0.5).validate()
    # how a low-resolution input was made: passed on for super-resolution only, area as the default
    assert FinetuneOptions(task="super-resolve", downsampling="gaussian").engine_kwargs()["downsampling"] == ["gaussian"]
    assert "downsampling" not in FinetuneOptions(task="super-resolve").engine_kwargs()
    assert "downsampling" not in FinetuneOptions(task="denoise", downsampling="gaussian").engine_kwargs()
    with pytest.raises(EMDiffuseError, match="downsampling"):
        FinetuneOptions(task="super-resolve", downsampling="bicubic").validate()
    # registering a pair: passed on where there is a target, "as given" by default
    assert "register" not in FinetuneOptions().engine_kwargs()
    assert FinetuneOptions(register="affine").engine_kwargs()["register"] == "affine"
    assert "register" not in FinetuneOptions(task="isotropic-a", register="affine").engine_kwargs()
    with pytest.raises(EMDiffuseError, match="register"):
        FinetuneOptions(register="elastic").validate()
    # a clean input: noise simulated at the doses given, supervised (the CLI's --doses route)
    assert "objective" not in FinetuneOptions().engine_kwargs()  # noisy input alone: the engine's self-supervised
    kw = FinetuneOptions(clean_input=True, doses="30, 45 100", noise_correlation=0.35).engine_kwargs()
    assert (kw["objective"], kw["doses"], kw["noise_correlation"]) == ("supervised", [30.0, 45.0, 100.0], 0.35)
    assert parse_doses(" 20 ") == [20.0]
    for bad in ("", "20 x", "0 30", "-5", "inf"):
        with pytest.raises(EMDiffuseError, match="doses"):
            FinetuneOptions(clean_input=True, doses=bad).validate()
    FinetuneOptions(doses="x").validate()  # ignored unless the input is clean
    with pytest.raises(EMDiffuseError, match="denoising"):
        FinetuneOptions(task="super-resolve", clean_input=True).validate()
    assert FinetuneOptions.from_dict({"clean_input": True, "doses": "40"}).engine_kwargs()["doses"] == [40.0]
    # a noisy input alone: the engine picks unless told which way to learn
    assert FinetuneOptions(learn_from="blind spot").engine_kwargs()["objective"] == "self-supervised"
    assert FinetuneOptions(learn_from="neighbouring slices").engine_kwargs()["objective"] == "neighbour-slices"
    for bad in (dict(learn_from="magic"), dict(learn_from="blind spot", clean_input=True),
                dict(learn_from="neighbouring slices", task="isotropic-a")):
        with pytest.raises(EMDiffuseError, match="learn from") as info:
            FinetuneOptions(**bad).validate()
        assert "\n" not in str(info.value)


def test_loss_history_and_plot_mapping():
    h = LossHistory()
    assert h.bounds() is None and h.psnr_bounds() is None
    assert h.add({"stage": "training", "done": 1, "total": 4, "loss": 1.0})
    assert h.add({"stage": "training", "done": 2, "total": 4, "loss": 0.5})
    # The engine validates with PSNR/SSIM; a validation loss is plotted when one comes.
    assert h.add({"stage": "validation", "done": 2, "metrics": {"psnr": 20.0, "ssim": 0.5}})
    assert h.add({"stage": "validation", "done": 4, "loss": 0.75, "metrics": {"psnr": 21.0}})
    assert not h.add({"stage": "training", "done": 3, "loss": float("nan")})
    assert not h.add({"stage": "sampling", "done": 1, "total": 2})
    assert h.val == [(4, 0.75)] and h.psnr == [(2, 20.0), (4, 21.0)] and h.metrics == {"psnr": 21.0}
    assert h.bounds() == (1.0, 4.0, 0.5, 1.0)  # iterations of every series, losses only
    assert h.psnr_bounds() == (1.0, 4.0, 20.0, 21.0)
    assert "val PSNR 21.00 dB" in h.summary() and "loss 0.5" in h.summary()
    pts = to_canvas(h.train, (1.0, 2.0, 0.5, 1.0), (10.0, 0.0, 100.0, 50.0))
    assert pts == [(10.0, 0.0), (110.0, 50.0)]  # high loss at the top left, y grows down
    h.clear()
    assert h.bounds() is None
    # the base model's score (scored before training) is a reference, not a point of the run
    assert h.add({"stage": "validation", "done": 0, "metrics": {"psnr": 19.0}, "base": True})
    assert h.psnr == [] and h.base_psnr == 19.0 and "base model: val PSNR 19.00" in h.summary()
    h.add({"stage": "validation", "done": 5, "metrics": {"psnr": 20.5}})
    assert h.psnr_bounds()[2:] == (19.0, 20.5) and "(base 19.00)" in h.summary()
    # a fine-tune's margin: the line to beat is the base's PSNR plus it
    h.clear()
    h.add({"stage": "validation", "done": 0, "metrics": {"psnr": 19.0}, "base": True, "base_margin": 0.25})
    h.add({"stage": "validation", "done": 5, "metrics": {"psnr": 19.1}})
    assert h.to_beat == 19.25 and h.psnr_bounds()[2:] == (19.1, 19.25)
    assert "(base 19.00, to beat 19.25)" in h.summary()
    assert eta_text(10, 40, 20.0) == "ETA 1:00" and eta_text(0, 40, 5.0) == ""


def test_loss_plot_paints(qtbot):
    from napari_emdiffuse.widgets._lossplot import LossPlot

    h = LossHistory()
    plot = LossPlot(h)
    qtbot.addWidget(plot)
    plot.resize(300, 150)
    plot.grab()  # empty: the placeholder text
    for i in range(1, 6):
        h.add({"stage": "training", "done": i, "total": 5, "loss": 1.0 / i})
    h.add({"stage": "validation", "done": 0, "metrics": {"psnr": 21.0}, "base": True})
    h.add({"stage": "validation", "done": 5, "metrics": {"psnr": 22.0, "ssim": 0.6}})
    assert not plot.grab().isNull()


# ----------------------------------------------------------------------------------------------
# widgets in a viewer


def test_restore_widget_denoise_and_rerun_replaces(viewer, qtbot, models, errors):
    img = (np.random.default_rng(0).random((40, 48)) * 255).astype(np.uint8)
    layer = viewer.add_image(img, name="em", scale=(8.0, 6.0), translate=(10.0, -4.0))
    w = _dock(viewer, RESTORE)
    w.model.add_path(models["denoise"])
    w.layer_combo.set_layer(layer)
    w.steps.setValue(2)
    w.samples.setValue(2)
    w.tile.setValue(32)
    w.device.set_value("cpu")
    with qtbot.waitSignal(w.run_finished, timeout=60_000) as sig:
        assert w.run()
        assert w.run_button.text() == "Cancel"
    assert sig.args == ["done"] and not errors
    assert w.run_button.text() == "Run"
    out, unc = viewer.layers["em_denoised"], viewer.layers["em_denoised_uncertainty"]
    assert out.data.shape == img.shape and out.data.dtype == np.uint8
    assert unc.data.shape == img.shape and unc.data.dtype == np.float32
    assert unc.colormap.name == "magma"
    made = out.metadata["emdiffuse"]  # provenance: which model and settings made the layer
    assert made["task"] == "denoise" and made["source_layer"] == "em" and "seed" in made and "package" in made
    for o in (out, unc):
        assert tuple(o.scale) == (8.0, 6.0) and tuple(o.translate) == (10.0, -4.0)
    assert "cpu" in w.device.used.text()
    assert np.array_equal(layer.data, img)  # the input is never touched

    # Re-running updates the outputs in place; one sample leaves no stale uncertainty.
    n = len(viewer.layers)
    w.samples.setValue(1)
    w.seed.setValue(1)
    before = out.data.copy()
    assert w.run()
    _wait(qtbot, w)
    assert len(viewer.layers) == n - 1 and "em_denoised_uncertainty" not in viewer.layers
    assert viewer.layers["em_denoised"] is out and not np.array_equal(out.data, before)
    assert [layer.name for layer in viewer.layers].count("em_denoised") == 1
    assert "fill" not in w.status.text() and "steps, 1 sample)" in w.status.text()  # a diffusion model

    # An aligned section's zero border stays zero, and the status line says why.
    section = img.copy()
    section[:, 30:] = 0
    w.layer_combo.set_layer(viewer.add_image(section, name="section"))
    assert w.run()
    _wait(qtbot, w)
    assert (viewer.layers["section_denoised"].data[:, 30:] == 0).all()
    assert "regions of value 0 kept as fill" in w.status.text() and "NaN" not in w.status.text()
    # A float section with a NaN border (a registration tool's) keeps it NaN.
    nan = img.astype(np.float32)
    nan[:, 30:] = np.nan
    w.layer_combo.set_layer(viewer.add_image(nan, name="nan_section"))
    assert w.run()
    _wait(qtbot, w)
    got = viewer.layers["nan_section_denoised"].data
    assert np.isnan(got[:, 30:]).all() and np.isfinite(got[:, :30]).all()
    assert "NaN pixels kept as NaN" in w.status.text()

    # Settings persist: a new widget starts with the options of the last run.
    w2 = _dock(viewer, FINETUNE)  # any other widget must not disturb the restore section
    assert w2 is not None
    from napari_emdiffuse.widgets.restore import RestoreWidget

    again = RestoreWidget(viewer)
    assert again.options() == w.options()
    assert again.model.value()[0] == str(models["denoise"].resolve())
    again.deleteLater()


def test_a_thermo_fisher_tiff_opened_by_napari_restores_without_its_data_bar(viewer, qtbot, models, errors, tmp_path):
    """napari's own reader keeps the console's data bar below the scan; the widgets leave it out
    (and say so), so it neither skews the normalisation nor comes out "restored"."""
    import tifffile

    from napari_emdiffuse.widgets.restore import layer_databar

    scan = (np.random.default_rng(2).random((40, 48)) * 200 + 20).astype(np.uint8)
    bar = np.zeros((6, 48), np.uint8)
    fei = "[Image]\r\nResolutionX=48\r\nResolutionY=40\r\n\r\n[PrivateFei]\r\nDatabarHeight=6\r\n"
    path = tmp_path / "helios.tif"
    tifffile.imwrite(path, np.concatenate([scan, bar]), extratags=[(34682, "B", 0, fei.encode(), True)])
    layer = viewer.open(str(path), plugin="napari")[0]
    assert layer.data.shape == (46, 48) and layer_databar(layer) == (40, 6)
    assert layer_databar(viewer.add_image(np.concatenate([scan, bar]), name="plain")) is None  # the control
    w = _quick_restore_dock(viewer, models, layer)
    with qtbot.waitSignal(w.run_finished, timeout=60_000):
        assert w.run()
    assert not errors
    assert viewer.layers["helios_denoised"].data.shape == (40, 48)


def test_calibrated_files_opened_by_napari_give_the_widgets_their_voxel_size(viewer, tmp_path):
    """napari's own readers leave a Fiji stack and an SEM console's image unscaled; the widgets
    take the voxel size from the file (the isotropic factor, the size results are written
    with) and leave the layer's scale alone."""
    import imageio.v3 as iio
    import tifffile

    from napari_emdiffuse.widgets._layers import layer_source
    from napari_emdiffuse.widgets.restore import layer_databar

    vol = (np.random.default_rng(4).random((3, 32, 32)) * 255).astype(np.uint8)
    path = tmp_path / "fiji.tif"
    tifffile.imwrite(path, vol, imagej=True, resolution=(1 / 8, 1 / 8),
                     metadata={"unit": "nm", "spacing": 40.0, "axes": "ZYX"})  # fmt: skip
    layer = viewer.open(str(path), plugin="napari")[0]
    assert tuple(layer.scale) == (1, 1, 1)
    w = _dock(viewer, ISOTROPIC)
    w.layer_combo.set_layer(layer)
    assert w.factor.value() == 5 and "file's voxel size" in w.factor_hint.text()
    assert layer_source(layer)["spacing"] == (40.0, 8.0, 8.0) and tuple(layer.scale) == (1, 1, 1)
    plain = viewer.add_image(vol, name="plain")  # the control: no file, the layer's scale
    w.layer_combo.set_layer(plain)
    assert "layer's scale" in w.factor_hint.text() and layer_source(plain)["spacing"] == (1.0, 1.0, 1.0)
    # a Hitachi picture with its text file: the size, and the data bar below the scan
    bmp = tmp_path / "hit.bmp"
    iio.imwrite(bmp, np.concatenate([vol[0, :20], np.zeros((4, 32), np.uint8)]))
    (tmp_path / "hit.txt").write_text("[SemImageFile]\nDataSize=32x20\nPixelSize=2.5\n")
    hit = viewer.open(str(bmp), plugin="napari")[0]
    assert hit.data.shape[:2] == (24, 32) and layer_databar(hit) == (20, 4)
    assert layer_source(hit)["spacing"] == (2.5, 2.5)
    # a zarr store this plugin wrote, opened by napari's own zarr reader
    from napari_emdiffuse.engine.io.images import write_image

    write_image(tmp_path / "vol.zarr", vol, spacing=(40.0, 8.0, 8.0))
    store = viewer.open(str(tmp_path / "vol.zarr"), plugin="napari")[0]
    assert tuple(store.scale) == (1, 1, 1) and layer_source(store)["spacing"] == (40.0, 8.0, 8.0)


def test_restore_files_into_an_object_store_folder(viewer, qtbot, models, errors, tmp_path, monkeypatch):
    """Restore files… into a folder typed as a URL (fsspec's local:// stands in for a bucket):
    the results become zarr stores there, with their uncertainty under uncertainty/, or TIFF
    files where the format says so (written here, then uploaded whole); a web server's URL is
    refused in one line before anything starts. The destination dialog takes a typed URL or a
    browsed folder, and remembers the last one."""
    from napari_emdiffuse.engine.io.images import read_image, write_image
    from napari_emdiffuse.widgets import _files

    rng = np.random.default_rng(4)
    src = tmp_path / "scans"
    src.mkdir()
    for name in ("a.tif", "b.tif"):
        write_image(src / name, (rng.random((40, 48)) * 255).astype(np.uint8), spacing=(5.0, 5.0))
    files = [str(src / "a.tif"), str(src / "b.tif")]
    w = _quick_restore_dock(viewer, models, viewer.add_image(np.zeros((8, 8), np.uint8), name="unused"))
    w.samples.setValue(2)
    url = f"local://{tmp_path}/bucket/clean/"
    assert not w.run_files(files, "https://host/clean/") and "a web server's files are read here" in w.status.text()
    errors.clear()
    w.files_as.setCurrentIndex(w.files_as.findData(".tif"))
    with qtbot.waitSignal(w.run_finished, timeout=60_000) as sig:
        assert w.run_files(files, f"local://{tmp_path}/bucket/tif/")
    assert sig.args == ["done"] and not errors, errors
    tifs = tmp_path / "bucket" / "tif"
    assert sorted(p.name for p in tifs.iterdir()) == ["a.tif", "b.tif", "uncertainty"]
    assert sorted(p.name for p in (tifs / "uncertainty").iterdir()) == ["a_uncertainty.tif", "b_uncertainty.tif"]
    assert read_image(tifs / "b.tif").spacing == (5.0, 5.0)
    w.files_as.setCurrentIndex(w.files_as.findData(""))  # each file's format: into a URL, zarr stores
    asked = []
    monkeypatch.setattr(_files.QFileDialog, "getOpenFileNames", lambda *a, **k: (files, ""))
    monkeypatch.setattr(_files.DestinationDialog, "exec",
                        lambda self: asked.append(self.folder()) or self.place.setText(url) or 1)
    with qtbot.waitSignal(w.run_finished, timeout=60_000) as sig:
        w._choose_files()
    assert sig.args == ["done"] and not errors, errors
    clean = tmp_path / "bucket" / "clean"
    assert sorted(p.name for p in clean.iterdir()) == ["a.zarr", "b.zarr", "uncertainty"]
    assert sorted(p.name for p in (clean / "uncertainty").iterdir()) == ["a_uncertainty.zarr", "b_uncertainty.zarr"]
    got = read_image(url + "a.zarr")
    assert got.data.shape == (40, 48) and got.spacing == (5.0, 5.0)
    assert "restored 2 of 2 files" in w.status.text()
    dialog = _files.DestinationDialog(last=asked[0])
    monkeypatch.setattr(_files.QFileDialog, "getExistingDirectory", lambda *a, **k: str(tmp_path / "here"))
    dialog._browse()
    assert asked == [""] and dialog.folder() == str(tmp_path / "here")
    assert w._last_destination == url


def test_restore_widget_restores_files_on_disk_into_a_folder(viewer, qtbot, models, errors, tmp_path, monkeypatch):
    """Restore files…: files as the CLI batch writes them (names, uncertainty folder, pixel size),
    a broken file skipped and said, the model loaded once; a plan that would overwrite an input
    is refused before anything starts."""
    from napari_emdiffuse.engine.io.images import read_image, write_image
    from napari_emdiffuse.engine.models import registry

    rng = np.random.default_rng(3)
    src = tmp_path / "scans"
    src.mkdir()
    write_image(src / "a.tif", (rng.random((40, 48)) * 255).astype(np.uint8), spacing=(5.0, 5.0))
    write_image(src / "b.mrc", (rng.random((36, 40)) * 255).astype(np.float32), spacing=(4.0, 4.0))
    (src / "c.tif").write_bytes(b"II*\x00 not really a tiff")
    loads = []
    real = registry.load_model
    monkeypatch.setattr(registry, "load_model", lambda *a, **k: loads.append(a) or real(*a, **k))
    w = _quick_restore_dock(viewer, models, viewer.add_image(np.zeros((8, 8), np.uint8), name="unused"))
    w.samples.setValue(2)  # the tiny diffusion model: two samples give the uncertainty
    n_layers = len(viewer.layers)
    files = [str(src / name) for name in ("a.tif", "b.mrc", "c.tif")]
    with qtbot.waitSignal(w.run_finished, timeout=60_000) as sig:
        assert w.run_files(files, str(tmp_path / "out"))
    assert sig.args == ["done"] and not errors and len(loads) == 1
    out = tmp_path / "out"
    assert sorted(p.name for p in out.iterdir()) == ["a.tif", "b.mrc", "uncertainty"]
    assert sorted(p.name for p in (out / "uncertainty").iterdir()) == ["a_uncertainty.tif", "b_uncertainty.mrc"]
    a = read_image(out / "a.tif")
    assert a.data.shape == (40, 48) and a.data.dtype == np.uint8 and a.spacing == (5.0, 5.0)
    assert "restored 2 of 3 files" in w.status.text() and "skipped 1: c.tif" in w.status.text()
    assert len(viewer.layers) == n_layers  # files in, files out: no layer added
    # an output folder that is the input folder would replace the inputs: refused, nothing run
    assert not w.run_files(files[:2], str(src)) and "would replace an input" in w.status.text()
    assert not w.running and sorted(p.name for p in src.iterdir()) == ["a.tif", "b.mrc", "c.tif"]
    # one sample gives no uncertainty: no empty folder is left for it
    w.samples.setValue(1)
    with qtbot.waitSignal(w.run_finished, timeout=60_000):
        assert w.run_files(files[:1], str(tmp_path / "one"))
    assert sorted(p.name for p in (tmp_path / "one").iterdir()) == ["a.tif"]
    # Advanced > files… as .ome.zarr (zarr format 3): each result a store, written block by block
    w.files_as.setCurrentIndex(w.files_as.findData(".ome.zarr"))
    w.zarr_format.setCurrentIndex(w.zarr_format.findData(3))
    assert (w.options().files_as, w.options().zarr_format) == (".ome.zarr", 3)
    with qtbot.waitSignal(w.run_finished, timeout=60_000) as sig:
        assert w.run_files(files[:2], str(tmp_path / "stores"))
    assert sig.args == ["done"] and sorted(p.name for p in (tmp_path / "stores").iterdir()) == ["a.ome.zarr", "b.ome.zarr"]
    stored = read_image(tmp_path / "stores" / "a.ome.zarr")
    assert stored.data.shape == (40, 48) and stored.spacing == (5.0, 5.0)
    import zarr

    assert zarr.open_group(str(tmp_path / "stores" / "a.ome.zarr"), mode="r")["0"].metadata.zarr_format == 3
    w.files_as.setCurrentIndex(0)
    w.zarr_format.setCurrentIndex(0)
    # Cancel during the second file: the first stays, the second is not written, the status says so
    from napari_emdiffuse import batches as files_module  # what a batch restores each file with

    real_file = files_module.restore_file_iter

    def cancel_in_second(src, out, *args, **kwargs):
        if out.name == "b.mrc":
            w.cancel()
        return (yield from real_file(src, out, *args, **kwargs))

    monkeypatch.setattr(files_module, "restore_file_iter", cancel_in_second)
    with qtbot.waitSignal(w.run_finished, timeout=60_000) as sig:
        assert w.run_files(files[:2], str(tmp_path / "two"))
    assert sig.args == ["cancelled"] and sorted(p.name for p in (tmp_path / "two").iterdir()) == ["a.tif"]
    assert "the files finished before it are in" in w.status.text()
    monkeypatch.setattr(files_module, "restore_file_iter", real_file)
    # Advanced > workers: the files side by side on a local cluster (no .zarr output needed)
    errors.clear()  # the refusal above
    from napari_emdiffuse.engine.parallel import runner

    clusters = []
    real_client = runner.cluster_client
    monkeypatch.setattr(runner, "cluster_client", lambda *a, **k: clusters.append(a) or real_client(*a, **k))
    w.workers.setValue(2)
    with qtbot.waitSignal(w.run_finished, timeout=120_000) as sig:
        assert w.run_files(files, str(tmp_path / "side"))
    assert sig.args == ["done"] and not errors, errors
    assert sorted(p.name for p in (tmp_path / "side").iterdir()) == ["a.tif", "b.mrc"] and clusters[0][:2] == (2, None)
    assert "restored 2 of 3 files" in w.status.text() and "skipped 1: c.tif" in w.status.text()
    # keep finished blocks (resume): the files whose results are there are left out, and it says so
    shown = []
    monkeypatch.setattr(napari.utils.notifications, "show_info", lambda msg: shown.append(str(msg)))
    w.workers.setValue(0)
    w.resume.setChecked(True)
    stamps = {p.name: p.stat().st_mtime_ns for p in (tmp_path / "side").iterdir()}
    with qtbot.waitSignal(w.run_finished, timeout=60_000) as sig:
        assert w.run_files(files, str(tmp_path / "side"))
    assert sig.args == ["done"] and {p.name: p.stat().st_mtime_ns for p in (tmp_path / "side").iterdir()} == stamps
    assert "restored 0 of 1 files" in w.status.text()  # only the broken one was tried again
    assert any("2 of 3 files were restored by an earlier run" in m for m in shown)


def test_restore_widget_super_resolution_geometry(viewer, qtbot, models, errors, tmp_path):
    img = (np.random.default_rng(1).random((2, 24, 20)) * 4000).astype(np.uint16)
    viewer.add_image(img, name="stack", scale=(50.0, 8.0, 8.0), translate=(0.0, 16.0, 32.0))
    w = _sr_dock(viewer, models)
    assert w.model.task == "super-resolve"
    assert w.run()
    _wait(qtbot, w)
    assert not errors
    out = viewer.layers["stack_sr2"]
    assert out.data.shape == (2, 48, 40) and out.data.dtype == np.uint16
    assert tuple(out.scale) == (50.0, 4.0, 4.0)
    assert tuple(out.translate) == (0.0, 14.0, 30.0)  # translate - scale/4 in Y and X
    assert "stack_sr2_uncertainty" not in viewer.layers  # one sample: no uncertainty
    memory = np.asarray(out.data).copy()
    # into an MRC stack: the same pixels at half the pixel size, shown where they were
    from napari_emdiffuse.engine.io.images import read_image

    w.output.setText(str(tmp_path / "sr.mrc"))
    assert w.run()
    _wait(qtbot, w)
    assert not errors, errors
    back = read_image(tmp_path / "sr.mrc")
    assert np.array_equal(back.data, memory) and back.spacing == (50.0, 4.0, 4.0)
    out = viewer.layers["stack_sr2"]
    assert tuple(out.scale) == (50.0, 4.0, 4.0) and tuple(out.translate) == (0.0, 14.0, 30.0)
    assert np.array_equal(np.asarray(out.data), memory) and "stack_sr2_uncertainty" not in viewer.layers


def test_a_tczyx_ome_zarr_opens_and_restores_as_a_zyx_stack(viewer, qtbot, models, errors, tmp_path):
    """An NGFF 0.5 store (zarr format 3) with a single T and C in front opens through our
    reader as a ZYX layer with its voxel size; a layer that keeps the two axes (napari's own
    reader) restores as a ZYX stack with the z, y, x scale."""
    from tests.conftest import write_tczyx_ome

    img = (np.random.default_rng(1).random((2, 24, 20)) * 4000).astype(np.uint16)
    store = write_tczyx_ome(tmp_path / "cells.ome.zarr", img, spacing=(50.0, 8.0, 8.0), version="0.5")
    viewer.open(str(store), plugin=PLUGIN)
    opened = viewer.layers["cells"]
    assert opened.data.shape == (2, 24, 20) and tuple(opened.scale) == pytest.approx((50.0, 8.0, 8.0))
    assert np.array_equal(np.asarray(opened.data), img)
    layer = viewer.add_image(img[None, None], name="tczyx", scale=(1.0, 1.0, 50.0, 8.0, 8.0))
    check_input_layer(layer, volume=True)  # 3D once the single T and C are dropped
    w = _sr_dock(viewer, models)
    w.layer_combo.set_layer(layer)
    assert w.run()
    _wait(qtbot, w)
    assert not errors
    out = viewer.layers["tczyx_sr2"]
    assert out.data.shape == (2, 48, 40) and tuple(out.scale) == (50.0, 4.0, 4.0)


def test_score_dock_scores_the_sample_and_its_restoration_against_the_clean_layer(viewer, qtbot, models, errors,
                                                                                  monkeypatch):
    """The sample pair (noisy + clean), the noisy one restored: ticked with its result, the
    Score dock shows the figures score_images gives (the result's uncertainty layer scored
    with it) and Copy gives the table; a layer restored in part (translated) is scored
    against the reference beneath it; nothing ticked says so in one line."""
    from napari_emdiffuse._sample_data import noisy_fibsem_with_reference
    from napari_emdiffuse.scoring import score_images

    for data, meta, _ in noisy_fibsem_with_reference():
        viewer.add_image(data, **meta)
    restore = _quick_restore_dock(viewer, models, viewer.layers["liver_noisy"])
    restore.samples.setValue(2)  # the tiny diffusion model's uncertainty: the samples' spread
    assert restore.run()
    _wait(qtbot, restore)
    score = _dock(viewer, "Score")
    score.reference.set_layer(viewer.layers["liver_clean"])
    score.run()
    assert errors == ["tick the layers to score"]
    score.set_checked(["liver_noisy", "liver_noisy_denoised"])
    with qtbot.waitSignal(score.scored, timeout=60_000) as done:
        score.run()
    assert done.args == ["done"] and score.table.rowCount() == 2
    clean = viewer.layers["liver_clean"].data
    want = score_images([viewer.layers["liver_noisy"].data, viewer.layers["liver_noisy_denoised"].data], clean,
                        uncertainties=[None, viewer.layers["liver_noisy_denoised_uncertainty"].data])
    got = {score.table.item(r, 0).text(): float(score.table.item(r, 1).text()) for r in range(2)}
    assert got == pytest.approx({"liver_noisy": round(want[0].psnr, 2), "liver_noisy_denoised": round(want[1].psnr, 2)})
    head = [score.table.horizontalHeaderItem(c).text() for c in range(score.table.columnCount())]
    row = {score.table.item(r, 0).text(): r for r in range(2)}
    cov = [score.table.item(row[n], head.index("cov2 %")).text() for n in ("liver_noisy", "liver_noisy_denoised")]
    assert "FRC nm" in head and cov[0] == "" and float(cov[1]) == pytest.approx(want[1].uncertainty["coverage"] * 100,
                                                                                 abs=0.06)
    score.copy()
    assert napari.qt.get_qapp().clipboard().text() == score.text and "liver_noisy_denoised" in score.text
    part = viewer.add_image(clean[40:104, 16:80], name="part", scale=(8.0, 8.0), translate=(320.0, 128.0))
    score.set_checked(["part"])
    with qtbot.waitSignal(score.scored, timeout=60_000):
        score.run()
    assert score.table.item(0, 1).text() == "inf"  # the reference's own pixels, found beneath it
    pyramid = viewer.add_image([clean, clean[::2, ::2]], name="pyramid", multiscale=True, scale=(8.0, 8.0))
    score.reference.set_layer(pyramid)
    score.table.setRowCount(0)
    with qtbot.waitSignal(score.scored, timeout=60_000) as done:
        score.run()
    assert done.args == ["done"] and score.table.item(0, 1).text() == "inf"  # its finest level, beneath the part
    part.translate = (322.0, 128.0)
    score.run()
    assert "lies between the reference's pixels" in errors[-1]
    monkeypatch.setattr("napari_emdiffuse.scoring.MAX_SCORED_PIXELS", 1000)  # a layer too large: said before reading
    score.set_checked(["liver_noisy"])
    score.run()
    assert "65536 pixels: restore a region in view" in errors[-1]


def test_a_damaged_chunk_of_a_lazy_layer_is_named_by_its_layer(viewer, qtbot, models, errors, tmp_path):
    """A layer read lazily from a zarr store whose chunk was cut short after it was shown:
    the run fails with one line that names the layer and says the data is damaged (not
    "unexpected error"), and adds no layer. The control: the same layer before the damage
    restores."""
    import dask.array as da

    from napari_emdiffuse.engine.io.images import write_image

    img = (np.random.default_rng(3).random((2, 40, 48)) * 255).astype(np.uint8)
    write_image(tmp_path / "v.zarr", img)
    layer = viewer.add_image(da.from_zarr(str(tmp_path / "v.zarr")), name="lazy")
    w = _quick_restore_dock(viewer, models, layer)
    assert w.run()
    _wait(qtbot, w)
    assert not errors and "lazy_denoised" in viewer.layers
    viewer.layers.remove("lazy_denoised")
    for chunk in (p for p in (tmp_path / "v.zarr").rglob("*") if p.is_file() and p.name[0].isdigit()):
        chunk.write_bytes(chunk.read_bytes()[:20])
    assert w.run()
    _wait(qtbot, w)
    assert len(errors) == 1 and errors[0].startswith("a stored chunk of layer 'lazy' could not be decoded"), errors
    assert w.status.text().endswith(errors[0]) and "lazy_denoised" not in viewer.layers


def test_restore_widget_writes_tiff_mrc_and_precomputed_outputs(viewer, qtbot, models, errors, tmp_path):
    """The output field takes what ``emdiffuse denoise -o`` takes: the same pixels as the run
    in memory, written with the pixel size and the layer's place, the uncertainty beside in
    the same format, and shown from the file; the layer's own file is refused."""
    from napari_emdiffuse.engine.io.images import read_image

    img = (np.random.default_rng(4).random((40, 48)) * 255).astype(np.uint8)
    layer = viewer.add_image(img, name="scan", scale=(8.0, 8.0), translate=(16.0, 24.0))
    w = _quick_restore_dock(viewer, models, layer)
    w.samples.setValue(2)
    assert w.run()
    _wait(qtbot, w)
    assert not errors, errors
    memory = np.asarray(viewer.layers["scan_denoised"].data).copy()
    for name in ("scan.tif", "scan.mrc", "scan.precomputed"):
        out = tmp_path / name
        w.output.setText(str(out))
        assert w.run()
        _wait(qtbot, w)
        assert not errors, errors
        written = read_image(out)
        assert np.array_equal(np.asarray(written.data[...]).squeeze(), memory), name  # seeded: the same pixels
        assert tuple(written.spacing)[-2:] == (8.0, 8.0) and written.unit == "nm", name
        unc = read_image(tmp_path / name.replace("scan.", "scan_uncertainty."))
        assert unc.data.shape[-2:] == img.shape and np.asarray(unc.data[...]).max() > 0, name
        shown = viewer.layers["scan_denoised"]
        assert np.array_equal(np.asarray(shown.data).squeeze(), memory) and tuple(shown.translate) == (16.0, 24.0)
        assert "scan_denoised_uncertainty" in viewer.layers
        assert f"written to '{out}' and its uncertainty in " in w.status.text() and " s on cpu" in w.status.text()
        assert w.device.used.text() == "used: cpu"
    assert read_image(tmp_path / "scan.tif").origin == (16.0, 24.0)  # where it lies, as napari places it
    # a result too large for memory with keep finished blocks: its store is kept if stopped, and Cancel says so
    from napari_emdiffuse.engine.events import Progress

    assert not w._resumable
    w._estimate(Progress("note", 0, 0, message="note: ...; it goes through a temporary .zarr beside 'x.tif', then "
                         "into it (kept if the run stops: --resume continues it)"), "restoring")
    assert w._resumable and w.run_notes[-1].startswith("...; it goes through")
    # on a local cluster of one process: the workers fill a store beside the file, then it is written
    w.output.setText(str(tmp_path / "workers.tif"))
    w.workers.setValue(1)
    assert w.run()
    _wait(qtbot, w)
    w.workers.setValue(0)
    assert not errors, errors
    assert np.abs(read_image(tmp_path / "workers.tif").data.astype(int) - memory.astype(int)).max() <= 1
    assert not [p.name for p in tmp_path.iterdir() if p.name.startswith(".")]
    assert "the workers write zarr stores" in w.status.text()
    # Advanced > cluster: a running cluster, found by the file its scheduler wrote (as on HPC)
    import json

    from distributed import LocalCluster

    from napari_emdiffuse.engine.parallel.runner import environment_kept

    sched = tmp_path / "sched.json"
    with environment_kept(), LocalCluster(n_workers=1, threads_per_worker=1, processes=False,
                                          dashboard_address="127.0.0.1:0") as cluster:
        sched.write_text(json.dumps({"address": cluster.scheduler_address}))
        w.scheduler.setText(str(sched))
        w.output.setText(str(tmp_path / "cluster.zarr"))
        assert w.options().scheduler == str(sched) and w.run()
        _wait(qtbot, w)
    w.scheduler.setText("")
    assert not errors, errors
    there = np.asarray(read_image(tmp_path / "cluster.zarr").data[...]).squeeze()
    assert np.abs(there.astype(int) - memory.astype(int)).max() <= 1
    w.scheduler.setText(str(tmp_path / "gone.json"))  # refused before any work
    assert not w.run()
    assert errors and "no dask scheduler file" in errors[-1] and not (tmp_path / "gone.json").exists()
    errors.clear()
    w.scheduler.setText("")
    # the layer's own file is not replaced while it is read
    own = viewer.open(str(tmp_path / "scan.mrc"), plugin=PLUGIN)[0]
    w.layer_combo.set_layer(own)
    w.output.setText(str(tmp_path / "scan.mrc"))
    assert not w.run()
    assert errors and "is the file layer 'scan [1]' was opened from" in errors[-1]


def test_isotropic_widget_writes_a_precomputed_volume(viewer, qtbot, models, errors, tmp_path):
    from napari_emdiffuse.engine.io.images import read_image

    vol = (np.random.default_rng(3).random((3, 32, 32)) * 255).astype(np.uint8)
    layer = viewer.add_image(vol, name="vol", scale=(16.0, 8.0, 8.0))
    w = _dock(viewer, ISOTROPIC)
    w.layer_combo.set_layer(layer)
    w.model.add_path(models["iso"])
    w.steps.setValue(2)
    w.tile.setValue(32)
    w.device.set_value("cpu")
    w.samples.setValue(2)
    w.uncertainty.setChecked(True)
    assert w.run()
    _wait(qtbot, w)
    assert not errors, errors
    memory = np.asarray(viewer.layers["vol_isotropic"].data).copy()
    w.output.setText(str(tmp_path / "iso.precomputed"))
    assert w.run()
    _wait(qtbot, w)
    assert not errors, errors
    written = read_image(tmp_path / "iso.precomputed")
    assert written.data.shape == (5, 32, 32) and tuple(written.spacing) == (8.0, 8.0, 8.0)
    assert np.array_equal(np.asarray(written.data[:]), memory) and np.array_equal(np.asarray(written.data[::2]), vol)
    unc = read_image(tmp_path / "iso_uncertainty.precomputed").data
    assert unc.shape == (5, 32, 32) and np.asarray(unc[0]).max() == 0 and np.asarray(unc[1]).max() > 0
    shown = viewer.layers["vol_isotropic"]
    assert shown.data.shape == (5, 32, 32) and tuple(shown.scale) == (8.0, 8.0, 8.0)
    assert np.array_equal(np.asarray(shown.data), memory) and "iso.precomputed" in w.status.text()
    # Advanced > precomputed chunks: JPEG, as `--encoding jpeg --jpeg-quality 95` writes them
    w.chunks.setCurrentText("jpeg 95")
    w.output.setText(str(tmp_path / "iso_jpeg.precomputed"))
    assert w.options().chunks == "jpeg 95" and w.run()
    _wait(qtbot, w)
    assert not errors, errors
    info = json.loads((tmp_path / "iso_jpeg.precomputed" / "info").read_text())
    assert {s["encoding"] for s in info["scales"]} == {"jpeg"}
    unc_info = json.loads((tmp_path / "iso_jpeg_uncertainty.precomputed" / "info").read_text())
    assert {s["encoding"] for s in unc_info["scales"]} == {"raw"}  # the float uncertainty stays raw
    lossy = np.asarray(read_image(tmp_path / "iso_jpeg.precomputed").data[:], dtype=float)
    assert 0 < np.abs(lossy - memory).mean() < 4


def test_restore_widget_streams_a_dask_stack_into_zarr_and_does_one_slice(viewer, qtbot, models, errors, tmp_path):
    import dask.array as da

    img = (np.random.default_rng(3).random((3, 40, 48)) * 255).astype(np.uint8)
    lazy = da.from_array(img, chunks=(1, 40, 48))
    layer = viewer.add_image(lazy, name="big", scale=(50.0, 8.0, 8.0))
    w = _quick_restore_dock(viewer, models, layer)
    w.output.setText(str(tmp_path / "big_denoised.zarr"))
    assert w.run()
    _wait(qtbot, w)
    assert not errors, errors
    out = viewer.layers["big_denoised"]
    assert isinstance(out.data, da.Array) and out.data.shape == img.shape  # shown lazily from the store
    assert (tmp_path / "big_denoised.zarr").is_dir()
    assert tuple(out.scale) == (50.0, 8.0, 8.0)
    # on a local dask cluster of one process: the same store, within a grey level (one thread)
    import zarr

    w.output.setText(str(tmp_path / "big_workers.zarr"))
    w.workers.setValue(1)
    assert w.options().workers == 1 and w.run()
    _wait(qtbot, w)
    assert not errors, errors
    one, two = (zarr.open_array(str(tmp_path / n), mode="r")[:].astype(int) for n in ("big_denoised.zarr", "big_workers.zarr"))
    assert np.abs(one - two).max() <= 1
    w.workers.setValue(0)
    # resumable: the same pixels, and a finished store leaves nothing beside it
    w.output.setText(str(tmp_path / "big_resume.zarr"))
    w.resume.setChecked(True)
    assert w.options().resume and w.run()
    _wait(qtbot, w)
    assert not errors, errors
    again = zarr.open_array(str(tmp_path / "big_resume.zarr"), mode="r")[:].astype(int)
    assert np.array_equal(one, again) and not list(tmp_path.glob("big_resume.zarr.partial-*"))
    w.resume.setChecked(False)
    # an OME-Zarr output: shown as a multiscale layer, its uncertainty named beside it
    from napari_emdiffuse.engine.io import pyramid

    pyramid.PYRAMID_TOP, top = 16, pyramid.PYRAMID_TOP
    try:
        w.output.setText(str(tmp_path / "big.ome.zarr"))
        assert w.run()
        _wait(qtbot, w)
    finally:
        pyramid.PYRAMID_TOP = top
    assert not errors, errors
    shown = viewer.layers["big_denoised"]
    assert shown.multiscale and [tuple(d.shape) for d in shown.data][:2] == [img.shape, (3, 20, 24)]
    # zarr format 3: the same pixels, a shard per block (OME-Zarr 0.5), shown from the store
    w.output.setText(str(tmp_path / "big_v3.ome.zarr"))
    w.zarr_format.setCurrentText("3 (sharded)")
    assert w.options().zarr_format == 3 and w.run()
    _wait(qtbot, w)
    assert not errors, errors
    v3 = zarr.open_group(str(tmp_path / "big_v3.ome.zarr"), mode="r")
    assert v3["0"].metadata.zarr_format == 3 and v3.attrs["ome"]["version"] == "0.5"
    assert np.array_equal(v3["0"][:].astype(int), one)
    w.zarr_format.setCurrentText("2")
    # current slice only: one 2D result named after the slice
    w.output.setText("")
    w.current_slice.setChecked(True)
    viewer.dims.set_current_step(0, 2)
    assert w.run()
    _wait(qtbot, w)
    assert not errors, errors
    assert viewer.layers["big_z2_denoised"].data.shape == img.shape[1:]
    with pytest.raises(EMDiffuseError, match="unsupported file type '.jpgx'"):
        RestoreOptions(output=str(tmp_path / "x.jpgx")).validate()
    with pytest.raises(EMDiffuseError, match="workers write into an output"):
        RestoreOptions(workers=2).validate()
    with pytest.raises(EMDiffuseError, match="workers must be 0"):
        RestoreOptions(workers=-1, output=str(tmp_path / "y.zarr")).validate()
    with pytest.raises(EMDiffuseError, match="keeping finished blocks needs a .zarr output"):
        RestoreOptions(resume=True).validate()
    with pytest.raises(EMDiffuseError, match="zarr format 3 is the format of a .zarr output"):
        RestoreOptions(zarr_format=3).validate()


def test_restore_widget_restores_the_region_in_view(viewer, qtbot, models, errors, tmp_path):
    """region in view only: the rows and columns on screen (closed form from the camera),
    restored as the engine restores that region, overlaid on the input; the whole run then
    replaces it; with an output path, into a store that lies where the region does. A 3D view
    is refused."""
    from napari_emdiffuse.api import restore
    from napari_emdiffuse.engine.io.images import read_image
    from napari_emdiffuse.engine.models.registry import load_model

    img = (np.random.default_rng(4).random((200, 240)) * 255).astype(np.uint8)
    layer = viewer.add_image(img, name="big2d", scale=(2.0, 2.0), translate=(10.0, 20.0))
    w = _quick_restore_dock(viewer, models, layer)
    h, wd = viewer.canvas.size
    viewer.camera.zoom = h / 80.0  # 80 world units tall: 40 pixels
    viewer.camera.center = (0.0, 110.0, 200.0)
    half_x = wd / 2 / viewer.camera.zoom
    # world y 70..150 -> data 30..70 -> pixels 30..70; x likewise
    x0, x1 = math.floor((200 - half_x - 20) / 2 + 0.5), math.ceil((200 + half_x - 20) / 2 - 0.5) + 1
    w.in_view.setChecked(True)
    assert w.run()
    _wait(qtbot, w)
    assert not errors, errors
    out = viewer.layers["big2d_denoised"]
    assert out.data.shape == (41, x1 - x0) and tuple(out.translate) == (70.0, 20.0 + 2 * x0)
    assert tuple(out.scale) == (2.0, 2.0) and out.metadata["emdiffuse"]["region"] == [30, 71, x0, x1]
    assert "rows 30:71" in w.status.text()
    tiny = load_model(str(models["denoise"]), task="denoise")
    same = restore(img, "denoise", tiny, region=(30, 71, x0, x1), steps=1, tile=32, device="cpu", spacing=(2.0, 2.0))
    assert np.array_equal(np.asarray(out.data), same.mean)
    # the whole run replaces the preview, over the whole input
    w.in_view.setChecked(False)
    assert w.run()
    _wait(qtbot, w)
    assert viewer.layers["big2d_denoised"].data.shape == img.shape and tuple(out.translate) == (10.0, 20.0)
    # with an output path: the same region into a store that records its place
    w.in_view.setChecked(True)
    store = tmp_path / "part.zarr"
    w.output.setText(str(store))
    assert w.run()
    _wait(qtbot, w)
    assert not errors, errors
    shown = viewer.layers["big2d_denoised"]
    assert tuple(shown.translate) == (70.0, 20.0 + 2 * x0) and np.array_equal(np.asarray(shown.data), same.mean)
    back = read_image(store)
    assert back.origin == (70.0, 20.0 + 2 * x0) and back.spacing == (2.0, 2.0)
    assert np.array_equal(np.asarray(back.data), same.mean)
    # into a TIFF: the same region, which lies where it does when opened again
    w.output.setText(str(tmp_path / "part.tif"))
    assert w.run()
    _wait(qtbot, w)
    assert not errors, errors
    back = read_image(tmp_path / "part.tif")
    assert back.origin == (70.0, 20.0 + 2 * x0) and np.array_equal(back.data, same.mean)
    assert tuple(viewer.layers["big2d_denoised"].translate) == (70.0, 20.0 + 2 * x0)
    w.output.setText("")
    viewer.dims.ndisplay = 3
    assert not w.run() and "switch the viewer to 2D" in errors[-1]
    viewer.dims.ndisplay = 2
    viewer.camera.center = (0.0, 5000.0, 5000.0)
    assert not w.run() and "not in view" in errors[-1]


def test_restore_widget_writes_into_an_object_store(viewer, qtbot, models, errors, tmp_path):
    """An output box holding a store's URL (fsspec's local:// stands in for s3://): the
    result is shown from the store there, with its uncertainty; a URL that exists, or a file
    type not written, is refused in one line before any work; a TIFF by URL is uploaded."""
    from napari_emdiffuse.engine.io.images import read_image

    img = (np.random.default_rng(5).random((64, 72)) * 255).astype(np.uint8)
    layer = viewer.add_image(img, name="cloud", scale=(4.0, 4.0), translate=(8.0, 0.0))
    w = _quick_restore_dock(viewer, models, layer)
    w.samples.setValue(2)
    url = f"local://{tmp_path}/bucket/cloud.ome.zarr"
    w.output.setText(url)
    assert w.run()
    _wait(qtbot, w)
    assert not errors, errors
    back = read_image(url)
    shown = viewer.layers["cloud_denoised"]
    assert np.array_equal(np.asarray(shown.data[0] if shown.multiscale else shown.data), np.asarray(back.data))
    assert back.origin == (8.0, 0.0) and tuple(shown.translate) == (8.0, 0.0)
    assert viewer.layers["cloud_denoised_uncertainty"].data is not None
    assert sorted(p.name for p in (tmp_path / "bucket").iterdir()) == ["cloud.ome.zarr", "cloud_uncertainty.ome.zarr"]
    assert not w.run() and "it exists" in errors[-1]
    w.output.setText(f"local://{tmp_path}/bucket/x.png")
    assert not w.run() and "unsupported file type '.png'" in errors[-1]
    # a TIFF by URL: written here, uploaded whole, shown from there
    w.output.setText(f"local://{tmp_path}/bucket/x.tif")
    assert w.run()
    _wait(qtbot, w)
    assert len(errors) == 2, errors
    assert np.array_equal(read_image(tmp_path / "bucket" / "x.tif").data, np.asarray(back.data))
    assert np.array_equal(np.asarray(viewer.layers["cloud_denoised"].data), np.asarray(back.data))
    assert (tmp_path / "bucket" / "x_uncertainty.tif").is_file()


def test_restore_widget_averages_an_alike_stack_along_z_and_says_so(viewer, qtbot, models, errors):
    from scipy.ndimage import gaussian_filter

    rng = np.random.default_rng(0)
    fib = np.clip(128 + 400 * gaussian_filter(rng.normal(size=(40, 48)), 3) + rng.normal(0, 10, (6, 40, 48)), 0, 255)
    layer = viewer.add_image(fib.astype(np.uint8), name="fib")
    w = _quick_restore_dock(viewer, models, layer)
    assert w.options().z_filter == "auto"
    assert w.run()
    _wait(qtbot, w)
    assert not errors, errors
    assert "averaged along z over" in w.status.text()
    assert viewer.layers["fib_denoised"].metadata["emdiffuse"]["z_filter"] > 0
    averaged = np.asarray(viewer.layers["fib_denoised"].data).copy()
    w.z_filter.setCurrentText("off")
    assert w.options().z_filter == "off"
    assert w.run()
    _wait(qtbot, w)
    assert "averaged along z" not in w.status.text() and "z_filter" not in viewer.layers["fib_denoised"].metadata["emdiffuse"]
    assert not np.array_equal(np.asarray(viewer.layers["fib_denoised"].data), averaged)
    w.z_filter.setCurrentText("1")  # a width given, but one slice asked for: nothing to average, no error
    w.current_slice.setChecked(True)
    viewer.dims.set_current_step(0, 2)
    assert w.run()
    _wait(qtbot, w)
    assert not errors, errors
    assert viewer.layers["fib_z2_denoised"].data.ndim == 2
    w.current_slice.setChecked(False)
    w.z_filter.setCurrentText("strong")  # refused in one line, before any work
    assert not w.run()
    assert errors and "z filter must be" in errors[-1]


def _slow_restore_started(viewer, qtbot, models, img, steps, **settings):
    """A Restore dock running many sampler steps on ``img`` (layer "big"), once sampling started."""
    viewer.add_image(img, name="big")
    w = _dock(viewer, RESTORE)
    w.model.add_path(models["denoise"])
    w.steps.setValue(steps)
    w.tile.setValue(32)
    w.device.set_value("cpu")
    for name, value in settings.items():  # a line edit's text or a check box's state
        control = getattr(w, name)
        if isinstance(value, str):
            control.setText(value)
        else:
            control.setChecked(value)
    assert w.run()
    qtbot.waitUntil(lambda: w._run is not None and w._run._pbar is not None, timeout=60_000)
    return w


def test_restore_cancel_leaves_nothing_and_viewer_responds(viewer, qtbot, models, errors):
    img = (np.random.default_rng(2).random((96, 96)) * 255).astype(np.uint8)
    w = _slow_restore_started(viewer, qtbot, models, img, 200)
    with qtbot.waitSignal(w.run_finished, timeout=30_000) as sig:
        w.run_button.click()  # Cancel
        assert w.run_button.text() == "Cancelling…"
        # The GUI thread is free while the worker winds down.
        viewer.add_points([[1, 1]], name="still-alive")
        qtbot.wait(10)
    assert sig.args == ["cancelled"] and not errors
    assert "big_denoised" not in viewer.layers and "still-alive" in viewer.layers
    assert w.run_button.text() == "Run" and w.status.text().startswith("cancelled")
    assert "kept" not in w.status.text()


def test_a_cancelled_resumable_run_keeps_its_blocks_and_says_so(viewer, qtbot, models, errors, tmp_path):
    img = (np.random.default_rng(2).random((3, 64, 64)) * 255).astype(np.uint8)
    w = _slow_restore_started(viewer, qtbot, models, img, 100, output=str(tmp_path / "big.zarr"), resume=True)
    with qtbot.waitSignal(w.run_finished, timeout=60_000) as sig:
        w.run_button.click()  # Cancel
    assert sig.args == ["cancelled"] and not errors
    assert "finished blocks are kept: Run again with the same options" in w.status.text()
    assert not (tmp_path / "big.zarr").exists() and list(tmp_path.glob("big.zarr.partial-*"))


def test_bad_inputs_are_notified(viewer, qtbot, models, errors):
    viewer.add_image(np.zeros((16, 16, 3), np.uint8), name="photo", rgb=True)
    w = _dock(viewer, RESTORE)
    assert not w.run()
    assert len(errors) == 1 and "RGB" in errors[0] and not w.running
    assert "RGB" in w.status.text()  # the status line keeps what a toast may cut off

    viewer.add_image(np.zeros((16, 16), np.uint8), name="flat")
    iso = _dock(viewer, ISOTROPIC)
    iso.layer_combo.set_layer(viewer.layers["flat"])
    assert not iso.run()
    assert "3D" in errors[-1]

    # An engine error (a model for another task) comes back as its one-line message.
    w.layer_combo.set_layer(viewer.layers["flat"])
    w.model.add_path(models["sr"])
    w.device.set_value("cpu")
    assert w.run()
    _wait(qtbot, w)
    assert "made for super-resolve, not denoise" in errors[-1]
    assert w.status.text().startswith("failed") and "made for super-resolve" in w.status.text()


def test_model_picker_browse_and_checkpoint_arch(viewer, qtbot, models, tmp_path):
    w = _dock(viewer, RESTORE)
    ckpt = tmp_path / "best_Network.pth"
    ckpt.write_bytes(b"")
    w.model.ask_path = lambda: str(models["denoise"] / "model.yaml")  # picking model.yaml = its folder
    w.model.combo.setCurrentIndex(w.model.combo.findData(BROWSE))
    w.model._on_activated(w.model.combo.currentIndex())
    assert w.model.value() == (str(models["denoise"].resolve()), None)
    assert w.model.arch.isHidden()
    w.model.add_path(ckpt)
    assert w.model.value() == (str(ckpt.resolve()), "EMDiffuse-n")
    assert not w.model.arch.isHidden()
    w.model.ask_path = lambda: None  # dialog cancelled: the selection stays
    w.model.combo.setCurrentIndex(w.model.combo.findData(BROWSE))
    w.model._on_activated(w.model.combo.currentIndex())
    assert w.model.value()[0] == str(ckpt.resolve())


@pytest.mark.skipif(not HAS_VOLUME, reason="engine.volume not available yet")
def test_isotropic_widget(viewer, qtbot, models, errors, tmp_path):
    vol = (np.random.default_rng(3).random((3, 32, 32)) * 255).astype(np.uint8)
    layer = viewer.add_image(vol, name="vol", scale=(16.0, 8.0, 8.0), translate=(4.0, 0.0, 2.0))
    w = _dock(viewer, ISOTROPIC)
    w.layer_combo.set_layer(layer)
    assert w.factor.value() == 2  # prefilled from the layer's scale
    w.model.add_path(models["iso"])
    w.steps.setValue(2)
    w.tile.setValue(32)
    w.device.set_value("cpu")
    assert w.run()
    _wait(qtbot, w)
    assert not errors, errors
    out = viewer.layers["vol_isotropic"]
    assert out.data.shape == (5, 32, 32) and out.data.dtype == np.uint8
    assert out.metadata["emdiffuse"]["factor"] == 2
    assert tuple(out.scale) == (8.0, 8.0, 8.0) and tuple(out.translate) == (4.0, 0.0, 2.0)

    # Into a zarr store, shown lazily, with uncertainty; re-running replaces the layer's data.
    w.output.setText(str(tmp_path / "iso.zarr"))
    w.samples.setValue(2)
    w.uncertainty.setChecked(True)
    assert w.run()
    _wait(qtbot, w)
    assert not errors, errors
    import dask.array as da

    assert viewer.layers["vol_isotropic"] is out and isinstance(out.data, da.Array)
    assert out.data.shape == (5, 32, 32) and (tmp_path / "iso.zarr").exists()
    unc = viewer.layers["vol_isotropic_uncertainty"]
    assert isinstance(unc.data, da.Array) and unc.data.shape == (5, 32, 32)
    assert tuple(unc.scale) == (8.0, 8.0, 8.0) and unc.colormap.name == "magma"
    assert np.asarray(unc.data[0]).max() == 0  # measured slices are certain

    # Denoised first (the bundled denoiser), in memory: the measured slices are replaced.
    w.output.setText("")
    w.uncertainty.setChecked(False)
    w.denoise_first.setChecked(True)
    assert w.options().denoise_first
    assert w.run()
    _wait(qtbot, w)
    assert not errors, errors
    out = viewer.layers["vol_isotropic"]
    assert out.metadata["emdiffuse"]["denoised_first_by"] == "demo-denoise"
    assert not np.array_equal(np.asarray(out.data)[::2], vol)

    # "(default for the task)" at factor 2: the bundled model for every factor (the factor-3
    # model would refuse), named in the status line
    w.denoise_first.setChecked(False)
    w.model.combo.setCurrentIndex(0)
    assert w.model.value() == (None, None)
    assert w.run()
    _wait(qtbot, w)
    assert not errors, errors
    assert viewer.layers["vol_isotropic"].metadata["emdiffuse"]["model"] == "demo-isotropic-any"
    assert "by demo-isotropic-any" in w.status.text()

    # region in view only: the rows and columns on screen of every slice, over the input
    big = (np.random.default_rng(8).random((3, 96, 120)) * 255).astype(np.uint8)
    vlayer = viewer.add_image(big, name="wide", scale=(16.0, 8.0, 8.0))
    w.layer_combo.set_layer(vlayer)
    w.model.add_path(models["iso"])
    h, wd = viewer.canvas.size
    viewer.camera.zoom = h / 160.0  # 160 units tall: 20 pixels
    viewer.camera.center = (0.0, 400.0, 480.0)  # world y 320..480 -> rows 40..60
    half_x = wd / 2 / viewer.camera.zoom
    x0, x1 = max(0, math.floor((480 - half_x) / 8 + 0.5)), min(120, math.ceil((480 + half_x) / 8 - 0.5) + 1)
    w.in_view.setChecked(True)
    assert w.run()
    _wait(qtbot, w)
    assert not errors, errors
    out = viewer.layers["wide_isotropic"]
    assert out.data.shape == (5, 21, x1 - x0) and tuple(out.translate)[1:] == (320.0, 8.0 * x0)
    assert "rows 40:61" in w.status.text() and out.metadata["emdiffuse"]["region"] == [40, 61, x0, x1]
    assert np.array_equal(np.asarray(out.data)[::2], big[:, 40:61, x0:x1])  # the measured slices, in place
    first = np.asarray(out.data).copy()
    # with an output path: a store of the region that lies where it does
    store = tmp_path / "wide_part.zarr"
    w.output.setText(str(store))
    assert w.run()
    _wait(qtbot, w)
    assert not errors, errors
    from napari_emdiffuse.engine.io.images import read_image

    back = read_image(store)
    assert back.origin == (0.0, 320.0, 8.0 * x0) and back.spacing == (8.0, 8.0, 8.0)
    assert np.array_equal(np.asarray(back.data), first)
    assert tuple(viewer.layers["wide_isotropic"].translate)[1:] == (320.0, 8.0 * x0)
    w.output.setText("")


def test_isotropic_widget_reconstructs_volume_files_into_a_folder(viewer, qtbot, models, errors, tmp_path, monkeypatch):
    """Reconstruct files…: each volume at its voxel size's factor, the factor box for one that
    records none, the measured slices kept and the voxel size written; a 2D file skipped and
    said; no uncertainty folder unless asked; the default model follows each factor."""
    import tifffile

    from napari_emdiffuse.engine.io.images import read_image, write_image

    rng = np.random.default_rng(5)
    src = tmp_path / "vols"
    src.mkdir()
    a = (rng.random((3, 32, 32)) * 255).astype(np.uint8)
    b = (rng.random((3, 32, 24)) * 255).astype(np.uint8)
    write_image(src / "a.tif", a, spacing=(30.0, 10.0, 10.0), axes="ZYX")  # factor 3
    tifffile.imwrite(src / "b.tif", b)  # no voxel size: the box's factor
    tifffile.imwrite(src / "c.tif", a[0])  # 2D: skipped
    w = _dock(viewer, ISOTROPIC)
    w.factor.setValue(2)
    w.tile.setValue(32)
    w.device.set_value("cpu")
    n_layers = len(viewer.layers)
    files = [str(src / n) for n in ("a.tif", "b.tif", "c.tif")]
    with qtbot.waitSignal(w.run_finished, timeout=120_000) as sig:
        assert w.run_files(files, str(tmp_path / "out"))
    assert sig.args == ["done"] and not errors, errors
    out = tmp_path / "out"
    assert sorted(p.name for p in out.iterdir()) == ["a.tif", "b.tif"]  # no uncertainty asked
    ra, rb = read_image(out / "a.tif"), read_image(out / "b.tif")
    assert ra.data.shape == (7, 32, 32) and np.array_equal(ra.data[::3], a) and ra.spacing == (10.0, 10.0, 10.0)
    assert rb.data.shape == (5, 32, 24) and np.array_equal(rb.data[::2], b)
    assert "reconstructed 2 of 3 files" in w.status.text() and "skipped 1: c.tif" in w.status.text()
    assert len(viewer.layers) == n_layers
    # with the uncertainty: into out/uncertainty, a tiny model of the box's choosing
    w.model.add_path(models["iso"])
    w.steps.setValue(1)
    w.samples.setValue(2)
    w.uncertainty.setChecked(True)
    with qtbot.waitSignal(w.run_finished, timeout=120_000) as sig:
        assert w.run_files(files[1:2], str(tmp_path / "two"))
    assert sig.args == ["done"] and not errors, errors
    assert [p.name for p in (tmp_path / "two" / "uncertainty").iterdir()] == ["b_uncertainty.tif"]
    assert read_image(tmp_path / "two" / "b.tif").data.shape == (5, 32, 24)


def test_finetune_widget_form(viewer, errors):
    noisy = viewer.add_image(np.zeros((32, 32), np.uint8), name="noisy")
    viewer.add_image(np.zeros((4, 16, 16), np.uint8), name="vol", scale=(24.0, 8.0, 8.0))
    ft = _dock(viewer, FINETUNE)
    assert ft.target_combo.isEnabled() and not ft.factor.isEnabled()
    ft.input_combo.set_layer(noisy)
    ft.target_combo.set_layer(noisy)
    assert not ft.run() and "same layer" in errors[-1]
    ft.lr.setText("fast")
    assert not ft.run() and "learning rate" in errors[-1]
    ft.lr.setText("1e-4")
    ft.target_combo.setCurrentIndex(0)  # (none): self-supervised, there is no pair to scale
    ft.faster.setValue(2.0)
    assert not ft.run() and "faster scans" in errors[-1]
    ft.faster.setValue(1.0)
    ft.register.setCurrentText("affine")  # (none) still: nothing to align
    assert not ft.run() and "register" in errors[-1]
    ft.register.setCurrentText("as given")
    ft.learn_from.setCurrentText("neighbouring slices")
    ft.target_combo.set_layer(viewer.layers["vol"])  # a target: there is nothing to learn from alone
    assert not ft.run() and "learn from" in errors[-1]
    assert ft.options().learn_from == "neighbouring slices"
    ft.learn_from.setCurrentText("default")
    ft.target_combo.setCurrentIndex(0)
    ft.clean_input.setChecked(True)
    ft.target_combo.set_layer(viewer.layers["vol"])  # a target and a clean input: which is the noisy one?
    assert not ft.run() and "input is clean" in errors[-1]
    ft.target_combo.setCurrentIndex(0)
    ft.doses.setText("30 lots")
    assert not ft.run() and "doses" in errors[-1]
    assert ft.options().clean_input and ft.options().doses == "30 lots"
    ft.clean_input.setChecked(False)
    assert not ft.downsampling.isEnabled()  # denoise
    ft.task.setCurrentText("super-resolve")
    assert ft.downsampling.isEnabled()
    ft.downsampling.setCurrentText("gaussian")
    ft.target_combo.set_layer(viewer.layers["vol"])  # any target: the option would make its own pairs
    assert not ft.run() and "low-res made by" in errors[-1]
    ft.downsampling.setCurrentText("area")
    ft.task.setCurrentText("isotropic-a")
    assert ft.base.task == "isotropic-a" and not ft.target_combo.isEnabled() and ft.factor.isEnabled()
    assert not ft.faster.isEnabled() and not ft.register.isEnabled() and not ft.clean_input.isEnabled()
    assert not ft.learn_from.isEnabled()
    ft.input_combo.set_layer(viewer.layers["vol"])
    assert ft.factor.value() == 3  # from the volume's scale
    ft.input_combo.set_layer(noisy)
    assert not ft.run() and "3D" in errors[-1]
    assert not ft.running



def test_finetune_eta_is_paced_from_the_first_iteration(viewer, monkeypatch):
    # start-up (reading, loading, scoring the base) took 100 s; then 10 iterations in 5 s
    ft = _dock(viewer, FINETUNE)
    clock = iter([100.0, 105.0])
    monkeypatch.setattr("napari_emdiffuse.widgets.finetune.time.monotonic", lambda: next(clock))
    ft._pace_from = None
    assert ft._eta_text(1, 101) == ""
    assert ft._eta_text(11, 101) == "ETA 0:45"  # 0.5 s per iteration, 90 to go (not 100/11*90)


def test_finetune_widget_preselects_a_target_of_the_inputs_shape(viewer):
    noisy = viewer.add_image(np.zeros((32, 32), np.uint8), name="noisy")
    viewer.add_image(np.zeros((16, 16), np.uint8), name="other")
    clean = viewer.add_image(np.ones((32, 32), np.uint8), name="clean")
    ft = _dock(viewer, FINETUNE)
    ft.target_combo.setCurrentIndex(0)  # (none)
    ft.input_combo.set_layer(noisy)
    ft._prefill_target()
    assert ft.target_combo.layer() is clean  # same shape, not the input itself


@pytest.mark.skipif(not HAS_TRAINING, reason="engine.training not available yet")
def test_finetune_widget_trains_stops_and_lists_model(viewer, qtbot, models, errors, tmp_path, monkeypatch):
    rng = np.random.default_rng(4)
    clean = (rng.random((64, 64)) * 255).astype(np.uint8)
    noisy = np.clip(clean + rng.normal(0, 20, clean.shape), 0, 255).astype(np.uint8)
    viewer.add_image(clean, name="clean")
    viewer.add_image(noisy, name="noisy")
    restore = _dock(viewer, RESTORE)
    ft = _dock(viewer, FINETUNE)
    ft.input_combo.set_layer(viewer.layers["noisy"])
    ft.target_combo.set_layer(viewer.layers["clean"])
    ft.base.add_path(models["denoise"])
    ft.iterations.setValue(3)
    ft.patch.setValue(32)
    ft.batch.setValue(2)
    ft.val_fraction.setValue(0.25)
    ft.device.set_value("cpu")
    ft.output.setText(str(tmp_path / "my-model"))
    ft.register.setCurrentText("translation")  # the pair is aligned: a zero shift, said once
    infos: list[str] = []
    monkeypatch.setattr(napari.utils.notifications, "show_info", lambda msg: infos.append(str(msg)))
    with qtbot.waitSignal(ft.run_finished, timeout=120_000) as sig:
        assert ft.run()
        assert ft.run_button.text() == "Stop"
    assert sig.args == ["done"], (errors, ft.status.text())
    assert not errors
    assert sum("registered" in m and "translation" in m for m in infos) == 1, infos
    # two validations without a gain of 0.1 dB over the base stop it early (patience 2)
    assert len(ft.history.train) == 2 and ft.history.psnr, "no loss / validation arrived"
    assert "finetune_preview" in viewer.layers
    assert ft.saved_model is not None and (Path(ft.saved_model) / "model.yaml").is_file()
    # the status says which weights were kept, against the base's validation
    from napari_emdiffuse.engine.models.files import read_card
    from napari_emdiffuse.engine.training.finetune import verdict

    kept = verdict(read_card(ft.saved_model).metrics)
    assert kept and "base" in kept and kept in ft.status.text()

    def listed(picker) -> list:
        return [picker.combo.itemData(i) for i in range(picker.combo.count())]

    # In the other widgets' lists at once, without reopening them.
    assert str(Path(ft.saved_model).resolve()) in listed(restore.model)

    # Stop: the child closes the generator, which saves the model trained so far.
    ft.iterations.setValue(10_000)
    ft.output.setText(str(tmp_path / "stopped-model"))
    assert ft.run()
    qtbot.waitUntil(lambda: len(ft.history.train) >= 1, timeout=120_000)
    with qtbot.waitSignal(ft.run_finished, timeout=120_000) as sig:
        ft.run_button.click()
        assert ft.run_button.text() == "Stopping…"
    assert sig.args == ["stopped"] and not errors, (errors, ft.status.text())
    assert ft.saved_model == str(tmp_path / "stopped-model")
    assert (tmp_path / "stopped-model" / "model.yaml").is_file()
    assert str((tmp_path / "stopped-model").resolve()) in listed(restore.model)


def test_closed_dock_stops_following_the_viewer(viewer):
    from napari_emdiffuse.widgets.restore import RestoreWidget

    before = len(viewer.layers.events.inserted.callbacks)
    w = RestoreWidget(viewer)
    assert len(viewer.layers.events.inserted.callbacks) == before + 1
    w.close()
    assert len(viewer.layers.events.inserted.callbacks) == before
    viewer.add_image(np.zeros((8, 8), np.uint8), name="later")  # no callback into the closed dock
    w.deleteLater()


def test_widget_shows_an_estimate_after_the_first_pass(viewer, monkeypatch):
    from napari_emdiffuse.engine.events import Progress
    from napari_emdiffuse.widgets.restore import RestoreWidget

    from napari_emdiffuse.engine.events import TimeLeft

    w = RestoreWidget(viewer)
    ticks = iter([30.0, 32.0])  # start-up ends at 30 s; then a pass takes 2 s
    w._time_left = TimeLeft(clock=lambda: next(ticks))
    w._estimate(Progress("sampling", 1, 9001), "restoring 'em'…")
    assert w.status.text() == ""  # the first pass's time includes start-up: no pace yet
    w._estimate(Progress("sampling", 2, 9001), "restoring 'em'…")
    assert "about 5.0 h left" in w.status.text() and "9001 network passes" in w.status.text()
    w.status.setText("")
    w._estimate(Progress("sampling", 3, 9001), "x")  # said once
    assert w.status.text() == ""
    w.close()
    w.deleteLater()


def test_engine_run_progress_follows_sampling_across_phases(viewer):
    # A stack restored in one process yields global sampling counts and, between slices,
    # block counts; with denoise-first a second sampling phase starts from 0. The bar must
    # follow the sampling counts of each phase. Controls: the block counts alone (a
    # distributed run) do drive it.
    from napari_emdiffuse.engine.events import Progress
    from napari_emdiffuse.widgets._jobs import EngineRun

    def run() -> EngineRun:
        return EngineRun(lambda: iter(()), desc="t", stages=("sampling", "block"),
                         on_result=lambda r: None, on_finished=lambda o: None)

    job = run()
    seen = []
    for z in range(3):  # phase 1: 3 slices x 4 tiles
        for t in range(4):
            job._event(Progress("sampling", z * 4 + t + 1, 12))
            seen.append((job._pbar.n, job._pbar.total))
        job._event(Progress("block", z + 1, 3))
        seen.append((job._pbar.n, job._pbar.total))
    assert all(total == 12 for _, total in seen) and seen[-1] == (12, 12)
    job._event(Progress("sampling", 1, 5))  # phase 2 starts again at 1
    assert (job._pbar.n, job._pbar.total) == (1, 5)
    job._progress.close()

    blocks = run()
    for n in (0, 1, 2):
        blocks._event(Progress("block", n, 2))
    assert (blocks._pbar.n, blocks._pbar.total) == (2, 2)
    blocks._progress.close()


def test_restored_layer_saves_as_mrc_with_scale_and_labels(viewer, tmp_path):
    """File > Save Selected Layers with an .mrc name goes through our writer."""
    import mrcfile

    from napari_emdiffuse.engine.io.images import read_image

    layer = viewer.add_image(np.arange(12 * 10, dtype=np.float32).reshape(12, 10), name="em", scale=(4.0, 4.0))
    layer.metadata["emdiffuse"] = {"task": "denoise", "model": "demo-denoise", "preset": "fast"}
    out = tmp_path / "saved.mrc"
    viewer.layers.save(str(out), selected=False, plugin=PLUGIN)
    img = read_image(out)
    assert np.array_equal(img.data, layer.data) and img.spacing == (4.0, 4.0)
    with mrcfile.open(out) as m:
        labels = b" ".join(bytes(lab) for lab in m.header.label[: int(m.header.nlabl)]).decode()
    assert "denoise demo-denoise fast" in labels
    from napari_emdiffuse._writer import write_mrc_layer
    from napari_emdiffuse.engine.errors import InputError

    with pytest.raises(InputError, match="RGB"):
        write_mrc_layer(str(tmp_path / "c.mrc"), np.zeros((4, 4, 3), np.uint8), {"rgb": True})
    assert not (tmp_path / "c.mrc").exists()
    # a layer's place (a restored region over its image) comes back as its translate
    layer.translate = (8.0, 20.0)
    viewer.layers.save(str(tmp_path / "placed.mrc"), selected=False, plugin=PLUGIN)
    viewer.open(str(tmp_path / "placed.mrc"), plugin=PLUGIN)
    assert tuple(viewer.layers["placed"].translate) == (8.0, 20.0)


def test_a_layer_saves_as_tiff_with_its_pixel_size_through_the_save_dialogs_file_type(viewer, tmp_path):
    """napari's own TIFF writer drops the scale; the save dialog's "TIFF with pixel size" file
    type (the writer its filter names) keeps it, the layer's place (ImageJ's origin) and the
    provenance of a restored layer."""
    from napari.plugins import _npe2

    from napari_emdiffuse.engine.io.images import read_image

    layer = viewer.add_image(np.arange(3 * 12 * 10, dtype=np.float32).reshape(3, 12, 10), name="em", scale=(30.0, 4.0, 4.0),
                             translate=(0.0, 40.0, 80.0))  # fmt: skip
    layer.metadata["emdiffuse"] = {"task": "denoise", "model": "demo-denoise", "preset": "fast"}
    filters, writers = _npe2.file_extensions_string_for_layers([layer])
    ours = [w for w in writers if w.command == "napari-emdiffuse.write_tiff"]
    assert len(ours) == 1 and "EMDiffuse TIFF with pixel size (*.tif *.tiff)" in filters
    viewer.layers.save(str(tmp_path / "ours.tif"), selected=False, _writer=ours[0])
    img = read_image(tmp_path / "ours.tif")
    assert np.array_equal(img.data, layer.data) and img.spacing == (30.0, 4.0, 4.0) and img.unit == "nm"
    assert img.origin == (0.0, 40.0, 80.0)  # as the API, the CLI and Fiji read it
    theirs = next(w for w in writers if w.command == "napari.write_image")  # the control: napari's own
    viewer.layers.save(str(tmp_path / "theirs.tif"), selected=False, _writer=theirs)
    assert read_image(tmp_path / "theirs.tif").spacing is None


def test_a_layer_saves_as_a_neuroglancer_precomputed_volume_and_opens_again(viewer, tmp_path):
    """A ``.precomputed`` name goes through our writer (voxel size, place, the scales) and the
    folder opens again as a multiscale layer over the image it came from."""
    layer = viewer.add_image(np.arange(2 * 600 * 40, dtype=np.uint16).reshape(2, 600, 40), name="em",
                             scale=(40.0, 4.0, 4.0), translate=(0.0, 40.0, 80.0))  # fmt: skip
    out = tmp_path / "em.precomputed"
    viewer.layers.save(str(out), selected=False, plugin=PLUGIN)
    viewer.open(str(out), plugin=PLUGIN)
    back = viewer.layers[-1]
    assert back.multiscale and len(back.data) == 2  # 600 rows: one level below full resolution
    assert np.array_equal(np.asarray(back.data[0][:]), layer.data)
    assert tuple(back.scale) == (40.0, 4.0, 4.0) and tuple(back.translate) == (0.0, 40.0, 80.0)


def test_finetune_widget_trains_on_several_pairs(viewer, qtbot, models, errors, tmp_path):
    """add this pair: the pairs added, then the one chosen, of different sizes, all trained on
    (the card lists both); a pair whose layer is gone, or a missing target, is refused."""
    import yaml

    rng = np.random.default_rng(6)
    for name, shape in (("a", (64, 64)), ("b", (72, 96))):
        clean = (rng.random(shape) * 255).astype(np.uint8)
        viewer.add_image(clean, name=f"{name}_clean")
        viewer.add_image(np.clip(clean + rng.normal(0, 20, shape), 0, 255).astype(np.uint8), name=f"{name}_noisy")
    ft = _dock(viewer, FINETUNE)
    ft.base.add_path(models["denoise"])
    for key, value in (("iterations", 2), ("patch", 32), ("batch", 2)):
        getattr(ft, key).setValue(value)
    ft.val_fraction.setValue(0.25)
    ft.device.set_value("cpu")
    ft.output.setText(str(tmp_path / "two-pairs"))
    ft.input_combo.set_layer(viewer.layers["a_noisy"])
    ft.target_combo.set_layer(viewer.layers["a_clean"])
    ft.add_pair.click()
    ft.add_pair.click()  # once is enough
    assert ft.extra_pairs == [("a_noisy", "a_clean")] and "a_noisy -> a_clean" in ft.pairs_label.text()
    ft.input_combo.set_layer(viewer.layers["b_noisy"])
    ft.target_combo.set_layer(viewer.layers["b_clean"])
    with qtbot.waitSignal(ft.run_finished, timeout=120_000) as sig:
        assert ft.run()
    assert sig.args == ["done"] and not errors, (errors, ft.status.text())
    card = yaml.safe_load((Path(ft.saved_model) / "model.yaml").read_text())
    assert len(card["training"]["data"]["images"]) == 2
    ft.target_combo.setCurrentIndex(0)  # (none)
    assert not ft.run() and "the added pairs have targets" in errors[-1]
    ft.target_combo.set_layer(viewer.layers["b_clean"])
    viewer.layers.remove("a_clean")
    assert not ft.run() and "layer 'a_clean' of the added pairs is gone" in errors[-1]
    ft.clear_pairs.click()
    assert ft.extra_pairs == [] and ft.pairs_label.text() == ""


def test_finetune_widget_exports_a_predictor_to_bioimageio(viewer, models, errors, tmp_path, monkeypatch):
    pytest.importorskip("bioimageio.spec", reason="bioimageio.spec is in the [all] extra")
    from napari_emdiffuse.engine.models.cards import ModelCard, Normalisation, UNetConfig
    from napari_emdiffuse.engine.models.factory import create_model
    from napari_emdiffuse.widgets.finetune import exportable

    card = ModelCard(name="pred", task="denoise", kind="regression", tile=32, overlap=8, normalisation=Normalisation(),
                     network=UNetConfig(in_channel=1, residual=True, aleatoric=True, inner_channel=16,
                                        channel_mults=[1, 2], attn_res=[], num_head_channels=16))
    pred = create_model(card).save(tmp_path / "pred")
    ft = _dock(viewer, FINETUNE)
    assert not ft.export_button.isEnabled()  # nothing trained yet
    ft._done({"path": str(pred)})
    assert ft.export_button.isEnabled()
    monkeypatch.setattr("napari_emdiffuse.widgets.finetune.QFileDialog.getSaveFileName",
                        lambda *a, **k: (str(tmp_path / "shared"), ""))
    ft.export_button.click()
    assert (tmp_path / "shared.zip").is_file() and not errors, errors
    assert "exported to" in ft.status.text()
    # the control: a diffusion model cannot be exported; the button says so by being off, and
    # asked anyway, one line and no file
    assert not exportable(models["denoise"])
    ft._done({"path": str(models["denoise"])})
    assert not ft.export_button.isEnabled()
    assert ft.export_to(tmp_path / "diffusion.zip") is None
    assert "diffusion model" in errors[-1] and not (tmp_path / "diffusion.zip").exists()
    errors.clear()
    # an isotropic predictor of every factor (a fine-tune of demo-isotropic-any): for the factor box's
    iso = ModelCard(name="iso-any", task="isotropic-a", kind="regression", tile=32, overlap=8,
                    normalisation=Normalisation(),
                    network=UNetConfig(in_channel=2, residual=True, aleatoric=True, gap_depth=True, inner_channel=16,
                                       channel_mults=[1, 2], attn_res=[], num_head_channels=16))  # fmt: skip
    every = create_model(iso).save(tmp_path / "iso-any")
    ft._done({"path": str(every)})
    assert ft.export_button.isEnabled()
    ft.factor.setValue(5)
    out = ft.export_to(tmp_path / "iso5")
    assert out == tmp_path / "iso5.zip" and out.is_file() and not errors, errors
    import bioimageio.spec as spec

    descr = spec.load_description(out)
    assert len(descr.outputs[0].axes[1].channel_names) == 4  # the 4 new slices of a factor-5 gap


def test_a_pass_over_the_volume_gets_a_progress_bar_of_its_own(viewer):
    """After the network passes, the z filter (or the pyramid) counts on a bar named for it."""
    from napari_emdiffuse.widgets._jobs import ProgressBar

    bar = ProgressBar("EMDiffuse denoise: fib")
    bar.update(3, 4, "sampling")
    first = bar.bar
    bar.update(2, 5, "block")  # blocks ride on the same bar's phase logic
    assert bar.bar is first and "EMDiffuse denoise: fib" in first.desc
    bar.update(1, 16, "z filter")
    assert bar.bar is not first and "fib (z filter)" in bar.bar.desc and (bar.bar.n, bar.bar.total) == (1, 16)
    bar.close()
    assert bar.bar is None


def test_the_restore_widget_notes_pixels_far_finer_than_the_model_learnt_from():
    """Where the layer's size is in nm (the file's calibration, or nm units) the widget says
    what the CLI says; a layer in pixels says nothing."""
    from napari_emdiffuse.widgets.restore import _fine_pixel_note

    def source(spacing, scale, units):
        return {"spacing": spacing, "scale": scale, "units": units}

    assert "much finer" in _fine_pixel_note(None, None, "denoise", source((1.2, 1.2), (1.0, 1.0), None))  # the file's
    assert "much finer" in _fine_pixel_note(None, None, "denoise", source((1.5, 1.5), (1.5, 1.5), ("nanometer",) * 2))
    assert _fine_pixel_note(None, None, "denoise", source((1.5, 1.5), (1.5, 1.5), ("pixel",) * 2)) is None
    assert _fine_pixel_note(None, None, "denoise", source((5.0, 5.0), (5.0, 5.0), ("nanometer",) * 2)) is None
    assert _fine_pixel_note(None, None, "isotropic", source((1.0, 1.0), (1.0, 1.0), ("nm",) * 2)) is None  # no size
