"""Noise resampling of recorded denoising pairs (``resample_noise``)."""

from __future__ import annotations

import numpy as np
import pytest

from napari_emdiffuse.engine.training.config import TrainConfig
from napari_emdiffuse.engine.training.data.pairs import PairData, noise_model


def _correlated_pair(rng, shape=(256, 256), a=0.05, b=0.002, k=0.3):
    clean = np.clip(0.5 + 0.4 * np.sin(np.arange(shape[1]) / 9.0)[None] * np.cos(np.arange(shape[0]) / 13.0)[:, None], 0, 1)
    white = rng.standard_normal((shape[0], shape[1] + 2))
    # [k, 1, k] along x: neighbour correlation 2k / (1 + 2k^2) = 0.51, unit variance
    unit = (k * white[:, :-2] + white[:, 1:-1] + k * white[:, 2:]) / np.sqrt(1 + 2 * k * k)
    return clean + np.sqrt(a * clean + b) * unit, clean


def test_noise_model_recovers_the_variance_line_and_keeps_correlations():
    noisy, clean = _correlated_pair(np.random.default_rng(0))
    unit, a, b = noise_model(noisy, clean)
    assert a == pytest.approx(0.05, rel=0.15)
    assert b == pytest.approx(0.002, abs=0.002)
    assert unit.std() == pytest.approx(1.0, abs=0.05)
    along_x = np.corrcoef(unit[:, :-1].ravel(), unit[:, 1:].ravel())[0, 1]
    along_y = np.corrcoef(unit[:-1].ravel(), unit[1:].ravel())[0, 1]
    assert along_x == pytest.approx(0.51, abs=0.05) and abs(along_y) < 0.05


def _crops(data, n=64):
    rng = np.random.default_rng(1)
    return [data.sample_one(rng) for _ in range(n)]


def test_resampled_crops_carry_fresh_noise_of_the_same_statistics():
    noisy, clean = _correlated_pair(np.random.default_rng(0))
    kw = dict(patch=32, val_fraction=0.0)
    plain = PairData([noisy[None]], [clean[None]], **kw)
    fresh = PairData([noisy[None]], [clean[None]], resample_noise=1.0, **kw)
    residual0 = np.concatenate([(c - t).ravel() for c, t, _ in _crops(plain)])
    residual = np.concatenate([(c - t).ravel() for c, t, _ in _crops(fresh)])
    assert residual.std() == pytest.approx(residual0.std(), rel=0.1)
    # control: without resampling a crop's noise is the recorded noise at its place; with it, never
    recorded = noisy - clean

    def is_recorded(c, t):
        r = (c - t)[0]
        views = [np.rot90(r, -k) for k in range(4)]
        views += [v[::-1] for v in views] + [v[:, ::-1] for v in views] + [v[::-1, ::-1] for v in views]
        p = r.shape[0]
        for v in views:
            for y in range(recorded.shape[0] - p + 1):
                hits = np.where(np.isclose(recorded[y, : recorded.shape[1] - p + 1], v[0, 0], atol=1e-5))[0]
                if any(np.allclose(recorded[y : y + p, x : x + p], v, atol=1e-4) for x in hits):
                    return True
        return False

    assert all(is_recorded(c, t) for c, t, _ in _crops(plain, 4))
    assert not any(is_recorded(c, t) for c, t, _ in _crops(fresh, 4))
    # the new noise keeps the recorded neighbour correlation (along whichever axis the crop was turned to)
    cors = []
    for c, t, _ in _crops(fresh, 32):
        r = (c - t)[0]
        cors.append(max(np.corrcoef(r[:, :-1].ravel(), r[:, 1:].ravel())[0, 1],
                        np.corrcoef(r[:-1].ravel(), r[1:].ravel())[0, 1]))
    assert np.mean(cors) == pytest.approx(0.51, abs=0.08)


def test_resample_noise_is_a_validated_fraction_for_denoising_pairs(tmp_path, capsys):
    from napari_emdiffuse.cli import main

    with pytest.raises(Exception, match="resample_noise"):
        TrainConfig(task="denoise", inputs=["x.tif"], out="m", resample_noise=1.5)
    with pytest.raises(Exception, match="needs supervised denoising"):
        TrainConfig(task="super-resolve", inputs=["x.tif"], out="m", resample_noise=0.5)
    assert TrainConfig(task="denoise", inputs=["x.tif"], out="m", resample_noise=0.5).resample_noise == 0.5
    # the CLI: one line, exit 2, no model directory
    img = tmp_path / "x.tif"
    import tifffile

    tifffile.imwrite(img, (np.random.default_rng(0).random((64, 64)) * 255).astype(np.uint8))
    for extra in (["--resample-noise", "1.5"], ["--task", "super-resolve", "--resample-noise", "1"]):
        argv = ["finetune", "--task", "denoise", "--input", str(img), "-o", str(tmp_path / "m"), *extra]
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
        assert not (tmp_path / "m").exists()


