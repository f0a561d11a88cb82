"""Registration of training pairs: known shifts are recovered to a fraction of a pixel,
pairs of different shapes are cropped to their overlap, unrelated images are refused."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage as ndi

from napari_emdiffuse.engine.errors import InputError
from napari_emdiffuse.engine.training.data.registration import RegisteredPair, register_pair


def _texture(shape, seed=0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    a = ndi.gaussian_filter(rng.random(shape), 2) + 0.5 * ndi.gaussian_filter(rng.random(shape), 8)
    return (a - a.min()) / (a.max() - a.min()) * 200 + 20


def _moved(image: np.ndarray, shift, margin: int = 16) -> tuple[np.ndarray, np.ndarray]:
    """(moving, fixed): moving(p - shift) == fixed(p), both cropped away from the borders."""
    moved = ndi.shift(image.astype(np.float64), [-s for s in shift], order=3, mode="nearest")
    crop = (slice(margin, -margin), slice(margin, -margin))
    return moved[crop], image[crop].astype(np.float64)


@pytest.fixture(scope="module")
def real_pair(request):
    from tests.conftest import SHARED

    if not SHARED.is_dir():
        pytest.skip(f"real EM data not found at {SHARED} (only present in the project's CI layout)")
    import tifffile

    pair = SHARED / "em2d" / "pair_brain_4us"
    return tifffile.imread(pair / "noisy_4us.tif"), tifffile.imread(pair / "clean_36us.tif")


@pytest.mark.parametrize("shift", [(3.5, -2.0), (-0.3, 0.7)])
def test_known_shift_of_a_textured_image_is_recovered(shift):
    moving, fixed = _moved(_texture((200, 220)), shift)
    pair = register_pair(moving, fixed)
    assert isinstance(pair, RegisteredPair)
    assert np.allclose(pair.shift, shift, atol=0.2)
    assert pair.moving.shape == pair.fixed.shape and pair.correlation > 0.95
    # aligned: the resampled reference matches the untouched moving image
    assert np.abs(pair.moving - pair.fixed).mean() < 1.0


def test_known_shift_of_real_em_is_recovered_and_noisy_input_is_not_interpolated(real_pair):
    noisy, clean = real_pair
    moving, fixed = _moved(clean[:384, :384], (3.5, -2.0))
    assert np.allclose(register_pair(moving, fixed).shift, (3.5, -2.0), atol=0.2)
    # the real noisy/clean pair: registered within a fraction of a pixel already
    pair = register_pair(noisy[:384], clean[:384])
    assert np.abs(pair.shift).max() < 0.5 and pair.correlation > 0.9
    # the integer shift is applied by cropping: moving pixels are the input's own values
    shifted = noisy[10:, 7:]
    pair = register_pair(shifted[:300, :300], clean[:380, :380])
    assert np.allclose(pair.shift, (10, 7), atol=0.3)
    assert pair.moving.dtype == noisy.dtype
    h, w = pair.moving.shape
    assert np.array_equal(pair.moving, shifted[:h, :w])


def test_pairs_of_different_shapes_are_cropped_to_their_overlap():
    img = _texture((300, 320))
    moving, fixed = img[40:260, 30:300], img[:200, :240]  # moving starts at (40, 30) in fixed's frame
    pair = register_pair(moving, fixed)
    assert np.allclose(pair.shift, (40, 30), atol=0.1)
    assert pair.moving.shape == pair.fixed.shape == (160, 210)
    assert np.allclose(pair.moving, pair.fixed)


def test_super_resolution_pair_is_measured_on_the_low_resolution_grid():
    hr = _texture((192, 192))
    lr = hr.reshape(96, 2, 96, 2).mean(axis=(1, 3))
    lr = ndi.shift(lr, (-1.25, 3.0), order=3)[8:-8, 8:-8]  # lr(q) = hr_down(q + (9.25, 5))
    pair = register_pair(lr, hr, scale=2)
    assert np.allclose(pair.shift, (9.25, 5.0), atol=0.2)
    assert pair.fixed.shape == (2 * pair.moving.shape[0], 2 * pair.moving.shape[1])
    down = pair.fixed.reshape(pair.moving.shape[0], 2, pair.moving.shape[1], 2).mean(axis=(1, 3))
    assert np.corrcoef(down.ravel(), pair.moving.ravel())[0, 1] > 0.99


def test_tiles_report_residual_shift_of_distorted_pairs():
    img = _texture((240, 240))
    moving, fixed = _moved(img, (1.0, 2.0))
    rigid = register_pair(moving, fixed, refine_tiles=3)
    assert rigid.residual_shift < 0.3
    assert register_pair(moving, fixed).residual_shift == 0.0
    # stretch x by 2%: the tiles at the sides move by ~2 px in opposite directions
    yy, xx = np.mgrid[0:240, 0:240].astype(float)
    stretched = ndi.map_coordinates(img, [yy, 120 + (xx - 120) * 1.02], order=3, mode="nearest")
    warped = register_pair(stretched[20:-20, 20:-20], img[20:-20, 20:-20], refine_tiles=3)
    assert warped.residual_shift > 1.0


def test_unrelated_images_are_refused_with_one_line():
    with pytest.raises(InputError, match="do not match") as info:
        register_pair(_texture((128, 128), seed=1), _texture((128, 128), seed=2))
    assert "\n" not in str(info.value)


def test_unrelated_real_em_is_refused(real_pair):
    noisy, clean = real_pair
    with pytest.raises(InputError, match="same field of view"):
        register_pair(noisy[:256, :256], clean[400:656, 400:656])


def test_small_overlap_large_shift_and_bad_images_are_refused():
    img = _texture((300, 300))
    with pytest.raises(InputError, match="overlap|do not match"):
        register_pair(img[:150, :150], img[110:260, 110:260])  # 40 x 40 px in common
    moving, fixed = _moved(img, (6.0, 0.0))
    with pytest.raises(InputError, match="max_shift"):
        register_pair(moving, fixed, max_shift=3)
    assert np.allclose(register_pair(moving, fixed, max_shift=8).shift, (6, 0), atol=0.2)
    with pytest.raises(InputError, match="constant"):
        register_pair(np.zeros((64, 64)), img[:64, :64])
    bad = img.copy()
    bad[5, 5] = np.nan
    with pytest.raises(InputError, match="NaN"):
        register_pair(bad, img)
    with pytest.raises(InputError, match="2D"):
        register_pair(np.stack([img, img]), img)


def _warped(image: np.ndarray, t_y, t_x) -> np.ndarray:
    """moving(p) = image(p + t(p)) for a displacement field t (pixels)."""
    yy, xx = np.mgrid[0 : image.shape[0], 0 : image.shape[1]].astype(float)
    return ndi.map_coordinates(image, [yy + t_y(yy, xx), xx + t_x(yy, xx)], order=3, mode="nearest")


def test_affine_warp_removes_drift_that_a_translation_leaves():
    # two scans: a 0.4 % / 0.3 % magnification difference and a shear, plus an offset
    img = _texture((300, 300))
    t_y = lambda y, x: 0.3 + 0.004 * (y - 150)
    t_x = lambda y, x: -0.5 + 0.003 * (x - 150) + 0.001 * (y - 150)
    moving, fixed = _warped(img, t_y, t_x)[20:-20, 20:-20], img[20:-20, 20:-20]
    rigid = register_pair(moving, fixed)
    affine = register_pair(moving, fixed, warp="affine")
    assert rigid.warp == "translation" and affine.warp == "affine"
    assert affine.moving.dtype == moving.dtype and affine.moving.shape == affine.fixed.shape
    (oy, ox), (h, w) = affine.origin, affine.moving.shape
    assert np.array_equal(affine.moving, moving[oy : oy + h, ox : ox + w])  # cropped, never interpolated
    err_rigid = np.abs(rigid.moving - rigid.fixed).mean()
    err_affine = np.abs(affine.moving - affine.fixed).mean()
    assert err_affine < 0.1 * err_rigid  # control: the translation leaves the drift
    # the field's largest departure from the global shift: at the far corner, |(0.52, 0.52)|
    assert affine.max_correction == pytest.approx(np.hypot(0.52, 0.52), abs=0.05)
    assert affine.residual_shift < 0.2


def test_affine_warp_of_a_translated_pair_is_the_translation():
    moving, fixed = _moved(_texture((240, 240)), (1.3, -0.6))
    pair = register_pair(moving, fixed, warp="affine")
    assert pair.warp == "affine" and pair.max_correction < 0.1
    assert np.abs(pair.moving - pair.fixed).mean() < 1.0


def test_affine_warp_of_a_super_resolution_pair():
    hr = _texture((320, 320))
    stretched = _warped(hr, lambda y, x: 0.004 * (y - 160), lambda y, x: 1.0 + 0.004 * (x - 160))
    lr = stretched.reshape(160, 2, 160, 2).mean(axis=(1, 3))[8:-8, 8:-8]
    fixed = hr[16:-16, 16:-16]
    for warp, limit in (("translation", None), ("affine", 0.999)):
        pair = register_pair(lr, fixed, scale=2, warp=warp)
        assert pair.fixed.shape == (2 * pair.moving.shape[0], 2 * pair.moving.shape[1])
        down = pair.fixed.reshape(pair.moving.shape[0], 2, pair.moving.shape[1], 2).mean(axis=(1, 3))
        r = np.corrcoef(down.ravel(), pair.moving.ravel())[0, 1]
        if limit is None:
            rigid_r = r
        else:
            assert r > limit and r > rigid_r


def test_affine_warp_falls_back_to_the_translation_on_small_images_and_bad_warp_is_refused():
    moving, fixed = _moved(_texture((90, 90)), (0.5, 0.5), margin=8)
    pair = register_pair(moving, fixed, warp="affine")
    assert pair.warp == "translation" and pair.max_correction == 0.0
    with pytest.raises(InputError, match="warp") as info:
        register_pair(moving, fixed, warp="elastic")
    assert "\n" not in str(info.value)


def test_real_sem_pair_drifts_and_the_affine_warp_aligns_it(real_pair):
    from skimage.registration import phase_cross_correlation

    noisy, clean = real_pair

    def tile_spread(pair) -> float:
        # shifts of 96-px tiles after registration, on both images smoothed alike
        a, b = ndi.gaussian_filter(pair.moving.astype(float), 1.5), ndi.gaussian_filter(pair.fixed, 1.5)
        shifts = [phase_cross_correlation(b[y:y + 96, x:x + 96], a[y:y + 96, x:x + 96], upsample_factor=50,
                                          normalization=None)[0]
                  for y in range(0, a.shape[0] - 95, 96) for x in range(0, a.shape[1] - 95, 96)]
        return float(np.sqrt((np.array(shifts) ** 2).mean()))  # RMS over the tiles

    rigid = register_pair(noisy[:512], clean[:512])
    affine = register_pair(noisy[:512], clean[:512], warp="affine")
    assert affine.warp == "affine" and 0.2 < affine.max_correction < 1.0
    assert tile_spread(affine) < 0.75 * tile_spread(rigid)


def test_affine_warp_does_not_fit_noise_of_a_small_aligned_pair():
    # aligned, but so noisy that each of the 3x3 tiles' shifts scatters by ~0.1 px
    clean = _texture((256, 256), seed=3)
    noisy = clean + ndi.gaussian_filter(np.random.default_rng(4).normal(0, 60, clean.shape), 0.7)
    pair = register_pair(noisy, clean, warp="affine")
    assert pair.max_correction < 0.05  # fitting every slope gives 0.12 px here
