"""Averaging a restored stack along z (``z_filter``): the weights, the choice of width, fill
and NaN, the uncertainty, and the same pixels in memory and in a zarr store."""

from __future__ import annotations

import numpy as np
import pytest
import zarr
from scipy.ndimage import convolve1d, gaussian_filter

from napari_emdiffuse.api import restore, restore_to_zarr
from napari_emdiffuse.engine.errors import InputError
from napari_emdiffuse.engine.events import drain
from napari_emdiffuse.engine.inference.zfilter import ZFilter, WIDTHS, plan_z_filter, smooth_along_z, z_kernel

from tests.conftest import make_tiny

FAST = dict(steps=2, tile=32, overlap=8, device="cpu")


def _alike(n=8, size=48, noise=10.0, seed=0):
    """One smooth image in every slice, each with its own noise: slices as alike as can be."""
    rng = np.random.default_rng(seed)
    base = gaussian_filter(rng.normal(size=(size, size)), 3)
    base = 128 + 60 * base / base.std()
    return np.clip(base + rng.normal(0, noise, (n, size, size)), 0, 255).astype(np.uint8)


def _unlike(n=8, size=48, seed=1):
    rng = np.random.default_rng(seed)
    fields = gaussian_filter(rng.normal(size=(n, size, size)), (0, 3, 3))
    return np.clip(128 + 60 * fields / fields.std() + rng.normal(0, 10, (n, size, size)), 0, 255).astype(np.uint8)


def test_kernel_is_a_normalised_symmetric_gaussian():
    for w in (0.3, 0.8, 1.0, 2.5):
        k = z_kernel(w)
        r = len(k) // 2
        assert k.sum() == pytest.approx(1.0) and np.allclose(k, k[::-1]) and r == int(np.ceil(3 * w))
        assert k[r + 1] / k[r] == pytest.approx(np.exp(-0.5 / w**2))
    assert np.array_equal(z_kernel(0), [1.0])


def test_forced_width_is_a_gaussian_along_z_with_mirrored_ends():
    """Closed form: scipy's convolution along z with the same weights, mirrored at the ends."""
    rng = np.random.default_rng(0)
    out = rng.normal(size=(7, 9, 11))
    expected = convolve1d(out, z_kernel(0.8), axis=0, mode="mirror")
    got = out.copy()
    width = drain(smooth_along_z(got, None, np.ones_like(out), ZFilter((0.8,), "")))
    assert width == 0.8 and np.allclose(got, expected)
    # a control that must fail: scipy's default ("reflect") repeats the edge slice
    assert not np.allclose(got, convolve1d(out, z_kernel(0.8), axis=0, mode="reflect"))


def test_width_follows_the_data():
    """Errors independent between slices of a z-constant truth: the widest width, and the error
    falls; a truth that curves along z, nearly noise-free: the narrowest, and the output
    barely moves."""
    rng = np.random.default_rng(1)
    truth = np.full((10, 16, 16), 100.0)
    out = truth + rng.normal(0, 5, truth.shape)
    before = np.abs(out - truth).mean()
    assert drain(smooth_along_z(out, None, out.copy(), ZFilter(WIDTHS, ""))) == WIDTHS[-1]
    assert np.abs(out - truth).mean() < before / 1.5

    curved = 10.0 * (np.arange(10)[:, None, None] - 4.5) ** 2 * np.ones((10, 16, 16))
    noisy = curved + rng.normal(0, 0.1, curved.shape)
    got = noisy.copy()
    assert drain(smooth_along_z(got, None, noisy.copy(), ZFilter(WIDTHS, ""))) == WIDTHS[0]
    assert np.abs(got - noisy).max() < 1.0
    # the control: the widest width forced on the same slices moves them by far more
    wide = noisy.copy()
    drain(smooth_along_z(wide, None, noisy.copy(), ZFilter((WIDTHS[-1],), "")))
    assert np.abs(wide - noisy).max() > 5.0


def test_width_is_scored_against_the_noisy_input_not_the_restoration():
    """Restorations whose errors are shared between neighbouring slices (AR(1) along z, 0.9):
    scored against each slice's own noisy input (independent of its neighbours), the width is
    the widest, the best here; the control, scored against the restoration itself (whose error
    the neighbours share), picks a narrower one and leaves more error."""
    rng = np.random.default_rng(1)
    err = np.zeros((12, 32, 32))
    err[0] = rng.normal(0, 5, (32, 32))
    for z in range(1, 12):
        err[z] = 0.9 * err[z - 1] + np.sqrt(1 - 0.81) * rng.normal(0, 5, (32, 32))
    truth = np.full(err.shape, 100.0)
    noisy = truth + rng.normal(0, 20, truth.shape)
    right, control = truth + err, truth + err
    w_right = drain(smooth_along_z(right, None, noisy, ZFilter(WIDTHS, "")))
    w_control = drain(smooth_along_z(control, None, (truth + err).copy(), ZFilter(WIDTHS, "")))
    assert w_right == WIDTHS[-1] and w_control < w_right
    assert np.abs(right - truth).mean() < np.abs(control - truth).mean() < np.abs(err).mean()


def test_uncertainty_becomes_the_weighted_mean_variance():
    rng = np.random.default_rng(2)
    out = rng.normal(size=(6, 5, 5))
    unc = rng.uniform(1, 3, size=(6, 5, 5)).astype(np.float32)
    expected = np.sqrt(convolve1d(unc.astype(np.float64) ** 2, z_kernel(1.0), axis=0, mode="mirror"))
    got = unc.copy()
    drain(smooth_along_z(out.copy(), got, np.ones_like(out), ZFilter((1.0,), "")))
    assert got.dtype == np.float32 and np.allclose(got, expected, rtol=1e-5)


