"""Isotropic reconstruction (vEMDiffuse) of volumes: shapes, exactness of measured slices,
factor from spacing, errors, zarr streaming, cancelling, memory, dask input, distributed."""

from __future__ import annotations

import tracemalloc
from pathlib import Path

import numpy as np
import pytest
import torch

from napari_emdiffuse.engine.inference import volume
from napari_emdiffuse.engine.models import cards, factory
from napari_emdiffuse.engine.errors import EMDiffuseError, InputError
from napari_emdiffuse.engine.events import Progress
from napari_emdiffuse.engine.io.images import read_image
from napari_emdiffuse.engine.io.zarr import is_complete
from napari_emdiffuse.api import reconstruct_isotropic, reconstruct_isotropic_iter
from napari_emdiffuse.engine.inference.volume import IsotropicResult
from napari_emdiffuse.engine.io.spacing import factor_from_spacing
from tests.conftest import SHARED

DATA = SHARED
CELEGANS = DATA / "em3d" / "celegans_neariso_21x256x128.tif"
# Small tiles keep the tiny network's attention cheap; two steps are enough to exercise sampling.
FAST = dict(steps=2, tile=32, overlap=8, device="cpu")


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    # The CI machine has 2 shared cores; two torch threads fighting over them are slower than one.
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _tiny(arch: str = "vEMDiffuse-i", z_factor: int | None = None):
    m = factory.create_EMDiffuse(
        arch, inner_channel=16, channel_mults=[1, 2], res_blocks=1, attn_res=[], num_head_channels=16
    )
    m.card.normalisation = cards.Normalisation()
    m.card.overlap = 8
    m.card.tile = 32
    m.card.z_factor = z_factor
    return m


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return _tiny()


@pytest.fixture(scope="module")
def model_dir(model, tmp_path_factory):
    return model.save(tmp_path_factory.mktemp("models") / "tiny-iso")


@pytest.fixture(scope="module")
def vol():
    rng = np.random.default_rng(0)
    return (rng.random((3, 40, 40)) * 255).astype(np.uint8)


def _leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if ".partial-" in p.name or p.name.startswith("."))


# ---------------------------------------------------------------------------------------------
# results


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.float32])
def test_shape_dtype_and_measured_slices_exact(model, dtype):
    rng = np.random.default_rng(1)
    data = (rng.random((3, 40, 40)) * 1000).astype(dtype)
    res = reconstruct_isotropic(data, 3, model, **FAST)
    assert isinstance(res, IsotropicResult)
    assert res.volume.shape == ((3 - 1) * 3 + 1, 40, 40)
    assert res.volume.dtype == np.dtype(dtype)
    assert res.factor == 3
    # Measured slices are copied, not re-generated: bit-identical.
    assert res.volume[::3].tobytes() == data.tobytes()
    assert res.uncertainty is None
    assert np.isfinite(res.volume.astype(np.float64)).all()


def test_a_lateral_region_comes_out_as_in_the_whole_run(model, monkeypatch, tmp_path):
    """region=: every slice's rows and columns, the measured slices kept, made by the whole
    volume's tiles: a one-pass model gives the whole run's voxels anywhere (but for float
    rounding), a sampler of several steps stays close; in memory or into a store. With a denoiser, the
    region and its context form a volume of their own, its noise drawn at its place."""
    from tests.engine.models.test_predictors import predictor

    rng = np.random.default_rng(2)
    data = (rng.random((3, 120, 136)) * 200).astype(np.uint8)
    data[:, :, 68:] += 50  # the whole volume's range differs from the region's
    pred = predictor("isotropic-i", out_channel=1, perturb=0.05)
    kw = dict(tile=32, overlap=8, device="cpu", dtype=np.float32)
    whole = reconstruct_isotropic(data, 2, pred, **kw).volume
    for box in ((40, 72, 50, 90), (0, 8, 120, 136)):
        y0, y1, x0, x1 = box
        part = reconstruct_isotropic(data, 2, pred, region=box, **kw)
        assert part.volume.shape == (5, y1 - y0, x1 - x0) and part.info["region"] == list(box)
        assert np.abs(part.volume - whole[:, y0:y1, x0:x1]).max() < 0.05, box
        assert np.array_equal(part.volume[::2], data[:, y0:y1, x0:x1])
    alone = reconstruct_isotropic(data[:, 40:72, 50:90].copy(), 2, pred, **kw).volume
    assert np.abs(alone - whole[:, 40:72, 50:90]).mean() > 0.5  # the control: its own normalisation
    many = reconstruct_isotropic(data, 2, model, **FAST).volume
    part = reconstruct_isotropic(data, 2, model, region=(40, 72, 50, 90), **FAST).volume
    assert np.abs(part.astype(int) - many[:, 40:72, 50:90]).mean() < 1.0
    # with a denoiser: the noise is drawn at the region's place in the whole volume
    origins = []
    real = volume.sample_canvas
    monkeypatch.setattr(volume, "sample_canvas", lambda *a, **k: origins.append(k["offset"]) or real(*a, **k))
    reconstruct_isotropic(data, 2, model, region=(0, 8, 100, 136), denoise=True, **FAST)
    assert origins and all(o == (0, 100 - 48) for o in origins), origins
    made = reconstruct_isotropic(data, 2, pred, region=(40, 72, 50, 90), out=tmp_path / "iso.zarr", **kw)
    assert made.info["region"] == [40, 72, 50, 90]  # into a store: the same voxels
    in_memory = reconstruct_isotropic(data, 2, pred, region=(40, 72, 50, 90), **kw).volume
    np.testing.assert_array_equal(np.asarray(made.volume[:]), in_memory)
    with pytest.raises(InputError, match="not inside the image's 136 columns"):
        reconstruct_isotropic(data, 2, model, region=(0, 8, 130, 140), **FAST)


