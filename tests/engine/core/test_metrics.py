import math

import numpy as np
import pytest
import torch
from scipy import ndimage as ndi

from napari_emdiffuse.engine.errors import EMDiffuseError, InputError
from napari_emdiffuse.engine.core.metrics import (
    METRICS,
    extreme_bias,
    frc_curve,
    frc_resolution,
    inception_score,
    mae,
    psnr,
    ssim,
)


@pytest.fixture
def rng():
    return np.random.default_rng(0)


def _texture(rng, sigma, shape=(256, 256)):
    img = ndi.gaussian_filter(rng.standard_normal(shape), sigma)
    return img / img.std()


def _noisy_pair(rng, clean, level=0.5):
    return (
        clean + level * rng.standard_normal(clean.shape),
        clean + level * rng.standard_normal(clean.shape),
    )


# --- extreme_bias ------------------------------------------------------------------


def test_extreme_bias_closed_form_and_sign(rng):
    ref = rng.permutation(1000).astype(np.float64).reshape(25, 40)
    out = ref.copy()
    out[ref < 10] += 11.0  # darkest 1 % lifted (what clipping to a percentile range does)
    out[ref >= 990] -= 4.0  # brightest 1 % pulled down
    out[(ref >= 500) & (ref < 600)] += 50.0  # the middle does not count
    assert extreme_bias(out, ref) == (11.0, -4.0)
    # a uniform offset shows at both ends; an unbiased image at neither
    assert extreme_bias(ref + 2.0, ref) == (2.0, 2.0)
    assert extreme_bias(ref, ref) == (0.0, 0.0)


def test_extreme_bias_gaussian_filter_lifts_dark_lines():
    ref = np.full((64, 64), 200.0)
    ref[:, ::8] = 20.0  # thin dark membranes
    dark, bright = extreme_bias(ndi.gaussian_filter(ref, 1.5), ref, fraction=0.1)
    assert dark > 50.0 and abs(bright) < dark


@pytest.mark.parametrize("fraction", [0.0, -0.1, 0.6, float("nan")])
def test_extreme_bias_rejects_bad_fraction(fraction):
    with pytest.raises(InputError, match="fraction"):
        extreme_bias(np.zeros((4, 4)), np.zeros((4, 4)), fraction=fraction)


# --- mae / psnr --------------------------------------------------------------------


def test_mae_known_value_and_no_integer_wraparound():
    a = np.array([0, 2, 4], dtype=np.uint8)
    b = np.array([1, 0, 1], dtype=np.uint8)
    # uint8 subtraction would wrap 0 - 1 to 255.
    assert mae(a, b) == pytest.approx(2.0)


def test_psnr_constant_offset_known_value(rng):
    ref = rng.random((32, 32))
    # MSE = 0.05^2 = 0.0025 -> 10 log10(1 / 0.0025) = 26.0206 dB
    assert psnr(ref + 0.05, ref, data_range=1.0) == pytest.approx(10 * math.log10(400.0))
    # 8-bit scale: offset 5 of 255
    ref8 = (ref * 200).astype(np.uint8)
    expected = 10 * math.log10(255.0**2 / 25.0)
    assert psnr(ref8 + np.uint8(5), ref8, data_range=255) == pytest.approx(expected)


def test_psnr_requires_data_range(rng):
    ref = rng.random((8, 8))
    with pytest.raises(TypeError):
        psnr(ref, ref)  # type: ignore[call-arg]
    with pytest.raises(InputError):
        psnr(ref, ref + 1, data_range=0)


def test_psnr_identical_is_inf(rng):
    ref = rng.random((16, 16))
    assert psnr(ref, ref.copy(), data_range=1.0) == math.inf


@pytest.mark.parametrize(
    "metric", [mae, lambda a, b: psnr(a, b, data_range=1.0), lambda a, b: ssim(a, b, data_range=1.0)]
)
def test_shape_mismatch_raises_input_error(metric):
    with pytest.raises(InputError, match="shapes differ"):
        metric(np.zeros((16, 16)), np.zeros((16, 17)))


# --- ssim --------------------------------------------------------------------------


def test_ssim_identical_is_one_noisy_is_less(rng):
    ref = _texture(rng, 2, (64, 64))
    assert ssim(ref, ref, data_range=8.0) == pytest.approx(1.0)
    noisy = ref + 0.5 * rng.standard_normal(ref.shape)
    s = ssim(noisy, ref, data_range=8.0)
    assert s < 0.95
    assert ssim(noisy, ref, data_range=8.0, gaussian=True) < 0.95


def test_ssim_stack_is_mean_of_slices(rng):
    ref = rng.random((3, 32, 32))
    noisy = ref + 0.1 * rng.standard_normal(ref.shape)
    per_slice = [ssim(n, r, data_range=1.0) for n, r in zip(noisy, ref)]
    assert ssim(noisy, ref, data_range=1.0) == pytest.approx(np.mean(per_slice))


