"""Fill regions (the constant borders of aligned sections and montages) are no data: left out of
the normalisation, hidden from the network, and kept as fill with zero uncertainty."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import zarr

from napari_emdiffuse.api import reconstruct_isotropic, restore, restore_to_zarr
from napari_emdiffuse.engine.inference import normalise
from napari_emdiffuse.engine.inference.fill import fill_mask, find_fill, inpaint_nearest
from napari_emdiffuse.engine.models import cards, factory
from tests.conftest import make_tiny

FAST = dict(steps=2, tile=32, overlap=8, device="cpu")


@pytest.fixture(scope="module")
def model():
    return make_tiny("denoise")


def _section(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A 64x96 uint8 section whose right 32 columns and a bottom-left corner are zero fill."""
    rng = np.random.default_rng(seed)
    img = rng.integers(30, 220, (64, 96)).astype(np.uint8)
    mask = np.zeros(img.shape, bool)
    mask[:, 64:] = True
    mask[50:, :20] = True
    img[mask] = 0
    return img, mask


def test_find_fill_needs_a_frequent_extreme_in_runs():
    rng = np.random.default_rng(1)
    data = rng.integers(30, 220, 5000).astype(float)
    assert find_fill(data) is None
    border = np.concatenate([np.zeros(200), data])
    assert find_fill(border) == 0.0
    assert find_fill(np.concatenate([data, np.full(200, 255.0)])) == 255.0
    # as frequent, but scattered (noise clipped at the dtype's limit): data, not fill
    scattered = data.copy()
    scattered[::25] = 0.0
    assert find_fill(scattered) is None


def test_fill_mask_keeps_lone_extreme_pixels_as_data():
    img, mask = _section()
    img[10, 10] = 0  # one measured pixel at the fill value
    img[20:22, 30:33] = 0  # a 2x3 patch: smaller than a fill square
    got = fill_mask(img, 0.0)
    assert np.array_equal(got, mask)
    assert fill_mask(img, 7.0) is None and fill_mask(img, None) is None


def test_inpaint_nearest_copies_the_closest_valid_pixel():
    img, mask = _section()
    out = inpaint_nearest(img, mask)
    assert np.array_equal(out[~mask], img[~mask])
    assert np.array_equal(out[:40, 70], img[:40, 63])  # the row's last valid pixel, 7 px away
    assert (out[mask] > 0).all()


def test_normalisation_leaves_the_fill_out(model):
    img, mask = _section()
    r = restore(img, "denoise", model, **FAST)
    lo, hi = np.percentile(img[~mask].astype(float), [0.5, 99.5])
    assert r.normalisation["fill"] == 0.0
    assert r.normalisation["lo"] == pytest.approx(lo) and r.normalisation["hi"] == pytest.approx(hi)
    # control: without fill the percentiles are the whole image's
    r2 = restore(img[:48, :60], "denoise", model, **FAST)
    assert r2.normalisation["fill"] is None


def test_fill_stays_fill_with_zero_uncertainty(model):
    img, mask = _section()
    r = restore(img, "denoise", model, samples=2, **FAST)
    assert (r.mean[mask] == 0).all() and (r.uncertainty[mask] == 0).all()
    assert (r.mean[~mask] > 0).mean() > 0.99
    assert (r.uncertainty[~mask] > 0).any()  # control: the data keeps its spread


def test_the_network_sees_the_fill_inpainted(monkeypatch):
    """With a fixed-range model the normalisation cannot tell the two inputs apart: restoring
    the filled section must equal restoring its inpainted copy, fill pixels aside. Control:
    with fill detection off, the step to the fill changes the pixels near it."""
    m = make_tiny("denoise")
    m.card.normalisation = cards.Normalisation(mode="range", vmin=0, vmax=255)
    img, mask = _section()
    got = restore(img, "denoise", m, **FAST).mean
    want = restore(inpaint_nearest(img, mask), "denoise", m, **FAST).mean
    assert np.array_equal(got[~mask], want[~mask])
    monkeypatch.setattr(normalise, "find_fill", lambda values: None)
    plain = restore(img, "denoise", m, **FAST).mean
    assert not np.array_equal(plain[~mask], want[~mask])


def test_super_resolution_keeps_the_fill_at_the_new_scale():
    m = make_tiny("super-resolve")
    img, mask = _section()
    r = restore(img, "super-resolve", m, samples=2, **FAST)
    big = np.kron(mask, np.ones((2, 2), bool))
    assert r.mean.shape == (128, 192)
    assert (r.mean[big] == 0).all() and (r.uncertainty[big] == 0).all()