def test_progress_events_and_info(model, vol):
    events = list(reconstruct_isotropic_iter(vol, 2, model, **FAST))
    res = events[-1]
    progress = [e for e in events if isinstance(e, Progress)]
    assert isinstance(res, IsotropicResult)
    assert progress and all(p.stage == "sampling" for p in progress)
    dones = [p.done for p in progress]
    assert dones == sorted(dones) and dones[-1] == progress[-1].total
    assert res.info["factor"] == 2 and res.info["steps"] == 2
    assert res.info["normalisation"]["mode"] == "percentile"


def test_same_seed_same_result_other_seed_differs(model, vol):
    a = reconstruct_isotropic(vol, 2, model, **FAST).volume
    b = reconstruct_isotropic(vol, 2, model, **FAST).volume
    c = reconstruct_isotropic(vol, 2, model, seed=1, **FAST).volume
    assert np.array_equal(a, b)
    assert not np.array_equal(a[1::2], c[1::2])


def test_dtype_option(model, vol):
    res = reconstruct_isotropic(vol, 2, model, dtype=np.float32, **FAST)
    assert res.volume.dtype == np.float32
    assert np.array_equal(res.volume[::2], vol.astype(np.float32))


def test_mode_a_runs_along_z(model, vol):
    a = reconstruct_isotropic(vol, 2, model, mode="a", **FAST)
    i = reconstruct_isotropic(vol, 2, model, mode="i", **FAST)
    assert np.array_equal(a.volume, i.volume)


def test_uncertainty(model, vol):
    res = reconstruct_isotropic(vol, 3, model, samples=2, uncertainty=True, **FAST)
    assert res.uncertainty is not None
    assert res.uncertainty.shape == res.volume.shape == (7, 40, 40)
    assert res.uncertainty.dtype == np.float32
    assert (res.uncertainty[::3] == 0).all()  # measured slices are certain
    assert (res.uncertainty[1::3] > 0).any()
    with pytest.raises(InputError, match="at least 2 samples"):
        reconstruct_isotropic(vol, 3, model, uncertainty=True, **FAST)


# ---------------------------------------------------------------------------------------------
# factor and spacing


@pytest.mark.parametrize(
    ("spacing", "factor"),
    [((50, 4, 4), 12), ((40.0, 8.0, 8.0), 5), ((30, 10, 10), 3), ((8.2, 4, 4), 2), ((50, 4, 4.2), 12)],
)
def test_factor_from_spacing(spacing, factor):
    assert factor_from_spacing(spacing) == factor


@pytest.mark.parametrize(
    ("spacing", "match"),
    [
        ((30, 4, 4), "7.5 times"),
        ((4, 4, 4), "close to isotropic"),
        ((3.5, 4, 4), "close to isotropic"),
        ((1.0, 60, 60), "most likely does not calibrate z"),  # a DM or MRC stack's placeholder z
        ((50, 4), "three numbers"),
        ((50, 0, 4), "positive"),
        ("abc", "three numbers"),
    ],
)
def test_factor_from_spacing_errors(spacing, match):
    with pytest.raises(InputError, match=match) as exc:
        factor_from_spacing(spacing)
    assert "\n" not in str(exc.value)