def test_noise_gain_scales_the_pairs_noise_and_renormalises_like_inference():
    from napari_emdiffuse.engine.models.cards import Normalisation
    from napari_emdiffuse.engine.training.data.pairs import pair_data

    noisy, clean = _correlated_pair(np.random.default_rng(0), shape=(128, 128))
    kw = dict(rule=Normalisation(), patch=128, val_fraction=0.0)  # one crop: the whole image, turned
    plain, gained = pair_data([noisy], [clean], **kw), pair_data([noisy], [clean], noise_gain=(1.0, 3.0), **kw)

    def snr(c, t):
        return float((c - t).std() / t.std())  # invariant to the renormalisation

    base = snr(*_crops(plain, 1)[0][:2])
    crops = _crops(gained, 48)
    ratios = np.array([snr(c, t) / base for c, t, _ in crops])
    assert ratios.min() == pytest.approx(1.0, abs=0.02) and ratios.max() == pytest.approx(3.0, rel=0.02)
    assert len(np.unique(ratios.round(3))) > 4  # a spread of gains, not two
    # every crop is normalised as inference would normalise that noisier input: its own
    # 0.5 / 99.5 percentiles at -1 / +1 (without the refit they drift to -1.9 / +1.9 at gain 3)
    for c, _, _ in crops:
        lo, hi = np.percentile(c, [0.5, 99.5])
        assert lo == pytest.approx(-1.0, abs=0.02) and hi == pytest.approx(1.0, abs=0.02)
    assert gained.describe()["noise_gain"] == [1.0, 3.0] and "noise_gain" not in plain.describe()


def test_noise_gain_is_validated():
    with pytest.raises(Exception, match="noise_gain must be"):
        TrainConfig(task="denoise", inputs=["x.tif"], out="m", noise_gain=[2.0, 1.0])
    with pytest.raises(Exception, match="noise_gain must be"):
        TrainConfig(task="denoise", inputs=["x.tif"], out="m", noise_gain=[0.0, 1.0])
    with pytest.raises(Exception, match="noise_gain scales"):
        TrainConfig(task="super-resolve", inputs=["x.tif"], out="m", noise_gain=[1.0, 2.0])
    assert TrainConfig(task="denoise", inputs=["x.tif"], out="m", noise_gain=[0.7, 2.5]).noise_gain == (0.7, 2.5)


def test_cli_noise_gain_bad_input_is_one_line_exit_2(tmp_path, capsys):
    import tifffile

    from napari_emdiffuse.cli import main

    img = tmp_path / "x.tif"
    tifffile.imwrite(img, (np.random.default_rng(0).random((64, 64)) * 255).astype(np.uint8))
    for extra in (["--target", str(img), "--noise-gain", "2", "1"], ["--task", "super-resolve", "--noise-gain", "1", "2"]):
        argv = ["finetune", "--task", "denoise", "--input", str(img), "-o", str(tmp_path / "m"), *extra]
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert len(err.strip().splitlines()) == 1 and "noise_gain" in err and "Traceback" not in err, err
        assert not (tmp_path / "m").exists()


def _bicubic_noise_stats(scale: int = 2) -> tuple[float, float]:
    """Per-pixel std and neighbour correlation of unit white noise upsampled bicubically
    (align_corners False), from one large draw: the reference for ``input_noise``."""
    import torch

    n = torch.from_numpy(np.random.default_rng(5).standard_normal((1, 1, 400, 400)).astype(np.float32))
    up = torch.nn.functional.interpolate(n, scale_factor=scale, mode="bicubic", align_corners=False)[0, 0].numpy()
    up = up[8:-8, 8:-8]
    return float(up.std()), float(np.corrcoef(up[:, :-1].ravel(), up[:, 1:].ravel())[0, 1])


def test_sr_input_noise_is_low_resolution_noise_upsampled_on_half_the_crops():
    from napari_emdiffuse.engine.models.cards import Normalisation
    from napari_emdiffuse.engine.training.data.pairs import sr_data

    # a flat image: every crop's condition equals its target, so what differs is the noise
    noisy = sr_data([np.full((192, 192), 0.5)], scale=2, rule=Normalisation(), patch=32, input_noise=0.2)
    clean = noisy.without_input_noise()
    assert clean.input_noise == 0 and noisy.input_noise == 0.2  # a copy: the training data keep their noise
    rng = np.random.default_rng(1)
    flat = clean.sample_one(rng)[1]
    diffs = []
    for _ in range(400):
        c, t, _ = noisy.sample_one(rng)
        np.testing.assert_array_equal(t, flat)  # the target stays clean
        diffs.append(c - t)
    noisy_share = np.mean([np.abs(d).max() > 0 for d in diffs])
    assert 0.4 < noisy_share < 0.6
    # rescaled to unit std per crop, the noise has the statistics of upsampled white noise
    units = np.concatenate([(d / d.std())[0] for d in diffs if np.abs(d).max() > 0])
    _, corr = _bicubic_noise_stats()
    along = np.corrcoef(units[:, :-1].ravel(), units[:, 1:].ravel())[0, 1]
    assert along == pytest.approx(corr, abs=0.03)
    assert corr > 0.5  # the control: white noise on the high-resolution grid would give 0
    stds = np.array([d.std() for d in diffs if np.abs(d).max() > 0])
    std_unit, _ = _bicubic_noise_stats()
    assert stds.max() <= 0.2 * std_unit * 1.2 and stds.mean() == pytest.approx(0.1 * std_unit, rel=0.15)


def test_input_noise_is_for_super_resolution():
    with pytest.raises(Exception, match="input_noise .* needs task super-resolve"):
        TrainConfig(task="denoise", out="m", clean=["a.tif"], input_noise=0.05)
    with pytest.raises(Exception, match="super-resolution"):
        PairData([np.zeros((1, 32, 32))], [np.zeros((1, 32, 32))], patch=32, input_noise=0.1)
