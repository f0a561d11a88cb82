"""The public API: typed options, one dataclass per job, one-line refusals."""

from __future__ import annotations

import doctest
import importlib

import numpy as np
import pytest

import napari_emdiffuse as emd
from napari_emdiffuse.api import FinetuneOptions, IsotropicOptions, RestoreOptions, ZarrOptions
from napari_emdiffuse.engine.errors import EMDiffuseError, InputError

from tests.conftest import make_tiny

FAST = dict(steps=2, tile=32, overlap=8, device="cpu")


def test_options_object_and_keywords_give_the_same_result():
    m = make_tiny("denoise")
    img = (np.random.default_rng(0).random((40, 40)) * 255).astype(np.uint8)
    a = emd.restore(img, "denoise", m, options=RestoreOptions(**FAST, seed=3)).mean
    b = emd.restore(img, "denoise", m, **FAST, seed=3).mean
    c = emd.restore(img, "denoise", m, options=RestoreOptions(**FAST), seed=3).mean  # keywords override
    d = emd.restore(img, "denoise", m, **FAST, seed=4).mean
    assert np.array_equal(a, b) and np.array_equal(a, c)
    assert not np.array_equal(a, d)


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda: emd.restore(np.zeros((8, 8)), preest="fast"), "unknown option 'preest' for RestoreOptions; did you mean 'preset'"),
        (lambda: emd.restore(np.zeros((8, 8)), options=ZarrOptions(), workers=2), "unknown option 'workers'"),
        (lambda: emd.restore(np.zeros((8, 8)), options=IsotropicOptions()), "options must be a RestoreOptions"),
        (lambda: emd.reconstruct_isotropic(np.zeros((3, 8, 8)), 2, out=None, workers=2), "writes into a zarr store"),
        (lambda: emd.reconstruct_isotropic(np.zeros((3, 8, 8)), 2, workers=0), "workers must be a positive"),
        (lambda: emd.restore_to_zarr(np.zeros((8, 8)), "o.zarr", workers=1, scheduler="tcp://x:1"), "not both"),
        (lambda: emd.finetune("denoise", np.zeros((8, 8))), "say where to write"),
        (lambda: emd.restore_files(["nope/"], "out/", "denoise", workers=0), "workers must be a positive"),
        (lambda: emd.restore(np.zeros((8, 8)), region=(0, 8, 2, 1)), "region x 2:1 is not inside"),
    ],
)
def test_bad_options_are_refused_in_one_line(call, match):
    with pytest.raises(EMDiffuseError, match=match) as err:
        call()
    assert "\n" not in str(err.value)


def test_options_are_frozen_and_keyword_only():
    opts = RestoreOptions(preset="balanced")
    with pytest.raises(Exception):
        opts.preset = "fast"  # type: ignore[misc]
    with pytest.raises(TypeError):
        RestoreOptions("balanced")  # type: ignore[misc]
    assert FinetuneOptions(out="m").iterations == 200


def test_finetune_passes_other_train_config_fields(monkeypatch):
    from napari_emdiffuse import api

    seen = {}

    def fake(task, input, target, **kw):
        seen.update(kw)
        yield "done"

    monkeypatch.setattr(api, "_finetune_iter", fake)
    assert emd.finetune("denoise", np.zeros((8, 8)), out="m", warmup=3, iterations=5) == "done"
    assert seen["warmup"] == 3 and seen["iterations"] == 5 and seen["out"] == "m"