def test_ssim_rejects_too_small_images():
    with pytest.raises(InputError):
        ssim(np.zeros((5, 5)), np.zeros((5, 5)), data_range=1.0)


# --- FRC ---------------------------------------------------------------------------


def test_frc_of_image_with_itself_is_one_and_nyquist(rng):
    img = rng.random((64, 48))
    freqs, frc = frc_curve(img, img, pixel_size=2.0)
    assert np.allclose(frc, 1.0)
    assert freqs.max() < 0.25  # ring centres below Nyquist 1 / (2 * 2.0)
    assert frc_resolution(img, img, pixel_size=2.0) == pytest.approx(4.0)
    assert frc_resolution(img, img, threshold="half-bit") == pytest.approx(2.0)


def test_frc_resolution_coarser_for_blurred_pair(rng):
    sharp = _texture(rng, 1.0)
    blurred = _texture(rng, 4.0)
    r_sharp = frc_resolution(*_noisy_pair(rng, sharp))
    r_blur = frc_resolution(*_noisy_pair(rng, blurred))
    assert 2.0 < r_sharp < r_blur
    # The same ordering with the half-bit threshold and with the single-image FRC.
    assert frc_resolution(*_noisy_pair(rng, sharp), threshold="half-bit") < frc_resolution(
        *_noisy_pair(rng, blurred), threshold="half-bit"
    )
    assert frc_resolution(_noisy_pair(rng, sharp)[0]) < frc_resolution(_noisy_pair(rng, blurred)[0])


def test_frc_pixel_size_scales_resolution(rng):
    a, b = _noisy_pair(rng, _texture(rng, 2.0))
    assert frc_resolution(a, b, pixel_size=3.0) == pytest.approx(3.0 * frc_resolution(a, b))


def test_frc_independent_noise_drops_at_once(rng):
    a, b = rng.random((64, 64)), rng.random((64, 64))
    # Uncorrelated images: the first ring already falls below 1/7 -> the coarsest ring.
    freqs, _ = frc_curve(a, b)
    assert frc_resolution(a, b) > 10.0
    assert freqs[0] == pytest.approx(1 / 128)


def test_frc_invalid_threshold(rng):
    img = rng.random((32, 32))
    with pytest.raises(InputError):
        frc_resolution(img, img, threshold="full-bit")


# --- inception score ---------------------------------------------------------------


def test_inception_score_without_classifier_says_what_to_do():
    with pytest.raises(EMDiffuseError) as info:
        inception_score(np.zeros((4, 1, 8, 8)))
    assert str(info.value) == (
        "inception_score needs a classifier: pass classifier=<callable returning logits>; "
        "no weights are downloaded"
    )


def test_inception_score_uniform_logits_is_one():
    images = np.random.default_rng(1).random((40, 1, 8, 8)).astype(np.float32)
    mean, std = inception_score(images, classifier=lambda x: torch.zeros(len(x), 7), splits=4, batch_size=3)
    assert mean == pytest.approx(1.0)
    assert std == pytest.approx(0.0, abs=1e-12)


def test_inception_score_distinct_confident_classes_is_num_classes():
    n_classes = 10
    # Image i has constant value i % 10; the classifier is confident in exactly that class.
    images = np.repeat(np.arange(100) % n_classes, 64).reshape(100, 1, 8, 8).astype(np.uint8)

    def classifier(x):
        cls = x[:, 0, 0, 0].long()
        return 50.0 * torch.nn.functional.one_hot(cls, n_classes).float()

    mean, std = inception_score(images, classifier=classifier, splits=10, batch_size=16)
    assert mean == pytest.approx(10.0, rel=1e-6)
    assert std == pytest.approx(0.0, abs=1e-6)


def test_inception_score_bad_logits_shape():
    with pytest.raises(EMDiffuseError, match="logits"):
        inception_score(np.zeros((4, 8, 8)), classifier=lambda x: torch.zeros(len(x)), splits=1)


# --- general -----------------------------------------------------------------------


def test_inputs_not_modified(rng):
    a = (rng.random((64, 64)) * 1000).astype(np.uint16)
    b = (rng.random((64, 64)) * 1000).astype(np.uint16)
    a0, b0 = a.copy(), b.copy()
    mae(a, b)
    psnr(a, b, data_range=1000)
    ssim(a, b, data_range=1000)
    frc_curve(a, b)
    frc_resolution(a)
    extreme_bias(a, b)
    images = rng.random((8, 1, 8, 8)).astype(np.float32)
    images0 = images.copy()

    def in_place(x):
        x.mul_(0)  # a classifier that writes to its input must not reach the caller's data
        return torch.zeros(len(x), 3)

    inception_score(images, classifier=in_place, splits=2)
    assert np.array_equal(a, a0) and np.array_equal(b, b0)
    assert np.array_equal(images, images0)


def test_metrics_registry():
    assert set(METRICS) == {"mae", "psnr", "ssim", "frc_resolution", "inception_score"}
    assert METRICS["psnr"] is psnr