def test_factor_from_spacing_end_to_end(model):
    data = (np.random.default_rng(2).random((2, 32, 32)) * 255).astype(np.uint8)
    res = reconstruct_isotropic(data, model=model, spacing=(50, 4, 4), steps=1, tile=32, overlap=8, device="cpu")
    assert res.factor == 12
    assert res.volume.shape == (13, 32, 32)
    assert res.spacing == pytest.approx((50 / 12, 4, 4))
    assert np.array_equal(res.volume[[0, 12]], data)


def test_path_input_uses_the_file_spacing(model, vol, tmp_path):
    from napari_emdiffuse.engine.io.images import write_image

    path = write_image(tmp_path / "vol.tif", vol, spacing=(12.0, 4.0, 4.0), axes="ZYX")
    res = reconstruct_isotropic(str(path), model=model, **FAST)
    assert res.factor == 3 and res.volume.shape == (7, 40, 40)
    assert res.spacing == pytest.approx((4, 4, 4))
    assert np.array_equal(res.volume, reconstruct_isotropic(vol, 3, model, **FAST).volume)


def test_non_integer_ratio_asks_for_factor(model, vol):
    with pytest.raises(InputError, match=r"7\.5 times.*factor=") as exc:
        reconstruct_isotropic(vol, model=model, spacing=(30, 4, 4), **FAST)
    assert "\n" not in str(exc.value)
    # An explicit factor wins over the spacing.
    assert reconstruct_isotropic(vol, 2, model, spacing=(30, 4, 4), **FAST).spacing == pytest.approx((15, 4, 4))


# ---------------------------------------------------------------------------------------------
# errors


@pytest.mark.parametrize(
    ("data", "kw", "match"),
    [
        (np.zeros((40, 40), np.uint8), {"factor": 2}, "2 dimensions"),
        (np.zeros((1, 40, 40), np.uint8), {"factor": 2}, "at least 2 slices"),
        (np.zeros((3, 40, 40), np.uint8), {"factor": 1}, "at least 2"),
        (np.zeros((3, 40, 40), np.uint8), {"factor": 2.5}, "whole number"),
        (np.zeros((3, 40, 40), np.uint8), {"factor": True}, "whole number"),
        (np.zeros((3, 40, 40), np.uint8), {}, "how much finer z should become: give the factor"),
        (np.zeros((3, 40, 40), np.complex64), {"factor": 2}, "complex"),
        (np.zeros((3, 40, 40), np.uint8), {"factor": 2, "mode": "x"}, "unknown mode"),
        (np.zeros((3, 40, 40), np.uint8), {"factor": 2, "workers": 0}, "workers"),
        (np.zeros((3, 40, 40), np.uint8), {"factor": 2, "workers": 2}, "out="),
    ],
)
def test_bad_input(model, data, kw, match):
    with pytest.raises(EMDiffuseError, match=match) as exc:
        reconstruct_isotropic(data, model=model, **{**FAST, **kw})
    assert "\n" not in str(exc.value)


def test_inf_pixel_is_refused(model):
    data = np.zeros((3, 40, 40), np.float32)
    data[1, 3, 3] = np.inf
    with pytest.raises(InputError, match="Inf"):
        reconstruct_isotropic(data, 2, model, **FAST)


def test_model_for_another_task_is_refused(vol):
    denoiser = factory.create_EMDiffuse(
        "EMDiffuse-n", inner_channel=16, channel_mults=[1, 2], res_blocks=1, attn_res=[], num_head_channels=16
    )
    with pytest.raises(EMDiffuseError, match="made for denoise") as exc:
        reconstruct_isotropic(vol, 2, denoiser, **FAST)
    assert "\n" not in str(exc.value)


def test_model_trained_for_another_factor_is_refused(vol):
    m = _tiny(z_factor=4)
    with pytest.raises(InputError, match="trained for factor 4, not 3"):
        reconstruct_isotropic(vol, 3, m, **FAST)
    assert reconstruct_isotropic(vol, 4, m, **FAST).volume.shape == (9, 40, 40)