def test_blocks_of_fill_only_are_written_without_the_network(model, tmp_path, monkeypatch):
    img = np.zeros((64, 160), np.uint8)
    img[:, :64] = np.random.default_rng(2).integers(30, 220, (64, 64))
    from napari_emdiffuse.engine.inference import restore as restore_mod

    calls = []
    real = restore_mod.restore_plane

    def counting(*args, **kw):
        calls.append(1)
        return (yield from real(*args, **kw))

    monkeypatch.setattr(restore_mod, "restore_plane", counting)
    mem = restore(img, "denoise", model, block=32, **FAST).mean
    restore_to_zarr(img, tmp_path / "o.zarr", "denoise", model, block=32, **FAST)
    assert np.array_equal(zarr.open_array(str(tmp_path / "o.zarr"), mode="r")[:], mem)
    assert (mem[:, 64:] == 0).all() and (mem[:, :64] > 0).mean() > 0.99
    assert len(calls) == 2 * 2 * 2  # 2 x 5 blocks, of which 2 x 2 hold data; twice


def test_constant_image_is_restored_as_itself(model):
    img = np.full((20, 20), 77, np.uint16)
    assert np.array_equal(restore(img, "denoise", model, **FAST).mean, img)


def test_isotropic_new_slices_are_fill_where_a_measured_neighbour_is():
    torch.manual_seed(0)
    m = factory.create_EMDiffuse(
        "vEMDiffuse-i", inner_channel=16, channel_mults=[1, 2], res_blocks=1, attn_res=[], num_head_channels=16
    )
    m.card.normalisation, m.card.overlap, m.card.tile = cards.Normalisation(), 8, 32
    rng = np.random.default_rng(3)
    vol = rng.integers(30, 220, (3, 40, 48)).astype(np.uint8)
    vol[0, :, 40:] = 0  # the aligned sections' fill border moves from slice to slice
    vol[1, :, 36:] = 0
    vol[2, :, 44:] = 0
    res = reconstruct_isotropic(vol, 3, m, samples=2, uncertainty=True, **FAST)
    out, unc = np.asarray(res.volume), res.uncertainty
    assert np.array_equal(out[::3], vol)  # measured slices untouched
    for z, edge in ((1, 36), (2, 36), (4, 36), (5, 36)):
        assert (out[z, :, edge:] == 0).all() and (unc[z, :, edge:] == 0).all()
        assert (out[z, :, : edge - 2] > 0).mean() > 0.99