@pytest.mark.parametrize(
    "module",
    [
        "napari_emdiffuse.api",
        "napari_emdiffuse.engine.inference.tiling",
        "napari_emdiffuse.engine.inference.blocks",
        "napari_emdiffuse.engine.inference.fill",
        "napari_emdiffuse.engine.inference.canvas",
        "napari_emdiffuse.engine.inference.provenance",
        "napari_emdiffuse.engine.io.calibration",
        "napari_emdiffuse.engine.io.pyramid",
        "napari_emdiffuse.engine.io.zarrurl",
        "napari_emdiffuse.engine.io.stores",
        "napari_emdiffuse.engine.io.ledger",
        "napari_emdiffuse.engine.parallel.runner",
        "napari_emdiffuse.engine.training.data.pairs",
        "napari_emdiffuse.engine.training.data.base",
        "napari_emdiffuse.engine.training.data.volumes",
        "napari_emdiffuse.engine.training.data.noise",
        "napari_emdiffuse.engine.training.finetune",
        "napari_emdiffuse.engine.training.selfsup",
        "napari_emdiffuse.engine.training.neighbours",
        "napari_emdiffuse.engine.core.alikeness",
        "napari_emdiffuse.engine.inference.zfilter",
        "napari_emdiffuse.engine.io.mrc",
        "napari_emdiffuse._reader",
        "napari_emdiffuse._writer",
        "napari_emdiffuse.engine.events",
        "napari_emdiffuse.engine.io.batch",
        "napari_emdiffuse.engine.io.slices",
        "napari_emdiffuse.engine.models.registry",
        "napari_emdiffuse.engine.io.spacing",
        "napari_emdiffuse.engine.core.networks.blur",
        "napari_emdiffuse.engine.core.networks.regression",
        "napari_emdiffuse.engine.training.estimator",
        "napari_emdiffuse.engine.training.predictors",
        "napari_emdiffuse.engine.training.validation",
        "napari_emdiffuse.engine.io.views",
        "napari_emdiffuse.engine.io.hdf5",
        "napari_emdiffuse.engine.io.common",
        "napari_emdiffuse.engine.models.device",
        "napari_emdiffuse.engine.io.dm",
        "napari_emdiffuse.engine.io.n5",
        "napari_emdiffuse.engine.io.bdv",
        "napari_emdiffuse.engine.io.czi",
        "napari_emdiffuse.engine.io.precomputed",
        "napari_emdiffuse.engine.io.precomputed_write",
        "napari_emdiffuse.batches",
        "napari_emdiffuse.widgets._finetune_options",
        "napari_emdiffuse.widgets.restore",
        "napari_emdiffuse.widgets._settings",
        "napari_emdiffuse.widgets._layers",
        "napari_emdiffuse.engine.io.zarr",
        "napari_emdiffuse.engine.io.zarrurl",
        "napari_emdiffuse.engine.parallel.runner",
        "napari_emdiffuse.engine.core.networks.unet",
    ],
)
def test_docstring_examples_run(module):
    """The Examples sections are what users copy: they must run and print what they say."""
    mod = importlib.import_module(module)
    result = doctest.testmod(mod, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    assert result.attempted > 0 and result.failed == 0, result


def test_the_default_isotropic_model_follows_the_factor():
    """Factor 3: the bundled factor-3 model; any other factor: the one that serves every factor
    (the factor-3 model alone refuses them)."""
    vol = np.random.default_rng(0).integers(0, 255, (3, 40, 40)).astype(np.uint8)
    three = emd.reconstruct_isotropic(vol, factor=3)
    five = emd.reconstruct_isotropic(vol, factor=5)
    assert three.info["model"] == "demo-isotropic" and three.volume.shape == (7, 40, 40)
    assert five.info["model"] == "demo-isotropic-any" and five.volume.shape == (11, 40, 40)
    np.testing.assert_array_equal(five.volume[::5], vol)
    with pytest.raises(InputError, match="give factor 3, or use demo-isotropic-any"):
        emd.reconstruct_isotropic(vol, factor=5, model="demo-isotropic")


def test_restore_files_writes_each_file_as_restore_would_and_skips_the_unreadable(tmp_path, tiny_model_dir):
    """``emd.restore_files``: the batch the CLI and the Restore widget run, from Python."""
    import tifffile

    rng = np.random.default_rng(5)
    src = tmp_path / "scans"
    src.mkdir()
    img = (rng.random((40, 44)) * 255).astype(np.uint8)
    emd.write_image(src / "a.tif", img, spacing=(6.0, 6.0))
    (src / "b.tif").write_bytes(b"II*\x00 not a tiff")
    fast = dict(steps=1, tile=32, device="cpu")
    done = emd.restore_files([src], tmp_path / "out", "denoise", str(tiny_model_dir), **fast)
    assert isinstance(done, emd.BatchResult) and done.total == 2
    assert [p.split("/")[-1] for p in done.written] == ["a.tif"] and [s.split("/")[-1] for s, _ in done.skipped] == ["b.tif"]
    alone = emd.restore(img, "denoise", str(tiny_model_dir), **fast).mean
    assert np.array_equal(tifffile.imread(tmp_path / "out" / "a.tif"), alone)
    assert emd.read_image(tmp_path / "out" / "a.tif").spacing == (6.0, 6.0)
    with pytest.raises(InputError, match="would replace an input"):
        emd.restore_files([src / "a.tif"], src, "denoise", str(tiny_model_dir), **fast)


def test_restore_file_iter_takes_pixels_in_hand_as_it_takes_their_file(tmp_path, tiny_model_dir):
    """What the docks hand over (an ImageData: a layer's pixels, size and place) is written as
    the same file the file itself gives; channel and time belong to files."""
    from napari_emdiffuse.engine.io.common import ImageData
    from napari_emdiffuse.files import input_name, restore_file_iter

    img = (np.random.default_rng(2).random((40, 44)) * 255).astype(np.uint8)
    emd.write_image(tmp_path / "a.tif", img, spacing=(6.0, 6.0), origin=(12.0, 18.0))
    fast = dict(steps=1, tile=32, device="cpu")

    def run(src, out):
        return [x for x in restore_file_iter(src, out, "denoise", str(tiny_model_dir), **fast) if isinstance(x, list)]

    assert run(tmp_path / "a.tif", tmp_path / "from_file.mrc") == [[str(tmp_path / "from_file.mrc")]]
    held = ImageData(data=img, spacing=(6.0, 6.0), unit="nm", axes=None, path=None, origin=(12.0, 18.0))
    assert run(held, tmp_path / "from_pixels.mrc") == [[str(tmp_path / "from_pixels.mrc")]]
    a, b = emd.read_image(tmp_path / "from_file.mrc"), emd.read_image(tmp_path / "from_pixels.mrc")
    assert np.array_equal(a.data, b.data) and a.spacing == b.spacing == (6.0, 6.0)
    assert not np.array_equal(a.data, img)  # restored, not copied
    assert input_name(held) == "the image" and input_name(tmp_path / "a.tif") == str(tmp_path / "a.tif")
    with pytest.raises(InputError, match="channel, time and voxel_size apply to files"):
        next(restore_file_iter(held, tmp_path / "c.tif", "denoise", str(tiny_model_dir), channel=0))