def test_out_must_be_zarr(model, vol, tmp_path):
    with pytest.raises(InputError, match=r"\.zarr"):
        reconstruct_isotropic(vol, 2, model, out=tmp_path / "x.tif", **FAST)


# ---------------------------------------------------------------------------------------------
# zarr output, cancelling, streaming


def test_zarr_output_complete_and_equal_to_memory(model, model_dir, vol, tmp_path):
    out = tmp_path / "iso.zarr"
    res = reconstruct_isotropic(vol, 3, str(model_dir), out=out, spacing=(12, 4, 4), **FAST)
    assert res.path == out and is_complete(out)
    assert _leftovers(tmp_path) == []
    img = read_image(out)
    assert img.data.shape == (7, 40, 40) and img.data.dtype == np.uint8
    assert img.data.chunks == (1, 40, 40)
    assert img.spacing == pytest.approx((4, 4, 4))
    mem = reconstruct_isotropic(vol, 3, model, **FAST)  # the in-memory model == the saved one
    assert np.array_equal(img.data[...], mem.volume)
    assert np.array_equal(np.asarray(res.volume[...]), mem.volume)


def test_zarr_uncertainty_output(model, vol, tmp_path):
    out = tmp_path / "iso.zarr"
    res = reconstruct_isotropic(vol, 2, model, out=out, samples=2, uncertainty=True, **FAST)
    assert res.uncertainty_path == tmp_path / "iso_uncertainty.zarr"
    assert is_complete(out) and is_complete(res.uncertainty_path)
    assert res.uncertainty.shape == (5, 40, 40)
    assert _leftovers(tmp_path) == []


def test_cancel_leaves_nothing(model, vol, tmp_path):
    out = tmp_path / "iso.zarr"
    gen = reconstruct_isotropic_iter(vol, 3, model, out=out, samples=2, uncertainty=True, **FAST)
    for _ in range(3):
        assert isinstance(next(gen), Progress)
    gen.close()
    assert not out.exists()
    assert list(tmp_path.iterdir()) == []


def test_dask_and_zarr_inputs(model, vol, tmp_path):
    import dask.array as da
    import zarr

    ref = reconstruct_isotropic(vol, 2, model, **FAST).volume
    lazy = da.from_array(vol, chunks=(1, 20, 20))
    assert np.array_equal(reconstruct_isotropic(lazy, 2, model, **FAST).volume, ref)
    z = zarr.open_array(str(tmp_path / "in.zarr"), mode="w", shape=vol.shape, chunks=(1, 40, 40), dtype=vol.dtype)
    z[...] = vol
    assert np.array_equal(reconstruct_isotropic(z, 2, model, **FAST).volume, ref)


def test_lateral_blocks_cover_the_volume(model, vol):
    # Blocks smaller than the slices: halo-read, cropped, written without gaps.
    res = reconstruct_isotropic(vol, 2, model, block=32, **FAST)
    assert res.volume.shape == (5, 40, 40)
    assert np.array_equal(res.volume[::2], vol)
    assert res.info["block"] == (32, 32)


def _peak_bytes(model, n_slices: int, tmp_path: Path) -> int:
    import zarr

    src = zarr.open_array(
        str(tmp_path / f"in{n_slices}.zarr"), mode="w", shape=(n_slices, 96, 96), chunks=(1, 96, 96), dtype=np.uint16
    )
    rng = np.random.default_rng(n_slices)
    for z in range(n_slices):
        src[z] = (rng.random((96, 96)) * 4000).astype(np.uint16)
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        base = tracemalloc.get_traced_memory()[0]
        out = tmp_path / f"out{n_slices}.zarr"
        for _ in reconstruct_isotropic_iter(src, 2, model, out=out, steps=1, tile=32, overlap=8, batch=16, device="cpu"):
            pass
        return tracemalloc.get_traced_memory()[1] - base
    finally:
        tracemalloc.stop()


def test_streaming_memory_does_not_grow_with_z(model, tmp_path, monkeypatch):
    # Numpy buffers (tracemalloc sees them; torch's CPU tensors live one slab at a time).
    # The normalisation subsample is bounded by NORM_SAMPLE_VALUES (1e6 values); shrink it so
    # that at this toy size the test sees the slab-by-slab part.
    monkeypatch.setattr(volume, "NORM_SAMPLE_VALUES", 2048)
    _peak_bytes(model, 3, tmp_path)  # warm-up: imports, codec objects, caches
    small = _peak_bytes(model, 4, tmp_path)
    large = _peak_bytes(model, 16, tmp_path)
    assert large < 1.2 * small, (small, large)