# -- NaN: no data in float images ---------------------------------------------------------------
def _nan_section() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The section as float32 with NaN where the fill was, plus two lone NaN pixels inside."""
    img, mask = _section()
    nan = img.astype(np.float32)
    nan[mask] = np.nan
    nan[10, 10] = nan[30, 40] = np.nan
    holes = mask.copy()
    holes[10, 10] = holes[30, 40] = True
    return nan, holes, img


def test_nan_pixels_are_no_data_and_stay_nan(model):
    nan, holes, img = _nan_section()
    before = nan.copy()
    r = restore(nan, "denoise", model, samples=2, **FAST)
    assert np.array_equal(np.isnan(r.mean), holes)  # NaN exactly where the input has none
    assert (r.uncertainty[holes] == 0).all() and np.isfinite(r.uncertainty).all()
    assert np.array_equal(nan, before, equal_nan=True)  # never modifies the input
    # The same section with zero fill (found as fill) and its two lone pixels inpainted by
    # hand: the network saw the same thing, so the imaged pixels match.
    zero = inpaint_nearest(img.astype(np.float32), holes & ~_section()[1])
    want = restore(zero, "denoise", model, samples=2, **FAST)
    assert r.normalisation["lo"] == pytest.approx(want.normalisation["lo"])
    np.testing.assert_allclose(r.mean[~holes], want.mean[~holes], atol=1e-4)


def test_nan_in_an_integer_output_becomes_zero_and_inf_is_refused(model):
    from napari_emdiffuse.engine.errors import InputError

    nan, holes, _ = _nan_section()
    out = restore(nan, "denoise", model, dtype=np.uint8, **FAST).mean
    assert out.dtype == np.uint8 and (out[holes] == 0).all() and (out[~holes] > 0).mean() > 0.99
    nan[5, 5] = np.inf
    with pytest.raises(InputError, match="1 Inf pixels"):
        restore(nan, "denoise", model, **FAST)


def test_a_missing_section_of_nan_gives_nan_slices_beside_it():
    torch.manual_seed(0)
    m = factory.create_EMDiffuse(
        "vEMDiffuse-i", inner_channel=16, channel_mults=[1, 2], res_blocks=1, attn_res=[], num_head_channels=16
    )
    m.card.normalisation, m.card.overlap, m.card.tile = cards.Normalisation(), 8, 32
    vol = np.random.default_rng(4).integers(30, 220, (4, 40, 48)).astype(np.float32)
    vol[1] = np.nan  # a lost section
    vol[3, :, 40:] = np.nan  # a NaN border
    out = np.asarray(reconstruct_isotropic(vol, 2, m, samples=2, **FAST).volume)
    assert out.shape == (7, 40, 48)
    assert np.isnan(out[1:4]).all()  # between slices 0|1 and 1|2: nothing to generate from
    assert np.isnan(out[5, :, 40:]).all() and np.isfinite(out[5, :, :38]).all()
    assert np.isfinite(out[0]).all() and np.isfinite(out[4]).all()


def _count_passes(m, monkeypatch) -> list[int]:
    """The batch size of each network pass of ``m`` from now on."""
    passes: list[int] = []
    real_forward = m.unet.forward

    def counted(x, *a, **k):
        passes.append(x.shape[0])
        return real_forward(x, *a, **k)

    monkeypatch.setattr(m.unet, "forward", counted)
    return passes


@pytest.mark.parametrize("task", ["denoise", "super-resolve"])
def test_a_predictors_tiles_wholly_in_fill_are_not_run_and_change_nothing(task, monkeypatch):
    """The empty margin of a volume or montage costs no network pass: a predictor's tiles that
    lie wholly in fill are skipped, and the result is the one every tile gives (mean to the
    bit, uncertainty within a hundredth of a grey level: only its structure term near the
    fill's edge sees the difference). Control: the count of network passes without skipping."""
    from napari_emdiffuse.engine.inference import restore as restore_mod
    from tests.engine.models.test_predictors import predictor

    m = predictor(task, perturb=0.05)
    img = np.zeros((160, 192), np.uint8)
    img[8:56, 16:80] = np.random.default_rng(5).integers(30, 220, (48, 64))
    passes = _count_passes(m, monkeypatch)
    opts = dict(tile=32, overlap=8, device="cpu", samples=2, batch=1)
    got = restore(img, task, m, **opts)
    skipped = len(passes)
    passes.clear()
    monkeypatch.setattr(restore_mod, "_skipped_tiles", lambda *a, **k: None)
    want = restore(img, task, m, **opts)
    assert skipped < len(passes) / 3  # three quarters of the image are fill
    assert np.array_equal(got.mean, want.mean)
    assert np.abs(got.uncertainty - want.uncertainty).max() < 0.01
    big = np.kron(img == 0, np.ones((got.scale, got.scale), bool))
    assert (got.mean[big] == 0).all() and (got.uncertainty[big] == 0).all()


def test_isotropic_tiles_where_a_measured_slice_is_fill_are_not_run(monkeypatch):
    """New slices are fill wherever a measured neighbour is: an isotropic predictor's tiles
    wholly there are not run, and the volume comes out the same. Control: the passes without."""
    from napari_emdiffuse.engine.inference import volume
    from napari_emdiffuse.engine.inference.canvas import tiles_in_nodata
    from tests.engine.models.test_predictors import predictor

    m = predictor("isotropic-i", out_channel=2, perturb=0.05)
    vol = np.zeros((3, 128, 160), np.uint8)
    vol[:, 8:56, 16:80] = np.random.default_rng(6).integers(30, 220, (3, 48, 64))
    vol[2, 8:56, 60:80] = 0  # the last section's data ends earlier: the gap above it is fill there
    passes = _count_passes(m, monkeypatch)
    opts = dict(tile=32, overlap=8, device="cpu", batch=1, uncertainty=True)
    got = reconstruct_isotropic(vol, factor=3, model=m, **opts)
    skipped = len(passes)
    passes.clear()
    monkeypatch.setattr(volume, "tiles_in_nodata", lambda *a, **k: None)
    want = reconstruct_isotropic(vol, factor=3, model=m, **opts)
    assert skipped < len(passes) / 2 and tiles_in_nodata is not None
    assert np.array_equal(got.volume, want.volume) and np.array_equal(got.uncertainty, want.uncertainty)
    assert (got.volume[4:6, 8:56, 64:80] == 0).all()  # the new slices above the shorter section: fill