def test_fill_and_nan_are_kept_and_left_out_of_every_average():
    image = np.full((5, 4, 4), 7.0)
    image[2, 0, 0] = 0.0  # fill in the input
    image[1, 1, 1] = np.nan  # no data
    out = np.arange(5, dtype=np.float64)[:, None, None] * np.ones((5, 4, 4)) * 10
    out[2, 0, 0] = 0.0
    out[1, 1, 1] = np.nan
    got = out.copy()
    drain(smooth_along_z(got, None, image, ZFilter((1.0,), ""), fill=0.0))
    assert got[2, 0, 0] == 0.0 and np.isnan(got[1, 1, 1])
    k = z_kernel(1.0)  # slice 1 at (0, 0) without slice 2: the other slices' weights renormalised
    idx = [2, 1, 0, 1, 2, 3, 4]  # slices -2 .. 4, mirrored into 0 .. 4
    w = np.array([k[i] * (j != 2) for i, j in enumerate(idx)])
    assert got[1, 0, 0] == pytest.approx(sum(w[i] * 10 * j for i, j in enumerate(idx)) / w.sum())
    assert np.isfinite(got[2, 1, 1])  # the NaN in slice 1 does not spread


def test_integer_output_is_rounded_and_clipped():
    out = np.array([0, 255, 0, 255, 0], dtype=np.uint8)[:, None, None] * np.ones((1, 3, 3), np.uint8)
    drain(smooth_along_z(out, None, np.ones(out.shape), ZFilter((1.0,), "")))
    assert out.dtype == np.uint8 and 0 < out[0, 0, 0] < 255 and out[1, 0, 0] < 255


def test_a_zarr_array_is_averaged_in_place_tile_by_tile_like_numpy(tmp_path):
    rng = np.random.default_rng(3)
    out = rng.normal(size=(9, 40, 30)).astype(np.float32)
    # chunks that are no multiple of the scoring stride: the same pixels are scored all the same
    store = zarr.open_array(str(tmp_path / "o.zarr"), mode="w", shape=out.shape, dtype=out.dtype, chunks=(1, 13, 11))
    store[:] = out
    mem = out.copy()
    a = drain(smooth_along_z(mem, None, out, ZFilter(WIDTHS, "")))
    b = drain(smooth_along_z(store, None, out, ZFilter(WIDTHS, "")))
    assert a == b and np.array_equal(store[:], mem) and not np.array_equal(mem, out)


def test_plan_measures_alikeness_and_refuses_bad_values():
    alike, unlike = _alike(), _unlike()
    plan = plan_z_filter(alike, "auto", task="denoise")
    assert plan is not None and plan.widths[-1] <= 1.0 and "apart, within" in plan.note
    assert plan_z_filter(unlike, "auto", task="denoise") is None
    assert plan_z_filter(alike[:4], "auto", task="denoise") is None  # too few slices to tell
    assert plan_z_filter(alike, "auto", task="super-resolve") is None
    assert plan_z_filter(alike, "off", task="denoise") is None
    assert plan_z_filter(alike, 0, task="denoise") is None
    assert plan_z_filter(unlike, 1.5, task="denoise").widths == (1.5,)  # forced: no question asked
    for bad in ("yes", -1, 3.5, True, None, float("nan")):
        with pytest.raises(InputError, match="z_filter must be"):
            plan_z_filter(alike, bad, task="denoise")
    with pytest.raises(InputError, match="the input is 2D"):
        plan_z_filter(alike[0], 1, task="denoise")
    with pytest.raises(InputError, match="the task is super-resolve"):
        plan_z_filter(alike, 1, task="super-resolve")
    with pytest.raises(InputError, match="at least 3 slices"):
        plan_z_filter(alike[:2], 1, task="denoise")


@pytest.fixture(scope="module")
def model():
    return make_tiny("denoise")


def test_restore_averages_alike_stacks_only_and_says_so(model, tmp_path):
    alike, unlike = _alike(), _unlike()
    before = alike.copy()
    auto = restore(alike, "denoise", model, **FAST)
    off = restore(alike, "denoise", model, z_filter="off", **FAST)
    assert np.array_equal(alike, before)  # the input is never modified
    assert auto.info["z_filter"] in WIDTHS and "z_filter" not in off.info
    assert not np.array_equal(auto.mean, off.mean)
    # averaged along z: the slices differ less from their neighbours than before
    assert np.abs(np.diff(auto.mean.astype(float), axis=0)).mean() < np.abs(np.diff(off.mean.astype(float), axis=0)).mean()
    a, b = restore(unlike, "denoise", model, **FAST), restore(unlike, "denoise", model, z_filter="off", **FAST)
    assert "z_filter" not in a.info and np.array_equal(a.mean, b.mean)
    # the zarr path averages the same pixels before it commits the store, and records the width
    restore_to_zarr(alike, tmp_path / "o.zarr", "denoise", model, block=32, **FAST)
    z = zarr.open_array(str(tmp_path / "o.zarr"), mode="r")
    assert np.array_equal(z[:], restore(alike, "denoise", model, block=32, **FAST).mean)
    assert z.attrs["z_filter"] == auto.info["z_filter"]


def test_restore_refuses_a_bad_z_filter_in_one_line(model):
    with pytest.raises(InputError, match="z_filter must be 'auto', 'off' or a width"):
        restore(_alike(), "denoise", model, z_filter="strong", **FAST)