# ---------------------------------------------------------------------------------------------
# distributed


def test_distributed_equals_in_process(model, vol, tmp_path):
    pytest.importorskip("distributed")
    # Lateral blocks (block=32 on 40x40) so that there are several tasks per slab.
    ref = reconstruct_isotropic(vol, 2, model, block=32, **FAST).volume
    out = tmp_path / "dist.zarr"
    events = list(reconstruct_isotropic_iter(vol, 2, model, block=32, out=out, workers=2, **FAST))
    res = events[-1]
    blocks = [e for e in events if isinstance(e, Progress)]
    assert blocks[-1].done == blocks[-1].total == 2 * 2 * 2
    assert is_complete(out)
    assert np.array_equal(read_image(out).data[...], ref)
    assert np.array_equal(np.asarray(res.volume[...]), ref)
    assert _leftovers(tmp_path) == []  # staged input and the saved model are gone


def test_distributed_one_worker_equals_two(model_dir, vol, tmp_path):
    pytest.importorskip("distributed")
    # The model travels by path here (no temporary copy); factor 3 and lateral blocks.
    a = reconstruct_isotropic(vol, 3, str(model_dir), out=tmp_path / "a.zarr", workers=1, block=32, **FAST)
    b = reconstruct_isotropic(vol, 3, str(model_dir), out=tmp_path / "b.zarr", workers=2, block=32, **FAST)
    assert np.array_equal(a.volume[...], b.volume[...])


@pytest.mark.skipif(not CELEGANS.is_file(), reason="real EM volume not found in ../shared/data/em3d")
def test_real_volume_crop(model):
    data = read_image(CELEGANS).data[:3, :48, :48]
    res = reconstruct_isotropic(data, 2, model, **FAST)
    assert res.volume.shape == (5, 48, 48)
    assert np.array_equal(res.volume[::2], data)


def test_distributed_cancel_and_worker_error(model, tmp_path):
    pytest.importorskip("distributed")
    data = (np.random.default_rng(3).random((4, 40, 40)) * 255).astype(np.float32)
    out = tmp_path / "dist.zarr"
    gen = reconstruct_isotropic_iter(data, 2, model, block=32, out=out, workers=1, **FAST)
    first = next(gen)
    assert isinstance(first, Progress) and first.stage == "note"  # the input is copied for the workers
    first = next(e for e in gen if e.stage != "staging")
    assert isinstance(first, Progress) and first.stage == "block" and first.done == 0
    gen.close()  # cancels the tasks, closes the cluster, removes the partial store
    assert not out.exists()
    assert _leftovers(tmp_path) == []
    # A worker's error (Inf found while reading its slab; a lazy input is not scanned up
    # front) reaches the caller as it was raised.
    import dask.array as da

    data[2, 5, 5] = np.inf
    with pytest.raises(InputError, match="slice 2 contains 1 Inf"):
        reconstruct_isotropic(da.from_array(data), 2, model, out=out, workers=1, **FAST)
    assert not out.exists()
    assert _leftovers(tmp_path) == []


# ---------------------------------------------------------------------------------------------
# denoise first (noisy volumes)


def test_denoise_first_is_denoise_then_reconstruct(model, vol):
    # The composition, exactly: the measured slices are the denoised stack (fast preset), the
    # new ones are what the model makes from it, and the measured slices' uncertainty is the
    # denoiser's. Control: without denoise the measured slices are the input, which the
    # denoiser changes.
    from napari_emdiffuse.api import restore

    den = restore(vol, "denoise", "demo-denoise", preset="fast", device="cpu")
    res = reconstruct_isotropic(vol, 3, model, denoise="demo-denoise", uncertainty=True, samples=2, **FAST)
    ref = reconstruct_isotropic(den.mean, 3, model, uncertainty=True, samples=2, **FAST)
    assert np.array_equal(res.volume[::3], den.mean) and not np.array_equal(den.mean, vol)
    assert np.array_equal(res.volume, ref.volume)
    assert np.allclose(res.uncertainty[::3], den.uncertainty) and den.uncertainty.min() > 0
    assert np.array_equal(res.uncertainty[1::3], ref.uncertainty[1::3])
    assert res.info["denoised_first_by"] == "demo-denoise"
    plain = reconstruct_isotropic(vol, 3, model, **FAST)
    assert np.array_equal(plain.volume[::3], vol) and "denoised_first_by" not in plain.info
    assert np.array_equal(reconstruct_isotropic(vol, 3, model, denoise=True, samples=2, **FAST).volume, res.volume)
    # A balanced reconstruction denoises with the balanced preset (mirrored views) as well.
    bal = reconstruct_isotropic(vol, 2, model, denoise=True, preset="balanced", **FAST)
    assert np.array_equal(bal.volume[::2], restore(vol, "denoise", "demo-denoise", preset="balanced", device="cpu").mean)
    assert not np.array_equal(bal.volume[::2], den.mean)


def test_denoise_first_into_zarr_leaves_no_scratch(model, vol, tmp_path):
    out = tmp_path / "iso.zarr"
    mem = reconstruct_isotropic(vol, 2, model, denoise=True, samples=2, **FAST)
    res = reconstruct_isotropic(vol, 2, model, denoise=True, out=out, uncertainty=True, samples=2, **FAST)
    assert np.array_equal(np.asarray(res.volume[...]), mem.volume)
    assert np.asarray(res.uncertainty[0]).min() > 0  # the denoiser's, on a measured slice
    assert sorted(p.name for p in tmp_path.iterdir()) == ["iso.zarr", "iso_uncertainty.zarr"]
    # Cancelled while denoising: neither the output nor the scratch stores remain.
    gen = reconstruct_isotropic_iter(vol, 2, model, denoise=True, out=tmp_path / "c.zarr", **FAST)
    ev = next(gen)
    assert isinstance(ev, Progress) and "denoising" in ev.message
    gen.close()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["iso.zarr", "iso_uncertainty.zarr"]


@pytest.mark.parametrize(
    "denoise, error, match",
    [
        ("demo-sr2", EMDiffuseError, "made for super-resolve, not denoise"),
        ("no-such-model", EMDiffuseError, "no model named"),
        (3, InputError, "denoise must be a denoising model's name or path"),
    ],
)
def test_denoise_first_bad_model(model, vol, tmp_path, denoise, error, match):
    out = tmp_path / "iso.zarr"
    with pytest.raises(error, match=match):
        reconstruct_isotropic(vol, 2, model, denoise=denoise, out=out, **FAST)
    assert list(tmp_path.iterdir()) == []


def test_denoise_first_distributed_equals_in_process(model, vol, tmp_path):
    pytest.importorskip("distributed")
    ref = reconstruct_isotropic(vol, 2, model, denoise=True, samples=2, uncertainty=True, block=32, **FAST)
    out = tmp_path / "dist.zarr"
    res = reconstruct_isotropic(
        vol, 2, model, denoise=True, samples=2, uncertainty=True, block=32, out=out, workers=2, **FAST
    )
    assert np.array_equal(np.asarray(res.volume[...]), ref.volume)
    assert np.allclose(np.asarray(res.uncertainty[...]), ref.uncertainty, atol=1e-4)
    assert np.asarray(res.uncertainty[0]).min() > 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dist.zarr", "dist_uncertainty.zarr"]


def test_a_one_pass_reconstruction_gives_the_same_voxels_whatever_the_blocks():
    """Blocks run the volume's own tiles: any block size (the one the GPU's memory allows)
    gives the same voxels, but for float rounding. Control: a block reconstructed on its
    own (its own tiles and canvas) differs."""
    from tests.engine.models.test_predictors import predictor

    m = predictor("isotropic-i", out_channel=2, perturb=0.05)
    rng = np.random.default_rng(4)
    data = (rng.random((3, 100, 90)) * 200).astype(np.float32)
    kw = dict(tile=32, overlap=8, device="cpu", dtype=np.float32)
    ref = reconstruct_isotropic(data, 3, m, block=2048, uncertainty=True, **kw)
    for block in (32, 48):
        r = reconstruct_isotropic(data, 3, m, block=block, uncertainty=True, **kw)
        assert np.abs(r.volume - ref.volume).max() < 0.05, block
        assert np.abs(r.uncertainty - ref.uncertainty).max() < 0.05, block
    alone = reconstruct_isotropic(data[:, 32:64, 32:64].copy(), 3, m, **kw).volume
    assert np.abs(alone - ref.volume[:, 32:64, 32:64]).mean() > 0.05
